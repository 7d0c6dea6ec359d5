/**
 * The one SQL builder for history queries over the event log, in the two dialects that run them: DuckDB over the
 * local event files and Athena over the Parquet log in S3. Both read a relation with every UsageEvent column plus
 * `dt` (the `YYYY-MM-DD` partition) and `properties` as a string→string map; `ts` is read as an ISO string.
 *
 * Every value the caller supplies goes in as a positional `?` parameter. The only things spliced into the SQL are
 * constants of this file, the caller's own relation name (checked against a strict identifier pattern) and, on
 * Athena, the row limit as a validated integer.
 *
 * Athena accepts `?` only in WHERE clauses ("Syntax like SELECT ? FROM table is not supported", Athena user guide,
 * "Use parameterized queries"), so a property lookup cannot be `element_at(properties, ?)` in the select list
 * there: the Athena form unnests the map and picks the property's entry in WHERE instead. DuckDB takes parameters
 * anywhere and uses `properties[?]`, which on a MAP returns the value itself (NULL when the key is missing).
 */
import { BadRequestError } from './errors';
import type { UsageQuery } from './ports';

export type SqlDialect = 'duckdb' | 'athena';

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

const DAY_PATTERN = /^\d{4}-\d{2}-\d{2}$/;
const IDENTIFIER = '(?:[A-Za-z_][A-Za-z0-9_]*|"[A-Za-z0-9_-]+")';
const SOURCE_PATTERN = new RegExp(`^${IDENTIFIER}(?:\\.${IDENTIFIER}){0,2}$`);

/** Columns every grouping needs from an event; `properties` is added only when grouping by one (Parquet pruning). */
const EVENT_COLUMNS = [
  'request_id',
  'user_id',
  'status',
  'error',
  'prompt_tokens',
  'completion_tokens',
  'total_tokens',
  'cost_nano_usd',
  'cost_source',
] as const;

/** Same rule as `isErrorEvent` in usage-event.ts, in SQL. */
const IS_ERROR = '(e.status < 200 OR e.status >= 300 OR e.error IS NOT NULL)';

/**
 * Builds the statement answering a {@link UsageQuery}: totals per group over the query's days, each request counted
 * once however many times the log holds it (Firehose delivers at least once).
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
export function usageQuerySql(query: UsageQuery, dialect: SqlDialect, source: string): SqlStatement {
  if (!SOURCE_PATTERN.test(source)) throw new Error(`Invalid source relation for a usage query: ${source}`);
  if (dialect !== 'duckdb' && dialect !== 'athena') throw new Error(`Unknown SQL dialect: ${String(dialect)}`);
  checkQuery(query);

  const params: (string | number)[] = [];
  const property = typeof query.groupBy === 'object' ? query.groupBy.property : null;

  // Innermost: the query's days (partition pruning on Athena), numbered copies of each request.
  const columns: string[] = [...EVENT_COLUMNS];
  if (query.groupBy === 'user') columns.push('user_id AS group_key');
  else if (query.groupBy === 'model') columns.push('model AS group_key');
  else if (dialect === 'duckdb') {
    columns.push('properties[?] AS group_key');
    params.push(property as string);
  } else columns.push('properties');
  columns.push('row_number() OVER (PARTITION BY request_id ORDER BY ts) AS copy');

  let where = 'dt BETWEEN ? AND ?';
  params.push(query.from, query.to);
  if (query.userId !== undefined) {
    where += ' AND user_id = ?';
    params.push(query.userId);
  }

  let groupKey = 'e.group_key';
  let join = '';
  let outerWhere = 'e.copy = 1';
  if (dialect === 'athena' && property !== null) {
    // One row per event: the property's own entry when present, else a placeholder entry under '' (never a
    // property name, which is at least one character) whose value reads as NULL.
    join =
      "\nCROSS JOIN UNNEST(map_concat(MAP(ARRAY[''], ARRAY[CAST(NULL AS varchar)]), coalesce(e.properties, MAP()))) AS p (k, v)";
    outerWhere += " AND (p.k = ? OR (p.k = '' AND NOT contains(map_keys(coalesce(e.properties, MAP())), ?)))";
    params.push(property as string, property as string);
    groupKey = "CASE WHEN p.k = '' THEN NULL ELSE p.v END";
  }

  const cost = 'coalesce(sum(e.cost_nano_usd), 0)';
  const requests = 'count(*)';
  const sortColumn = query.sort === 'cost' ? cost : requests;
  const secondColumn = query.sort === 'cost' ? requests : cost;
  const direction = query.order === 'asc' ? 'ASC' : 'DESC';

  let limit: string;
  if (dialect === 'duckdb') {
    limit = 'LIMIT ?';
    params.push(query.limit);
  } else {
    limit = `LIMIT ${query.limit}`; // Athena takes no parameter here; checkQuery made it a bounded integer.
  }

  const sql = [
    `SELECT ${groupKey} AS "group",`,
    `  ${requests} AS requests,`,
    `  sum(CASE WHEN ${IS_ERROR} THEN 1 ELSE 0 END) AS errors,`,
    '  count(DISTINCT e.user_id) AS users,',
    '  coalesce(sum(e.prompt_tokens), 0) AS prompt_tokens,',
    '  coalesce(sum(e.completion_tokens), 0) AS completion_tokens,',
    '  coalesce(sum(e.total_tokens), 0) AS total_tokens,',
    `  ${cost} AS cost_nano_usd,`,
    "  sum(CASE WHEN e.cost_source = 'unknown_model' THEN 1 ELSE 0 END) AS unpriced_requests",
    'FROM (',
    `  SELECT ${columns.join(', ')}`,
    `  FROM ${source}`,
    `  WHERE ${where}`,
    `) e${join}`,
    `WHERE ${outerWhere}`,
    'GROUP BY 1',
    `ORDER BY ${sortColumn} ${direction}, ${secondColumn} ${direction}, 1 ASC NULLS LAST`,
    limit,
  ].join('\n');
  return { sql, params };
}

function checkQuery(query: UsageQuery): void {
  for (const field of ['from', 'to'] as const) {
    const day = query[field];
    if (typeof day !== 'string' || !DAY_PATTERN.test(day) || Number.isNaN(Date.parse(`${day}T00:00:00Z`))) {
      throw new BadRequestError('invalid_date', `\`${field}\` must be a UTC day, YYYY-MM-DD.`, { param: field });
    }
  }
  if (query.from > query.to) {
    throw new BadRequestError('invalid_range', '`from` must not be after `to`.', { param: 'from' });
  }
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
  if (query.userId !== undefined && typeof query.userId !== 'string') {
    throw new BadRequestError('invalid_user_id', '`user_id` must be a string.', { param: 'user_id' });
  }
  const groupBy: unknown = query.groupBy;
  if (groupBy === 'user' || groupBy === 'model') return;
  const property = typeof groupBy === 'object' && groupBy !== null ? (groupBy as { property?: unknown }).property : undefined;
  if (typeof property !== 'string' || !PROPERTY_NAME_PATTERN.test(property)) {
    throw new BadRequestError(
      'invalid_group_by',
      '`group_by` must be user, model or property:<name>, the name made of letters, digits, _ and - (at most 64).',
      { param: 'group_by' },
    );
  }
}
