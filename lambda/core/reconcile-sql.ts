/**
 * The statement behind reconciliation: every user's totals per UTC day of a range, recomputed from the event log,
 * each request counted once. It reads the same relation as the history queries (every UsageEvent column plus the
 * `dt` partition) and follows their rules (see history-sql.ts): values only as `?` parameters in WHERE (Athena
 * takes them nowhere else), copies of a request numbered by `row_number()` and only the first kept.
 *
 * The counted quantities are exactly those the counter stores add per event (`incrementsOf` on DynamoDB, the
 * staged rollup in DuckDB): a request, an error when `isErrorEvent`, the five token counts, the priced cost in
 * nano-dollars, an unpriced request when `cost_source = 'unknown_model'`, a rate-limited request when the gateway
 * refused it with its own 429.
 */
import { BadRequestError } from './errors';
import type { HistoryStatement, SqlDialect } from './ports';
import { GATEWAY_RATE_LIMITED_ERROR } from './usage-event';

const DAY_PATTERN = /^\d{4}-\d{2}-\d{2}$/;
const IDENTIFIER = '(?:[A-Za-z_][A-Za-z0-9_]*|"[A-Za-z0-9_-]+")';
const SOURCE_PATTERN = new RegExp(`^${IDENTIFIER}(?:\\.${IDENTIFIER}){0,2}$`);

/** Most days one reconciliation covers: a year, as for history queries. */
export const MAX_RECONCILE_DAYS = 366;

/** The numbers of one user's day, as the counter stores keep them. */
export const DAY_TOTALS_NUMBERS = [
  'requests',
  'errors',
  'prompt_tokens',
  'completion_tokens',
  'cached_prompt_tokens',
  'reasoning_tokens',
  'total_tokens',
  'cost_nano_usd',
  'unpriced_requests',
  'rate_limited',
] as const;

export type DayTotalsNumber = (typeof DAY_TOTALS_NUMBERS)[number];

/** One row of {@link dayTotalsSql}. */
export type DayTotalsRow = Readonly<Record<DayTotalsNumber, number>> & {
  readonly user_id: string | null;
  /** `YYYY-MM-DD`, UTC. */
  readonly day: string;
  /** Earliest and latest `ts` of the user's requests that day (ISO-8601 UTC). */
  readonly first_active: string;
  readonly last_active: string;
};

/** Checks a reconcile range: two days, `from <= to`, at most {@link MAX_RECONCILE_DAYS} days. */
export function checkReconcileRange(from: string, to: string): void {
  for (const [name, day] of [['from', from], ['to', to]] as const) {
    if (!DAY_PATTERN.test(day) || Number.isNaN(Date.parse(`${day}T00:00:00Z`))) {
      throw new BadRequestError('invalid_date', `\`${name}\` must be a day, YYYY-MM-DD; got ${JSON.stringify(day)}.`, { param: name });
    }
  }
  if (from > to) throw new BadRequestError('invalid_range', '`from` must not be after `to`.', { param: 'from' });
  const days = (Date.parse(`${to}T00:00:00Z`) - Date.parse(`${from}T00:00:00Z`)) / 86_400_000 + 1;
  if (days > MAX_RECONCILE_DAYS) {
    throw new BadRequestError('invalid_range', `A reconciliation covers at most ${MAX_RECONCILE_DAYS} days.`, { param: 'to' });
  }
}

/**
 * Per user and UTC day of `from`..`to`: the totals of the distinct requests in the log. Columns: `user_id`, `day`,
 * the {@link DAY_TOTALS_NUMBERS}, `first_active`, `last_active`; ordered by day, then user.
 * @example dayTotalsSql({ from: '2026-11-01', to: '2026-11-30' }, 'athena', '"usage_db"."usage_events"')
 */
export function dayTotalsSql(range: { readonly from: string; readonly to: string }, dialect: SqlDialect, source: string): HistoryStatement {
  if (!SOURCE_PATTERN.test(source)) throw new Error(`Invalid source relation: ${source}`);
  if (dialect !== 'duckdb' && dialect !== 'athena') throw new Error(`Unknown SQL dialect: ${String(dialect)}`);
  checkReconcileRange(range.from, range.to);
  const isError = '(e.status < 200 OR e.status >= 300 OR e.error IS NOT NULL)';
  const isRateLimited = `(e.status = 429 AND e.error = '${GATEWAY_RATE_LIMITED_ERROR}')`;
  const count = (condition: string) => `sum(CASE WHEN ${condition} THEN 1 ELSE 0 END)`;
  const sql = [
    'SELECT e.user_id AS user_id, e.dt AS day,',
    '  count(*) AS requests,',
    `  ${count(isError)} AS errors,`,
    ...['prompt_tokens', 'completion_tokens', 'cached_prompt_tokens', 'reasoning_tokens', 'total_tokens', 'cost_nano_usd'].map(
      (column) => `  coalesce(sum(e.${column}), 0) AS ${column},`,
    ),
    `  ${count("e.cost_source = 'unknown_model'")} AS unpriced_requests,`,
    `  ${count(isRateLimited)} AS rate_limited,`,
    '  min(e.ts) AS first_active,',
    '  max(e.ts) AS last_active',
    'FROM (',
    '  SELECT request_id, ts, dt, user_id, status, error, prompt_tokens, completion_tokens, cached_prompt_tokens,',
    '    reasoning_tokens, total_tokens, cost_nano_usd, cost_source,',
    '    row_number() OVER (PARTITION BY request_id ORDER BY ts) AS copy',
    `  FROM ${source}`,
    '  WHERE dt BETWEEN ? AND ?',
    ') e',
    'WHERE e.copy = 1',
    'GROUP BY e.user_id, e.dt',
    'ORDER BY e.dt, e.user_id',
  ].join('\n');
  return { sql, params: [range.from, range.to], days: { from: range.from, to: range.to } };
}
