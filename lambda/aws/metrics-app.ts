/**
 * The metrics Lambda's app: the core metrics API on DynamoDB (live totals), Athena (history) and the admin key
 * in Secrets Manager, and the dashboard page under `/dashboard`.
 */
import { AthenaClient } from '@aws-sdk/client-athena';
import { S3Client } from '@aws-sdk/client-s3';
import { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { createDashboard, isDashboardPath } from '../core/dashboard';
import type { FetchHandler } from '../core/handler';
import { limitRoutes } from '../core/limit-routes';
import { historyRoutes } from '../core/history-routes';
import { createLogger, type Logger } from '../core/log';
import { createMetricsApi } from '../core/metrics-api';
import type { MetricsLambdaConfig } from './aws-config';
import { AthenaHistoryStore } from './athena-history-store';
import { createCounterStoreClient, DynamoDbCounterStore } from './dynamodb-counter-store';
import { DynamoDbLimitStore } from './dynamodb-limit-store';
import { SecretKeyStore } from './secret-key-store';
import type { DynamoDBClient } from '@aws-sdk/client-dynamodb';

export interface MetricsAppClients {
  readonly counters?: DynamoDBClient;
  readonly athena?: AthenaClient;
  readonly secrets?: SecretsManagerClient;
  /** Lists and pre-signs history exports in the results bucket. */
  readonly s3?: S3Client;
}

/** @example const app = createMetricsApp(metricsLambdaConfigFromEnv(process.env)); */
export function createMetricsApp(config: MetricsLambdaConfig, clients: MetricsAppClients = {}, log: Logger = createLogger(config.logLevel)): FetchHandler {
  const countersClient = clients.counters ?? createCounterStoreClient();
  const counters = new DynamoDbCounterStore({ client: countersClient, tableName: config.countersTableName, logger: log });
  const limits = new DynamoDbLimitStore({ client: countersClient, tableName: config.countersTableName, logger: log });
  const history = new AthenaHistoryStore({
    athena: clients.athena ?? new AthenaClient({}),
    workGroup: config.athenaWorkGroup,
    database: config.athenaDatabase,
    table: config.athenaTable,
    log,
    s3: clients.s3 ?? new S3Client({}),
    ...(config.resultsBucketName === undefined ? {} : { resultsBucket: config.resultsBucketName }),
  });
  // The admin key is required on AWS: there is no open mode for the metrics API.
  const metricsKeys = new SecretKeyStore({ client: clients.secrets ?? new SecretsManagerClient({}), secretId: config.adminKeySecretArn });
  const metrics = createMetricsApi({
    counters,
    metricsKeys,
    log,
    routes: [
      ...historyRoutes({ history, log, queryWaitMs: config.queryWaitMs }),
      ...limitRoutes({ store: limits, config: config.limits }),
    ],
  });
  // API Gateway sends /dashboard and /dashboard/* to this function too: the page is served beside its API.
  const dashboard = createDashboard();
  return (request, context) => (isDashboardPath(new URL(request.url).pathname) ? dashboard(request, context) : metrics(request, context));
}
