import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { BadRequestError, ForbiddenError, InternalError, RateLimitedError } from '../../lambda/core/errors';
import {
  BUDGET_REMAINING_HEADER,
  NO_DEFAULT_LIMITS,
  createLimiter,
  effectiveLimits,
  formatRateLimitPolicy,
  formatUsd,
  limitsConfigFromEnv,
  maxOutputTokens,
  monthOf,
  nextMonthStart,
  parseLimitsDocument,
  parseRateLimitPolicies,
  windowStartOf,
  worstCaseCostNano,
  type LimitsConfig,
} from '../../lambda/core/limits';
import { ConfigError } from '../../lambda/core/config';
import { silentLogger } from '../../lambda/core/log';
import type { LimitStore } from '../../lambda/core/ports';
import { priceOf } from '../../lambda/core/pricing';
import type { Admission, AdmissionDecision, RequestLimiter } from '../../lambda/core/proxy';
import type { UsageEvent } from '../../lambda/core/usage-event';
import { DuckDbLimitStore } from '../../lambda/local/duckdb-limit-store';

/** 2026-11-22T10:00:00.000Z: a whole hour, so windows of 60 s and 3600 s start exactly here. */
const T0 = Date.UTC(2026, 10, 22, 10, 0, 0);
const PROMPT_TOKENS = 100;

function admission(fields: Partial<Admission> & { policy?: string } = {}): Admission {
  const { policy, ...rest } = fields;
  return {
    requestId: crypto.randomUUID(),
    userId: 'alice',
    properties: {},
    endpoint: 'chat',
    requestedModel: 'gpt-4o-mini',
    provider: 'openai',
    body: { model: 'gpt-4o-mini', max_tokens: 200 },
    headers: new Headers(policy === undefined ? {} : { 'Helicone-RateLimit-Policy': policy }),
    at: T0,
    estimatePromptTokens: async () => PROMPT_TOKENS,
    ...rest,
  };
}

/** The worst case of the default {@link admission}: 100 prompt + 200 output tokens of gpt-4o-mini. */
const WORST = worstCaseCostNano(admission(), PROMPT_TOKENS, 4096)!;

function usageEvent(a: Admission, costNano: number | null): UsageEvent {
  return {
    v: 1,
    request_id: a.requestId,
    ts: new Date(a.at).toISOString(),
    user_id: a.userId,
    properties: a.properties,
    provider: 'openai',
    model: a.requestedModel,
    path: '/v1/chat/completions',
    method: 'POST',
    status: 200,
    stream: false,
    latency_ms: 10,
    ttft_ms: 5,
    prompt_tokens: 10,
    completion_tokens: 10,
    cached_prompt_tokens: 0,
    reasoning_tokens: 0,
    total_tokens: 20,
    cost_usd: costNano === null ? null : costNano / 1e9,
    cost_nano_usd: costNano,
    cost_source: costNano === null ? 'unknown_model' : 'genai-prices',
    usage_source: 'provider',
    error: null,
    key_id: null,
  };
}

function config(defaults: Partial<LimitsConfig['defaults']> = {}, assumedOutputTokens = 4096, failClosed = false): LimitsConfig {
  return { defaults: { ...NO_DEFAULT_LIMITS.defaults, ...defaults }, assumedOutputTokens, failClosed };
}

function refused(decision: AdmissionDecision): { error: Error & { code: string; statusCode: number }; headers: Record<string, string> } {
  assert.equal(decision.admitted, false, 'expected a refusal');
  return decision as never;
}

function admitted(decision: AdmissionDecision): Extract<AdmissionDecision, { admitted: true }> {
  assert.equal(decision.admitted, true, decision.admitted ? '' : `refused: ${decision.error.message}`);
  return decision as Extract<AdmissionDecision, { admitted: true }>;
}

describe('parseRateLimitPolicies', () => {
  it('reads quota and window, defaulting to requests per user', () => {
    assert.deepEqual(parseRateLimitPolicies('100;w=3600'), [{ quota: 100, windowSeconds: 3600, unit: 'request', segment: 'user' }]);
  });

  it('takes parameters in any order, with spaces, and a property segment in lower case', () => {
    const [policy] = parseRateLimitPolicies(' 500 ; s=Organization ; u=cents ; w=86400 ;');
    assert.deepEqual(policy, { quota: 500, windowSeconds: 86400, unit: 'cents', segment: { property: 'organization' } });
    assert.equal(formatRateLimitPolicy(policy!), '500;w=86400;u=cents;s=organization');
  });

  it('reads a comma-separated list', () => {
    assert.deepEqual(
      parseRateLimitPolicies('10;w=60, 1000;w=86400;s=user').map(formatRateLimitPolicy),
      ['10;w=60;u=request;s=user', '1000;w=86400;u=request;s=user'],
    );
  });

  const malformed: [string, RegExp][] = [
    ['', /is empty/],
    ['abc;w=60', /the quota "abc" must be a whole number from 1/],
    ['0;w=60', /the quota "0"/],
    ['1000000000;w=60', /the quota "1000000000"/],
    ['10', /the window "w=<seconds>" is required/],
    ['10;w=59', /"w" must be a whole number of seconds from 60 to \d+; got "59"/],
    ['10;w=1.5', /"w" must be a whole number/],
    ['10;w=60;u=dollars', /"u" must be request or cents; got "dollars"/],
    ['10;w=60;s=a b', /"s" must be user or a property name/],
    ['10;w=60;x=1', /unknown parameter "x"; the parameters are w, u and s/],
    ['10;w=60;w=120', /"w" is given twice/],
    ['10;w=60;cents', /"cents" is not a name=value parameter/],
    ['10;w=60,', /policy 2: is empty/],
    [Array.from({ length: 11 }, () => '1;w=60').join(','), /at most 10/],
  ];
  for (const [text, message] of malformed) {
    it(`refuses ${JSON.stringify(text.slice(0, 30))} with a 400 naming the header and the fault`, () => {
      assert.throws(
        () => parseRateLimitPolicies(text),
        (error: unknown) =>
          error instanceof BadRequestError &&
          error.code === 'invalid_rate_limit_policy' &&
          error.param === 'Helicone-RateLimit-Policy' &&
          error.message.startsWith('Helicone-RateLimit-Policy: ') &&
          message.test(error.message),
      );
    });
  }
});

describe('windows and months', () => {
  it('aligns windows to the epoch, so boundaries are exact instants', () => {
    assert.equal(windowStartOf(T0, 60), T0);
    assert.equal(windowStartOf(T0 + 59_999, 60), T0);
    assert.equal(windowStartOf(T0 + 60_000, 60), T0 + 60_000);
    assert.equal(windowStartOf(T0 + 3_599_999, 3600), T0);
    assert.equal(windowStartOf(T0 + 5 * 3_600_000, 86_400), Date.UTC(2026, 10, 22));
  });

  it('names UTC months and finds where the next one starts', () => {
    assert.equal(monthOf(Date.UTC(2026, 10, 30, 23, 59, 59, 999)), '2026-11');
    assert.equal(monthOf(Date.UTC(2026, 11, 1)), '2026-12');
    // Asked again across a boundary, in either direction, after the month was remembered.
    assert.equal(monthOf(Date.UTC(2026, 11, 1) - 1), '2026-11');
    assert.equal(monthOf(Date.UTC(2026, 10, 1)), '2026-11');
    assert.equal(monthOf(Date.UTC(2026, 10, 1) - 1), '2026-10');
    assert.equal(monthOf(Date.UTC(2026, 11, 31, 23, 59, 59, 999)), '2026-12');
    assert.equal(monthOf(Date.UTC(2027, 0, 1)), '2027-01');
    assert.equal(nextMonthStart(Date.UTC(2026, 11, 31, 12)), Date.UTC(2027, 0, 1));
  });
});

describe('worst-case cost', () => {
  it('takes the maximum output a request names, times its choices', () => {
    assert.equal(maxOutputTokens('chat', { max_tokens: 50 }, 4096), 50);
    assert.equal(maxOutputTokens('chat', { max_completion_tokens: 70, max_tokens: 50 }, 4096), 70);
    assert.equal(maxOutputTokens('chat', { max_tokens: 50, n: 3 }, 4096), 150);
    assert.equal(maxOutputTokens('responses', { max_output_tokens: 80 }, 4096), 80);
    assert.equal(maxOutputTokens('completions', { max_tokens: 10, best_of: 4, n: 2 }, 4096), 40);
  });

  it('assumes the configured output without a maximum, and OpenAI’s 16 for legacy completions', () => {
    assert.equal(maxOutputTokens('chat', {}, 4096), 4096);
    assert.equal(maxOutputTokens('chat', { max_tokens: 'lots' }, 1000), 1000);
    assert.equal(maxOutputTokens('responses', undefined, 512), 512);
    assert.equal(maxOutputTokens('completions', {}, 4096), 16);
    assert.equal(maxOutputTokens('embeddings', { max_tokens: 50 }, 4096), 0);
    assert.equal(maxOutputTokens('other', {}, 4096), 0);
  });

  it('prices the estimated prompt plus the maximum output at the model’s price', () => {
    const usage = { prompt_tokens: 100, completion_tokens: 200, cached_prompt_tokens: 0, reasoning_tokens: 0, total_tokens: 300 };
    assert.equal(WORST, priceOf(usage, 'gpt-4o-mini', 'openai', new Date(T0)).cost_nano_usd);
    assert.ok(WORST > 0);
  });

  it('is unknown (null) for an unpriced model and 0 for a request without tokens', () => {
    assert.equal(worstCaseCostNano(admission({ requestedModel: 'my-local-llama' }), 100, 4096), null);
    assert.equal(worstCaseCostNano(admission({ endpoint: 'other', requestedModel: null, body: undefined }), 0, 4096), 0);
  });

  it('writes USD exactly from nano-dollars', () => {
    assert.equal(formatUsd(4_500_000_000), '4.50');
    assert.equal(formatUsd(158_100), '0.0001581');
    assert.equal(formatUsd(0), '0.00');
    assert.equal(formatUsd(1), '0.000000001');
  });
});

describe('limitsConfigFromEnv', () => {
  it('has no defaults and assumes 4096 output tokens when nothing is set', () => {
    assert.deepEqual(limitsConfigFromEnv({}), NO_DEFAULT_LIMITS);
  });

  it('reads a budget in exact nano-dollars and default policies', () => {
    const parsed = limitsConfigFromEnv({
      DEFAULT_MONTHLY_BUDGET_USD: '20.000000001',
      DEFAULT_RATE_LIMIT_POLICY: '100;w=3600,5;w=60',
      BUDGET_ASSUMED_OUTPUT_TOKENS: '1024',
      LIMITS_FAIL_CLOSED: 'true',
    });
    assert.equal(parsed.failClosed, true);
    assert.equal(parsed.defaults.monthlyBudgetNanoUsd, 20_000_000_001);
    assert.deepEqual(parsed.defaults.rateLimits.map(formatRateLimitPolicy), ['100;w=3600;u=request;s=user', '5;w=60;u=request;s=user']);
    assert.equal(parsed.assumedOutputTokens, 1024);
  });

  it('reads LIMITS_FILE in the shape of a user’s limits', () => {
    const files: Record<string, string> = { '/etc/limits.json': '{"monthly_budget_usd": 5, "rate_limits": ["10;w=60"], "blocked": true}' };
    const parsed = limitsConfigFromEnv({ LIMITS_FILE: '/etc/limits.json' }, (path) => files[path]!);
    assert.deepEqual(parsed.defaults, {
      monthlyBudgetNanoUsd: 5_000_000_000,
      rateLimits: [{ quota: 10, windowSeconds: 60, unit: 'request', segment: 'user' }],
      blocked: true,
    });
  });

  const bad: [Record<string, string>, RegExp][] = [
    [{ DEFAULT_MONTHLY_BUDGET_USD: '1e3' }, /^DEFAULT_MONTHLY_BUDGET_USD: must be an amount of USD/],
    [{ DEFAULT_MONTHLY_BUDGET_USD: '-5' }, /^DEFAULT_MONTHLY_BUDGET_USD/],
    [{ DEFAULT_MONTHLY_BUDGET_USD: '2000000' }, /^DEFAULT_MONTHLY_BUDGET_USD: must be at most/],
    [{ DEFAULT_RATE_LIMIT_POLICY: '10;w=10' }, /^DEFAULT_RATE_LIMIT_POLICY: "w" must be/],
    [{ BUDGET_ASSUMED_OUTPUT_TOKENS: '0' }, /^BUDGET_ASSUMED_OUTPUT_TOKENS/],
    [{ LIMITS_FAIL_CLOSED: 'yes' }, /^LIMITS_FAIL_CLOSED: must be true or false/],
    [{ LIMITS_FILE: '/x.json', DEFAULT_MONTHLY_BUDGET_USD: '5' }, /^LIMITS_FILE: set either/],
    [{ LIMITS_FILE: '/missing.json' }, /^LIMITS_FILE: cannot read "\/missing.json"/],
    [{ LIMITS_FILE: '/bad.json' }, /^LIMITS_FILE: \/bad.json: "rate_limits\[0\]" must be a policy string/],
  ];
  for (const [env, message] of bad) {
    it(`stops at start on ${JSON.stringify(env)}`, () => {
      const files: Record<string, string> = { '/bad.json': '{"rate_limits": [5]}', '/x.json': '{}' };
      const read = (path: string) => {
        if (!(path in files)) throw new Error('ENOENT');
        return files[path]!;
      };
      assert.throws(() => limitsConfigFromEnv(env, read), (error: unknown) => error instanceof ConfigError && message.test(error.message));
    });
  }

  it('refuses LIMITS_FILE where there are no files to read', () => {
    assert.throws(() => limitsConfigFromEnv({ LIMITS_FILE: '/x.json' }), /LIMITS_FILE: is not supported here/);
  });
});

describe('parseLimitsDocument', () => {
  it('keeps only the fields given, policies in canonical form', () => {
    assert.deepEqual(parseLimitsDocument({ rate_limits: ['10;s=user;w=60'] }, 'now'), {
      updatedAt: 'now',
      rateLimits: ['10;w=60;u=request;s=user'],
    });
    assert.deepEqual(parseLimitsDocument({ monthly_budget_usd: null, blocked: false }, 'now'), {
      updatedAt: 'now',
      monthlyBudgetNanoUsd: null,
      blocked: false,
    });
  });

  const bad: [unknown, string][] = [
    [[], 'body'],
    [{ budget: 5 }, 'budget'],
    [{ monthly_budget_usd: '5' }, 'monthly_budget_usd'],
    [{ monthly_budget_usd: -1 }, 'monthly_budget_usd'],
    [{ rate_limits: '10;w=60' }, 'rate_limits'],
    [{ rate_limits: ['10;w=60', '10;w=6'] }, 'rate_limits[1]'],
    [{ rate_limits: ['10;w=60,20;w=120'] }, 'rate_limits[0]'],
    [{ blocked: 'yes' }, 'blocked'],
  ];
  for (const [body, param] of bad) {
    it(`refuses ${JSON.stringify(body)} naming ${param}`, () => {
      assert.throws(
        () => parseLimitsDocument(body, 'now'),
        (error: unknown) => error instanceof BadRequestError && error.param === param,
      );
    });
  }
});

describe('effectiveLimits', () => {
  const defaults = { monthlyBudgetNanoUsd: 5, rateLimits: parseRateLimitPolicies('10;w=60'), blocked: false };
  it('replaces the defaults field by field with the user’s own', () => {
    assert.deepEqual(effectiveLimits(defaults, { updatedAt: 'x', blocked: true }), { ...defaults, blocked: true });
    assert.deepEqual(effectiveLimits(defaults, { updatedAt: 'x', monthlyBudgetNanoUsd: null, rateLimits: [] }), {
      monthlyBudgetNanoUsd: null,
      rateLimits: [],
      blocked: false,
    });
    assert.equal(effectiveLimits(defaults, null), defaults);
  });
});

describe('the limiter', () => {
  let store: DuckDbLimitStore;
  let clock: number;
  let limiter: RequestLimiter;
  const use = (c: LimitsConfig, options: { cacheMs?: number } = {}) => {
    limiter = createLimiter({ store, config: c, log: silentLogger, now: () => clock, limitsCacheMs: options.cacheMs ?? 0 });
  };

  before(async () => {
    clock = T0;
    store = await DuckDbLimitStore.open({ path: ':memory:', now: () => clock });
  });
  after(() => store.close());
  beforeEach(async () => {
    // A fresh user per test keeps the counters of one test out of the next.
    clock = T0;
    use(config());
  });

  let userSeq = 0;
  const freshUser = () => `user-${++userSeq}`;

  it('keeps nothing of the admission (body, headers) in the decision it hands back for settling', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    use(config({ monthlyBudgetNanoUsd: 10 * WORST }));
    const userId = freshUser();
    // Made in a function of its own, so that only the weak reference and the decision outlive it here.
    const admit = async (): Promise<{ decision: Extract<AdmissionDecision, { admitted: true }>; ref: WeakRef<Admission> }> => {
      const a = admission({ userId, policy: '5;w=60;u=cents' });
      return { decision: admitted(await limiter.admit(a)), ref: new WeakRef(a) };
    };
    const { decision, ref } = await admit();
    // deref() keeps its object alive until the end of the current job, so collect in jobs of their own.
    for (let i = 0; i < 3; i++) {
      await new Promise((resolve) => setImmediate(resolve));
      gc();
    }
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(ref.deref(), undefined, 'the admission is not kept until the request settles');
    await decision.settle(usageEvent(admission({ userId }), WORST / 2));
  });

  describe('rate-limit windows', () => {
    it('admits up to the quota, then answers 429 with the policy headers and when the window resets', async () => {
      const userId = freshUser();
      const first = admitted(await limiter.admit(admission({ userId, policy: '2;w=60' })));
      assert.deepEqual(first.headers, {
        'Helicone-RateLimit-Limit': '2',
        'Helicone-RateLimit-Remaining': '1',
        'Helicone-RateLimit-Policy': '2;w=60;u=request;s=user',
      });
      assert.equal(admitted(await limiter.admit(admission({ userId, policy: '2;w=60', at: T0 + 1000 }))).headers['Helicone-RateLimit-Remaining'], '0');
      const third = refused(await limiter.admit(admission({ userId, policy: '2;w=60', at: T0 + 15_000 })));
      assert.ok(third.error instanceof RateLimitedError);
      assert.equal(third.error.code, 'rate_limited');
      assert.match(third.error.message, /at most 2 requests per 60 s per user .* resets in 45 s/);
      assert.deepEqual(third.headers, {
        'Helicone-RateLimit-Limit': '2',
        'Helicone-RateLimit-Remaining': '0',
        'Helicone-RateLimit-Policy': '2;w=60;u=request;s=user',
        'retry-after': '45',
      });
    });

    it('keeps the window closed until its last millisecond and opens the next one at its first', async () => {
      const userId = freshUser();
      for (let i = 0; i < 2; i++) admitted(await limiter.admit(admission({ userId, policy: '2;w=60', at: T0 + i })));
      refused(await limiter.admit(admission({ userId, policy: '2;w=60', at: T0 + 59_999 })));
      admitted(await limiter.admit(admission({ userId, policy: '2;w=60', at: T0 + 60_000 })));
    });

    it('counts refused requests nowhere: they do not use up the quota', async () => {
      const userId = freshUser();
      admitted(await limiter.admit(admission({ userId, policy: '1;w=60' })));
      for (let i = 0; i < 3; i++) refused(await limiter.admit(admission({ userId, policy: '1;w=60' })));
      assert.equal(admitted(await limiter.admit(admission({ userId, policy: '1;w=60', at: T0 + 60_000 }))).headers['Helicone-RateLimit-Remaining'], '0');
    });

    it('counts each user apart, and requests without a user in one shared bucket', async () => {
      const [a, b] = [freshUser(), freshUser()];
      admitted(await limiter.admit(admission({ userId: a, policy: '1;w=60' })));
      admitted(await limiter.admit(admission({ userId: b, policy: '1;w=60' })));
      refused(await limiter.admit(admission({ userId: a, policy: '1;w=60' })));
      const anonymous = { userId: null, policy: '1;w=60', at: T0 + 7 * 86_400_000 };
      admitted(await limiter.admit(admission(anonymous)));
      refused(await limiter.admit(admission(anonymous)));
    });

    it('segments by a property value when s names one', async () => {
      const policy = '1;w=60;s=team';
      const at = T0 + 86_400_000;
      admitted(await limiter.admit(admission({ userId: freshUser(), properties: { team: 'red' }, policy, at })));
      // Another user of the same team shares the team's window.
      refused(await limiter.admit(admission({ userId: freshUser(), properties: { team: 'red' }, policy, at })));
      admitted(await limiter.admit(admission({ userId: freshUser(), properties: { team: 'blue' }, policy, at })));
      admitted(await limiter.admit(admission({ userId: freshUser(), properties: {}, policy, at })));
      refused(await limiter.admit(admission({ userId: freshUser(), properties: {}, policy, at })));
    });

    it('counts cost in cents: reserves the worst case, then settles the real cost', async () => {
      const userId = freshUser();
      // Large answers, so that one worst case is cents: 50,000 output tokens of gpt-4o-mini are 3 cents.
      const body = { model: 'gpt-4o-mini', max_tokens: 50_000 };
      const worst = worstCaseCostNano(admission({ body }), PROMPT_TOKENS, 4096)!;
      const quotaCents = Math.ceil((2.5 * worst) / 10_000_000);
      assert.ok(quotaCents * 10_000_000 >= 2 * worst && quotaCents * 10_000_000 < 3 * worst);
      const policy = `${quotaCents};w=3600;u=cents`;
      const first = admission({ userId, policy, body });
      const decision = admitted(await limiter.admit(first));
      assert.equal(decision.headers['Helicone-RateLimit-Remaining'], String(Math.floor((quotaCents * 10_000_000 - worst) / 10_000_000)));
      admitted(await limiter.admit(admission({ userId, policy, body })));
      // Two worst cases reserved: a third does not fit.
      refused(await limiter.admit(admission({ userId, policy, body })));
      // The first one cost almost nothing: settling frees its reservation.
      await decision.settle(usageEvent(first, 1));
      admitted(await limiter.admit(admission({ userId, policy, body })));
    });

    it('refuses a malformed header with a 400 before counting anything', async () => {
      await assert.rejects(
        limiter.admit(admission({ policy: '10;w=5' })),
        (error: unknown) => error instanceof BadRequestError && error.param === 'Helicone-RateLimit-Policy',
      );
    });
  });

  describe('server-side limits', () => {
    it('checks the defaults, and a header cannot lift them', async () => {
      use(config({ rateLimits: parseRateLimitPolicies('1;w=60') }));
      const userId = freshUser();
      admitted(await limiter.admit(admission({ userId, policy: '100;w=60' })));
      const second = refused(await limiter.admit(admission({ userId, policy: '100;w=60' })));
      assert.equal(second.headers['Helicone-RateLimit-Policy'], '1;w=60;u=request;s=user');
      assert.equal(second.error.statusCode, 429);
    });

    it('lets a header tighten them, and reports the policy nearest to its limit', async () => {
      use(config({ rateLimits: parseRateLimitPolicies('100;w=3600') }));
      const userId = freshUser();
      const first = admitted(await limiter.admit(admission({ userId, policy: '2;w=60' })));
      assert.equal(first.headers['Helicone-RateLimit-Policy'], '2;w=60;u=request;s=user');
      admitted(await limiter.admit(admission({ userId, policy: '2;w=60' })));
      const third = refused(await limiter.admit(admission({ userId, policy: '2;w=60' })));
      assert.equal((third.error as RateLimitedError).param, 'Helicone-RateLimit-Policy');
      // Without the header only the default applies: 2 of 100 used this hour.
      const plain = admitted(await limiter.admit(admission({ userId })));
      assert.equal(plain.headers['Helicone-RateLimit-Remaining'], '97');
    });

    it('uses the user’s own limits instead of the defaults', async () => {
      use(config({ rateLimits: parseRateLimitPolicies('1;w=60') }));
      const userId = freshUser();
      await store.putLimits(userId, { rateLimits: ['3;w=60;u=request;s=user'], updatedAt: 'x' });
      for (let i = 0; i < 3; i++) admitted(await limiter.admit(admission({ userId })));
      refused(await limiter.admit(admission({ userId })));
    });

    it('answers 403 to a blocked user, whatever else applies', async () => {
      const userId = freshUser();
      await store.putLimits(userId, { blocked: true, updatedAt: 'x' });
      const decision = refused(await limiter.admit(admission({ userId })));
      assert.ok(decision.error instanceof ForbiddenError);
      assert.equal(decision.error.code, 'user_blocked');
      assert.equal(decision.headers['x-should-retry'], 'false');
    });

    it('applies a change after the cache time when limits are cached', async () => {
      use(config(), { cacheMs: 30_000 });
      const userId = freshUser();
      admitted(await limiter.admit(admission({ userId })));
      await store.putLimits(userId, { blocked: true, updatedAt: 'x' });
      clock = T0 + 29_999;
      admitted(await limiter.admit(admission({ userId })));
      clock = T0 + 30_000;
      refused(await limiter.admit(admission({ userId })));
    });

    const broken: LimitStore = {
      charge: async () => {
        throw new Error('store down');
      },
      adjust: async () => undefined,
      read: async () => [],
      getLimits: async () => null,
      putLimits: async () => undefined,
    };
    const unreadable: LimitStore = { ...broken, getLimits: async () => Promise.reject(new Error('store down')) };

    it('forwards unchecked and logs when the store cannot answer, by default', async () => {
      for (const store of [broken, unreadable]) {
        const lines: string[] = [];
        const log = { ...silentLogger, error: (message: string, fields?: Record<string, unknown>) => void lines.push(JSON.stringify({ message, ...fields })) };
        const open = createLimiter({ store, config: config(), log });
        const request = admission({ policy: '5;w=60' });
        const decision = admitted(await open.admit(request));
        assert.deepEqual(decision.headers, {});
        assert.equal(lines.length, 1);
        assert.match(lines[0]!, /"message":"limits_unavailable".*store down/);
        assert.ok(lines[0]!.includes(request.requestId));
      }
    });

    it('refuses with a 500 when configured to fail closed', async () => {
      for (const store of [broken, unreadable]) {
        const strict = createLimiter({ store, config: config({}, 4096, true), log: silentLogger });
        await assert.rejects(
          strict.admit(admission({ policy: '5;w=60' })),
          (error: unknown) => error instanceof InternalError && error.code === 'limits_unavailable' && error.statusCode === 500,
        );
      }
    });
  });

  describe('monthly budgets', () => {
    it('admits exactly as many worst cases as the budget holds, and says what remains', async () => {
      const userId = freshUser();
      await store.putLimits(userId, { monthlyBudgetNanoUsd: 3 * WORST + WORST / 2, updatedAt: 'x' });
      for (let i = 1; i <= 3; i++) {
        const decision = admitted(await limiter.admit(admission({ userId })));
        assert.equal(decision.headers[BUDGET_REMAINING_HEADER], formatUsd(3 * WORST + WORST / 2 - i * WORST));
      }
      const fourth = refused(await limiter.admit(admission({ userId })));
      assert.ok(fourth.error instanceof RateLimitedError);
      assert.equal(fourth.error.code, 'budget_exceeded');
      assert.equal(fourth.headers[BUDGET_REMAINING_HEADER], formatUsd(WORST / 2));
      assert.equal(fourth.headers['x-should-retry'], 'false');
      assert.equal(fourth.headers['retry-after'], String((Date.UTC(2026, 11, 1) - T0) / 1000));
    });

    it('settles the real cost: what a request did not spend is free again', async () => {
      const userId = freshUser();
      await store.putLimits(userId, { monthlyBudgetNanoUsd: WORST, updatedAt: 'x' });
      const first = admission({ userId });
      const decision = admitted(await limiter.admit(first));
      refused(await limiter.admit(admission({ userId })));
      await decision.settle(usageEvent(first, Math.floor(WORST / 4)));
      const [used] = await store.read([{ kind: 'budget', userId, month: '2026-11' }]);
      assert.equal(used, Math.floor(WORST / 4));
      // A failed upstream call costs nothing and gives everything back.
      const cheap = admission({ userId, body: { model: 'gpt-4o-mini', max_tokens: 10 } });
      const second = admitted(await limiter.admit(cheap));
      await second.settle(usageEvent(cheap, 0));
      assert.equal((await store.read([{ kind: 'budget', userId, month: '2026-11' }]))[0], Math.floor(WORST / 4));
    });

    it('keeps the reservation when the answer has no known price', async () => {
      const userId = freshUser();
      await store.putLimits(userId, { monthlyBudgetNanoUsd: 10 * WORST, updatedAt: 'x' });
      const request = admission({ userId });
      await admitted(await limiter.admit(request)).settle(usageEvent(request, null));
      assert.equal((await store.read([{ kind: 'budget', userId, month: '2026-11' }]))[0], WORST);
    });

    it('reserves the assumed output for a request without max tokens', async () => {
      use(config({}, 1000));
      const userId = freshUser();
      const request = admission({ userId, body: { model: 'gpt-4o-mini' } });
      const expected = worstCaseCostNano(request, PROMPT_TOKENS, 1000)!;
      await store.putLimits(userId, { monthlyBudgetNanoUsd: expected, updatedAt: 'x' });
      assert.equal(admitted(await limiter.admit(request)).headers[BUDGET_REMAINING_HEADER], '0.00');
      refused(await limiter.admit(admission({ userId, body: { model: 'gpt-4o-mini' } })));
    });

    it('refuses a model without a known price when a budget applies, and only then', async () => {
      const request = admission({ userId: freshUser(), requestedModel: 'my-local-llama', body: { model: 'my-local-llama' } });
      admitted(await limiter.admit(request));
      use(config({ monthlyBudgetNanoUsd: 1_000_000_000 }));
      const decision = refused(await limiter.admit(request));
      assert.ok(decision.error instanceof ForbiddenError);
      assert.equal(decision.error.code, 'unpriced_model');
      assert.match(decision.error.message, /"my-local-llama" has no known price/);
    });

    it('starts every UTC month afresh', async () => {
      const userId = freshUser();
      await store.putLimits(userId, { monthlyBudgetNanoUsd: WORST, updatedAt: 'x' });
      const lastInstant = Date.UTC(2026, 10, 30, 23, 59, 59, 999);
      admitted(await limiter.admit(admission({ userId, at: lastInstant })));
      refused(await limiter.admit(admission({ userId, at: lastInstant })));
      admitted(await limiter.admit(admission({ userId, at: lastInstant + 1 })));
    });

    it('keeps the spending of users without a budget, so a budget set later counts it', async () => {
      const userId = freshUser();
      const request = admission({ userId });
      await admitted(await limiter.admit(request)).settle(usageEvent(request, 123_456));
      assert.equal((await store.read([{ kind: 'budget', userId, month: '2026-11' }]))[0], 123_456);
      await store.putLimits(userId, { monthlyBudgetNanoUsd: 123_456 + WORST - 1, updatedAt: 'x' });
      refused(await limiter.admit(admission({ userId })));
    });

    it('does not charge a budget for a request without tokens until it is overspent', async () => {
      const userId = freshUser();
      await store.putLimits(userId, { monthlyBudgetNanoUsd: 0, updatedAt: 'x' });
      const models = admission({ userId, endpoint: 'other', requestedModel: null, body: undefined });
      assert.equal(admitted(await limiter.admit(models)).headers[BUDGET_REMAINING_HEADER], '0.00');
      refused(await limiter.admit(admission({ userId })));
    });
  });
});
