/**
 * The metrics Lambda's app: the core metrics API on DynamoDB (live totals), Athena (history) and the admin key
 * in Secrets Manager.
 */
import { AthenaClient } from '@aws-sdk/client-athena';
import { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import type { FetchHandler } from '../core/handler';
import { createLogger, type Logger } from '../core/log';
import { createMetricsApi } from '../core/metrics-api';
import type { MetricsLambdaConfig } from './aws-config';
import { AthenaHistoryStore } from './athena-history-store';
import { createCounterStoreClient, DynamoDbCounterStore } from './dynamodb-counter-store';
import { SecretKeyStore } from './secret-key-store';
import type { DynamoDBClient } from '@aws-sdk/client-dynamodb';

export interface MetricsAppClients {
  readonly counters?: DynamoDBClient;
  readonly athena?: AthenaClient;
  readonly secrets?: SecretsManagerClient;
}

/** @example const app = createMetricsApp(metricsLambdaConfigFromEnv(process.env)); */
export function createMetricsApp(config: MetricsLambdaConfig, clients: MetricsAppClients = {}, log: Logger = createLogger(config.logLevel)): FetchHandler {
  const counters = new DynamoDbCounterStore({
    client: clients.counters ?? createCounterStoreClient(),
    tableName: config.countersTableName,
    logger: log,
  });
  const history = new AthenaHistoryStore({
    athena: clients.athena ?? new AthenaClient({}),
    workGroup: config.athenaWorkGroup,
    database: config.athenaDatabase,
    table: config.athenaTable,
    log,
  });
  // The admin key is required on AWS: there is no open mode for the metrics API.
  const metricsKeys = new SecretKeyStore({ client: clients.secrets ?? new SecretsManagerClient({}), secretId: config.adminKeySecretArn });
  return createMetricsApi({ counters, history, metricsKeys, log, queryWaitMs: config.queryWaitMs });
}
