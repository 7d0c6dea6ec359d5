/**
 * Start-up catch-up: before the gateway serves, the events of the most recent days of the log are recorded into
 * the live totals again. A request's event is made durable in the log and its totals are updated by two separate
 * writes (see UsageRecorder); a gateway killed between them leaves an event in the log the totals lack. Recording
 * is idempotent by `request_id` (the counter store remembers counted requests for three days), so replaying events
 * already counted changes nothing and replaying the missed ones counts them, exactly once.
 *
 * Older gaps are what `npm run reconcile` is for.
 */
import { describeError, silentLogger, type Logger } from '../core/log';
import type { UsageEvent } from '../core/usage-event';
import type { CounterStore } from '../core/ports';
import type { DuckDb } from './duckdb';
import { eventsRelationSql } from './duckdb-history-store';
import { listEventFiles, readEvents } from './event-files';

/** Events recorded per call: one counter transaction each, so the cost per event is the insert, not the commit. */
const CATCH_UP_BATCH = 5_000;

export interface CatchUpOptions {
  readonly dataDir: string;
  readonly counters: Pick<CounterStore, 'record'>;
  /**
   * The database of a {@link DuckDbCounterStore}: when given, DuckDB itself reads the log and names the requests
   * its `recorded_requests` table lacks, and only those are recorded (after a crash, a handful out of the day's
   * events). Without it every event of the days goes through `record()`, which skips the counted ones itself.
   */
  readonly db?: DuckDb;
  readonly log?: Logger;
  /** UTC days back from today to replay, today included. @default 2 (today and yesterday) */
  readonly days?: number;
  /** @default Date.now */
  readonly now?: () => number;
}

export interface CatchUpResult {
  readonly from: string;
  readonly to: string;
  /** Events read from the log (copies included). */
  readonly events: number;
  /** Events handed to the counters: those not yet counted when `db` is given, else every one. */
  readonly recorded: number;
  /** Events the counter store refused (malformed); logged and skipped. */
  readonly rejected: number;
  readonly ms: number;
}

/**
 * Records the last `days` UTC days of the event log into the counters.
 * @example await catchUpCounters({ dataDir, counters });
 */
export async function catchUpCounters(options: CatchUpOptions): Promise<CatchUpResult> {
  const log = options.log ?? silentLogger;
  const started = performance.now();
  const now = (options.now ?? Date.now)();
  const days = Math.max(1, options.days ?? 2);
  const to = new Date(now).toISOString().slice(0, 10);
  const from = new Date(now - (days - 1) * 86_400_000).toISOString().slice(0, 10);
  let events = 0;
  let recorded = 0;
  let rejected = 0;
  const missing = options.db ? await uncountedRequests(options.db, options.dataDir, from, to) : null;
  let batch: UsageEvent[] = [];
  const recordBatch = async () => {
    const events = batch;
    batch = [];
    try {
      await options.counters.record(events);
    } catch {
      // One malformed line must not keep the rest from being counted: retry one by one, skipping the bad ones.
      for (const event of events) {
        try {
          await options.counters.record([event]);
        } catch (error) {
          rejected++;
          log.warn('catch-up skipped an event the counters refused', { request_id: event.request_id, error: describeError(error) });
        }
      }
    }
  };
  for await (const event of readEvents(options.dataDir, { from, to, log })) {
    events++;
    if (missing !== null && !missing.has(event.request_id)) continue;
    recorded++;
    batch.push(event);
    if (batch.length >= CATCH_UP_BATCH) await recordBatch();
  }
  if (batch.length > 0) await recordBatch();
  const result = { from, to, events, recorded, rejected, ms: Math.round(performance.now() - started) };
  log.info('counters caught up with the event log', result);
  return result;
}

/**
 * Request ids of the days' event files that the counter store has not recorded. A filter only: `record()` stays the
 * authority on what is counted, so an id named here that was counted in the meantime is still counted once.
 */
async function uncountedRequests(db: DuckDb, dataDir: string, from: string, to: string): Promise<Set<string>> {
  const files = await listEventFiles(dataDir, { from, to });
  if (files.length === 0) return new Set();
  const rows = await db.all<{ request_id: string }>(
    `SELECT DISTINCT e.request_id FROM (${eventsRelationSql(files)}) e
     WHERE NOT EXISTS (SELECT 1 FROM recorded_requests r WHERE r.request_id = e.request_id)`,
  );
  return new Set(rows.map((row) => row.request_id));
}
