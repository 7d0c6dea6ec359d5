/**
 * Rate limits and budgets end to end: the concurrency proof through the proxy core on the local limit store, and
 * the official OpenAI SDK through the local gateway (DuckDB) against the fake upstream.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import OpenAI from 'openai';
import { localConfigFromEnv } from '../../lambda/core/config';
import { limitsConfigFromEnv } from '../../lambda/core/limits';
import { silentLogger } from '../../lambda/core/log';
import { DuckDbLimitStore } from '../../lambda/local/duckdb-limit-store';
import { openLocalGateway, type LocalGateway } from '../../lambda/local/local-gateway';
import { serve, type NodeServer } from '../../lambda/local/node-adapter';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream';
import { runConcurrencyProof } from '../support/limits-proof';

const GATEWAY_KEY = 'gw_limits_key_0123456789abcdef';
const METRICS_KEY = 'mk_limits_key_0123456789abcdef';
/** The longest window: its boundaries are 366 days apart, so no test run straddles one. */
const LONG_WINDOW = 366 * 86_400;
const DEFAULT_POLICY = `50;w=${LONG_WINDOW};u=request;s=user`;

let upstream: FakeUpstream;
let dataDir: string;
let gateway: LocalGateway;
let server: NodeServer;
let openai: OpenAI;

before(async () => {
  upstream = await startFakeUpstream();
  dataDir = await mkdtemp(join(tmpdir(), 'gateway-limits-'));
  const config = localConfigFromEnv({
    UPSTREAM_OPENAI_URL: upstream.url,
    DATA_DIR: dataDir,
    GATEWAY_KEYS: GATEWAY_KEY,
    METRICS_KEYS: METRICS_KEY,
    HOST: '127.0.0.1',
    PORT: '0',
  });
  const limits = limitsConfigFromEnv({ DEFAULT_RATE_LIMIT_POLICY: DEFAULT_POLICY });
  gateway = await openLocalGateway({ config, log: silentLogger, limits });
  server = await serve(gateway.handler, { port: 0, host: '127.0.0.1', log: silentLogger });
  openai = new OpenAI({
    apiKey: 'sk-test-provider-key',
    baseURL: `${server.url}/v1`,
    defaultHeaders: { 'Helicone-Auth': `Bearer ${GATEWAY_KEY}` },
    maxRetries: 0,
  });
});

after(async () => {
  await server.close();
  await gateway.close();
  await upstream.close();
  await rm(dataDir, { recursive: true, force: true });
});

async function metrics(method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
  await server.idle();
  const response = await fetch(`${server.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${METRICS_KEY}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  return { status: response.status, body: await response.json() };
}

const messages = [{ role: 'user' as const, content: 'Hello from the limits test' }];

describe('concurrency proof on the local limit store', () => {
  let store: DuckDbLimitStore;
  before(async () => {
    store = await DuckDbLimitStore.open({ path: ':memory:' });
  });
  after(() => store.close());

  it('forwards exactly k of N parallel requests against a budget that holds k worst cases', async () => {
    const result = await runConcurrencyProof({ store, upstreamUrl: upstream.url, userId: 'budget-crowd', n: 24, k: 7, limit: 'budget' });
    assert.equal(result.forwarded, 7);
    assert.equal(result.statuses.filter((s) => s === 200).length, 7);
    assert.equal(result.statuses.filter((s) => s === 429).length, 17);
    assert.equal(result.events.filter((e) => e.status === 429 && e.error === 'rate_limited').length, 17);
    // Settled: what remains counted is what the seven answers really cost.
    const spent = result.events.reduce((sum, e) => sum + (e.cost_nano_usd ?? 0), 0);
    const [used] = await store.read([{ kind: 'budget', userId: 'budget-crowd', month: new Date().toISOString().slice(0, 7) }]);
    assert.equal(used, spent);
    assert.ok(spent > 0 && spent <= result.budgetNano);
  });

  it('forwards exactly k of N parallel requests against a policy of k requests', async () => {
    const result = await runConcurrencyProof({ store, upstreamUrl: upstream.url, userId: 'window-crowd', n: 30, k: 11, limit: 'window' });
    assert.equal(result.forwarded, 11);
    assert.equal(result.statuses.filter((s) => s === 429).length, 19);
  });
});

describe('limits through the local gateway with the OpenAI SDK', () => {
  it('sends the rate-limit headers of the default policy on every answer', async () => {
    const { response } = await openai.chat.completions
      .create({ model: 'gpt-4o-mini', messages }, { headers: { 'Helicone-User-Id': 'plain-user' } })
      .withResponse();
    assert.equal(response.headers.get('helicone-ratelimit-limit'), '50');
    assert.equal(response.headers.get('helicone-ratelimit-remaining'), '49');
    assert.equal(response.headers.get('helicone-ratelimit-policy'), DEFAULT_POLICY);
    assert.equal(response.headers.get('x-budget-remaining-usd'), null);
  });

  it('surfaces a request over its policy as OpenAI.RateLimitError with the headers, and counts it for the user', async () => {
    const headers = { 'Helicone-User-Id': 'hasty-user', 'Helicone-RateLimit-Policy': `2;w=${LONG_WINDOW}` };
    const first = await openai.chat.completions.create({ model: 'gpt-4o-mini', messages }, { headers }).withResponse();
    assert.equal(first.response.headers.get('helicone-ratelimit-remaining'), '1');
    await openai.chat.completions.create({ model: 'gpt-4o-mini', messages }, { headers });
    upstream.reset();
    const error = await openai.chat.completions.create({ model: 'gpt-4o-mini', messages }, { headers }).then(
      () => assert.fail('the third request was admitted'),
      (e: unknown) => e,
    );
    assert.ok(error instanceof OpenAI.RateLimitError, String(error));
    assert.equal(error.status, 429);
    assert.equal(error.code, 'rate_limited');
    assert.equal(error.headers.get('helicone-ratelimit-limit'), '2');
    assert.equal(error.headers.get('helicone-ratelimit-remaining'), '0');
    assert.equal(error.headers.get('helicone-ratelimit-policy'), `2;w=${LONG_WINDOW};u=request;s=user`);
    assert.ok(Number(error.headers.get('retry-after')) > 0);
    assert.ok(error.headers.get('helicone-id'));
    assert.equal(upstream.requests.length, 0, 'the refused request reached the upstream');

    const { body } = await metrics('GET', '/metrics/users/hasty-user');
    assert.equal(body.all_time.requests, 3);
    assert.equal(body.all_time.rate_limited, 1);
    assert.equal(body.all_time.errors, 1);
  });

  it('answers a malformed policy with a 400 naming what is wrong', async () => {
    const error = await openai.chat.completions
      .create({ model: 'gpt-4o-mini', messages }, { headers: { 'Helicone-RateLimit-Policy': '10;w=10' } })
      .catch((e: unknown) => e);
    assert.ok(error instanceof OpenAI.BadRequestError, String(error));
    assert.equal(error.code, 'invalid_rate_limit_policy');
    assert.equal(error.param, 'Helicone-RateLimit-Policy');
    assert.match(error.message, /"w" must be a whole number of seconds from 60/);
  });

  it('keeps a user within the budget set through the metrics API and says what remains', async () => {
    const set = await metrics('PUT', '/metrics/users/budgeted/limits', { monthly_budget_usd: 0.05 });
    assert.equal(set.status, 200);
    assert.equal(set.body.effective.monthly_budget_usd, 0.05);
    assert.deepEqual(set.body.effective.rate_limits, [DEFAULT_POLICY]);
    const headers = { 'Helicone-User-Id': 'budgeted' };

    // 50,000 output tokens of gpt-4o-mini may cost $0.03: it fits, and the answer says what is left meanwhile.
    const { response } = await openai.chat.completions
      .create({ model: 'gpt-4o-mini', messages, max_tokens: 50_000 }, { headers })
      .withResponse();
    const remaining = Number(response.headers.get('x-budget-remaining-usd'));
    assert.ok(remaining > 0.019 && remaining < 0.02, String(remaining));

    // 100,000 may cost $0.06: more than the whole budget, so it never reaches the provider.
    upstream.reset();
    const error = await openai.chat.completions
      .create({ model: 'gpt-4o-mini', messages, max_tokens: 100_000 }, { headers })
      .catch((e: unknown) => e);
    assert.ok(error instanceof OpenAI.RateLimitError, String(error));
    assert.equal(error.code, 'budget_exceeded');
    assert.equal(error.headers.get('x-should-retry'), 'false');
    assert.ok(Number(error.headers.get('x-budget-remaining-usd')) > 0.049);
    assert.equal(upstream.requests.length, 0);

    const view = await metrics('GET', '/metrics/users/budgeted/limits');
    const spent = (await metrics('GET', '/metrics/users/budgeted')).body.month.cost_usd;
    assert.ok(Math.abs(view.body.budget.used_usd - spent) < 1e-9, `${view.body.budget.used_usd} vs ${spent}`);
    assert.equal((await metrics('GET', '/metrics/users/budgeted')).body.all_time.rate_limited, 1);
  });

  it('refuses a blocked user with 403 (OpenAI.PermissionDeniedError), counted as an error, not as rate limited', async () => {
    await metrics('PUT', '/metrics/users/blocked-user/limits', { blocked: true });
    const error = await openai.chat.completions
      .create({ model: 'gpt-4o-mini', messages }, { headers: { 'Helicone-User-Id': 'blocked-user' } })
      .catch((e: unknown) => e);
    assert.ok(error instanceof OpenAI.PermissionDeniedError, String(error));
    assert.equal(error.code, 'user_blocked');
    const { body } = await metrics('GET', '/metrics/users/blocked-user');
    assert.equal(body.all_time.errors, 1);
    assert.equal(body.all_time.rate_limited, 0);

    await metrics('DELETE', '/metrics/users/blocked-user/limits');
    await openai.chat.completions.create({ model: 'gpt-4o-mini', messages }, { headers: { 'Helicone-User-Id': 'blocked-user' } });
  });
});
