/**
 * The spooling event log on real files: the events directory broken by replacing it with a regular file (root
 * ignores permissions), the spool broken the same way, and a primary that fails or holds writes on demand where a
 * test needs to count, stall or settle attempts one by one.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { appendFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '../../lambda/core/log';
import type { EventSink } from '../../lambda/core/ports';
import type { UsageEvent } from '../../lambda/core/usage-event';
import { listEventFiles, readEvents } from '../../lambda/local/event-files';
import { FileEventSink } from '../../lambda/local/file-event-sink';
import { EventLogOverflowError, SpoolingEventSink, type SpoolingEventSinkOptions } from '../../lambda/local/spooling-event-sink';
import { sampleEvent } from '../support/usage-events';

interface LogLine {
  readonly level: string;
  readonly message: string;
  readonly [field: string]: unknown;
}

function capturingLog(): { log: ReturnType<typeof createLogger>; lines: LogLine[]; named: (message: string) => LogLine[] } {
  const lines: LogLine[] = [];
  return {
    log: createLogger('debug', (line) => lines.push(JSON.parse(line) as LogLine)),
    lines,
    named: (message) => lines.filter((line) => line.message === message),
  };
}

/** Events `prefix-0000`… one second apart from `start`, so a run can span midnight. */
function eventsFrom(prefix: string, count: number, start = '2026-11-22T10:00:00.000Z'): UsageEvent[] {
  const t0 = Date.parse(start);
  return Array.from({ length: count }, (_, i) =>
    sampleEvent({ request_id: `${prefix}-${String(i).padStart(5, '0')}`, ts: new Date(t0 + i * 1000).toISOString(), user_id: `user-${i % 7}` }),
  );
}

async function logged(dataDir: string): Promise<UsageEvent[]> {
  const out: UsageEvent[] = [];
  for await (const event of readEvents(dataDir)) out.push(event);
  return out;
}

async function spoolFiles(dataDir: string): Promise<string[]> {
  try {
    return (await readdir(join(dataDir, 'spool'))).filter((name) => name.endsWith('.ndjson')).sort();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
}

async function spooledIds(dataDir: string): Promise<string[]> {
  const ids: string[] = [];
  for (const name of await spoolFiles(dataDir)) {
    for (const line of (await readFile(join(dataDir, 'spool', name), 'utf8')).split('\n')) {
      if (line !== '') ids.push((JSON.parse(line) as UsageEvent).request_id);
    }
  }
  return ids;
}

const ids = (events: readonly UsageEvent[]) => events.map((event) => event.request_id);

/** Replaces a directory path with a regular file: every mkdir/open under it fails, even for root. */
async function breakPath(path: string): Promise<void> {
  await rm(path, { recursive: true, force: true });
  await writeFile(path, 'not a directory\n');
}

async function repairPath(path: string): Promise<void> {
  await rm(path, { force: true });
}

/** Polls until `condition` holds; the deadline only keeps a broken build from hanging the run. */
async function waitFor(condition: () => boolean | Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`gave up waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** `promise`, or a failure instead of a hang when it never settles; the deadline is far beyond what it needs. */
async function settles<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const gaveUp = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`gave up waiting until ${what}`)), 10_000);
  });
  try {
    return await Promise.race([promise, gaveUp]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The timeout for tests where a held write must time out but every other write must answer in time: a real file
 * write and fsync, which on a loaded machine can take tens of milliseconds. Each held write costs a test this long.
 */
const HUNG_MS = 1_000;

const diskFull = () => Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });

/** A primary that fails on demand, in front of a real file sink; counts the writes it is given. */
class SwitchablePrimary implements EventSink {
  failing = false;
  calls = 0;

  constructor(readonly inner: FileEventSink) {}

  write(events: readonly UsageEvent[]): Promise<void> {
    this.calls++;
    if (this.failing) return Promise.reject(diskFull());
    return this.inner.write(events);
  }

  flush(): Promise<void> {
    return this.inner.flush();
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** A write the primary holds (a disk that has not answered yet) until the test lets it land or fail. */
interface HeldWrite {
  readonly ids: readonly string[];
  /** Hands the write to the file sink; resolves as the write given to the primary does (after the sink has seen it). */
  land(): Promise<void>;
  fail(): void;
}

/**
 * A primary in front of a real file sink that treats its n-th write as the n-th step of a script: pass it through,
 * fail it at once, or hold it. Records the request ids of every write it is given.
 */
class ScriptedPrimary implements EventSink {
  readonly calls: string[][] = [];
  readonly held: HeldWrite[] = [];

  constructor(
    readonly inner: FileEventSink,
    private readonly script: readonly ('pass' | 'fail' | 'hold')[],
  ) {}

  write(events: readonly UsageEvent[]): Promise<void> {
    const step = this.script[this.calls.length] ?? 'pass';
    this.calls.push(ids(events));
    if (step === 'fail') return Promise.reject(diskFull());
    if (step === 'pass') return this.inner.write(events);
    let land = () => {};
    let fail = () => {};
    const written = new Promise<void>((resolve, reject) => {
      land = () => void this.inner.write(events).then(resolve, reject);
      fail = () => reject(diskFull());
    });
    this.held.push({
      ids: ids(events),
      land: () => {
        land();
        return written;
      },
      fail,
    });
    return written;
  }

  flush(): Promise<void> {
    return this.inner.flush();
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** How many copies of each request id the event log holds. */
async function copiesInLog(dataDir: string): Promise<Map<string, number>> {
  const copies = new Map<string, number>();
  for (const event of await logged(dataDir)) copies.set(event.request_id, (copies.get(event.request_id) ?? 0) + 1);
  return copies;
}

describe('SpoolingEventSink', () => {
  let root: string;
  let n = 0;
  const freshDir = async () => {
    const dir = join(root, `data-${++n}`);
    await mkdir(dir, { recursive: true });
    return dir;
  };
  const open = (dataDir: string, options: Partial<SpoolingEventSinkOptions<FileEventSink>> = {}) =>
    SpoolingEventSink.open({ primary: new FileEventSink({ dataDir }), dataDir, ...options });

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'spooling-event-sink-'));
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('writes straight to the event log while it works, and flush waits for writes in flight', async () => {
    const dataDir = await freshDir();
    const sink = await open(dataDir);
    const events = eventsFrom('ok', 3);
    const writes = events.map((event) => sink.write([event]));
    await sink.flush();
    assert.deepEqual(ids(await logged(dataDir)), ids(events));
    await Promise.all(writes);
    assert.equal(sink.stats().written, 3);
    assert.equal(sink.stats().state, 'healthy');
    assert.deepEqual(await spoolFiles(dataDir), [], 'no spool without an outage');
    await sink.close();
  });

  it('accepts writes while the events directory is broken, spools them durably, and replays them in order into their own days', async () => {
    const dataDir = await freshDir();
    const { log, named } = capturingLog();
    const replayedToHook: string[] = [];
    // A long backoff: nothing retries until the test says so.
    const sink = await open(dataDir, { log, initialRetryMs: 3_600_000, onReplayed: (events) => void replayedToHook.push(...ids(events)) });
    await breakPath(join(dataDir, 'events'));

    // Spanning midnight: the first 25 belong to 2026-11-21, the rest to 2026-11-22.
    const events = eventsFrom('outage', 50, '2026-11-21T23:59:35.000Z');
    await Promise.all(events.map((event) => sink.write([event])));

    let stats = sink.stats();
    assert.equal(stats.state, 'degraded');
    assert.equal(stats.spooled, 50);
    assert.equal(stats.pending, 50);
    assert.equal(stats.pendingInMemoryOnly, 0);
    assert.equal(stats.written, 0);
    assert.deepEqual(await spooledIds(dataDir), ids(events), 'the spool holds every event, in order');
    assert.equal(sink.oldestPendingDay(), '2026-11-21');
    assert.equal(named('event_log_degraded').length, 1, 'the outage is logged once, not per event');

    await repairPath(join(dataDir, 'events'));
    assert.equal(await sink.retryNow(), true);

    const inLog = await logged(dataDir);
    assert.deepEqual(ids(inLog), ids(events), 'every event once, in order');
    const days = (await listEventFiles(dataDir)).map((file) => file.dt);
    assert.deepEqual([...new Set(days)], ['2026-11-21', '2026-11-22']);
    const firstDay = [];
    for await (const event of readEvents(dataDir, { from: '2026-11-21', to: '2026-11-21' })) firstDay.push(event.request_id);
    assert.deepEqual(firstDay, ids(events.slice(0, 25)), 'events keep the partition of their own day');
    assert.deepEqual(await spoolFiles(dataDir), [], 'the spool is emptied');
    assert.deepEqual(replayedToHook, ids(events), 'onReplayed hears of each replayed event once');

    stats = sink.stats();
    assert.equal(stats.state, 'healthy');
    assert.equal(stats.replayed, 50);
    assert.equal(stats.pending, 0);
    assert.equal(sink.oldestPendingDay(), null);
    const recovered = named('event_log_recovered');
    assert.equal(recovered.length, 1);
    assert.equal(recovered[0]!.replayed, 50);
    assert.equal(recovered[0]!.spooled, 50);

    const after = eventsFrom('after', 1, '2026-11-22T12:00:00.000Z');
    await sink.write(after);
    assert.equal(sink.stats().written, 1, 'back to direct writes');
    await sink.close();
    assert.deepEqual(ids(await logged(dataDir)), [...ids(events), ...ids(after)]);
  });

  it('does not try the failing event log again for each write while degraded', async () => {
    const dataDir = await freshDir();
    const primary = new SwitchablePrimary(new FileEventSink({ dataDir }));
    const sink = await SpoolingEventSink.open({ primary, dataDir, initialRetryMs: 3_600_000 });
    primary.failing = true;
    const events = eventsFrom('skip', 101);
    await sink.write(events.slice(0, 1));
    assert.equal(primary.calls, 1);
    await Promise.all(events.slice(1).map((event) => sink.write([event])));
    assert.equal(primary.calls, 1, 'writes went straight to the spool');
    assert.equal(sink.stats().spooled, 101);

    primary.failing = false;
    assert.equal(await sink.retryNow(), true);
    assert.deepEqual(ids(await logged(dataDir)), ids(events));
    await sink.close();
  });

  it('rides out an outage of thousands of events with the background retry, reading spool files back past the memory bound', async () => {
    const dataDir = await freshDir();
    const { log, named } = capturingLog();
    const sink = await open(dataDir, {
      log,
      maxMemoryEvents: 500,
      spoolFileBytes: 64 * 1024,
      replayBatchEvents: 300,
      initialRetryMs: 5,
      maxRetryMs: 40,
    });
    await breakPath(join(dataDir, 'events'));
    const events = eventsFrom('bulk', 5000);
    for (let wave = 0; wave < 10; wave++) {
      await Promise.all(events.slice(wave * 500, (wave + 1) * 500).map((event) => sink.write([event])));
    }
    const during = sink.stats();
    assert.equal(during.spooled, 5000);
    assert.equal(during.pending, 5000);
    assert.ok(during.heldInMemory <= 500, `memory stays within its bound (${during.heldInMemory})`);
    assert.ok(during.spoolFiles > 1, 'the spool rotates its files');
    await waitFor(() => sink.stats().failedRetries > 0, 'the background loop has retried');

    await repairPath(join(dataDir, 'events'));
    await waitFor(() => sink.stats().state === 'healthy', 'the background retry replays the spool');

    const inLog = ids(await logged(dataDir));
    assert.equal(inLog.length, 5000);
    assert.deepEqual(inLog, ids(events), 'every event exactly once, in order');
    assert.deepEqual(await spoolFiles(dataDir), []);
    assert.equal(sink.stats().replayed, 5000);
    assert.equal(named('event_log_degraded').length, 1);
    assert.equal(named('event_log_recovered').length, 1);
    assert.equal(named('usage_event_undelivered').length, 0);
    await sink.close();
  });

  it('recovers under steady traffic and keeps the order writes were made in, across the outage and the catch-up', async () => {
    const dataDir = await freshDir();
    const sink = await open(dataDir, { initialRetryMs: 5, maxRetryMs: 20, replayBatchEvents: 50 });
    await breakPath(join(dataDir, 'events'));
    const made: string[] = [];
    let traffic = true;
    let next = 0;
    const worker = async () => {
      while (traffic) {
        const [event] = eventsFrom(`steady-${String(next++).padStart(6, '0')}`, 1);
        made.push(event!.request_id);
        await sink.write([event!]);
      }
    };
    const workers = Array.from({ length: 4 }, () => worker());
    await waitFor(() => sink.stats().spooled >= 1000, 'a backlog has built up');
    await repairPath(join(dataDir, 'events'));
    // Writes never stop: the sink must still find its way back to direct writes.
    await waitFor(() => sink.stats().state === 'healthy', 'the backlog is replayed while traffic goes on');
    const writtenAfter = sink.stats().written;
    await waitFor(() => sink.stats().written > writtenAfter + 100, 'traffic goes straight to the log');
    traffic = false;
    await Promise.all(workers);
    await sink.close();
    assert.deepEqual(ids(await logged(dataDir)), made, 'the log holds every write once, in the order they were made');
    assert.deepEqual(await spoolFiles(dataDir), []);
  });

  it('holds events in memory when the spool fails too, spools them once it can, and replays them when the log is back', async () => {
    const dataDir = await freshDir();
    const { log, named } = capturingLog();
    const sink = await open(dataDir, { log, initialRetryMs: 5, maxRetryMs: 20 });
    await breakPath(join(dataDir, 'events'));
    await breakPath(join(dataDir, 'spool'));
    const events = eventsFrom('mem', 20);
    await Promise.all(events.map((event) => sink.write([event])));

    const stats = sink.stats();
    assert.equal(stats.pending, 20);
    assert.equal(stats.pendingInMemoryOnly, 20);
    assert.equal(stats.heldInMemoryOnly, 20);
    assert.equal(stats.spoolFiles, 0);
    assert.equal(named('event_log_spool_failed').length, 1);

    await repairPath(join(dataDir, 'spool'));
    await waitFor(() => sink.stats().pendingInMemoryOnly === 0, 'the retry loop spools what memory held');
    assert.deepEqual(await spooledIds(dataDir), ids(events));
    assert.equal(sink.stats().state, 'degraded', 'the log itself is still broken');

    await repairPath(join(dataDir, 'events'));
    await waitFor(() => sink.stats().state === 'healthy', 'the spool is replayed');
    assert.deepEqual(ids(await logged(dataDir)), ids(events));
    assert.deepEqual(await spoolFiles(dataDir), []);
    await sink.close();
  });

  it('replays the spool files a previous process left at start, skipping a torn last line', async () => {
    const dataDir = await freshDir();
    const events = eventsFrom('left', 5);
    const spool = join(dataDir, 'spool');
    await mkdir(spool);
    const lines = (list: readonly UsageEvent[]) => list.map((event) => JSON.stringify(event) + '\n').join('');
    await writeFile(join(spool, 'spool-1795356187123-4242-00000001.ndjson'), lines(events.slice(0, 3)));
    await writeFile(join(spool, 'spool-1795356187124-4242-00000002.ndjson'), lines(events.slice(3)));
    // The process died mid-append: half a line at the end of its last file.
    await appendFile(join(spool, 'spool-1795356187124-4242-00000002.ndjson'), JSON.stringify(sampleEvent({ request_id: 'torn' })).slice(0, 40));

    const { log, named } = capturingLog();
    const replayedToHook: string[] = [];
    const sink = await open(dataDir, { log, onReplayed: (batch) => void replayedToHook.push(...ids(batch)) });
    assert.deepEqual(ids(await logged(dataDir)), ids(events), 'replayed before open() resolves');
    assert.deepEqual(await spoolFiles(dataDir), []);
    const stats = sink.stats();
    assert.equal(stats.state, 'healthy');
    assert.equal(stats.replayedFromPreviousRun, 5);
    assert.equal(stats.skippedLines, 1);
    assert.equal(named('skipped incomplete spool lines').length, 1);
    assert.equal(named('event_log_spool_found')[0]?.events, 5);
    await sink.close();
    assert.deepEqual(replayedToHook, ids(events));
  });

  it('closes while degraded with everything spooled; the next start stays degraded until repaired, then replays old before new', async () => {
    const dataDir = await freshDir();
    await breakPath(join(dataDir, 'events'));
    const { log, named } = capturingLog();
    const first = await open(dataDir, { log, initialRetryMs: 3_600_000 });
    const old = eventsFrom('old', 30);
    await Promise.all(old.map((event) => first.write([event])));
    await first.close();
    await assert.rejects(first.write(eventsFrom('late', 1)), /closed/);
    assert.equal(first.stats().state, 'closed');
    assert.deepEqual(await spooledIds(dataDir), ids(old), 'what was pending stays in the spool');
    assert.equal(named('event_log_spool_left')[0]?.events, 30);
    assert.equal(named('usage_event_undelivered').length, 0);

    const second = await open(dataDir, { log, initialRetryMs: 5, maxRetryMs: 20 });
    assert.equal(second.stats().state, 'degraded', 'the log still fails at start');
    assert.equal(second.stats().pending, 30);
    const fresh = eventsFrom('new', 5, '2026-11-22T11:00:00.000Z');
    await Promise.all(fresh.map((event) => second.write([event])));
    assert.equal(second.stats().pending, 35);

    await repairPath(join(dataDir, 'events'));
    await waitFor(() => second.stats().state === 'healthy', 'the leftover spool is replayed');
    assert.deepEqual(ids(await logged(dataDir)), [...ids(old), ...ids(fresh)]);
    assert.equal(second.stats().replayedFromPreviousRun, 30);
    assert.deepEqual(await spoolFiles(dataDir), []);
    await second.close();
  });

  it('logs events whole past the memory bound when neither the log nor the spool takes them', async () => {
    const dataDir = await freshDir();
    const { log, named } = capturingLog();
    const sink = await open(dataDir, { log, maxMemoryEvents: 10, initialRetryMs: 3_600_000 });
    await breakPath(join(dataDir, 'events'));
    await breakPath(join(dataDir, 'spool'));
    const events = eventsFrom('bound', 15);
    for (const event of events.slice(0, 10)) await sink.write([event]);
    for (const event of events.slice(10)) {
      await assert.rejects(sink.write([event]), (error: unknown) => {
        assert.ok(error instanceof EventLogOverflowError);
        assert.equal(error.eventsLogged, true, 'callers must not log the event again');
        assert.equal(error.retryable, false);
        return true;
      });
    }
    const undelivered = named('usage_event_undelivered');
    assert.deepEqual(undelivered.map((line) => line.event), events.slice(10), 'each event logged whole, once');
    assert.equal(sink.stats().undelivered, 5);
    assert.equal(sink.stats().pending, 10);

    await repairPath(join(dataDir, 'events'));
    await repairPath(join(dataDir, 'spool'));
    assert.equal(await sink.retryNow(), true);
    assert.deepEqual(ids(await logged(dataDir)), ids(events.slice(0, 10)));
    await sink.close();
  });

  it('logs what only memory holds when closing with neither the log nor the spool working', async () => {
    const dataDir = await freshDir();
    const { log, named } = capturingLog();
    const sink = await open(dataDir, { log, initialRetryMs: 3_600_000 });
    await breakPath(join(dataDir, 'events'));
    await breakPath(join(dataDir, 'spool'));
    const events = eventsFrom('closing', 3);
    await Promise.all(events.map((event) => sink.write([event])));
    await sink.close();
    assert.deepEqual(named('usage_event_undelivered').map((line) => line.event), events);
    assert.equal(sink.stats().undelivered, 3);
    assert.equal(sink.stats().pending, 0);
  });

  describe('a write the event log answers only after primaryTimeoutMs', () => {
    it('spools it, and drops the spooled copy instead of replaying it once the write lands late', async () => {
      const dataDir = await freshDir();
      const { log, named } = capturingLog();
      const primary = new ScriptedPrimary(new FileEventSink({ dataDir }), ['hold']);
      const sink = await SpoolingEventSink.open({ primary, dataDir, log, primaryTimeoutMs: HUNG_MS, initialRetryMs: 3_600_000 });
      const [event] = eventsFrom('late', 1);
      await sink.write([event!]);
      assert.equal(sink.stats().state, 'degraded', 'a write that does not answer degrades the sink');
      assert.deepEqual(await spooledIds(dataDir), ids([event!]), 'the event survives a crash while the write hangs');
      assert.equal(sink.stats().pending, 1);

      await primary.held[0]!.land();
      assert.equal(await sink.retryNow(), true);
      assert.deepEqual(primary.calls, [ids([event!])], 'the event log is given the event once');
      assert.equal(sink.stats().pending, 0);
      await sink.close();
      assert.deepEqual([...(await copiesInLog(dataDir))], [[event!.request_id, 1]]);
      assert.deepEqual(await spoolFiles(dataDir), [], 'the spooled copy is deleted');
      const stats = sink.stats();
      assert.equal(stats.written, 1);
      assert.equal(stats.writtenLate, 1);
      assert.equal(stats.spooled, 1);
      assert.equal(stats.replayed, 0);
      assert.equal((named('event_log_degraded')[0]?.error as { code?: string } | undefined)?.code, 'event_log_timeout');
      assert.equal(named('event_log_recovered')[0]?.written_late, 1);
    });

    it('does not replay it while the write is still in flight, and replays it once the write fails', async () => {
      const dataDir = await freshDir();
      const primary = new ScriptedPrimary(new FileEventSink({ dataDir }), ['hold']);
      const sink = await SpoolingEventSink.open({ primary, dataDir, primaryTimeoutMs: HUNG_MS, initialRetryMs: 3_600_000 });
      const [event] = eventsFrom('pending', 1);
      await sink.write([event!]);

      let retried = false;
      const retry = sink.retryNow().then((done) => {
        retried = true;
        return done;
      });
      // Room for a replay that does not wait to reach the event log (it takes a few milliseconds).
      await new Promise((resolve) => setTimeout(resolve, 100));
      assert.equal(primary.calls.length, 1, 'nothing is replayed ahead of the write in flight');
      assert.equal(retried, false, 'the retry waits for the write in flight');

      primary.held[0]!.fail();
      assert.equal(await retry, true);
      assert.deepEqual(primary.calls, [ids([event!]), ids([event!])], 'the failed write, then its replay');
      await sink.close();
      assert.deepEqual([...(await copiesInLog(dataDir))], [[event!.request_id, 1]]);
      assert.equal(sink.stats().replayed, 1);
      assert.equal(sink.stats().writtenLate, 0);
      assert.deepEqual(await spoolFiles(dataDir), []);
    });

    it('replays only the events whose late write failed, from a spool file shared with others and read back from disk', async () => {
      const dataDir = await freshDir();
      const primary = new ScriptedPrimary(new FileEventSink({ dataDir }), ['hold', 'hold']);
      // No events kept in memory: replay reads the spool file back, where the late writes' events are found by position.
      const sink = await SpoolingEventSink.open({ primary, dataDir, primaryTimeoutMs: HUNG_MS, maxMemoryEvents: 0, replayBatchEvents: 2, initialRetryMs: 3_600_000 });
      const landing = eventsFrom('landing', 3);
      const failing = eventsFrom('failing', 2);
      const spooled = eventsFrom('spooled', 3);
      await Promise.all([sink.write(landing), sink.write(failing)]);
      await Promise.all(spooled.map((event) => sink.write([event])));
      assert.equal(primary.calls.length, 2, 'writes made while degraded go to the spool');
      assert.equal((await spoolFiles(dataDir)).length, 1, 'all of them in one spool file');
      assert.deepEqual(new Set(await spooledIds(dataDir)), new Set(ids([...landing, ...failing, ...spooled])));

      const [landingWrite, failingWrite] = primary.held;
      assert.deepEqual(landingWrite!.ids, ids(landing));
      await landingWrite!.land();
      failingWrite!.fail();
      assert.equal(sink.stats().pending, 5);
      assert.equal(await sink.retryNow(), true);
      await sink.close();

      const copies = await copiesInLog(dataDir);
      assert.equal(copies.size, 8);
      for (const [id, count] of copies) assert.equal(count, 1, `${id} is in the log once`);
      assert.deepEqual(ids(await logged(dataDir)).slice(0, 3), ids(landing), 'the late write landed first');
      const stats = sink.stats();
      assert.equal(stats.writtenLate, 3);
      assert.equal(stats.replayed, 5);
      assert.deepEqual(await spoolFiles(dataDir), []);
    });

    it('keeps it in the spool while the write hangs, so a process that dies then loses nothing', async () => {
      const dataDir = await freshDir();
      const primary = new ScriptedPrimary(new FileEventSink({ dataDir }), ['hold', 'fail']);
      const crashed = await SpoolingEventSink.open({ primary, dataDir, primaryTimeoutMs: HUNG_MS, initialRetryMs: 3_600_000 });
      const [event] = eventsFrom('crash', 1);
      await crashed.write([event!]);
      // The process dies here, the write never answered: the next one finds the event in the spool.
      const restarted = await open(dataDir);
      assert.deepEqual(ids(await logged(dataDir)), ids([event!]));
      assert.equal(restarted.stats().replayedFromPreviousRun, 1);
      await restarted.close();

      // Only to release what the dead process held (its last replay fails, so the log is left alone).
      primary.held[0]!.fail();
      await crashed.close();
      assert.deepEqual(ids(await logged(dataDir)), ids([event!]));
    });

    it('spools it rather than write it again when it times out while a catch-up holds new writes back', async () => {
      const dataDir = await freshDir();
      // 1: the slow write, held. 2: a write that fails, degrading the sink. 3: replay of the first spool file.
      // 4: replay of the second, held until the slow write has timed out (new writes wait in memory meanwhile).
      // (On a disk so slow that the timeout fires before the catch-up, the write is spooled as usual: same outcome.)
      const primary = new ScriptedPrimary(new FileEventSink({ dataDir }), ['hold', 'fail', 'pass', 'hold']);
      const sink = await SpoolingEventSink.open({ primary, dataDir, primaryTimeoutMs: 1_500, spoolFileBytes: 1, initialRetryMs: 3_600_000 });
      const [slow, failed, spooled] = [eventsFrom('slow', 1), eventsFrom('failed', 1), eventsFrom('spooled', 1)];
      const slowWrite = sink.write(slow);
      await sink.write(failed);
      await sink.write(spooled);

      // A replay write is bounded by the same timeout: started well after the slow write, it times out well after
      // it, which leaves the test time to see the slow write wait with the catch-up and to let the replay write land.
      await new Promise((resolve) => setTimeout(resolve, 750));
      const retry = sink.retryNow();
      await waitFor(() => primary.held.length === 2, 'the second spool file is being replayed');
      await waitFor(() => sink.stats().pending === 2, 'the slow write has timed out and waits with the catch-up');
      await primary.held[1]!.land();
      await slowWrite;
      await primary.held[0]!.land();
      assert.equal(await retry, true);
      await sink.close();

      assert.deepEqual(primary.calls, [ids(slow), ids(failed), ids(failed), ids(spooled)], 'the slow write is never given again');
      const copies = await copiesInLog(dataDir);
      assert.deepEqual([...copies.keys()].sort(), ids([...failed, ...slow, ...spooled]).sort());
      for (const [id, count] of copies) assert.equal(count, 1, `${id} is in the log once`);
      assert.equal(sink.stats().writtenLate, 1);
      assert.deepEqual(await spoolFiles(dataDir), []);
    });
  });

  describe('an event log that hangs', () => {
    it('opens within primaryTimeoutMs over a leftover spool, replays it in the background, and counts a replay write that lands late once', async () => {
      const dataDir = await freshDir();
      const left = eventsFrom('left', 2);
      await mkdir(join(dataDir, 'spool'));
      await writeFile(join(dataDir, 'spool', 'spool-1795356187123-4242-00000001.ndjson'), left.map((event) => JSON.stringify(event) + '\n').join(''));
      const { log, named } = capturingLog();
      const replayedToHook: string[] = [];
      // The replay write at start is held: the events directory is on a mount that does not answer.
      const primary = new ScriptedPrimary(new FileEventSink({ dataDir }), ['hold']);
      const sink = await settles(
        SpoolingEventSink.open({ primary, dataDir, log, primaryTimeoutMs: HUNG_MS, initialRetryMs: 3_600_000, onReplayed: (events) => void replayedToHook.push(...ids(events)) }),
        'the sink opens',
      );
      assert.equal(sink.stats().state, 'degraded');
      assert.equal(sink.stats().pending, 2);
      assert.equal(named('event_log_replay_in_background').length, 1);
      assert.equal((await spoolFiles(dataDir)).length, 1, 'the leftover stays in the spool while its replay hangs');

      const fresh = eventsFrom('fresh', 1, '2026-11-22T11:00:00.000Z');
      await settles(sink.write(fresh), 'a new write is acknowledged');
      assert.ok((await spooledIds(dataDir)).includes(fresh[0]!.request_id), 'new writes are spooled behind the leftover');
      assert.equal(sink.stats().pendingInMemoryOnly, 0);

      // The hung replay write lands after all: replayed, and not to be replayed again.
      await primary.held[0]!.land();
      assert.equal(sink.stats().replayedFromPreviousRun, 2);
      assert.equal(sink.stats().pending, 1);
      assert.equal(await sink.retryNow(), true);
      await sink.close();
      assert.deepEqual(primary.calls, [ids(left), ids(fresh)], 'the event log is given each event once');
      assert.deepEqual(ids(await logged(dataDir)), [...ids(left), ...ids(fresh)]);
      assert.deepEqual(replayedToHook, [...ids(left), ...ids(fresh)], 'onReplayed hears of the late replay write once');
      assert.deepEqual(await spoolFiles(dataDir), []);
    });

    it('closes within primaryTimeoutMs when the last replay hangs, leaving the events in the spool for the next start', async () => {
      const dataDir = await freshDir();
      const { log, named } = capturingLog();
      const primary = new ScriptedPrimary(new FileEventSink({ dataDir }), ['fail', 'hold']);
      const sink = await SpoolingEventSink.open({ primary, dataDir, log, primaryTimeoutMs: 50, initialRetryMs: 3_600_000 });
      const events = eventsFrom('hung', 2);
      await sink.write(events);
      await settles(sink.close(), 'close resolves');
      assert.equal(primary.calls.length, 2, 'the last replay was tried');
      assert.equal(named('event_log_close_timeout').length, 1);
      assert.equal(sink.stats().state, 'closed');
      assert.equal(sink.stats().pending, 2);
      assert.deepEqual(await spooledIds(dataDir), ids(events), 'what the log did not answer stays in the spool');

      primary.held[0]!.fail();
      const next = await open(dataDir);
      assert.deepEqual(ids(await logged(dataDir)), ids(events));
      await next.close();
    });
  });

  it('keeps spooling new writes while a long backlog is replayed, and holds them in memory only for its last batch', async () => {
    const dataDir = await freshDir();
    // The first write fails, then every replay write is held until the test lets it land.
    const primary = new ScriptedPrimary(new FileEventSink({ dataDir }), ['fail', ...Array<'hold'>(6).fill('hold')]);
    const sink = await SpoolingEventSink.open({ primary, dataDir, spoolFileBytes: 1, replayBatchEvents: 1, initialRetryMs: 3_600_000 });
    const old = eventsFrom('old', 5);
    for (const event of old) await sink.write([event]);
    assert.equal(sink.stats().spoolFiles, 5);

    const retry = sink.retryNow();
    const landNext = async () => {
      const next = primary.held.length;
      await waitFor(() => primary.held.length > next, `replay write ${next + 1} is made`);
      await primary.held[next]!.land();
    };
    await landNext();
    await waitFor(() => primary.held.length === 2, 'the second spool file is being replayed');

    // Four events to go: a new write is spooled, durable, rather than held for the rest of the replay.
    const [early] = eventsFrom('early', 1, '2026-11-22T11:00:00.000Z');
    let acknowledged = false;
    const earlyWrite = sink.write([early!]).then(() => {
      acknowledged = true;
    });
    await sink.flush();
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(acknowledged, true, 'the write is acknowledged during the replay');
    assert.ok((await spooledIds(dataDir)).includes(early!.request_id));
    assert.equal(sink.stats().pendingInMemoryOnly, 0);
    await earlyWrite;

    // Land the rest of the old files; then only the spool file with the early write is left, the last batch.
    await primary.held[1]!.land();
    for (let i = 0; i < 3; i++) await landNext();
    await waitFor(() => primary.held.length === 6, 'the last spool file is being replayed');
    const [late] = eventsFrom('late', 1, '2026-11-22T12:00:00.000Z');
    const lateWrite = sink.write([late!]);
    assert.equal(sink.stats().pendingInMemoryOnly, 1, 'held for the catch-up, the write is in memory only');
    assert.equal(sink.stats().pending, 2);

    await primary.held[5]!.land();
    assert.equal(await retry, true);
    await lateWrite;
    await sink.close();
    assert.deepEqual(ids(await logged(dataDir)), [...ids(old), early!.request_id, late!.request_id], 'in the order they were made');
    assert.deepEqual(primary.calls.at(-1), [late!.request_id], 'the held write goes straight to the log');
    assert.equal(sink.stats().written, 1);
    assert.deepEqual(await spoolFiles(dataDir), []);
  });

  describe('closing with a spool file partly in the log', () => {
    it('rewrites a partly replayed file without the replayed events, in its place among the spool files', async () => {
      const dataDir = await freshDir();
      const [a, b, c] = eventsFrom('part', 3);
      // A direct write fails; replay gets the first event through and fails on the second; so does the last replay.
      const primary = new ScriptedPrimary(new FileEventSink({ dataDir }), ['fail', 'pass', 'fail', 'fail']);
      const twoEvents = 2 * Buffer.byteLength(JSON.stringify(a) + '\n');
      const sink = await SpoolingEventSink.open({ primary, dataDir, spoolFileBytes: twoEvents, replayBatchEvents: 1, initialRetryMs: 3_600_000 });
      for (const event of [a!, b!, c!]) await sink.write([event]);
      assert.equal((await spoolFiles(dataDir)).length, 2, 'a and b in one file, c in the next');
      assert.equal(await sink.retryNow(), false);
      assert.deepEqual(ids(await logged(dataDir)), [a!.request_id]);
      await sink.close();
      assert.deepEqual(await spooledIds(dataDir), ids([b!, c!]), 'the replayed event is no longer in the spool');
      assert.equal(sink.stats().pending, 2);

      const next = await open(dataDir);
      assert.deepEqual(ids(await logged(dataDir)), ids([a!, b!, c!]), 'each event once, in order');
      await next.close();
    });

    it('rewrites a file holding a timed-out write that landed late without that write', async () => {
      const dataDir = await freshDir();
      const primary = new ScriptedPrimary(new FileEventSink({ dataDir }), ['hold', 'fail']);
      const sink = await SpoolingEventSink.open({ primary, dataDir, primaryTimeoutMs: HUNG_MS, initialRetryMs: 3_600_000 });
      const [slow, after] = [eventsFrom('slow', 1), eventsFrom('after', 1, '2026-11-22T11:00:00.000Z')];
      await sink.write(slow);
      await sink.write(after);
      assert.deepEqual(await spooledIds(dataDir), ids([...slow, ...after]), 'one spool file with both');
      await primary.held[0]!.land();
      await sink.close();
      assert.deepEqual(await spooledIds(dataDir), ids(after), 'the late write is not left to be replayed again');

      const next = await open(dataDir);
      assert.deepEqual([...(await copiesInLog(dataDir))], [[slow[0]!.request_id, 1], [after[0]!.request_id, 1]]);
      await next.close();
    });
  });
});
