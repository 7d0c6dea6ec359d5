import { CfnOutput, Stack, Validations, type Duration, type Size, type StackProps } from 'aws-cdk-lib';
import type * as apigateway from 'aws-cdk-lib/aws-apigateway';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import type { Construct } from 'constructs';
import { AccessLogsBucket } from './access-logs-bucket';
import { GatewayApi, type GatewayThrottle } from './gateway-api';
import type { GatewayLimits } from './gateway-limits';
import type { GatewayLogLevel } from './gateway-function';
import { MetricsFunction } from './metrics-function';
import { ProxyFunction } from './proxy-function';
import { UsageCounters } from './usage-counters';
import { UsageLog, type UsageLogArchive } from './usage-log';
import { UsageQueries } from './usage-queries';

export interface LlmUsageGatewayStackProps extends StackProps {
  /**
   * OpenAI-compatible upstream the proxy forwards to.
   * @default 'https://api.openai.com'
   */
  readonly upstreamOpenAiUrl?: string;
  /**
   * `LOG_LEVEL` of both functions.
   * @default 'info'
   */
  readonly logLevel?: GatewayLogLevel;
  /**
   * Stage throttling of the API.
   * @default { rateLimit: 100, burstLimit: 200 }
   */
  readonly throttle?: GatewayThrottle;
  /**
   * Concurrency reserved for (and capping) the proxy function.
   * @default - no reservation
   */
  readonly proxyReservedConcurrency?: number;
  /**
   * Proxy function memory in MB.
   * @default 256
   */
  readonly proxyMemorySize?: number;
  /**
   * Athena scan limit per history query.
   * @default Size.gibibytes(10)
   */
  readonly bytesScannedCutoffPerQuery?: Size;
  /**
   * Move event files to a cheaper storage class after a while.
   * @default - no transition
   */
  readonly logArchive?: UsageLogArchive;
  /**
   * Firehose buffering interval: how far the Athena history lags behind at most.
   * @default Duration.seconds(300)
   */
  readonly logBufferingInterval?: Duration;
  /**
   * API Gateway execution log level.
   * @default - access logs only
   */
  readonly executionLogLevel?: apigateway.MethodLoggingLevel;
  /**
   * WAFv2 regional web ACL to associate with the API stage.
   * @default - none
   */
  readonly webAclArn?: string;
  /**
   * Ship source maps with the functions.
   * @default false
   */
  readonly sourceMap?: boolean;
  /**
   * Default rate limits and monthly budget of every user; per-user limits are set through the metrics API.
   * @default - none
   */
  readonly limits?: GatewayLimits;
}

/**
 * The whole gateway on AWS: event log (S3 + Firehose + Glue), live counters (DynamoDB), history queries
 * (Athena), the proxy and metrics functions, and the REST API in front of them.
 *
 * @example
 * const app = new App();
 * new LlmUsageGatewayStack(app, 'LlmUsageGateway', { upstreamOpenAiUrl: 'https://api.openai.com' });
 */
export class LlmUsageGatewayStack extends Stack {
  readonly usageLog: UsageLog;
  readonly counters: UsageCounters;
  readonly queries: UsageQueries;
  readonly adminKeySecret: secretsmanager.Secret;
  readonly proxy: ProxyFunction;
  readonly metrics: MetricsFunction;
  readonly api: GatewayApi;

  constructor(scope: Construct, id: string, props: LlmUsageGatewayStackProps = {}) {
    super(scope, id, {
      description: 'Self-hosted per-user LLM usage gateway',
      ...props,
    });

    const accessLogs = new AccessLogsBucket(this, 'AccessLogs');
    this.usageLog = new UsageLog(this, 'UsageLog', {
      accessLogsBucket: accessLogs.bucket,
      archive: props.logArchive,
      bufferingInterval: props.logBufferingInterval,
    });
    this.counters = new UsageCounters(this, 'Counters');
    this.queries = new UsageQueries(this, 'Queries', {
      accessLogsBucket: accessLogs.bucket,
      bytesScannedCutoffPerQuery: props.bytesScannedCutoffPerQuery,
    });

    this.adminKeySecret = new secretsmanager.Secret(this, 'AdminKey', {
      description: 'Admin key of the LLM usage gateway metrics API (JSON field "key")',
      generateSecretString: {
        secretStringTemplate: '{}',
        generateStringKey: 'key',
        excludePunctuation: true,
        passwordLength: 48,
      },
    });
    Validations.of(this.adminKeySecret).acknowledge({
      id: 'AwsSolutions-SMG4',
      reason:
        'The admin key is a static API key that operators hand to dashboard and script users; automatic rotation would silently lock them out. Operators rotate it on purpose with `aws secretsmanager put-secret-value` (a new {"key": ...}); later deployments never regenerate it.',
    });

    const functionOptions = { logLevel: props.logLevel, sourceMap: props.sourceMap };
    this.proxy = new ProxyFunction(this, 'Proxy', {
      ...functionOptions,
      usageLog: this.usageLog,
      counters: this.counters,
      upstreamOpenAiUrl: props.upstreamOpenAiUrl,
      memorySize: props.proxyMemorySize,
      reservedConcurrentExecutions: props.proxyReservedConcurrency,
      limits: props.limits,
    });
    this.metrics = new MetricsFunction(this, 'Metrics', {
      ...functionOptions,
      counters: this.counters,
      usageLog: this.usageLog,
      queries: this.queries,
      adminKeySecret: this.adminKeySecret,
      limits: props.limits,
    });

    this.api = new GatewayApi(this, 'Api', {
      proxyFunction: this.proxy.function,
      metricsFunction: this.metrics.function,
      throttle: props.throttle,
      executionLogLevel: props.executionLogLevel,
      webAclArn: props.webAclArn,
    });

    new CfnOutput(this, 'BaseUrl', {
      description: 'OpenAI SDK base URL',
      value: this.api.urlFor('v1'),
    });
    new CfnOutput(this, 'MetricsUrl', { description: 'Metrics API', value: this.api.urlFor('metrics') });
    new CfnOutput(this, 'DashboardUrl', { description: 'Usage dashboard', value: this.api.urlFor('dashboard') });
    new CfnOutput(this, 'AdminKeySecretName', {
      description: 'Secrets Manager secret holding the metrics admin key (JSON field "key")',
      value: this.adminKeySecret.secretName,
    });
    new CfnOutput(this, 'LogBucketName', { description: 'Usage event log bucket', value: this.usageLog.bucket.bucketName });
    new CfnOutput(this, 'EventsStreamName', {
      description: 'Firehose stream of usage events (npm run replay:recovery sends parked events back to it)',
      value: this.usageLog.deliveryStream.deliveryStreamName,
    });
    new CfnOutput(this, 'CountersTableName', {
      description: 'Live counters and gateway keys table',
      value: this.counters.table.tableName,
    });
    new CfnOutput(this, 'AthenaWorkGroupName', { description: 'Athena workgroup', value: this.queries.workGroupName });
  }
}
