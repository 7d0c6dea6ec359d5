import { Duration, RemovalPolicy, Validations } from 'aws-cdk-lib';
import * as apigateway from 'aws-cdk-lib/aws-apigateway';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as wafv2 from 'aws-cdk-lib/aws-wafv2';
import { Construct } from 'constructs';

/**
 * Fields of one access log line. Request metadata only: never a header (the gateway key and the provider key
 * travel in headers), never a body, never a query string.
 */
export const ACCESS_LOG_FIELDS: Readonly<Record<string, string>> = {
  requestId: '$context.requestId',
  extendedRequestId: '$context.extendedRequestId',
  ip: '$context.identity.sourceIp',
  requestTime: '$context.requestTime',
  requestTimeEpoch: '$context.requestTimeEpoch',
  method: '$context.httpMethod',
  resourcePath: '$context.resourcePath',
  protocol: '$context.protocol',
  status: '$context.status',
  responseLength: '$context.responseLength',
  responseLatency: '$context.responseLatency',
  integrationLatency: '$context.integrationLatency',
  integrationStatus: '$context.integration.status',
  errorMessage: '$context.error.message',
  integrationError: '$context.integration.error',
};

/** Content types of OpenAI-style uploads (`/v1/audio/transcriptions`, `/v1/files`, image edits). */
export const DEFAULT_BINARY_MEDIA_TYPES: readonly string[] = ['multipart/form-data', 'application/octet-stream', 'audio/*', 'image/*'];

/** Stage-wide request rate limits. */
export interface GatewayThrottle {
  /** Steady-state requests per second across all clients. */
  readonly rateLimit: number;
  /** Requests allowed in a burst above the steady rate. */
  readonly burstLimit: number;
}

export interface GatewayApiProps {
  /** Serves `/v1/{proxy+}` (streamed) and `GET /healthz`. */
  readonly proxyFunction: lambda.IFunction;
  /** Serves `/metrics`, `/metrics/{proxy+}`, `/dashboard` and `/dashboard/{proxy+}` (buffered). */
  readonly metricsFunction: lambda.IFunction;
  /**
   * Name of the deployed stage; it is the first path segment of every URL.
   * @default 'prod'
   */
  readonly stageName?: string;
  /**
   * Stage throttling.
   * @default { rateLimit: 100, burstLimit: 200 }
   */
  readonly throttle?: GatewayThrottle;
  /**
   * Longest a streamed proxy request may take; API Gateway allows up to 15 minutes for streamed responses
   * (and cuts streams that stay idle for 5 minutes).
   * @default Duration.minutes(15)
   */
  readonly proxyTimeout?: Duration;
  /**
   * Request content types API Gateway passes to the functions base64-encoded instead of as UTF-8 text, so
   * uploads (audio transcription, files, images) reach the upstream byte for byte. JSON stays text.
   * @default DEFAULT_BINARY_MEDIA_TYPES
   */
  readonly binaryMediaTypes?: readonly string[];
  /**
   * Retention of the access log group.
   * @default logs.RetentionDays.THREE_MONTHS
   */
  readonly accessLogRetention?: logs.RetentionDays;
  /**
   * Also write API Gateway execution logs at this level. These need the account-wide API Gateway CloudWatch
   * role, which is then created (and kept) by this stack; data tracing (full request logging) stays off.
   * @default - no execution logs; access logs only
   */
  readonly executionLogLevel?: apigateway.MethodLoggingLevel;
  /**
   * ARN of a WAFv2 regional web ACL to associate with the stage.
   * @default - no web ACL; the stage throttle is the only rate guard
   */
  readonly webAclArn?: string;
}

/**
 * The public REST API (regional endpoint). No API Gateway authorizer: the proxy checks gateway keys and the
 * metrics API checks the admin key, inside the functions.
 *
 * Routes: `ANY /v1/{proxy+}` and `GET /healthz` → proxy, with response streaming; `ANY /metrics`,
 * `ANY /metrics/{proxy+}`, `ANY /dashboard`, `ANY /dashboard/{proxy+}` → metrics, buffered.
 *
 * @example
 * const api = new GatewayApi(this, 'Api', { proxyFunction, metricsFunction, throttle: { rateLimit: 20, burstLimit: 40 } });
 * new CfnOutput(this, 'BaseUrl', { value: api.urlFor('v1') });
 */
export class GatewayApi extends Construct {
  readonly restApi: apigateway.RestApi;
  readonly accessLogGroup: logs.LogGroup;

  constructor(scope: Construct, id: string, props: GatewayApiProps) {
    super(scope, id);
    const throttle = props.throttle ?? { rateLimit: 100, burstLimit: 200 };

    this.accessLogGroup = new logs.LogGroup(this, 'AccessLogs', {
      retention: props.accessLogRetention ?? logs.RetentionDays.THREE_MONTHS,
      removalPolicy: RemovalPolicy.DESTROY,
    });

    this.restApi = new apigateway.RestApi(this, 'RestApi', {
      description: 'LLM usage gateway: OpenAI-compatible proxy and metrics API',
      endpointConfiguration: { types: [apigateway.EndpointType.REGIONAL] },
      binaryMediaTypes: [...(props.binaryMediaTypes ?? DEFAULT_BINARY_MEDIA_TYPES)],
      cloudWatchRole: props.executionLogLevel !== undefined,
      deployOptions: {
        stageName: props.stageName ?? 'prod',
        accessLogDestination: new apigateway.LogGroupLogDestination(this.accessLogGroup),
        accessLogFormat: apigateway.AccessLogFormat.custom(JSON.stringify(ACCESS_LOG_FIELDS)),
        dataTraceEnabled: false,
        metricsEnabled: true,
        loggingLevel: props.executionLogLevel ?? apigateway.MethodLoggingLevel.OFF,
        throttlingRateLimit: throttle.rateLimit,
        throttlingBurstLimit: throttle.burstLimit,
      },
    });

    // The proxy function is a streaming handler, so every route to it must use the streaming invocation
    // (a buffered invoke would hand API Gateway the raw stream prelude instead of a proxy response).
    const streamed = new apigateway.LambdaIntegration(props.proxyFunction, {
      responseTransferMode: apigateway.ResponseTransferMode.STREAM,
      timeout: props.proxyTimeout ?? Duration.minutes(15),
      // One permission per function scoped to this API, instead of two per method.
      scopePermissionToMethod: false,
    });
    const buffered = new apigateway.LambdaIntegration(props.metricsFunction, { scopePermissionToMethod: false });

    const root = this.restApi.root;
    root.addResource('v1').addResource('{proxy+}').addMethod('ANY', streamed);
    root.addResource('healthz').addMethod('GET', streamed);
    for (const name of ['metrics', 'dashboard']) {
      const resource = root.addResource(name);
      resource.addMethod('ANY', buffered);
      resource.addResource('{proxy+}').addMethod('ANY', buffered);
    }

    if (props.webAclArn !== undefined) {
      new wafv2.CfnWebACLAssociation(this, 'WebAcl', {
        resourceArn: this.restApi.deploymentStage.stageArn,
        webAclArn: props.webAclArn,
      });
    }

    this.acknowledgeFindings(props);
  }

  /** Public URL of a path under the stage, e.g. `urlFor('v1')` → `https://…/prod/v1`. */
  urlFor(path: string): string {
    return this.restApi.urlForPath(`/${path.replace(/^\/+/, '')}`);
  }

  private acknowledgeFindings(props: GatewayApiProps): void {
    const acknowledge = Validations.of(this.restApi);
    acknowledge.acknowledge(
      {
        id: 'AwsSolutions-APIG4',
        reason:
          'Authorization happens in the functions: the proxy verifies the Helicone-Auth gateway key against hashed keys in DynamoDB, the metrics API verifies the admin key from Secrets Manager. An API Gateway authorizer would add a second Lambda invocation per request for the same check.',
      },
      {
        id: 'AwsSolutions-COG4',
        reason:
          'Callers are programs holding gateway keys (OpenAI SDK clients), not Cognito users; keys are checked by the functions.',
      },
      {
        id: 'AwsSolutions-APIG2',
        reason:
          'The proxy forwards arbitrary OpenAI-compatible bodies and the metrics API takes query strings; both validate their input in code and answer typed JSON errors, which API Gateway request models cannot express.',
      },
    );
    if (props.webAclArn === undefined) {
      acknowledge.acknowledge({
        id: 'AwsSolutions-APIG3',
        reason:
          'WAF is optional (webAclArn prop): every request already needs a valid gateway key and the stage is throttled; a web ACL costs a fixed monthly fee that a small self-hosted gateway may not want.',
      });
    }
    if (props.executionLogLevel === undefined) {
      acknowledge.acknowledge({
        id: 'AwsSolutions-APIG6',
        reason:
          'Access logs cover every request; execution logs need the account-wide API Gateway CloudWatch role, which this stack creates only when executionLogLevel is set.',
      });
    } else {
      acknowledge.acknowledge({
        id: 'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs]',
        reason: 'AmazonAPIGatewayPushToCloudWatchLogs is the AWS-maintained policy API Gateway requires for execution logs.',
      });
    }
  }
}
