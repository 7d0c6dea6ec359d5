/**
 * Live per-user totals in a DuckDB database file in the data directory, the local counterpart of the DynamoDB
 * counter table.
 *
 * Tables:
 * - `user_totals (user_id, period_key, …totals)` with period keys `D#YYYY-MM-DD`, `M#YYYY-MM` and `ALL`. Day rows
 *   are the base: month and all-time rows are rollups kept in step in the same transaction, and can be recomputed
 *   from the day rows ({@link DuckDbCounterStore.rebuildFrom}).
 * - `model_totals (user_id, period_key, model, …)` with `D#…` and `ALL` keys, the same way.
 * - `recorded_requests (request_id PRIMARY KEY, ts)`: the requests already counted, so a retried `record()` counts
 *   once. Kept for {@link RECORDED_REQUEST_RETENTION_MS} after the request's time.
 *
 * `record()` only queues; a background flush applies everything queued in one transaction every ~50 ms (sooner
 * when the queue is large) and settles each caller's promise with the outcome of the transaction holding its
 * events.
 */
import { BadRequestError } from '../core/errors';
import { silentLogger, describeError, type Logger } from '../core/log';
import type {
  CounterStore,
  ListUsersQuery,
  ModelTotals,
  UsageTotals,
  UserDetail,
  UserPage,
  UserSort,
} from '../core/ports';
import { eventDate, isErrorEvent, isGatewayRateLimited, type UsageEvent } from '../core/usage-event';
import { openDuckDb, type DuckDb, type DuckDbParam, type DuckDbSession, type DuckDbStatements } from './duckdb';

/**
 * Stored in place of a null `user_id` (requests that named no user). User ids never contain control characters, so
 * this cannot be a real user's id.
 */
export const NO_USER_KEY = '\u0000';

/** How long a counted request id is remembered for deduplication, measured from the request's `ts`. */
export const RECORDED_REQUEST_RETENTION_MS = 3 * 24 * 60 * 60 * 1000;

/** Kept as an export of this module for existing callers; the one definition is in core/usage-event. */
export { isGatewayRateLimited };

export interface DuckDbCounterStoreOptions {
  /** Database file (e.g. `${dataDir}/counters.duckdb`) or `:memory:`; ignored when `db` is given. */
  readonly path?: string;
  /** An already open database to share; the store opens its own session on it and leaves it open on close. */
  readonly db?: DuckDb;
  readonly log?: Logger;
  /**
   * Least time between the starts of two transactions. Events queued meanwhile join the next one; an event that
   * arrives after a quiet spell is applied at once.
   * @default 50
   */
  readonly flushIntervalMs?: number;
  /**
   * Queued events that trigger a flush right away.
   * @default 1000
   */
  readonly maxBatchEvents?: number;
  /** Clock for pruning `recorded_requests`. @default Date.now */
  readonly now?: () => number;
}

/** The columns of `staged_events`: one event's contribution to every total. */
const STAGED_COLUMNS = [
  ['seq', 'BIGINT'],
  ['request_id', 'VARCHAR'],
  ['ts', 'VARCHAR'],
  ['day', 'VARCHAR'],
  ['user_key', 'VARCHAR'],
  ['model', 'VARCHAR'],
  ['errors', 'INTEGER'],
  ['prompt_tokens', 'BIGINT'],
  ['completion_tokens', 'BIGINT'],
  ['cached_prompt_tokens', 'BIGINT'],
  ['reasoning_tokens', 'BIGINT'],
  ['total_tokens', 'BIGINT'],
  ['cost_nano_usd', 'BIGINT'],
  ['unpriced', 'INTEGER'],
  ['rate_limited', 'INTEGER'],
] as const;

/** A row of `staged_events`, in {@link STAGED_COLUMNS} order. */
interface StagedRow {
  readonly seq: number;
  readonly request_id: string;
  readonly ts: string;
  readonly day: string;
  readonly user_key: string;
  readonly model: string | null;
  readonly errors: number;
  readonly prompt_tokens: number;
  readonly completion_tokens: number;
  readonly cached_prompt_tokens: number;
  readonly reasoning_tokens: number;
  readonly total_tokens: number;
  readonly cost_nano_usd: number | null;
  readonly unpriced: number;
  readonly rate_limited: number;
}

interface QueuedRecord {
  readonly rows: readonly StagedRow[];
  readonly resolve: () => void;
  readonly reject: (error: unknown) => void;
}

const TOTAL_COLUMNS = [
  'requests',
  'errors',
  'prompt_tokens',
  'completion_tokens',
  'cached_prompt_tokens',
  'reasoning_tokens',
  'total_tokens',
  'cost_nano_usd',
  'unpriced_requests',
  'rate_limited',
] as const;

const MODEL_COLUMNS = ['requests', 'total_tokens', 'cost_nano_usd', 'unpriced_requests'] as const;

const SCHEMA = [
  `CREATE TABLE IF NOT EXISTS user_totals (
    user_id VARCHAR NOT NULL,
    period_key VARCHAR NOT NULL,
    ${TOTAL_COLUMNS.map((c) => `${c} BIGINT NOT NULL`).join(',\n    ')},
    first_active VARCHAR NOT NULL,
    last_active VARCHAR NOT NULL,
    PRIMARY KEY (user_id, period_key)
  )`,
  `CREATE TABLE IF NOT EXISTS model_totals (
    user_id VARCHAR NOT NULL,
    period_key VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    ${MODEL_COLUMNS.map((c) => `${c} BIGINT NOT NULL`).join(',\n    ')},
    PRIMARY KEY (user_id, period_key, model)
  )`,
  'CREATE TABLE IF NOT EXISTS recorded_requests (request_id VARCHAR PRIMARY KEY, ts VARCHAR NOT NULL)',
  // Per connection: the events of the transaction in progress. Empty between transactions.
  `CREATE TEMP TABLE IF NOT EXISTS staged_events (
    ${STAGED_COLUMNS.map(([c, t]) => `${c} ${t}${c === 'model' || c === 'cost_nano_usd' ? '' : ' NOT NULL'}`).join(',\n    ')}
  )`,
];

/**
 * A batch travels as one JSON parameter that DuckDB parses itself: binding each value separately costs far more
 * than the transaction's real work. The structure is a constant of this file.
 */
const STAGED_FROM_JSON = `SELECT unnest(from_json(?, '${JSON.stringify([Object.fromEntries(STAGED_COLUMNS)])}'), recursive := true)`;
const STAGED_ROWS_PER_INSERT = 5000;

/** Sums of staged events per user and period, in user_totals column order. */
const USER_AGGREGATES =
  'count(*), sum(errors), sum(prompt_tokens), sum(completion_tokens), sum(cached_prompt_tokens), ' +
  'sum(reasoning_tokens), sum(total_tokens), coalesce(sum(cost_nano_usd), 0), sum(unpriced), sum(rate_limited), ' +
  'min(ts), max(ts)';
const MODEL_AGGREGATES = 'count(*), sum(total_tokens), coalesce(sum(cost_nano_usd), 0), sum(unpriced)';

/** Sums of stored rows, to roll day rows up into month and all-time rows. */
const USER_ROLLUP = `${TOTAL_COLUMNS.map((c) => `sum(${c})`).join(', ')}, min(first_active), max(last_active)`;
const MODEL_ROLLUP = MODEL_COLUMNS.map((c) => `sum(${c})`).join(', ');

const USER_UPSERT = `ON CONFLICT (user_id, period_key) DO UPDATE SET
  ${TOTAL_COLUMNS.map((c) => `${c} = ${c} + excluded.${c}`).join(',\n  ')},
  first_active = least(first_active, excluded.first_active),
  last_active = greatest(last_active, excluded.last_active)`;
const MODEL_UPSERT = `ON CONFLICT (user_id, period_key, model) DO UPDATE SET
  ${MODEL_COLUMNS.map((c) => `${c} = ${c} + excluded.${c}`).join(',\n  ')}`;

const SORT_COLUMN: Record<UserSort, string> = {
  cost: 'cost_nano_usd',
  requests: 'requests',
  tokens: 'total_tokens',
  last_active: 'last_active',
};

/** What a page's `nextCursor` encodes: the query it belongs to and the last row's sort key. */
interface UserCursor {
  readonly p: string;
  readonly s: UserSort;
  readonly o: 'asc' | 'desc';
  readonly v: number | string;
  readonly u: string;
}

type TotalsRow = { [K in (typeof TOTAL_COLUMNS)[number]]: number } & {
  user_id: string;
  period_key: string;
  first_active: string;
  last_active: string;
};

/**
 * @example
 * const counters = await DuckDbCounterStore.open({ path: join(dataDir, 'counters.duckdb'), log });
 * await counters.record([event]);            // resolves once the totals include the event
 * const page = await counters.listUsers({ period: 'month', periodKey: '2026-11', sort: 'cost', order: 'desc', limit: 50 });
 */
export class DuckDbCounterStore implements CounterStore {
  private queue: QueuedRecord[] = [];
  private queuedEvents = 0;
  private timer: NodeJS.Timeout | null = null;
  private flushing: Promise<void> | null = null;
  private lastPrune = 0;
  /** `performance.now()` when the last transaction started; -Infinity before the first. */
  private lastFlushAt = Number.NEGATIVE_INFINITY;
  private closed = false;

  private constructor(
    private readonly session: DuckDbSession,
    private readonly ownedDb: DuckDb | null,
    private readonly log: Logger,
    private readonly flushIntervalMs: number,
    private readonly maxBatchEvents: number,
    private readonly now: () => number,
  ) {}

  /** Opens the store, creating its tables when missing. */
  static async open(options: DuckDbCounterStoreOptions): Promise<DuckDbCounterStore> {
    if (!options.db && !options.path) throw new Error('DuckDbCounterStore needs a path or a db.');
    const ownedDb = options.db ? null : await openDuckDb(options.path as string);
    try {
      const session = await (options.db ?? (ownedDb as DuckDb)).session({ reusePreparedStatements: true });
      const store = new DuckDbCounterStore(
        session,
        ownedDb,
        options.log ?? silentLogger,
        options.flushIntervalMs ?? 50,
        options.maxBatchEvents ?? 1000,
        options.now ?? Date.now,
      );
      for (const statement of SCHEMA) await session.run(statement);
      await store.prune();
      return store;
    } catch (error) {
      await ownedDb?.close();
      throw error;
    }
  }

  /**
   * Queues the events and resolves once a transaction has added them to the totals (rejects with its error, after
   * which nothing of the batch was applied, so the caller may retry). Requests already counted are skipped.
   */
  record(events: readonly UsageEvent[]): Promise<void> {
    if (this.closed) return Promise.reject(new Error('The counter store is closed.'));
    let rows: StagedRow[];
    try {
      rows = events.map((event, seq) => stagedRow(event, seq));
    } catch (error) {
      return Promise.reject(error);
    }
    if (rows.length === 0) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ rows, resolve, reject });
      this.queuedEvents += rows.length;
      if (this.queuedEvents >= this.maxBatchEvents) this.startFlush();
      // A transaction costs milliseconds of CPU whatever its size: start one at most every flushIntervalMs, but
      // at once when the last one is older than that, so a quiet gateway shows each request immediately.
      else this.timer ??= setTimeout(() => this.startFlush(), Math.max(0, this.lastFlushAt + this.flushIntervalMs - performance.now()));
    });
  }

  /** Applies everything queued now instead of at the next tick of the flush timer. */
  async flush(): Promise<void> {
    while (this.queue.length > 0 || this.flushing !== null) {
      if (this.flushing === null) this.startFlush();
      await this.flushing;
    }
  }

  async listUsers(query: ListUsersQuery): Promise<UserPage> {
    if (!Number.isSafeInteger(query.limit) || query.limit < 1) {
      throw new BadRequestError('invalid_limit', '`limit` must be a positive integer.', { param: 'limit' });
    }
    const column = SORT_COLUMN[query.sort];
    if (column === undefined) throw new BadRequestError('invalid_sort', 'Unknown sort.', { param: 'sort' });
    const periodKey = storedPeriodKey(query.period, query.periodKey);
    const direction = query.order === 'asc' ? 'ASC' : 'DESC';
    const comparison = query.order === 'asc' ? '>' : '<';
    const params: DuckDbParam[] = [periodKey];
    let after = '';
    if (query.cursor !== undefined) {
      const cursor = decodeCursor(query.cursor, periodKey, query.sort, query.order);
      after = `AND (${column} ${comparison} ? OR (${column} = ? AND user_id ${comparison} ?))`;
      params.push(cursor.v, cursor.v, cursor.u);
    }
    params.push(query.limit + 1);
    const rows = await this.session.all<TotalsRow>(
      `SELECT * FROM user_totals WHERE period_key = ? ${after}
       ORDER BY ${column} ${direction}, user_id ${direction} LIMIT ?`,
      params,
    );
    const page = rows.slice(0, query.limit);
    const last = page[page.length - 1];
    const nextCursor =
      rows.length > query.limit && last
        ? encodeCursor({ p: periodKey, s: query.sort, o: query.order, v: last[column as keyof TotalsRow], u: last.user_id })
        : null;
    return { users: page.map((row) => ({ user_id: userIdOf(row.user_id), ...totalsOf(row) })), nextCursor };
  }

  async getUser(userId: string | null, day: string, month: string): Promise<UserDetail | null> {
    const userKey = userId ?? NO_USER_KEY;
    const dayKey = storedPeriodKey('day', day);
    const monthKey = storedPeriodKey('month', month);
    const rows = await this.session.all<TotalsRow>(
      `SELECT * FROM user_totals WHERE user_id = ? AND period_key IN (?, ?, 'ALL')`,
      [userKey, dayKey, monthKey],
    );
    const byKey = new Map(rows.map((row) => [row.period_key, totalsOf(row)]));
    const all = byKey.get('ALL');
    if (!all) return null;
    const models = await this.session.all<ModelTotals>(
      `SELECT model, ${MODEL_COLUMNS.join(', ')} FROM model_totals WHERE user_id = ? AND period_key = 'ALL'
       ORDER BY cost_nano_usd DESC, requests DESC, model`,
      [userKey],
    );
    return {
      user_id: userId,
      day: byKey.get(dayKey) ?? null,
      month: byKey.get(monthKey) ?? null,
      all,
      byModel: models.map((m) => ({
        model: m.model,
        requests: m.requests,
        total_tokens: m.total_tokens,
        cost_nano_usd: m.cost_nano_usd,
        unpriced_requests: m.unpriced_requests,
      })),
    };
  }

  /**
   * Recomputes the totals of the days `from`..`to` (inclusive, `YYYY-MM-DD`) from the event log, then the month and
   * all-time rollups from the day rows, in one transaction. Afterwards every total is what recording each logged
   * request exactly once would give. Events outside the range are ignored; duplicates count once.
   * @example await counters.rebuildFrom(readEvents(dataDir, { from, to }), { from, to });
   */
  async rebuildFrom(events: AsyncIterable<UsageEvent>, range: { readonly from: string; readonly to: string }): Promise<void> {
    const { from, to } = range;
    if (!/^\d{4}-\d{2}-\d{2}$/.test(from) || !/^\d{4}-\d{2}-\d{2}$/.test(to) || from > to) {
      throw new RangeError(`Invalid rebuild range ${from}..${to}`);
    }
    await this.flush();
    await this.session.transaction(async (db) => {
      let buffer: StagedRow[] = [];
      let seq = 0;
      for await (const event of events) {
        const day = eventDate(event);
        if (day < from || day > to) continue;
        buffer.push(stagedRow(event, seq++));
        if (buffer.length >= STAGED_ROWS_PER_INSERT) {
          await stage(db, buffer);
          buffer = [];
        }
      }
      await stage(db, buffer);
      // The log holds a request more than once after a retried delivery: keep its first copy.
      await db.run(
        'DELETE FROM staged_events WHERE seq NOT IN (SELECT min(seq) FROM staged_events GROUP BY request_id)',
      );

      const dayRange = [`D#${from}`, `D#${to}`];
      await db.run('DELETE FROM user_totals WHERE period_key BETWEEN ? AND ?', dayRange);
      await db.run('DELETE FROM model_totals WHERE period_key BETWEEN ? AND ?', dayRange);
      await applyStagedEvents(db, ['day']);

      // Rollups: every month the range touches, and all time, as the sum of their day rows.
      const monthRange = [from.slice(0, 7), to.slice(0, 7)];
      await db.run(
        "DELETE FROM user_totals WHERE period_key LIKE 'M#%' AND substr(period_key, 3) BETWEEN ? AND ?",
        monthRange,
      );
      await db.run(
        `INSERT INTO user_totals SELECT user_id, 'M#' || substr(period_key, 3, 7), ${USER_ROLLUP}
         FROM user_totals WHERE period_key LIKE 'D#%' AND substr(period_key, 3, 7) BETWEEN ? AND ?
         GROUP BY user_id, substr(period_key, 3, 7)`,
        monthRange,
      );
      await db.run("DELETE FROM user_totals WHERE period_key = 'ALL'");
      await db.run(
        `INSERT INTO user_totals SELECT user_id, 'ALL', ${USER_ROLLUP}
         FROM user_totals WHERE period_key LIKE 'D#%' GROUP BY user_id`,
      );
      await db.run("DELETE FROM model_totals WHERE period_key = 'ALL'");
      await db.run(
        `INSERT INTO model_totals SELECT user_id, 'ALL', model, ${MODEL_ROLLUP}
         FROM model_totals WHERE period_key LIKE 'D#%' GROUP BY user_id, model`,
      );

      // Remember the recent requests, so a retried record() of one of them does not count it again.
      await db.run(
        `INSERT INTO recorded_requests SELECT request_id, ts FROM staged_events WHERE ts >= ?
         ON CONFLICT DO NOTHING`,
        [this.pruneCutoff()],
      );
      await db.run('DELETE FROM staged_events');
    });
    this.log.info('counters rebuilt from the event log', { from, to });
  }

  /** Applies what is queued, then closes the store (and the database, when the store opened it). */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.flush();
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.session.close();
    await this.ownedDb?.close();
  }

  private startFlush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.flushing !== null) return; // the running flush picks the queue up when it ends
    this.lastFlushAt = performance.now();
    this.flushing = this.flushLoop().finally(() => {
      this.flushing = null;
    });
  }

  private async flushLoop(): Promise<void> {
    // One batch per transaction: events queued while it runs wait for the next start (see record()).
    const batch = this.queue;
    this.queue = [];
    this.queuedEvents = 0;
    try {
      await this.apply(batch.flatMap((queued) => queued.rows));
      for (const queued of batch) queued.resolve();
    } catch (error) {
      this.log.error('counter update failed', { error: describeError(error), events: batch.length });
      for (const queued of batch) queued.reject(error);
    }
    if (this.queue.length > 0 && !this.closed) {
      this.timer ??= setTimeout(() => this.startFlush(), Math.max(0, this.lastFlushAt + this.flushIntervalMs - performance.now()));
    }
    if (this.now() - this.lastPrune >= 60 * 60 * 1000) {
      await this.prune().catch((error) => this.log.warn('pruning recorded requests failed', { error: describeError(error) }));
    }
  }

  private apply(rows: readonly StagedRow[]): Promise<void> {
    // A batch may carry the same request twice (a caller's retry racing the first attempt): keep the first.
    const unique = [...new Map(rows.map((row) => [row.request_id, row] as const).reverse()).values()].reverse();
    return this.session.transaction(async (db) => {
      // The primary key decides what is new: conflicting ids were counted by an earlier transaction.
      const fresh = await db.all<{ request_id: string }>(
        `INSERT INTO recorded_requests SELECT request_id, ts FROM (${STAGED_FROM_JSON})
         ON CONFLICT DO NOTHING RETURNING request_id`,
        [JSON.stringify(unique)],
      );
      if (fresh.length === 0) return;
      const freshIds = new Set(fresh.map((row) => row.request_id));
      await stage(
        db,
        unique.filter((row) => freshIds.has(row.request_id)),
      );
      await applyStagedEvents(db, ['day', 'month', 'all']);
      await db.run('DELETE FROM staged_events');
    });
  }

  private pruneCutoff(): string {
    return new Date(this.now() - RECORDED_REQUEST_RETENTION_MS).toISOString();
  }

  private async prune(): Promise<void> {
    this.lastPrune = this.now();
    await this.session.run('DELETE FROM recorded_requests WHERE ts < ?', [this.pruneCutoff()]);
  }
}

async function stage(db: DuckDbStatements, rows: readonly StagedRow[]): Promise<void> {
  if (rows.length > 0) await db.run(`INSERT INTO staged_events ${STAGED_FROM_JSON}`, [JSON.stringify(rows)]);
}

/** Adds the staged events to the totals of the given periods (one statement per table, one row per key). */
async function applyStagedEvents(db: DuckDbStatements, periods: readonly ('day' | 'month' | 'all')[]): Promise<void> {
  const keyOf = { day: `'D#' || day`, month: `'M#' || substr(day, 1, 7)`, all: `'ALL'` };
  const keyed = periods.map((p) => `SELECT *, ${keyOf[p]} AS period_key FROM staged_events`).join(' UNION ALL ');
  await db.run(
    `INSERT INTO user_totals
     SELECT user_key, period_key, ${USER_AGGREGATES} FROM (${keyed}) GROUP BY user_key, period_key
     ${USER_UPSERT}`,
  );
  const modelPeriods = periods.filter((p) => p !== 'month');
  const modelKeyed = modelPeriods
    .map((p) => `SELECT *, ${keyOf[p]} AS period_key FROM staged_events WHERE model IS NOT NULL`)
    .join(' UNION ALL ');
  await db.run(
    `INSERT INTO model_totals
     SELECT user_key, period_key, model, ${MODEL_AGGREGATES} FROM (${modelKeyed}) GROUP BY user_key, period_key, model
     ${MODEL_UPSERT}`,
  );
}

/**
 * One event's contribution to the totals. `ts` is normalised to `toISOString()` form so that first/last activity
 * compare correctly as strings. Events without a model count in the user totals but in no model's.
 * @throws TypeError for an event no total can be built from (the caller's bug, not worth a retry).
 */
function stagedRow(event: UsageEvent, seq: number): StagedRow {
  const time = Date.parse(event.ts);
  if (typeof event.request_id !== 'string' || event.request_id === '' || Number.isNaN(time)) {
    throw new TypeError('A usage event needs a request_id and an ISO-8601 ts.');
  }
  if (event.user_id === NO_USER_KEY) throw new TypeError('A user_id cannot be a control character.');
  if (event.cost_nano_usd !== null && !isCount(event.cost_nano_usd)) {
    throw new TypeError('cost_nano_usd must be a non-negative integer or null.');
  }
  return {
    seq,
    request_id: event.request_id,
    ts: new Date(time).toISOString(),
    day: eventDate(event),
    user_key: event.user_id ?? NO_USER_KEY,
    model: event.model,
    errors: isErrorEvent(event) ? 1 : 0,
    prompt_tokens: tokens(event.prompt_tokens),
    completion_tokens: tokens(event.completion_tokens),
    cached_prompt_tokens: tokens(event.cached_prompt_tokens),
    reasoning_tokens: tokens(event.reasoning_tokens),
    total_tokens: tokens(event.total_tokens),
    cost_nano_usd: event.cost_nano_usd,
    unpriced: event.cost_source === 'unknown_model' ? 1 : 0,
    rate_limited: isGatewayRateLimited(event) ? 1 : 0,
  };
}

function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

/** A token count as stored; a field missing from an old logged event counts as none. */
function tokens(count: number | undefined): number {
  if (count === undefined) return 0;
  if (!isCount(count)) throw new TypeError('Token counts must be non-negative integers.');
  return count;
}

function storedPeriodKey(period: ListUsersQuery['period'], key: string): string {
  if (period === 'day') return `D#${key}`;
  if (period === 'month') return `M#${key}`;
  if (period === 'all') return 'ALL';
  throw new BadRequestError('invalid_period', '`period` must be day, month or all.', { param: 'period' });
}

function userIdOf(userKey: string): string | null {
  return userKey === NO_USER_KEY ? null : userKey;
}

function totalsOf(row: TotalsRow): UsageTotals {
  return {
    requests: row.requests,
    errors: row.errors,
    prompt_tokens: row.prompt_tokens,
    completion_tokens: row.completion_tokens,
    cached_prompt_tokens: row.cached_prompt_tokens,
    reasoning_tokens: row.reasoning_tokens,
    total_tokens: row.total_tokens,
    cost_nano_usd: row.cost_nano_usd,
    unpriced_requests: row.unpriced_requests,
    rate_limited: row.rate_limited,
    first_active: row.first_active,
    last_active: row.last_active,
  };
}

function encodeCursor(cursor: UserCursor): string {
  return Buffer.from(JSON.stringify(cursor), 'utf8').toString('base64url');
}

function decodeCursor(text: string, periodKey: string, sort: UserSort, order: 'asc' | 'desc'): UserCursor {
  const invalid = () =>
    new BadRequestError('invalid_cursor', 'The cursor is malformed or belongs to another query.', { param: 'cursor' });
  if (!/^[A-Za-z0-9_-]{1,2048}$/.test(text)) throw invalid();
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(text, 'base64url').toString('utf8'));
  } catch {
    throw invalid();
  }
  if (typeof value !== 'object' || value === null) throw invalid();
  const cursor = value as Partial<UserCursor>;
  const valueOk =
    sort === 'last_active' ? typeof cursor.v === 'string' : typeof cursor.v === 'number' && Number.isSafeInteger(cursor.v);
  if (cursor.p !== periodKey || cursor.s !== sort || cursor.o !== order || !valueOk || typeof cursor.u !== 'string') {
    throw invalid();
  }
  return cursor as UserCursor;
}
