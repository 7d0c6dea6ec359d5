/**
 * Golden tests of the history analysis API on a small synthetic event log whose answers were worked out by hand
 * (see the comments at each expectation), run through both engines:
 *
 * - duckdb: the DuckDbHistoryStore over the local files (part of the log compacted to Parquet, the rest NDJSON);
 * - athena: the AthenaHistoryStore against the fake Athena, whose answer hook runs the very Athena SQL on DuckDB
 *   over the same files. The Athena dialect differs from DuckDB in four places, translated minimally here:
 *   `element_at(map, key)` (DuckDB's returns a list: `map_extract_value`), `from_iso8601_timestamp` and
 *   `date_format` (macros over DuckDB's cast and `strftime`), `json_format(CAST(m AS JSON))` (a macro over
 *   `to_json`), and the `UNLOAD (…) TO … WITH (…)` wrapper, whose SELECT is run and whose files are put into the
 *   fake S3 as Athena would write them.
 *
 * Every JSON answer is also validated against openapi.json.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AthenaClient } from '@aws-sdk/client-athena';
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { AthenaHistoryStore } from '../../lambda/aws/athena-history-store';
import { collectingContext } from '../../lambda/core/handler';
import { historyRoutes } from '../../lambda/core/history-routes';
import { StaticKeyStore } from '../../lambda/core/keys';
import { silentLogger } from '../../lambda/core/log';
import { createMetricsApi } from '../../lambda/core/metrics-api';
import type { HistoryStore } from '../../lambda/core/ports';
import type { UsageEvent } from '../../lambda/core/usage-event';
import { openDuckDb, type DuckDb } from '../../lambda/local/duckdb';
import { DuckDbHistoryStore, eventsRelationSql, toUsageEvent } from '../../lambda/local/duckdb-history-store';
import { compactEventLog } from '../../lambda/local/event-compaction';
import { listEventFiles } from '../../lambda/local/event-files';
import { FileEventSink } from '../../lambda/local/file-event-sink';
import { RecordingCounters } from '../support/recording-stores';
import { FakeAthena, type FakeAthenaTable } from '../support/fake-athena';
import { FakeS3 } from '../support/fake-s3';
import { pathTemplateOf, validateResponse } from '../support/openapi';
import { priced, sampleEvent } from '../support/usage-events';

const credentials = { accessKeyId: 'AKIAFAKEFAKEFAKEFAKE', secretAccessKey: 'fake-secret-access-key' };
const RESULTS_BUCKET = 'athena-results';

function event(request_id: string, ts: string, user_id: string | null, overrides: Partial<UsageEvent> = {}): UsageEvent {
  return sampleEvent({ request_id, ts, user_id, ...overrides });
}


const two = (n: number) => String(n).padStart(2, '0');

/**
 * The log:
 * - alice (plan pro): 10 requests a day on 05-10…05-19, each 1,000,000 nano-USD; on 05-20, 120 requests of
 *   10,000,000 each (1.2 USD).
 * - bob (plan free): nothing before; on 05-20, 150 requests of 1,000 each.
 * - filler-000…099 (plan free): one free request each on 05-20, so the free cohort has 101 users that day.
 * - carol: five requests c1…c5 on 05-03…05-05 with models, a property, errors and an unpriced model.
 * - duplicates (at-least-once delivery): c2, alice's first five of 05-20 and her first of 05-10 are logged twice.
 */
const CAROL = {
  c1: event('c1', '2026-05-03T23:30:00.000Z', 'carol', { ...priced(100, 50, 2000), latency_ms: 100, properties: { plan: 'free', feature: 'chat' } }),
  c2: event('c2', '2026-05-04T00:30:00.000Z', 'carol', {
    ...priced(10, 5, 100),
    model: 'gpt-4o-mini',
    latency_ms: 300,
    properties: { plan: 'free', feature: 'search' },
  }),
  c3: event('c3', '2026-05-04T10:00:00.000Z', 'carol', { status: 429, error: 'rate_limited', latency_ms: 5, properties: { plan: 'free' } }),
  c4: event('c4', '2026-05-04T11:00:00.000Z', 'carol', {
    status: 500,
    error: 'upstream_500',
    latency_ms: 200,
    properties: { plan: 'free', feature: 'chat' },
  }),
  c5: event('c5', '2026-05-05T09:00:00.000Z', 'carol', {
    ...priced(30, 10, 0),
    model: 'mystery-model',
    cost_nano_usd: null,
    cost_usd: null,
    cost_source: 'unknown_model',
    latency_ms: 400,
    properties: { feature: 'chat' },
  }),
};

function theLog(): { first: UsageEvent[]; again: UsageEvent[] } {
  const first: UsageEvent[] = [...Object.values(CAROL)];
  for (let day = 10; day <= 19; day++) {
    for (let k = 0; k < 10; k++) {
      first.push(event(`a-05${day}-${k}`, `2026-05-${day}T08:${two(k)}:00.000Z`, 'alice', { ...priced(10, 10, 1_000_000), properties: { plan: 'pro' } }));
    }
  }
  for (let k = 0; k < 120; k++) {
    first.push(event(`a-0520-${k}`, `2026-05-20T10:${two(Math.floor(k / 60))}:${two(k % 60)}.000Z`, 'alice', {
      ...priced(100, 100, 10_000_000),
      properties: { plan: 'pro' },
    }));
  }
  for (let k = 0; k < 150; k++) {
    first.push(event(`b-0520-${k}`, `2026-05-20T12:${two(Math.floor(k / 60))}:${two(k % 60)}.000Z`, 'bob', {
      ...priced(1, 1, 1_000),
      properties: { plan: 'free' },
    }));
  }
  for (let k = 0; k < 100; k++) {
    first.push(event(`f-${k}`, `2026-05-20T13:00:${two(k % 60)}.000Z`, `filler-${String(k).padStart(3, '0')}`, { properties: { plan: 'free' } }));
  }
  const again = first.filter((e) => ['c2', 'a-0510-0', 'a-0520-0', 'a-0520-1', 'a-0520-2', 'a-0520-3', 'a-0520-4'].includes(e.request_id));
  return { first, again };
}

/** Runs Athena SQL on DuckDB with the few translations the header describes. */
async function runAthenaSql(db: DuckDb, s3: S3Client, sql: string, params: readonly (string | number)[]): Promise<FakeAthenaTable> {
  const unload = /^UNLOAD \(\n([\s\S]*)\n\) TO 's3:\/\/([^/]+)\/([^']+)' WITH \(format = 'JSON', compression = 'GZIP'\)$/.exec(sql);
  const select = (unload?.[1] ?? sql).replaceAll('element_at(', 'map_extract_value(');
  const rows = await db.all(select, [...params]);
  if (unload !== null) {
    const body = rows.map((row) => JSON.stringify(toUsageEvent(row))).join('\n') + '\n';
    await s3.send(new PutObjectCommand({ Bucket: unload[2], Key: `${unload[3]}20260522_000000_00000_abcde_part-0`, Body: body }));
    return { columns: [], rows: [] };
  }
  return rows.map((row) =>
    Object.fromEntries(Object.entries(row).map(([k, v]) => [k, Array.isArray(v) ? JSON.stringify(v) : v])),
  );
}

interface Answer {
  status: number;
  contentType: string;
  body: any;
  text: string;
}

const ENGINES = ['duckdb', 'athena'] as const;

for (const engine of ENGINES) {
  describe(`history analysis on ${engine}`, () => {
    let root: string;
    let history: HistoryStore;
    let api: ReturnType<typeof createMetricsApi>;
    let athena: FakeAthena | undefined;
    let fakeS3: FakeS3 | undefined;
    let athenaClient: AthenaClient | undefined;
    let s3Client: S3Client | undefined;
    let athenaDb: DuckDb | undefined;

    before(async () => {
      root = await mkdtemp(join(tmpdir(), `history-${engine}-`));
      const dataDir = join(root, 'data');
      const { first, again } = theLog();
      const sink = new FileEventSink({ dataDir });
      await sink.write(first);
      await sink.close();
      const retry = new FileEventSink({ dataDir });
      await retry.write(again);
      await retry.close();
      // Days before 05-15 compacted to Parquet (duplicates dropped there), the rest stays NDJSON with its copies.
      const compactDb = await openDuckDb(':memory:');
      const compacted = await compactEventLog({ dataDir, db: compactDb, before: '2026-05-15' });
      await compactDb.close();
      assert.ok(compacted.days.includes('2026-05-04') && compacted.days.includes('2026-05-10'));

      if (engine === 'duckdb') {
        history = await DuckDbHistoryStore.open({ dataDir, exportPageSize: 2 });
      } else {
        athena = await FakeAthena.start();
        fakeS3 = await FakeS3.start();
        athenaClient = new AthenaClient({ endpoint: athena.endpoint, region: 'us-east-1', credentials, maxAttempts: 1 });
        s3Client = new S3Client({ endpoint: fakeS3.endpoint, region: 'us-east-1', credentials, forcePathStyle: true });
        const db = await openDuckDb(':memory:');
        athenaDb = db;
        await db.run('CREATE SCHEMA usage_gateway');
        await db.run(`CREATE VIEW usage_gateway.usage_events AS ${eventsRelationSql(await listEventFiles(dataDir))}`);
        await db.run('CREATE MACRO from_iso8601_timestamp(s) AS CAST(s AS TIMESTAMP)');
        await db.run('CREATE MACRO date_format(t, f) AS strftime(t, f)');
        await db.run('CREATE MACRO json_format(j) AS CAST(j AS VARCHAR)');
        const s3 = s3Client;
        athena.answer = (sql, params) => runAthenaSql(db, s3, sql, params);
        history = new AthenaHistoryStore({
          athena: athenaClient,
          workGroup: 'usage-gateway',
          database: 'usage_gateway',
          table: 'usage_events',
          log: silentLogger,
          sleep: async () => undefined,
          pollInitialMs: 1,
          s3: s3Client,
          resultsBucket: RESULTS_BUCKET,
        });
      }
      api = createMetricsApi({
        counters: new RecordingCounters(),
        metricsKeys: new StaticKeyStore([]),
        log: silentLogger,
        routes: historyRoutes({ history, log: silentLogger, now: () => Date.parse('2026-05-22T12:00:00Z'), queryWaitMs: 10_000 }),
      });
    });

    after(async () => {
      await history.close?.();
      athenaClient?.destroy();
      s3Client?.destroy();
      await athena?.close();
      await fakeS3?.close();
      await athenaDb?.close();
      await rm(root, { recursive: true, force: true });
    });

    async function get(path: string): Promise<Answer> {
      const response = await api(new Request(`http://gw.test${path}`), collectingContext());
      const contentType = response.headers.get('content-type') ?? '';
      const text = await response.text();
      const body = contentType.startsWith('application/json') ? JSON.parse(text) : undefined;
      if (body !== undefined) {
        const template = pathTemplateOf(new URL(path, 'http://gw.test').pathname);
        assert.deepEqual(validateResponse('get', template, response.status, contentType, body), [], `${path} answers per openapi.json`);
      }
      return { status: response.status, contentType, body, text };
    }

    const point = (bucket: string, values: Record<string, unknown>, group?: string | null) => ({
      bucket,
      ...(group === undefined ? {} : { group }),
      requests: 0,
      errors: 0,
      prompt_tokens: 0,
      completion_tokens: 0,
      total_tokens: 0,
      cost_usd: 0,
      unpriced_requests: 0,
      ...values,
    });

    it("answers a user's daily series, each request once, with nearest-rank latency percentiles", async () => {
      const { status, body } = await get('/metrics/users/carol/usage?from=2026-05-01&to=2026-05-10&interval=day');
      assert.equal(status, 200);
      assert.deepEqual(body, {
        state: 'done',
        user_id: 'carol',
        from: '2026-05-01',
        to: '2026-05-10',
        tz: '+00:00',
        interval: 'day',
        group_by: null,
        series: [
          point('2026-05-03', { requests: 1, prompt_tokens: 100, completion_tokens: 50, total_tokens: 150, cost_usd: 2000 / 1e9, p50_latency_ms: 100, p95_latency_ms: 100 }),
          // c2 (logged twice), c3, c4: latencies 5, 200, 300 → p50 is rank ceil(1.5) = 2, p95 rank ceil(2.85) = 3.
          point('2026-05-04', { requests: 3, errors: 2, prompt_tokens: 10, completion_tokens: 5, total_tokens: 15, cost_usd: 100 / 1e9, p50_latency_ms: 200, p95_latency_ms: 300 }),
          point('2026-05-05', { requests: 1, prompt_tokens: 30, completion_tokens: 10, total_tokens: 40, unpriced_requests: 1, p50_latency_ms: 400, p95_latency_ms: 400 }),
        ],
      });
    });

    it('splits the series by model and by a property value, no value first', async () => {
      const byModel = await get('/metrics/users/carol/usage?from=2026-05-01&to=2026-05-10&group_by=model');
      assert.deepEqual(
        byModel.body.series.map((p: any) => [p.bucket, p.group, p.requests, p.errors, p.p50_latency_ms, p.p95_latency_ms]),
        [
          ['2026-05-03', 'gpt-4o', 1, 0, 100, 100],
          // c3 and c4: latencies 5 and 200 → p50 rank 1, p95 rank ceil(1.9) = 2.
          ['2026-05-04', 'gpt-4o', 2, 2, 5, 200],
          ['2026-05-04', 'gpt-4o-mini', 1, 0, 300, 300],
          ['2026-05-05', 'mystery-model', 1, 0, 400, 400],
        ],
      );
      const byFeature = await get('/metrics/users/carol/usage?from=2026-05-01&to=2026-05-10&group_by=property:Feature');
      assert.equal(byFeature.body.group_by, 'property:feature');
      assert.deepEqual(
        byFeature.body.series.map((p: any) => [p.bucket, p.group, p.requests]),
        [
          ['2026-05-03', 'chat', 1],
          ['2026-05-04', null, 1],
          ['2026-05-04', 'chat', 1],
          ['2026-05-04', 'search', 1],
          ['2026-05-05', 'chat', 1],
        ],
      );
    });

    it('buckets by month, and by hour in a shifted time zone whose days bound the range', async () => {
      const month = await get('/metrics/users/carol/usage?from=2026-05-01&to=2026-05-31&interval=month');
      // Latencies 5, 100, 200, 300, 400: p50 rank ceil(2.5) = 3, p95 rank ceil(4.75) = 5.
      assert.deepEqual(month.body.series, [
        point('2026-05', { requests: 5, errors: 2, prompt_tokens: 140, completion_tokens: 65, total_tokens: 205, cost_usd: 2100 / 1e9, unpriced_requests: 1, p50_latency_ms: 200, p95_latency_ms: 400 }),
      ]);
      // +05:30: the local 05-04 is 05-03T18:30Z to 05-04T18:30Z, which holds c1 (local 05:00) to c4 (local 16:30).
      const hours = await get('/metrics/users/carol/usage?from=2026-05-04&to=2026-05-04&interval=hour&tz=%2B05:30');
      assert.equal(hours.body.tz, '+05:30');
      assert.deepEqual(
        hours.body.series.map((p: any) => [p.bucket, p.requests]),
        [
          ['2026-05-04T05:00', 1],
          ['2026-05-04T06:00', 1],
          ['2026-05-04T15:00', 1],
          ['2026-05-04T16:00', 1],
        ],
      );
      // An unencoded + arrives as a space and is read as the plus it was.
      const plus = await get('/metrics/users/carol/usage?from=2026-05-04&to=2026-05-04&interval=hour&tz=+05:30');
      assert.deepEqual(plus.body.series, hours.body.series);
      const west = await get('/metrics/users/carol/usage?from=2026-05-03&to=2026-05-03&tz=-08:00');
      // -08:00: local 05-03 is 05-03T08:00Z to 05-04T08:00Z: c1 and c2.
      assert.deepEqual(west.body.series.map((p: any) => [p.bucket, p.requests]), [['2026-05-03', 2]]);
    });

    it("sums up a user's range: totals, active days, averages, gateway rate limits and the error rate", async () => {
      const { status, body } = await get('/metrics/users/carol/summary?from=2026-05-01&to=2026-05-10');
      assert.equal(status, 200);
      assert.deepEqual(body, {
        state: 'done',
        user_id: 'carol',
        from: '2026-05-01',
        to: '2026-05-10',
        tz: '+00:00',
        total_requests: 5,
        total_cost: 2100 / 1e9,
        total_prompt_tokens: 140,
        total_completion_tokens: 65,
        total_tokens: 205,
        unpriced_requests: 1,
        active_for: 3,
        first_active: '2026-05-03T23:30:00.000Z',
        last_active: '2026-05-05T09:00:00.000Z',
        average_requests_per_day_active: 5 / 3,
        average_tokens_per_request: 41,
        rate_limited_count: 1,
        error_count: 2,
        error_rate: 0.4,
      });
      // In +05:30 every one of carol's requests falls on the local 05-04 or 05-05.
      const shifted = await get('/metrics/users/carol/summary?from=2026-05-01&to=2026-05-10&tz=%2B05:30');
      assert.equal(shifted.body.active_for, 2);
      const nobody = await get('/metrics/users/nobody/summary?from=2026-05-01&to=2026-05-10');
      assert.equal(nobody.status, 200);
      assert.equal(nobody.body.total_requests, 0);
      assert.equal(nobody.body.first_active, null);
      assert.equal(nobody.body.error_rate, 0);
    });

    it('totals per user and per property over a range, as /metrics/usage always has', async () => {
      const users = await get('/metrics/usage?from=2026-05-01&to=2026-05-19');
      assert.deepEqual(
        users.body.groups.map((g: any) => [g.group, g.requests, g.errors, g.cost_usd]),
        [
          ['alice', 100, 0, 0.1],
          ['carol', 5, 2, 2100 / 1e9],
        ],
      );
      const plans = await get('/metrics/usage?from=2026-05-01&to=2026-05-31&group_by=property:plan&sort=requests');
      // free: bob 150 + fillers 100 + c1…c4; pro: alice 100 + 120; none: c5.
      assert.deepEqual(
        plans.body.groups.map((g: any) => [g.group, g.requests, g.users]),
        [
          ['free', 254, 102],
          ['pro', 220, 1],
          [null, 1, 1],
        ],
      );
    });

    it('gives the distribution of requests across users, with percentiles and a 1-2-5 histogram', async () => {
      const { body } = await get('/metrics/distribution?from=2026-05-20&to=2026-05-20&metric=requests');
      // 102 users: 100 fillers with 1, alice 120, bob 150. Nearest rank: p99 is rank ceil(100.98) = 101 → 120.
      assert.deepEqual(body, {
        state: 'done',
        from: '2026-05-20',
        to: '2026-05-20',
        tz: '+00:00',
        metric: 'requests',
        unit: 'requests',
        users: 102,
        total: 370,
        p50: 1,
        p75: 1,
        p90: 1,
        p95: 1,
        p99: 120,
        max: 150,
        histogram: [
          { lower: 1, upper: 2, users: 100 },
          { lower: 100, upper: 200, users: 2 },
        ],
      });
    });

    it('gives the distribution of cost in USD, free users in the zero bin', async () => {
      const { body } = await get('/metrics/distribution?from=2026-05-20&to=2026-05-20&metric=cost');
      assert.equal(body.unit, 'usd');
      assert.equal(body.total, 1_200_150_000 / 1e9);
      assert.equal(body.p50, 0);
      assert.equal(body.p99, 150_000 / 1e9, 'rank 101 of 100 zeros, bob and alice is bob');
      assert.equal(body.max, 1.2);
      assert.deepEqual(body.histogram, [
        { lower: 0, upper: 1e-9, users: 100 },
        { lower: 100_000 / 1e9, upper: 200_000 / 1e9, users: 1 },
        { lower: 1, upper: 2, users: 1 },
      ]);
    });

    it("flags users far above their own baseline or their cohort's p99, with the rule and the numbers", async () => {
      const { status, body } = await get('/metrics/anomalies?date=2026-05-20');
      assert.equal(status, 200);
      assert.deepEqual(body, {
        state: 'done',
        date: '2026-05-20',
        tz: '+00:00',
        cohort_property: 'plan',
        factor: 3,
        min_requests: 100,
        min_cost: 1,
        baseline_days: 14,
        anomalies: [
          {
            // 10 active days of 10 requests and 4 empty ones: the 7th and 8th of 14 values are 10 and 10.
            user_id: 'alice',
            cohort: 'pro',
            requests: 120,
            cost_usd: 1.2,
            baseline: { days: 14, active_days: 10, requests_median: 10, cost_median_usd: 0.01 },
            cohort_stats: { users: 1, requests_p99: 120, cost_p99_usd: 1.2 },
            rules: [
              { rule: 'baseline', metric: 'requests', value: 120, threshold: 30, baseline_median: 10 },
              { rule: 'baseline', metric: 'cost', value: 1.2, threshold: 0.03, baseline_median: 0.01 },
            ],
          },
          {
            // No history: median 0. Free cohort of 101: p99 is rank ceil(99.99) = 100, a filler's 1 request.
            user_id: 'bob',
            cohort: 'free',
            requests: 150,
            cost_usd: 150_000 / 1e9,
            baseline: { days: 14, active_days: 0, requests_median: 0, cost_median_usd: 0 },
            cohort_stats: { users: 101, requests_p99: 1, cost_p99_usd: 0 },
            rules: [
              { rule: 'baseline', metric: 'requests', value: 150, threshold: 0, baseline_median: 0 },
              { rule: 'cohort_p99', metric: 'requests', value: 150, threshold: 1 },
            ],
          },
        ],
      });
      const strict = await get('/metrics/anomalies?date=2026-05-20&factor=20&min_requests=140&min_cost=5');
      // alice: 120 < 140 requests and 1.2 < 5 USD; bob still beats his cohort's p99.
      assert.deepEqual(
        strict.body.anomalies.map((a: any) => [a.user_id, a.rules.map((r: any) => r.rule)]),
        [['bob', ['baseline', 'cohort_p99']]],
      );
    });

    it('refuses bad parameters with a JSON 400 naming them', async () => {
      const cases: [string, string][] = [
        ['/metrics/users/carol/usage?interval=week', 'interval'],
        ['/metrics/users/carol/usage?from=2026-05-10&to=2026-05-01', 'from'],
        ['/metrics/users/carol/usage?from=2025-01-01&to=2026-05-01', 'to'],
        ['/metrics/users/carol/usage?interval=hour&from=2026-03-01&to=2026-05-01', 'to'],
        ['/metrics/users/carol/usage?group_by=user', 'group_by'],
        ["/metrics/users/carol/usage?group_by=property:te'am", 'group_by'],
        ['/metrics/users/carol/usage?tz=05:30', 'tz'],
        ['/metrics/users/carol/usage?tz=%2B15:00', 'tz'],
        ['/metrics/users/carol/summary?bogus=1', 'bogus'],
        ['/metrics/distribution?metric=tokens', 'metric'],
        ['/metrics/anomalies?date=2026-02-30', 'date'],
        ['/metrics/anomalies?factor=0.5', 'factor'],
        ['/metrics/anomalies?cohort=pl%20an', 'cohort'],
        ['/metrics/export?format=xml', 'format'],
        ['/metrics/export?from=2026-01-01&to=2026-05-01', 'to'],
        ['/metrics/usage?limit=10001', 'limit'],
        ['/metrics/queries/not-a-query-id', 'query_id'],
      ];
      for (const [path, param] of cases) {
        const { status, body } = await get(path);
        assert.equal(status, 400, path);
        assert.equal(body.error.param, param, path);
      }
    });

    if (engine === 'duckdb') {
      it('streams the events of a range as NDJSON, each request once, oldest first, across pages', async () => {
        const { status, contentType, text } = await get('/metrics/export?from=2026-05-01&to=2026-05-10&user_id=carol&format=ndjson');
        assert.equal(status, 200);
        assert.match(contentType, /^application\/x-ndjson/);
        const lines = text.trimEnd().split('\n').map((line) => JSON.parse(line));
        assert.deepEqual(lines, Object.values(CAROL));
      });

      it('streams CSV with a header row, quoting what needs it and properties as JSON', async () => {
        const { contentType, text } = await get('/metrics/export?from=2026-05-03&to=2026-05-04&user_id=carol&format=csv');
        assert.match(contentType, /^text\/csv/);
        const lines = text.split('\r\n');
        assert.equal(lines[0]!.split(',')[1], 'request_id');
        assert.equal(lines.length, 6, 'header, c1…c4 and the final line break');
        assert.equal(
          lines[1],
          '1,c1,2026-05-03T23:30:00.000Z,carol,"{""plan"":""free"",""feature"":""chat""}",openai,gpt-4o,/v1/chat/completions,POST,200,false,100,50,100,50,0,0,150,0.000002,2000,genai-prices,provider,,',
        );
      });
    } else {
      it('answers 202 when the query outlives the wait, and the same body once polled', async () => {
        const direct = await get('/metrics/users/carol/summary?from=2026-05-01&to=2026-05-10');
        athena!.nextOutcome({ state: 'RUNNING' });
        const slow = createMetricsApi({
          counters: new RecordingCounters(),
          metricsKeys: new StaticKeyStore([]),
          log: silentLogger,
          routes: historyRoutes({ history, log: silentLogger, queryWaitMs: 0 }),
        });
        const response = await slow(new Request('http://gw.test/metrics/users/carol/summary?from=2026-05-01&to=2026-05-10'), collectingContext());
        assert.equal(response.status, 202);
        const running = (await response.json()) as any;
        assert.deepEqual(validateResponse('get', '/metrics/users/{userId}/summary', 202, 'application/json', running), []);
        assert.equal(running.result_url, `/metrics/queries/${running.query_id}`);
        const still = await get(running.result_url);
        assert.equal(still.status, 202);
        athena!.finish(athena!.queries.at(-1)!.id);
        const done = await get(running.result_url);
        assert.equal(done.status, 200);
        assert.deepEqual(done.body, direct.body);
      });

      it('exports NDJSON with UNLOAD into a fresh prefix and answers pre-signed links to its files', async () => {
        const { status, body } = await get('/metrics/export?from=2026-05-01&to=2026-05-10&user_id=carol&format=ndjson');
        assert.equal(status, 200);
        assert.equal(body.format, 'ndjson');
        assert.equal(body.compression, 'gzip');
        assert.equal(body.files.length, 1);
        const url = new URL(body.files[0].url);
        assert.match(url.pathname, /^\/athena-results\/results\/exports\/[0-9a-f-]{36}\/20260522_000000_00000_abcde_part-0$/);
        assert.ok(url.searchParams.get('X-Amz-Signature'), 'the link is pre-signed');
        assert.equal(url.searchParams.get('X-Amz-Expires'), '900');
        const lines = (await (await fetch(url)).text()).trimEnd().split('\n').map((line) => JSON.parse(line));
        assert.deepEqual(lines, Object.values(CAROL));
        assert.deepEqual(athena!.queries.at(-1)!.params.filter((p) => p === 'carol'), ['carol'], 'the user id went as a parameter');
      });

      it("exports CSV as a link to the query's own result file", async () => {
        const { body } = await get('/metrics/export?from=2026-05-01&to=2026-05-10&format=csv');
        const id = athena!.queries.at(-1)!.id;
        assert.equal(body.format, 'csv');
        assert.equal(body.compression, 'none');
        assert.equal(new URL(body.files[0].url).pathname, `/athena-results/${id}.csv`);
      });
    }
  });
}
