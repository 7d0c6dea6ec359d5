/**
 * The AWS event log: usage events go to a Firehose stream (which lands them in S3 as Parquet), with an S3
 * recovery bucket behind it and CloudWatch Logs behind that, so an event is never silently dropped.
 */
import { randomUUID } from 'node:crypto';
import { FirehoseClient, PutRecordBatchCommand, type FirehoseClientConfig } from '@aws-sdk/client-firehose';
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { InternalError } from '../core/errors';
import { describeError, type Logger } from '../core/log';
import type { EventSink } from '../core/ports';
import { eventDate, type UsageEvent } from '../core/usage-event';

/** PutRecordBatch takes at most 500 records per call. */
export const FIREHOSE_MAX_BATCH_RECORDS = 500;
/** PutRecordBatch takes at most 4 MiB of record data per call. */
export const FIREHOSE_MAX_BATCH_BYTES = 4 * 1024 * 1024;
/** One record may hold at most 1,000 KiB before base64 encoding. */
export const FIREHOSE_MAX_RECORD_BYTES = 1_000 * 1024;

const MAX_DELAY_MS = 2_000;

/** How events are sent to the stream; shared by the sink and by the replay of parked events. */
export interface FirehoseDeliveryOptions {
  /** Client for the stream; build it with {@link createFirehoseClient} so the SDK does not retry on its own. */
  readonly firehose: FirehoseClient;
  readonly streamName: string;
  readonly log: Logger;
  /** Calls to Firehose for a record before it counts as undelivered. @default 4 */
  readonly maxAttempts?: number;
  /** Base of the exponential backoff between attempts (full jitter, capped at 2 s). @default 100 */
  readonly baseDelayMs?: number;
  /** @default setTimeout-based sleep */
  readonly sleep?: (ms: number) => Promise<void>;
  /** Source of jitter in [0, 1). @default Math.random */
  readonly random?: () => number;
}

export interface FirehoseEventSinkOptions extends FirehoseDeliveryOptions {
  /** Client for the recovery bucket. */
  readonly s3: S3Client;
  readonly recoveryBucket: string;
  /** Key prefix of recovery objects. @default 'recovery/' */
  readonly recoveryPrefix?: string;
}

/** What one {@link FirehoseDelivery.deliver} left over. */
export interface FirehoseDeliveryResult {
  /** The events Firehose did not accept within the attempts (the same objects that were passed in). */
  readonly undelivered: readonly UsageEvent[];
  /** Why the last of them failed; undefined when everything was delivered. */
  readonly lastError: unknown;
}

/** Raised when events could be written neither to Firehose nor to the recovery bucket (each was logged). */
export class EventDeliveryError extends InternalError {
  /** The sink already retried and fell back: retrying the whole write again would only repeat that. */
  readonly retryable = false;
  /** Each undelivered event is already in the logs whole; callers log only the id. */
  readonly eventsLogged = true;

  constructor(
    readonly undeliveredCount: number,
    cause: unknown,
  ) {
    super(
      'usage_event_undelivered',
      `${undeliveredCount} usage event(s) could not be written to the event log or the recovery bucket.`,
      { cause },
    );
  }
}

interface PendingRecord {
  readonly event: UsageEvent;
  readonly data: Uint8Array;
}

/**
 * Sends usage events to a Firehose stream, and only there: nothing here writes anywhere else, so a caller that must
 * not fall back (the replay of parked events) can use it without risking a loop back into the recovery bucket.
 *
 * Each event is one JSON line: Firehose concatenates the records it buffers into one S3 object, and the newline is
 * what keeps them splittable for the JSON→Parquet conversion. Calls always use PutRecordBatch, even for one event,
 * so there is one code path and one failure model (per-record `ErrorCode`), and one IAM action to grant.
 *
 * Only the records Firehose rejected are sent again, with exponential backoff and full jitter; whole-call failures
 * (unavailable, throttled, network) are retried the same way. What is still undelivered after `maxAttempts` is
 * handed back, as is a record over Firehose's per-record limit (it would make Firehose reject its whole batch).
 *
 * @example
 * const delivery = new FirehoseDelivery({ firehose: createFirehoseClient(), streamName, log });
 * const { undelivered } = await delivery.deliver(events);
 */
export class FirehoseDelivery {
  private readonly firehose: FirehoseClient;
  private readonly streamName: string;
  private readonly log: Logger;
  private readonly maxAttempts: number;
  private readonly baseDelayMs: number;
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly random: () => number;

  constructor(options: FirehoseDeliveryOptions) {
    this.firehose = options.firehose;
    this.streamName = options.streamName;
    this.log = options.log;
    this.maxAttempts = Math.max(1, Math.floor(options.maxAttempts ?? 4));
    this.baseDelayMs = Math.max(0, options.baseDelayMs ?? 100);
    this.sleep = options.sleep ?? ((ms) => new Promise((resolve) => setTimeout(resolve, ms)));
    this.random = options.random ?? Math.random;
  }

  /** Delivers `events` in batches, resolving to what Firehose did not take; it never rejects for a Firehose fault. */
  async deliver(events: readonly UsageEvent[]): Promise<FirehoseDeliveryResult> {
    if (events.length === 0) return { undelivered: [], lastError: undefined };
    const encoder = new TextEncoder();
    const records = events.map((event) => ({ event, data: encoder.encode(JSON.stringify(event) + '\n') }));

    // A record over the per-record limit would make Firehose reject its whole batch; it is handed back unsent.
    const oversized = records.filter((r) => r.data.byteLength > FIREHOSE_MAX_RECORD_BYTES);
    const undelivered: PendingRecord[] = [...oversized];
    let lastError: unknown = oversized.length > 0 ? new Error('record larger than Firehose accepts') : undefined;

    for (const batch of splitIntoBatches(records.filter((r) => r.data.byteLength <= FIREHOSE_MAX_RECORD_BYTES))) {
      const result = await this.deliverBatch(batch);
      undelivered.push(...result.undelivered);
      if (result.undelivered.length > 0) lastError = result.lastError;
    }
    return { undelivered: undelivered.map((r) => r.event), lastError };
  }

  /** Sends one batch, resending only what failed, until all is accepted or attempts run out. */
  private async deliverBatch(
    batch: readonly PendingRecord[],
  ): Promise<{ undelivered: readonly PendingRecord[]; lastError: unknown }> {
    let pending = batch;
    let lastError: unknown;
    for (let attempt = 1; attempt <= this.maxAttempts; attempt++) {
      try {
        const response = await this.firehose.send(
          new PutRecordBatchCommand({
            DeliveryStreamName: this.streamName,
            Records: pending.map((r) => ({ Data: r.data })),
          }),
        );
        const answers = response.RequestResponses ?? [];
        // Answers match records by index. An answer list of the wrong length cannot be matched, so everything is
        // sent again: a duplicate is harmless (readers deduplicate by request_id), a loss is not.
        const failed =
          answers.length === pending.length ? pending.filter((_, i) => answers[i]?.ErrorCode) : pending;
        if (failed.length === 0) return { undelivered: [], lastError: undefined };
        const firstError = answers.find((a) => a.ErrorCode);
        lastError = new Error(
          firstError
            ? `${firstError.ErrorCode}: ${firstError.ErrorMessage ?? ''}`.trim()
            : 'PutRecordBatch answered a different number of records than were sent',
        );
        this.log.warn('usage_events_rejected', {
          stream: this.streamName,
          attempt,
          failed: failed.length,
          sent: pending.length,
          error_code: firstError?.ErrorCode,
        });
        pending = failed;
      } catch (error) {
        lastError = error;
        if (!isRetryable(error)) {
          this.log.error('usage_events_put_failed', {
            stream: this.streamName,
            attempt,
            records: pending.length,
            retryable: false,
            error: describeError(error),
          });
          break;
        }
        this.log.warn('usage_events_put_failed', {
          stream: this.streamName,
          attempt,
          records: pending.length,
          retryable: true,
          error: describeError(error),
        });
      }
      if (attempt < this.maxAttempts) await this.sleep(this.backoff(attempt));
    }
    return { undelivered: pending, lastError };
  }

  /** Full jitter: a uniform delay in [0, min(cap, base·2^(attempt-1))), so retrying writers spread out. */
  private backoff(attempt: number): number {
    const ceiling = Math.min(MAX_DELAY_MS, this.baseDelayMs * 2 ** (attempt - 1));
    return Math.floor(this.random() * ceiling);
  }
}

/**
 * An {@link EventSink} on a Firehose stream, sending through {@link FirehoseDelivery}.
 *
 * What is still undelivered after `maxAttempts` (or larger than a Firehose record) is written to the recovery bucket
 * as NDJSON under `<prefix>dt=YYYY-MM-DD/`; if that fails too, each event is logged whole as
 * `usage_event_undelivered` (events hold no secrets) and `write` rejects with {@link EventDeliveryError}. Both are
 * replayed into the stream by `npm run replay:recovery` (`lambda/aws/recovery-replay.ts`).
 *
 * @example
 * const sink = new FirehoseEventSink({ firehose: createFirehoseClient(), streamName, s3, recoveryBucket, log });
 * await sink.write([event]);
 */
export class FirehoseEventSink implements EventSink {
  private readonly delivery: FirehoseDelivery;
  private readonly streamName: string;
  private readonly s3: S3Client;
  private readonly recoveryBucket: string;
  private readonly recoveryPrefix: string;
  private readonly log: Logger;

  constructor(options: FirehoseEventSinkOptions) {
    this.delivery = new FirehoseDelivery(options);
    this.streamName = options.streamName;
    this.s3 = options.s3;
    this.recoveryBucket = options.recoveryBucket;
    this.recoveryPrefix = options.recoveryPrefix ?? 'recovery/';
    this.log = options.log;
  }

  async write(events: readonly UsageEvent[]): Promise<void> {
    const { undelivered, lastError } = await this.delivery.deliver(events);
    if (undelivered.length > 0) await this.recover(undelivered, lastError);
  }

  /** Writes undelivered events to the recovery bucket, one object per event day; logs what even that misses. */
  private async recover(undelivered: readonly UsageEvent[], firehoseError: unknown): Promise<void> {
    const byDay = new Map<string, UsageEvent[]>();
    for (const event of undelivered) {
      const day = eventDate(event);
      byDay.set(day, [...(byDay.get(day) ?? []), event]);
    }

    const lost: UsageEvent[] = [];
    let recoveryError: unknown;
    for (const [day, events] of byDay) {
      // One event keeps its request_id as name, so writing it again overwrites instead of duplicating.
      const name = events.length === 1 ? events[0]!.request_id : randomUUID();
      const key = `${this.recoveryPrefix}dt=${safeDay(day)}/${safeName(name)}.ndjson`;
      try {
        await this.s3.send(
          new PutObjectCommand({
            Bucket: this.recoveryBucket,
            Key: key,
            Body: events.map((e) => JSON.stringify(e) + '\n').join(''),
            ContentType: 'application/x-ndjson',
          }),
        );
        this.log.warn('usage_events_recovered', {
          stream: this.streamName,
          bucket: this.recoveryBucket,
          key,
          events: events.length,
          error: describeError(firehoseError),
        });
      } catch (error) {
        recoveryError = error;
        lost.push(...events);
      }
    }
    if (lost.length === 0) return;

    // Last resort: the event log can be rebuilt from these lines in CloudWatch Logs.
    for (const event of lost) {
      this.log.error('usage_event_undelivered', {
        stream: this.streamName,
        bucket: this.recoveryBucket,
        error: describeError(recoveryError),
        event,
      });
    }
    throw new EventDeliveryError(lost.length, recoveryError);
  }
}

/**
 * Splits records into PutRecordBatch calls of at most 500 records and 4 MiB, keeping their order.
 * @example splitIntoBatches(records).length // 3 for 1,200 small records
 */
export function splitIntoBatches<T extends { readonly data: Uint8Array }>(records: readonly T[]): T[][] {
  const batches: T[][] = [];
  let current: T[] = [];
  let bytes = 0;
  for (const record of records) {
    const size = record.data.byteLength;
    const full = current.length >= FIREHOSE_MAX_BATCH_RECORDS || bytes + size > FIREHOSE_MAX_BATCH_BYTES;
    if (current.length > 0 && full) {
      batches.push(current);
      current = [];
      bytes = 0;
    }
    current.push(record);
    bytes += size;
  }
  if (current.length > 0) batches.push(current);
  return batches;
}

/**
 * Whole-call failures worth another try: the service's own server faults (Firehose reports throttling as
 * `ServiceUnavailableException`), throttling codes, timeouts and network errors. Client faults such as
 * `InvalidArgumentException` or `ResourceNotFoundException` will not heal by waiting.
 */
function isRetryable(error: unknown): boolean {
  if (typeof error !== 'object' || error === null) return true;
  const e = error as { name?: string; $fault?: string; $metadata?: { httpStatusCode?: number } };
  if (e.name === 'ThrottlingException' || e.name === 'TooManyRequestsException') return true;
  const status = e.$metadata?.httpStatusCode;
  if (status === 429 || (status !== undefined && status >= 500)) return true;
  if (e.$fault === 'client') return false;
  return true;
}

/** The day comes from the event's own timestamp; anything unexpected there must not shape the key. */
function safeDay(day: string): string {
  return /^\d{4}-\d{2}-\d{2}$/.test(day) ? day : 'unknown';
}

function safeName(name: string): string {
  return /^[A-Za-z0-9._-]{1,128}$/.test(name) ? name : randomUUID();
}

/**
 * A Firehose client for {@link FirehoseEventSink}: the SDK's own retries are off (the sink resends only the records
 * that failed, which the SDK cannot do), and connect and request timeouts keep a sick endpoint from holding the
 * Lambda until its own timeout.
 * @example new FirehoseEventSink({ firehose: createFirehoseClient(process.env.AWS_REGION), ... })
 */
export function createFirehoseClient(region?: string, overrides: FirehoseClientConfig = {}): FirehoseClient {
  return new FirehoseClient({
    ...(region === undefined ? {} : { region }),
    maxAttempts: 1,
    requestHandler: { connectionTimeout: 1_000, requestTimeout: 3_000, throwOnRequestTimeout: true },
    ...overrides,
  });
}
