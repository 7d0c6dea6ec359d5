/**
 * The embedded default: the gateway on local storage. Usage events go to date-partitioned files under
 * `${dataDir}/events/dt=YYYY-MM-DD/` (the layout of the AWS log), live counters and history queries run on one
 * DuckDB database at `${dataDir}/gateway.duckdb`.
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
import { UsageRecorder } from '../core/usage-recorder';
import { openDuckDb } from './duckdb';
import { catchUpCounters } from './counter-catch-up';
import { DuckDbCounterStore } from './duckdb-counter-store';
import { DuckDbHistoryStore } from './duckdb-history-store';
import { EventCompactor } from './event-compaction';
import { DuckDbLimitStore } from './duckdb-limit-store';
import { FileEventSink } from './file-event-sink';
import { createUpstreamClient } from './upstream-client';

/** How long recorded usage waits to join a counter transaction. */
const COUNTER_FLUSH_MS = 500;
/**
 * How often the limit store writes its in-memory windows and spending behind to DuckDB. Checks never wait for it;
 * a crash loses at most this much of the windows' counts (the spending itself is in the event log).
 */
const LIMIT_FLUSH_MS = 1_000;

export interface LocalGateway {
  readonly handler: FetchHandler;
  /** Absolute path of the data directory. */
  readonly dataDir: string;
  readonly sink: FileEventSink;
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
  const sink = new FileEventSink({ dataDir, log });
  // Each DuckDB transaction costs milliseconds of CPU whatever its size, so under load at most two a second:
  // totals still show within the promised second, and the cost per request stays small.
  const counters = await DuckDbCounterStore.open({ db, log, flushIntervalMs: COUNTER_FLUSH_MS });
  // Before serving: count what a crash left in the log but not in the totals (idempotent, see counter-catch-up.ts).
  // Totals are derived data: an unreadable log file must not keep the proxy down; `npm run reconcile` repairs.
  await catchUpCounters({ dataDir, counters, db, log }).catch((error: unknown) => {
    log.error('counter catch-up failed; run npm run reconcile for today and yesterday', describeError(error));
  });
  const history = await DuckDbHistoryStore.open({ dataDir, db });
  // Finished days of the event log become Parquet, which history queries read far faster than NDJSON.
  const compactor = EventCompactor.start({ dataDir, db, log });
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
    fetch: options.fetch ?? createUpstreamClient(),
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
