/**
 * A small wrapper around `@duckdb/node-api`: prepared statements with positional `?` parameters, plain JS rows, and
 * one DuckDB instance per database file shared by everything in the process.
 *
 * One writer process per file: DuckDB takes an exclusive lock on a database file it opens for writing, so a second
 * process opening the same database file fails with "Could not set lock on file". Run one gateway process per data
 * directory. Inside a process the lock does not protect anything (POSIX locks belong to the process), and two
 * instances on one file are unsupported and risk corrupting it: {@link openDuckDb} therefore hands every caller of
 * the same path the same instance, and each store talks to it through its own {@link DuckDbSession}.
 *
 * Values always travel as bound parameters; SQL text is only ever built from constants and validated identifiers.
 */
import { resolve } from 'node:path';
import { DuckDBInstance, type DuckDBConnection, type DuckDBPreparedStatement, type DuckDBValue } from '@duckdb/node-api';

/** A value bound to a `?` placeholder. JS integers bind as INTEGER or BIGINT, other numbers as DOUBLE. */
export type DuckDbParam = string | number | bigint | boolean | null;

/** Statements run right away on a session the caller already holds (inside {@link DuckDbSession.exclusive}). */
export interface DuckDbStatements {
  /** Runs one statement. */
  run(sql: string, params?: readonly DuckDbParam[]): Promise<void>;
  /**
   * Runs one query and returns its rows as objects keyed by column name. BIGINT and HUGEINT come back as JS
   * numbers (a RangeError when one is beyond ±2^53, rather than a silently rounded total).
   */
  all<T = Record<string, unknown>>(sql: string, params?: readonly DuckDbParam[]): Promise<T[]>;
}

/**
 * One connection. Its statements run one at a time in call order, so a transaction never sees another caller's
 * statement in the middle of it.
 */
export interface DuckDbSession extends DuckDbStatements {
  /** Runs `fn` with the session to itself (no other statement of this session runs in between). */
  exclusive<T>(fn: (db: DuckDbStatements) => Promise<T>): Promise<T>;
  /** Runs `fn` in a transaction: committed when it resolves, rolled back when it throws. */
  transaction<T>(fn: (db: DuckDbStatements) => Promise<T>): Promise<T>;
  close(): Promise<void>;
}

/** An open database: a default session plus more on the same instance. */
export interface DuckDb extends DuckDbSession {
  /** Absolute file path, or `:memory:`. */
  readonly path: string;
  /** A new connection to the same database, for a store that needs its own transactions or temp views. */
  /**
   * A separate connection. `reusePreparedStatements` keeps recent statements prepared: worth it for the stores'
   * few repeated statements over fixed tables, wrong for sessions that replace the views their statements read.
   * `longRunning` marks a session whose statements can run for seconds (scans of the event log, compaction): at most
   * one such statement runs at a time, so the stores' short ones always find a slot (see {@link PoolGate}).
   */
  session(options?: SessionOptions): Promise<DuckDbSession>;
  /** Closes this handle's sessions; the instance closes when the last handle on it does. */
  close(): Promise<void>;
}

export interface SessionOptions {
  readonly reusePreparedStatements?: boolean;
  readonly longRunning?: boolean;
}

interface SharedInstance {
  readonly instance: DuckDBInstance;
  handles: number;
}

const instances = new Map<string, Promise<SharedInstance>>();

/**
 * Opens (or joins) a DuckDB database.
 * @example
 * const db = await openDuckDb('/var/lib/gateway/counters.duckdb');
 * const rows = await db.all<{ n: number }>('SELECT count(*) AS n FROM user_totals WHERE user_id = ?', [userId]);
 */
/**
 * The gateway's transactions are many and tiny (a counter batch every few dozen milliseconds); spreading each over
 * a thread pool costs far more in hand-offs than it saves. One thread keeps a batch to a few milliseconds of CPU;
 * history scans over large ranges are the ones that would use more, and stay well within budget on one core.
 */
const DUCKDB_OPTIONS = { threads: process.env.DUCKDB_THREADS ?? '1' };

export async function openDuckDb(path: string): Promise<DuckDb> {
  const key = path === ':memory:' ? null : resolve(path);
  let shared: SharedInstance;
  if (key === null) {
    shared = { instance: await DuckDBInstance.create(':memory:', DUCKDB_OPTIONS), handles: 0 };
  } else {
    let opening = instances.get(key);
    if (!opening) {
      opening = DuckDBInstance.create(key, DUCKDB_OPTIONS).then((instance) => ({ instance, handles: 0 }));
      instances.set(key, opening);
      opening.catch(() => instances.delete(key));
    }
    shared = await opening;
  }
  shared.handles++;
  try {
    const main = new Session(await shared.instance.connect());
    return new Handle(key ?? ':memory:', key, shared, main);
  } catch (error) {
    release(key, shared);
    throw error;
  }
}

function release(key: string | null, shared: SharedInstance): void {
  if (--shared.handles > 0) return;
  if (key !== null) instances.delete(key);
  shared.instance.closeSync();
}

/**
 * DuckDB's async calls each hold a thread of libuv's pool (4 by default) for as long as the statement runs: a
 * history scan, a COMMIT waiting for its fsync. The same pool serves the event log's writes and fsyncs and the DNS
 * lookups of upstream requests, and with every thread taken by DuckDB those wait, for seconds under load. So at
 * most the pool's size less two DuckDB calls run at once, process-wide; the rest queue here, in order.
 */
class PoolGate {
  private running = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(private readonly limit: number) {}

  async run<T>(call: () => Promise<T>): Promise<T> {
    if (this.running >= this.limit) await new Promise<void>((resolve) => this.waiting.push(resolve));
    else this.running++;
    try {
      return await call();
    } finally {
      const next = this.waiting.shift();
      // The slot passes straight to the next waiter, so a newcomer cannot overtake the queue.
      if (next !== undefined) next();
      else this.running--;
    }
  }
}

const LIBUV_POOL_SIZE = Number.parseInt(process.env.UV_THREADPOOL_SIZE ?? '', 10) || 4;
const DUCKDB_CALLS = Math.max(1, LIBUV_POOL_SIZE - 2);
const duckDbCalls = new PoolGate(DUCKDB_CALLS);
/** Long statements leave at least one of DuckDB's slots to the short ones (counter and limit flushes, lookups). */
const longDuckDbCalls = new PoolGate(Math.max(1, DUCKDB_CALLS - 1));

type Gate = <T>(call: () => Promise<T>) => Promise<T>;
const shortGate: Gate = (call) => duckDbCalls.run(call);
// Always the long gate first, then the shared one: one order, so no two calls can wait on each other.
const longGate: Gate = (call) => longDuckDbCalls.run(() => duckDbCalls.run(call));

/** Prepared statements a session keeps for reuse, least recently used dropped first. */
const PREPARED_STATEMENTS_KEPT = 64;

class Session implements DuckDbSession {
  private queue: Promise<unknown> = Promise.resolve();
  private readonly prepared = new Map<string, DuckDBPreparedStatement>();
  private closed = false;
  private readonly direct: DuckDbStatements;

  constructor(
    private readonly connection: DuckDBConnection,
    private readonly onClose: () => void = () => undefined,
    private readonly reusePrepared = false,
    private readonly gate: Gate = shortGate,
  ) {
    this.direct = {
      run: async (sql, params) => {
        await this.execute(sql, params);
      },
      all: async <T>(sql: string, params?: readonly DuckDbParam[]) => (await this.execute(sql, params)) as T[],
    };
  }

  run(sql: string, params?: readonly DuckDbParam[]): Promise<void> {
    return this.exclusive((db) => db.run(sql, params));
  }

  all<T = Record<string, unknown>>(sql: string, params?: readonly DuckDbParam[]): Promise<T[]> {
    return this.exclusive((db) => db.all<T>(sql, params));
  }

  exclusive<T>(fn: (db: DuckDbStatements) => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new Error('The DuckDB session is closed.'));
    const result = this.queue.then(() => fn(this.direct));
    this.queue = result.catch(() => undefined);
    return result;
  }

  transaction<T>(fn: (db: DuckDbStatements) => Promise<T>): Promise<T> {
    return this.exclusive(async (db) => {
      await db.run('BEGIN TRANSACTION');
      let result: T;
      try {
        result = await fn(db);
      } catch (error) {
        await db.run('ROLLBACK').catch(() => undefined);
        throw error;
      }
      try {
        await db.run('COMMIT');
      } catch (error) {
        // A failed COMMIT has usually rolled back already; make sure no transaction stays open on the session.
        await db.run('ROLLBACK').catch(() => undefined);
        throw error;
      }
      return result;
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true; // statements already queued still run; new ones are refused
    await this.queue;
    for (const statement of this.prepared.values()) statement.destroySync();
    this.prepared.clear();
    this.connection.closeSync();
    this.onClose();
  }

  private async execute(sql: string, params: readonly DuckDbParam[] = []): Promise<Record<string, unknown>[]> {
    // Preparing costs about as much as running a small statement, and the stores repeat the same few statements
    // all day: keep the most recent ones prepared. A statement that fails is dropped, never reused.
    let statement = this.prepared.get(sql);
    if (statement === undefined) {
      // prepare() takes exactly one statement: text after a `;` is an error, never a second statement.
      statement = await this.gate(() => this.connection.prepare(sql));
    } else {
      this.prepared.delete(sql); // re-inserted below as the most recently used
    }
    try {
      statement.clearBindings();
      if (params.length > 0) statement.bind(params as DuckDBValue[]);
      const prepared = statement;
      const reader = await this.gate(() => prepared.runAndReadAll());
      const rows = reader.getRowObjectsJS().map(toPlainRow);
      if (!this.reusePrepared) {
        statement.destroySync();
        return rows;
      }
      this.prepared.set(sql, statement);
      if (this.prepared.size > PREPARED_STATEMENTS_KEPT) {
        const [oldestSql, oldest] = this.prepared.entries().next().value!;
        this.prepared.delete(oldestSql);
        oldest.destroySync();
      }
      return rows;
    } catch (error) {
      statement.destroySync();
      throw error;
    }
  }
}

class Handle implements DuckDb {
  private readonly sessions = new Set<Session>();
  private closed = false;

  constructor(
    readonly path: string,
    private readonly key: string | null,
    private readonly shared: SharedInstance,
    private readonly main: Session,
  ) {}

  run(sql: string, params?: readonly DuckDbParam[]): Promise<void> {
    return this.main.run(sql, params);
  }

  all<T = Record<string, unknown>>(sql: string, params?: readonly DuckDbParam[]): Promise<T[]> {
    return this.main.all<T>(sql, params);
  }

  exclusive<T>(fn: (db: DuckDbStatements) => Promise<T>): Promise<T> {
    return this.main.exclusive(fn);
  }

  transaction<T>(fn: (db: DuckDbStatements) => Promise<T>): Promise<T> {
    return this.main.transaction(fn);
  }

  async session(options: SessionOptions = {}): Promise<DuckDbSession> {
    if (this.closed) throw new Error('The DuckDB database is closed.');
    const session: Session = new Session(
      await this.shared.instance.connect(),
      () => this.sessions.delete(session),
      options.reusePreparedStatements ?? false,
      options.longRunning === true ? longGate : shortGate,
    );
    this.sessions.add(session);
    return session;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.sessions].map((session) => session.close()));
    await this.main.close();
    release(this.key, this.shared);
  }
}

/**
 * Converts a bigint from DuckDB (COUNT is BIGINT, SUM of BIGINT is HUGEINT) to a number, refusing values a double
 * cannot hold exactly: a total that is silently off is worse than an error.
 */
export function toSafeNumber(value: bigint, what = 'value'): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER) || value < BigInt(Number.MIN_SAFE_INTEGER)) {
    throw new RangeError(`${what} ${value} is beyond the exact range of a JS number`);
  }
  return Number(value);
}

function toPlainRow(row: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [column, value] of Object.entries(row)) out[column] = toPlainValue(value, column);
  return out;
}

function toPlainValue(value: unknown, column: string): unknown {
  if (typeof value === 'bigint') return toSafeNumber(value, column);
  if (Array.isArray(value)) return value.map((item) => toPlainValue(item, column));
  if (value !== null && typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) {
    const out: Record<string, unknown> = {};
    for (const [key, item] of Object.entries(value)) out[key] = toPlainValue(item, column);
    return out;
  }
  return value;
}

/** Quotes a string as a SQL literal, for the few places DuckDB takes no parameters (a view's file list). */
export function sqlStringLiteral(value: string): string {
  return `'${value.replaceAll("'", "''")}'`;
}
