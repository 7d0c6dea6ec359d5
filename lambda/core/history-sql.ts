/**
 * The one SQL builder for history queries over the event log, in the two dialects that run them: DuckDB over the
 * local event files and Athena over the Parquet log in S3. Both read a relation with every UsageEvent column plus
 * `dt` (the `YYYY-MM-DD` partition) and `properties` as a string→string map; `ts` is read as an ISO string.
 *
 * Every value the caller supplies goes in as a positional `?` parameter. The only things spliced into the SQL are
 * constants of this file, the caller's own relation name (checked against a strict identifier pattern) and, on
 * Athena, two validated integers: the row limit and a time-zone offset in minutes.
 *
 * Athena accepts `?` only in WHERE clauses ("Syntax like SELECT ? FROM table is not supported", Athena user guide,
 * "Use parameterized queries"), so a property lookup cannot be `element_at(properties, ?)` in the select list
 * there: the Athena form unnests the map's keys (plus an empty key standing for "no such property") and keeps the
 * wanted key's row in WHERE, then reads `element_at(properties, p.k)`. DuckDB takes parameters anywhere and uses
 * `properties[?]`, which on a MAP returns the value itself (NULL when the key is missing).
 *
 * Every statement reads each request once, whatever the log holds (Firehose delivers at least once):
 * `row_number() OVER (PARTITION BY request_id ORDER BY ts)` numbers the copies and only the first is kept. A
 * request's copies share their `ts`, hence their `dt`, so deduplicating inside the statement's days is complete.
 *
 * Percentiles are nearest-rank (the smallest value with at least p·n values at or below it), computed with window
 * functions both engines evaluate exactly alike, so DuckDB and Athena give the same answer to the same data.
 *
 * Statements are written with named `:name` markers and bound at the end: the markers become `?` in text order and
 * the values follow in that same order, whatever order the pieces were assembled in.
 */
import { BadRequestError } from './errors';
import type { EventExportQuery, HistoryStatement, SqlDialect, UsageQuery } from './ports';
import { GATEWAY_RATE_LIMITED_ERROR } from './usage-event';

export type { SqlDialect } from './ports';

/**
 * A statement with positional `?` placeholders and their values in order. A string parameter is a SQL string value
 * and a number a numeric one: the Athena adapter, whose ExecutionParameters are SQL text, quotes the strings.
 */
export interface SqlStatement {
  readonly sql: string;
  readonly params: readonly (string | number)[];
}

/** Allowed property names for a `{ property }` group: the characters a `Helicone-Property-<Name>` header keeps. */
export const PROPERTY_NAME_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

/** Most groups a history query returns. */
export const MAX_USAGE_LIMIT = 10_000;

/** Largest time-zone offset accepted, in minutes (UTC-12:00 to UTC+14:00 are the real extremes). */
export const MAX_TZ_OFFSET_MINUTES = 14 * 60;

/** Days before the anomaly day that form a user's own baseline. */
export const ANOMALY_BASELINE_DAYS = 14;

const DAY_PATTERN = /^\d{4}-\d{2}-\d{2}$/;
const IDENTIFIER = '(?:[A-Za-z_][A-Za-z0-9_]*|"[A-Za-z0-9_-]+")';
const SOURCE_PATTERN = new RegExp(`^${IDENTIFIER}(?:\\.${IDENTIFIER}){0,2}$`);

/** Same rule as `isErrorEvent` in usage-event.ts, in SQL, on the relation aliased `alias`. */
const isError = (alias: string) =>
  `(${alias}.status < 200 OR ${alias}.status >= 300 OR ${alias}.error IS NOT NULL)`;
/** Same rule as `isGatewayRateLimited` in usage-event.ts. The error code is a constant, not a caller's value. */
const isRateLimited = (alias: string) =>
  `(${alias}.status = 429 AND ${alias}.error = '${GATEWAY_RATE_LIMITED_ERROR}')`;

/** Inclusive days in UTC shifted by an offset: the window every history query reads. */
export interface TimeWindow {
  readonly from: string;
  readonly to: string;
  /** Minutes east of UTC, e.g. 330 for `+05:30`, -480 for `-08:00`. */
  readonly tzOffsetMinutes: number;
}

export type SeriesInterval = 'hour' | 'day' | 'month';
export type GroupBy = 'user' | 'model' | { readonly property: string };

export interface UserSeriesQuery extends TimeWindow {
  readonly userId: string;
  readonly interval: SeriesInterval;
  /** Split each bucket by model or by a property's value; none: one row per bucket. */
  readonly groupBy?: 'model' | { readonly property: string };
}

export interface UserSummaryQuery extends TimeWindow {
  readonly userId: string;
}

export type DistributionMetric = 'cost' | 'requests';

export interface DistributionQuery extends TimeWindow {
  readonly metric: DistributionMetric;
}

export interface AnomalyQuery {
  /** The day examined, `YYYY-MM-DD` (shifted by the offset like every day here). */
  readonly date: string;
  readonly tzOffsetMinutes: number;
  /** How many times its baseline median a day must exceed. */
  readonly factor: number;
  /** Absolute floors: a day below both is never an anomaly. */
  readonly minRequests: number;
  readonly minCostNanoUsd: number;
  /** Property whose value forms the cohorts (users with the same value that day). */
  readonly cohortProperty: string;
}

/** Binds `:name` markers to `?` placeholders in text order. Markers never sit inside string literals here. */
function bind(sql: string, values: Readonly<Record<string, string | number>>, days: HistoryStatement['days']): HistoryStatement {
  const params: (string | number)[] = [];
  const text = sql.replace(/:([a-z][a-z0-9_]*)/g, (_, name: string) => {
    if (!(name in values)) throw new Error(`No value for :${name}`);
    params.push(values[name]!);
    return '?';
  });
  return { sql: text, params, days };
}

function checkSource(source: string, dialect: SqlDialect): void {
  if (!SOURCE_PATTERN.test(source)) throw new Error(`Invalid source relation for a history query: ${source}`);
  if (dialect !== 'duckdb' && dialect !== 'athena') throw new Error(`Unknown SQL dialect: ${String(dialect)}`);
}

function checkDay(day: unknown, param: string): asserts day is string {
  if (typeof day !== 'string' || !DAY_PATTERN.test(day) || Number.isNaN(Date.parse(`${day}T00:00:00Z`))) {
    throw new BadRequestError('invalid_date', `\`${param}\` must be a day, YYYY-MM-DD.`, { param });
  }
}

function checkWindow(window: TimeWindow): void {
  checkDay(window.from, 'from');
  checkDay(window.to, 'to');
  if (window.from > window.to) {
    throw new BadRequestError('invalid_range', '`from` must not be after `to`.', { param: 'from' });
  }
  checkOffset(window.tzOffsetMinutes);
}

function checkOffset(offset: unknown): asserts offset is number {
  if (!Number.isSafeInteger(offset) || Math.abs(offset as number) > MAX_TZ_OFFSET_MINUTES) {
    throw new BadRequestError('invalid_tz', '`tz` must be an offset from -14:00 to +14:00.', { param: 'tz' });
  }
}

function checkProperty(property: unknown, param: string): asserts property is string {
  if (typeof property !== 'string' || !PROPERTY_NAME_PATTERN.test(property)) {
    throw new BadRequestError(
      'invalid_group_by',
      `\`${param}\` must name a property made of letters, digits, _ and - (at most 64).`,
      { param },
    );
  }
}

function checkUserId(userId: unknown, param = 'user_id'): void {
  if (typeof userId !== 'string') {
    throw new BadRequestError('invalid_user_id', `\`${param}\` must be a string.`, { param });
  }
}

/** `day` moved by `days` whole days. */
export function addDays(day: string, days: number): string {
  return new Date(Date.parse(`${day}T00:00:00Z`) + days * 86_400_000).toISOString().slice(0, 10);
}

/** The UTC instant a local day starts at, as the ISO string `ts` is compared with. */
function dayStartUtc(day: string, offsetMinutes: number): string {
  return new Date(Date.parse(`${day}T00:00:00Z`) - offsetMinutes * 60_000).toISOString();
}

/**
 * WHERE conditions of a window: the `dt` partitions (pruned by Athena and by the local file listing) and, when the
 * offset moves the day boundaries off UTC midnight, the exact `ts` bounds. Values go to `values`.
 */
function windowWhere(window: TimeWindow, values: Record<string, string | number>): { where: string; days: HistoryStatement['days'] } {
  const offset = window.tzOffsetMinutes;
  // A local day east of UTC starts the evening before in UTC; west of UTC it ends the morning after.
  const days = { from: offset > 0 ? addDays(window.from, -1) : window.from, to: offset < 0 ? addDays(window.to, 1) : window.to };
  values.dt_from = days.from;
  values.dt_to = days.to;
  if (offset === 0) return { where: 'dt BETWEEN :dt_from AND :dt_to', days };
  values.ts_from = dayStartUtc(window.from, offset);
  values.ts_to = dayStartUtc(addDays(window.to, 1), offset);
  return { where: 'dt BETWEEN :dt_from AND :dt_to AND ts >= :ts_from AND ts < :ts_to', days };
}

/** The event's local time as a timestamp, in SQL; the offset is a checked integer. */
function localTime(dialect: SqlDialect, offset: number, alias: string): string {
  const parsed = dialect === 'duckdb' ? `CAST(${alias}.ts AS TIMESTAMP)` : `from_iso8601_timestamp(${alias}.ts)`;
  if (offset === 0) return parsed;
  return `(${parsed} ${offset > 0 ? '+' : '-'} INTERVAL '${Math.abs(offset)}' MINUTE)`;
}

const BUCKET_FORMATS: Record<SeriesInterval, { length: number; format: string; suffix: string }> = {
  hour: { length: 13, format: '%Y-%m-%dT%H:00', suffix: ':00' },
  day: { length: 10, format: '%Y-%m-%d', suffix: '' },
  month: { length: 7, format: '%Y-%m', suffix: '' },
};

/**
 * The bucket label of an event in SQL: `YYYY-MM-DDTHH:00`, `YYYY-MM-DD` or `YYYY-MM` of its local time. At offset 0
 * it is a prefix of the ISO `ts` (no parsing: the fast path for the common case).
 */
export function bucketSql(interval: SeriesInterval, dialect: SqlDialect, offset: number, alias = 'e'): string {
  const { length, format, suffix } = BUCKET_FORMATS[interval];
  if (offset === 0) {
    const prefix = `substr(${alias}.ts, 1, ${length})`;
    return suffix === '' ? prefix : `concat(${prefix}, '${suffix}')`;
  }
  const fn = dialect === 'duckdb' ? 'strftime' : 'date_format';
  return `${fn}(${localTime(dialect, offset, alias)}, '${format}')`;
}

/**
 * The innermost relation: the window's events with the given columns, each request's copies numbered (`copy`).
 * `extra` adds conditions (with their values already in `values`).
 */
function eventsSql(
  source: string,
  columns: readonly string[],
  window: TimeWindow,
  values: Record<string, string | number>,
  extra: readonly string[] = [],
): { sql: string; days: HistoryStatement['days'] } {
  const { where, days } = windowWhere(window, values);
  const sql = [
    `SELECT ${[...columns, 'row_number() OVER (PARTITION BY request_id ORDER BY ts) AS copy'].join(', ')}`,
    `FROM ${source}`,
    `WHERE ${[where, ...extra].join(' AND ')}`,
  ].join('\n  ');
  return { sql, days };
}

/**
 * How a grouping by property reads the property's value. DuckDB: a column of the inner select. Athena: a join on
 * the map's keys, a WHERE condition that keeps one row per event, and the key expression.
 */
function propertyLookup(
  dialect: SqlDialect,
  property: string,
  values: Record<string, string | number>,
  valueName: string,
): { column: string | null; join: string; where: string; key: string } {
  values[valueName] = property;
  if (dialect === 'duckdb') {
    return { column: `properties[:${valueName}] AS group_key`, join: '', where: '', key: 'e.group_key' };
  }
  // One row per event: the property's own key when present, else the '' entry (never a property name, which has
  // at least one character) whose value reads as NULL.
  values[`${valueName}_absent`] = property;
  const keys = 'map_keys(coalesce(e.properties, MAP()))';
  return {
    column: 'properties',
    join: `\nCROSS JOIN UNNEST(concat(ARRAY[''], ${keys})) AS p (k)`,
    where: ` AND (p.k = :${valueName} OR (p.k = '' AND NOT contains(${keys}, :${valueName}_absent)))`,
    key: "CASE WHEN p.k = '' THEN NULL ELSE element_at(e.properties, p.k) END",
  };
}

/**
 * Builds the statement answering a {@link UsageQuery}: totals per group over the query's days.
 *
 * Output columns are exactly those of `UsageGroupRow`: `group`, `requests`, `errors`, `users`, `prompt_tokens`,
 * `completion_tokens`, `total_tokens`, `cost_nano_usd`, `unpriced_requests`.
 *
 * @param source relation to read: `events` (a DuckDB view) or `"usage_db"."usage_events"` (Athena).
 * @throws BadRequestError for a malformed day, range, limit, sort, order or group (its `param` names the field).
 * @example
 * const { sql, params } = usageQuerySql(
 *   { from: '2026-11-01', to: '2026-11-30', groupBy: { property: 'team' }, sort: 'cost', order: 'desc', limit: 50 },
 *   'athena', '"usage_db"."usage_events"');
 */
export function usageQuerySql(query: UsageQuery, dialect: SqlDialect, source: string): HistoryStatement {
  checkSource(source, dialect);
  const window: TimeWindow = { from: query.from, to: query.to, tzOffsetMinutes: query.tzOffsetMinutes ?? 0 };
  checkWindow(window);
  if (!Number.isSafeInteger(query.limit) || query.limit < 1 || query.limit > MAX_USAGE_LIMIT) {
    throw new BadRequestError('invalid_limit', `\`limit\` must be an integer from 1 to ${MAX_USAGE_LIMIT}.`, {
      param: 'limit',
    });
  }
  if (query.sort !== 'cost' && query.sort !== 'requests') {
    throw new BadRequestError('invalid_sort', '`sort` must be cost or requests.', { param: 'sort' });
  }
  if (query.order !== 'asc' && query.order !== 'desc') {
    throw new BadRequestError('invalid_order', '`order` must be asc or desc.', { param: 'order' });
  }
  if (query.userId !== undefined) checkUserId(query.userId);
  const groupBy: unknown = query.groupBy;
  if (groupBy !== 'user' && groupBy !== 'model') {
    checkProperty(typeof groupBy === 'object' && groupBy !== null ? (groupBy as { property?: unknown }).property : undefined, 'group_by');
  }

  const values: Record<string, string | number> = {};
  const columns = ['request_id', 'user_id', 'status', 'error', 'prompt_tokens', 'completion_tokens', 'total_tokens', 'cost_nano_usd', 'cost_source'];
  let lookup = { join: '', where: '', key: 'e.group_key' };
  if (query.groupBy === 'user') columns.push('user_id AS group_key');
  else if (query.groupBy === 'model') columns.push('model AS group_key');
  else {
    const found = propertyLookup(dialect, query.groupBy.property, values, 'property');
    if (found.column !== null) columns.push(found.column);
    lookup = found;
  }
  const extra: string[] = [];
  if (query.userId !== undefined) {
    extra.push('user_id = :user_id');
    values.user_id = query.userId;
  }
  const events = eventsSql(source, columns, window, values, extra);

  const cost = 'coalesce(sum(e.cost_nano_usd), 0)';
  const requests = 'count(*)';
  const sortColumn = query.sort === 'cost' ? cost : requests;
  const secondColumn = query.sort === 'cost' ? requests : cost;
  const direction = query.order === 'asc' ? 'ASC' : 'DESC';
  let limit: string;
  if (dialect === 'duckdb') {
    limit = 'LIMIT :limit';
    values.limit = query.limit;
  } else {
    limit = `LIMIT ${query.limit}`; // Athena takes no parameter here; the check above made it a bounded integer.
  }

  const sql = [
    `SELECT ${lookup.key} AS "group",`,
    `  ${requests} AS requests,`,
    `  sum(CASE WHEN ${isError('e')} THEN 1 ELSE 0 END) AS errors,`,
    '  count(DISTINCT e.user_id) AS users,',
    '  coalesce(sum(e.prompt_tokens), 0) AS prompt_tokens,',
    '  coalesce(sum(e.completion_tokens), 0) AS completion_tokens,',
    '  coalesce(sum(e.total_tokens), 0) AS total_tokens,',
    `  ${cost} AS cost_nano_usd,`,
    "  sum(CASE WHEN e.cost_source = 'unknown_model' THEN 1 ELSE 0 END) AS unpriced_requests",
    'FROM (',
    `  ${events.sql}`,
    `) e${lookup.join}`,
    `WHERE e.copy = 1${lookup.where}`,
    'GROUP BY 1',
    `ORDER BY ${sortColumn} ${direction}, ${secondColumn} ${direction}, 1 ASC NULLS LAST`,
    limit,
  ].join('\n');
  return bind(sql, values, events.days);
}

/**
 * One user's usage per time bucket (and per model or property value when grouped), with nearest-rank p50 and p95
 * latency. Buckets without requests are absent.
 *
 * Columns: `bucket`, `group`, `requests`, `errors`, `prompt_tokens`, `completion_tokens`, `total_tokens`,
 * `cost_nano_usd`, `unpriced_requests`, `p50_latency_ms`, `p95_latency_ms`; ordered by bucket, then group.
 * @example userSeriesSql({ userId: 'u1', from: '2026-11-01', to: '2026-11-30', tzOffsetMinutes: 0, interval: 'day' }, 'duckdb', 'events')
 */
export function userSeriesSql(query: UserSeriesQuery, dialect: SqlDialect, source: string): HistoryStatement {
  checkSource(source, dialect);
  checkWindow(query);
  checkUserId(query.userId, 'userId');
  if (!(query.interval in BUCKET_FORMATS)) {
    throw new BadRequestError('invalid_interval', '`interval` must be hour, day or month.', { param: 'interval' });
  }
  const values: Record<string, string | number> = {};
  const columns = ['request_id', 'ts', 'status', 'error', 'latency_ms', 'prompt_tokens', 'completion_tokens', 'total_tokens', 'cost_nano_usd', 'cost_source'];
  let lookup = { join: '', where: '', key: 'CAST(NULL AS varchar)' };
  if (query.groupBy === 'model') {
    columns.push('model AS group_key');
    lookup = { ...lookup, key: 'e.group_key' };
  } else if (query.groupBy !== undefined) {
    checkProperty(query.groupBy.property, 'group_by');
    const found = propertyLookup(dialect, query.groupBy.property, values, 'property');
    if (found.column !== null) columns.push(found.column);
    lookup = found;
  }
  values.user_id = query.userId;
  const events = eventsSql(source, columns, query, values, ['user_id = :user_id']);
  const percentile = (p: number) => `min(CASE WHEN s.latency_rank >= ceil(${p} * s.bucket_requests) THEN s.latency_ms END)`;
  const sql = [
    'SELECT s.bucket, s.group_key AS "group",',
    '  count(*) AS requests,',
    `  sum(CASE WHEN ${isError('s')} THEN 1 ELSE 0 END) AS errors,`,
    '  coalesce(sum(s.prompt_tokens), 0) AS prompt_tokens,',
    '  coalesce(sum(s.completion_tokens), 0) AS completion_tokens,',
    '  coalesce(sum(s.total_tokens), 0) AS total_tokens,',
    '  coalesce(sum(s.cost_nano_usd), 0) AS cost_nano_usd,',
    "  sum(CASE WHEN s.cost_source = 'unknown_model' THEN 1 ELSE 0 END) AS unpriced_requests,",
    `  ${percentile(0.5)} AS p50_latency_ms,`,
    `  ${percentile(0.95)} AS p95_latency_ms`,
    'FROM (',
    '  SELECT b.*,',
    '    row_number() OVER (PARTITION BY b.bucket, b.group_key ORDER BY b.latency_ms) AS latency_rank,',
    '    count(*) OVER (PARTITION BY b.bucket, b.group_key) AS bucket_requests',
    '  FROM (',
    `    SELECT ${bucketSql(query.interval, dialect, query.tzOffsetMinutes)} AS bucket, ${lookup.key} AS group_key,`,
    '      e.status, e.error, e.latency_ms, e.prompt_tokens, e.completion_tokens, e.total_tokens, e.cost_nano_usd, e.cost_source',
    '    FROM (',
    `      ${events.sql}`,
    `    ) e${lookup.join}`,
    `    WHERE e.copy = 1${lookup.where}`,
    '  ) b',
    ') s',
    'GROUP BY s.bucket, s.group_key',
    'ORDER BY s.bucket ASC, s.group_key ASC NULLS FIRST',
  ].join('\n');
  return bind(sql, values, events.days);
}

/**
 * One user's totals over a window: one row with `requests`, `errors`, `rate_limited`, `prompt_tokens`,
 * `completion_tokens`, `total_tokens`, `cost_nano_usd`, `unpriced_requests`, `active_days` (distinct local days
 * with a request), `first_active` and `last_active` (ISO `ts`, NULL without requests).
 */
export function userSummarySql(query: UserSummaryQuery, dialect: SqlDialect, source: string): HistoryStatement {
  checkSource(source, dialect);
  checkWindow(query);
  checkUserId(query.userId, 'userId');
  const values: Record<string, string | number> = { user_id: query.userId };
  const columns = ['request_id', 'ts', 'status', 'error', 'prompt_tokens', 'completion_tokens', 'total_tokens', 'cost_nano_usd', 'cost_source'];
  const events = eventsSql(source, columns, query, values, ['user_id = :user_id']);
  const sql = [
    'SELECT count(*) AS requests,',
    `  coalesce(sum(CASE WHEN ${isError('e')} THEN 1 ELSE 0 END), 0) AS errors,`,
    `  coalesce(sum(CASE WHEN ${isRateLimited('e')} THEN 1 ELSE 0 END), 0) AS rate_limited,`,
    '  coalesce(sum(e.prompt_tokens), 0) AS prompt_tokens,',
    '  coalesce(sum(e.completion_tokens), 0) AS completion_tokens,',
    '  coalesce(sum(e.total_tokens), 0) AS total_tokens,',
    '  coalesce(sum(e.cost_nano_usd), 0) AS cost_nano_usd,',
    "  coalesce(sum(CASE WHEN e.cost_source = 'unknown_model' THEN 1 ELSE 0 END), 0) AS unpriced_requests,",
    `  count(DISTINCT ${bucketSql('day', dialect, query.tzOffsetMinutes)}) AS active_days,`,
    '  min(e.ts) AS first_active,',
    '  max(e.ts) AS last_active',
    'FROM (',
    `  ${events.sql}`,
    ') e',
    'WHERE e.copy = 1',
  ].join('\n');
  return bind(sql, values, events.days);
}

/**
 * The lower bound of a value's histogram bin on the 1-2-5 series (0, 1, 2, 5, 10, 20, 50, …), in SQL, for a
 * non-negative integer expression. Integer arithmetic on the decimal digits keeps both engines exact.
 */
function binLowerSql(v: string): string {
  const digits = `CAST(${v} AS varchar)`;
  const lead = `CAST(substr(${digits}, 1, 1) AS integer)`;
  return (
    `CASE WHEN ${v} <= 0 THEN 0 ELSE CAST((CASE WHEN ${lead} >= 5 THEN 5 WHEN ${lead} >= 2 THEN 2 ELSE 1 END)` +
    ` * power(10, length(${digits}) - 1) AS bigint) END`
  );
}

/** The percentiles a distribution reports. */
export const DISTRIBUTION_PERCENTILES = [50, 75, 90, 95, 99] as const;

/**
 * The distribution of one metric across users (requests that named no user are left out): one row per histogram
 * bin (`bin_lower`, `bin_users`), each carrying the same totals (`users`, `total`, `max_value`, `p50` … `p99`).
 * Cost is in nano-USD. No row at all when no user made a request.
 */
export function distributionSql(query: DistributionQuery, dialect: SqlDialect, source: string): HistoryStatement {
  checkSource(source, dialect);
  checkWindow(query);
  if (query.metric !== 'cost' && query.metric !== 'requests') {
    throw new BadRequestError('invalid_metric', '`metric` must be cost or requests.', { param: 'metric' });
  }
  const values: Record<string, string | number> = {};
  const events = eventsSql(source, ['request_id', 'user_id', 'cost_nano_usd'], query, values, ['user_id IS NOT NULL']);
  const metric = query.metric === 'cost' ? 'coalesce(sum(e.cost_nano_usd), 0)' : 'count(*)';
  const percentiles = DISTRIBUTION_PERCENTILES.map(
    (p) => `    min(CASE WHEN r.rn >= ceil(${p / 100} * r.n) THEN r.v END) AS p${p}`,
  ).join(',\n');
  const sql = [
    'WITH per_user AS (',
    `  SELECT e.user_id, ${metric} AS v`,
    '  FROM (',
    `    ${events.sql}`,
    '  ) e',
    '  WHERE e.copy = 1',
    '  GROUP BY e.user_id',
    '), ranked AS (',
    '  SELECT u.v, row_number() OVER (ORDER BY u.v) AS rn, count(*) OVER () AS n FROM per_user u',
    '), stats AS (',
    '  SELECT count(*) AS users, coalesce(sum(r.v), 0) AS total, max(r.v) AS max_value,',
    percentiles,
    '  FROM ranked r',
    '), bins AS (',
    `  SELECT ${binLowerSql('u.v')} AS bin_lower, count(*) AS bin_users FROM per_user u GROUP BY 1`,
    ')',
    'SELECT b.bin_lower, b.bin_users, s.users, s.total, s.max_value, ' +
      DISTRIBUTION_PERCENTILES.map((p) => `s.p${p}`).join(', '),
    'FROM bins b CROSS JOIN stats s',
    'ORDER BY b.bin_lower',
  ].join('\n');
  return bind(sql, values, events.days);
}

/**
 * Candidate anomalies of one day: users whose requests or cost that day reach the floor and exceed `factor` times
 * the median of their own previous {@link ANOMALY_BASELINE_DAYS} days (days without requests count as 0), or the
 * nearest-rank p99 of their cohort that day (users with the same value of the cohort property; those without it
 * form their own cohort). The caller names the rule that fired from the numbers, which every row carries:
 * `user_id`, `cohort`, `requests`, `cost_nano_usd`, `requests_median`, `cost_median`, `baseline_days` (active days
 * in the baseline), `cohort_users`, `requests_p99`, `cost_p99`.
 *
 * The thresholds are parameters of the final WHERE, which Athena allows; the rule labels are computed by the
 * caller because Athena takes no parameter in a select list.
 */
export function anomaliesSql(query: AnomalyQuery, dialect: SqlDialect, source: string): HistoryStatement {
  checkSource(source, dialect);
  checkDay(query.date, 'date');
  checkOffset(query.tzOffsetMinutes);
  checkProperty(query.cohortProperty, 'cohort');
  for (const [name, value] of [
    ['factor', query.factor],
    ['min_requests', query.minRequests],
    ['min_cost', query.minCostNanoUsd],
  ] as const) {
    if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
      throw new BadRequestError('invalid_parameter', `\`${name}\` must be a non-negative number.`, { param: name });
    }
  }
  const n = ANOMALY_BASELINE_DAYS;
  const window: TimeWindow = { from: addDays(query.date, -n), to: query.date, tzOffsetMinutes: query.tzOffsetMinutes };
  const values: Record<string, string | number> = {};
  const columns = ['request_id', 'ts', 'user_id', 'cost_nano_usd'];
  const lookup = propertyLookup(dialect, query.cohortProperty, values, 'cohort');
  if (lookup.column !== null) columns.push(lookup.column);
  const events = eventsSql(source, columns, window, values, ['user_id IS NOT NULL']);
  values.date = query.date;
  values.baseline_date = query.date;
  values.min_requests = query.minRequests;
  values.factor_requests = query.factor;
  values.min_cost = query.minCostNanoUsd;
  values.factor_cost = query.factor;
  // The median of n values whose k non-zero ones are ranked 1..k: zero-usage days fill the lowest n-k ranks.
  const median = (metric: string) =>
    `(coalesce(max(CASE WHEN h.${metric}_rank = h.active_days - ${n / 2} THEN h.${metric} END), 0) + ` +
    `coalesce(max(CASE WHEN h.${metric}_rank = h.active_days - ${n / 2 - 1} THEN h.${metric} END), 0)) / 2.0`;
  const p99 = (metric: string) => `min(CASE WHEN c.${metric}_rank >= ceil(0.99 * c.cohort_users) THEN c.${metric} END)`;
  const sql = [
    'WITH daily AS (',
    `  SELECT e.user_id, ${bucketSql('day', dialect, query.tzOffsetMinutes)} AS day, count(*) AS requests,`,
    `    coalesce(sum(e.cost_nano_usd), 0) AS cost_nano_usd, max(${lookup.key}) AS cohort`,
    '  FROM (',
    `    ${events.sql}`,
    `  ) e${lookup.join}`,
    `  WHERE e.copy = 1${lookup.where}`,
    '  GROUP BY 1, 2',
    '), today AS (',
    '  SELECT d.user_id, d.requests, d.cost_nano_usd, d.cohort FROM daily d WHERE d.day = :date',
    '), history AS (',
    '  SELECT d.user_id, d.requests, d.cost_nano_usd,',
    '    row_number() OVER (PARTITION BY d.user_id ORDER BY d.requests) AS requests_rank,',
    '    row_number() OVER (PARTITION BY d.user_id ORDER BY d.cost_nano_usd) AS cost_nano_usd_rank,',
    '    count(*) OVER (PARTITION BY d.user_id) AS active_days',
    '  FROM daily d WHERE d.day < :baseline_date',
    '), baseline AS (',
    `  SELECT h.user_id, ${median('requests')} AS requests_median, ${median('cost_nano_usd')} AS cost_median,`,
    '    max(h.active_days) AS active_days',
    '  FROM history h GROUP BY h.user_id',
    '), cohort_ranked AS (',
    '  SELECT t.cohort, t.requests, t.cost_nano_usd,',
    '    row_number() OVER (PARTITION BY t.cohort ORDER BY t.requests) AS requests_rank,',
    '    row_number() OVER (PARTITION BY t.cohort ORDER BY t.cost_nano_usd) AS cost_nano_usd_rank,',
    '    count(*) OVER (PARTITION BY t.cohort) AS cohort_users',
    '  FROM today t',
    '), cohorts AS (',
    `  SELECT c.cohort, max(c.cohort_users) AS cohort_users, ${p99('requests')} AS requests_p99, ${p99('cost_nano_usd')} AS cost_p99`,
    '  FROM cohort_ranked c GROUP BY c.cohort',
    ')',
    'SELECT t.user_id, t.cohort, t.requests, t.cost_nano_usd,',
    '  coalesce(b.requests_median, 0) AS requests_median, coalesce(b.cost_median, 0) AS cost_median,',
    '  coalesce(b.active_days, 0) AS baseline_days, c.cohort_users, c.requests_p99, c.cost_p99',
    'FROM today t',
    'LEFT JOIN baseline b ON b.user_id = t.user_id',
    'LEFT JOIN cohorts c ON (c.cohort = t.cohort OR (c.cohort IS NULL AND t.cohort IS NULL))',
    'WHERE (t.requests >= :min_requests AND (t.requests > :factor_requests * coalesce(b.requests_median, 0) OR t.requests > c.requests_p99))',
    '  OR (t.cost_nano_usd >= :min_cost AND (t.cost_nano_usd > :factor_cost * coalesce(b.cost_median, 0) OR t.cost_nano_usd > c.cost_p99))',
    'ORDER BY t.cost_nano_usd DESC, t.requests DESC, t.user_id ASC',
  ].join('\n');
  return bind(sql, values, events.days);
}

/** The UsageEvent columns, in record order, as an export writes them. */
export const EXPORT_COLUMNS = [
  'v',
  'request_id',
  'ts',
  'user_id',
  'properties',
  'provider',
  'model',
  'path',
  'method',
  'status',
  'stream',
  'latency_ms',
  'ttft_ms',
  'prompt_tokens',
  'completion_tokens',
  'cached_prompt_tokens',
  'reasoning_tokens',
  'total_tokens',
  'cost_usd',
  'cost_nano_usd',
  'cost_source',
  'usage_source',
  'error',
  'key_id',
] as const;

/** Where a page of a local export resumes: after this event in (`ts`, `request_id`) order. */
export interface ExportCursor {
  readonly ts: string;
  readonly requestId: string;
}

export interface ExportSqlOptions {
  /** Athena: write `properties` as JSON text (for the CSV result). @default false */
  readonly propertiesAsJson?: boolean;
  /** DuckDB: one page of at most `limit` events after `after`. */
  readonly page?: { readonly after: ExportCursor | null; readonly limit: number };
}

/**
 * The events of an export, each request once, ordered by `ts` then `request_id`.
 * @example exportSql({ from: '2026-11-01', to: '2026-11-01', format: 'csv' }, 'duckdb', 'events', { page: { after: null, limit: 5000 } })
 */
export function exportSql(query: EventExportQuery, dialect: SqlDialect, source: string, options: ExportSqlOptions = {}): HistoryStatement {
  checkSource(source, dialect);
  const window: TimeWindow = { from: query.from, to: query.to, tzOffsetMinutes: query.tzOffsetMinutes ?? 0 };
  checkWindow(window);
  const values: Record<string, string | number> = {};
  const extra: string[] = [];
  if (query.userId !== undefined) {
    checkUserId(query.userId);
    extra.push('user_id = :user_id');
    values.user_id = query.userId;
  }
  const events = eventsSql(source, EXPORT_COLUMNS, window, values, extra);
  const select = EXPORT_COLUMNS.map((column) =>
    column === 'properties' && options.propertiesAsJson ? 'json_format(CAST(e.properties AS JSON)) AS properties' : `e.${column}`,
  );
  let where = 'e.copy = 1';
  let limit = '';
  if (options.page !== undefined) {
    if (dialect !== 'duckdb') throw new Error('Paged exports are for the local store');
    if (options.page.after !== null) {
      where += ' AND (e.ts > :after_ts OR (e.ts = :after_ts_same AND e.request_id > :after_request_id))';
      values.after_ts = options.page.after.ts;
      values.after_ts_same = options.page.after.ts;
      values.after_request_id = options.page.after.requestId;
    }
    limit = '\nLIMIT :page_limit';
    values.page_limit = options.page.limit;
  }
  const sql = [
    `SELECT ${select.join(', ')}`,
    'FROM (',
    `  ${events.sql}`,
    ') e',
    `WHERE ${where}`,
    `ORDER BY e.ts ASC, e.request_id ASC${limit}`,
  ].join('\n');
  return bind(sql, values, events.days);
}
