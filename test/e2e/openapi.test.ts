/**
 * The whole metrics API of the local gateway against openapi.json: every documented path is called, and every
 * answer (successes, errors, auth failures) must match the document's schema for its status and content type.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { localConfigFromEnv } from '../../lambda/core/config';
import { collectingContext } from '../../lambda/core/handler';
import { silentLogger } from '../../lambda/core/log';
import { USAGE_EVENT_VERSION, type UsageEvent } from '../../lambda/core/usage-event';
import { openLocalGateway, type LocalGateway } from '../../lambda/local/local-gateway';
import { openApi, pathTemplateOf, validate, validateResponse } from '../support/openapi';

const METRICS_KEY = 'mk_openapi_0123456789abcdef';
const TODAY = new Date().toISOString().slice(0, 10);

function event(request_id: string, user_id: string | null, properties: Record<string, string>): UsageEvent {
  return {
    v: USAGE_EVENT_VERSION,
    request_id,
    ts: `${TODAY}T00:00:01.000Z`,
    user_id,
    properties,
    provider: 'openai',
    model: 'gpt-4o-mini',
    path: '/v1/chat/completions',
    method: 'POST',
    status: 200,
    stream: false,
    latency_ms: 250,
    ttft_ms: 100,
    prompt_tokens: 10,
    completion_tokens: 5,
    cached_prompt_tokens: 0,
    reasoning_tokens: 0,
    total_tokens: 15,
    cost_usd: 0.000005,
    cost_nano_usd: 5000,
    cost_source: 'genai-prices',
    usage_source: 'provider',
    error: null,
    key_id: null,
  };
}

describe('openapi.json', () => {
  let dataDir: string;
  let gateway: LocalGateway;
  const templatesSeen = new Set<string>();

  before(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'openapi-'));
    gateway = await openLocalGateway({
      config: localConfigFromEnv({ DATA_DIR: dataDir, METRICS_KEYS: METRICS_KEY, UPSTREAM_OPENAI_URL: 'http://127.0.0.1:9' }),
      log: silentLogger,
    });
    const events = [event('e1', 'alice', { plan: 'pro' }), event('e2', 'alice', {}), event('e3', null, { plan: 'free' })];
    await gateway.sink.write(events);
    await gateway.counters.record(events);
  });
  after(async () => {
    await gateway.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  async function call(path: string, init: RequestInit & { auth?: boolean } = {}) {
    const headers = new Headers(init.headers);
    if (init.auth !== false) headers.set('authorization', `Bearer ${METRICS_KEY}`);
    const response = await gateway.handler(new Request(`http://gw.test${path}`, { ...init, headers }), collectingContext());
    const contentType = response.headers.get('content-type') ?? '';
    const text = await response.text();
    const body = contentType.startsWith('application/json') ? JSON.parse(text) : text;
    const template = path === '/healthz' ? '/healthz' : pathTemplateOf(new URL(path, 'http://gw.test').pathname);
    templatesSeen.add(template);
    const method = (init.method ?? 'GET').toLowerCase();
    // A method the document does not list has no operation: its 405 is checked against the one error schema.
    const errors =
      openApi.paths[template]?.[method] === undefined
        ? validate({ $ref: '#/components/schemas/Error' }, body)
        : validateResponse(method, template, response.status, contentType, body);
    assert.deepEqual(errors, [], `${init.method ?? 'GET'} ${path} → ${response.status}`);
    return { status: response.status, body };
  }

  it('describes the health check, live totals and the history analysis answers', async () => {
    assert.equal((await call('/healthz', { auth: false })).status, 200);
    assert.equal((await call('/metrics/users?period=day')).body.users.length, 2);
    assert.equal((await call('/metrics/users/alice')).body.all_time.requests, 2);
    assert.equal((await call('/metrics/usage?group_by=property:plan')).status, 200);
    assert.equal((await call('/metrics/users/alice/usage?interval=hour&group_by=model')).body.series.length, 1);
    assert.equal((await call('/metrics/users/alice/summary')).body.total_requests, 2);
    assert.equal((await call('/metrics/distribution?metric=requests')).body.users, 1);
    assert.equal((await call('/metrics/anomalies?min_requests=1&min_cost=0')).body.anomalies.length, 1);
    const ndjson = await call('/metrics/export?format=ndjson');
    assert.equal(String(ndjson.body).trimEnd().split('\n').length, 3);
    assert.equal((await call('/metrics/export?format=csv')).status, 200);
    assert.equal((await call('/metrics/users/alice/limits')).status, 200);
  });

  it('describes the errors: 400 naming the parameter, 401 without the key, 404 and 405', async () => {
    assert.equal((await call('/metrics/users/alice/usage?interval=week')).body.error.param, 'interval');
    assert.equal((await call('/metrics/usage', { auth: false })).status, 401);
    assert.equal((await call('/metrics/users/nobody')).status, 404);
    assert.equal((await call(`/metrics/queries/usage.${Buffer.from('{"p":{}}').toString('base64url')}.7f1c2a9e-3b4d-4e5f-8a6b-9c0d1e2f3a4b`)).status, 404, 'nothing runs locally');
    assert.equal((await call('/metrics/distribution', { method: 'DELETE' })).status, 405);
  });

  it('every documented path was called above', () => {
    assert.deepEqual([...templatesSeen].sort(), Object.keys(openApi.paths).sort());
  });

  it('is OpenAPI 3.1 with every $ref resolving', () => {
    assert.equal(openApi.openapi, '3.1.0');
    const refs = JSON.stringify(openApi).match(/"#\/components\/schemas\/[A-Za-z]+"/g) ?? [];
    for (const ref of new Set(refs)) {
      const name = ref.slice('"#/components/schemas/'.length, -1);
      assert.ok(openApi.components.schemas[name], `${ref} resolves`);
    }
    // The validator refuses a schema keyword it does not check, so the whole document is within its subset.
    for (const schema of Object.values(openApi.components.schemas)) assert.doesNotThrow(() => validate(schema, {}));
  });
});
