import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { FirehoseClient, PutRecordBatchCommand, PutRecordCommand } from '@aws-sdk/client-firehose';
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import {
  EventDeliveryError,
  FIREHOSE_MAX_BATCH_BYTES,
  FirehoseEventSink,
  createFirehoseClient,
  splitIntoBatches,
  type FirehoseEventSinkOptions,
} from '../../lambda/aws/firehose-event-sink';
import { createLogger } from '../../lambda/core/log';
import { USAGE_EVENT_VERSION, type UsageEvent } from '../../lambda/core/usage-event';
import { FakeFirehose } from '../support/fake-firehose';
import { FakeS3 } from '../support/fake-s3';

const STREAM = 'usage-events';
const BUCKET = 'usage-recovery';
const SECRET_ACCESS_KEY = 'fake-secret-access-key-never-logged';
const credentials = { accessKeyId: 'AKIAFAKEFAKEFAKEFAKE', secretAccessKey: SECRET_ACCESS_KEY };

function usageEvent(overrides: Partial<UsageEvent> = {}): UsageEvent {
  return {
    v: USAGE_EVENT_VERSION,
    request_id: randomUUID(),
    ts: '2026-03-14T09:26:53.589Z',
    user_id: 'user-42',
    properties: { Team: 'search' },
    provider: 'openai',
    model: 'gpt-4o-mini',
    path: '/v1/chat/completions',
    method: 'POST',
    status: 200,
    stream: false,
    latency_ms: 420,
    ttft_ms: 180,
    prompt_tokens: 12,
    completion_tokens: 30,
    cached_prompt_tokens: 0,
    reasoning_tokens: 0,
    total_tokens: 42,
    cost_usd: 0.0000198,
    cost_nano_usd: 19_800,
    cost_source: 'genai-prices',
    usage_source: 'provider',
    error: null,
    key_id: 'a1b2c3d4e5f6',
    ...overrides,
  };
}

const line = (e: UsageEvent) => JSON.stringify(e) + '\n';

describe('FirehoseEventSink', () => {
  let firehose: FakeFirehose;
  let s3: FakeS3;
  let clock = 0;
  let sleeps: number[] = [];
  let logLines: string[] = [];
  let firehoseClient: FirehoseClient;
  let s3Client: S3Client;

  before(async () => {
    firehose = await FakeFirehose.start({ now: () => clock });
    s3 = await FakeS3.start();
    firehoseClient = createFirehoseClient('us-east-1', { endpoint: firehose.endpoint, credentials });
    s3Client = new S3Client({
      endpoint: s3.endpoint,
      forcePathStyle: true,
      region: 'us-east-1',
      credentials,
      maxAttempts: 1,
    });
  });

  after(async () => {
    firehoseClient.destroy();
    s3Client.destroy();
    await firehose.close();
    await s3.close();
  });

  beforeEach(() => {
    firehose.reset();
    s3.reset();
    clock = 0;
    sleeps = [];
    logLines = [];
  });

  function sink(options: Partial<FirehoseEventSinkOptions> = {}): FirehoseEventSink {
    return new FirehoseEventSink({
      firehose: firehoseClient,
      streamName: STREAM,
      s3: s3Client,
      recoveryBucket: BUCKET,
      log: createLogger('debug', (l) => logLines.push(l)),
      maxAttempts: 4,
      baseDelayMs: 100,
      random: () => 0.5,
      // The fake clock moves only when the sink waits, so outages end after a known amount of backoff.
      sleep: async (ms) => {
        sleeps.push(ms);
        clock += ms;
      },
      ...options,
    });
  }

  async function recoveryObjects(): Promise<Map<string, string>> {
    const listed = await s3Client.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: 'recovery/' }));
    const out = new Map<string, string>();
    for (const { Key } of listed.Contents ?? []) {
      const got = await s3Client.send(new GetObjectCommand({ Bucket: BUCKET, Key: Key! }));
      out.set(Key!, await got.Body!.transformToString());
    }
    return out;
  }

  it('delivers every event once, in order, as one JSON line per record', async () => {
    const events = Array.from({ length: 1_200 }, (_, i) => usageEvent({ latency_ms: i }));
    await sink().write(events);
    assert.deepEqual(firehose.records(STREAM), events.map(line));
    assert.deepEqual(
      firehose.calls.map((c) => [c.operation, c.records.length]),
      [
        ['PutRecordBatch', 500],
        ['PutRecordBatch', 500],
        ['PutRecordBatch', 200],
      ],
    );
    assert.ok(firehose.calls.every((c) => c.signed), 'the real SDK signs every call');
    assert.deepEqual(sleeps, []);
  });

  it('sends a single event with PutRecordBatch too', async () => {
    const event = usageEvent();
    await sink().write([event]);
    assert.deepEqual(firehose.calls.map((c) => c.operation), ['PutRecordBatch']);
    assert.deepEqual(firehose.records(STREAM), [line(event)]);
  });

  it('does nothing for an empty list', async () => {
    await sink().write([]);
    assert.equal(firehose.callCount, 0);
  });

  it('splits batches at 4 MiB of record data', async () => {
    // ~300 KB per event: 13 fit in 4 MiB, the 14th starts the next call.
    const big = 'x'.repeat(300_000);
    const events = Array.from({ length: 30 }, () => usageEvent({ properties: { Note: big } }));
    await sink().write(events);
    assert.deepEqual(firehose.records(STREAM), events.map(line));
    const sizes = firehose.calls.map((c) => c.records.reduce((n, r) => n + Buffer.byteLength(r), 0));
    assert.ok(sizes.every((s) => s <= FIREHOSE_MAX_BATCH_BYTES), `batch sizes ${sizes.join(',')}`);
    assert.deepEqual(firehose.calls.map((c) => c.records.length), [13, 13, 4]);
  });

  it('puts records exactly at the byte limit in one batch and starts a new one past it', () => {
    const mib = { data: new Uint8Array(1024 * 1024) };
    assert.deepEqual(splitIntoBatches([mib, mib, mib, mib]).map((b) => b.length), [4]);
    assert.deepEqual(splitIntoBatches([mib, mib, mib, mib, { data: new Uint8Array(1) }]).map((b) => b.length), [4, 1]);
    const tiny = Array.from({ length: 1_001 }, () => ({ data: new Uint8Array(10) }));
    assert.deepEqual(splitIntoBatches(tiny).map((b) => b.length), [500, 500, 1]);
  });

  it('resends only the records Firehose rejected', async () => {
    const events = Array.from({ length: 10 }, () => usageEvent());
    const rejectedOnce = new Set([events[2]!.request_id, events[7]!.request_id]);
    firehose.failRecords((data) => {
      const id = (JSON.parse(data) as UsageEvent).request_id;
      return rejectedOnce.delete(id);
    });
    await sink().write(events);

    assert.equal(firehose.calls.length, 2);
    assert.equal(firehose.calls[0]!.outcome, 'partial');
    assert.deepEqual(firehose.calls[1]!.records, [line(events[2]!), line(events[7]!)]);
    const received = firehose.records(STREAM);
    assert.equal(received.length, events.length, 'no record accepted twice');
    assert.deepEqual(new Set(received), new Set(events.map(line)));
    assert.equal(sleeps.length, 1);
    assert.ok(logLines.some((l) => JSON.parse(l).message === 'usage_events_rejected'));
  });

  it('keeps resending rejected records with growing jittered delays', async () => {
    const events = Array.from({ length: 5 }, () => usageEvent());
    firehose.failRecords(3); // 3 of the first call, then nothing
    let calls = 0;
    const s = sink({
      random: () => 0.999,
      sleep: async (ms) => {
        sleeps.push(ms);
        calls += 1;
        // Reject the first resent record once more, so a third call is needed.
        if (calls === 1) firehose.failRecords(1);
      },
    });
    await s.write(events);
    assert.deepEqual(firehose.calls.map((c) => c.records.length), [5, 3, 1]);
    assert.equal(firehose.records(STREAM).length, 5);
    assert.deepEqual(new Set(firehose.records(STREAM)), new Set(events.map(line)));
    // Full jitter: each wait is below base·2^(attempt-1).
    assert.deepEqual(sleeps, [99, 199]);
  });

  it('retries whole calls that Firehose throttles', async () => {
    const events = Array.from({ length: 3 }, () => usageEvent());
    firehose.throttleNext(2);
    await sink().write(events);
    assert.deepEqual(firehose.calls.map((c) => c.outcome), [
      'ServiceUnavailableException',
      'ServiceUnavailableException',
      'ok',
    ]);
    assert.deepEqual(firehose.records(STREAM), events.map(line));
    assert.deepEqual(sleeps, [50, 100]);
    assert.equal(s3.putCalls, 0);
  });

  it('retries after connection resets until the outage ends', async () => {
    const events = [usageEvent(), usageEvent()];
    firehose.outage(120, 'reset'); // over after the first two waits (50 + 100 ms on the fake clock)
    await sink().write(events);
    assert.deepEqual(firehose.calls.map((c) => c.outcome), ['ConnectionReset', 'ConnectionReset', 'ok']);
    assert.deepEqual(firehose.records(STREAM), events.map(line));
  });

  it('writes what an outage outlasts to the recovery bucket by event day', async () => {
    const day1 = [usageEvent({ ts: '2026-03-14T23:59:59.999Z' }), usageEvent({ ts: '2026-03-14T01:00:00.000Z' })];
    const day2 = [usageEvent({ ts: '2026-03-15T00:00:00.000Z' })];
    firehose.outage(Infinity);
    await sink().write([...day1, ...day2]);

    assert.equal(firehose.callCount, 4, 'maxAttempts calls, then recovery');
    assert.deepEqual(firehose.records(STREAM), []);
    const objects = await recoveryObjects();
    const keys = [...objects.keys()];
    assert.equal(keys.length, 2);
    const key1 = keys.find((k) => k.startsWith('recovery/dt=2026-03-14/'));
    assert.match(key1 ?? '', /^recovery\/dt=2026-03-14\/[0-9a-f-]{36}\.ndjson$/);
    assert.equal(objects.get(key1!), day1.map(line).join(''));
    assert.equal(objects.get(`recovery/dt=2026-03-15/${day2[0]!.request_id}.ndjson`), line(day2[0]!));
    const stored = s3.object(BUCKET, key1!)!;
    assert.equal(stored.contentType, 'application/x-ndjson');
    assert.equal(stored.serverSideEncryption, undefined, 'encryption is left to the bucket default');
    const recovered = logLines.map((l) => JSON.parse(l)).filter((l) => l.message === 'usage_events_recovered');
    assert.equal(recovered.length, 2);
  });

  it('uses the configured recovery prefix', async () => {
    const event = usageEvent();
    firehose.outage(Infinity);
    await sink({ recoveryPrefix: 'spill/events/', maxAttempts: 1 }).write([event]);
    assert.deepEqual(s3.keys(BUCKET), [`spill/events/dt=2026-03-14/${event.request_id}.ndjson`]);
  });

  it('sends records to recovery at once when Firehose rejects the call as invalid', async () => {
    const event = usageEvent();
    // The fake, like Firehose, refuses a stream name outside [a-zA-Z0-9_.-].
    await sink({ streamName: 'not a stream!' }).write([event]);
    assert.equal(firehose.callCount, 1, 'a client error is not retried');
    assert.equal(firehose.calls[0]!.outcome, 'InvalidArgumentException');
    assert.deepEqual(sleeps, []);
    assert.deepEqual(s3.keys(BUCKET), [`recovery/dt=2026-03-14/${event.request_id}.ndjson`]);
  });

  it('sends an event larger than a Firehose record straight to recovery and delivers the rest', async () => {
    const huge = usageEvent({ properties: { Note: 'y'.repeat(1_100 * 1024) } });
    const small = usageEvent();
    await sink().write([huge, small]);
    assert.deepEqual(firehose.records(STREAM), [line(small)]);
    assert.deepEqual(s3.keys(BUCKET), [`recovery/dt=2026-03-14/${huge.request_id}.ndjson`]);
  });

  it('logs every event whole and rejects when the recovery bucket fails too', async () => {
    const events = [usageEvent(), usageEvent({ user_id: null, ts: '2026-03-15T10:00:00.000Z' })];
    firehose.outage(Infinity);
    s3.failPuts(true);

    await assert.rejects(sink().write(events), (error: unknown) => {
      assert.ok(error instanceof EventDeliveryError);
      assert.equal(error.undeliveredCount, 2);
      assert.equal(error.statusCode, 500);
      return true;
    });
    assert.equal(s3.putCalls, 2, 'one recovery object per event day was tried');
    const undelivered = logLines.map((l) => JSON.parse(l)).filter((l) => l.message === 'usage_event_undelivered');
    assert.deepEqual(
      undelivered.map((l) => l.event),
      events,
    );
    assert.ok(undelivered.every((l) => l.level === 'error'));
  });

  it('never logs credentials or signatures', async () => {
    const events = [usageEvent()];
    firehose.throttleNext(1);
    await sink().write(events);
    firehose.failRecords(1);
    await sink().write(events);
    firehose.outage(Infinity);
    await sink().write(events);
    s3.failPuts(true);
    await assert.rejects(sink().write(events), EventDeliveryError);

    assert.ok(logLines.length >= 5, 'the faults were logged');
    const all = logLines.join('\n');
    const secrets = [SECRET_ACCESS_KEY, credentials.accessKeyId, 'AWS4-HMAC-SHA256', 'Signature=', 'authorization'];
    for (const secret of secrets) {
      assert.ok(!all.toLowerCase().includes(secret.toLowerCase()), `log mentions ${secret}`);
    }
  });
});

describe('createFirehoseClient', () => {
  it('turns the SDK retries off so the sink decides what to resend', async () => {
    const firehose = await FakeFirehose.start();
    const client = createFirehoseClient('us-east-1', { endpoint: firehose.endpoint, credentials });
    try {
      assert.equal(await client.config.maxAttempts(), 1);
      firehose.throttleNext(1);
      await assert.rejects(
        client.send(new PutRecordBatchCommand({ DeliveryStreamName: STREAM, Records: [{ Data: Buffer.from('x') }] })),
        { name: 'ServiceUnavailableException' },
      );
      assert.equal(firehose.callCount, 1);
    } finally {
      client.destroy();
      await firehose.close();
    }
  });
});

describe('the Firehose and S3 fakes', () => {
  it('accept PutRecord and refuse a batch over 500 records, as Firehose does', async () => {
    const firehose = await FakeFirehose.start();
    const client = createFirehoseClient('us-east-1', { endpoint: firehose.endpoint, credentials });
    try {
      const put = await client.send(
        new PutRecordCommand({ DeliveryStreamName: STREAM, Record: { Data: Buffer.from('a\n') } }),
      );
      assert.ok(put.RecordId);
      assert.deepEqual(firehose.records(STREAM), ['a\n']);
      const records = Array.from({ length: 501 }, () => ({ Data: Buffer.from('x') }));
      await assert.rejects(client.send(new PutRecordBatchCommand({ DeliveryStreamName: STREAM, Records: records })), {
        name: 'InvalidArgumentException',
      });
    } finally {
      client.destroy();
      await firehose.close();
    }
  });

  it('page ListObjectsV2 and answer NoSuchKey for a missing object', async () => {
    const s3 = await FakeS3.start();
    const client = new S3Client({ endpoint: s3.endpoint, forcePathStyle: true, region: 'us-east-1', credentials });
    try {
      for (const key of ['p/dt=2026-01-02/b.ndjson', 'p/dt=2026-01-01/a.ndjson', 'q/c.ndjson']) {
        await client.send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: key }));
      }
      const first = await client.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: 'p/', MaxKeys: 1 }));
      assert.deepEqual(first.Contents?.map((o) => o.Key), ['p/dt=2026-01-01/a.ndjson']);
      assert.equal(first.IsTruncated, true);
      const second = await client.send(
        new ListObjectsV2Command({
          Bucket: BUCKET,
          Prefix: 'p/',
          MaxKeys: 1,
          ContinuationToken: first.NextContinuationToken,
        }),
      );
      assert.deepEqual(second.Contents?.map((o) => o.Key), ['p/dt=2026-01-02/b.ndjson']);
      assert.equal(second.IsTruncated, false);
      const got = await client.send(new GetObjectCommand({ Bucket: BUCKET, Key: 'q/c.ndjson' }));
      assert.equal(await got.Body!.transformToString(), 'q/c.ndjson');
      await assert.rejects(client.send(new GetObjectCommand({ Bucket: BUCKET, Key: 'nope' })), { name: 'NoSuchKey' });
    } finally {
      client.destroy();
      await s3.close();
    }
  });
});
