import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { AthenaClient } from '@aws-sdk/client-athena';
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { DuckDBInstance, type DuckDBConnection } from '@duckdb/node-api';
import { Parser } from 'node-sql-parser';
import {
  AthenaHistoryStore,
  MAX_EXECUTION_PARAMETER_LENGTH,
  toExecutionParameter,
  type AthenaHistoryStoreOptions,
} from '../../lambda/aws/athena-history-store';
import { BadRequestError, NotFoundError, UpstreamError } from '../../lambda/core/errors';
import {
  anomaliesSql,
  distributionSql,
  exportSql,
  userSeriesSql,
  userSummarySql,
  usageQuerySql,
  type SqlStatement,
} from '../../lambda/core/history-sql';
import { createLogger } from '../../lambda/core/log';
import type { UsageQuery } from '../../lambda/core/ports';
import { FakeS3 } from '../support/fake-s3';
import { FakeAthena, countPlaceholders, parseExecutionParameter, type FakeAthenaTable } from '../support/fake-athena';

const WORK_GROUP = 'usage-gateway';
const DATABASE = 'usage_gateway';
const TABLE = 'usage_events';
const SOURCE = `"${DATABASE}"."${TABLE}"`;
const credentials = { accessKeyId: 'AKIAFAKEFAKEFAKEFAKE', secretAccessKey: 'fake-secret-access-key' };

const HOSTILE = [
  "O'Brien",
  "'; DROP TABLE usage_events; --",
  "''",
  "\\'",
  "a'' OR ''1''=''1",
  '?',
  "line one\n-- not a comment\n' OR 1=1 /*",
  'ünïcødé ✓ 🚀',
  '',
  '"double" quotes',
];

const baseQuery: UsageQuery = {
  from: '2026-03-01',
  to: '2026-03-31',
  groupBy: 'user',
  sort: 'cost',
  order: 'desc',
  limit: 50,
};

const COLUMNS = [
  'group',
  'requests',
  'errors',
  'users',
  'prompt_tokens',
  'completion_tokens',
  'total_tokens',
  'cost_nano_usd',
  'unpriced_requests',
];

function resultRows(count: number, offset = 0): FakeAthenaTable {
  return {
    columns: COLUMNS,
    rows: Array.from({ length: count }, (_, i) => [
      i === 0 && offset === 0 ? null : `user-${offset + i}`,
      10 + i,
      1,
      1,
      100 * i,
      50 * i,
      150 * i,
      BigInt(1_000_000_000_000 + i),
      i % 2,
    ]),
  };
}

describe('toExecutionParameter', () => {
  let duck: DuckDBInstance;
  let db: DuckDBConnection;

  before(async () => {
    duck = await DuckDBInstance.create(':memory:');
    db = await duck.connect();
  });

  after(() => {
    db.closeSync();
    duck.closeSync();
  });

  it('quotes strings with single quotes doubled', () => {
    assert.equal(toExecutionParameter("O'Brien"), "'O''Brien'");
    assert.equal(toExecutionParameter(''), "''");
    assert.equal(toExecutionParameter("''"), "''''''");
    assert.equal(toExecutionParameter('\\'), "'\\'", 'a backslash is not an escape in Trino');
  });

  it('writes numbers as digits', () => {
    assert.equal(toExecutionParameter(50), '50');
    assert.equal(toExecutionParameter(0), '0');
    assert.equal(toExecutionParameter(-3), '-3');
    assert.equal(toExecutionParameter(9_007_199_254_740_991), '9007199254740991');
  });

  it('refuses numbers that have no SQL literal', () => {
    assert.throws(() => toExecutionParameter(Number.NaN), RangeError);
    assert.throws(() => toExecutionParameter(Number.POSITIVE_INFINITY), RangeError);
  });

  it('refuses a value whose literal is longer than Athena accepts', () => {
    assert.equal(toExecutionParameter('x'.repeat(MAX_EXECUTION_PARAMETER_LENGTH - 2)).length, 1024);
    assert.throws(() => toExecutionParameter('x'.repeat(MAX_EXECUTION_PARAMETER_LENGTH - 1)), BadRequestError);
    // Doubling counts: 600 quotes become 1,202 characters.
    assert.throws(() => toExecutionParameter("'".repeat(600)), BadRequestError);
  });

  for (const value of HOSTILE) {
    it(`keeps ${JSON.stringify(value)} one literal that a SQL engine reads back unchanged`, async () => {
      const literal = toExecutionParameter(value);
      assert.equal(parseExecutionParameter(literal), value);
      assert.equal(countPlaceholders(`SELECT ${literal}`), 0, 'no placeholder leaks out of the literal');
      // DuckDB follows the same standard string literal rules as Trino.
      const reader = await db.runAndReadAll(`SELECT ${literal} AS v, 1 AS marker`);
      assert.deepEqual(reader.getRowObjects(), [{ v: value, marker: 1 }]);
    });
  }
});

describe('AthenaHistoryStore', () => {
  let athena: FakeAthena;
  let client: AthenaClient;
  let clock = 0;
  let sleeps: number[] = [];
  let logLines: string[] = [];

  before(async () => {
    athena = await FakeAthena.start();
    client = new AthenaClient({ endpoint: athena.endpoint, region: 'us-east-1', credentials, maxAttempts: 1 });
  });

  after(async () => {
    client.destroy();
    await athena.close();
  });

  beforeEach(() => {
    athena.reset();
    clock = 0;
    sleeps = [];
    logLines = [];
  });

  function store(options: Partial<AthenaHistoryStoreOptions> = {}): AthenaHistoryStore {
    return new AthenaHistoryStore({
      athena: client,
      workGroup: WORK_GROUP,
      database: DATABASE,
      table: TABLE,
      log: createLogger('debug', (l) => logLines.push(l)),
      now: () => clock,
      sleep: async (ms) => {
        sleeps.push(ms);
        clock += ms;
      },
      ...options,
    });
  }

  it('starts the query with its values as quoted execution parameters', async () => {
    const hostile = "o'brien'); DROP TABLE x; --";
    athena.nextOutcome({ state: 'SUCCEEDED', result: resultRows(1) });
    const query: UsageQuery = { ...baseQuery, userId: hostile };
    await store().execute(usageQuerySql(query, 'athena', SOURCE), 10_000);

    const expected = usageQuerySql(query, 'athena', SOURCE);
    const [started] = athena.queries;
    assert.ok(started);
    assert.equal(started.queryString, expected.sql);
    assert.deepEqual(started.executionParameters, expected.params.map(toExecutionParameter));
    assert.deepEqual(started.params, expected.params, 'Athena reads back exactly the values the SQL builder bound');
    assert.ok(started.params.includes(hostile));
    assert.ok(started.executionParameters.includes(`'o''brien''); DROP TABLE x; --'`));
    assert.equal(started.workGroup, WORK_GROUP);
    assert.equal(started.database, DATABASE);
    assert.deepEqual(started.resultReuse, {
      ResultReuseByAgeConfiguration: { Enabled: true, MaxAgeInMinutes: 5 },
    });
  });

  it('polls with backoff growing 1.6 times up to the cap', async () => {
    athena.nextOutcome({ state: 'SUCCEEDED', afterPolls: 8, result: resultRows(2) });
    const result = await store().execute(usageQuerySql(baseQuery, 'athena', SOURCE), 60_000);
    assert.equal(result.state, 'done');
    assert.deepEqual(sleeps, [100, 160, 256, 410, 655, 1049, 1678, 2000, 2000]);
    assert.equal(athena.calls.GetQueryExecution, 9);
  });

  it('follows the configured poll bounds', async () => {
    athena.nextOutcome({ state: 'SUCCEEDED', afterPolls: 3, result: resultRows(1) });
    await store({ pollInitialMs: 50, pollMaxMs: 100 }).execute(usageQuerySql(baseQuery, 'athena', SOURCE), 60_000);
    assert.deepEqual(sleeps, [50, 80, 100, 100]);
  });

  it('reads every page of a result and maps the columns to numbers', async () => {
    // 2,500 rows plus the header row: pages of 1,000, 1,000 and 501.
    athena.nextOutcome({ state: 'SUCCEEDED', result: resultRows(2_500) });
    const result = await store().execute(usageQuerySql(baseQuery, 'athena', SOURCE), 10_000);
    assert.equal(athena.calls.GetQueryResults, 3);
    assert.equal(result.state, 'done');
    if (result.state !== 'done') return;
    assert.equal(result.rows.length, 2_500);
    assert.deepEqual(result.rows[0], {
      group: null,
      requests: 10,
      errors: 1,
      users: 1,
      prompt_tokens: 0,
      completion_tokens: 0,
      total_tokens: 0,
      cost_nano_usd: 1_000_000_000_000,
      unpriced_requests: 0,
    });
    assert.equal(result.rows[999]!.group, 'user-999');
    assert.equal(result.rows[1_000]!.group, 'user-1000', 'no row is lost or doubled at a page boundary');
    assert.equal(result.rows[2_499]!.group, 'user-2499');
    assert.equal(result.rows[2_499]!.cost_nano_usd, 1_000_000_002_499);
    assert.equal(new Set(result.rows.map((r) => r.group)).size, 2_500);
  });

  it('answers an empty result with no rows', async () => {
    athena.nextOutcome({ state: 'SUCCEEDED', result: { columns: COLUMNS, rows: [] } });
    assert.deepEqual(await store().execute(usageQuerySql(baseQuery, 'athena', SOURCE), 10_000), { state: 'done', rows: [] });
  });

  it('keeps an empty-string group apart from the null group and a NULL apart from 0', async () => {
    athena.nextOutcome({
      state: 'SUCCEEDED',
      result: { columns: COLUMNS, rows: [['', 1, 0, 1, 1, 1, 2, null, 1]] },
    });
    const result = await store().execute(usageQuerySql(baseQuery, 'athena', SOURCE), 10_000);
    assert.equal(result.state, 'done');
    if (result.state !== 'done') return;
    assert.equal(result.rows[0]!.group, '');
    assert.equal(result.rows[0]!.cost_nano_usd, null, 'a NULL sum stays NULL here; the API reads it as 0');
    assert.equal(result.rows[0]!.errors, 0);
  });

  it('raises a 502 with the reason when the query fails', async () => {
    athena.nextOutcome({ state: 'FAILED', afterPolls: 1, reason: 'HIVE_BAD_DATA: malformed Parquet file' });
    await assert.rejects(store().execute(usageQuerySql(baseQuery, 'athena', SOURCE), 10_000), (error: unknown) => {
      assert.ok(error instanceof UpstreamError);
      assert.equal(error.statusCode, 502);
      assert.equal(error.code, 'history_query_failed');
      assert.match(error.message, /HIVE_BAD_DATA: malformed Parquet file/);
      return true;
    });
  });

  it('raises a 502 when the query was cancelled', async () => {
    athena.nextOutcome({ state: 'CANCELLED' });
    await assert.rejects(store().execute(usageQuerySql(baseQuery, 'athena', SOURCE), 10_000), { code: 'history_query_failed' });
  });

  it('answers running with the query id when the wait runs out, then the result once done', async () => {
    athena.nextOutcome({ state: 'RUNNING' });
    const history = store();
    const first = await history.execute(usageQuerySql(baseQuery, 'athena', SOURCE), 1_000);
    assert.equal(first.state, 'running');
    if (first.state !== 'running') return;
    assert.equal(first.queryId, athena.queries[0]!.id);
    assert.equal(sleeps.reduce((a, b) => a + b, 0), 1_000, 'waited exactly the time allowed');

    assert.deepEqual(await history.queryResult(first.queryId), { state: 'running', queryId: first.queryId });
    athena.finish(first.queryId, { state: 'SUCCEEDED', result: resultRows(3) });
    const done = await history.queryResult(first.queryId);
    assert.equal(done.state, 'done');
    if (done.state === 'done') assert.equal(done.rows.length, 3);
  });

  it('answers running at once for a zero wait', async () => {
    athena.nextOutcome({ state: 'RUNNING' });
    const result = await store().execute(usageQuerySql(baseQuery, 'athena', SOURCE), 0);
    assert.equal(result.state, 'running');
    assert.equal(athena.calls.GetQueryExecution, undefined);
  });

  it('raises the failure of a query that failed after the wait ran out', async () => {
    athena.nextOutcome({ state: 'RUNNING' });
    const history = store();
    const first = await history.execute(usageQuerySql(baseQuery, 'athena', SOURCE), 0);
    assert.equal(first.state, 'running');
    if (first.state !== 'running') return;
    athena.finish(first.queryId, { state: 'FAILED', reason: 'Query exhausted resources at this scale factor' });
    await assert.rejects(history.queryResult(first.queryId), {
      code: 'history_query_failed',
      message: /exhausted resources/,
    });
  });

  it('answers 404 for a query id Athena does not know', async () => {
    await assert.rejects(store().queryResult('7f1c2a9e-3b4d-4e5f-8a6b-9c0d1e2f3a4b'), (error: unknown) => {
      assert.ok(error instanceof NotFoundError);
      assert.equal(error.param, 'query_id');
      return true;
    });
    assert.deepEqual(logLines, [], 'an unknown id is a caller mistake, not a fault to log');
  });

  it('answers 404 for a query of another work group', async () => {
    athena.nextOutcome({ state: 'RUNNING' });
    const other = store({ workGroup: 'primary' });
    const started = await other.execute(usageQuerySql(baseQuery, 'athena', SOURCE), 0);
    assert.equal(started.state, 'running');
    if (started.state !== 'running') return;
    await assert.rejects(store().queryResult(started.queryId), NotFoundError);
  });

  it('answers 400 for a malformed query id without calling Athena', async () => {
    for (const id of ['not-a-uuid', '../../etc/passwd', '', '7f1c2a9e-3b4d-4e5f-8a6b-9c0d1e2f3a4b ']) {
      await assert.rejects(store().queryResult(id), (error: unknown) => {
        assert.ok(error instanceof BadRequestError);
        assert.equal(error.statusCode, 400);
        assert.equal(error.param, 'query_id');
        return true;
      });
    }
    assert.equal(athena.calls.GetQueryExecution, undefined);
  });

  it('raises a 502 when Athena cannot be called, and logs no credentials', async () => {
    athena.throttleNext(1);
    await assert.rejects(store().execute(usageQuerySql(baseQuery, 'athena', SOURCE), 10_000), { code: 'history_unavailable', statusCode: 502 });
    const all = logLines.join('\n');
    assert.ok(all.includes('history_call_failed'));
    assert.ok(!all.includes(credentials.secretAccessKey) && !all.includes(credentials.accessKeyId));
    assert.ok(!/AWS4-HMAC-SHA256|Signature=/i.test(all));
  });

  it('types values by the column metadata: numbers for numeric columns, text for the rest', async () => {
    athena.nextOutcome({ state: 'SUCCEEDED', result: { columns: ['group', 'requests', 'ratio'], rows: [['42', 1, 0.5]] } });
    const result = await store().execute(usageQuerySql(baseQuery, 'athena', SOURCE), 10_000);
    assert.deepEqual(result, { state: 'done', rows: [{ group: '42', requests: 1, ratio: 0.5 }] });
  });

  it('raises a 502 for a numeric column that holds no number', async () => {
    athena.nextOutcome({ state: 'SUCCEEDED', result: { columns: ['requests'], rows: [[1], ['x']] } });
    await assert.rejects(store().execute(usageQuerySql(baseQuery, 'athena', SOURCE), 10_000), { code: 'history_result_invalid' });
  });

  it('hands the SQL and the decoded parameters to an answer callback', async () => {
    const seen: unknown[] = [];
    athena.answer = (sql, params) => {
      seen.push(sql, params);
      return resultRows(1);
    };
    const query: UsageQuery = { ...baseQuery, groupBy: 'model', userId: "it's me" };
    const result = await store().execute(usageQuerySql(query, 'athena', SOURCE), 10_000);
    assert.equal(result.state, 'done');
    const expected = usageQuerySql(query, 'athena', SOURCE);
    assert.deepEqual(seen, [expected.sql, expected.params]);
  });

  it('refuses database or table names that would need quoting', () => {
    assert.throws(() => store({ table: 'events" ; DROP' }), TypeError);
    assert.throws(() => store({ database: 'a.b' }), TypeError);
    assert.throws(() => store({ database: 'usage-db' }), TypeError);
  });
});

describe('Athena usage SQL', () => {
  const parser = new Parser();
  const shapes: UsageQuery[] = [
    baseQuery,
    { ...baseQuery, groupBy: 'model', sort: 'requests', order: 'asc', limit: 1 },
    { ...baseQuery, groupBy: { property: 'team' }, userId: "o'brien" },
    { ...baseQuery, groupBy: 'user', userId: 'user-1', from: '2026-01-01', to: '2026-01-01' },
  ];

  /** Replaces the i-th placeholder (outside quotes) with the given literal. */
  function bind(sql: string, literals: readonly string[]): string {
    let i = 0;
    let out = '';
    let quote: string | null = null;
    for (const c of sql) {
      if (quote !== null) {
        if (c === quote) quote = null;
        out += c;
      } else if (c === "'" || c === '"') {
        quote = c;
        out += c;
      } else if (c === '?') {
        out += literals[i++];
      } else {
        out += c;
      }
    }
    assert.equal(i, literals.length, 'one value per placeholder');
    return out;
  }

  /** Paths (object keys from the root) to every string literal whose value is in `values`. */
  function literalPaths(node: unknown, values: ReadonlySet<string>, path: string[] = []): string[][] {
    if (Array.isArray(node)) return node.flatMap((n, i) => literalPaths(n, values, [...path, String(i)]));
    if (node === null || typeof node !== 'object') return [];
    const o = node as Record<string, unknown>;
    if (o.type === 'single_quote_string' && typeof o.value === 'string' && values.has(o.value)) return [path];
    return Object.entries(o).flatMap(([k, v]) => literalPaths(v, values, [...path, k]));
  }

  const window = { from: '2026-03-01', to: '2026-03-31', tzOffsetMinutes: 0 };
  const statements: [string, () => SqlStatement][] = [
    ...shapes.map((query): [string, () => SqlStatement] => [
      `usage ${JSON.stringify(query.groupBy)}${query.userId ? ' for one user' : ''}`,
      () => usageQuerySql(query, 'athena', SOURCE),
    ]),
    ['usage in +05:30', () => usageQuerySql({ ...baseQuery, tzOffsetMinutes: 330 }, 'athena', SOURCE)],
    ['user series by day', () => userSeriesSql({ ...window, userId: "o'brien", interval: 'day' }, 'athena', SOURCE)],
    ['user series by hour per model in +05:30', () => userSeriesSql({ ...window, tzOffsetMinutes: 330, userId: 'u', interval: 'hour', groupBy: 'model' }, 'athena', SOURCE)],
    ['user series by month per property in -08:00', () => userSeriesSql({ ...window, tzOffsetMinutes: -480, userId: 'u', interval: 'month', groupBy: { property: 'team' } }, 'athena', SOURCE)],
    ['user summary', () => userSummarySql({ ...window, userId: 'u' }, 'athena', SOURCE)],
    ['user summary in -03:30', () => userSummarySql({ ...window, tzOffsetMinutes: -210, userId: 'u' }, 'athena', SOURCE)],
    ['cost distribution', () => distributionSql({ ...window, metric: 'cost' }, 'athena', SOURCE)],
    ['requests distribution in +01:00', () => distributionSql({ ...window, tzOffsetMinutes: 60, metric: 'requests' }, 'athena', SOURCE)],
    ['anomalies', () => anomaliesSql({ date: '2026-03-31', tzOffsetMinutes: 0, factor: 3, minRequests: 100, minCostNanoUsd: 1e9, cohortProperty: 'plan' }, 'athena', SOURCE)],
    ['anomalies in +09:00 with a fractional factor', () => anomaliesSql({ date: '2026-03-31', tzOffsetMinutes: 540, factor: 2.5, minRequests: 0, minCostNanoUsd: 0, cohortProperty: 'tier' }, 'athena', SOURCE)],
    ['CSV export for one user', () => exportSql({ from: '2026-03-01', to: '2026-03-02', userId: 'u', format: 'csv' }, 'athena', SOURCE, { propertiesAsJson: true })],
    ['NDJSON export (the SELECT inside UNLOAD)', () => exportSql({ from: '2026-03-01', to: '2026-03-02', format: 'ndjson', tzOffsetMinutes: 60 }, 'athena', SOURCE)],
  ];

  for (const [label, build] of statements) {
    it(`parses as Trino SQL with its parameters bound (${label})`, () => {
      const { sql, params } = build();
      // node-sql-parser 5.4 ships a `trino` grammar (Athena engine 3 is Trino); its `athena` grammar predates
      // Trino functions. Athena binds execution parameters as literals, so the bound statement is what it parses.
      const bound = bind(sql, params.map(toExecutionParameter));
      assert.doesNotThrow(() => parser.astify(bound, { database: 'trino' }), `does not parse:\n${bound}`);
    });

    it(`puts placeholders only in WHERE clauses, as Athena requires (${label})`, () => {
      const { sql, params } = build();
      const sentinels = params.map((_, i) => `__param_${i}__`);
      const ast = parser.astify(bind(sql, sentinels.map((s) => `'${s}'`)), { database: 'trino' });
      const paths = literalPaths(ast, new Set(sentinels));
      assert.equal(paths.length, params.length, 'every placeholder was found in the parsed statement');
      for (const path of paths) assert.ok(path.includes('where'), `placeholder at ${path.join('.')} is outside WHERE`);
    });
  }
});

describe('AthenaHistoryStore exports', () => {
  let athena: FakeAthena;
  let s3: FakeS3;
  let client: AthenaClient;
  let s3Client: S3Client;

  before(async () => {
    athena = await FakeAthena.start();
    s3 = await FakeS3.start();
    client = new AthenaClient({ endpoint: athena.endpoint, region: 'us-east-1', credentials, maxAttempts: 1 });
    s3Client = new S3Client({ endpoint: s3.endpoint, region: 'us-east-1', credentials, forcePathStyle: true });
  });
  after(async () => {
    client.destroy();
    s3Client.destroy();
    await athena.close();
    await s3.close();
  });
  beforeEach(() => athena.reset());

  const store = (options: Partial<AthenaHistoryStoreOptions> = {}) =>
    new AthenaHistoryStore({
      athena: client,
      workGroup: WORK_GROUP,
      database: DATABASE,
      table: TABLE,
      log: createLogger('error', () => undefined),
      sleep: async () => undefined,
      s3: s3Client,
      resultsBucket: 'athena-results',
      ...options,
    });
  const query = { from: '2026-03-01', to: '2026-03-02', format: 'ndjson' as const };

  it('answers running, then the links of every non-empty file the UNLOAD wrote, in name order', async () => {
    athena.nextOutcome({ state: 'RUNNING' });
    const history = store({ linkExpirySeconds: 600 });
    const started = await history.exportEvents(query, 0);
    assert.equal(started.state, 'running');
    if (started.state !== 'running') return;
    const sql = athena.queries[0]!.queryString;
    const prefix = /TO 's3:\/\/athena-results\/(results\/exports\/[0-9a-f-]{36}\/)'/.exec(sql)?.[1];
    assert.ok(prefix, sql);
    assert.equal(athena.queries[0]!.resultReuse, undefined, 'an UNLOAD never reuses an old result: its files would be gone');
    assert.deepEqual(await history.exportResult(started.queryId), { state: 'running', queryId: started.queryId });

    for (const [key, body] of [[`${prefix}b`, '{"x":2}\n'], [`${prefix}a`, '{"x":1}\n'], [`${prefix}empty`, ''], ['results/exports/other/c', 'no']]) {
      await s3Client.send(new PutObjectCommand({ Bucket: 'athena-results', Key: key, Body: body }));
    }
    athena.finish(started.queryId, { state: 'SUCCEEDED', result: { columns: [], rows: [] } });
    const done = await history.exportResult(started.queryId);
    assert.equal(done.state, 'done');
    if (done.state !== 'done') return;
    assert.deepEqual(done.files.map((f) => [f.key, f.bytes]), [
      [`${prefix}a`, 8],
      [`${prefix}b`, 8],
    ]);
    assert.equal(new URL(done.files[0]!.url).searchParams.get('X-Amz-Expires'), '600');
    assert.equal(await (await fetch(done.files[0]!.url)).text(), '{"x":1}\n');
  });

  it('refuses to hand out links for a query that is not an export, and exports without a results bucket', async () => {
    athena.nextOutcome({ state: 'SUCCEEDED', result: resultRows(1) });
    const history = store();
    await history.execute(usageQuerySql(baseQuery, 'athena', SOURCE), 10_000);
    await assert.rejects(history.exportResult(athena.queries[0]!.id), NotFoundError);
    await assert.rejects(store({ resultsBucket: undefined }).exportEvents(query, 0), { code: 'not_available' });
    assert.equal(athena.queries.length, 1, 'nothing started without a place for the files');
  });
});
