/**
 * Rebuilds the local live totals of a range of days from the event log (`npm run reconcile`): the repair for
 * totals that missed events (a crash between the log write and the counter write, a counter failure) or that were
 * damaged. The log is the source of truth; the day rows of the range are recomputed from it and the month and
 * all-time rollups from the day rows ({@link DuckDbCounterStore.rebuildFrom}).
 *
 * It needs the database file to itself: DuckDB locks the file of a running gateway, so reconciling while one
 * runs on the same data directory fails with {@link DataDirInUseError} instead of touching anything.
 */
import { join, resolve } from 'node:path';
import { silentLogger, type Logger } from '../core/log';
import { checkReconcileRange } from '../core/reconcile-sql';
import { openDuckDb, type DuckDb } from './duckdb';
import { DuckDbCounterStore, NO_USER_KEY } from './duckdb-counter-store';
import { readEvents } from './event-files';

/** File name of the gateway's database inside the data directory (see local-gateway.ts). */
export const DATABASE_FILE = 'gateway.duckdb';

/** Another process (a running gateway) holds the data directory's database. */
export class DataDirInUseError extends Error {
  readonly statusCode = 409;
  constructor(
    readonly databasePath: string,
    options: { cause?: unknown } = {},
  ) {
    super(
      `The database ${databasePath} is in use by another process (a running gateway?). ` +
        'Stop the gateway on this data directory, then run the reconcile again.',
      options,
    );
    this.name = 'DataDirInUseError';
  }
}

/** One user's requests in the range, before and after. */
export interface ReconciledUser {
  readonly user_id: string | null;
  readonly requests_before: number;
  readonly requests_after: number;
  readonly cost_nano_usd_before: number;
  readonly cost_nano_usd_after: number;
}

export interface ReconcileReport {
  readonly from: string;
  readonly to: string;
  /** Users with day totals in the range, before and after. */
  readonly users_before: number;
  readonly users_after: number;
  /** Requests in the range's day totals, before and after. */
  readonly requests_before: number;
  readonly requests_after: number;
  /** Users whose totals in the range changed. */
  readonly changed: readonly ReconciledUser[];
}

export interface ReconcileLocalOptions {
  readonly dataDir: string;
  readonly from: string;
  readonly to: string;
  readonly log?: Logger;
}

/**
 * Recomputes the totals of `from`..`to` (UTC days, inclusive) from the event files (NDJSON and compacted Parquet).
 * @throws DataDirInUseError when a gateway holds the database.
 * @example const report = await reconcileLocalCounters({ dataDir: './.data', from: '2026-11-01', to: '2026-11-22' });
 */
export async function reconcileLocalCounters(options: ReconcileLocalOptions): Promise<ReconcileReport> {
  const { from, to } = options;
  checkReconcileRange(from, to);
  const log = options.log ?? silentLogger;
  const dataDir = resolve(options.dataDir);
  const db = await openDatabase(join(dataDir, DATABASE_FILE));
  try {
    const counters = await DuckDbCounterStore.open({ db, log });
    try {
      const before = await rangeTotals(db, from, to);
      await counters.rebuildFrom(readEvents(dataDir, { from, to, log }), { from, to });
      const after = await rangeTotals(db, from, to);
      return compare(from, to, before, after);
    } finally {
      await counters.close();
    }
  } finally {
    await db.close();
  }
}

async function openDatabase(path: string): Promise<DuckDb> {
  try {
    return await openDuckDb(path);
  } catch (error) {
    // DuckDB: "IO Error: Could not set lock on file ...: Conflicting lock is held in ... (PID n)".
    if (/lock/i.test(String((error as Error)?.message))) throw new DataDirInUseError(path, { cause: error });
    throw error;
  }
}

interface RangeRow {
  readonly requests: number;
  readonly cost_nano_usd: number;
}

async function rangeTotals(db: DuckDb, from: string, to: string): Promise<Map<string, RangeRow>> {
  const rows = await db.all<{ user_id: string; requests: number; cost_nano_usd: number }>(
    `SELECT user_id, sum(requests) AS requests, sum(cost_nano_usd) AS cost_nano_usd FROM user_totals
     WHERE period_key BETWEEN ? AND ? GROUP BY user_id`,
    [`D#${from}`, `D#${to}`],
  );
  return new Map(rows.map((row) => [row.user_id, { requests: Number(row.requests), cost_nano_usd: Number(row.cost_nano_usd) }]));
}

function compare(from: string, to: string, before: Map<string, RangeRow>, after: Map<string, RangeRow>): ReconcileReport {
  const sum = (rows: Map<string, RangeRow>) => [...rows.values()].reduce((total, row) => total + row.requests, 0);
  const changed: ReconciledUser[] = [];
  for (const userKey of new Set([...before.keys(), ...after.keys()])) {
    const was = before.get(userKey) ?? { requests: 0, cost_nano_usd: 0 };
    const now = after.get(userKey) ?? { requests: 0, cost_nano_usd: 0 };
    if (was.requests === now.requests && was.cost_nano_usd === now.cost_nano_usd) continue;
    changed.push({
      user_id: userKey === NO_USER_KEY ? null : userKey,
      requests_before: was.requests,
      requests_after: now.requests,
      cost_nano_usd_before: was.cost_nano_usd,
      cost_nano_usd_after: now.cost_nano_usd,
    });
  }
  changed.sort((a, b) => String(a.user_id).localeCompare(String(b.user_id)));
  return {
    from,
    to,
    users_before: before.size,
    users_after: after.size,
    requests_before: sum(before),
    requests_after: sum(after),
    changed,
  };
}
