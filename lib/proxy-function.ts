import { Duration } from 'aws-cdk-lib';
import type { NodejsFunction } from 'aws-cdk-lib/aws-lambda-nodejs';
import { Construct } from 'constructs';
import { LAMBDA_ENTRIES, proxyBundling } from './bundling';
import { createGatewayFunction, type GatewayFunctionOptions } from './gateway-function';
import { limitsEnvironment, type GatewayLimits } from './gateway-limits';
import type { UsageCounters } from './usage-counters';
import { RECOVERY_PREFIX, type UsageLog } from './usage-log';

/**
 * Settings of the proxy function.
 *
 * Sizing: the proxy spends almost all of its time waiting on the provider (a streamed completion lasts seconds to
 * minutes) while doing little CPU work (header checks, SSE parsing, one DynamoDB update and one Firehose put per
 * request). Lambda bills GB-seconds for the whole wait, so memory is kept small: 256 MB still gives enough CPU for
 * a fast cold start and JSON handling, and costs a quarter of 1024 MB for the same wait.
 *
 * Cost per million requests, assuming an average duration of 5 s at 256 MB on arm64 (us-east-1 prices:
 * $0.0000133334 per GB-second, $0.20 per million requests):
 * 0.25 GB × 5 s × $0.0000133334 × 1,000,000 + $0.20 ≈ $16.67 + $0.20 = **$16.87 per million requests**
 * (at 1024 MB the same traffic would cost ≈ $66.87). API Gateway REST ($3.50 per million), DynamoDB on-demand
 * writes and Firehose ingestion come on top and do not depend on these settings.
 */
export interface ProxyFunctionProps extends GatewayFunctionOptions {
  /** The event log the proxy writes each request's usage event to. */
  readonly usageLog: UsageLog;
  /** The live counters (and hashed gateway keys) table. */
  readonly counters: UsageCounters;
  /**
   * OpenAI-compatible upstream the proxy forwards to (`UPSTREAM_OPENAI_URL`).
   * @default 'https://api.openai.com'
   */
  readonly upstreamOpenAiUrl?: string;
  /**
   * Memory in MB; also buys CPU. See the sizing note above.
   * @default 256
   */
  readonly memorySize?: number;
  /**
   * Longest a request may run. Matches API Gateway's 15-minute limit for streamed responses so that long
   * reasoning generations are not cut.
   * @default Duration.minutes(15)
   */
  readonly timeout?: Duration;
  /**
   * Concurrency reserved for (and capping) the proxy; a cap protects the provider quota and the account's
   * other functions from a runaway client.
   * @default - no reservation: the proxy shares the account's unreserved concurrency
   */
  readonly reservedConcurrentExecutions?: number;
  /**
   * Default rate limits and budget of every user.
   * @default - none: only users given limits through the metrics API are limited
   */
  readonly limits?: GatewayLimits;
}

/**
 * The streaming OpenAI-compatible proxy Lambda (`lambda/aws/proxy-entry.ts`), with the tokenizer bundled beside
 * it as `tokenizer.js`, permitted to put events to the Firehose stream, update the counters table and park refused
 * events under the log bucket's `recovery/` prefix.
 *
 * @example
 * const proxy = new ProxyFunction(this, 'Proxy', { usageLog, counters, memorySize: 512 });
 * new apigateway.LambdaIntegration(proxy.function, { responseTransferMode: apigateway.ResponseTransferMode.STREAM });
 */
export class ProxyFunction extends Construct {
  readonly function: NodejsFunction;

  constructor(scope: Construct, id: string, props: ProxyFunctionProps) {
    super(scope, id);
    const { usageLog, counters } = props;
    this.function = createGatewayFunction(this, 'Function', {
      runtime: props.runtime,
      logLevel: props.logLevel,
      sourceMap: props.sourceMap,
      logRetention: props.logRetention,
      entry: LAMBDA_ENTRIES.proxy,
      description: 'LLM usage gateway: streaming OpenAI-compatible proxy',
      memorySize: props.memorySize ?? 256,
      timeout: props.timeout ?? Duration.minutes(15),
      reservedConcurrentExecutions: props.reservedConcurrentExecutions,
      bundling: proxyBundling({ sourceMap: props.sourceMap }),
      environment: {
        UPSTREAM_OPENAI_URL: props.upstreamOpenAiUrl ?? 'https://api.openai.com',
        EVENTS_STREAM_NAME: usageLog.deliveryStream.deliveryStreamName,
        COUNTERS_TABLE_NAME: counters.table.tableName,
        RECOVERY_BUCKET_NAME: usageLog.bucket.bucketName,
        RECOVERY_PREFIX,
        ...limitsEnvironment(props.limits),
      },
    });
    usageLog.grantPutEvents(this.function);
    usageLog.grantWriteRecovery(this.function);
    counters.grantReadWrite(this.function);
  }
}
