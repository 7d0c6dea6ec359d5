/**
 * The Glue (Hive) schema of the usage event log: one column per {@link UsageEvent} field, in the record's order.
 *
 * Firehose converts each JSON event to Parquet with exactly this schema, and Athena reads it back; a field that is
 * missing here is silently dropped on conversion. The mapped type below makes adding a field to `UsageEvent`
 * without adding its column a compile error.
 */
import * as glue from 'aws-cdk-lib/aws-glue';
import type { UsageEvent } from '../lambda/core/usage-event';

/** Hive type and description of every `UsageEvent` field. Nullable fields are nullable columns (Hive has no NOT NULL). */
const USAGE_EVENT_FIELDS: { readonly [K in keyof Required<UsageEvent>]: { type: glue.Type; comment: string } } = {
  v: { type: glue.Schema.INTEGER, comment: 'Schema version of the record' },
  request_id: { type: glue.Schema.STRING, comment: 'UUID of the request, also sent back as Helicone-Id' },
  ts: { type: glue.Schema.STRING, comment: 'ISO-8601 UTC arrival time' },
  user_id: { type: glue.Schema.STRING, comment: 'End user billed, null when none was named' },
  properties: { type: glue.Schema.map(glue.Schema.STRING, glue.Schema.STRING), comment: 'Helicone-Property-* headers' },
  provider: { type: glue.Schema.STRING, comment: 'Provider id as known to genai-prices' },
  model: { type: glue.Schema.STRING, comment: 'Model as answered, else as requested' },
  path: { type: glue.Schema.STRING, comment: 'Request path without query string' },
  method: { type: glue.Schema.STRING, comment: 'HTTP method' },
  status: { type: glue.Schema.INTEGER, comment: 'HTTP status the client received' },
  stream: { type: glue.Schema.BOOLEAN, comment: 'Whether the answer was streamed' },
  latency_ms: { type: glue.Schema.BIG_INT, comment: 'Arrival to end of response body, ms' },
  ttft_ms: { type: glue.Schema.BIG_INT, comment: 'Arrival to first upstream body byte, ms' },
  prompt_tokens: { type: glue.Schema.BIG_INT, comment: 'Input tokens' },
  completion_tokens: { type: glue.Schema.BIG_INT, comment: 'Output tokens' },
  cached_prompt_tokens: { type: glue.Schema.BIG_INT, comment: 'Part of prompt_tokens served from cache' },
  reasoning_tokens: { type: glue.Schema.BIG_INT, comment: 'Part of completion_tokens spent on reasoning' },
  total_tokens: { type: glue.Schema.BIG_INT, comment: 'Prompt plus completion tokens' },
  cost_usd: { type: glue.Schema.DOUBLE, comment: 'Cost in USD, null for an unpriced model' },
  cost_nano_usd: { type: glue.Schema.BIG_INT, comment: 'Exact cost in nano-USD, null for an unpriced model' },
  cost_source: { type: glue.Schema.STRING, comment: 'genai-prices | unknown_model | no_usage' },
  usage_source: { type: glue.Schema.STRING, comment: 'provider | estimated | partial | none' },
  error: { type: glue.Schema.STRING, comment: 'Short error description, never a body' },
  key_id: { type: glue.Schema.STRING, comment: 'Non-secret id of the gateway key used' },
};

/**
 * Data columns of the usage event table, in `UsageEvent` field order.
 *
 * @example
 * new glue.S3Table(this, 'Events', { columns: [...USAGE_EVENT_COLUMNS], ... });
 */
export const USAGE_EVENT_COLUMNS: readonly glue.Column[] = Object.entries(USAGE_EVENT_FIELDS).map(
  ([name, { type, comment }]) => ({ name, type, comment }),
);

/** Name of the date partition column, `YYYY-MM-DD` of the event's `ts` (UTC). */
export const USAGE_EVENT_PARTITION_COLUMN = 'dt';

/** Partition columns of the usage event table. Only the event date: per-user partitions would explode file counts. */
export const USAGE_EVENT_PARTITION_KEYS: readonly glue.Column[] = [
  { name: USAGE_EVENT_PARTITION_COLUMN, type: glue.Schema.STRING, comment: 'UTC event date, YYYY-MM-DD' },
];

/** Key prefix of the event data in the log bucket; the Glue table's location. */
export const USAGE_EVENT_PREFIX = 'events/';

/** First date Athena's partition projection enumerates. */
export const USAGE_EVENT_FIRST_DATE = '2024-01-01';
