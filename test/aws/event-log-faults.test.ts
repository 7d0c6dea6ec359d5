/**
 * The AWS event log under faults, end to end through the real SDK clients: FirehoseEventSink against the Firehose
 * and S3 fakes (throttling, partial batches, a long outage, a failing recovery bucket), then the replay
 * (`lambda/aws/recovery-replay.ts` and `bin/replay-recovery.ts`) putting every parked event into the stream.
 *
 * Time is virtual: the Firehose fake reads its clock from {@link VirtualTime}, and the sink's backoff sleeps on it,
 * so a 30 s outage runs in a fraction of a second of wall time.
 */
import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import type { FirehoseClient } from '@aws-sdk/client-firehose';
import { S3Client } from '@aws-sdk/client-s3';
import {
  FirehoseEventSink,
  createFirehoseClient,
  type FirehoseEventSinkOptions,
} from '../../lambda/aws/firehose-event-sink';
import {
  parseUndeliveredLog,
  replayRecovery,
  replayUndeliveredLog,
  validateUsageEvent,
  type RecoveryReplayOptions,
} from '../../lambda/aws/recovery-replay';
import { EXIT_INCOMPLETE, EXIT_OK, EXIT_USAGE, formatReplayReport, runReplayRecoveryCli } from '../../bin/replay-recovery';
import { createLogger, silentLogger, type Logger } from '../../lambda/core/log';
import type { CounterStore } from '../../lambda/core/ports';
import { UsageRecorder } from '../../lambda/core/usage-recorder';
import { USAGE_EVENT_VERSION, type UsageEvent } from '../../lambda/core/usage-event';
import { FakeFirehose } from '../support/fake-firehose';
import { FakeS3 } from '../support/fake-s3';
import { Prng } from '../support/prng';
import { priced, sampleEvent } from '../support/usage-events';

const STREAM = 'usage-events';
const BUCKET = 'usage-log';
const REGION = 'us-east-1';
const credentials = { accessKeyId: 'AKIAFAKEFAKEFAKEFAKE', secretAccessKey: 'fake-secret-access-key' };
const ROOT = path.resolve(__dirname, '../..');

/**
 * A discrete-event clock for concurrent writers. Each tracked writer runs until it sleeps or finishes; once every
 * running writer is asleep, time jumps to the earliest wake-up. No writer's backoff is counted twice, and no
 * request is in flight while time moves, so "the outage lasts 30 s" means what it says for every writer at once.
 */
class VirtualTime {
  now = 0;
  private running = 0;
  private timers: { at: number; wake: () => void }[] = [];

  readonly sleep = (ms: number): Promise<void> =>
    new Promise((wake) => {
      this.timers.push({ at: this.now + ms, wake });
      this.advance();
    });

  /** Runs `work` as one writer; start all concurrent writers in the same tick. */
  async track<T>(work: () => Promise<T>): Promise<T> {
    this.running += 1;
    try {
      return await work();
    } finally {
      this.running -= 1;
      this.advance();
    }
  }

  private advance(): void {
    if (this.timers.length === 0 || this.timers.length < this.running) return;
    const at = Math.min(...this.timers.map((t) => t.at));
    this.now = Math.max(this.now, at);
    const due = this.timers.filter((t) => t.at <= this.now);
    this.timers = this.timers.filter((t) => t.at > this.now);
    for (const t of due) t.wake();
  }
}

/** Deterministic jitter, so a failing run can be replayed exactly. */
function seededRandom(seed: number): () => number {
  const prng = new Prng(seed);
  return () => prng.next();
}

/** A priced request of `user-42` with a fresh id, to be overridden field by field. */
function usageEvent(overrides: Partial<UsageEvent> = {}): UsageEvent {
  return sampleEvent({
    request_id: randomUUID(),
    ts: '2026-03-14T09:26:53.589Z',
    user_id: 'user-42',
    properties: { team: 'search' },
    model: 'gpt-4o-mini',
    latency_ms: 420,
    ttft_ms: 180,
    ...priced(12, 30, 19_800),
    key_id: 'a1b2c3d4e5f6',
    ...overrides,
  });
}

const DAYS = ['2026-03-13', '2026-03-14', '2026-03-15'];
const line = (e: UsageEvent) => JSON.stringify(e) + '\n';
const ids = (events: readonly UsageEvent[]) => events.map((e) => e.request_id).sort();

let firehose: FakeFirehose;
let s3: FakeS3;
let firehoseClient: FirehoseClient;
let s3Client: S3Client;
let time: VirtualTime;
let logLines: string[];

before(async () => {
  [firehose, s3] = await Promise.all([FakeFirehose.start({ now: () => time.now }), FakeS3.start()]);
  firehoseClient = createFirehoseClient(REGION, { endpoint: firehose.endpoint, credentials });
  s3Client = new S3Client({ endpoint: s3.endpoint, forcePathStyle: true, region: REGION, credentials, maxAttempts: 1 });
});

after(async () => {
  firehoseClient.destroy();
  s3Client.destroy();
  await Promise.all([firehose.close(), s3.close()]);
});

beforeEach(() => {
  firehose.reset();
  s3.reset();
  time = new VirtualTime();
  logLines = [];
});

/** Counters that accept every event: this file is about the event log. */
const countingNothing: CounterStore = {
  record: async () => {},
  listUsers: async () => ({ users: [], nextCursor: null }),
  getUser: async () => null,
};

const capturingLog = (): Logger => createLogger('debug', (l) => logLines.push(l));
const logged = (message: string) =>
  logLines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.message === message);

function sink(options: Partial<FirehoseEventSinkOptions> = {}): FirehoseEventSink {
  return new FirehoseEventSink({
    firehose: firehoseClient,
    streamName: STREAM,
    s3: s3Client,
    recoveryBucket: BUCKET,
    log: capturingLog(),
    maxAttempts: 4,
    baseDelayMs: 100,
    sleep: time.sleep,
    random: seededRandom(7),
    ...options,
  });
}

function replay(options: Partial<RecoveryReplayOptions> = {}) {
  return time.track(() =>
    replayRecovery({
      s3: s3Client,
      bucket: BUCKET,
      firehose: firehoseClient,
      streamName: STREAM,
      log: silentLogger,
      maxAttempts: 4,
      baseDelayMs: 100,
      sleep: time.sleep,
      random: seededRandom(11),
      ...options,
    }),
  );
}

/** Request ids of the events the stream accepted, one entry per accepted copy, sorted. */
function streamIds(): string[] {
  return firehose
    .records(STREAM)
    .map((r) => (JSON.parse(r) as UsageEvent).request_id)
    .sort();
}

/** Events parked under `recovery/`, read straight from the fake's store. */
function parkedEvents(): UsageEvent[] {
  return s3
    .keys(BUCKET)
    .filter((k) => k.startsWith('recovery/'))
    .flatMap((k) =>
      s3
        .object(BUCKET, k)!
        .body.toString('utf8')
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as UsageEvent),
    );
}

/**
 * `writers` concurrent sink writes of `perWrite` events each, each write on one of three event days (a proxy
 * invocation writes the events of one request, so one day, and the sink parks one object per day of a write).
 */
async function writeConcurrently(s: FirehoseEventSink, writers: number, perWrite: number): Promise<UsageEvent[]> {
  const batches = Array.from({ length: writers }, (_, w) =>
    Array.from({ length: perWrite }, (_, i) =>
      usageEvent({ ts: `${DAYS[w % 3]}T12:00:${String(i % 60).padStart(2, '0')}.000Z`, latency_ms: w }),
    ),
  );
  const results = await Promise.allSettled(batches.map((batch) => time.track(() => s.write(batch))));
  const rejected = results.filter((r) => r.status === 'rejected');
  assert.deepEqual(rejected, [], 'every write resolved');
  return batches.flat();
}

describe('FirehoseEventSink under Firehose faults', () => {
  it('delivers everything through throttled calls and parks nothing', async () => {
    firehose.throttleNext(3);
    const events = await writeConcurrently(sink(), 20, 25);

    assert.equal(firehose.calls.filter((c) => c.outcome === 'ServiceUnavailableException').length, 3);
    assert.deepEqual(streamIds(), ids(events), 'each event exactly once in the stream');
    assert.equal(s3.putCalls, 0, 'nothing went to the recovery bucket');
    assert.deepEqual(s3.keys(BUCKET), []);
  });

  it('resends only the records Firehose rejected, so each event is in the stream exactly once', async () => {
    // Every third record is rejected the first time it is seen, and one record three times in a row.
    const seen = new Map<string, number>();
    let stubborn: string | undefined;
    firehose.failRecords((data) => {
      const id = (JSON.parse(data) as UsageEvent).request_id;
      const n = (seen.get(id) ?? 0) + 1;
      seen.set(id, n);
      stubborn ??= id;
      if (id === stubborn) return n <= 3;
      return n === 1 && seen.size % 3 === 0;
    }, 'InternalFailure');
    const events = await writeConcurrently(sink(), 10, 120);

    assert.deepEqual(streamIds(), ids(events), 'none lost, none twice');
    const partial = firehose.calls.filter((c) => c.outcome === 'partial');
    assert.ok(partial.length >= 10, 'the first call of every writer was partial');
    // A resend carries exactly the records rejected before: each record is sent once, plus once per rejection.
    const rejections = [...seen.values()].reduce((sum, n) => sum + n - 1, 0);
    const sent = firehose.calls.reduce((sum, c) => sum + c.records.length, 0);
    assert.equal(sent, events.length + rejections);
    assert.equal(seen.get(stubborn!), 4, 'the stubborn record was accepted on the last attempt');
    assert.equal(s3.putCalls, 0);
    assert.ok(logged('usage_events_rejected').every((l) => l.error_code === 'InternalFailure'));
  });
});

describe('a 30 s Firehose outage, then the replay', () => {
  it('parks every event of 100 concurrent writes, and the replay puts each into the stream exactly once', async () => {
    firehose.outage(30_000);
    const events = await writeConcurrently(sink(), 100, 20);

    assert.ok(time.now < 30_000, `the writers gave up within the outage (virtual ${time.now} ms)`);
    assert.deepEqual(firehose.records(STREAM), [], 'Firehose accepted nothing during the outage');
    assert.deepEqual(ids(parkedEvents()), ids(events), 'every event is in the recovery bucket, once');
    assert.deepEqual(logged('usage_event_undelivered'), [], 'none was only logged');
    const parkedKeys = s3.keys(BUCKET);
    assert.equal(parkedKeys.length, 100, 'one object per write');
    assert.ok(parkedKeys.every((k) => /^recovery\/dt=2026-03-1[345]\/[0-9a-f-]{36}\.ndjson$/.test(k)), parkedKeys[0]);

    // Still down: nothing is lost, nothing is deleted, nothing is parked again, and the result says so.
    const putsBefore = s3.putCalls;
    const early = await replay({ maxAttempts: 2 });
    assert.equal(early.complete, false);
    assert.equal(early.objects, parkedKeys.length);
    assert.equal(early.events, 2_000);
    assert.equal(early.replayed, 0);
    assert.equal(early.failed, 2_000);
    assert.equal(early.kept, parkedKeys.length);
    assert.ok(early.keptObjects.every((k) => k.reason === 'undelivered'));
    assert.deepEqual(s3.keys(BUCKET), parkedKeys, 'every object kept');
    assert.equal(s3.putCalls, putsBefore, 'a replay never writes to the recovery bucket');
    assert.equal(s3.deleteCalls, 0);

    time.now = 30_000; // the outage is over
    const report = await replay();
    const { objects, events: read, replayed, deleted, kept, failed, malformed, complete } = report;
    assert.deepEqual(
      { objects, read, replayed, deleted, kept, failed, malformed, complete },
      { objects: 100, read: 2_000, replayed: 2_000, deleted: 100, kept: 0, failed: 0, malformed: [], complete: true },
    );
    assert.deepEqual(streamIds(), ids(events), 'every event exactly once in the stream');
    assert.deepEqual(s3.keys(BUCKET), [], 'the recovery prefix is empty');
    assert.ok(firehose.calls.filter((c) => c.outcome === 'ok').every((c) => c.records.length <= 500));

    const callsBefore = firehose.callCount;
    const again = await replay();
    assert.equal(again.complete, true);
    assert.equal(again.objects, 0);
    assert.equal(again.events, 0);
    assert.equal(firehose.callCount, callsBefore, 'a second replay sends nothing');
    assert.deepEqual(streamIds(), ids(events));
  });

  it('replays only the days asked for and leaves the others parked', async () => {
    firehose.outage(Infinity);
    const events = await writeConcurrently(sink({ maxAttempts: 1 }), 6, 3);
    firehose.reset();

    const report = await replay({ from: '2026-03-14', to: '2026-03-14' });
    assert.equal(report.complete, true);
    const day14 = events.filter((e) => e.ts.startsWith('2026-03-14'));
    assert.equal(report.events, day14.length);
    assert.deepEqual(streamIds(), ids(day14));
    assert.ok(s3.keys(BUCKET).length > 0);
    assert.ok(s3.keys(BUCKET).every((k) => !k.startsWith('recovery/dt=2026-03-14/')));

    await replay({ from: '2026-03-15' });
    assert.ok(s3.keys(BUCKET).every((k) => k.startsWith('recovery/dt=2026-03-13/')));
    await replay({ to: '2026-03-13' });
    assert.deepEqual(s3.keys(BUCKET), []);
    assert.deepEqual(streamIds(), ids(events));
  });

  it('refuses a reversed or impossible day range before touching the bucket', async () => {
    await assert.rejects(replay({ from: '2026-03-15', to: '2026-03-14' }), /must not be after/);
    await assert.rejects(replay({ from: '2026-02-30' }), /YYYY-MM-DD/);
    assert.equal(firehose.callCount, 0);
  });

  it('sends the valid events of an object with a malformed line but keeps the object, naming key and line', async () => {
    const good = [usageEvent(), usageEvent()];
    const key = 'recovery/dt=2026-03-14/mixed.ndjson';
    const { cost_source: _dropped, ...incomplete } = usageEvent();
    s3.put(BUCKET, key, `${line(good[0]!)}{"v":1,"request_id":"cut sho\n${JSON.stringify(incomplete)}\n${line(good[1]!)}`);

    const report = await replay();
    assert.equal(report.complete, false);
    assert.equal(report.replayed, 2);
    assert.deepEqual(report.malformed, [
      { source: key, line: 2, reason: 'not valid JSON' },
      { source: key, line: 3, reason: 'field "cost_source" is missing' },
    ]);
    assert.deepEqual(report.keptObjects, [{ key, reason: 'malformed_lines', events: 2 }]);
    assert.deepEqual(s3.keys(BUCKET), [key]);
    assert.deepEqual(streamIds(), ids(good));
  });

  it('keeps an object whose delete failed and deletes it on the next run', async () => {
    const event = usageEvent();
    s3.put(BUCKET, `recovery/dt=2026-03-14/${event.request_id}.ndjson`, line(event));
    s3.failDeletes(true);
    const first = await replay();
    assert.equal(first.complete, false);
    assert.equal(first.replayed, 1);
    assert.deepEqual(first.keptObjects.map((k) => k.reason), ['delete_failed']);

    s3.failDeletes(false);
    const second = await replay();
    assert.equal(second.complete, true);
    assert.deepEqual(s3.keys(BUCKET), []);
    // At least once: the event is in the stream twice, and every reader keeps one copy per request_id.
    assert.deepEqual(streamIds(), [event.request_id, event.request_id]);
  });

  it('lists what a dry run would replay without sending or deleting anything', async () => {
    const events = [usageEvent(), usageEvent({ ts: '2026-03-15T00:00:00.000Z' })];
    for (const e of events) s3.put(BUCKET, `recovery/dt=${e.ts.slice(0, 10)}/${e.request_id}.ndjson`, line(e));
    const report = await replay({ dryRun: true });
    assert.equal(report.complete, true);
    assert.equal(report.events, 2);
    assert.deepEqual(report.keptObjects.map((k) => k.reason), ['dry_run', 'dry_run']);
    assert.equal(firehose.callCount, 0);
    assert.equal(s3.keys(BUCKET).length, 2);
  });

  it('replays the records Firehose set aside under its error prefix, gzipped or not', async () => {
    const events = [usageEvent(), usageEvent(), usageEvent()];
    const errorRecord = (e: UsageEvent) =>
      JSON.stringify({
        attemptsMade: 1,
        arrivalTimestamp: 1773480413589,
        errorCode: 'DataFormatConversion.MalformedData',
        errorMessage: 'The table could not be read.',
        attemptEndingTimestamp: 1773480414000,
        rawData: Buffer.from(line(e)).toString('base64'),
      }) + '\n';
    s3.put(BUCKET, 'errors/format-conversion-failed/dt=2026-03-14/usage-1-2026-03-14-09-26-53-abc', errorRecord(events[0]!) + errorRecord(events[1]!));
    s3.put(BUCKET, 'errors/processing-failed/dt=2026-03-14/usage-1-2026-03-14-09-27-00-def', gzipSync(errorRecord(events[2]!)));
    s3.put(BUCKET, 'recovery/dt=2026-03-14/untouched.ndjson', line(usageEvent()));

    const report = await replay({ source: 'firehose-errors' });
    assert.equal(report.complete, true);
    assert.equal(report.objects, 2);
    assert.equal(report.replayed, 3);
    assert.deepEqual(streamIds(), ids(events));
    assert.deepEqual(s3.keys(BUCKET), ['recovery/dt=2026-03-14/untouched.ndjson'], 'only the error objects were taken');
  });
});

describe('when the recovery bucket fails too', () => {
  it('logs each event whole, and the log-file replay delivers them from the captured lines', async () => {
    firehose.outage(Infinity);
    s3.failPuts(true);
    // Through the gateway's own recorder, so the log holds exactly what the proxy writes: the sink's entry with the
    // whole event, the recorder's note naming its request_id, and the sink's retry warnings.
    const recorder = new UsageRecorder({ sink: sink(), counters: countingNothing, log: capturingLog(), sleep: time.sleep });
    const events = Array.from({ length: 30 }, (_, i) => usageEvent({ ts: `${DAYS[i % 3]}T08:00:00.000Z` }));
    await Promise.all(events.map((event) => time.track(() => recorder.record(event))));
    assert.deepEqual(parkedEvents(), []);
    assert.equal(s3.putCalls, 30, 'the recovery bucket was tried for every event');
    const undelivered = logged('usage_event_undelivered');
    const whole = undelivered.filter((l) => l.event !== undefined).map((l) => l.event as UsageEvent);
    assert.deepEqual(ids(whole), ids(events), 'each event logged whole, once');
    assert.equal(undelivered.length, 60, 'and named once more by the recorder');

    // The lines as CloudWatch Logs hands them back: plain, behind a text prefix, and as filter-log-events JSON.
    const plain = logLines.join('\n');
    const prefixed = logLines.map((l, i) => `2026-03-14T08:00:0${i % 10}.000Z\t${randomUUID()}\tERROR\t${l}`).join('\n');
    const filterLogEvents = JSON.stringify(
      { events: logLines.map((message, i) => ({ logStreamName: 's', timestamp: i, message, ingestionTime: i, eventId: String(i) })), searchedLogStreams: [] },
      null,
      2,
    );
    for (const text of [plain, prefixed, filterLogEvents]) {
      const parsed = parseUndeliveredLog(text, 'x');
      assert.deepEqual(ids(parsed.events), ids(events));
      assert.deepEqual(parsed.malformed, []);
    }

    firehose.reset();
    const report = await time.track(() =>
      replayUndeliveredLog(plain, { firehose: firehoseClient, streamName: STREAM, log: silentLogger, sleep: time.sleep }),
    );
    assert.equal(report.complete, true);
    assert.equal(report.events, 30);
    assert.equal(report.replayed, 30);
    assert.deepEqual(streamIds(), ids(events), 'each event exactly once in the stream');
  });

  it('reports an undelivered entry without a usable event by line, and ignores other entries that name it', () => {
    const event = usageEvent();
    const text = [
      JSON.stringify({ level: 'error', message: 'usage write failed', error: { name: 'EventDeliveryError', code: 'usage_event_undelivered' } }),
      JSON.stringify({ level: 'error', message: 'usage_event_undelivered', event }),
      JSON.stringify({ level: 'error', message: 'usage_event_undelivered', request_id: event.request_id }),
      JSON.stringify({ level: 'error', msg: 'usage_event_undelivered', event: { ...event, request_id: 'other', total_tokens: -1 } }),
      '{"level":"error","message":"usage_event_undelivered","event":{"v":1,"request_id":"trunc',
      'START RequestId: 1 Version: $LATEST',
      JSON.stringify({ level: 'error', message: 'usage_event_undelivered', request_id: 'lost-1', error: {} }),
    ].join('\n');
    const parsed = parseUndeliveredLog(text, 'export.log');
    assert.deepEqual(parsed.events, [event]);
    assert.deepEqual(parsed.malformed.map((m) => [m.source, m.line]), [['export.log', 4], ['export.log', 5], ['export.log', 7]]);
    assert.match(parsed.malformed[0]!.reason, /total_tokens/);
    assert.match(parsed.malformed[2]!.reason, /request lost-1 is named but its event entry is not in this log/);
  });

  it('accepts every kind of event the gateway writes and refuses a newer version', () => {
    const variants = [
      usageEvent(),
      usageEvent({ user_id: null, model: null, ttft_ms: null, cost_usd: null, cost_nano_usd: null, cost_source: 'unknown_model', key_id: null }),
      usageEvent({ status: 429, error: 'rate_limited', usage_source: 'none', cost_source: 'no_usage', properties: {} }),
    ];
    for (const v of variants) assert.ok('event' in validateUsageEvent(JSON.parse(JSON.stringify(v))));
    assert.deepEqual(validateUsageEvent({ ...usageEvent(), v: USAGE_EVENT_VERSION + 1 }), { problem: 'field "v" is invalid' });
    assert.deepEqual(validateUsageEvent({ ...usageEvent(), properties: { plan: 3 } }), { problem: 'field "properties" is invalid' });
    assert.deepEqual(validateUsageEvent([]), { problem: 'not a JSON object' });
  });
});

describe('bin/replay-recovery.ts', () => {
  const exec = promisify(execFile);
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'gateway-replay-'));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  /** Runs the command as a child process; the fakes answer from this process, so the call must not block. */
  async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    try {
      const { stdout, stderr } = await exec(process.execPath, ['--import', 'tsx', 'bin/replay-recovery.ts', ...args], {
        cwd: ROOT,
        env: {
          PATH: process.env['PATH'] ?? '',
          AWS_ACCESS_KEY_ID: credentials.accessKeyId,
          AWS_SECRET_ACCESS_KEY: credentials.secretAccessKey,
          AWS_REGION: REGION,
          AWS_EC2_METADATA_DISABLED: 'true',
          AWS_ENDPOINT_URL_S3: s3.endpoint,
          AWS_ENDPOINT_URL_FIREHOSE: firehose.endpoint,
          RECOVERY_BUCKET_NAME: BUCKET,
          NODE_NO_WARNINGS: '1',
        },
      });
      return { code: 0, stdout, stderr };
    } catch (error) {
      const e = error as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  }

  it('keeps the objects and exits 1 while Firehose is down, then replays them and exits 0', async () => {
    const events = [usageEvent(), usageEvent(), usageEvent({ ts: '2026-03-15T01:00:00.000Z' })];
    s3.put(BUCKET, 'recovery/dt=2026-03-14/batch.ndjson', line(events[0]!) + line(events[1]!));
    s3.put(BUCKET, `recovery/dt=2026-03-15/${events[2]!.request_id}.ndjson`, line(events[2]!));
    const keys = s3.keys(BUCKET);

    firehose.outage(Infinity);
    const down = await cli('--stream', STREAM, '--max-attempts', '1');
    assert.equal(down.code, EXIT_INCOMPLETE, down.stderr);
    assert.match(down.stdout, /^Summary: objects 2, events 3, replayed 0, kept 2, failed 3, malformed lines 0$/m);
    assert.match(down.stdout, /Kept recovery\/dt=2026-03-14\/batch\.ndjson \(2 events\): Firehose did not accept/);
    assert.deepEqual(s3.keys(BUCKET), keys);

    firehose.reset();
    const up = await cli('--stream', STREAM);
    assert.equal(up.code, EXIT_OK, up.stderr);
    assert.match(up.stdout, /^Summary: objects 2, events 3, replayed 3, kept 0, failed 0, malformed lines 0$/m);
    assert.match(up.stdout, /Everything was replayed\./);
    assert.deepEqual(s3.keys(BUCKET), []);
    assert.deepEqual(streamIds(), ids(events));
  });

  it('replays a CloudWatch Logs export given with --log-file', async () => {
    const events = [usageEvent(), usageEvent()];
    const file = path.join(dir, 'undelivered.log');
    await writeFile(file, events.map((event) => JSON.stringify({ level: 'error', message: 'usage_event_undelivered', event })).join('\n'));
    const run = await cli('--log-file', file, '--stream', STREAM);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /^Summary: objects 0, events 2, replayed 2, kept 0, failed 0, malformed lines 0$/m);
    assert.deepEqual(streamIds(), ids(events));
  });

  it('refuses a wrong argument with exit code 2 and says why', async () => {
    const wrong = await cli('--from', '2026-13-01', '--stream', STREAM);
    assert.equal(wrong.code, EXIT_USAGE);
    assert.match(wrong.stderr, /--from must be a day as YYYY-MM-DD, got "2026-13-01"/);
    assert.equal(wrong.stdout, '');
  });

  it('prints its help, and a dry run lists what it would replay', async () => {
    const out: string[] = [];
    assert.equal(await runReplayRecoveryCli(['--help'], { out: (t) => out.push(t), err: () => {} }, {}), EXIT_OK);
    assert.match(out.join(''), /--firehose-errors/);

    const event = usageEvent();
    s3.put(BUCKET, `recovery/dt=2026-03-15/${event.request_id}.ndjson`, line(event));
    s3.put(BUCKET, 'recovery/dt=2026-03-16/bad.ndjson', '{"v":1}\n');
    const report = await replay({ dryRun: true, from: '2026-03-15' });
    assert.equal(
      formatReplayReport(report),
      [
        `Would replay recovery/dt=2026-03-15/${event.request_id}.ndjson (1 events)`,
        'Would replay recovery/dt=2026-03-16/bad.ndjson (0 events)',
        'Malformed line: recovery/dt=2026-03-16/bad.ndjson line 1: field "request_id" is missing',
        'Summary (dry run, nothing sent or deleted): objects 2, events 1, replayed 0, kept 2, failed 0, malformed lines 1',
        '',
      ].join('\n'),
    );
    assert.equal(firehose.callCount, 0);
  });

  it('names what is wrong with each bad invocation', async () => {
    const cases: [string[], RegExp][] = [
      [['--bogus'], /Unknown option '--bogus'/],
      [['replay'], /Unexpected argument 'replay'/],
      [['--stream', STREAM], /--bucket <name> \(or RECOVERY_BUCKET_NAME\) is required/],
      [['--bucket', BUCKET], /--stream <name> \(or EVENTS_STREAM_NAME\) is required/],
      [['--bucket', BUCKET, '--stream', STREAM, '--from', '2026-03-15', '--to', '2026-03-14'], /--from 2026-03-15 is after --to 2026-03-14/],
      [['--bucket', BUCKET, '--stream', STREAM, '--to', '2026-02-30'], /--to must be a day/],
      [['--log-file', 'x.log', '--firehose-errors', '--stream', STREAM], /pick one/],
      [['--log-file', 'x.log', '--from', '2026-03-14', '--stream', STREAM], /--from applies to bucket objects/],
      [['--bucket', BUCKET, '--stream', STREAM, '--max-attempts', '0'], /--max-attempts must be a whole number from 1 to 20/],
      [['--bucket', BUCKET, '--stream', STREAM, '--max-attempts', '2.5'], /--max-attempts must be a whole number/],
      [['--bucket', BUCKET, '--stream', STREAM, '--prefix', ''], /--prefix must not be empty/],
    ];
    for (const [args, message] of cases) {
      const out: string[] = [];
      const err: string[] = [];
      const code = await runReplayRecoveryCli(args, { out: (t) => out.push(t), err: (t) => err.push(t) }, {});
      assert.equal(code, EXIT_USAGE, args.join(' '));
      assert.match(err.join(''), message, args.join(' '));
      assert.deepEqual(out, []);
    }
    const missing = await runReplayRecoveryCli(['--log-file', path.join(dir, 'nope.log'), '--stream', STREAM], { out: () => {}, err: () => {} }, {});
    assert.equal(missing, EXIT_USAGE);
  });
});
