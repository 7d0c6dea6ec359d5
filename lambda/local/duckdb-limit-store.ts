/**
 * Rate-limit windows, monthly budgets and per-user limits on the local DuckDB database, next to the live totals
 * (the local counterpart of the limit items in the DynamoDB table).
 *
 * The gateway is one process per data directory (DuckDB's file lock sees to that), so the counters live in memory
 * and every check is a synchronous check-and-add: nothing can run between the check and the addition, which makes
 * concurrent charges exact without locks and keeps a check in microseconds. Changed counters are written behind to
 * DuckDB every `flushIntervalMs` (and on close), as absolute values, so a restart resumes them; a crash loses at
 * most that interval of counting. Per-user limits are written to DuckDB before a change is acknowledged.
 *
 * Tables:
 * - `limit_counters (counter_key PRIMARY KEY, used, expires_at)`: window and budget counters, `used` in requests or
 *   nano-dollars; rows an hour past `expires_at` (epoch ms: the window's end, or the end of the month after a
 *   budget's month) are dropped.
 * - `user_limits (user_id PRIMARY KEY, limits)`: a user's own limits as JSON.
 */
import { describeError, silentLogger, type Logger } from '../core/log';
import { nextMonthStart, userLimitsFromJson, userLimitsToJson } from '../core/limits';
import type { LimitCharge, LimitChargeResult, LimitCounter, LimitStore, UserLimits } from '../core/ports';
import { openDuckDb, type DuckDb, type DuckDbSession } from './duckdb';
import { NO_USER_KEY } from './duckdb-counter-store';

export interface DuckDbLimitStoreOptions {
  /** Database file or `:memory:`; ignored when `db` is given. */
  readonly path?: string;
  /** An already open database to share; the store opens its own session on it and leaves it open on close. */
  readonly db?: DuckDb;
  readonly log?: Logger;
  /** How long changed counters wait before they are written to DuckDB. @default 100 */
  readonly flushIntervalMs?: number;
  /** Clock for dropping expired counters. @default Date.now */
  readonly now?: () => number;
}

interface CounterState {
  used: number;
  readonly expiresAt: number;
}

const SCHEMA = [
  `CREATE TABLE IF NOT EXISTS limit_counters (
    counter_key VARCHAR PRIMARY KEY,
    used BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
  )`,
  'CREATE TABLE IF NOT EXISTS user_limits (user_id VARCHAR PRIMARY KEY, limits VARCHAR NOT NULL)',
];

/** Changed counters travel as one JSON parameter; the structure is a constant of this file. */
const UPSERT_COUNTERS = `INSERT INTO limit_counters (counter_key, used, expires_at)
  SELECT k, u, e FROM (SELECT unnest(from_json(?, '[{"k":"VARCHAR","u":"BIGINT","e":"BIGINT"}]'), recursive := true))
  ON CONFLICT (counter_key) DO UPDATE SET used = excluded.used, expires_at = excluded.expires_at`;

/** How often expired counters are dropped from memory and from the table. */
const PRUNE_INTERVAL_MS = 60_000;
/**
 * How long a counter is kept after it expires. A request that arrived in the last instant of a window is charged
 * a moment later, and settled after its answer: both must still find the window's counter.
 */
export const COUNTER_GRACE_MS = 60 * 60 * 1000;

/** The key of a counter in the map and the table; NUL separates parts no id can contain. */
export function counterKey(counter: LimitCounter): string {
  if (counter.kind === 'budget') return `B\u0000${counter.month}\u0000${counter.userId ?? NO_USER_KEY}`;
  return `W\u0000${counter.unit}\u0000${counter.windowSeconds}\u0000${counter.windowStart}\u0000${counter.segment}`;
}

/** When a counter stops mattering: a window at its end; a month's spending a month after the month ends. */
export function counterExpiry(counter: LimitCounter): number {
  if (counter.kind === 'window') return counter.windowStart + counter.windowSeconds * 1000;
  return nextMonthStart(nextMonthStart(Date.parse(`${counter.month}-01T00:00:00Z`)));
}

/**
 * @example
 * const limits = await DuckDbLimitStore.open({ db, log });
 * const { admitted } = await limits.charge([{ counter, amount: 1, limit: 100 }]);
 */
export class DuckDbLimitStore implements LimitStore {
  private readonly counters = new Map<string, CounterState>();
  private readonly dirty = new Set<string>();
  private timer: NodeJS.Timeout | null = null;
  private flushing: Promise<void> | null = null;
  private lastPrune: number;
  private flushError: unknown = null;
  private closed = false;

  private constructor(
    private readonly session: DuckDbSession,
    private readonly ownedDb: DuckDb | null,
    private readonly limits: Map<string, UserLimits>,
    private readonly log: Logger,
    private readonly flushIntervalMs: number,
    private readonly now: () => number,
  ) {
    this.lastPrune = now();
  }

  /** Opens the store, creating its tables when missing, and loads the live counters and every user's limits. */
  static async open(options: DuckDbLimitStoreOptions): Promise<DuckDbLimitStore> {
    if (!options.db && !options.path) throw new Error('DuckDbLimitStore needs a path or a db.');
    const ownedDb = options.db ? null : await openDuckDb(options.path as string);
    const now = options.now ?? Date.now;
    try {
      const session = await (options.db ?? (ownedDb as DuckDb)).session({ reusePreparedStatements: true });
      for (const statement of SCHEMA) await session.run(statement);
      await session.run('DELETE FROM limit_counters WHERE expires_at <= ?', [now() - COUNTER_GRACE_MS]);
      const limits = new Map<string, UserLimits>();
      for (const row of await session.all<{ user_id: string; limits: string }>('SELECT user_id, limits FROM user_limits')) {
        limits.set(row.user_id, userLimitsFromJson(row.limits));
      }
      const store = new DuckDbLimitStore(session, ownedDb, limits, options.log ?? silentLogger, options.flushIntervalMs ?? 100, now);
      const rows = await session.all<{ counter_key: string; used: number; expires_at: number }>(
        'SELECT counter_key, used, expires_at FROM limit_counters',
      );
      for (const row of rows) store.counters.set(row.counter_key, { used: row.used, expiresAt: row.expires_at });
      return store;
    } catch (error) {
      await ownedDb?.close();
      throw error;
    }
  }

  async charge(charges: readonly LimitCharge[]): Promise<LimitChargeResult> {
    this.assertOpen();
    // Synchronous from here to the end: no other charge can run between the checks and the additions.
    const keys = charges.map((c) => counterKey(c.counter));
    const before = keys.map((key) => this.counters.get(key)?.used ?? 0);
    const pending = new Map<string, number>();
    const fits = charges.map((c, i) => {
      const current = pending.get(keys[i]!) ?? before[i]!;
      pending.set(keys[i]!, current + c.amount);
      return c.limit === null || current + c.amount <= c.limit;
    });
    if (!fits.every(Boolean)) return { admitted: false, fits, used: before };
    const used = charges.map((c, i) => this.add(keys[i]!, c.counter, c.amount));
    return { admitted: true, fits, used };
  }

  async adjust(adjustments: readonly { readonly counter: LimitCounter; readonly amount: number }[]): Promise<void> {
    this.assertOpen();
    for (const { counter, amount } of adjustments) {
      const key = counterKey(counter);
      // Settling a counter that has already been dropped changes nothing that is still checked.
      if (!this.counters.has(key) && counterExpiry(counter) <= this.now() - COUNTER_GRACE_MS) continue;
      this.add(key, counter, amount);
    }
  }

  async read(counters: readonly LimitCounter[]): Promise<number[]> {
    this.assertOpen();
    return counters.map((counter) => this.counters.get(counterKey(counter))?.used ?? 0);
  }

  async getLimits(userId: string | null): Promise<UserLimits | null> {
    this.assertOpen();
    return this.limits.get(userId ?? NO_USER_KEY) ?? null;
  }

  async putLimits(userId: string | null, limits: UserLimits | null): Promise<void> {
    this.assertOpen();
    const key = userId ?? NO_USER_KEY;
    if (limits === null) await this.session.run('DELETE FROM user_limits WHERE user_id = ?', [key]);
    else {
      await this.session.run(
        'INSERT INTO user_limits VALUES (?, ?) ON CONFLICT (user_id) DO UPDATE SET limits = excluded.limits',
        [key, userLimitsToJson(limits)],
      );
    }
    // Only what is durable is served: the table first, then memory.
    if (limits === null) this.limits.delete(key);
    else this.limits.set(key, limits);
  }

  /** Writes every changed counter to DuckDB now; rejects when DuckDB refuses the write. */
  async flush(): Promise<void> {
    if (this.flushing !== null) await this.flushing;
    while (this.dirty.size > 0) {
      this.startFlush();
      await this.flushing;
      if (this.flushError !== null) throw this.flushError;
    }
  }

  /** Writes what is pending, then closes the store (and the database, when the store opened it). */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.flush().catch((error) =>
      this.log.error('limit counters not saved on close', { error: describeError(error), counters: this.dirty.size }),
    );
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.session.close();
    await this.ownedDb?.close();
  }

  private assertOpen(): void {
    if (this.closed) throw new Error('The limit store is closed.');
  }

  private add(key: string, counter: LimitCounter, amount: number): number {
    let state = this.counters.get(key);
    if (state === undefined) {
      state = { used: 0, expiresAt: counterExpiry(counter) };
      this.counters.set(key, state);
    }
    state.used += amount;
    this.dirty.add(key);
    this.timer ??= setTimeout(() => this.startFlush(), this.flushIntervalMs);
    this.timer.unref?.();
    return state.used;
  }

  private startFlush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.flushing !== null) return; // the running flush picks the rest up when it ends
    this.flushing = this.writeBehind().finally(() => {
      this.flushing = null;
      // Counters changed while writing wait for the next interval: one write per interval whatever the load.
      if (this.dirty.size > 0 && !this.closed && this.flushError === null) {
        this.timer ??= setTimeout(() => this.startFlush(), this.flushIntervalMs);
        this.timer.unref?.();
      }
    });
  }

  /** Writes the counters changed so far, once. */
  private async writeBehind(): Promise<void> {
    this.flushError = null;
    const keys = [...this.dirty];
    this.dirty.clear();
    const rows = keys.flatMap((k) => {
      const state = this.counters.get(k);
      return state === undefined ? [] : [{ k, u: state.used, e: state.expiresAt }];
    });
    try {
      await this.session.run(UPSERT_COUNTERS, [JSON.stringify(rows)]);
    } catch (error) {
      this.log.error('limit counters not saved; retrying', { error: describeError(error), counters: rows.length });
      this.flushError = error;
      for (const key of keys) this.dirty.add(key);
      if (!this.closed) this.timer ??= setTimeout(() => this.startFlush(), this.flushIntervalMs * 10);
      return;
    }
    if (this.now() - this.lastPrune >= PRUNE_INTERVAL_MS) await this.prune();
  }

  private async prune(): Promise<void> {
    this.lastPrune = this.now();
    const cutoff = this.lastPrune - COUNTER_GRACE_MS;
    for (const [key, state] of this.counters) {
      if (state.expiresAt <= cutoff && !this.dirty.has(key)) this.counters.delete(key);
    }
    await this.session
      .run('DELETE FROM limit_counters WHERE expires_at <= ?', [cutoff])
      .catch((error) => this.log.warn('pruning limit counters failed', { error: describeError(error) }));
  }
}
