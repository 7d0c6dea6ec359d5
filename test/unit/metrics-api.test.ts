import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { collectingContext } from '../../lambda/core/handler';
import { StaticKeyStore } from '../../lambda/core/keys';
import { silentLogger } from '../../lambda/core/log';
import { createMetricsApi } from '../../lambda/core/metrics-api';
import type { ListUsersQuery } from '../../lambda/core/ports';
import { RecordingCounters } from '../support/recording-stores';

class QueryCapturingCounters extends RecordingCounters {
  lastQuery: ListUsersQuery | undefined;
  override async listUsers(query: ListUsersQuery) {
    this.lastQuery = query;
    return { users: [], nextCursor: null };
  }
}

const NOW = Date.parse('2026-11-22T10:00:00Z');
const METRICS_KEY = 'mk_test_0123456789abcdef';

function api(keys: string[] = []) {
  const counters = new QueryCapturingCounters();
  const handle = createMetricsApi({ counters, metricsKeys: new StaticKeyStore(keys), log: silentLogger, now: () => NOW });
  return {
    counters,
    async get(path: string, init: RequestInit = {}) {
      const response = await handle(new Request(`http://gw.test${path}`, init), collectingContext());
      return { status: response.status, body: (await response.json()) as any, headers: response.headers };
    },
  };
}

describe('GET /metrics/users', () => {
  it('defaults to this month by cost, descending, 50 per page', async () => {
    const a = api();
    const { status, body } = await a.get('/metrics/users');
    assert.equal(status, 200);
    assert.deepEqual(body, { period: 'month', period_key: '2026-11', users: [], next_cursor: null });
    assert.deepEqual(a.counters.lastQuery, { period: 'month', periodKey: '2026-11', sort: 'cost', order: 'desc', limit: 50, cursor: undefined });
  });

  it('passes period, date, sort, order, limit and cursor through', async () => {
    const a = api();
    await a.get('/metrics/users?period=day&date=2026-02-03&sort=last_active&order=asc&limit=7&cursor=abc');
    assert.deepEqual(a.counters.lastQuery, { period: 'day', periodKey: '2026-02-03', sort: 'last_active', order: 'asc', limit: 7, cursor: 'abc' });
  });

  const bad: Array<[string, string]> = [
    ['period=week', 'period'],
    ['date=2026-02-30', 'date'],
    ['date=yesterday', 'date'],
    ['sort=name', 'sort'],
    ['order=up', 'order'],
    ['limit=0', 'limit'],
    ['limit=1001', 'limit'],
    ['limit=ten', 'limit'],
    ['sortby=cost', 'sortby'],
    ['sort=cost&sort=requests', 'sort'],
  ];
  for (const [query, param] of bad) {
    it(`answers 400 naming "${param}" for ?${query}`, async () => {
      const { status, body } = await api().get(`/metrics/users?${query}`);
      assert.equal(status, 400);
      assert.equal(body.error.param, param);
      assert.equal(body.error.type, 'invalid_request_error');
    });
  }
});

describe('routing', () => {
  it('answers JSON 404 for an unknown route and for an unknown user', async () => {
    const a = api();
    assert.equal((await a.get('/metrics/nope')).status, 404);
    const user = await a.get('/metrics/users/someone');
    assert.equal(user.status, 404);
    assert.equal(user.body.error.code, 'unknown_user');
  });

  it('answers JSON 405 with Allow for other methods', async () => {
    const { status, body, headers } = await api().get('/metrics/users', { method: 'DELETE' });
    assert.equal(status, 405);
    assert.equal(headers.get('allow'), 'GET, HEAD');
    assert.equal(body.error.code, 'method_not_allowed');
  });

  it('answers 404 for history routes when no history store is configured', async () => {
    assert.equal((await api().get('/metrics/usage')).status, 404);
  });
});

describe('metrics auth', () => {
  it('requires Authorization: Bearer <metrics key> when METRICS_KEYS is set', async () => {
    const a = api([METRICS_KEY]);
    const missing = await a.get('/metrics/users');
    assert.equal(missing.status, 401);
    assert.equal(missing.body.error.code, 'missing_metrics_key');
    const wrong = await a.get('/metrics/users', { headers: { authorization: 'Bearer mk_wrong_0123456789abcdef' } });
    assert.equal(wrong.status, 401);
    const ok = await a.get('/metrics/users', { headers: { authorization: `Bearer ${METRICS_KEY}` } });
    assert.equal(ok.status, 200);
  });

  it('does not accept a gateway key in Helicone-Auth', async () => {
    const { status } = await api([METRICS_KEY]).get('/metrics/users', { headers: { 'helicone-auth': `Bearer ${METRICS_KEY}` } });
    assert.equal(status, 401);
  });
});
