import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { collectingContext } from '../../lambda/core/handler';
import { historyRoutes } from '../../lambda/core/history-routes';
import { StaticKeyStore } from '../../lambda/core/keys';
import { silentLogger } from '../../lambda/core/log';
import { createMetricsApi } from '../../lambda/core/metrics-api';
import type { EventExport, HistoryResult, HistoryRow, HistoryStatement, HistoryStore } from '../../lambda/core/ports';
import { RecordingCounters } from '../support/recording-stores';
import { validateResponse } from '../support/openapi';

/** A store that records statements and answers what the test scripts, running or done. */
class ScriptedHistory implements HistoryStore {
  readonly dialect = 'athena' as const;
  readonly source = '"usage_db"."usage_events"';
  readonly statements: HistoryStatement[] = [];
  answer: HistoryResult<HistoryRow> = { state: 'done', rows: [] };
  results = new Map<string, HistoryResult<HistoryRow>>();

  async execute(statement: HistoryStatement): Promise<HistoryResult<HistoryRow>> {
    this.statements.push(statement);
    return this.answer;
  }
  async queryResult(queryId: string): Promise<HistoryResult<HistoryRow>> {
    return this.results.get(queryId) ?? { state: 'running', queryId };
  }
  async exportEvents(): Promise<EventExport> {
    return { state: 'running', queryId: 'export-1' };
  }
  async exportResult(): Promise<EventExport> {
    return { state: 'done', format: 'csv', compression: 'none', files: [{ url: 'https://s3/x.csv', key: 'x.csv', bytes: null }], expiresAt: '2026-05-22T12:15:00.000Z' };
  }
}

function api(history: HistoryStore) {
  const handle = createMetricsApi({
    counters: new RecordingCounters(),
    metricsKeys: new StaticKeyStore([]),
    log: silentLogger,
    routes: historyRoutes({ history, log: silentLogger, now: () => Date.parse('2026-05-22T12:00:00Z') }),
  });
  return async (path: string) => {
    const response = await handle(new Request(`http://gw.test${path}`), collectingContext());
    return { status: response.status, body: (await response.json()) as any };
  };
}

describe('history routes', () => {
  it('defaults a user series to the last 30 days by day in UTC, the user id a parameter', async () => {
    const history = new ScriptedHistory();
    const { status, body } = await api(history)('/metrics/users/a%40b.c/usage');
    assert.equal(status, 200);
    assert.deepEqual(body, { state: 'done', user_id: 'a@b.c', from: '2026-04-23', to: '2026-05-22', tz: '+00:00', interval: 'day', group_by: null, series: [] });
    const [statement] = history.statements;
    assert.ok(statement!.params.includes('a@b.c') && !statement!.sql.includes('a@b.c'));
    assert.deepEqual(statement!.days, { from: '2026-04-23', to: '2026-05-22' });
  });

  it('reads the partitions a shifted time zone needs, one day beyond the range on its side', async () => {
    const history = new ScriptedHistory();
    await api(history)('/metrics/users/u/summary?from=2026-05-01&to=2026-05-02&tz=%2B05:30');
    await api(history)('/metrics/users/u/summary?from=2026-05-01&to=2026-05-02&tz=-08:00');
    assert.deepEqual(history.statements.map((s) => s.days), [
      { from: '2026-04-30', to: '2026-05-02' },
      { from: '2026-05-01', to: '2026-05-03' },
    ]);
    assert.ok(history.statements[0]!.params.includes('2026-04-30T18:30:00.000Z'), 'the local day starts at 18:30 UTC the day before');
  });

  it('answers 202 with a query id that brings back the same shape, parameters and all', async () => {
    const history = new ScriptedHistory();
    history.answer = { state: 'running', queryId: '7f1c2a9e-3b4d-4e5f-8a6b-9c0d1e2f3a4b' };
    const get = api(history);
    const first = await get('/metrics/distribution?from=2026-05-01&to=2026-05-10&metric=requests');
    assert.equal(first.status, 202);
    assert.deepEqual(validateResponse('get', '/metrics/distribution', 202, 'application/json', first.body), []);
    assert.match(first.body.query_id, /^distribution\.[A-Za-z0-9_-]+\.7f1c2a9e-3b4d-4e5f-8a6b-9c0d1e2f3a4b$/);
    assert.deepEqual(await get(first.body.result_url), { status: 202, body: first.body });

    history.results.set('7f1c2a9e-3b4d-4e5f-8a6b-9c0d1e2f3a4b', {
      state: 'done',
      rows: [{ bin_lower: 5, bin_users: 2, users: 2, total: 11, max_value: 6, p50: 5, p75: 6, p90: 6, p95: 6, p99: 6 }],
    });
    const done = await get(first.body.result_url);
    assert.equal(done.status, 200);
    assert.deepEqual(validateResponse('get', '/metrics/queries/{queryId}', 200, 'application/json', done.body), []);
    assert.deepEqual(done.body, {
      state: 'done',
      from: '2026-05-01',
      to: '2026-05-10',
      tz: '+00:00',
      metric: 'requests',
      unit: 'requests',
      users: 2,
      total: 11,
      p50: 5,
      p75: 6,
      p90: 6,
      p95: 6,
      p99: 6,
      max: 6,
      histogram: [{ lower: 5, upper: 10, users: 2 }],
    });
  });

  it('polls an export to its links', async () => {
    const get = api(new ScriptedHistory());
    const started = await get('/metrics/export?from=2026-05-01&to=2026-05-01&format=csv');
    assert.equal(started.status, 202);
    assert.match(started.body.query_id, /^export\./);
    const done = await get(started.body.result_url);
    assert.deepEqual(done.body, {
      state: 'done',
      format: 'csv',
      compression: 'none',
      files: [{ url: 'https://s3/x.csv', bytes: null }],
      expires_at: '2026-05-22T12:15:00.000Z',
    });
  });

  it('refuses a forged or mangled query id with a 400 naming query_id', async () => {
    const get = api(new ScriptedHistory());
    const meta = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
    for (const id of [
      'usage',
      `bogus.${meta({ p: {} })}.x`,
      'usage.!!!.x',
      `usage.${meta({ p: 'from=x' })}.x`,
      `usage.${meta({ p: { from: 1 } })}.x`,
      `user_usage.${meta({ p: {}, u: 5 })}.x`,
    ]) {
      const { status, body } = await get(`/metrics/queries/${encodeURIComponent(id)}`);
      assert.equal(status, 400, id);
      assert.equal(body.error.param, 'query_id', id);
    }
    // Parameters inside a well-formed id are validated again like the original request's.
    const { status, body } = await get(`/metrics/queries/usage.${meta({ p: { from: '2026-13-01' } })}.x`);
    assert.equal(status, 400);
    assert.equal(body.error.param, 'from');
  });

  it('answers 502 when a result lacks a column its shape reads', async () => {
    const history = new ScriptedHistory();
    history.answer = { state: 'done', rows: [{ group: 'a', requests: 1 }] };
    const { status, body } = await api(history)('/metrics/usage');
    assert.equal(status, 502);
    assert.equal(body.error.code, 'history_result_invalid');
  });

  it('reads a SQL NULL sum as 0 and keeps text groups as text', async () => {
    const history = new ScriptedHistory();
    history.answer = {
      state: 'done',
      rows: [{ group: '007', requests: 2, errors: null, users: 1, prompt_tokens: null, completion_tokens: null, total_tokens: null, cost_nano_usd: null, unpriced_requests: 0 }],
    };
    const { body } = await api(history)('/metrics/usage?group_by=property:team');
    assert.deepEqual(body.groups, [
      { group: '007', requests: 2, errors: 0, users: 1, prompt_tokens: 0, completion_tokens: 0, total_tokens: 0, cost_usd: 0, unpriced_requests: 0 },
    ]);
  });
});
