/**
 * The history half of the metrics API: usage patterns answered from the event log (DuckDB locally, Athena on
 * AWS) through the {@link HistoryStore} port.
 *
 * | route | answers |
 * | --- | --- |
 * | `GET /metrics/usage` | totals per user, model or property value over a range |
 * | `GET /metrics/users/{userId}/usage` | one user's time series (hour, day or month buckets) |
 * | `GET /metrics/users/{userId}/summary` | one user's totals, activity and rates over a range |
 * | `GET /metrics/distribution` | percentiles and a histogram of cost or requests across users |
 * | `GET /metrics/anomalies` | users far above their own baseline or their cohort's p99 on a day |
 * | `GET /metrics/export` | the events themselves, CSV or NDJSON |
 * | `GET /metrics/queries/{queryId}` | the result of any of these that answered 202 |
 *
 * Every query can outlive the request on Athena: it then answers 202 with a `query_id` that names the query kind,
 * the query's own (fully resolved) parameters and the store's query id, `<kind>.<base64url JSON>.<store id>`. The
 * result endpoint decodes it, validates the parameters again exactly as the original request did, and shapes the
 * rows as the original route would have: a polled answer is identical to a direct one. The id holds nothing
 * secret (only the caller's own parameters); a forged one can only re-shape a result of the same work group,
 * and every shape checks the columns it reads.
 */
import { BadRequestError, NotFoundError, UpstreamError } from './errors';
import {
  ANOMALY_BASELINE_DAYS,
  DISTRIBUTION_PERCENTILES,
  EXPORT_COLUMNS,
  MAX_USAGE_LIMIT,
  addDays,
  anomaliesSql,
  distributionSql,
  userSeriesSql,
  userSummarySql,
  usageQuerySql,
  type DistributionMetric,
  type SeriesInterval,
} from './history-sql';
import { describeError, type Logger } from './log';
import type { MetricsRoute } from './metrics-api';
import type {
  EventExport,
  EventExportQuery,
  ExportFormat,
  HistoryResult,
  HistoryRow,
  HistoryStatement,
  HistoryStore,
  SqlDialect,
  UsageQuery,
} from './ports';
import { QueryParams, dayOf, daysBetween } from './query-params';
import { nanoToUsd, type UsageEvent } from './usage-event';

export interface HistoryRoutesDeps {
  readonly history: HistoryStore;
  readonly log: Logger;
  /** @default Date.now */
  readonly now?: () => number;
  /** How long a query may run before the API answers 202 with a query id. @default 20000 */
  readonly queryWaitMs?: number;
}

/** Longest range any history query accepts, in days. */
export const MAX_RANGE_DAYS = 366;
/** Longest range of an hourly series, in days (744 buckets). */
export const MAX_HOURLY_RANGE_DAYS = 31;
/** Longest range of one export, in days. */
export const MAX_EXPORT_RANGE_DAYS = 31;

const PROPERTY_GROUP = /^property:([A-Za-z0-9_-]{1,64})$/;
const PROPERTY_NAME = /^[A-Za-z0-9_-]{1,64}$/;
const TZ = /^([+-])(\d{2}):(\d{2})$/;
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

/** A parsed request of one query kind: what to run, and the resolved parameters that reproduce it. */
interface Parsed<Spec> {
  readonly spec: Spec;
  /** Every parameter with its default filled in, so a later re-parse ignores the clock. */
  readonly canonical: Readonly<Record<string, string>>;
}

interface QueryKind<Spec> {
  parse(q: QueryParams, userId: string | undefined, today: string): Parsed<Spec>;
  statement(spec: Spec, dialect: SqlDialect, source: string): HistoryStatement;
  body(spec: Spec, rows: readonly HistoryRow[]): Record<string, unknown>;
}

/**
 * Creates the history routes.
 * @example createMetricsApi({ counters, metricsKeys, log, routes: historyRoutes({ history, log }) })
 */
export function historyRoutes(deps: HistoryRoutesDeps): MetricsRoute[] {
  const now = deps.now ?? Date.now;
  const waitMs = deps.queryWaitMs ?? 20_000;
  const { history } = deps;

  async function run<Spec>(name: KindName, url: URL, userId?: string): Promise<Response> {
    const kind = KINDS[name] as QueryKind<Spec>;
    const q = QueryParams.of(url);
    const parsed = kind.parse(q, userId, dayOf(now()));
    q.rejectUnknown();
    const statement = kind.statement(parsed.spec, history.dialect, history.source);
    const result = await history.execute(statement, waitMs);
    return answer(kind, parsed, result, (id) => encodeQueryId(name, parsed.canonical, userId, id));
  }

  function answer<Spec>(
    kind: QueryKind<Spec>,
    parsed: Parsed<Spec>,
    result: HistoryResult<HistoryRow>,
    queryId: (storeId: string) => string,
  ): Response {
    if (result.state === 'running') return running(queryId(result.queryId));
    return jsonResponse({ state: 'done', ...kind.body(parsed.spec, result.rows) });
  }

  async function exportEvents(url: URL): Promise<Response> {
    const q = QueryParams.of(url);
    const parsed = parseExport(q, dayOf(now()));
    q.rejectUnknown();
    const result = await history.exportEvents(parsed.spec, waitMs);
    return exportResponse(parsed, result);
  }

  function exportResponse(parsed: Parsed<EventExportQuery>, result: EventExport): Response {
    if (result.state === 'running') return running(encodeQueryId('export', parsed.canonical, undefined, result.queryId));
    if (result.state === 'done') {
      return jsonResponse({
        state: 'done',
        format: result.format,
        compression: result.compression,
        files: result.files.map((file) => ({ url: file.url, bytes: file.bytes })),
        expires_at: result.expiresAt,
      });
    }
    return streamEvents(parsed.spec, result.events, deps.log);
  }

  async function queryResult(rawId: string): Promise<Response> {
    const decoded = decodeQueryId(rawId);
    const params = new URLSearchParams(decoded.params);
    const q = new QueryParams(params);
    if (decoded.kind === 'export') {
      const parsed = parseExport(q, dayOf(now()));
      return exportResponse(parsed, await history.exportResult(decoded.storeId));
    }
    const kind = KINDS[decoded.kind] as QueryKind<unknown>;
    const parsed = kind.parse(q, decoded.userId, dayOf(now()));
    return answer(kind, parsed, await history.queryResult(decoded.storeId), () => rawId);
  }

  return [
    { method: 'GET', path: ['usage'], handle: ({ url }) => run('usage', url) },
    { method: 'GET', path: ['users', ':userId', 'usage'], handle: ({ url, params }) => run('user_usage', url, params.userId!) },
    { method: 'GET', path: ['users', ':userId', 'summary'], handle: ({ url, params }) => run('user_summary', url, params.userId!) },
    { method: 'GET', path: ['distribution'], handle: ({ url }) => run('distribution', url) },
    { method: 'GET', path: ['anomalies'], handle: ({ url }) => run('anomalies', url) },
    { method: 'GET', path: ['export'], handle: ({ url }) => exportEvents(url) },
    { method: 'GET', path: ['queries', ':queryId'], handle: ({ params }) => queryResult(params.queryId!) },
  ];
}

// ---------------------------------------------------------------------------------------------------------------
// Parameters

/**
 * `tz` as minutes east of UTC. In a query string `+` means a space, so `tz=+05:30` arrives as " 05:30": a leading
 * space is read as the plus it was.
 */
function tzParam(q: QueryParams): { minutes: number; text: string } {
  const raw = q.string('tz');
  if (raw === undefined || raw === 'Z' || raw === 'UTC') return { minutes: 0, text: '+00:00' };
  const text = raw.startsWith(' ') ? `+${raw.slice(1)}` : raw;
  const match = TZ.exec(text);
  const hours = Number(match?.[2]);
  const minutes = Number(match?.[3]);
  if (!match || minutes >= 60 || hours * 60 + minutes > 14 * 60) {
    throw new BadRequestError('invalid_parameter', '"tz" must be an offset from UTC as +HH:MM or -HH:MM, at most 14:00.', {
      param: 'tz',
    });
  }
  const total = (hours * 60 + minutes) * (match[1] === '-' ? -1 : 1);
  return { minutes: total, text };
}

function rangeParams(
  q: QueryParams,
  today: string,
  defaultFrom: (to: string) => string,
  maxDays: number,
): { from: string; to: string } {
  const to = q.day('to', today);
  const from = q.day('from', defaultFrom(to));
  if (from > to) throw new BadRequestError('invalid_range', '"from" must not be after "to".', { param: 'from' });
  if (daysBetween(from, to) > maxDays) {
    throw new BadRequestError('invalid_range', `The range may span at most ${maxDays} days.`, { param: 'to' });
  }
  return { from, to };
}

function checkUserId(userId: string, param: string): void {
  if (userId.length > 256 || CONTROL.test(userId)) {
    throw new BadRequestError('invalid_parameter', `"${param}" must be at most 256 characters without control characters.`, {
      param,
    });
  }
}

function groupByParam<T extends string>(q: QueryParams, allowed: readonly T[], fallback: T | undefined): T | { property: string } | undefined {
  const raw = q.string('group_by');
  if (raw === undefined) return fallback;
  if ((allowed as readonly string[]).includes(raw)) return raw as T;
  const match = PROPERTY_GROUP.exec(raw);
  if (!match) {
    throw new BadRequestError(
      'invalid_parameter',
      `"group_by" must be ${[...allowed, 'property:<Name>'].join(', ')} (Name: A-Z, a-z, 0-9, _ or -, at most 64).`,
      { param: 'group_by' },
    );
  }
  return { property: match[1]!.toLowerCase() };
}

function groupByText(groupBy: string | { property: string } | undefined): string | null {
  if (groupBy === undefined) return null;
  return typeof groupBy === 'string' ? groupBy : `property:${groupBy.property}`;
}

/** A non-negative decimal number parameter. */
function decimalParam(q: QueryParams, name: string, fallback: number, min: number, max: number): number {
  const raw = q.string(name);
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!/^\d{1,12}(\.\d{1,9})?$/.test(raw) || value < min || value > max) {
    throw new BadRequestError('invalid_parameter', `"${name}" must be a number from ${min} to ${max}.`, { param: name });
  }
  return value;
}

const firstOfMonth = (to: string) => `${to.slice(0, 7)}-01`;
const thirtyDays = (to: string) => addDays(to, -29);

// ---------------------------------------------------------------------------------------------------------------
// Result rows

/** Reads a numeric column; SQL NULL (a SUM over nothing) reads as `fallback`. */
function num(row: HistoryRow, column: string, fallback: number | null = 0): number {
  const value = cell(row, column);
  if (value === null) {
    if (fallback === null) throw invalidResult(`a NULL ${column}`);
    return fallback;
  }
  const n = typeof value === 'number' ? value : Number(value);
  if (!Number.isFinite(n)) throw invalidResult(`a non-numeric ${column}`);
  return n;
}

function numOrNull(row: HistoryRow, column: string): number | null {
  return cell(row, column) === null ? null : num(row, column);
}

function text(row: HistoryRow, column: string): string | null {
  const value = cell(row, column);
  return value === null ? null : String(value);
}

function cell(row: HistoryRow, column: string): string | number | null {
  if (!(column in row)) throw invalidResult(`no ${column} column`);
  return row[column] ?? null;
}

function invalidResult(what: string): UpstreamError {
  return new UpstreamError('history_result_invalid', `The history result has ${what}.`);
}

// ---------------------------------------------------------------------------------------------------------------
// Query kinds

interface UsageSpec {
  readonly query: UsageQuery;
  readonly groupByText: string;
}

const usageKind: QueryKind<UsageSpec> = {
  parse(q, _userId, today) {
    const { from, to } = rangeParams(q, today, firstOfMonth, MAX_RANGE_DAYS);
    const groupBy = groupByParam(q, ['user', 'model'] as const, 'user')!;
    const sort = q.oneOf('sort', ['cost', 'requests'] as const, 'cost');
    const order = q.oneOf('order', ['desc', 'asc'] as const, 'desc');
    const limit = q.integer('limit', 100, 1, MAX_USAGE_LIMIT);
    const userId = q.string('user_id');
    const tz = tzParam(q);
    if (userId !== undefined) checkUserId(userId, 'user_id');
    const query: UsageQuery = {
      from,
      to,
      groupBy,
      sort,
      order,
      limit,
      tzOffsetMinutes: tz.minutes,
      ...(userId === undefined ? {} : { userId }),
    };
    const text = groupByText(groupBy)!;
    const canonical: Record<string, string> = { from, to, group_by: text, sort, order, limit: String(limit), tz: tz.text };
    if (userId !== undefined) canonical.user_id = userId;
    return { spec: { query, groupByText: text }, canonical };
  },
  statement: (spec, dialect, source) => usageQuerySql(spec.query, dialect, source),
  body(spec, rows) {
    return {
      from: spec.query.from,
      to: spec.query.to,
      group_by: spec.groupByText,
      groups: rows.map((row) => ({
        group: text(row, 'group'),
        requests: num(row, 'requests'),
        errors: num(row, 'errors'),
        users: num(row, 'users'),
        prompt_tokens: num(row, 'prompt_tokens'),
        completion_tokens: num(row, 'completion_tokens'),
        total_tokens: num(row, 'total_tokens'),
        cost_usd: nanoToUsd(num(row, 'cost_nano_usd')),
        unpriced_requests: num(row, 'unpriced_requests'),
      })),
    };
  },
};

interface UserUsageSpec {
  readonly userId: string;
  readonly from: string;
  readonly to: string;
  readonly tz: { minutes: number; text: string };
  readonly interval: SeriesInterval;
  readonly groupBy: 'model' | { property: string } | undefined;
}

const userUsageKind: QueryKind<UserUsageSpec> = {
  parse(q, userId, today) {
    const id = requireUser(userId);
    const interval = q.oneOf<SeriesInterval>('interval', ['hour', 'day', 'month'], 'day');
    const { from, to } = rangeParams(q, today, thirtyDays, interval === 'hour' ? MAX_HOURLY_RANGE_DAYS : MAX_RANGE_DAYS);
    const groupBy = groupByParam(q, ['model'] as const, undefined);
    const tz = tzParam(q);
    const canonical: Record<string, string> = { from, to, interval, tz: tz.text };
    if (groupBy !== undefined) canonical.group_by = groupByText(groupBy)!;
    return { spec: { userId: id, from, to, tz, interval, groupBy }, canonical };
  },
  statement: (spec, dialect, source) =>
    userSeriesSql(
      {
        userId: spec.userId,
        from: spec.from,
        to: spec.to,
        tzOffsetMinutes: spec.tz.minutes,
        interval: spec.interval,
        ...(spec.groupBy === undefined ? {} : { groupBy: spec.groupBy }),
      },
      dialect,
      source,
    ),
  body(spec, rows) {
    const grouped = spec.groupBy !== undefined;
    return {
      user_id: spec.userId,
      from: spec.from,
      to: spec.to,
      tz: spec.tz.text,
      interval: spec.interval,
      group_by: groupByText(spec.groupBy),
      series: rows.map((row) => ({
        bucket: text(row, 'bucket'),
        ...(grouped ? { group: text(row, 'group') } : {}),
        requests: num(row, 'requests'),
        errors: num(row, 'errors'),
        prompt_tokens: num(row, 'prompt_tokens'),
        completion_tokens: num(row, 'completion_tokens'),
        total_tokens: num(row, 'total_tokens'),
        cost_usd: nanoToUsd(num(row, 'cost_nano_usd')),
        unpriced_requests: num(row, 'unpriced_requests'),
        p50_latency_ms: numOrNull(row, 'p50_latency_ms'),
        p95_latency_ms: numOrNull(row, 'p95_latency_ms'),
      })),
    };
  },
};

interface UserSummarySpec {
  readonly userId: string;
  readonly from: string;
  readonly to: string;
  readonly tz: { minutes: number; text: string };
}

const userSummaryKind: QueryKind<UserSummarySpec> = {
  parse(q, userId, today) {
    const id = requireUser(userId);
    const { from, to } = rangeParams(q, today, thirtyDays, MAX_RANGE_DAYS);
    const tz = tzParam(q);
    return { spec: { userId: id, from, to, tz }, canonical: { from, to, tz: tz.text } };
  },
  statement: (spec, dialect, source) =>
    userSummarySql({ userId: spec.userId, from: spec.from, to: spec.to, tzOffsetMinutes: spec.tz.minutes }, dialect, source),
  body(spec, rows) {
    const row: HistoryRow = rows[0] ?? {
      requests: 0,
      errors: 0,
      rate_limited: 0,
      prompt_tokens: 0,
      completion_tokens: 0,
      total_tokens: 0,
      cost_nano_usd: 0,
      unpriced_requests: 0,
      active_days: 0,
      first_active: null,
      last_active: null,
    };
    const requests = num(row, 'requests');
    const activeDays = num(row, 'active_days');
    const totalTokens = num(row, 'total_tokens');
    return {
      user_id: spec.userId,
      from: spec.from,
      to: spec.to,
      tz: spec.tz.text,
      total_requests: requests,
      total_cost: nanoToUsd(num(row, 'cost_nano_usd')),
      total_prompt_tokens: num(row, 'prompt_tokens'),
      total_completion_tokens: num(row, 'completion_tokens'),
      total_tokens: totalTokens,
      unpriced_requests: num(row, 'unpriced_requests'),
      active_for: activeDays,
      first_active: text(row, 'first_active'),
      last_active: text(row, 'last_active'),
      average_requests_per_day_active: activeDays === 0 ? 0 : requests / activeDays,
      average_tokens_per_request: requests === 0 ? 0 : totalTokens / requests,
      rate_limited_count: num(row, 'rate_limited'),
      error_count: num(row, 'errors'),
      error_rate: requests === 0 ? 0 : num(row, 'errors') / requests,
    };
  },
};

interface DistributionSpec {
  readonly from: string;
  readonly to: string;
  readonly tz: { minutes: number; text: string };
  readonly metric: DistributionMetric;
}

/** The next bound of the 1-2-5 series: 0 → 1, 1 → 2, 2 → 5, 5 → 10, … */
function nextBinBound(lower: number): number {
  if (lower <= 0) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(lower) + 1e-9);
  const lead = Math.round(lower / magnitude);
  return (lead === 1 ? 2 : lead === 2 ? 5 : 10) * magnitude;
}

const distributionKind: QueryKind<DistributionSpec> = {
  parse(q, _userId, today) {
    const { from, to } = rangeParams(q, today, firstOfMonth, MAX_RANGE_DAYS);
    const metric = q.oneOf<DistributionMetric>('metric', ['cost', 'requests'], 'cost');
    const tz = tzParam(q);
    return { spec: { from, to, tz, metric }, canonical: { from, to, metric, tz: tz.text } };
  },
  statement: (spec, dialect, source) =>
    distributionSql({ from: spec.from, to: spec.to, tzOffsetMinutes: spec.tz.minutes, metric: spec.metric }, dialect, source),
  body(spec, rows) {
    // Cost is summed in exact nano-dollars and shown in USD; requests are shown as they are.
    const unit = spec.metric === 'cost' ? nanoToUsd : (n: number) => n;
    const first = rows[0];
    const stat = (column: string) => (first === undefined ? null : unit(num(first, column)));
    const percentiles = Object.fromEntries(DISTRIBUTION_PERCENTILES.map((p) => [`p${p}`, stat(`p${p}`)]));
    return {
      from: spec.from,
      to: spec.to,
      tz: spec.tz.text,
      metric: spec.metric,
      unit: spec.metric === 'cost' ? 'usd' : 'requests',
      users: first === undefined ? 0 : num(first, 'users'),
      total: first === undefined ? 0 : unit(num(first, 'total')),
      ...percentiles,
      max: stat('max_value'),
      histogram: rows.map((row) => {
        const lower = num(row, 'bin_lower');
        return { lower: unit(lower), upper: unit(nextBinBound(lower)), users: num(row, 'bin_users') };
      }),
    };
  },
};

interface AnomalySpec {
  readonly date: string;
  readonly tz: { minutes: number; text: string };
  readonly factor: number;
  readonly minRequests: number;
  readonly minCostUsd: number;
  readonly cohort: string;
}

const anomaliesKind: QueryKind<AnomalySpec> = {
  parse(q, _userId, today) {
    const date = q.day('date', today);
    const tz = tzParam(q);
    const factor = decimalParam(q, 'factor', 3, 1, 1000);
    const minRequests = q.integer('min_requests', 100, 0, 1_000_000_000);
    const minCostUsd = decimalParam(q, 'min_cost', 1, 0, 1_000_000);
    const cohortRaw = q.string('cohort') ?? 'plan';
    if (!PROPERTY_NAME.test(cohortRaw)) {
      throw new BadRequestError('invalid_parameter', '"cohort" must be a property name: A-Z, a-z, 0-9, _ or -, at most 64.', {
        param: 'cohort',
      });
    }
    const cohort = cohortRaw.toLowerCase();
    return {
      spec: { date, tz, factor, minRequests, minCostUsd, cohort },
      canonical: {
        date,
        tz: tz.text,
        factor: String(factor),
        min_requests: String(minRequests),
        min_cost: String(minCostUsd),
        cohort,
      },
    };
  },
  statement: (spec, dialect, source) =>
    anomaliesSql(
      {
        date: spec.date,
        tzOffsetMinutes: spec.tz.minutes,
        factor: spec.factor,
        minRequests: spec.minRequests,
        minCostNanoUsd: Math.round(spec.minCostUsd * 1e9),
        cohortProperty: spec.cohort,
      },
      dialect,
      source,
    ),
  body(spec, rows) {
    const minCostNano = Math.round(spec.minCostUsd * 1e9);
    const anomalies = rows.map((row) => {
      const requests = num(row, 'requests');
      const cost = num(row, 'cost_nano_usd');
      const requestsMedian = num(row, 'requests_median');
      const costMedian = num(row, 'cost_median');
      const requestsP99 = numOrNull(row, 'requests_p99');
      const costP99 = numOrNull(row, 'cost_p99');
      // The same rules the statement's WHERE applied, here to name the ones that fired.
      const rules: Record<string, unknown>[] = [];
      const check = (metric: 'requests' | 'cost', value: number, floor: number, median: number, p99: number | null, show: (n: number) => number) => {
        if (value < floor) return;
        if (value > spec.factor * median) {
          rules.push({ rule: 'baseline', metric, value: show(value), threshold: show(spec.factor * median), baseline_median: show(median) });
        }
        if (p99 !== null && value > p99) rules.push({ rule: 'cohort_p99', metric, value: show(value), threshold: show(p99) });
      };
      check('requests', requests, spec.minRequests, requestsMedian, requestsP99, (n) => n);
      check('cost', cost, minCostNano, costMedian, costP99, nanoToUsd);
      return {
        user_id: text(row, 'user_id'),
        cohort: text(row, 'cohort'),
        requests,
        cost_usd: nanoToUsd(cost),
        baseline: {
          days: ANOMALY_BASELINE_DAYS,
          active_days: num(row, 'baseline_days'),
          requests_median: requestsMedian,
          cost_median_usd: nanoToUsd(costMedian),
        },
        cohort_stats: {
          users: num(row, 'cohort_users'),
          requests_p99: requestsP99,
          cost_p99_usd: costP99 === null ? null : nanoToUsd(costP99),
        },
        rules,
      };
    });
    return {
      date: spec.date,
      tz: spec.tz.text,
      cohort_property: spec.cohort,
      factor: spec.factor,
      min_requests: spec.minRequests,
      min_cost: spec.minCostUsd,
      baseline_days: ANOMALY_BASELINE_DAYS,
      anomalies,
    };
  },
};

function requireUser(userId: string | undefined): string {
  if (userId === undefined) throw new NotFoundError('unknown_route', 'This route needs a user id.');
  checkUserId(userId, 'userId');
  return userId;
}

function parseExport(q: QueryParams, today: string): Parsed<EventExportQuery> {
  const { from, to } = rangeParams(q, today, (day) => day, MAX_EXPORT_RANGE_DAYS);
  const userId = q.string('user_id');
  if (userId !== undefined) checkUserId(userId, 'user_id');
  const format = q.oneOf<ExportFormat>('format', ['csv', 'ndjson'], 'ndjson');
  const tz = tzParam(q);
  const spec: EventExportQuery = { from, to, format, tzOffsetMinutes: tz.minutes, ...(userId === undefined ? {} : { userId }) };
  const canonical: Record<string, string> = { from, to, format, tz: tz.text };
  if (userId !== undefined) canonical.user_id = userId;
  return { spec, canonical };
}

const KINDS = {
  usage: usageKind,
  user_usage: userUsageKind,
  user_summary: userSummaryKind,
  distribution: distributionKind,
  anomalies: anomaliesKind,
};
type KindName = keyof typeof KINDS;

// ---------------------------------------------------------------------------------------------------------------
// Query ids

function encodeQueryId(kind: KindName | 'export', params: Readonly<Record<string, string>>, userId: string | undefined, storeId: string): string {
  const meta = JSON.stringify(userId === undefined ? { p: params } : { p: params, u: userId });
  return `${kind}.${Buffer.from(meta, 'utf8').toString('base64url')}.${storeId}`;
}

interface DecodedQueryId {
  readonly kind: KindName | 'export';
  readonly params: Record<string, string>;
  readonly userId: string | undefined;
  readonly storeId: string;
}

function decodeQueryId(id: string): DecodedQueryId {
  const invalid = () =>
    new BadRequestError('invalid_parameter', 'query_id must be the query_id of a 202 answer.', { param: 'query_id' });
  const parts = id.split('.');
  if (parts.length !== 3 || id.length > 4096) throw invalid();
  const [kind, meta, storeId] = parts as [string, string, string];
  if (!(kind in KINDS) && kind !== 'export') throw invalid();
  let decoded: unknown;
  try {
    decoded = JSON.parse(Buffer.from(meta, 'base64url').toString('utf8'));
  } catch {
    throw invalid();
  }
  const { p, u } = (decoded ?? {}) as { p?: unknown; u?: unknown };
  if (typeof p !== 'object' || p === null || Array.isArray(p) || (u !== undefined && typeof u !== 'string')) throw invalid();
  if ((kind === 'user_usage' || kind === 'user_summary') !== (u !== undefined)) throw invalid();
  const params: Record<string, string> = {};
  for (const [key, value] of Object.entries(p)) {
    if (typeof value !== 'string') throw invalid();
    params[key] = value;
  }
  return { kind: kind as DecodedQueryId['kind'], params, userId: u as string | undefined, storeId };
}

// ---------------------------------------------------------------------------------------------------------------
// Responses

function jsonResponse(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' },
  });
}

function running(queryId: string): Response {
  return jsonResponse({ state: 'running', query_id: queryId, result_url: `/metrics/queries/${queryId}` }, 202);
}

/** Events per chunk of a streamed export: big enough to amortise the stream's overhead, small enough to stay flat. */
const EVENTS_PER_CHUNK = 500;

/**
 * Streams events as CSV (a header row, then one row per event, RFC 4180 quoting, `properties` as JSON text) or
 * NDJSON (one event object per line), pulling from the store only as fast as the client reads.
 */
function streamEvents(query: EventExportQuery, events: AsyncIterable<UsageEvent>, log: Logger): Response {
  const iterator = events[Symbol.asyncIterator]();
  const encoder = new TextEncoder();
  let header = query.format === 'csv' ? `${EXPORT_COLUMNS.join(',')}\r\n` : '';
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      let chunk = header;
      header = '';
      try {
        for (let i = 0; i < EVENTS_PER_CHUNK; i++) {
          const next = await iterator.next();
          if (next.done) {
            if (chunk !== '') controller.enqueue(encoder.encode(chunk));
            controller.close();
            return;
          }
          chunk += query.format === 'csv' ? csvLine(next.value) : `${JSON.stringify(next.value)}\n`;
        }
      } catch (error) {
        log.error('export_failed', { error: describeError(error) });
        controller.error(error);
        return;
      }
      controller.enqueue(encoder.encode(chunk));
    },
    async cancel() {
      await iterator.return?.();
    },
  });
  const extension = query.format === 'csv' ? 'csv' : 'ndjson';
  return new Response(body, {
    status: 200,
    headers: {
      'content-type': query.format === 'csv' ? 'text/csv; charset=utf-8' : 'application/x-ndjson; charset=utf-8',
      'content-disposition': `attachment; filename="usage-events-${query.from}-${query.to}.${extension}"`,
      'cache-control': 'no-store',
    },
  });
}

function csvLine(event: UsageEvent): string {
  const record = event as unknown as Record<string, unknown>;
  return `${EXPORT_COLUMNS.map((column) => csvField(column === 'properties' ? JSON.stringify(record[column] ?? {}) : record[column])).join(',')}\r\n`;
}

function csvField(value: unknown): string {
  if (value === null || value === undefined) return '';
  const s = String(value);
  return /[",\r\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
}
