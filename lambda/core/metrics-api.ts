/**
 * The metrics API under `/metrics`: the router, auth and error handling, and the live per-user totals from the
 * CounterStore. Range queries over the event log are history routes (`history-routes.ts`) handed in as
 * `deps.routes`. The same code serves locally and on AWS.
 */
import { BadRequestError, GatewayError, MethodNotAllowedError, NotFoundError, UnauthorizedError, errorResponse } from './errors';
import { PATH_PREFIX_HEADER, type FetchHandler } from './handler';
import { bearerToken } from './keys';
import { MAX_USER_ID_LENGTH } from './identity';
import { describeError, type Logger } from './log';
import type { CounterStore, KeyStore, ModelTotals, Period, UsageTotals, UserSort, UserTotals } from './ports';
import { QueryParams, dayOf } from './query-params';
import { nanoToUsd } from './usage-event';

export interface MetricsDeps {
  readonly counters: CounterStore;
  readonly metricsKeys: KeyStore;
  readonly log: Logger;
  readonly now?: () => number;
  /** Routes of other features (history analysis, limits), served with the same auth and error handling. */
  readonly routes?: readonly MetricsRoute[];
  /** Maps a user id in a path (`:userId`) to its stored form (pseudonymised ids). @default the id itself */
  readonly storedUserId?: (userId: string) => string;
}

export { MAX_RANGE_DAYS } from './history-routes';
export { MAX_USAGE_LIMIT } from './history-sql';
export const MAX_USERS_LIMIT = 1000;

/** Totals as the API shows them: cost in USD. */
export function apiTotals(t: UsageTotals) {
  return {
    requests: t.requests,
    errors: t.errors,
    prompt_tokens: t.prompt_tokens,
    completion_tokens: t.completion_tokens,
    cached_prompt_tokens: t.cached_prompt_tokens,
    reasoning_tokens: t.reasoning_tokens,
    total_tokens: t.total_tokens,
    cost_usd: nanoToUsd(t.cost_nano_usd),
    unpriced_requests: t.unpriced_requests,
    rate_limited: t.rate_limited,
    first_active: t.first_active,
    last_active: t.last_active,
  };
}

function apiUser(u: UserTotals) {
  return { user_id: u.user_id, ...apiTotals(u) };
}

function apiModel(m: ModelTotals) {
  return {
    model: m.model,
    requests: m.requests,
    total_tokens: m.total_tokens,
    cost_usd: nanoToUsd(m.cost_nano_usd),
    unpriced_requests: m.unpriced_requests,
  };
}

const EMPTY_TOTALS = (at: null) => ({
  requests: 0,
  errors: 0,
  prompt_tokens: 0,
  completion_tokens: 0,
  cached_prompt_tokens: 0,
  reasoning_tokens: 0,
  total_tokens: 0,
  cost_usd: 0,
  unpriced_requests: 0,
  rate_limited: 0,
  first_active: at,
  last_active: at,
});

/**
 * Creates the metrics API handler.
 * @example const metrics = createMetricsApi({ counters, metricsKeys, log });
 *          await metrics(new Request('http://gw/metrics/users?period=month'), ctx);
 */
export function createMetricsApi(deps: MetricsDeps): FetchHandler {
  const now = deps.now ?? Date.now;

  async function authorize(request: Request): Promise<void> {
    if (!deps.metricsKeys.enabled) return;
    const token = bearerToken(request.headers.get('authorization'));
    if (token === null) {
      throw new UnauthorizedError('missing_metrics_key', 'Send the metrics key as "Authorization: Bearer <key>".', {
        param: 'Authorization',
      });
    }
    if ((await deps.metricsKeys.verify(token)) === null) {
      throw new UnauthorizedError('invalid_metrics_key', 'The metrics key is not valid.', { param: 'Authorization' });
    }
  }

  async function listUsers(url: URL): Promise<Response> {
    const q = QueryParams.of(url);
    const period = q.oneOf<Period>('period', ['day', 'month', 'all'], 'month');
    const date = q.day('date', dayOf(now()));
    const sort = q.oneOf<UserSort>('sort', ['cost', 'requests', 'tokens', 'last_active'], 'cost');
    const order = q.oneOf('order', ['desc', 'asc'] as const, 'desc');
    const limit = q.integer('limit', 50, 1, MAX_USERS_LIMIT);
    const cursor = q.string('cursor');
    q.rejectUnknown();
    const periodKey = period === 'day' ? date : period === 'month' ? date.slice(0, 7) : 'all';
    const page = await deps.counters.listUsers({ period, periodKey, sort, order, limit, cursor });
    return json({
      period,
      period_key: periodKey,
      users: page.users.map(apiUser),
      next_cursor: page.nextCursor,
    });
  }

  async function getUser(url: URL, userId: string): Promise<Response> {
    const q = QueryParams.of(url);
    const date = q.day('date', dayOf(now()));
    q.rejectUnknown();
    const detail = await deps.counters.getUser(userId, date, date.slice(0, 7));
    if (detail === null) throw new NotFoundError('unknown_user', `No usage recorded for user "${userId.slice(0, 256)}".`, { param: 'userId' });
    return json({
      user_id: detail.user_id,
      first_active: detail.all.first_active,
      last_active: detail.all.last_active,
      date,
      today: detail.day === null ? EMPTY_TOTALS(null) : apiTotals(detail.day),
      month: detail.month === null ? EMPTY_TOTALS(null) : apiTotals(detail.month),
      all_time: apiTotals(detail.all),
      by_model: detail.byModel.map(apiModel),
    });
  }

  const routes: MetricsRoute[] = [
    { method: 'GET', path: ['users'], handle: ({ url }) => listUsers(url) },
    { method: 'GET', path: ['users', ':userId'], handle: ({ url, params }) => getUser(url, params.userId!) },
    ...(deps.routes ?? []),
  ];

  return async function metrics(request: Request): Promise<Response> {
    try {
      const url = new URL(request.url);
      const segments = url.pathname.replace(/\/+$/, '').split('/').slice(2); // drop '' and 'metrics'
      const matches = routes
        .map((route) => ({ route, params: matchPath(route.path, segments) }))
        .filter((m): m is { route: MetricsRoute; params: Record<string, string> } => m.params !== null);
      if (matches.length === 0) throw new NotFoundError('unknown_route', `No metrics route ${url.pathname.slice(0, 200)}.`);
      const method = request.method === 'HEAD' ? 'GET' : request.method;
      const match = matches.find((m) => m.route.method === method);
      if (match === undefined) {
        const allowed: string[] = [...new Set(matches.map((m) => m.route.method))];
        if (allowed.includes('GET')) allowed.push('HEAD');
        throw new MethodNotAllowedError('method_not_allowed', `${request.method} is not allowed here; use ${allowed.join(' or ')}.`, {
          headers: { allow: allowed.join(', ') },
        });
      }
      await authorize(request);
      const pathUserId = match.params.userId;
      // No request can have stored a longer id, and the stores' keys have their own size limits.
      if (pathUserId !== undefined && pathUserId.length > MAX_USER_ID_LENGTH) {
        throw new BadRequestError(
          'invalid_user_id',
          `The user id in the path is ${pathUserId.length} characters long; the limit is ${MAX_USER_ID_LENGTH}.`,
          { param: 'userId' },
        );
      }
      const params =
        match.params.userId !== undefined && deps.storedUserId !== undefined
          ? { ...match.params, userId: deps.storedUserId(match.params.userId) }
          : match.params;
      const response = await match.route.handle({ request, url: withStoredUserIdFilter(url, deps.storedUserId), params });
      return response.status === 202 ? await withPathPrefix(response, request.headers.get(PATH_PREFIX_HEADER)) : response;
    } catch (error) {
      if (!(error instanceof GatewayError) || error.statusCode >= 500) {
        deps.log.error('metrics_request_failed', { path: new URL(request.url).pathname, error: describeError(error) });
      }
      return errorResponse(error);
    }
  };
}

const SAFE_PREFIX = /^(\/[A-Za-z0-9._~-]+){1,4}$/;

async function withPathPrefix(response: Response, prefix: string | null): Promise<Response> {
  if (prefix === null || !SAFE_PREFIX.test(prefix)) return response;
  const body = (await response.json()) as { result_url?: unknown };
  if (typeof body.result_url === 'string' && body.result_url.startsWith('/')) body.result_url = prefix + body.result_url;
  return new Response(JSON.stringify(body), { status: response.status, headers: response.headers });
}

/**
 * The `user_id` filter (`/metrics/usage`, `/metrics/export`) in the stored form, as path ids are: with pseudonymised
 * ids, a raw id given there would otherwise match nothing, silently.
 */
function withStoredUserIdFilter(url: URL, storedUserId: ((userId: string) => string) | undefined): URL {
  if (storedUserId === undefined || !url.searchParams.has('user_id')) return url;
  const mapped = new URL(url);
  mapped.searchParams.delete('user_id');
  for (const value of url.searchParams.getAll('user_id')) {
    mapped.searchParams.append('user_id', value === '' ? value : storedUserId(value));
  }
  return mapped;
}

/** A route of the metrics API, relative to `/metrics`. Feature modules contribute their own (`deps.routes`). */
export interface MetricsRoute {
  readonly method: 'GET' | 'PUT' | 'POST' | 'DELETE';
  /** Path segments after `/metrics`; `:name` captures one percent-decoded segment, e.g. `['users', ':userId']`. */
  readonly path: readonly string[];
  handle(request: MetricsRequest): Promise<Response>;
}

export interface MetricsRequest {
  readonly request: Request;
  readonly url: URL;
  readonly params: Readonly<Record<string, string>>;
}

function matchPath(pattern: readonly string[], segments: readonly string[]): Record<string, string> | null {
  if (pattern.length !== segments.length) return null;
  const params: Record<string, string> = {};
  for (const [i, part] of pattern.entries()) {
    const segment = segments[i]!;
    if (part.startsWith(':')) {
      if (segment === '') return null;
      try {
        params[part.slice(1)] = decodeURIComponent(segment);
      } catch {
        throw new BadRequestError('invalid_path', `Path segment "${segment.slice(0, 64)}" is not valid percent-encoding.`, {
          param: part.slice(1),
        });
      }
    } else if (part !== segment) {
      return null;
    }
  }
  return params;
}

/** A JSON response, uncached: metrics change with every request. */
export function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' },
  });
}
