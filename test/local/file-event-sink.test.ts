import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { appendFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { USAGE_EVENT_VERSION, type UsageEvent } from '../../lambda/core/usage-event';
import { FileEventSink, readEvents } from '../../lambda/local/file-event-sink';
import { listEventFiles, parseEventLine } from '../../lambda/local/event-files';

function usageEvent(request_id: string, ts: string, overrides: Partial<UsageEvent> = {}): UsageEvent {
  return {
    v: USAGE_EVENT_VERSION,
    request_id,
    ts,
    user_id: 'alice',
    properties: { team: 'search' },
    provider: 'openai',
    model: 'gpt-4o',
    path: '/v1/chat/completions',
    method: 'POST',
    status: 200,
    stream: false,
    latency_ms: 120,
    ttft_ms: 80,
    prompt_tokens: 10,
    completion_tokens: 5,
    cached_prompt_tokens: 0,
    reasoning_tokens: 0,
    total_tokens: 15,
    cost_usd: 0.000001,
    cost_nano_usd: 1000,
    cost_source: 'genai-prices',
    usage_source: 'provider',
    error: null,
    key_id: null,
    ...overrides,
  };
}

async function collect(iterable: AsyncIterable<UsageEvent>): Promise<UsageEvent[]> {
  const out: UsageEvent[] = [];
  for await (const event of iterable) out.push(event);
  return out;
}

describe('FileEventSink', () => {
  let root: string;
  let n = 0;
  const freshDir = () => join(root, `data-${++n}`);

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'file-event-sink-'));
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('writes each event as one JSON line under dt=<UTC day of its ts>', async () => {
    const dataDir = freshDir();
    const sink = new FileEventSink({ dataDir });
    const first = usageEvent('r1', '2026-11-22T14:03:07.123Z', { properties: { note: 'line\nbreak' } });
    const second = usageEvent('r2', '2026-11-22T23:59:59.999Z');
    await sink.write([first, second]);
    await sink.close();

    const dirs = await readdir(join(dataDir, 'events'));
    assert.deepEqual(dirs, ['dt=2026-11-22']);
    const files = await readdir(join(dataDir, 'events', 'dt=2026-11-22'));
    assert.equal(files.length, 1);
    assert.match(files[0], new RegExp(`^part-\\d{13}-${process.pid}-[0-9a-f]{8}\\.ndjson$`));
    const text = await readFile(join(dataDir, 'events', 'dt=2026-11-22', files[0]), 'utf8');
    const lines = text.split('\n');
    assert.equal(lines.pop(), '', 'the file ends with a newline');
    assert.deepEqual(lines.map((line) => JSON.parse(line)), [first, second]);
  });

  it('commits many concurrent writes together, with far fewer fsyncs than events', async () => {
    const dataDir = freshDir();
    const sink = new FileEventSink({ dataDir });
    const count = 2000;
    const ids = Array.from({ length: count }, (_, i) => `req-${i}`);
    await Promise.all(ids.map((id) => sink.write([usageEvent(id, '2026-11-22T10:00:00.000Z')])));
    // A second wave issued while nothing is in flight still lands, in order after the first.
    await Promise.all(['late-1', 'late-2'].map((id) => sink.write([usageEvent(id, '2026-11-22T10:00:01.000Z')])));
    const stats = sink.stats();
    await sink.close();

    const read = (await collect(readEvents(dataDir))).map((event) => event.request_id);
    assert.deepEqual(read, [...ids, 'late-1', 'late-2'], 'every event once, in write order');
    assert.equal(stats.events, count + 2);
    assert.ok(stats.syncs <= 10, `expected group commits, got ${stats.syncs} fsyncs for ${count + 2} events`);
  });

  it('makes an event readable by the time its write resolves', async () => {
    const dataDir = freshDir();
    const sink = new FileEventSink({ dataDir });
    const writes = Array.from({ length: 50 }, (_, i) => sink.write([usageEvent(`r${i}`, '2026-11-22T10:00:00.000Z')]));
    await writes[17];
    const onDisk = (await collect(readEvents(dataDir))).map((event) => event.request_id);
    assert.ok(onDisk.includes('r17'), 'an acknowledged event can be read back');
    await Promise.all(writes);
    await sink.close();
  });

  it('never appends to an old segment, so a torn last line from a crash stays harmless', async () => {
    const dataDir = freshDir();
    const before = new FileEventSink({ dataDir });
    await before.write(['a', 'b', 'c'].map((id) => usageEvent(id, '2026-11-22T10:00:00.000Z')));
    await before.close();
    // The process is killed in the middle of the next line.
    const [crashed] = await listEventFiles(dataDir);
    const torn = JSON.stringify(usageEvent('torn', '2026-11-22T10:00:01.000Z')).slice(0, 57);
    await appendFile(crashed.path, torn);

    const after = new FileEventSink({ dataDir });
    await after.write([usageEvent('d', '2026-11-22T10:00:02.000Z')]);
    await after.close();

    const files = await listEventFiles(dataDir);
    assert.equal(files.length, 2, 'the new sink started a new segment');
    assert.ok((await readFile(crashed.path, 'utf8')).endsWith(torn), 'the crashed segment was left as it was');
    const ids = (await collect(readEvents(dataDir))).map((event) => event.request_id).sort();
    assert.deepEqual(ids, ['a', 'b', 'c', 'd']);
  });

  it('rotates to a new segment in the next day’s partition at UTC midnight', async () => {
    const dataDir = freshDir();
    const sink = new FileEventSink({ dataDir });
    await sink.write([usageEvent('last-of-day', '2026-12-31T23:59:59.999Z')]);
    await sink.write([usageEvent('first-of-day', '2027-01-01T00:00:00.000Z')]);
    await sink.write([usageEvent('day-three', '2027-01-02T08:00:00.000Z')]);
    assert.ok(sink.stats().openSegments <= 2, 'segments of older days are closed');
    // A late event for an old day opens a new segment there rather than reopening the closed one.
    await sink.write([usageEvent('late', '2026-12-31T23:59:59.000Z')]);
    await sink.close();

    const files = await listEventFiles(dataDir);
    assert.deepEqual(
      files.map((file) => file.dt),
      ['2026-12-31', '2026-12-31', '2027-01-01', '2027-01-02'],
    );
    const byDay = await collect(readEvents(dataDir, { from: '2027-01-01', to: '2027-01-01' }));
    assert.deepEqual(byDay.map((event) => event.request_id), ['first-of-day']);
  });

  it('commits one batch spanning more days than it keeps segments open, syncing each before closing it', async () => {
    const dataDir = freshDir();
    const sink = new FileEventSink({ dataDir, maxOpenSegments: 2 });
    const days = ['2026-11-20', '2026-11-21', '2026-11-22', '2026-11-23'];
    await sink.write(days.map((day, i) => usageEvent(`r${i}`, `${day}T12:00:00.000Z`)));
    const stats = sink.stats();
    await sink.close();
    assert.equal(stats.syncs, days.length, 'each day’s segment was fsync’d once');
    assert.equal(stats.openSegments, 2);
    assert.deepEqual(
      (await collect(readEvents(dataDir))).map((event) => event.request_id),
      ['r0', 'r1', 'r2', 'r3'],
    );
  });

  it('rotates segments by size without splitting a line', async () => {
    const dataDir = freshDir();
    const sink = new FileEventSink({ dataDir, segmentBytes: 2048 });
    const ids = Array.from({ length: 40 }, (_, i) => `r${i}`);
    for (let i = 0; i < ids.length; i += 4) {
      await sink.write(ids.slice(i, i + 4).map((id) => usageEvent(id, '2026-11-22T10:00:00.000Z')));
    }
    await sink.close();

    const files = await listEventFiles(dataDir);
    assert.ok(files.length > 3, `expected several segments, got ${files.length}`);
    for (const file of files) {
      const text = await readFile(file.path, 'utf8');
      assert.ok(text.endsWith('\n'));
      for (const line of text.trimEnd().split('\n')) assert.ok(parseEventLine(line), 'every line is a whole event');
    }
    assert.deepEqual((await collect(readEvents(dataDir))).map((event) => event.request_id), ids);
  });

  it('holds writes for the next commit until minCommitIntervalMs has passed since the last one, but not at close', async () => {
    const dataDir = freshDir();
    const sink = new FileEventSink({ dataDir, minCommitIntervalMs: 60_000 });
    const guard = <T>(promise: Promise<T>, what: string) =>
      Promise.race([promise, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${what} did not settle`)), 10_000).unref())]);
    await guard(sink.write([usageEvent('first', '2026-11-22T10:00:00.000Z')]), 'the first write, after a quiet spell,');

    let acknowledged = 0;
    const held = ['second', 'third'].map((id) => sink.write([usageEvent(id, '2026-11-22T10:00:00.000Z')]).then(() => void acknowledged++));
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(acknowledged, 0, 'writes within the interval wait for the next commit');
    assert.deepEqual((await collect(readEvents(dataDir))).map((event) => event.request_id), ['first']);

    await guard(sink.close(), 'close');
    await Promise.all(held);
    assert.deepEqual((await collect(readEvents(dataDir))).map((event) => event.request_id), ['first', 'second', 'third']);
    assert.equal(sink.stats().commits, 2, 'the held writes share one commit');
  });

  it('flush() waits for queued writes, and writes after close() reject', async () => {
    const dataDir = freshDir();
    const sink = new FileEventSink({ dataDir });
    let acknowledged = false;
    void sink.write([usageEvent('r1', '2026-11-22T10:00:00.000Z')]).then(() => (acknowledged = true));
    await sink.flush();
    assert.equal(acknowledged, true);
    await sink.close();
    await assert.rejects(sink.write([usageEvent('r2', '2026-11-22T10:00:00.000Z')]), /closed/);
  });
});

describe('readEvents', () => {
  let dataDir: string;

  before(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'read-events-'));
  });
  after(async () => {
    await rm(dataDir, { recursive: true, force: true });
  });

  it('reads nothing, without failing, when no event was ever written', async () => {
    assert.deepEqual(await collect(readEvents(join(dataDir, 'missing'))), []);
  });

  it('skips a torn last line and foreign files, and keeps to the day range', async () => {
    const day = join(dataDir, 'events', 'dt=2026-11-21');
    const next = join(dataDir, 'events', 'dt=2026-11-22');
    await rm(join(dataDir, 'events'), { recursive: true, force: true });
    await mkdir(day, { recursive: true });
    await mkdir(next, { recursive: true });
    const line = (id: string, ts: string) => JSON.stringify(usageEvent(id, ts));
    await writeFile(
      join(day, 'part-1-1-00000000.ndjson'),
      `${line('a', '2026-11-21T01:00:00.000Z')}\n${line('b', '2026-11-21T02:00:00.000Z')}\n{"v":1,"request_id":"c","ts":"2026-11-2`,
    );
    await writeFile(join(day, 'notes.txt'), 'not events');
    await writeFile(join(next, 'part-2-1-00000000.ndjson'), `${line('d', '2026-11-22T01:00:00.000Z')}`);

    const warnings: unknown[] = [];
    const log = { debug() {}, info() {}, error() {}, warn: (_m: string, f?: unknown) => warnings.push(f) };
    const all = await collect(readEvents(dataDir, { log }));
    assert.deepEqual(all.map((event) => event.request_id), ['a', 'b', 'd'], 'a complete last line without newline counts');
    assert.equal(warnings.length, 1, 'the torn line is reported');
    const first = await collect(readEvents(dataDir, { to: '2026-11-21' }));
    assert.deepEqual(first.map((event) => event.request_id), ['a', 'b']);
  });
});
