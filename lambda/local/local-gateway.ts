/**
 * The embedded default: the gateway on local storage. Usage events go to date-partitioned files under
 * `${dataDir}/events/dt=YYYY-MM-DD/` (the layout of the AWS log; while that directory fails they are spooled to
 * `${dataDir}/spool/` and replayed), live counters and history queries run on one DuckDB database at
 * `${dataDir}/gateway.duckdb`.
 */
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { LocalConfig } from '../core/config';
import { createDashboard } from '../core/dashboard';
import { createGateway } from '../core/gateway';
import { historyRoutes } from '../core/history-routes';
import type { FetchHandler } from '../core/handler';
import { StaticKeyStore } from '../core/keys';
import { limitRoutes } from '../core/limit-routes';
import { createLimiter, NO_DEFAULT_LIMITS, type LimitsConfig } from '../core/limits';
import { describeError, type Logger } from '../core/log';
import { createMetricsApi } from '../core/metrics-api';
import { createProxy } from '../core/proxy';
import { userIdPolicy } from '../core/identity';
import { lazyTokenCounter } from '../core/tokens';
import type { UsageEvent } from '../core/usage-event';
import { UsageRecorder } from '../core/usage-recorder';
import { openDuckDb } from './duckdb';
import { catchUpCounters } from './counter-catch-up';
import { DuckDbCounterStore, RECORDED_REQUEST_RETENTION_MS } from './duckdb-counter-store';
import { DuckDbHistoryStore } from './duckdb-history-store';
import { EventCompactor } from './event-compaction';
import { DuckDbLimitStore } from './duckdb-limit-store';
import { FileEventSink } from './file-event-sink';
import { SpoolingEventSink } from './spooling-event-sink';
import { createUpstreamClient } from './upstream-client';

/** How long recorded usage waits to join a counter transaction. */
const COUNTER_FLUSH_MS = 500;
/**
 * How often the limit store writes its in-memory windows and spending behind to DuckDB. Checks never wait for it;
 * a crash loses at most this much of the windows' counts (the spending itself is in the event log).
 */
const LIMIT_FLUSH_MS = 1_000;
/**
 * Least time between two event-log commits (write + fsync). A request's event reaches the disk at most this much
 * later than it would otherwise, after its answer has been sent; in exchange a steady stream of requests shares
 * fsyncs instead of paying one each, which takes work off the thread that serves requests.
 */
const EVENT_COMMIT_INTERVAL_MS = 10;

export interface LocalGateway {
  readonly handler: FetchHandler;
  /** Absolute path of the data directory. */
  readonly dataDir: string;
  /**
   * The event log: the {@link FileEventSink} under `${dataDir}/events` (as `sink.primary`), spooled to
   * `${dataDir}/spool` and replayed while it fails.
   */
  readonly sink: SpoolingEventSink<FileEventSink>;
  readonly counters: DuckDbCounterStore;
  readonly history: DuckDbHistoryStore;
  readonly limits: DuckDbLimitStore;
  /** Flushes and closes every store. Call after the server has drained. */
  close(): Promise<void>;
}

export interface LocalGatewayOptions {
  readonly config: LocalConfig;
  readonly log: Logger;
  /** Upstream HTTP client. @default a keep-alive node:http(s) client (see upstream-client.ts) */
  readonly fetch?: typeof fetch;
  /** Default rate limits and budget (`limitsConfigFromEnv`). @default none: only users given limits are limited */
  readonly limits?: LimitsConfig;
}

/**
 * Opens the local stores and builds the gateway handler on them.
 * @example const gw = await openLocalGateway({ config: localConfigFromEnv(process.env), log });
 */
export async function openLocalGateway(options: LocalGatewayOptions): Promise<LocalGateway> {
  const { config, log } = options;
  const dataDir = resolve(config.dataDir);
  await mkdir(dataDir, { recursive: true });
  const db = await openDuckDb(join(dataDir, 'gateway.duckdb'));
  // Each DuckDB transaction costs milliseconds of CPU whatever its size, so under load at most two a second:
  // totals still show within the promised second, and the cost per request stays small.
  const counters = await DuckDbCounterStore.open({ db, log, flushIntervalMs: COUNTER_FLUSH_MS });
  // Opened after the database (whose file lock makes this the only process on the data directory, which the spool
  // relies on) and before the catch-up, so a spool a previous process left is in the log when the catch-up reads it.
  const sink = await SpoolingEventSink.open({
    primary: new FileEventSink({ dataDir, log, minCommitIntervalMs: EVENT_COMMIT_INTERVAL_MS }),
    dataDir,
    log,
    onReplayed: countReplayed(counters, log),
  });
  // Before serving: count what a crash left in the log but not in the totals (idempotent, see counter-catch-up.ts).
  // Totals are derived data: an unreadable log file must not keep the proxy down; `npm run reconcile` repairs.
  await catchUpCounters({ dataDir, counters, db, log }).catch((error: unknown) => {
    log.error('counter catch-up failed; run npm run reconcile for today and yesterday', { error: describeError(error) });
  });
  const history = await DuckDbHistoryStore.open({ dataDir, db });
  // Finished days of the event log become Parquet, which history queries read far faster than NDJSON.
  const compactor = EventCompactor.start({ dataDir, db, log, now: () => compactionClock(sink) });
  const recorder = new UsageRecorder({ sink, counters, log });
  const limits = await DuckDbLimitStore.open({ db, log, flushIntervalMs: LIMIT_FLUSH_MS });
  const limitsConfig = options.limits ?? NO_DEFAULT_LIMITS;
  const proxy = createProxy({
    config,
    gatewayKeys: new StaticKeyStore(config.gatewayKeys),
    recorder,
    limiter: createLimiter({ store: limits, config: limitsConfig, log }),
    tokenCounter: lazyTokenCounter(async () => (await import('../tokenizer')).o200kCounter),
    log,
    fetch: options.fetch ?? createUpstreamClient({ log }),
    deferMetering: true,
  });
  const metrics = createMetricsApi({ counters, metricsKeys: new StaticKeyStore(config.metricsKeys), log, storedUserId: userIdPolicy({ hashSecret: config.userIdHashSecret }).stored, routes: [...limitRoutes({ store: limits, config: limitsConfig }), ...historyRoutes({ history, log })] });
  return {
    handler: createGateway({ proxy, metrics, extra: { '/dashboard': createDashboard() } }),
    dataDir,
    sink,
    counters,
    history,
    limits,
    async close() {
      await sink.close();
      await compactor.close();
      await counters.close();
      await history.close();
      await limits.close();
      await db.close();
    },
  };
}

/**
 * Counts events that reached the log by replay from the spool. Counters are normally recorded from the in-process
 * event, but one that was only spooled when a previous process died may have missed its counter transaction, and the
 * start-up catch-up only reads the log (and, when the log was still failing at start, runs before the replay).
 * Recording is idempotent by `request_id`, so events that were counted already change nothing.
 *
 * The counter store remembers counted requests for {@link RECORDED_REQUEST_RETENTION_MS} after their time: an older
 * replayed event could be counted a second time, so those are left to `npm run reconcile` for their days.
 */
function countReplayed(counters: DuckDbCounterStore, log: Logger): (events: readonly UsageEvent[]) => Promise<void> {
  return async (events) => {
    // An hour of margin: the store prunes by its own clock, at most hourly.
    const cutoff = new Date(Date.now() - RECORDED_REQUEST_RETENTION_MS + 3_600_000).toISOString();
    const recent = events.filter((event) => event.ts >= cutoff);
    if (recent.length < events.length) {
      const days = [...new Set(events.filter((event) => event.ts < cutoff).map((event) => event.ts.slice(0, 10)))].sort();
      log.warn('replayed events too old to count live; run npm run reconcile for their days', { days, events: events.length - recent.length });
    }
    if (recent.length === 0) return;
    try {
      await counters.record(recent);
    } catch (error) {
      const days = [...new Set(recent.map((event) => event.ts.slice(0, 10)))].sort();
      log.error('usage_counters_not_updated', { error: describeError(error), events: recent.length, reconcile_days: days });
    }
  };
}

/**
 * The compactor's clock, held back while replay may still write to an old day: compaction takes the days before
 * yesterday and deletes their segments, so a day replay appends to must look like yesterday until it is done.
 */
function compactionClock(sink: SpoolingEventSink): number {
  const now = Date.now();
  const oldest = sink.oldestPendingDay();
  return oldest === null ? now : Math.min(now, Date.parse(`${oldest}T00:00:00Z`) + 86_400_000);
}
