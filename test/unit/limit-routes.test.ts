import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { collectingContext } from '../../lambda/core/handler';
import { StaticKeyStore } from '../../lambda/core/keys';
import { limitRoutes } from '../../lambda/core/limit-routes';
import { NO_DEFAULT_LIMITS, parseRateLimitPolicies } from '../../lambda/core/limits';
import { silentLogger } from '../../lambda/core/log';
import { createMetricsApi } from '../../lambda/core/metrics-api';
import type { FetchHandler } from '../../lambda/core/handler';
import { DuckDbLimitStore } from '../../lambda/local/duckdb-limit-store';
import { RecordingCounters } from '../support/recording-stores';

const METRICS_KEY = 'mk_limits_test_0123456789';
const NOW = Date.UTC(2026, 10, 22, 12);

let store: DuckDbLimitStore;
let api: FetchHandler;

before(async () => {
  store = await DuckDbLimitStore.open({ path: ':memory:', now: () => NOW });
  const config = {
    ...NO_DEFAULT_LIMITS,
    defaults: { monthlyBudgetNanoUsd: 10_000_000_000, rateLimits: parseRateLimitPolicies('100;w=3600'), blocked: false },
  };
  api = createMetricsApi({
    counters: new RecordingCounters(),
    metricsKeys: new StaticKeyStore([METRICS_KEY]),
    log: silentLogger,
    routes: limitRoutes({ store, config, now: () => NOW }),
  });
});
after(() => store.close());

async function call(method: string, path: string, body?: unknown, headers: Record<string, string> = {}) {
  const response = await api(
    new Request(`http://gateway.test${path}`, {
      method,
      headers: { authorization: `Bearer ${METRICS_KEY}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
      ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
    }),
    collectingContext(),
  );
  return { status: response.status, body: (await response.json()) as any };
}

describe('GET /metrics/users/{userId}/limits', () => {
  it('shows the defaults for a user without limits of their own, and the month’s spending', async () => {
    await store.adjust([{ counter: { kind: 'budget', userId: 'carol', month: '2026-11' }, amount: 2_500_000_000 }]);
    const { status, body } = await call('GET', '/metrics/users/carol/limits');
    assert.equal(status, 200);
    assert.deepEqual(body, {
      user_id: 'carol',
      limits: null,
      defaults: { monthly_budget_usd: 10, rate_limits: ['100;w=3600;u=request;s=user'], blocked: false },
      effective: { monthly_budget_usd: 10, rate_limits: ['100;w=3600;u=request;s=user'], blocked: false },
      budget: { month: '2026-11', used_usd: 2.5, remaining_usd: 7.5 },
    });
  });

  it('needs the metrics key', async () => {
    const response = await api(new Request('http://gateway.test/metrics/users/carol/limits'), collectingContext());
    assert.equal(response.status, 401);
  });
});

describe('PUT /metrics/users/{userId}/limits', () => {
  it('sets the user’s own limits, which replace the defaults field by field', async () => {
    const { status, body } = await call('PUT', '/metrics/users/user%40example.com/limits', {
      monthly_budget_usd: 25.5,
      rate_limits: ['10;s=user;w=60'],
    });
    assert.equal(status, 200);
    assert.equal(body.user_id, 'user@example.com');
    assert.deepEqual(body.limits, {
      monthly_budget_usd: 25.5,
      rate_limits: ['10;w=60;u=request;s=user'],
      updated_at: new Date(NOW).toISOString(),
    });
    assert.deepEqual(body.effective, { monthly_budget_usd: 25.5, rate_limits: ['10;w=60;u=request;s=user'], blocked: false });
    assert.equal((await call('GET', '/metrics/users/user%40example.com/limits')).body.effective.monthly_budget_usd, 25.5);
    assert.equal((await store.getLimits('user@example.com'))?.monthlyBudgetNanoUsd, 25_500_000_000);
  });

  it('can lift the default budget (null) and block the user', async () => {
    const { body } = await call('PUT', '/metrics/users/dave/limits', { monthly_budget_usd: null, blocked: true });
    assert.deepEqual(body.effective, { monthly_budget_usd: null, rate_limits: ['100;w=3600;u=request;s=user'], blocked: true });
    assert.equal(body.budget.remaining_usd, null);
  });

  const bad: [unknown, number, string][] = [
    [{ monthly_budget: 5 }, 400, 'monthly_budget'],
    [{ monthly_budget_usd: 'ten' }, 400, 'monthly_budget_usd'],
    [{ rate_limits: ['10;w=30'] }, 400, 'rate_limits[0]'],
    [{ blocked: 1 }, 400, 'blocked'],
    ['[1, 2]', 400, 'body'],
    ['{"blocked": tru', 400, 'body'],
  ];
  for (const [body, status, param] of bad) {
    it(`refuses ${typeof body === 'string' ? body : JSON.stringify(body)} with ${status} naming ${param}`, async () => {
      const answer = await call('PUT', '/metrics/users/erin/limits', body);
      assert.equal(answer.status, status);
      assert.equal(answer.body.error.param, param);
      assert.equal(await store.getLimits('erin'), null);
    });
  }

  it('wants JSON', async () => {
    const answer = await call('PUT', '/metrics/users/erin/limits', 'blocked=true', { 'content-type': 'text/plain' });
    assert.equal(answer.status, 415);
  });

  it('refuses a user id with control characters', async () => {
    const answer = await call('PUT', '/metrics/users/a%0Ab/limits', { blocked: true });
    assert.equal(answer.status, 400);
    assert.equal(answer.body.error.param, 'userId');
  });
});

describe('DELETE /metrics/users/{userId}/limits', () => {
  it('removes the user’s own limits: the defaults apply again', async () => {
    await call('PUT', '/metrics/users/frank/limits', { blocked: true });
    const { status, body } = await call('DELETE', '/metrics/users/frank/limits');
    assert.equal(status, 200);
    assert.equal(body.limits, null);
    assert.equal(body.effective.blocked, false);
    assert.equal(await store.getLimits('frank'), null);
  });

  it('lists the allowed methods on another one', async () => {
    const response = await api(
      new Request('http://gateway.test/metrics/users/frank/limits', { method: 'POST', headers: { authorization: `Bearer ${METRICS_KEY}` } }),
      collectingContext(),
    );
    assert.equal(response.status, 405);
    assert.equal(response.headers.get('allow'), 'GET, PUT, DELETE, HEAD');
  });
});
