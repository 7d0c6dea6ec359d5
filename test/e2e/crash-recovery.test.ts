/**
 * Killing the local gateway mid-load: the real server (`bin/local-server.ts`) in a child process, concurrent
 * streaming and non-streaming traffic, SIGKILL, restart on the same data directory.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { UsageEvent } from '../../lambda/core/usage-event';
import { openDuckDb } from '../../lambda/local/duckdb';
import { DuckDbCounterStore } from '../../lambda/local/duckdb-counter-store';
import { listEventFiles, readEvents } from '../../lambda/local/event-files';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream';

const ROOT = join(__dirname, '..', '..');
const CONCURRENCY = 40;
const USERS = 20;
/** Answers completed before the kill; traffic runs until then, so the kill lands mid-load. */
const KILL_AFTER_ANSWERS = 400;

let upstream: FakeUpstream;
let dataDir: string;
const children: ChildProcess[] = [];

interface Gateway {
  readonly child: ChildProcess;
  readonly url: string;
}

/** Starts the server as `npm start` does and resolves with its address once it prints that it is running. */
async function startGateway(): Promise<Gateway> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'bin/local-server.ts'], {
    cwd: ROOT,
    env: { ...process.env, PORT: '0', DATA_DIR: dataDir, UPSTREAM_OPENAI_URL: upstream.url, LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let output = '';
  const url = await new Promise<string>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      const match = /OpenAI base URL:\s+(http:\/\/\S+)\/v1/.exec(output);
      if (match) resolve(match[1]!);
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.once('exit', (code) => reject(new Error(`the gateway exited with ${code} before serving:\n${output}`)));
  });
  return { child, url };
}

function exited(child: ChildProcess): Promise<void> {
  return child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((resolve) => child.once('exit', () => resolve()));
}

interface Sent {
  readonly requestId: string;
  readonly userId: string;
  /** The whole answer arrived with a 2xx status. */
  answered: boolean;
}

/** One request through the gateway, streaming or not; records whether its whole 2xx answer arrived. */
async function send(url: string, sent: Sent, stream: boolean): Promise<void> {
  const response = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      authorization: 'Bearer sk-crash-test',
      'helicone-user-id': sent.userId,
      'helicone-request-id': sent.requestId,
      'x-fake-words': '20',
      ...(stream && { 'x-fake-chunk-delay-ms': '2' }),
    },
    body: JSON.stringify({ model: 'gpt-4o-mini', stream, messages: [{ role: 'user', content: 'Hello' }] }),
  });
  const text = await response.text();
  if (response.status >= 200 && response.status < 300 && (!stream || text.includes('data: [DONE]'))) sent.answered = true;
}

function perUserOf(events: readonly UsageEvent[]): Map<string, number> {
  const perUser = new Map<string, number>();
  for (const event of events) perUser.set(event.user_id!, (perUser.get(event.user_id!) ?? 0) + 1);
  return perUser;
}

async function withCountersOf<T>(dir: string, fn: (counters: DuckDbCounterStore) => Promise<T>): Promise<T> {
  const db = await openDuckDb(join(dir, 'gateway.duckdb'));
  try {
    const counters = await DuckDbCounterStore.open({ db });
    try {
      return await fn(counters);
    } finally {
      await counters.close();
    }
  } finally {
    await db.close();
  }
}

before(async () => {
  upstream = await startFakeUpstream({ record: false });
  dataDir = await mkdtemp(join(tmpdir(), 'gateway-crash-'));
});

after(async () => {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited(child);
  }
  await upstream?.close();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('the local gateway killed with SIGKILL under load', () => {
  it('restarts on the same data directory with an intact log, no duplicate, and totals equal to the log', async (t) => {
    const first = await startGateway();
    const sent: Sent[] = [];
    let answers = 0;
    let killed = false;
    const killedAt = new Promise<void>((resolve) => {
      const worker = async (w: number) => {
        for (let i = 0; !killed; i++) {
          const one: Sent = { requestId: randomUUID(), userId: `crash_user_${(w + i) % USERS}`, answered: false };
          sent.push(one);
          await send(first.url, one, (w + i) % 2 === 0).catch(() => undefined);
          if (one.answered && ++answers >= KILL_AFTER_ANSWERS && !killed) {
            killed = true;
            first.child.kill('SIGKILL');
            resolve();
          }
        }
      };
      void Promise.all(Array.from({ length: CONCURRENCY }, (_, w) => worker(w)));
    });
    await killedAt;
    await exited(first.child);
    assert.equal(first.child.signalCode, 'SIGKILL');

    // Every line of every segment is a complete event, except at most a torn last line, which readers skip.
    let torn = 0;
    for (const file of await listEventFiles(dataDir)) {
      const lines = (await readFile(file.path, 'utf8')).split('\n');
      const last = lines.pop()!; // '' when the file ends with a newline
      for (const line of lines) assert.doesNotThrow(() => JSON.parse(line), `a complete line in ${file.path}`);
      if (last !== '') torn++;
    }
    const logged: UsageEvent[] = [];
    for await (const event of readEvents(dataDir)) logged.push(event);
    const ids = new Set(logged.map((event) => event.request_id));
    assert.equal(ids.size, logged.length, 'no event is in the log twice');
    const sentIds = new Set(sent.map((one) => one.requestId));
    assert.ok(logged.every((event) => sentIds.has(event.request_id)), 'every logged event is a request that was sent');

    // Events are written once the answer has ended, so an answer completed just before the kill may have none.
    const answeredWithoutEvent = sent.filter((one) => one.answered && !ids.has(one.requestId)).length;
    const answered = sent.filter((one) => one.answered).length;
    t.diagnostic(
      `sent ${sent.length}, answered 2xx ${answered}, events in the log ${logged.length}, torn last lines ${torn}, ` +
        `answered but without an event ${answeredWithoutEvent}`,
    );
    assert.ok(answeredWithoutEvent <= CONCURRENCY, 'only answers in flight at the kill can lack an event');

    // What the killed process had counted: events it logged but had not yet added to the totals are the catch-up's job.
    const countedAtKill = await withCountersOf(dataDir, async (counters) => {
      let counted = 0;
      for (const user of perUserOf(logged).keys()) counted += (await counters.getUser(user, '2000-01-01', '2000-01'))?.all.requests ?? 0;
      return counted;
    });
    t.diagnostic(`events in the log but not in the totals at the kill: ${logged.length - countedAtKill}`);

    // Restart: the catch-up counts what the log holds and the totals lack, before serving.
    const second = await startGateway();
    const totals = new Map<string, number>();
    let cursor: string | null = null;
    do {
      const response: Response = await fetch(`${second.url}/metrics/users?period=all&limit=1000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
      const page = (await response.json()) as { users: { user_id: string; requests: number }[]; next_cursor: string | null };
      for (const user of page.users) totals.set(user.user_id, user.requests);
      cursor = page.next_cursor;
    } while (cursor !== null);
    const perUser = perUserOf(logged);
    assert.deepEqual(Object.fromEntries([...totals].sort()), Object.fromEntries([...perUser].sort()), 'totals after restart = events in the log');

    second.child.kill('SIGTERM');
    await exited(second.child);
    assert.equal(second.child.exitCode, 0, 'a clean shutdown after the restart');
  });
});
