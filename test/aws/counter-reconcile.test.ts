/**
 * The AWS reconcile against dynalite and the Athena fake, whose queries run on DuckDB over event files laid out as
 * the S3 log is (`dt=YYYY-MM-DD/`).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AthenaClient } from '@aws-sdk/client-athena';
import { AthenaHistoryStore } from '../../lambda/aws/athena-history-store';
import { reconcileDynamoDbCounters } from '../../lambda/aws/counter-reconcile';
import { DynamoDbCounterStore } from '../../lambda/aws/dynamodb-counter-store';
import { silentLogger } from '../../lambda/core/log';
import { USAGE_EVENT_VERSION, type UsageEvent } from '../../lambda/core/usage-event';
import { openDuckDb, type DuckDb } from '../../lambda/local/duckdb';
import { eventsRelationSql } from '../../lambda/local/duckdb-history-store';
import { listEventFiles } from '../../lambda/local/event-files';
import { FileEventSink } from '../../lambda/local/file-event-sink';
import { FAKE_CREDENTIALS, TEST_REGION, startDynalite, type LocalDynamoDb } from '../support/dynalite';
import { FakeAthena } from '../support/fake-athena';

function usageEvent(request_id: string, ts: string, user_id: string | null, overrides: Partial<UsageEvent> = {}): UsageEvent {
  return {
    v: USAGE_EVENT_VERSION, request_id, ts, user_id, properties: {}, provider: 'openai', model: 'gpt-4o-mini',
    path: '/v1/chat/completions', method: 'POST', status: 200, stream: false, latency_ms: 10, ttft_ms: 5,
    prompt_tokens: 10, completion_tokens: 5, cached_prompt_tokens: 2, reasoning_tokens: 1, total_tokens: 15,
    cost_usd: 0.000001, cost_nano_usd: 1000, cost_source: 'genai-prices', usage_source: 'provider', error: null, key_id: null,
    ...overrides,
  };
}

let dynamo: LocalDynamoDb;
let athena: FakeAthena;
let duck: DuckDb;
let logDir: string;
let counters: DynamoDbCounterStore;
let history: AthenaHistoryStore;

/** The log: 3 users over two days of the range, one day outside it, errors, a rate-limited and an unpriced request. */
const logged: UsageEvent[] = [];
for (let i = 0; i < 24; i++) {
  const day = i % 2 === 0 ? '2026-05-01' : '2026-05-02';
  logged.push(
    usageEvent(`req-${i}`, `${day}T0${i % 10}:00:00.000Z`, i % 3 === 0 ? null : `user_${i % 3}`, {
      ...(i === 5 && { status: 500, error: 'upstream_500' }),
      ...(i === 7 && { status: 429, error: 'rate_limited', cost_nano_usd: 0, cost_source: 'no_usage' }),
      ...(i === 8 && { cost_nano_usd: null, cost_usd: null, cost_source: 'unknown_model', model: 'mystery' }),
    }),
  );
}
const outside = usageEvent('req-outside', '2026-04-30T12:00:00.000Z', 'user_1');

before(async () => {
  [dynamo, athena, duck] = await Promise.all([startDynalite(), FakeAthena.start(), openDuckDb(':memory:')]);
  logDir = await mkdtemp(join(tmpdir(), 'gateway-reconcile-aws-'));
  const sink = new FileEventSink({ dataDir: logDir });
  await sink.write([...logged, outside, logged[3]!, logged[4]!]); // Firehose delivers at least once: two copies
  await sink.close();
  athena.answer = async (sql, params) => {
    const files = await listEventFiles(logDir);
    return duck.exclusive(async (db) => {
      await db.run('CREATE SCHEMA IF NOT EXISTS usage_db');
      await db.run(`CREATE OR REPLACE VIEW usage_db.usage_events AS ${eventsRelationSql(files)}`);
      return db.all(sql, [...params]);
    });
  };
  counters = new DynamoDbCounterStore({ client: dynamo.client, tableName: dynamo.tableName });
  history = new AthenaHistoryStore({
    athena: new AthenaClient({ endpoint: athena.endpoint, region: TEST_REGION, credentials: FAKE_CREDENTIALS, maxAttempts: 1 }),
    workGroup: 'usage', database: 'usage_db', table: 'usage_events', log: silentLogger, pollInitialMs: 5,
  });
});

after(async () => {
  await Promise.all([dynamo?.close(), athena?.close(), duck?.close()]);
  if (logDir) await rm(logDir, { recursive: true, force: true });
});

function expected(events: readonly UsageEvent[]) {
  return {
    requests: events.length,
    errors: events.filter((e) => e.status < 200 || e.status >= 300 || e.error !== null).length,
    prompt_tokens: events.reduce((n, e) => n + e.prompt_tokens, 0),
    cached_prompt_tokens: events.reduce((n, e) => n + e.cached_prompt_tokens, 0),
    reasoning_tokens: events.reduce((n, e) => n + e.reasoning_tokens, 0),
    total_tokens: events.reduce((n, e) => n + e.total_tokens, 0),
    cost_nano_usd: events.reduce((n, e) => n + (e.cost_nano_usd ?? 0), 0),
    unpriced_requests: events.filter((e) => e.cost_source === 'unknown_model').length,
    rate_limited: events.filter((e) => e.status === 429 && e.error === 'rate_limited').length,
  };
}

function picked(totals: Record<string, unknown> | null | undefined) {
  if (!totals) return null;
  const { requests, errors, prompt_tokens, cached_prompt_tokens, reasoning_tokens, total_tokens, cost_nano_usd, unpriced_requests, rate_limited } = totals;
  return { requests, errors, prompt_tokens, cached_prompt_tokens, reasoning_tokens, total_tokens, cost_nano_usd, unpriced_requests, rate_limited };
}

async function assertTotalsMatchTheLog(): Promise<void> {
  for (const user of [null, 'user_1', 'user_2']) {
    const mine = logged.filter((e) => e.user_id === user);
    const withOutside = user === 'user_1' ? [...mine, outside] : mine;
    for (const day of ['2026-05-01', '2026-05-02']) {
      const detail = await counters.getUser(user, day, '2026-05');
      assert.deepEqual(picked(detail?.day as never), expected(mine.filter((e) => e.ts.startsWith(day))), `${user} ${day}`);
      assert.deepEqual(picked(detail?.month as never), expected(mine), `${user} month`);
      assert.deepEqual(picked(detail?.all as never), expected(withOutside), `${user} all time`);
    }
  }
  const first = logged.filter((e) => e.user_id === 'user_2').map((e) => e.ts).sort();
  const detail = await counters.getUser('user_2', '2026-05-01', '2026-05');
  assert.equal(detail?.month?.first_active, first[0]);
  assert.equal(detail?.month?.last_active, first[first.length - 1]);
}

describe('reconcileDynamoDbCounters', () => {
  it('repairs day, month and all-time totals that missed events or hold events the log lacks, with one Athena query', async () => {
    // The counters saw 18 of the 24 requests (a DynamoDB outage), one phantom request, and the day outside the range.
    await counters.record([...logged.slice(0, 18), outside, usageEvent('phantom', '2026-05-02T23:00:00.000Z', 'user_9')]);
    const queriesBefore = athena.queries.length;
    const report = await reconcileDynamoDbCounters({ history, client: dynamo.client, tableName: dynamo.tableName, from: '2026-05-01', to: '2026-05-02' });
    assert.equal(athena.queries.length - queriesBefore, 1, 'one Athena query');
    const query = athena.queries[athena.queries.length - 1]!;
    assert.deepEqual(query.params, ['2026-05-01', '2026-05-02'], 'values only as parameters');
    assert.match(query.queryString, /row_number\(\) OVER \(PARTITION BY request_id ORDER BY ts\)/);
    assert.equal(report.requests_before, 19);
    assert.equal(report.requests_after, 24);
    assert.equal(report.users_before, 4);
    assert.equal(report.users_after, 3);
    assert.ok(report.changed.some((day) => day.user_id === 'user_9' && day.requests_after === 0));
    await assertTotalsMatchTheLog();
    assert.equal(await counters.getUser('user_9', '2026-05-02', '2026-05').then((u) => u?.all.requests), 0, 'the phantom is taken out of all time');
    const page = await counters.listUsers({ period: 'day', periodKey: '2026-05-02', sort: 'requests', order: 'desc', limit: 10 });
    assert.deepEqual(page.users.map((u) => u.user_id).sort(), [null, 'user_1', 'user_2'].sort(), 'the ranking shows the log\'s users');
  });

  it('changes nothing on a second run', async () => {
    const report = await reconcileDynamoDbCounters({ history, client: dynamo.client, tableName: dynamo.tableName, from: '2026-05-01', to: '2026-05-02' });
    assert.deepEqual(report.changed, []);
    assert.equal(report.requests_before, 24);
    await assertTotalsMatchTheLog();
  });

  it('refuses a reversed range before querying anything', async () => {
    const queriesBefore = athena.queries.length;
    await assert.rejects(
      reconcileDynamoDbCounters({ history, client: dynamo.client, tableName: dynamo.tableName, from: '2026-05-02', to: '2026-05-01' }),
      /`from` must not be after `to`/,
    );
    assert.equal(athena.queries.length, queriesBefore);
  });
});
