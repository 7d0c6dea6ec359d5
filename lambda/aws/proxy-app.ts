/**
 * The proxy Lambda's gateway: the core proxy on Firehose (event log), DynamoDB (live counters and gateway keys)
 * and the tokenizer bundle shipped next to this one. Built once per container, reused by every invocation.
 */
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { S3Client } from '@aws-sdk/client-s3';
import { join } from 'node:path';
import { createGateway, healthCheck } from '../core/gateway';
import type { FetchHandler } from '../core/handler';
import { createLimiter } from '../core/limits';
import { createLogger, type Logger } from '../core/log';
import { createProxy } from '../core/proxy';
import { lazyTokenCounter, type TokenCounter } from '../core/tokens';
import { UsageRecorder } from '../core/usage-recorder';
import { errorResponse, NotFoundError } from '../core/errors';
import type { ProxyLambdaConfig } from './aws-config';
import { createCounterStoreClient, DynamoDbCounterStore } from './dynamodb-counter-store';
import { DynamoDbKeyStore } from './dynamodb-key-store';
import { DynamoDbLimitStore } from './dynamodb-limit-store';
import { createFirehoseClient, FirehoseEventSink } from './firehose-event-sink';

/** Clients the proxy talks to; tests pass ones pointed at local servers. */
export interface ProxyAppClients {
  readonly firehose?: ReturnType<typeof createFirehoseClient>;
  readonly s3?: S3Client;
  readonly counters?: DynamoDBClient;
  readonly keys?: DynamoDBClient;
  readonly fetch?: typeof fetch;
  /** Loads the tokenizer. @default the `tokenizer.js` bundle next to this file */
  readonly loadTokenizer?: () => Promise<TokenCounter>;
}

/** How long a warm proxy reuses a user's limits read from the table. */
export const USER_LIMITS_CACHE_MS = 30_000;

/** File name of the tokenizer bundle in the proxy's asset (see lib/bundling.ts). */
const TOKENIZER_FILE = 'tokenizer.js';

async function loadTokenizerBundle(): Promise<TokenCounter> {
  // A computed path keeps esbuild from inlining the megabytes of BPE ranks into the main bundle.
  const file = join(__dirname, TOKENIZER_FILE);
  const module = (await import(file)) as { o200kCounter?: TokenCounter; default?: { o200kCounter?: TokenCounter } };
  const counter = module.o200kCounter ?? module.default?.o200kCounter;
  if (counter === undefined) throw new Error(`${TOKENIZER_FILE} does not export o200kCounter`);
  return counter;
}

/**
 * Builds the proxy Lambda's handler: `/v1/*` through the proxy, `/healthz`, and JSON 404 for the rest.
 * @example const app = createProxyApp(proxyLambdaConfigFromEnv(process.env));
 */
export function createProxyApp(config: ProxyLambdaConfig, clients: ProxyAppClients = {}, log: Logger = createLogger(config.logLevel)): FetchHandler {
  const s3 = clients.s3 ?? new S3Client({ requestHandler: { connectionTimeout: 1_000, requestTimeout: 5_000 } });
  const sink = new FirehoseEventSink({
    firehose: clients.firehose ?? createFirehoseClient(),
    streamName: config.eventsStreamName,
    s3,
    recoveryBucket: config.recoveryBucketName,
    recoveryPrefix: config.recoveryPrefix,
    log,
  });
  const countersClient = clients.counters ?? createCounterStoreClient();
  const counters = new DynamoDbCounterStore({ client: countersClient, tableName: config.countersTableName, logger: log });
  // On AWS a gateway key is always required: the API is on the internet.
  const gatewayKeys = new DynamoDbKeyStore({ client: clients.keys ?? new DynamoDBClient({}), tableName: config.countersTableName });
  const proxy = createProxy({
    config,
    gatewayKeys,
    recorder: new UsageRecorder({ sink, counters, log }),
    // Limits changed through the metrics function apply here within the cache time.
    limiter: createLimiter({
      store: new DynamoDbLimitStore({ client: countersClient, tableName: config.countersTableName, logger: log }),
      config: config.limits,
      log,
      limitsCacheMs: USER_LIMITS_CACHE_MS,
    }),
    tokenCounter: lazyTokenCounter(clients.loadTokenizer ?? loadTokenizerBundle),
    log,
    ...(clients.fetch ? { fetch: clients.fetch } : {}),
  });
  const notHere: FetchHandler = async () =>
    errorResponse(new NotFoundError('unknown_route', 'The metrics API is served under /metrics by its own function.'));
  return createGateway({ proxy, metrics: notHere, extra: { '/healthz': async (request) => healthCheck(request) } });
}
