/**
 * Replay of parked usage events into the Firehose stream: the objects the proxy wrote to the recovery bucket when
 * Firehose refused its events (`recovery/dt=YYYY-MM-DD/<name>.ndjson`), the records Firehose itself set aside under
 * its error prefix, and the `usage_event_undelivered` lines the proxy logged when even the bucket failed.
 *
 * Sending an event again is safe: the event log is read at least once and deduplicated by `request_id` everywhere
 * it is read. Every history and reconcile statement of `lambda/core/history-sql.ts` numbers each request's copies
 * with `row_number() OVER (PARTITION BY request_id ORDER BY ts)` and keeps only the first, and the copies of one
 * request share their `ts`, hence their `dt` partition, so a replayed copy lands in the same day as the original and
 * is dropped there. An event that reached Firehose earlier and was parked as well (an answer lost on the way back)
 * therefore counts once.
 *
 * A replay never writes back into the recovery bucket: it sends through {@link FirehoseDelivery}, which only talks
 * to Firehose. What Firehose still refuses stays where it is, the object is kept, and the report says so; an object
 * is deleted only once every event in it was accepted.
 *
 * @example
 * const report = await replayRecovery({ s3, bucket, firehose, streamName, log });
 * if (!report.complete) process.exitCode = 1;
 */
import { gunzipSync } from 'node:zlib';
import { DeleteObjectCommand, GetObjectCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { describeError } from '../core/log';
import { USAGE_EVENT_VERSION, type CostSource, type UsageEvent, type UsageSource } from '../core/usage-event';
import { FirehoseDelivery, type FirehoseDeliveryOptions } from './firehose-event-sink';

/** Key prefix the proxy parks refused events under (the stack's `RECOVERY_PREFIX`). */
export const DEFAULT_RECOVERY_PREFIX = 'recovery/';
/**
 * Static part of the stream's error output prefix (`errors/!{firehose:error-output-type}/dt=.../`): Firehose puts
 * records it could not partition (`processing-failed/`) or convert to Parquet (`format-conversion-failed/`) there.
 */
export const DEFAULT_FIREHOSE_ERROR_PREFIX = 'errors/';
/** The log message of an event that reached neither Firehose nor the recovery bucket (see FirehoseEventSink). */
export const UNDELIVERED_LOG_MESSAGE = 'usage_event_undelivered';

/** Objects read and sent together: one Firehose round for up to this many objects, then their deletes. */
const OBJECTS_PER_ROUND = 50;
/** S3 calls in flight at once. */
const S3_CONCURRENCY = 8;

/** Where parked events come from. */
export type ReplaySource = 'recovery' | 'firehose-errors' | 'log-file';

/** A line that is not a usage event; it is skipped, and the object holding it is kept. */
export interface MalformedLine {
  /** Object key, or the log file's name. */
  readonly source: string;
  /** 1-based line number (for a `filter-log-events` JSON document: the position in its `events`). */
  readonly line: number;
  readonly reason: string;
}

/** An object that stays in the bucket after the replay, and why. */
export interface KeptObject {
  readonly key: string;
  readonly reason: 'malformed_lines' | 'undelivered' | 'read_failed' | 'delete_failed' | 'dry_run';
  /** Events in the object that were read (whatever happened to them). */
  readonly events: number;
}

export interface ReplayReport {
  readonly source: ReplaySource;
  readonly dryRun: boolean;
  /** Objects found (in the day range); 0 for a log file. */
  readonly objects: number;
  /** Usage events read (valid lines, each copy counted). */
  readonly events: number;
  /** Of `events`, those Firehose accepted (0 in a dry run). */
  readonly replayed: number;
  /** Objects deleted after all their events were accepted. */
  readonly deleted: number;
  /** Objects left in the bucket (each listed in `keptObjects`). */
  readonly kept: number;
  /** Of `events`, those Firehose did not accept within the attempts. */
  readonly failed: number;
  readonly malformed: readonly MalformedLine[];
  readonly keptObjects: readonly KeptObject[];
  /** True when everything found was replayed and nothing is left over (in a dry run: when everything was readable). */
  readonly complete: boolean;
}

/** An inclusive range of UTC days, `YYYY-MM-DD`; either end may be open. */
export interface DayRange {
  readonly from?: string;
  readonly to?: string;
}

/** How to reach Firehose: the same options the sink's delivery takes (client, stream, log, attempts, backoff). */
export type ReplayDeliveryOptions = FirehoseDeliveryOptions;

export interface RecoveryReplayOptions extends ReplayDeliveryOptions, DayRange {
  readonly s3: S3Client;
  readonly bucket: string;
  /** `recovery`: the proxy's NDJSON objects; `firehose-errors`: Firehose's error records. @default 'recovery' */
  readonly source?: 'recovery' | 'firehose-errors';
  /** @default {@link DEFAULT_RECOVERY_PREFIX} or {@link DEFAULT_FIREHOSE_ERROR_PREFIX}, by `source` */
  readonly prefix?: string;
  /** List and read, but send and delete nothing. */
  readonly dryRun?: boolean;
}

export interface LogReplayOptions extends ReplayDeliveryOptions {
  /** Name used for the log in malformed-line reports, e.g. the file path. */
  readonly sourceName?: string;
  readonly dryRun?: boolean;
}

/** A recovery or replay input that cannot be used at all (a bad day, a reversed range). */
export class ReplayInputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ReplayInputError';
  }
}

/**
 * Checks a `YYYY-MM-DD` day (a real calendar day) and returns it.
 * @example parseDay('2026-02-30', '--from') // throws ReplayInputError
 */
export function parseDay(value: string, name: string): string {
  const date = /^\d{4}-\d{2}-\d{2}$/.test(value) ? new Date(`${value}T00:00:00Z`) : null;
  if (date === null || Number.isNaN(date.getTime()) || date.toISOString().slice(0, 10) !== value) {
    throw new ReplayInputError(`${name} must be a day as YYYY-MM-DD, got "${value}".`);
  }
  return value;
}

/**
 * The `dt=YYYY-MM-DD` day in an object key, or null (`dt=unknown` and keys without one).
 * @example keyDay('recovery/dt=2026-03-14/abc.ndjson') // '2026-03-14'
 */
export function keyDay(key: string): string | null {
  return /(?:^|\/)dt=(\d{4}-\d{2}-\d{2})\//.exec(key)?.[1] ?? null;
}

/** Whether an object key falls in `range`; with any end set, keys without a day are outside. */
export function keyInRange(key: string, range: DayRange): boolean {
  if (range.from === undefined && range.to === undefined) return true;
  const day = keyDay(key);
  if (day === null) return false;
  return (range.from === undefined || day >= range.from) && (range.to === undefined || day <= range.to);
}

const COST_SOURCES: ReadonlySet<CostSource> = new Set(['genai-prices', 'unknown_model', 'no_usage']);
const USAGE_SOURCES: ReadonlySet<UsageSource> = new Set(['provider', 'estimated', 'partial', 'none']);

const isString = (v: unknown): v is string => typeof v === 'string';
const isStringOrNull = (v: unknown) => v === null || isString(v);
const isCount = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0;
const isFiniteNumber = (v: unknown) => typeof v === 'number' && Number.isFinite(v);

/**
 * One check per UsageEvent field. The mapped type makes adding a field to `UsageEvent` without a check here a
 * compile error, so the replay never passes on a record the Glue schema would silently drop a field of.
 */
const FIELD_CHECKS: { readonly [K in keyof Required<UsageEvent>]: (value: unknown) => boolean } = {
  v: (v) => Number.isSafeInteger(v) && (v as number) >= 1 && (v as number) <= USAGE_EVENT_VERSION,
  request_id: (v) => isString(v) && v.length > 0,
  // Firehose partitions by `ts[0:10]`: it must start with a real day.
  ts: (v) => isString(v) && /^\d{4}-\d{2}-\d{2}T/.test(v) && !Number.isNaN(Date.parse(v)),
  user_id: isStringOrNull,
  properties: (v) =>
    typeof v === 'object' && v !== null && !Array.isArray(v) && Object.values(v).every((p) => isString(p)),
  provider: isString,
  model: isStringOrNull,
  path: isString,
  method: isString,
  status: (v) => Number.isSafeInteger(v) && (v as number) >= 0 && (v as number) <= 999,
  stream: (v) => typeof v === 'boolean',
  latency_ms: (v) => isFiniteNumber(v) && (v as number) >= 0,
  ttft_ms: (v) => v === null || (isFiniteNumber(v) && (v as number) >= 0),
  prompt_tokens: isCount,
  completion_tokens: isCount,
  cached_prompt_tokens: isCount,
  reasoning_tokens: isCount,
  total_tokens: isCount,
  cost_usd: (v) => v === null || isFiniteNumber(v),
  cost_nano_usd: (v) => v === null || Number.isSafeInteger(v),
  cost_source: (v) => COST_SOURCES.has(v as CostSource),
  usage_source: (v) => USAGE_SOURCES.has(v as UsageSource),
  error: isStringOrNull,
  key_id: isStringOrNull,
};

/**
 * Checks that `value` is a complete {@link UsageEvent} of a version this code reads; returns it, or the reason not.
 * @example validateUsageEvent(JSON.parse(line)) // { event } or { problem: 'field "ts" is missing or invalid' }
 */
export function validateUsageEvent(value: unknown): { event: UsageEvent } | { problem: string } {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return { problem: 'not a JSON object' };
  const record = value as Record<string, unknown>;
  for (const [field, check] of Object.entries(FIELD_CHECKS) as [string, (v: unknown) => boolean][]) {
    if (!(field in record)) return { problem: `field "${field}" is missing` };
    if (!check(record[field])) return { problem: `field "${field}" is invalid` };
  }
  return { event: value as UsageEvent };
}

/** What one parsed input yields. */
export interface ParsedEvents {
  readonly events: UsageEvent[];
  readonly malformed: MalformedLine[];
}

function parseEventJson(text: string): { event: UsageEvent } | { problem: string } {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { problem: 'not valid JSON' };
  }
  return validateUsageEvent(value);
}

/**
 * Parses a recovery object: one usage event per line (blank lines are ignored).
 * @example parseRecoveryObject(body, key).events.length
 */
export function parseRecoveryObject(text: string, source: string): ParsedEvents {
  const events: UsageEvent[] = [];
  const malformed: MalformedLine[] = [];
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    const parsed = parseEventJson(line);
    if ('event' in parsed) events.push(parsed.event);
    else malformed.push({ source, line: i + 1, reason: parsed.problem });
  });
  return { events, malformed };
}

/**
 * Parses an object Firehose wrote under its error prefix: one JSON document per line with the original record
 * base64-encoded in `rawData` (the same for `processing-failed` and `format-conversion-failed`). Each record the
 * proxy sent is one event line, so the decoded data is read as NDJSON.
 * @example parseFirehoseErrorObject(body, key).events
 */
export function parseFirehoseErrorObject(text: string, source: string): ParsedEvents {
  const events: UsageEvent[] = [];
  const malformed: MalformedLine[] = [];
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    let document: unknown;
    try {
      document = JSON.parse(line);
    } catch {
      malformed.push({ source, line: i + 1, reason: 'not valid JSON' });
      return;
    }
    const rawData = (document as { rawData?: unknown } | null)?.rawData;
    if (typeof rawData !== 'string') {
      malformed.push({ source, line: i + 1, reason: 'no rawData in the error record' });
      return;
    }
    const data = Buffer.from(rawData, 'base64').toString('utf8');
    const lines = data.split('\n').filter((l) => l.trim() !== '');
    if (lines.length === 0) malformed.push({ source, line: i + 1, reason: 'empty rawData' });
    for (const eventLine of lines) {
      const parsed = parseEventJson(eventLine);
      if ('event' in parsed) events.push(parsed.event);
      else malformed.push({ source, line: i + 1, reason: `rawData: ${parsed.problem}` });
    }
  });
  return { events, malformed };
}

/**
 * The log entry in one line of a CloudWatch Logs export, unwrapped: a plain JSON line as the gateway writes it
 * (`{"level":"error",...,"message":"usage_event_undelivered","event":{...}}`), the same after a text prefix (a
 * Lambda text-format line, `aws logs tail`, `filter-log-events --output text`), or wrapped in a CloudWatch event
 * whose `message` is that line as a string (`filter-log-events` events, Lambda's JSON log format).
 */
function logEntryOf(line: string): unknown {
  const start = line.indexOf('{');
  if (start < 0) return undefined;
  let entry: unknown;
  for (const candidate of [line.slice(start), line.slice(start, line.lastIndexOf('}') + 1)]) {
    try {
      entry = JSON.parse(candidate);
      break;
    } catch {
      // The line may carry text after the JSON (a tab and a timestamp in `--output text`): try without it.
    }
  }
  for (let depth = 0; depth < 3 && typeof entry === 'object' && entry !== null && !isUndeliveredEntry(entry); depth++) {
    const inner = (entry as { message?: unknown }).message;
    if (typeof inner === 'object' && inner !== null) {
      entry = inner;
      continue;
    }
    if (typeof inner !== 'string' || !inner.trimStart().startsWith('{')) break;
    try {
      entry = JSON.parse(inner);
    } catch {
      // A wrapper whose message is a JSON line cut short (CloudWatch truncates events over 256 KiB).
      return undefined;
    }
  }
  return entry;
}

function isUndeliveredEntry(entry: unknown): boolean {
  if (typeof entry !== 'object' || entry === null) return false;
  const e = entry as { message?: unknown; msg?: unknown };
  return e.message === UNDELIVERED_LOG_MESSAGE || e.msg === UNDELIVERED_LOG_MESSAGE;
}

/**
 * Finds the events of `usage_event_undelivered` entries in CloudWatch Logs text: JSON lines (or lines ending in
 * one), or the JSON document `aws logs filter-log-events` / `get-log-events` prints, whose `events[].message` are
 * the lines. Other entries are ignored, and so is the usage recorder's entry that names only the `request_id` of
 * an event the sink logged whole; an entry of that message without a valid `event` is malformed, as is a named
 * request whose whole entry is missing from the text.
 * @example parseUndeliveredLog(await readFile(path, 'utf8'), path).events
 */
export function parseUndeliveredLog(text: string, source: string): ParsedEvents {
  let lines: string[] = text.split('\n');
  const trimmed = text.trimStart();
  if (trimmed.startsWith('{') && lines.length > 1) {
    try {
      const document = JSON.parse(text) as { events?: unknown };
      if (Array.isArray(document.events)) {
        lines = document.events.map((e) =>
          typeof (e as { message?: unknown })?.message === 'string' ? (e as { message: string }).message : '',
        );
      }
    } catch {
      // Not one document: JSON lines.
    }
  }
  const events: UsageEvent[] = [];
  const malformed: MalformedLine[] = [];
  // Entries that name a request without holding its event: the recorder's note beside the sink's own entry.
  const mentioned = new Map<string, number>();
  lines.forEach((line, i) => {
    if (!line.includes(UNDELIVERED_LOG_MESSAGE)) return;
    const entry = logEntryOf(line);
    if (entry === undefined) {
      const reason = `mentions ${UNDELIVERED_LOG_MESSAGE} but holds no complete JSON log entry`;
      malformed.push({ source, line: i + 1, reason });
      return;
    }
    // Other entries may name it too (the code of the sink's EventDeliveryError): only the event's own entry counts.
    if (!isUndeliveredEntry(entry)) return;
    const { event, request_id: requestId } = entry as { event?: unknown; request_id?: unknown };
    if (event === undefined && typeof requestId === 'string') {
      if (!mentioned.has(requestId)) mentioned.set(requestId, i + 1);
      return;
    }
    const parsed = validateUsageEvent(event);
    if ('event' in parsed) events.push(parsed.event);
    else malformed.push({ source, line: i + 1, reason: `event: ${parsed.problem}` });
  });
  const found = new Set(events.map((e) => e.request_id));
  for (const [requestId, line] of mentioned) {
    if (!found.has(requestId)) {
      malformed.push({ source, line, reason: `request ${requestId} is named but its event entry is not in this log` });
    }
  }
  malformed.sort((a, b) => a.line - b.line);
  return { events, malformed };
}

/**
 * Sends events through `delivery`, each request once (copies in several objects or log lines are sent as one), and
 * returns the request ids Firehose did not accept.
 */
async function deliverOnce(
  delivery: FirehoseDelivery,
  events: readonly UsageEvent[],
): Promise<{ refused: ReadonlySet<string>; lastError: unknown }> {
  const unique = new Map<string, UsageEvent>();
  for (const event of events) if (!unique.has(event.request_id)) unique.set(event.request_id, event);
  const { undelivered, lastError } = await delivery.deliver([...unique.values()]);
  return { refused: new Set(undelivered.map((e) => e.request_id)), lastError };
}

/** Runs `work` over `items` with at most `limit` in flight, keeping results in item order. */
async function mapLimited<T, R>(items: readonly T[], limit: number, work: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await work(items[index]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

async function listKeys(s3: S3Client, bucket: string, prefix: string, range: DayRange): Promise<string[]> {
  const keys: string[] = [];
  let token: string | undefined;
  do {
    const page = await s3.send(
      new ListObjectsV2Command({
        Bucket: bucket,
        Prefix: prefix,
        ...(token === undefined ? {} : { ContinuationToken: token }),
      }),
    );
    for (const object of page.Contents ?? []) {
      if (object.Key !== undefined && !object.Key.endsWith('/') && keyInRange(object.Key, range)) keys.push(object.Key);
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token !== undefined);
  return keys;
}

/** An object body as text; Firehose may have gzipped its error output if the stream compresses. */
async function readObject(s3: S3Client, bucket: string, key: string): Promise<string | null> {
  try {
    const got = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    const bytes = Buffer.from((await got.Body?.transformToByteArray()) ?? new Uint8Array());
    return (bytes[0] === 0x1f && bytes[1] === 0x8b ? gunzipSync(bytes) : bytes).toString('utf8');
  } catch (error) {
    // Gone since the listing: another replay took it. Nothing is left to do for it.
    if ((error as { name?: string }).name === 'NoSuchKey') return null;
    throw error;
  }
}

interface ReadObject {
  readonly key: string;
  readonly events: readonly UsageEvent[];
  readonly malformed: readonly MalformedLine[];
  readonly readError?: unknown;
  readonly gone?: boolean;
}

/**
 * Replays the objects under the recovery prefix (or Firehose's error prefix) of `bucket` into the stream, in rounds
 * of up to 50 objects: read them, send their events, delete each object whose events were all accepted.
 *
 * An object with a malformed line has its valid events sent but is kept, so nothing in it is lost; a later replay
 * sends those events again, which readers deduplicate. With `source: 'firehose-errors'` the day in the key is the
 * day Firehose set the record aside, not the event's day, and a record whose conversion fails for a reason that
 * does not heal comes back under the error prefix after the replay.
 *
 * @example await replayRecovery({ s3, bucket: 'gateway-log', firehose, streamName: 'usage', log, from: '2026-03-14' })
 */
export async function replayRecovery(options: RecoveryReplayOptions): Promise<ReplayReport> {
  const source = options.source ?? 'recovery';
  const prefix = options.prefix ?? (source === 'recovery' ? DEFAULT_RECOVERY_PREFIX : DEFAULT_FIREHOSE_ERROR_PREFIX);
  const range: DayRange = {
    ...(options.from === undefined ? {} : { from: parseDay(options.from, 'from') }),
    ...(options.to === undefined ? {} : { to: parseDay(options.to, 'to') }),
  };
  if (range.from !== undefined && range.to !== undefined && range.from > range.to) {
    throw new ReplayInputError(`from (${range.from}) must not be after to (${range.to}).`);
  }
  const dryRun = options.dryRun ?? false;
  const parse = source === 'recovery' ? parseRecoveryObject : parseFirehoseErrorObject;
  const delivery = new FirehoseDelivery(options);
  const { s3, bucket, log } = options;

  const keys = await listKeys(s3, bucket, prefix, range);
  let objects = 0;
  let events = 0;
  let replayed = 0;
  let deleted = 0;
  let failed = 0;
  const malformed: MalformedLine[] = [];
  const keptObjects: KeptObject[] = [];
  const keep = (key: string, reason: KeptObject['reason'], count: number) => {
    keptObjects.push({ key, reason, events: count });
  };

  for (let start = 0; start < keys.length; start += OBJECTS_PER_ROUND) {
    const round = keys.slice(start, start + OBJECTS_PER_ROUND);
    const read = await mapLimited(round, S3_CONCURRENCY, async (key): Promise<ReadObject> => {
      try {
        const body = await readObject(s3, bucket, key);
        if (body === null) return { key, events: [], malformed: [], gone: true };
        return { key, ...parse(body, key) };
      } catch (error) {
        return { key, events: [], malformed: [], readError: error };
      }
    });
    const present = read.filter((o) => !o.gone);
    objects += present.length;
    for (const o of present) {
      events += o.events.length;
      malformed.push(...o.malformed);
      if (o.readError !== undefined) {
        log.error('recovery_object_unreadable', { bucket, key: o.key, error: describeError(o.readError) });
      }
    }

    if (dryRun) {
      for (const o of present) keep(o.key, o.readError !== undefined ? 'read_failed' : 'dry_run', o.events.length);
      continue;
    }

    const { refused, lastError } = await deliverOnce(delivery, present.flatMap((o) => o.events));
    if (refused.size > 0) {
      log.error('usage_events_replay_refused', {
        stream: options.streamName,
        refused: refused.size,
        error: describeError(lastError),
      });
    }
    const deletable: ReadObject[] = [];
    for (const o of present) {
      const accepted = o.events.filter((e) => !refused.has(e.request_id)).length;
      replayed += accepted;
      failed += o.events.length - accepted;
      if (o.readError !== undefined) keep(o.key, 'read_failed', o.events.length);
      else if (accepted < o.events.length) keep(o.key, 'undelivered', o.events.length);
      else if (o.malformed.length > 0) keep(o.key, 'malformed_lines', o.events.length);
      else deletable.push(o);
    }
    await mapLimited(deletable, S3_CONCURRENCY, async (o) => {
      try {
        await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: o.key }));
        deleted += 1;
      } catch (error) {
        // The events are in the stream; the object comes round again next time and is deduplicated by readers.
        log.error('recovery_object_not_deleted', { bucket, key: o.key, error: describeError(error) });
        keep(o.key, 'delete_failed', o.events.length);
      }
    });
  }

  keptObjects.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  const unreadable = keptObjects.some((k) => k.reason === 'read_failed');
  return {
    source,
    dryRun,
    objects,
    events,
    replayed,
    deleted,
    kept: keptObjects.length,
    failed,
    malformed,
    keptObjects,
    complete: dryRun
      ? malformed.length === 0 && !unreadable
      : keptObjects.length === 0 && failed === 0 && malformed.length === 0,
  };
}

/**
 * Replays the events of `usage_event_undelivered` entries found in CloudWatch Logs text (see
 * {@link parseUndeliveredLog}) into the stream. Nothing is deleted anywhere: the report says whether all were
 * accepted, and running it again only sends copies that readers deduplicate.
 * @example await replayUndeliveredLog(await readFile('undelivered.log', 'utf8'), { firehose, streamName, log })
 */
export async function replayUndeliveredLog(text: string, options: LogReplayOptions): Promise<ReplayReport> {
  const source = options.sourceName ?? 'log';
  const { events, malformed } = parseUndeliveredLog(text, source);
  let replayed = 0;
  let failed = 0;
  if (!options.dryRun) {
    const { refused, lastError } = await deliverOnce(new FirehoseDelivery(options), events);
    if (refused.size > 0) {
      options.log.error('usage_events_replay_refused', {
        stream: options.streamName,
        refused: refused.size,
        error: describeError(lastError),
      });
    }
    for (const event of events) {
      if (refused.has(event.request_id)) failed += 1;
      else replayed += 1;
    }
  }
  return {
    source: 'log-file',
    dryRun: options.dryRun ?? false,
    objects: 0,
    events: events.length,
    replayed,
    deleted: 0,
    kept: 0,
    failed,
    malformed,
    keptObjects: [],
    complete: failed === 0 && malformed.length === 0,
  };
}
