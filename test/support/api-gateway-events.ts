/**
 * API Gateway REST API (payload format 1.0) proxy events for tests, built from the sample in the API Gateway
 * developer guide ("Input format of a Lambda function for proxy integration"): a `POST /testStage/hello/world?name=me`
 * to a `/{proxy+}` resource. The sample is kept as published, quirks included (an empty header name, a query
 * name with two values whose single-value map keeps the last one, no stage prefix in `path`), and lacks a few
 * fields `APIGatewayProxyEvent` declares, as real events from older deployments do.
 */
import type { APIGatewayProxyEvent } from 'aws-lambda';

const DOCS_SAMPLE_EVENT = {
  resource: '/{proxy+}',
  path: '/hello/world',
  httpMethod: 'POST',
  headers: {
    Accept: '*/*',
    'Accept-Encoding': 'gzip, deflate',
    'cache-control': 'no-cache',
    'CloudFront-Forwarded-Proto': 'https',
    'CloudFront-Is-Desktop-Viewer': 'true',
    'CloudFront-Is-Mobile-Viewer': 'false',
    'CloudFront-Is-SmartTV-Viewer': 'false',
    'CloudFront-Is-Tablet-Viewer': 'false',
    'CloudFront-Viewer-Country': 'US',
    'Content-Type': 'application/json',
    headerName: 'headerValue',
    Host: 'gy415nuibc.execute-api.us-east-1.amazonaws.com',
    'Postman-Token': '9f583ef0-ed83-4a38-aef3-eb9ce3f7a57f',
    'User-Agent': 'PostmanRuntime/2.4.5',
    Via: '1.1 d98420743a69852491bbdea73f7680bd.cloudfront.net (CloudFront)',
    'X-Amz-Cf-Id': 'pn-PWIJc6thYnZm5P0NMgOUglL1DYtl0gdeJky8tqsg8iS_sgsKD1A==',
    'X-Forwarded-For': '54.240.196.186, 54.182.214.83',
    'X-Forwarded-Port': '443',
    'X-Forwarded-Proto': 'https',
  },
  multiValueHeaders: {
    Accept: ['*/*'],
    'Accept-Encoding': ['gzip, deflate'],
    'cache-control': ['no-cache'],
    'CloudFront-Forwarded-Proto': ['https'],
    'CloudFront-Is-Desktop-Viewer': ['true'],
    'CloudFront-Is-Mobile-Viewer': ['false'],
    'CloudFront-Is-SmartTV-Viewer': ['false'],
    'CloudFront-Is-Tablet-Viewer': ['false'],
    'CloudFront-Viewer-Country': ['US'],
    '': [''],
    'Content-Type': ['application/json'],
    headerName: ['headerValue'],
    Host: ['gy415nuibc.execute-api.us-east-1.amazonaws.com'],
    'Postman-Token': ['9f583ef0-ed83-4a38-aef3-eb9ce3f7a57f'],
    'User-Agent': ['PostmanRuntime/2.4.5'],
    Via: ['1.1 d98420743a69852491bbdea73f7680bd.cloudfront.net (CloudFront)'],
    'X-Amz-Cf-Id': ['pn-PWIJc6thYnZm5P0NMgOUglL1DYtl0gdeJky8tqsg8iS_sgsKD1A=='],
    'X-Forwarded-For': ['54.240.196.186, 54.182.214.83'],
    'X-Forwarded-Port': ['443'],
    'X-Forwarded-Proto': ['https'],
  },
  queryStringParameters: {
    name: 'me',
    multivalueName: 'me',
  },
  multiValueQueryStringParameters: {
    name: ['me'],
    multivalueName: ['you', 'me'],
  },
  pathParameters: {
    proxy: 'hello/world',
  },
  stageVariables: {
    stageVariableName: 'stageVariableValue',
  },
  requestContext: {
    accountId: '12345678912',
    resourceId: 'roq9wj',
    stage: 'testStage',
    requestId: 'deef4878-7910-11e6-8f14-25afc3e9ae33',
    identity: {
      cognitoIdentityPoolId: null,
      accountId: null,
      cognitoIdentityId: null,
      caller: null,
      apiKey: null,
      sourceIp: '192.168.196.186',
      cognitoAuthenticationType: null,
      cognitoAuthenticationProvider: null,
      userArn: null,
      userAgent: 'PostmanRuntime/2.4.5',
      user: null,
    },
    resourcePath: '/{proxy+}',
    httpMethod: 'POST',
    apiId: 'gy415nuibc',
  },
  body: '{\r\n\t"a": 1\r\n}',
  isBase64Encoded: false,
};

/** A fresh copy of the developer guide's sample REST proxy event. */
export function docsSampleEvent(): APIGatewayProxyEvent {
  return structuredClone(DOCS_SAMPLE_EVENT) as unknown as APIGatewayProxyEvent;
}

export interface RestProxyRequest {
  readonly method?: string;
  /** Path without the stage, as API Gateway puts it in `event.path`. */
  readonly path?: string;
  /** Header pairs in arrival order; a repeated name becomes several `multiValueHeaders` values. */
  readonly headers?: ReadonlyArray<readonly [string, string]>;
  readonly query?: ReadonlyArray<readonly [string, string]>;
  readonly body?: string | Uint8Array | null;
}

/**
 * The event API Gateway sends for a request, built on the sample's `requestContext` the way API Gateway fills
 * both maps: `multiValue*` with every value, the single-value maps with the last one. A `Uint8Array` body is sent
 * base64-encoded, as for a binary media type.
 *
 * @example restProxyEvent({ method: 'POST', path: '/v1/chat/completions', headers: [['content-type', 'application/json']], body: '{}' })
 */
export function restProxyEvent(request: RestProxyRequest = {}): APIGatewayProxyEvent {
  const event = docsSampleEvent();
  const method = request.method ?? 'GET';
  const path = request.path ?? '/';
  const headerPairs = request.headers ?? [['Host', 'gy415nuibc.execute-api.us-east-1.amazonaws.com'], ['X-Forwarded-Proto', 'https']];
  const body = request.body ?? null;

  event.httpMethod = method;
  event.path = path;
  event.resource = '/{proxy+}';
  event.pathParameters = { proxy: path.replace(/^\//, '') };
  event.requestContext.httpMethod = method;
  event.requestContext.resourcePath = '/{proxy+}';
  event.headers = lastValues(headerPairs);
  event.multiValueHeaders = allValues(headerPairs);
  event.queryStringParameters = request.query && request.query.length > 0 ? lastValues(request.query) : null;
  event.multiValueQueryStringParameters = request.query && request.query.length > 0 ? allValues(request.query) : null;
  if (body instanceof Uint8Array) {
    event.body = Buffer.from(body).toString('base64');
    event.isBase64Encoded = true;
  } else {
    event.body = body;
    event.isBase64Encoded = false;
  }
  return event;
}

function lastValues(pairs: ReadonlyArray<readonly [string, string]>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of pairs) out[name] = value;
  return out;
}

function allValues(pairs: ReadonlyArray<readonly [string, string]>): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const [name, value] of pairs) (out[name] ??= []).push(value);
  return out;
}
