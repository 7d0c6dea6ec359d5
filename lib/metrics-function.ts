import { Duration } from 'aws-cdk-lib';
import type { NodejsFunction } from 'aws-cdk-lib/aws-lambda-nodejs';
import type * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import { Construct } from 'constructs';
import { LAMBDA_ENTRIES, nodejsBundling } from './bundling';
import { createGatewayFunction, type GatewayFunctionOptions } from './gateway-function';
import { limitsEnvironment, type GatewayLimits } from './gateway-limits';
import type { UsageCounters } from './usage-counters';
import type { UsageLog } from './usage-log';
import type { UsageQueries } from './usage-queries';

/**
 * Settings of the metrics function. It answers from the counters table in milliseconds, or runs an Athena query
 * over the event log and waits for it; 512 MB leaves room to shape large result pages and the dashboard.
 */
export interface MetricsFunctionProps extends GatewayFunctionOptions {
  readonly counters: UsageCounters;
  readonly usageLog: UsageLog;
  readonly queries: UsageQueries;
  /** Secret whose JSON field `key` is the admin key callers of the metrics API must present. */
  readonly adminKeySecret: secretsmanager.ISecret;
  /**
   * How long the function waits for an Athena query before answering that it is still running
   * (`QUERY_WAIT_MS`). At most 28 s: API Gateway cuts buffered integrations at 29 s.
   * @default Duration.seconds(20)
   */
  readonly queryWait?: Duration;
  /**
   * Memory in MB.
   * @default 512
   */
  readonly memorySize?: number;
  /**
   * Function timeout. API Gateway gives up on a buffered integration after 29 s, so a longer timeout only burns
   * money; 30 s lets the function finish its answer a moment after `queryWait`.
   * @default Duration.seconds(30)
   */
  readonly timeout?: Duration;
  /**
   * The default limits, shown next to a user's own by `GET /metrics/users/{id}/limits` (the proxy's own setting).
   * @default - none
   */
  readonly limits?: GatewayLimits;
}

/**
 * The metrics API and dashboard Lambda (`lambda/aws/metrics-entry.ts`): reads live totals from the counters
 * table and history through Athena, and checks callers against the admin key secret.
 *
 * @example
 * const metrics = new MetricsFunction(this, 'Metrics', { counters, usageLog, queries, adminKeySecret });
 */
export class MetricsFunction extends Construct {
  readonly function: NodejsFunction;

  constructor(scope: Construct, id: string, props: MetricsFunctionProps) {
    super(scope, id);
    const { counters, usageLog, queries, adminKeySecret } = props;
    const queryWait = props.queryWait ?? Duration.seconds(20);
    // The function still has to answer after the wait, before API Gateway's 29 s cut; the config parser in
    // lambda/aws/aws-config.ts accepts at most 28 s for the same reason.
    if (!queryWait.isUnresolved() && queryWait.toMilliseconds() > 28_000) {
      throw new Error(`queryWait must be at most 28 s, below API Gateway's 29 s integration limit; got ${queryWait.toHumanString()}`);
    }
    this.function = createGatewayFunction(this, 'Function', {
      runtime: props.runtime,
      logLevel: props.logLevel,
      sourceMap: props.sourceMap,
      logRetention: props.logRetention,
      entry: LAMBDA_ENTRIES.metrics,
      description: 'LLM usage gateway: metrics API and dashboard',
      memorySize: props.memorySize ?? 512,
      timeout: props.timeout ?? Duration.seconds(30),
      bundling: nodejsBundling({ sourceMap: props.sourceMap }),
      environment: {
        COUNTERS_TABLE_NAME: counters.table.tableName,
        ADMIN_KEY_SECRET_ARN: adminKeySecret.secretArn,
        ATHENA_WORKGROUP: queries.workGroupName,
        ATHENA_DATABASE: usageLog.database.databaseName,
        ATHENA_TABLE: usageLog.table.tableName,
        QUERY_WAIT_MS: String(queryWait.toMilliseconds()),
        RESULTS_BUCKET_NAME: queries.resultsBucket.bucketName,
        ...limitsEnvironment(props.limits),
      },
    });
    counters.grantRead(this.function);
    counters.grantWriteUserLimits(this.function);
    adminKeySecret.grantRead(this.function);
    queries.grantRunQueries(this.function);
    usageLog.grantReadEvents(this.function);
  }
}
