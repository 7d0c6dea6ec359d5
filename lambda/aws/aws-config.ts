/**
 * Settings of the two Lambdas, read once at cold start from the environment the stack sets. A missing or bad
 * value fails the cold start with the variable's name, rather than a request later.
 */
import { ConfigError, intVar, proxyConfigFromEnv, stringVar, type ProxyConfig } from '../core/config';
import { limitsConfigFromEnv, type LimitsConfig } from '../core/limits';
import type { LogLevel } from '../core/log';

type Env = Readonly<Record<string, string | undefined>>;

function required(env: Env, name: string): string {
  const value = env[name]?.trim();
  if (value === undefined || value === '') throw new ConfigError(name, 'is required');
  return value;
}

function logLevel(env: Env): LogLevel {
  const value = stringVar(env, 'LOG_LEVEL', 'info');
  if (value !== 'debug' && value !== 'info' && value !== 'warn' && value !== 'error') {
    throw new ConfigError('LOG_LEVEL', `must be one of debug, info, warn, error; got "${value}"`);
  }
  return value;
}

export interface ProxyLambdaConfig extends ProxyConfig {
  readonly eventsStreamName: string;
  readonly countersTableName: string;
  readonly recoveryBucketName: string;
  readonly recoveryPrefix: string;
  readonly logLevel: LogLevel;
  /** Default rate limits and budget (`DEFAULT_MONTHLY_BUDGET_USD`, `DEFAULT_RATE_LIMIT_POLICY`, …). */
  readonly limits: LimitsConfig;
}

export function proxyLambdaConfigFromEnv(env: Env): ProxyLambdaConfig {
  return {
    ...proxyConfigFromEnv(env),
    // API Gateway REST caps request payloads at 10 MB; Lambda's invoke payload limit is 6 MB.
    maxBodyBytes: intVar(env, 'MAX_BODY_BYTES', 6 * 1024 * 1024, 1024, 6 * 1024 * 1024),
    eventsStreamName: required(env, 'EVENTS_STREAM_NAME'),
    countersTableName: required(env, 'COUNTERS_TABLE_NAME'),
    recoveryBucketName: required(env, 'RECOVERY_BUCKET_NAME'),
    recoveryPrefix: stringVar(env, 'RECOVERY_PREFIX', 'recovery/'),
    logLevel: logLevel(env),
    limits: limitsConfigFromEnv(env),
  };
}

export interface MetricsLambdaConfig {
  readonly countersTableName: string;
  readonly adminKeySecretArn: string;
  readonly athenaWorkGroup: string;
  readonly athenaDatabase: string;
  readonly athenaTable: string;
  /** How long a history query may run inside the request before the API answers 202. */
  readonly queryWaitMs: number;
  /** Bucket of the Athena work group's results, where exports are written; without it exports answer 404. */
  readonly resultsBucketName?: string;
  readonly logLevel: LogLevel;
  /** The default limits, shown next to a user's own by `GET /metrics/users/{id}/limits`. */
  readonly limits: LimitsConfig;
}

export function metricsLambdaConfigFromEnv(env: Env): MetricsLambdaConfig {
  return {
    countersTableName: required(env, 'COUNTERS_TABLE_NAME'),
    adminKeySecretArn: required(env, 'ADMIN_KEY_SECRET_ARN'),
    athenaWorkGroup: required(env, 'ATHENA_WORKGROUP'),
    athenaDatabase: required(env, 'ATHENA_DATABASE'),
    athenaTable: required(env, 'ATHENA_TABLE'),
    // API Gateway's buffered integrations time out at 29 s.
    queryWaitMs: intVar(env, 'QUERY_WAIT_MS', 20_000, 0, 28_000),
    ...(env.RESULTS_BUCKET_NAME?.trim() ? { resultsBucketName: env.RESULTS_BUCKET_NAME.trim() } : {}),
    logLevel: logLevel(env),
    limits: limitsConfigFromEnv(env),
  };
}
