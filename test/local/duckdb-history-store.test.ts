import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { appendFile, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BadRequestError, NotFoundError } from '../../lambda/core/errors';
import { usageQuerySql, type SqlDialect } from '../../lambda/core/history-sql';
import type { UsageGroupRow, UsageQuery } from '../../lambda/core/ports';
import type { UsageEvent } from '../../lambda/core/usage-event';
import { openDuckDb } from '../../lambda/local/duckdb';
import { DuckDbHistoryStore, eventsRelationSql } from '../../lambda/local/duckdb-history-store';
import type { HistoryResult } from '../../lambda/core/ports';
import { listEventFiles } from '../../lambda/local/event-files';
import { FileEventSink } from '../../lambda/local/file-event-sink';
import { priced, sampleEvent } from '../support/usage-events';

function usageEvent(request_id: string, ts: string, overrides: Partial<UsageEvent> = {}): UsageEvent {
  return sampleEvent({ request_id, ts, ...overrides });
}


/** Hand-checked: the expected rows below were worked out from these by hand. */
const EVENTS = {
  h1: usageEvent('h1', '2026-05-01T10:00:00.000Z', { ...priced(100, 20, 1000), properties: { team: 'search', env: 'prod' } }),
  h2: usageEvent('h2', '2026-05-01T11:00:00.000Z', { ...priced(10, 5, 50), model: 'gpt-4o-mini', properties: { team: 'search' } }),
  h3: usageEvent('h3', '2026-05-02T09:00:00.000Z', { user_id: 'bob', status: 500, error: 'upstream_500', properties: { team: 'ads' } }),
  h4: usageEvent('h4', '2026-05-02T10:00:00.000Z', {
    ...priced(30, 10, 0),
    user_id: 'bob',
    model: 'mystery-model',
    cost_nano_usd: null,
    cost_usd: null,
    cost_source: 'unknown_model',
  }),
  h5: usageEvent('h5', '2026-05-02T12:00:00.000Z', { ...priced(5, 5, 200), user_id: null, properties: { team: 'search' } }),
  h6: usageEvent('h6', '2026-05-03T08:00:00.000Z', { ...priced(1000, 0, 3000), user_id: 'carol', properties: { team: "o'brien" } }),
  h7: usageEvent('h7', '2026-04-30T23:00:00.000Z', { ...priced(1, 1, 99999) }),
};

const row = (group: string | null, values: Partial<UsageGroupRow>): UsageGroupRow => ({
  group,
  requests: 0,
  errors: 0,
  users: 0,
  prompt_tokens: 0,
  completion_tokens: 0,
  total_tokens: 0,
  cost_nano_usd: 0,
  unpriced_requests: 0,
  ...values,
});

/** Runs a usage query on a store as the metrics API does; the rows carry exactly the UsageGroupRow columns. */
async function runUsage(store: DuckDbHistoryStore, query: UsageQuery): Promise<HistoryResult<UsageGroupRow>> {
  return (await store.execute(usageQuerySql(query, store.dialect, store.source), 0)) as HistoryResult<UsageGroupRow>;
}

const MAY: Pick<UsageQuery, 'from' | 'to' | 'order' | 'limit'> = { from: '2026-05-01', to: '2026-05-03', order: 'desc', limit: 100 };

describe('DuckDbHistoryStore', () => {
  let root: string;
  let dataDir: string;
  let history: DuckDbHistoryStore;

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'duckdb-history-'));
    dataDir = join(root, 'data');
    const sink = new FileEventSink({ dataDir });
    await sink.write(Object.values(EVENTS));
    await sink.close();
    // At-least-once delivery: two requests are in the log a second time, in another segment.
    const retry = new FileEventSink({ dataDir });
    await retry.write([EVENTS.h1, EVENTS.h3]);
    await retry.close();
    // And a writer was killed mid-line.
    const [segment] = await listEventFiles(dataDir, { from: '2026-05-02', to: '2026-05-02' });
    await appendFile(segment.path, JSON.stringify(usageEvent('torn', '2026-05-02T13:00:00.000Z')).slice(0, 80));
    history = await DuckDbHistoryStore.open({ dataDir });
  });
  after(async () => {
    await history.close();
    await rm(root, { recursive: true, force: true });
  });

  const usage = async (query: Partial<UsageQuery>) => {
    const result = await runUsage(history, { ...MAY, groupBy: 'user', sort: 'cost', ...query });
    assert.equal(result.state, 'done');
    return result.state === 'done' ? result.rows : [];
  };

  it('totals per user, counting a request logged twice once and ignoring a torn line', async () => {
    assert.deepEqual(await usage({ groupBy: 'user', sort: 'cost' }), [
      row('carol', { requests: 1, users: 1, prompt_tokens: 1000, total_tokens: 1000, cost_nano_usd: 3000 }),
      row('alice', { requests: 2, users: 1, prompt_tokens: 110, completion_tokens: 25, total_tokens: 135, cost_nano_usd: 1050 }),
      row(null, { requests: 1, users: 0, prompt_tokens: 5, completion_tokens: 5, total_tokens: 10, cost_nano_usd: 200 }),
      row('bob', { requests: 2, errors: 1, users: 1, prompt_tokens: 30, completion_tokens: 10, total_tokens: 40, unpriced_requests: 1 }),
    ]);
  });

  it('totals per model, ties on the sort key broken by the other total', async () => {
    assert.deepEqual(await usage({ groupBy: 'model', sort: 'requests' }), [
      row('gpt-4o', {
        requests: 4,
        errors: 1,
        users: 3,
        prompt_tokens: 1105,
        completion_tokens: 25,
        total_tokens: 1130,
        cost_nano_usd: 4200,
      }),
      row('gpt-4o-mini', { requests: 1, users: 1, prompt_tokens: 10, completion_tokens: 5, total_tokens: 15, cost_nano_usd: 50 }),
      row('mystery-model', { requests: 1, users: 1, prompt_tokens: 30, completion_tokens: 10, total_tokens: 40, unpriced_requests: 1 }),
    ]);
  });

  it('totals per property value, events without the property in a null group', async () => {
    assert.deepEqual(await usage({ groupBy: { property: 'team' }, sort: 'cost' }), [
      row("o'brien", { requests: 1, users: 1, prompt_tokens: 1000, total_tokens: 1000, cost_nano_usd: 3000 }),
      row('search', { requests: 3, users: 1, prompt_tokens: 115, completion_tokens: 30, total_tokens: 145, cost_nano_usd: 1250 }),
      row('ads', { requests: 1, errors: 1, users: 1 }),
      row(null, { requests: 1, users: 1, prompt_tokens: 30, completion_tokens: 10, total_tokens: 40, unpriced_requests: 1 }),
    ]);
    const env = await usage({ groupBy: { property: 'env' }, sort: 'requests' });
    assert.deepEqual(
      env.map((r) => [r.group, r.requests]),
      [
        [null, 5],
        ['prod', 1],
      ],
    );
  });

  it('keeps to the day range, the user asked for, the order and the limit', async () => {
    assert.deepEqual(
      (await usage({ from: '2026-04-30', to: '2026-04-30' })).map((r) => [r.group, r.cost_nano_usd]),
      [['alice', 99999]],
    );
    assert.deepEqual(
      (await usage({ groupBy: 'model', userId: 'alice' })).map((r) => [r.group, r.requests]),
      [
        ['gpt-4o', 1],
        ['gpt-4o-mini', 1],
      ],
    );
    assert.deepEqual(
      (await usage({ order: 'asc' })).map((r) => r.group),
      ['bob', null, 'alice', 'carol'],
    );
    assert.deepEqual(
      (await usage({ limit: 2 })).map((r) => r.group),
      ['carol', 'alice'],
    );
  });

  it('treats an injection attempt through the user id as a user id that matches nothing', async () => {
    assert.deepEqual(await usage({ userId: "alice' OR '1'='1" }), []);
    assert.deepEqual(await usage({ userId: "x'); DROP VIEW events; --" }), []);
    assert.equal((await usage({})).length, 4, 'later queries still work');
  });

  it('rejects a property name with a quote or a semicolon before running anything', async () => {
    for (const property of ["te'am", 'team;DROP', 'a'.repeat(65), '']) {
      await assert.rejects(
        runUsage(history, { ...MAY, groupBy: { property }, sort: 'cost' }),
        (error: unknown) => error instanceof BadRequestError && error.param === 'group_by',
        property,
      );
    }
  });

  it('answers empty when no event was written yet', async () => {
    const empty = await DuckDbHistoryStore.open({ dataDir: join(root, 'nothing-here') });
    try {
      assert.deepEqual(await runUsage(empty, { ...MAY, groupBy: 'user', sort: 'cost' }), { state: 'done', rows: [] });
    } finally {
      await empty.close();
    }
    assert.deepEqual(await usage({ from: '2020-01-01', to: '2020-01-31' }), []);
  });

  it('has no running queries to look up', async () => {
    await assert.rejects(history.queryResult('00000000-0000-0000-0000-000000000000'), NotFoundError);
  });

  it('reads compacted Parquet files next to the NDJSON segments, still counting each request once', async () => {
    const dir = join(root, 'compacted');
    const sink = new FileEventSink({ dataDir: dir });
    await sink.write([EVENTS.h6]);
    await sink.close();
    // A compaction step wrote a day's events (one of them also still in NDJSON) to Parquet.
    const staging = join(root, 'staging');
    const stagingSink = new FileEventSink({ dataDir: staging });
    const dave = usageEvent('h8', '2026-05-03T09:00:00.000Z', { ...priced(1, 1, 7), user_id: 'dave' });
    await stagingSink.write([EVENTS.h6, dave]);
    await stagingSink.close();
    await mkdir(join(dir, 'events', 'dt=2026-05-03'), { recursive: true });
    const db = await openDuckDb(':memory:');
    const parquet = join(dir, 'events', 'dt=2026-05-03', 'compacted-0001.parquet');
    await db.run(
      `COPY (SELECT * EXCLUDE (dt) FROM (${eventsRelationSql(await listEventFiles(staging))})) TO '${parquet}' (FORMAT parquet)`,
    );
    const store = await DuckDbHistoryStore.open({ dataDir: dir, db });
    try {
      const result = await runUsage(store, { ...MAY, groupBy: 'user', sort: 'cost' });
      assert.deepEqual(result.state === 'done' && result.rows.map((r) => [r.group, r.requests, r.cost_nano_usd]), [
        ['carol', 1, 3000],
        ['dave', 1, 7],
      ]);
    } finally {
      await store.close();
      await db.close();
    }
  });
});

describe('usageQuerySql', () => {
  const shapes: UsageQuery[] = [
    { ...MAY, groupBy: 'user', sort: 'cost' },
    { ...MAY, groupBy: 'model', sort: 'requests', order: 'asc', userId: "o'brien" },
    { ...MAY, groupBy: { property: 'Team-1_x' }, sort: 'cost', userId: 'alice', limit: 7 },
  ];
  const dialects: SqlDialect[] = ['duckdb', 'athena'];

  for (const dialect of dialects) {
    for (const query of shapes) {
      it(`passes every value as a parameter, in placeholder order (${dialect}, ${JSON.stringify(query.groupBy)})`, () => {
        const { sql, params } = usageQuerySql(query, dialect, dialect === 'athena' ? '"usage_db"."usage_events"' : 'events');
        assert.equal(sql.split('?').length - 1, params.length);
        assert.ok(!sql.includes(query.from) && !sql.includes(query.to), 'days are not in the SQL text');
        if (query.userId) {
          assert.ok(!sql.includes(query.userId), 'the user id is not in the SQL text');
          assert.ok(params.includes(query.userId));
        }
        if (typeof query.groupBy === 'object') {
          assert.ok(!sql.includes(query.groupBy.property), 'the property name is not in the SQL text');
          assert.ok(params.includes(query.groupBy.property));
        }
        assert.deepEqual(params.slice(dialect === 'duckdb' && typeof query.groupBy === 'object' ? 1 : 0).slice(0, 2), [
          query.from,
          query.to,
        ]);
      });
    }
  }

  it('binds the limit on DuckDB and writes a checked integer on Athena, which takes no parameter there', () => {
    const query: UsageQuery = { ...MAY, groupBy: 'user', sort: 'cost', limit: 25 };
    const duck = usageQuerySql(query, 'duckdb', 'events');
    assert.match(duck.sql, /LIMIT \?$/);
    assert.equal(duck.params[duck.params.length - 1], 25);
    const athena = usageQuerySql(query, 'athena', '"usage_db"."usage_events"');
    assert.match(athena.sql, /LIMIT 25$/);
    assert.ok(!athena.params.includes(25));
  });

  it('rejects malformed days, a reversed range, bad limits and unknown groupings, naming the field', () => {
    const base: UsageQuery = { ...MAY, groupBy: 'user', sort: 'cost' };
    const cases: [Partial<UsageQuery> | Record<string, unknown>, string][] = [
      [{ from: '2026-5-1' }, 'from'],
      [{ to: "2026-05-03' OR 1=1" }, 'to'],
      [{ from: '2026-05-04' }, 'from'],
      [{ limit: 0 }, 'limit'],
      [{ limit: 2.5 }, 'limit'],
      [{ limit: 1_000_000 }, 'limit'],
      [{ sort: 'tokens' }, 'sort'],
      [{ order: 'sideways' }, 'order'],
      [{ groupBy: 'team' }, 'group_by'],
      [{ groupBy: { property: 'a b' } }, 'group_by'],
    ];
    for (const [override, param] of cases) {
      for (const dialect of dialects) {
        assert.throws(
          () => usageQuerySql({ ...base, ...override } as UsageQuery, dialect, 'events'),
          (error: unknown) => error instanceof BadRequestError && error.param === param,
          `${JSON.stringify(override)} on ${dialect}`,
        );
      }
    }
  });

  it('refuses a source relation that is not a plain or quoted identifier', () => {
    const query: UsageQuery = { ...MAY, groupBy: 'user', sort: 'cost' };
    for (const source of ['events; DROP TABLE x', '"a"b"', 'read_json(\'x\')', '', 'a.b.c.d']) {
      assert.throws(() => usageQuerySql(query, 'duckdb', source), /source relation/, source);
    }
    assert.doesNotThrow(() => usageQuerySql(query, 'athena', '"usage-db"."usage_events"'));
  });
});
