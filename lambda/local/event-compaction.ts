/**
 * Compaction of the local event log: the NDJSON segments of a finished day become one Parquet file in the same
 * `dt=` directory, each request once, sorted by user and time. History queries then read a few columns of a
 * compressed columnar file instead of parsing every JSON line, and a per-user query skips the row groups of other
 * users by their min/max statistics.
 *
 * A day is finished once no sink writes to it any more: events land in the partition of their arrival time, so
 * only today's and, around midnight, yesterday's partitions are ever written. Compaction takes days before
 * yesterday.
 *
 * Crash safety: the Parquet file is written under a temporary name (which no reader lists), fsync'd, renamed into
 * place and the directory fsync'd; only then are the old files deleted. A crash at any point leaves the day
 * readable: either the old files, or the new file next to some old ones, whose copies every query and the next
 * compaction deduplicate by `request_id`.
 */
import { randomBytes } from 'node:crypto';
import { open, rename, rm, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { silentLogger, describeError, type Logger } from '../core/log';
import { sqlStringLiteral, type DuckDb } from './duckdb';
import { eventsRelationSql } from './duckdb-history-store';
import { listEventFiles, partitionDir, type EventFile } from './event-files';

/** Rows per Parquet row group: small enough that one user's rows of a busy day span a few groups only. */
export const COMPACTED_ROW_GROUP_SIZE = 16_384;

export interface CompactionResult {
  /** Days compacted, oldest first. */
  readonly days: readonly string[];
  /** Files replaced. */
  readonly filesRemoved: number;
}

export interface CompactOptions {
  readonly dataDir: string;
  /** Any database: compaction only runs a COPY on a session of its own. */
  readonly db: DuckDb;
  /** Compacts days strictly before this one (`YYYY-MM-DD`). */
  readonly before: string;
  readonly log?: Logger;
}

/**
 * Compacts every finished day that has NDJSON segments, or more than one Parquet file.
 * @example await compactEventLog({ dataDir, db, before: '2026-11-21' })
 */
export async function compactEventLog(options: CompactOptions): Promise<CompactionResult> {
  const log = options.log ?? silentLogger;
  const files = await listEventFiles(options.dataDir, { to: previousDay(options.before) });
  const byDay = new Map<string, EventFile[]>();
  for (const file of files) byDay.set(file.dt, [...(byDay.get(file.dt) ?? []), file]);
  const days: string[] = [];
  let filesRemoved = 0;
  const session = await options.db.session({ longRunning: true });
  try {
    for (const [dt, dayFiles] of byDay) {
      if (!dayFiles.some((file) => file.format === 'ndjson') && dayFiles.length < 2) continue;
      filesRemoved += await compactDay(options.dataDir, dt, dayFiles, (sql) => session.run(sql));
      days.push(dt);
      log.info('event_log_compacted', { dt, files: dayFiles.length });
    }
  } finally {
    await session.close();
  }
  return { days, filesRemoved };
}

async function compactDay(dataDir: string, dt: string, files: readonly EventFile[], run: (sql: string) => Promise<void>): Promise<number> {
  const dir = partitionDir(dataDir, dt);
  const id = `${Date.now()}-${process.pid}-${randomBytes(4).toString('hex')}`;
  // Not `.parquet`: readers list only finished files.
  const temporary = join(dir, `.compacting-${id}.tmp`);
  const final = join(dir, `part-${id}-compacted.parquet`);
  try {
    // Paths are our own directory listing and a generated name, quoted as literals: COPY takes no parameters.
    await run(
      `COPY (SELECT * EXCLUDE (dt, copy) FROM (SELECT *, row_number() OVER (PARTITION BY request_id ORDER BY ts) AS copy ` +
        `FROM (${eventsRelationSql(files)})) WHERE copy = 1 ORDER BY user_id, ts) ` +
        `TO ${sqlStringLiteral(temporary)} (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE ${COMPACTED_ROW_GROUP_SIZE})`,
    );
    await fsyncPath(temporary, 'r+');
    await rename(temporary, final);
    await fsyncPath(dir, 'r');
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
  for (const file of files) await unlink(file.path);
  await fsyncPath(dir, 'r');
  return files.length;
}

async function fsyncPath(path: string, flags: 'r' | 'r+'): Promise<void> {
  const handle = await open(path, flags);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function previousDay(day: string): string {
  return new Date(Date.parse(`${day}T00:00:00Z`) - 86_400_000).toISOString().slice(0, 10);
}

export interface EventCompactorOptions {
  readonly dataDir: string;
  readonly db: DuckDb;
  readonly log?: Logger;
  /** How often to look for finished days. @default 3600000 (an hour) */
  readonly intervalMs?: number;
  /** @default Date.now */
  readonly now?: () => number;
}

/**
 * Compacts finished days in the background: once at start, then every `intervalMs`. A failed run is logged and
 * retried at the next one; the log stays readable as it was.
 * @example const compactor = EventCompactor.start({ dataDir, db, log }); … await compactor.close();
 */
export class EventCompactor {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> = Promise.resolve();
  private closed = false;

  private constructor(private readonly options: EventCompactorOptions) {}

  static start(options: EventCompactorOptions): EventCompactor {
    const compactor = new EventCompactor(options);
    compactor.schedule(0);
    return compactor;
  }

  /** Runs one compaction now (after any in progress) and resolves when it is done. */
  compactNow(): Promise<void> {
    this.running = this.running.then(() => this.runOnce());
    return this.running;
  }

  /** Waits for a compaction in progress and stops. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    await this.running;
  }

  private schedule(delayMs: number): void {
    if (this.closed) return;
    this.timer = setTimeout(() => {
      void this.compactNow().then(() => this.schedule(this.options.intervalMs ?? 3_600_000));
    }, delayMs);
    this.timer.unref();
  }

  private async runOnce(): Promise<void> {
    if (this.closed) return;
    const log = this.options.log ?? silentLogger;
    const today = new Date((this.options.now ?? Date.now)()).toISOString().slice(0, 10);
    try {
      await compactEventLog({ dataDir: this.options.dataDir, db: this.options.db, before: previousDay(today), log });
    } catch (error) {
      log.warn('event_log_compaction_failed', { error: describeError(error) });
    }
  }
}
