/**
 * Per-user rate limits and hard budgets, decided before anything reaches the upstream.
 *
 * Three kinds of limit, all checked together through one all-or-nothing {@link LimitStore.charge}:
 * - **rate-limit policies** `<quota>;w=<seconds>;u=request|cents;s=user|<property>`: fixed windows aligned to the
 *   Unix epoch (`w=3600` is clock hours, `w=86400` UTC days), one counter per segment (user, or property value);
 * - a **monthly budget** in USD per user (UTC calendar month): before forwarding, the request's worst-case cost is
 *   reserved with a conditional write; after the answer the reservation is settled against the real cost;
 * - a **block** flag: a blocked user gets a 403.
 *
 * Server-side limits come from configuration (defaults) and from the metrics API (a user's own limits, which
 * replace the defaults field by field). The caller's `Helicone-RateLimit-Policy` header only adds policies: every
 * server-side policy is still checked, so a header can tighten the limits and never lift them.
 */
import { ConfigError, intVar } from './config';
import { BadRequestError, ForbiddenError, GatewayError, InternalError, RateLimitedError } from './errors';
import { describeError, type Logger } from './log';
import type { LimitCharge, LimitCounter, LimitStore, UserLimits } from './ports';
import { priceOf, type TokenUsage } from './pricing';
import type { Admission, AdmissionDecision, RequestLimiter } from './proxy';
import type { Endpoint } from './tokens';
import type { UsageEvent } from './usage-event';

/** The request header of per-request policies (lower case, as `Headers` hands it back). */
export const RATE_LIMIT_POLICY_HEADER = 'helicone-ratelimit-policy';
/** Response headers of the policy nearest to its limit. */
export const RATE_LIMIT_LIMIT_HEADER = 'Helicone-RateLimit-Limit';
export const RATE_LIMIT_REMAINING_HEADER = 'Helicone-RateLimit-Remaining';
export const RATE_LIMIT_POLICY_RESPONSE_HEADER = 'Helicone-RateLimit-Policy';
/** What is left of the user's monthly budget, in USD, after reserving this request's worst case. */
export const BUDGET_REMAINING_HEADER = 'X-Budget-Remaining-Usd';

export const MIN_WINDOW_SECONDS = 60;
export const MAX_WINDOW_SECONDS = 366 * 86_400;
/** Largest quota; in cents that is $1M, which keeps nano-dollar counters exact JS integers. */
export const MAX_QUOTA = 100_000_000;
export const MAX_POLICIES = 10;
export const NANO_USD_PER_CENT = 10_000_000;
export const MAX_MONTHLY_BUDGET_USD = 1_000_000;
/** Output tokens assumed for a request that names no maximum, when its worst-case cost is needed. */
export const DEFAULT_ASSUMED_OUTPUT_TOKENS = 4096;
/** OpenAI's default `max_tokens` of the legacy completions endpoint. */
const COMPLETIONS_DEFAULT_MAX_TOKENS = 16;

const PROPERTY_NAME = /^[A-Za-z0-9_-]{1,64}$/;
/** Stands for "no user" / "no value" in segment keys: ids and property values never hold control characters. */
const NONE = '\u0000';

// ---------------------------------------------------------------------------------------------------------------
// Policies
// ---------------------------------------------------------------------------------------------------------------

export type LimitUnit = 'request' | 'cents';

/** One rate-limit policy: at most `quota` requests (or cents) per `windowSeconds` per segment. */
export interface RateLimitPolicy {
  readonly quota: number;
  readonly windowSeconds: number;
  readonly unit: LimitUnit;
  /** Counted per user, or per value of a custom property (its name in lower case). */
  readonly segment: 'user' | { readonly property: string };
}

function clip(text: string): string {
  return text.length > 40 ? `${text.slice(0, 40)}…` : text;
}

/**
 * Parses one policy or a comma-separated list; `source` names the header, variable or field in error messages.
 * Parameters may come in any order; `u` defaults to `request` and `s` to `user`.
 * @throws BadRequestError (`invalid_rate_limit_policy`, `param: source`) saying what is wrong
 * @example parseRateLimitPolicies('100;w=3600') // [{ quota: 100, windowSeconds: 3600, unit: 'request', segment: 'user' }]
 * @example parseRateLimitPolicies('500;w=86400;u=cents;s=organization')
 */
export function parseRateLimitPolicies(text: string, source = 'Helicone-RateLimit-Policy'): RateLimitPolicy[] {
  const fail = (message: string) =>
    new BadRequestError('invalid_rate_limit_policy', `${source}: ${message}`, { param: source });
  const items = text.split(',').map((item) => item.trim());
  if (items.length === 1 && items[0] === '') {
    throw fail('is empty; expected <quota>;w=<seconds>[;u=request|cents][;s=user|<property name>].');
  }
  if (items.length > MAX_POLICIES) throw fail(`has ${items.length} policies; at most ${MAX_POLICIES} are allowed.`);
  return items.map((item, i) => parsePolicy(item, items.length > 1 ? `policy ${i + 1}: ` : '', fail));
}

function parsePolicy(item: string, where: string, fail: (message: string) => BadRequestError): RateLimitPolicy {
  if (item === '') throw fail(`${where}is empty.`);
  const [quotaText = '', ...params] = item.split(';').map((part) => part.trim());
  if (!/^\d{1,9}$/.test(quotaText) || Number(quotaText) < 1 || Number(quotaText) > MAX_QUOTA) {
    throw fail(`${where}the quota "${clip(quotaText)}" must be a whole number from 1 to ${MAX_QUOTA}.`);
  }
  const values = new Map<string, string>();
  for (const param of params) {
    if (param === '') continue; // a trailing ";"
    const eq = param.indexOf('=');
    if (eq < 0) throw fail(`${where}"${clip(param)}" is not a name=value parameter.`);
    const name = param.slice(0, eq).trim().toLowerCase();
    if (name !== 'w' && name !== 'u' && name !== 's') {
      throw fail(`${where}unknown parameter "${clip(name)}"; the parameters are w, u and s.`);
    }
    if (values.has(name)) throw fail(`${where}"${name}" is given twice.`);
    values.set(name, param.slice(eq + 1).trim());
  }
  const w = values.get('w');
  if (w === undefined) throw fail(`${where}the window "w=<seconds>" is required.`);
  if (!/^\d{1,9}$/.test(w) || Number(w) < MIN_WINDOW_SECONDS || Number(w) > MAX_WINDOW_SECONDS) {
    throw fail(`${where}"w" must be a whole number of seconds from ${MIN_WINDOW_SECONDS} to ${MAX_WINDOW_SECONDS}; got "${clip(w)}".`);
  }
  const u = values.get('u') ?? 'request';
  if (u !== 'request' && u !== 'cents') throw fail(`${where}"u" must be request or cents; got "${clip(u)}".`);
  const s = values.get('s') ?? 'user';
  if (s !== 'user' && !PROPERTY_NAME.test(s)) {
    throw fail(`${where}"s" must be user or a property name (1-64 of A-Z, a-z, 0-9, _ or -); got "${clip(s)}".`);
  }
  return {
    quota: Number(quotaText),
    windowSeconds: Number(w),
    unit: u,
    segment: s === 'user' ? 'user' : { property: s.toLowerCase() },
  };
}

/** The canonical text of a policy, as stored and as sent back in `Helicone-RateLimit-Policy`. */
export function formatRateLimitPolicy(policy: RateLimitPolicy): string {
  const segment = policy.segment === 'user' ? 'user' : policy.segment.property;
  return `${policy.quota};w=${policy.windowSeconds};u=${policy.unit};s=${segment}`;
}

/** Policies that count the same thing (segment, unit, window) are one counter: the lowest quota of them holds. */
function mergePolicies(server: readonly RateLimitPolicy[], requested: readonly RateLimitPolicy[]): RateLimitPolicy[] {
  const byCounter = new Map<string, RateLimitPolicy>();
  for (const policy of [...server, ...requested]) {
    const key = `${policy.segment === 'user' ? NONE : policy.segment.property}|${policy.unit}|${policy.windowSeconds}`;
    const known = byCounter.get(key);
    if (known === undefined || policy.quota < known.quota) byCounter.set(key, policy);
  }
  return [...byCounter.values()];
}

/** The segment a policy counts this request in; requests without the user or property share one bucket. */
export function segmentOf(policy: RateLimitPolicy, userId: string | null, properties: Readonly<Record<string, string>>): string {
  if (policy.segment === 'user') return `user:${userId ?? NONE}`;
  const name = policy.segment.property;
  return `property:${name}:${properties[name] ?? NONE}`;
}

/** Epoch milliseconds of the start of the fixed window holding `at`. */
export function windowStartOf(at: number, windowSeconds: number): number {
  const length = windowSeconds * 1000;
  return at - (((at % length) + length) % length);
}

/** `YYYY-MM` of `at`, UTC. */
export function monthOf(at: number): string {
  // Every request asks, nearly always for the month it asked about last: remember that month's bounds.
  if (at >= lastMonth.start && at < lastMonth.end) return lastMonth.month;
  const date = new Date(at);
  const month = date.toISOString().slice(0, 7);
  lastMonth = { month, start: Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), 1), end: nextMonthStart(at) };
  return month;
}

let lastMonth = { month: '', start: 0, end: 0 };

/** Epoch milliseconds of the first instant of the UTC month after the one holding `at`. */
export function nextMonthStart(at: number): number {
  const date = new Date(at);
  return Date.UTC(date.getUTCFullYear(), date.getUTCMonth() + 1, 1);
}

// ---------------------------------------------------------------------------------------------------------------
// Server-side limits
// ---------------------------------------------------------------------------------------------------------------

/** The limits that apply to a user: the defaults, with the user's own limits replacing them field by field. */
export interface EffectiveLimits {
  /** Nano-dollars per UTC month, or null for no budget. */
  readonly monthlyBudgetNanoUsd: number | null;
  readonly rateLimits: readonly RateLimitPolicy[];
  readonly blocked: boolean;
}

export interface LimitsConfig {
  /** What applies to every user without limits of their own (and to the bucket of requests naming no user). */
  readonly defaults: EffectiveLimits;
  /** Output tokens assumed for a request without `max_tokens` / `max_output_tokens` when its worst case is needed. */
  readonly assumedOutputTokens: number;
  /**
   * When the limit store cannot be read or written: true refuses the request (500 `limits_unavailable`), false
   * forwards it unchecked and logs `limits_unavailable`, so an outage of the store never takes the gateway down.
   */
  readonly failClosed: boolean;
}

/** No defaults: only users given limits through the metrics API are limited. */
export const NO_DEFAULT_LIMITS: LimitsConfig = {
  defaults: { monthlyBudgetNanoUsd: null, rateLimits: [], blocked: false },
  assumedOutputTokens: DEFAULT_ASSUMED_OUTPUT_TOKENS,
  failClosed: false,
};

export function effectiveLimits(defaults: EffectiveLimits, own: UserLimits | null): EffectiveLimits {
  if (own === null) return defaults;
  return {
    monthlyBudgetNanoUsd: own.monthlyBudgetNanoUsd !== undefined ? own.monthlyBudgetNanoUsd : defaults.monthlyBudgetNanoUsd,
    rateLimits:
      own.rateLimits !== undefined
        ? own.rateLimits.flatMap((text) => parseRateLimitPolicies(text, 'stored rate_limits'))
        : defaults.rateLimits,
    blocked: own.blocked ?? defaults.blocked,
  };
}

/**
 * Parses a user's limits as the metrics API takes them (`PUT /metrics/users/{id}/limits`) and as `LIMITS_FILE`
 * holds the defaults: `{"monthly_budget_usd": 25, "rate_limits": ["100;w=3600"], "blocked": false}`, every field
 * optional; `monthly_budget_usd: null` means no budget.
 * @throws BadRequestError naming the field at fault
 */
export function parseLimitsDocument(value: unknown, updatedAt: string): UserLimits {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new BadRequestError('invalid_limits', 'The limits must be a JSON object.', { param: 'body' });
  }
  const fields = value as Record<string, unknown>;
  for (const name of Object.keys(fields)) {
    if (name !== 'monthly_budget_usd' && name !== 'rate_limits' && name !== 'blocked') {
      throw new BadRequestError(
        'invalid_limits',
        `Unknown field "${clip(name)}"; the fields are monthly_budget_usd, rate_limits and blocked.`,
        { param: clip(name) },
      );
    }
  }
  const limits: { -readonly [K in keyof UserLimits]: UserLimits[K] } = { updatedAt };
  if ('monthly_budget_usd' in fields) {
    const budget = fields.monthly_budget_usd;
    if (budget === null) limits.monthlyBudgetNanoUsd = null;
    else if (typeof budget !== 'number' || !Number.isFinite(budget) || budget < 0 || budget > MAX_MONTHLY_BUDGET_USD) {
      throw new BadRequestError(
        'invalid_limits',
        `"monthly_budget_usd" must be null or a number of USD from 0 to ${MAX_MONTHLY_BUDGET_USD}.`,
        { param: 'monthly_budget_usd' },
      );
    } else limits.monthlyBudgetNanoUsd = Math.round(budget * 1e9);
  }
  if ('rate_limits' in fields) {
    const list = fields.rate_limits;
    if (!Array.isArray(list) || list.length > MAX_POLICIES) {
      throw new BadRequestError('invalid_limits', `"rate_limits" must be an array of at most ${MAX_POLICIES} policy strings.`, {
        param: 'rate_limits',
      });
    }
    const policies = list.map((item, i) => {
      if (typeof item !== 'string') {
        throw new BadRequestError('invalid_limits', `"rate_limits[${i}]" must be a policy string such as "100;w=3600".`, {
          param: `rate_limits[${i}]`,
        });
      }
      const parsed = parseRateLimitPolicies(item, `rate_limits[${i}]`);
      if (parsed.length !== 1) {
        throw new BadRequestError('invalid_limits', `"rate_limits[${i}]" must hold one policy; use one array item each.`, {
          param: `rate_limits[${i}]`,
        });
      }
      return formatRateLimitPolicy(parsed[0]!);
    });
    limits.rateLimits = policies;
  }
  if ('blocked' in fields) {
    if (typeof fields.blocked !== 'boolean') {
      throw new BadRequestError('invalid_limits', '"blocked" must be true or false.', { param: 'blocked' });
    }
    limits.blocked = fields.blocked;
  }
  return limits;
}

/** A user's own limits as the metrics API shows them: only the fields that were set. */
export function limitsDocumentOf(limits: UserLimits): Record<string, unknown> {
  return {
    ...(limits.monthlyBudgetNanoUsd !== undefined && {
      monthly_budget_usd: limits.monthlyBudgetNanoUsd === null ? null : limits.monthlyBudgetNanoUsd / 1e9,
    }),
    ...(limits.rateLimits !== undefined && { rate_limits: [...limits.rateLimits] }),
    ...(limits.blocked !== undefined && { blocked: limits.blocked }),
    updated_at: limits.updatedAt,
  };
}

/** Limits that apply, as the metrics API shows them. */
export function effectiveDocumentOf(limits: EffectiveLimits): Record<string, unknown> {
  return {
    monthly_budget_usd: limits.monthlyBudgetNanoUsd === null ? null : limits.monthlyBudgetNanoUsd / 1e9,
    rate_limits: limits.rateLimits.map(formatRateLimitPolicy),
    blocked: limits.blocked,
  };
}

/** How stores keep a user's limits: one JSON text. */
export function userLimitsToJson(limits: UserLimits): string {
  return JSON.stringify({
    monthly_budget_nano_usd: limits.monthlyBudgetNanoUsd,
    rate_limits: limits.rateLimits,
    blocked: limits.blocked,
    updated_at: limits.updatedAt,
  });
}

/** Inverse of {@link userLimitsToJson}. @throws TypeError for text that is not stored limits */
export function userLimitsFromJson(text: string): UserLimits {
  const value = JSON.parse(text) as Record<string, unknown>;
  const budget = value.monthly_budget_nano_usd;
  const rateLimits = value.rate_limits;
  const blocked = value.blocked;
  if (
    typeof value.updated_at !== 'string' ||
    (budget !== undefined && budget !== null && !(typeof budget === 'number' && Number.isSafeInteger(budget) && budget >= 0)) ||
    (rateLimits !== undefined && !(Array.isArray(rateLimits) && rateLimits.every((p) => typeof p === 'string'))) ||
    (blocked !== undefined && typeof blocked !== 'boolean')
  ) {
    throw new TypeError('Stored user limits are malformed.');
  }
  return {
    ...(budget !== undefined && { monthlyBudgetNanoUsd: budget as number | null }),
    ...(rateLimits !== undefined && { rateLimits: rateLimits as string[] }),
    ...(blocked !== undefined && { blocked: blocked as boolean }),
    updatedAt: value.updated_at,
  };
}

type Env = Readonly<Record<string, string | undefined>>;

/** Exact nano-dollars of a decimal USD text such as `25` or `0.5`. */
function usdTextToNano(text: string, variable: string): number {
  const match = /^(\d{1,7})(?:\.(\d{1,9}))?$/.exec(text);
  if (!match) throw new ConfigError(variable, `must be an amount of USD such as 25 or 0.50, got "${text}"`);
  const nano = Number(match[1]) * 1e9 + Number((match[2] ?? '').padEnd(9, '0'));
  if (nano > MAX_MONTHLY_BUDGET_USD * 1e9) throw new ConfigError(variable, `must be at most ${MAX_MONTHLY_BUDGET_USD}`);
  return nano;
}

/**
 * Reads the limits configuration: `DEFAULT_MONTHLY_BUDGET_USD` and `DEFAULT_RATE_LIMIT_POLICY`, or `LIMITS_FILE`
 * (a JSON file with the fields of a user's limits, read with `readFile`; runtimes without files pass none), and
 * `BUDGET_ASSUMED_OUTPUT_TOKENS` and `LIMITS_FAIL_CLOSED`.
 * @throws ConfigError naming the variable
 * @example limitsConfigFromEnv({ DEFAULT_MONTHLY_BUDGET_USD: '20', DEFAULT_RATE_LIMIT_POLICY: '1000;w=86400' })
 */
export function limitsConfigFromEnv(env: Env, readFile?: (path: string) => string): LimitsConfig {
  const assumedOutputTokens = intVar(env, 'BUDGET_ASSUMED_OUTPUT_TOKENS', DEFAULT_ASSUMED_OUTPUT_TOKENS, 1, 1_000_000);
  const failClosedText = env.LIMITS_FAIL_CLOSED?.trim().toLowerCase() ?? '';
  if (!['', 'true', 'false'].includes(failClosedText)) {
    throw new ConfigError('LIMITS_FAIL_CLOSED', `must be true or false, got "${env.LIMITS_FAIL_CLOSED}"`);
  }
  const failClosed = failClosedText === 'true';
  const file = env.LIMITS_FILE?.trim() ?? '';
  const budgetText = env.DEFAULT_MONTHLY_BUDGET_USD?.trim() ?? '';
  const policyText = env.DEFAULT_RATE_LIMIT_POLICY?.trim() ?? '';
  if (file !== '') {
    if (budgetText !== '' || policyText !== '') {
      throw new ConfigError('LIMITS_FILE', 'set either LIMITS_FILE or DEFAULT_MONTHLY_BUDGET_USD / DEFAULT_RATE_LIMIT_POLICY, not both');
    }
    if (readFile === undefined) {
      throw new ConfigError('LIMITS_FILE', 'is not supported here; use DEFAULT_MONTHLY_BUDGET_USD and DEFAULT_RATE_LIMIT_POLICY');
    }
    let json: unknown;
    try {
      json = JSON.parse(readFile(file));
    } catch (error) {
      throw new ConfigError('LIMITS_FILE', `cannot read "${file}" as JSON: ${describeError(error).message}`);
    }
    let own: UserLimits;
    try {
      own = parseLimitsDocument(json, new Date(0).toISOString());
    } catch (error) {
      if (error instanceof GatewayError) throw new ConfigError('LIMITS_FILE', `${file}: ${error.message}`);
      throw error;
    }
    return { defaults: effectiveLimits(NO_DEFAULT_LIMITS.defaults, own), assumedOutputTokens, failClosed };
  }
  let rateLimits: RateLimitPolicy[] = [];
  if (policyText !== '') {
    try {
      rateLimits = parseRateLimitPolicies(policyText, 'DEFAULT_RATE_LIMIT_POLICY');
    } catch (error) {
      if (error instanceof GatewayError) throw new ConfigError('DEFAULT_RATE_LIMIT_POLICY', error.message.replace(/^DEFAULT_RATE_LIMIT_POLICY: /, ''));
      throw error;
    }
  }
  return {
    defaults: {
      monthlyBudgetNanoUsd: budgetText === '' ? null : usdTextToNano(budgetText, 'DEFAULT_MONTHLY_BUDGET_USD'),
      rateLimits,
      blocked: false,
    },
    assumedOutputTokens,
    failClosed,
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Worst-case cost
// ---------------------------------------------------------------------------------------------------------------

function positiveInteger(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isSafeInteger(value) && value > 0 ? value : undefined;
}

/**
 * The most output a request can produce: its `max_completion_tokens` / `max_tokens` (chat), `max_tokens` (legacy
 * completions, 16 when unset, as OpenAI defaults), `max_output_tokens` (responses), times the number of choices
 * (`n`, `best_of`); `assumed` when it names no maximum; none for embeddings and other routes.
 */
export function maxOutputTokens(endpoint: Endpoint, body: Readonly<Record<string, unknown>> | undefined, assumed: number): number {
  const choices = Math.max(positiveInteger(body?.n) ?? 1, endpoint === 'completions' ? (positiveInteger(body?.best_of) ?? 1) : 1);
  switch (endpoint) {
    case 'chat':
      return (positiveInteger(body?.max_completion_tokens) ?? positiveInteger(body?.max_tokens) ?? assumed) * choices;
    case 'completions':
      return (positiveInteger(body?.max_tokens) ?? COMPLETIONS_DEFAULT_MAX_TOKENS) * choices;
    case 'responses':
      return positiveInteger(body?.max_output_tokens) ?? assumed;
    default:
      return 0;
  }
}

/**
 * The worst-case cost of a request in nano-dollars: its estimated prompt plus its maximum output, at the model's
 * price with no cache discount; 0 for a request without tokens; null when the model has no known price.
 * @example worstCaseCostNano({ endpoint: 'chat', body: { model: 'gpt-4o-mini', max_tokens: 256 }, requestedModel: 'gpt-4o-mini',
 *   provider: 'openai', at: Date.now() }, 30, 4096) // 158100
 */
export function worstCaseCostNano(
  request: Pick<Admission, 'endpoint' | 'body' | 'requestedModel' | 'provider' | 'at'>,
  promptTokens: number,
  assumedOutputTokens: number,
): number | null {
  // The gateway meters no tokens on other routes (models, files, audio…): they cost nothing it could count.
  if (request.endpoint === 'other') return 0;
  const output = maxOutputTokens(request.endpoint, request.body, assumedOutputTokens);
  const usage: TokenUsage = {
    prompt_tokens: promptTokens,
    completion_tokens: output,
    cached_prompt_tokens: 0,
    reasoning_tokens: 0,
    total_tokens: promptTokens + output,
  };
  return priceOf(usage, request.requestedModel, request.provider, new Date(request.at)).cost_nano_usd;
}

/** Exact USD text of nano-dollars, at least two decimals: `4.50`, `0.000158`. */
export function formatUsd(nano: number): string {
  const sign = nano < 0 ? '-' : '';
  const abs = Math.abs(Math.round(nano));
  const whole = Math.floor(abs / 1e9);
  const fraction = String(abs % 1e9).padStart(9, '0').replace(/0+$/, '').padEnd(2, '0');
  return `${sign}${whole}.${fraction}`;
}

// ---------------------------------------------------------------------------------------------------------------
// The limiter
// ---------------------------------------------------------------------------------------------------------------

export interface LimiterOptions {
  readonly store: LimitStore;
  readonly config: LimitsConfig;
  readonly log: Logger;
  /**
   * How long a user's limits read from the store are reused. A store in the same process needs none; across
   * processes (the proxy Lambda, the metrics Lambda) this is how long a change takes to apply.
   * @default 0
   */
  readonly limitsCacheMs?: number;
  /** Clock of the limits cache (windows follow the request's own arrival time). @default Date.now */
  readonly now?: () => number;
}

/** Users whose limits are cached at most; the oldest entry goes first. */
const MAX_CACHED_USERS = 10_000;

interface CheckedCharge {
  readonly charge: LimitCharge;
  /** The policy behind a window charge; undefined for the budget. */
  readonly policy?: RateLimitPolicy;
  /** True when the policy came from the request's own header. */
  readonly requested?: boolean;
}

/**
 * Creates the limiter the proxy consults before forwarding (`ProxyDeps.limiter`).
 * @example const limiter = createLimiter({ store, config: limitsConfigFromEnv(process.env), log });
 */
export function createLimiter(options: LimiterOptions): RequestLimiter {
  const { store, config, log } = options;
  const cacheMs = options.limitsCacheMs ?? 0;
  const now = options.now ?? Date.now;
  const cache = new Map<string, { readonly until: number; readonly limits: Promise<EffectiveLimits> }>();
  // A store in this process hands back the same object until the limits change: parse its policies once.
  const parsed = new WeakMap<UserLimits, EffectiveLimits>();

  const resolve = async (userId: string | null): Promise<EffectiveLimits> => {
    const own = await store.getLimits(userId);
    if (own === null) return config.defaults;
    let limits = parsed.get(own);
    if (limits === undefined) {
      limits = effectiveLimits(config.defaults, own);
      parsed.set(own, limits);
    }
    return limits;
  };

  /** The store failed: refuse, or forward unchecked, as configured. */
  const unchecked = (admission: Admission, error: unknown): AdmissionDecision => {
    if (config.failClosed) {
      throw new InternalError('limits_unavailable', 'The gateway could not check this request against its limits.', {
        cause: error,
      });
    }
    log.error('limits_unavailable', { request_id: admission.requestId, error: describeError(error) });
    return { admitted: true, headers: {}, settle: async () => undefined };
  };

  const limitsOf = (userId: string | null): Promise<EffectiveLimits> => {
    if (cacheMs <= 0) return resolve(userId);
    const key = userId ?? NONE;
    const at = now();
    const cached = cache.get(key);
    if (cached !== undefined && cached.until > at) return cached.limits;
    if (cached !== undefined) cache.delete(key);
    else if (cache.size >= MAX_CACHED_USERS) cache.delete(cache.keys().next().value!);
    const limits = resolve(userId);
    cache.set(key, { until: at + cacheMs, limits });
    limits.catch(() => cache.delete(key));
    return limits;
  };

  return {
    async admit(admission: Admission): Promise<AdmissionDecision> {
      const header = admission.headers.get(RATE_LIMIT_POLICY_HEADER);
      const requested = header === null ? [] : parseRateLimitPolicies(header);
      let limits: EffectiveLimits;
      try {
        limits = await limitsOf(admission.userId);
      } catch (error) {
        return unchecked(admission, error);
      }
      if (limits.blocked) {
        return {
          admitted: false,
          error: new ForbiddenError('user_blocked', 'This user is blocked by the gateway administrator.'),
          headers: { 'x-should-retry': 'false' },
        };
      }
      const policies = mergePolicies(limits.rateLimits, requested);
      const requestedSet = new Set(requested);
      const budget = limits.monthlyBudgetNanoUsd;

      let worst = 0;
      if (budget !== null || policies.some((p) => p.unit === 'cents')) {
        const prompt = await admission.estimatePromptTokens();
        const cost = worstCaseCostNano(admission, prompt, config.assumedOutputTokens);
        if (cost === null) {
          const model =
            admission.requestedModel === null
              ? 'The request names no model'
              : `The model "${clip(admission.requestedModel)}" has no known price`;
          return {
            admitted: false,
            error: new ForbiddenError(
              'unpriced_model',
              `${model}, so its cost cannot be checked against ${budget !== null ? "the user's monthly budget" : 'a cost rate limit'}.`,
            ),
            headers: { 'x-should-retry': 'false' },
          };
        }
        worst = cost;
      }

      const budgetCounter: LimitCounter = { kind: 'budget', userId: admission.userId, month: monthOf(admission.at) };
      const checked: CheckedCharge[] = policies.map((policy) => ({
        policy,
        requested: requestedSet.has(policy),
        charge: {
          counter: {
            kind: 'window',
            segment: segmentOf(policy, admission.userId, admission.properties),
            unit: policy.unit,
            windowSeconds: policy.windowSeconds,
            windowStart: windowStartOf(admission.at, policy.windowSeconds),
          },
          amount: policy.unit === 'request' ? 1 : worst,
          limit: policy.unit === 'request' ? policy.quota : policy.quota * NANO_USD_PER_CENT,
        },
      }));
      if (budget !== null) checked.push({ charge: { counter: budgetCounter, amount: worst, limit: budget } });

      let used: readonly number[] = [];
      if (checked.length > 0) {
        let result;
        try {
          result = await store.charge(checked.map((c) => c.charge));
        } catch (error) {
          return unchecked(admission, error);
        }
        used = result.used;
        if (!result.admitted) {
          const index = result.fits.indexOf(false);
          return refusal(checked[index]!, result.used[index]!, admission.at);
        }
      }

      const headers: Record<string, string> = {};
      let nearest: { share: number; policy: RateLimitPolicy; used: number } | undefined;
      for (const [i, c] of checked.entries()) {
        if (c.policy === undefined) continue;
        const share = remainingOf(c.policy, used[i]!) / c.policy.quota;
        if (nearest === undefined || share < nearest.share) nearest = { share, policy: c.policy, used: used[i]! };
      }
      if (nearest !== undefined) Object.assign(headers, rateLimitHeaders(nearest.policy, nearest.used));
      if (budget !== null) headers[BUDGET_REMAINING_HEADER] = formatUsd(Math.max(0, budget - used[checked.length - 1]!));

      return {
        admitted: true,
        headers,
        settle: settlement(store, log, checked, budget, budgetCounter),
      };
    },
  };
}

/**
 * The settle step of an admitted request: the reservation is corrected to the request's real cost. Made out here
 * so that it keeps only the charges, not the admission (the request's body and headers, and through them the whole
 * request) for as long as the store takes to confirm, which can be its next flush.
 */
function settlement(
  store: LimitStore,
  log: Logger,
  checked: readonly CheckedCharge[],
  budget: number | null,
  budgetCounter: LimitCounter,
): (event: UsageEvent) => Promise<void> {
  return async (event) => {
    const actual = event.cost_nano_usd;
    // An answer without a known price keeps what was reserved: spending it is the safe side.
    if (actual === null) return;
    const adjustments: { counter: LimitCounter; amount: number }[] = [];
    for (const c of checked) {
      if (c.charge.counter.kind === 'window' && c.policy?.unit !== 'cents') continue;
      if (actual !== c.charge.amount) adjustments.push({ counter: c.charge.counter, amount: actual - c.charge.amount });
    }
    // Spending is kept for every user, so a budget set mid-month counts what was already spent.
    if (budget === null && actual > 0) adjustments.push({ counter: budgetCounter, amount: actual });
    if (adjustments.length === 0) return;
    try {
      await store.adjust(adjustments);
    } catch (error) {
      log.error('limit_settle_failed', { request_id: event.request_id, error: describeError(error) });
    }
  };
}

function remainingOf(policy: RateLimitPolicy, used: number): number {
  if (policy.unit === 'request') return Math.max(0, policy.quota - used);
  return Math.max(0, Math.floor((policy.quota * NANO_USD_PER_CENT - used) / NANO_USD_PER_CENT));
}

function rateLimitHeaders(policy: RateLimitPolicy, used: number): Record<string, string> {
  return {
    [RATE_LIMIT_LIMIT_HEADER]: String(policy.quota),
    [RATE_LIMIT_REMAINING_HEADER]: String(remainingOf(policy, used)),
    [RATE_LIMIT_POLICY_RESPONSE_HEADER]: formatRateLimitPolicy(policy),
  };
}

function refusal(refused: CheckedCharge, used: number, at: number): AdmissionDecision {
  const policy = refused.policy;
  if (policy === undefined) {
    const { amount, limit } = refused.charge;
    const remaining = Math.max(0, (limit ?? 0) - used);
    return {
      admitted: false,
      error: new RateLimitedError(
        'budget_exceeded',
        `The user's monthly budget of $${formatUsd(limit ?? 0)} does not cover this request: $${formatUsd(remaining)} ` +
          `remains and the request may cost up to $${formatUsd(amount)}.`,
      ),
      headers: {
        [BUDGET_REMAINING_HEADER]: formatUsd(remaining),
        'retry-after': String(Math.ceil((nextMonthStart(at) - at) / 1000)),
        // The SDKs would retry a 429; this one lasts until the month ends or the budget is raised.
        'x-should-retry': 'false',
      },
    };
  }
  const resetSeconds = Math.ceil((windowStartOf(at, policy.windowSeconds) + policy.windowSeconds * 1000 - at) / 1000);
  const per = policy.segment === 'user' ? 'user' : `value of property "${policy.segment.property}"`;
  return {
    admitted: false,
    error: new RateLimitedError(
      'rate_limited',
      `Rate limit exceeded: at most ${policy.quota} ${policy.unit === 'request' ? 'requests' : 'cents'} per ` +
        `${policy.windowSeconds} s per ${per} (${formatRateLimitPolicy(policy)}); the window resets in ${resetSeconds} s.`,
      refused.requested ? { param: 'Helicone-RateLimit-Policy' } : {},
    ),
    headers: { ...rateLimitHeaders(policy, used), 'retry-after': String(Math.max(1, resetSeconds)) },
  };
}
