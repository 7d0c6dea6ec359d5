import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { USAGE_EVENT_VERSION, type UsageEvent } from '../../lambda/core/usage-event';
import { catchUpCounters } from '../../lambda/local/counter-catch-up';
import { DATABASE_FILE, DataDirInUseError, reconcileLocalCounters } from '../../lambda/local/counter-reconcile';
import { openDuckDb, type DuckDb } from '../../lambda/local/duckdb';
import { DuckDbCounterStore } from '../../lambda/local/duckdb-counter-store';
import { compactEventLog } from '../../lambda/local/event-compaction';
import { FileEventSink } from '../../lambda/local/file-event-sink';

const ROOT = join(__dirname, '..', '..');

function usageEvent(request_id: string, ts: string, user_id: string | null, cost = 1000): UsageEvent {
  return {
    v: USAGE_EVENT_VERSION, request_id, ts, user_id, properties: {}, provider: 'openai', model: 'gpt-4o-mini',
    path: '/v1/chat/completions', method: 'POST', status: 200, stream: false, latency_ms: 10, ttft_ms: 5,
    prompt_tokens: 10, completion_tokens: 5, cached_prompt_tokens: 0, reasoning_tokens: 0, total_tokens: 15,
    cost_usd: cost / 1e9, cost_nano_usd: cost, cost_source: 'genai-prices', usage_source: 'provider', error: null, key_id: null,
  };
}

async function withCounters<T>(dataDir: string, fn: (counters: DuckDbCounterStore, db: DuckDb) => Promise<T>): Promise<T> {
  const db = await openDuckDb(join(dataDir, DATABASE_FILE));
  const counters = await DuckDbCounterStore.open({ db });
  try {
    return await fn(counters, db);
  } finally {
    await counters.close();
    await db.close();
  }
}

async function allTimeRequests(dataDir: string, user: string): Promise<number | undefined> {
  return withCounters(dataDir, async (counters) => (await counters.getUser(user, '2026-03-02', '2026-03'))?.all.requests);
}

let dataDir: string;
const day1 = '2026-03-01';
const day2 = '2026-03-02';
const logged: UsageEvent[] = [];

before(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'gateway-reconcile-'));
  for (let i = 0; i < 30; i++) logged.push(usageEvent(`r-${i}`, `${i % 2 ? day1 : day2}T10:00:${String(i).padStart(2, '0')}.000Z`, `user_${i % 3}`));
  const sink = new FileEventSink({ dataDir });
  await sink.write(logged);
  await sink.write([logged[0]!, logged[1]!]); // a retried delivery: the log holds two copies
  await sink.close();
  // The first day is compacted to Parquet, as a finished day is on a running gateway.
  const db = await openDuckDb(join(dataDir, DATABASE_FILE));
  try {
    const compacted = await compactEventLog({ dataDir, db, before: day2 });
    assert.deepEqual(compacted.days, [day1]);
  } finally {
    await db.close();
  }
});

after(async () => {
  await rm(dataDir, { recursive: true, force: true });
});

describe('reconcileLocalCounters', () => {
  it('rebuilds totals that missed events and totals holding events the log lacks, from NDJSON and Parquet', async () => {
    await withCounters(dataDir, async (counters) => {
      await counters.record(logged.slice(0, 20)); // ten events never reached the counters
      await counters.record([usageEvent('phantom', `${day2}T11:00:00.000Z`, 'user_9', 5)]); // one the log lacks
    });
    const report = await reconcileLocalCounters({ dataDir, from: day1, to: day2 });
    assert.equal(report.requests_before, 21);
    assert.equal(report.requests_after, 30);
    assert.equal(report.users_before, 4);
    assert.equal(report.users_after, 3);
    assert.deepEqual(report.changed.map((user) => [user.user_id, user.requests_before, user.requests_after]), [
      ['user_0', 7, 10], ['user_1', 7, 10], ['user_2', 6, 10], ['user_9', 1, 0],
    ]);
    for (const user of ['user_0', 'user_1', 'user_2']) assert.equal(await allTimeRequests(dataDir, user), 10, user);
    assert.equal(await allTimeRequests(dataDir, 'user_9'), undefined, 'a user only the counters knew is gone');
  });

  it('changes nothing when the totals already match the log', async () => {
    const report = await reconcileLocalCounters({ dataDir, from: day1, to: day2 });
    assert.equal(report.requests_before, 30);
    assert.equal(report.requests_after, 30);
    assert.deepEqual(report.changed, []);
  });

  it('refuses a range that is not two days in order', async () => {
    await assert.rejects(reconcileLocalCounters({ dataDir, from: day2, to: day1 }), /`from` must not be after `to`/);
    await assert.rejects(reconcileLocalCounters({ dataDir, from: '2026-3-1', to: day1 }), /must be a day/);
  });

  it('refuses to run while a gateway holds the database, with a message saying so, and changes nothing', async () => {
    const holder: ChildProcess = spawn(
      process.execPath,
      ['--import', 'tsx', '-e', `require('@duckdb/node-api').DuckDBInstance.create(${JSON.stringify(join(dataDir, DATABASE_FILE))}).then(() => { console.log('open'); setInterval(() => {}, 1000); })`],
      { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] },
    );
    try {
      await new Promise<void>((resolve, reject) => {
        holder.stdout!.on('data', (chunk: Buffer) => chunk.toString().includes('open') && resolve());
        holder.once('exit', (code) => reject(new Error(`the holder exited with ${code}`)));
      });
      await assert.rejects(reconcileLocalCounters({ dataDir, from: day1, to: day2 }), (error: unknown) => {
        assert.ok(error instanceof DataDirInUseError);
        assert.match(error.message, /in use by another process.*Stop the gateway/s);
        return true;
      });
      const cli = spawnSync(process.execPath, ['--import', 'tsx', 'bin/reconcile.ts', '--from', day1, '--to', day2, '--data-dir', dataDir], { cwd: ROOT, encoding: 'utf8' });
      assert.equal(cli.status, 3);
      assert.match(cli.stderr, /is in use by another process \(a running gateway\?\)/);
    } finally {
      holder.kill('SIGKILL');
      await new Promise((resolve) => holder.once('exit', resolve));
    }
  });

  it('runs as `npm run reconcile` and prints what it changed', async () => {
    await withCounters(dataDir, async (counters) => counters.record([usageEvent('phantom-2', `${day1}T12:00:00.000Z`, 'user_0')]));
    const cli = spawnSync(process.execPath, ['--import', 'tsx', 'bin/reconcile.ts', '--from', day1, '--to', day2, '--data-dir', dataDir], { cwd: ROOT, encoding: 'utf8' });
    assert.equal(cli.status, 0, cli.stderr);
    assert.match(cli.stdout, /Reconciled 2026-03-01\.\.2026-03-02 from the event log\./);
    assert.match(cli.stdout, /requests counted: +31 before, 30 after/);
    assert.match(cli.stdout, /"user_0": requests 11 -> 10/);
  });
});

describe('catchUpCounters', () => {
  it('counts the events of today and yesterday the totals missed, once, and no others', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gateway-catch-up-'));
    try {
      const now = Date.parse('2026-04-10T08:00:00.000Z');
      const events = [
        usageEvent('old', '2026-04-08T23:59:59.000Z', 'u'),
        usageEvent('y1', '2026-04-09T00:00:00.000Z', 'u'),
        usageEvent('t1', '2026-04-10T07:00:00.000Z', 'u'),
        usageEvent('t2', '2026-04-10T07:30:00.000Z', 'u'),
      ];
      const sink = new FileEventSink({ dataDir: dir });
      await sink.write(events);
      await sink.close();
      await withCounters(dir, async (counters, db) => {
        await counters.record([events[2]!]); // counted before the crash
        const result = await catchUpCounters({ dataDir: dir, counters, db, now: () => now });
        assert.deepEqual([result.from, result.to, result.events, result.recorded, result.rejected], ['2026-04-09', '2026-04-10', 3, 2, 0]);
        await catchUpCounters({ dataDir: dir, counters, now: () => now }); // without the filter: still once
        const user = await counters.getUser('u', '2026-04-10', '2026-04');
        assert.equal(user?.all.requests, 3, 'yesterday and today, each request once; the day before is left to reconcile');
        assert.equal(user?.day?.requests, 2);
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('catches up 100 missed events among 100,000 logged quickly, and counts 100,000 missed ones too', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'gateway-catch-up-100k-'));
    try {
      const now = Date.now();
      const today = new Date(now).toISOString().slice(0, 10);
      const sink = new FileEventSink({ dataDir: dir });
      for (let chunk = 0; chunk < 10; chunk++) {
        await sink.write(Array.from({ length: 10_000 }, (_, i) => usageEvent(`bulk-${chunk}-${i}`, `${today}T00:00:00.${String(i % 1000).padStart(3, '0')}Z`, `user_${i % 500}`)));
      }
      await sink.close();
      await withCounters(dir, async (counters, db) => {
        const all = await catchUpCounters({ dataDir: dir, counters, db, now: () => now });
        // Forget 100 counted requests and their share of the totals, as a crash before the counter write leaves it.
        await db.run(`DELETE FROM recorded_requests WHERE request_id IN (SELECT 'bulk-9-' || i FROM range(9900, 10000) t(i))`);
        await db.run(`UPDATE user_totals SET requests = requests - 1 WHERE period_key = ? AND user_id IN (SELECT 'user_' || (i % 500) FROM range(9900, 10000) t(i))`, [`D#${today}`]);
        const few = await catchUpCounters({ dataDir: dir, counters, db, now: () => now });
        t.diagnostic(`100k events in the log: all 100,000 missing ${all.ms} ms; 100 missing ${few.ms} ms`);
        assert.equal(all.events, 100_000);
        assert.equal(all.recorded, 100_000);
        assert.equal(few.recorded, 100);
        const page = await counters.listUsers({ period: 'day', periodKey: today, sort: 'requests', order: 'desc', limit: 1000 });
        assert.equal(page.users.length, 500);
        assert.ok(page.users.every((user) => user.requests === 200));
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
