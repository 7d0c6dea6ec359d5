import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { Stack } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import * as apigateway from 'aws-cdk-lib/aws-apigateway';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { ACCESS_LOG_FIELDS, DEFAULT_BINARY_MEDIA_TYPES, GatewayApi } from '../../lib/gateway-api';
import { logicalIdOf, synthGateway, testApp } from './synth-stack';

let template: Template;
let proxyFnId: string;
let metricsFnId: string;

type Method = { Properties: Record<string, any> };

/** Every method, keyed `HTTPMETHOD /full/path`, with its integration. */
function methodsByRoute(t: Template): Map<string, Method> {
  const resources = t.findResources('AWS::ApiGateway::Resource') as Record<string, { Properties: Record<string, any> }>;
  const restApiId = logicalIdOf(t, 'AWS::ApiGateway::RestApi');
  const pathOf = (ref: unknown): string => {
    if (typeof ref === 'object' && ref !== null && 'Fn::GetAtt' in ref) {
      const [id] = (ref as { 'Fn::GetAtt': [string, string] })['Fn::GetAtt'];
      assert.equal(id, restApiId);
      return '';
    }
    const id = (ref as { Ref: string }).Ref;
    const r = resources[id]!;
    return `${pathOf(r.Properties.ParentId)}/${r.Properties.PathPart as string}`;
  };
  const routes = new Map<string, Method>();
  for (const method of Object.values(t.findResources('AWS::ApiGateway::Method')) as Method[]) {
    routes.set(`${method.Properties.HttpMethod as string} ${pathOf(method.Properties.ResourceId) || '/'}`, method);
  }
  return routes;
}

/** The function an integration URI invokes, and whether it is the streaming invocation path. */
function invokedFunction(method: Method): { fn: string; streaming: boolean } {
  const parts = method.Properties.Integration.Uri['Fn::Join'][1] as unknown[];
  const fn = (parts.find((p) => typeof p === 'object' && p !== null && 'Fn::GetAtt' in p) as { 'Fn::GetAtt': [string] })['Fn::GetAtt'][0];
  const path = parts.filter((p): p is string => typeof p === 'string').join('');
  if (path.includes('/2021-11-15/functions/') && path.endsWith('/response-streaming-invocations')) return { fn, streaming: true };
  if (path.includes('/2015-03-31/functions/') && path.endsWith('/invocations')) return { fn, streaming: false };
  throw new Error(`unexpected integration URI ${path}`);
}

before(() => {
  ({ template } = synthGateway());
  proxyFnId = logicalIdOf(template, 'AWS::Lambda::Function', { MemorySize: 256 });
  metricsFnId = logicalIdOf(template, 'AWS::Lambda::Function', { MemorySize: 512 });
});

describe('GatewayApi REST API', () => {
  it('is one REST API on a regional endpoint', () => {
    template.resourceCountIs('AWS::ApiGateway::RestApi', 1);
    template.hasResourceProperties('AWS::ApiGateway::RestApi', { EndpointConfiguration: { Types: ['REGIONAL'] } });
  });

  it('passes uploads to the functions base64-encoded, and JSON as text', () => {
    const types = template.toJSON().Resources[logicalIdOf(template, 'AWS::ApiGateway::RestApi')].Properties.BinaryMediaTypes as string[];
    assert.deepEqual(types, [...DEFAULT_BINARY_MEDIA_TYPES]);
    assert.ok(types.includes('multipart/form-data'));
    assert.ok(!types.some((t) => t === '*/*' || t.startsWith('application/json') || t.startsWith('text/')));
  });

  it('has exactly the proxy, health, metrics and dashboard routes', () => {
    assert.deepEqual([...methodsByRoute(template).keys()].sort(), [
      'ANY /dashboard',
      'ANY /dashboard/{proxy+}',
      'ANY /metrics',
      'ANY /metrics/{proxy+}',
      'ANY /v1/{proxy+}',
      'GET /healthz',
    ]);
  });

  it('streams /v1/{proxy+} from the proxy function with a 15-minute timeout', () => {
    const method = methodsByRoute(template).get('ANY /v1/{proxy+}')!;
    assert.deepEqual(invokedFunction(method), { fn: proxyFnId, streaming: true });
    assert.equal(method.Properties.Integration.Type, 'AWS_PROXY');
    assert.equal(method.Properties.Integration.IntegrationHttpMethod, 'POST');
    assert.equal(method.Properties.Integration.ResponseTransferMode, 'STREAM');
    assert.equal(method.Properties.Integration.TimeoutInMillis, 15 * 60 * 1000);
  });

  it('serves GET /healthz from the proxy function through the streaming invocation it needs', () => {
    const method = methodsByRoute(template).get('GET /healthz')!;
    assert.deepEqual(invokedFunction(method), { fn: proxyFnId, streaming: true });
    assert.equal(method.Properties.Integration.ResponseTransferMode, 'STREAM');
  });

  it('serves metrics and dashboard routes from the metrics function, buffered, within the 29 s default', () => {
    for (const route of ['ANY /metrics', 'ANY /metrics/{proxy+}', 'ANY /dashboard', 'ANY /dashboard/{proxy+}']) {
      const method = methodsByRoute(template).get(route)!;
      assert.deepEqual(invokedFunction(method), { fn: metricsFnId, streaming: false }, route);
      assert.equal(method.Properties.Integration.Type, 'AWS_PROXY', route);
      assert.equal(method.Properties.Integration.ResponseTransferMode, undefined, route);
      assert.equal(method.Properties.Integration.TimeoutInMillis, undefined, route);
    }
  });

  it('has no API Gateway authorizer: the functions check keys', () => {
    template.resourceCountIs('AWS::ApiGateway::Authorizer', 0);
    for (const method of methodsByRoute(template).values()) assert.equal(method.Properties.AuthorizationType, 'NONE');
  });

  it('lets API Gateway invoke each function through one permission scoped to this API', () => {
    const restApiId = logicalIdOf(template, 'AWS::ApiGateway::RestApi');
    for (const fn of [proxyFnId, metricsFnId]) {
      template.hasResourceProperties('AWS::Lambda::Permission', {
        Action: 'lambda:InvokeFunction',
        FunctionName: { 'Fn::GetAtt': [fn, 'Arn'] },
        Principal: 'apigateway.amazonaws.com',
        SourceArn: { 'Fn::Join': ['', Match.arrayWith([{ Ref: restApiId }])] },
      });
    }
    template.resourceCountIs('AWS::Lambda::Permission', 2);
  });
});

describe('GatewayApi stage', () => {
  function stage(): Record<string, any> {
    const stages = Object.values(template.findResources('AWS::ApiGateway::Stage')) as Array<{ Properties: Record<string, any> }>;
    assert.equal(stages.length, 1);
    return stages[0]!.Properties;
  }

  it('enables metrics, keeps data trace off and throttles at 100 rps with bursts of 200', () => {
    assert.deepEqual(stage().MethodSettings, [
      {
        HttpMethod: '*',
        ResourcePath: '/*',
        DataTraceEnabled: false,
        LoggingLevel: 'OFF',
        MetricsEnabled: true,
        ThrottlingBurstLimit: 200,
        ThrottlingRateLimit: 100,
      },
    ]);
  });

  it('writes access logs to its log group', () => {
    const groupId = logicalIdOf(template, 'AWS::Logs::LogGroup', { RetentionInDays: 90 });
    const destination = stage().AccessLogSetting.DestinationArn['Fn::Join'][1] as unknown[];
    assert.deepEqual(destination.at(-1), { Ref: groupId });
  });

  it('logs request metadata as JSON: id, ip, method, resource path, status, length, latencies', () => {
    const format = JSON.parse(stage().AccessLogSetting.Format as string) as Record<string, string>;
    assert.deepEqual(format, ACCESS_LOG_FIELDS);
    for (const field of ['requestId', 'ip', 'method', 'resourcePath', 'status', 'responseLength', 'integrationLatency']) {
      assert.ok(field in format, field);
    }
  });

  it('never logs a header, a body or a query string', () => {
    const format = stage().AccessLogSetting.Format as string;
    for (const leak of ['header', 'body', '$input', 'querystring', 'userAgent', 'requestOverride', 'authorizer']) {
      assert.ok(!format.toLowerCase().includes(leak.toLowerCase()), leak);
    }
  });

  it('creates no account-wide CloudWatch role when execution logs are off', () => {
    template.resourceCountIs('AWS::ApiGateway::Account', 0);
  });
});

describe('GatewayApi props', () => {
  function synthApi(props: Partial<ConstructorParameters<typeof GatewayApi>[2]>): Template {
    const stack = new Stack(testApp(), 'Props');
    const code = lambda.Code.fromInline('exports.handler = async () => ({})');
    const fn = (id: string) => new lambda.Function(stack, id, { code, handler: 'index.handler', runtime: lambda.Runtime.NODEJS_22_X });
    new GatewayApi(stack, 'Api', { proxyFunction: fn('Proxy'), metricsFunction: fn('Metrics'), ...props });
    return Template.fromStack(stack);
  }

  it('takes the throttle rate and burst', () => {
    synthApi({ throttle: { rateLimit: 7, burstLimit: 9 } }).hasResourceProperties('AWS::ApiGateway::Stage', {
      MethodSettings: [Match.objectLike({ ThrottlingRateLimit: 7, ThrottlingBurstLimit: 9 })],
    });
  });

  it('associates a WAF web ACL with the stage when given one', () => {
    const t = synthApi({ webAclArn: 'arn:aws:wafv2:us-east-1:123456789012:regional/webacl/gateway/abc' });
    t.hasResourceProperties('AWS::WAFv2::WebACLAssociation', {
      WebACLArn: 'arn:aws:wafv2:us-east-1:123456789012:regional/webacl/gateway/abc',
    });
  });

  it('turns on execution logs, and the CloudWatch role they need, at the requested level without data trace', () => {
    const t = synthApi({ executionLogLevel: apigateway.MethodLoggingLevel.ERROR });
    t.resourceCountIs('AWS::ApiGateway::Account', 1);
    t.hasResourceProperties('AWS::ApiGateway::Stage', {
      MethodSettings: [Match.objectLike({ LoggingLevel: 'ERROR', DataTraceEnabled: false })],
    });
  });
});
