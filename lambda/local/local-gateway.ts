/**
 * The embedded default: the gateway on local storage. Usage events go to date-partitioned files under
 * `${dataDir}/events/dt=YYYY-MM-DD/` (the layout of the AWS log), live counters and history queries run on one
 * DuckDB database at `${dataDir}/gateway.duckdb`.
 */
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { LocalConfig } from '../core/config';
import { createGateway } from '../core/gateway';
import type { FetchHandler } from '../core/handler';
import { StaticKeyStore } from '../core/keys';
import type { Logger } from '../core/log';
import { createMetricsApi } from '../core/metrics-api';
import { createProxy } from '../core/proxy';
import { lazyTokenCounter } from '../core/tokens';
import { UsageRecorder } from '../core/usage-recorder';
import { openDuckDb } from './duckdb';
import { DuckDbCounterStore } from './duckdb-counter-store';
import { DuckDbHistoryStore } from './duckdb-history-store';
import { FileEventSink } from './file-event-sink';

export interface LocalGateway {
  readonly handler: FetchHandler;
  /** Absolute path of the data directory. */
  readonly dataDir: string;
  readonly sink: FileEventSink;
  readonly counters: DuckDbCounterStore;
  readonly history: DuckDbHistoryStore;
  /** Flushes and closes every store. Call after the server has drained. */
  close(): Promise<void>;
}

export interface LocalGatewayOptions {
  readonly config: LocalConfig;
  readonly log: Logger;
  /** Upstream HTTP client. @default globalThis.fetch */
  readonly fetch?: typeof fetch;
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
  const counters = await DuckDbCounterStore.open({ db, log });
  const history = await DuckDbHistoryStore.open({ dataDir, db });
  const recorder = new UsageRecorder({ sink, counters, log });
  const proxy = createProxy({
    config,
    gatewayKeys: new StaticKeyStore(config.gatewayKeys),
    recorder,
    tokenCounter: lazyTokenCounter(async () => (await import('../tokenizer')).o200kCounter),
    log,
    ...(options.fetch ? { fetch: options.fetch } : {}),
  });
  const metrics = createMetricsApi({ counters, history, metricsKeys: new StaticKeyStore(config.metricsKeys), log });
  return {
    handler: createGateway({ proxy, metrics }),
    dataDir,
    sink,
    counters,
    history,
    async close() {
      await sink.close();
      await counters.close();
      await history.close();
      await db.close();
    },
  };
}
