import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { USAGE_EVENT_VERSION, type UsageEvent } from '../../lambda/core/usage-event';
import { openDuckDb, type DuckDb } from '../../lambda/local/duckdb';
import { compactEventLog, EventCompactor } from '../../lambda/local/event-compaction';
import { listEventFiles, partitionDir, readEvents } from '../../lambda/local/event-files';
import { FileEventSink } from '../../lambda/local/file-event-sink';

function event(request_id: string, ts: string, user_id: string | null, properties: Record<string, string> = {}): UsageEvent {
  return {
    v: USAGE_EVENT_VERSION,
    request_id,
    ts,
    user_id,
    properties,
    provider: 'openai',
    model: 'gpt-4o-mini',
    path: '/v1/chat/completions',
    method: 'POST',
    status: 200,
    stream: true,
    latency_ms: 321,
    ttft_ms: null,
    prompt_tokens: 12,
    completion_tokens: 3,
    cached_prompt_tokens: 2,
    reasoning_tokens: 1,
    total_tokens: 15,
    cost_usd: 0.0000042,
    cost_nano_usd: 4200,
    cost_source: 'genai-prices',
    usage_source: 'provider',
    error: null,
    key_id: 'a1b2c3d4e5f6',
  };
}

describe('compactEventLog', () => {
  let root: string;
  let db: DuckDb;

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'compaction-'));
    db = await openDuckDb(':memory:');
  });
  after(async () => {
    await db.close();
    await rm(root, { recursive: true, force: true });
  });

  it('turns a finished day into one Parquet file, each request once, and reads back the same events', async () => {
    const dataDir = join(root, 'one');
    const events = [
      event('r2', '2026-05-01T10:00:00.000Z', 'bob', { plan: 'free', 'team-x': "o'brien" }),
      event('r1', '2026-05-01T09:00:00.000Z', 'alice'),
      event('r3', '2026-05-01T11:00:00.000Z', null),
    ];
    for (const batch of [events, [events[0]!]]) {
      const sink = new FileEventSink({ dataDir });
      await sink.write(batch);
      await sink.close();
    }
    // A writer killed mid-line left a torn last line, and a crashed compaction its temporary file.
    const [segment] = await listEventFiles(dataDir);
    await writeFile(segment!.path, '{"request_id":"torn","ts":"2026-05-01T1', { flag: 'a' });
    await writeFile(join(partitionDir(dataDir, '2026-05-01'), '.compacting-1-2-3.tmp'), 'half a file');

    const result = await compactEventLog({ dataDir, db, before: '2026-05-02' });
    assert.deepEqual(result, { days: ['2026-05-01'], filesRemoved: 2 });
    const files = await listEventFiles(dataDir);
    assert.equal(files.length, 1);
    assert.equal(files[0]!.format, 'parquet');

    const read: UsageEvent[] = [];
    for await (const e of readEvents(dataDir)) read.push(e);
    // Sorted by user (NULL last), then time; the duplicate of r2 and the torn line are gone.
    assert.deepEqual(read, [events[1], events[0], events[2]]);
  });

  it('leaves days from the cut-off on alone, and a day already compacted once', async () => {
    const dataDir = join(root, 'two');
    const sink = new FileEventSink({ dataDir });
    await sink.write([event('a', '2026-05-01T00:00:00.000Z', 'u'), event('b', '2026-05-02T00:00:00.000Z', 'u')]);
    await sink.close();
    assert.deepEqual((await compactEventLog({ dataDir, db, before: '2026-05-02' })).days, ['2026-05-01']);
    assert.deepEqual((await compactEventLog({ dataDir, db, before: '2026-05-02' })).days, [], 'nothing left to do');
    const formats = (await listEventFiles(dataDir)).map((f) => [f.dt, f.format]);
    assert.deepEqual(formats, [
      ['2026-05-01', 'parquet'],
      ['2026-05-02', 'ndjson'],
    ]);
  });

  it('merges late NDJSON into a compacted day', async () => {
    const dataDir = join(root, 'three');
    for (const batch of [[event('a', '2026-05-01T00:00:00.000Z', 'u')], [event('b', '2026-05-01T01:00:00.000Z', 'u'), event('a', '2026-05-01T00:00:00.000Z', 'u')]]) {
      const sink = new FileEventSink({ dataDir });
      await sink.write(batch);
      await sink.close();
      await compactEventLog({ dataDir, db, before: '2026-05-03' });
    }
    const ids: string[] = [];
    for await (const e of readEvents(dataDir)) ids.push(e.request_id);
    assert.deepEqual(ids, ['a', 'b']);
    assert.equal((await readdir(partitionDir(dataDir, '2026-05-01'))).length, 1);
  });
});

describe('EventCompactor', () => {
  it('compacts days before yesterday at start and on demand, and stops on close', async () => {
    const root = await mkdtemp(join(tmpdir(), 'compactor-'));
    const db = await openDuckDb(':memory:');
    try {
      const sink = new FileEventSink({ dataDir: root });
      await sink.write([
        event('old', '2026-05-01T00:00:00.000Z', 'u'),
        event('yesterday', '2026-05-09T00:00:00.000Z', 'u'),
        event('today', '2026-05-10T00:00:00.000Z', 'u'),
      ]);
      await sink.close();
      const compactor = EventCompactor.start({ dataDir: root, db, now: () => Date.parse('2026-05-10T12:00:00Z') });
      await compactor.compactNow();
      await compactor.close();
      assert.deepEqual(
        (await listEventFiles(root)).map((f) => [f.dt, f.format]),
        [
          ['2026-05-01', 'parquet'],
          ['2026-05-09', 'ndjson'],
          ['2026-05-10', 'ndjson'],
        ],
      );
    } finally {
      await db.close();
      await rm(root, { recursive: true, force: true });
    }
  });
});
