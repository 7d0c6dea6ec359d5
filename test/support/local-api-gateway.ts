/**
 * A local API Gateway REST API for end-to-end tests: a `node:http` server that turns each HTTP request into the
 * `APIGatewayProxyEvent` the REST proxy integration sends, and plays the two integrations the stack deploys
 * (lib/gateway-api.ts):
 *
 * - `ANY /v1/{proxy+}` and `GET /healthz` → a response-streaming Lambda handler (`awslambda.streamifyResponse`),
 *   invoked with a {@link RuntimeResponseStream}. The stream must carry an HTTP integration response (JSON prelude,
 *   8 NUL bytes, body); the prelude becomes the status and headers, and every body chunk is written to the client
 *   as soon as the function writes it, with the client's backpressure passed back to the function. A client that
 *   disconnects destroys the function's response stream.
 * - `ANY /metrics`, `/metrics/{proxy+}`, `/dashboard`, `/dashboard/{proxy+}` → a buffered handler returning an
 *   `APIGatewayProxyResult`.
 *
 * Everything is served under the stage (`/prod/...` by default) and, as on API Gateway, the stage is not part of
 * `event.path` (it is in `requestContext.path` and `requestContext.stage`). Other paths and methods answer what
 * API Gateway answers for a route it does not have: 403 `{"message":"Missing Authentication Token"}`.
 *
 * The event follows what API Gateway documents and what live captures show: header names as the client sent them,
 * `multiValue*` maps holding every value and the single-value maps the last one (null when empty), `event.path`
 * still percent-encoded while `pathParameters` and query values are decoded, a body of a binary media type as
 * base64 with `isBase64Encoded: true` (other bodies as UTF-8 text), `body: null` when there is none, and
 * `X-Forwarded-For/-Port/-Proto` set by the gateway, and a trailing slash kept in `event.path` though it does not
 * change the route.
 *
 * @example
 * const restore = installAwslambdaShim();
 * const api = await startLocalApiGateway({
 *   streaming: awslambda.streamifyResponse(streamingHandler(proxyApp)),
 *   buffered: bufferedHandler(metricsApp),
 * });
 * const openai = new OpenAI({ apiKey, baseURL: `${api.url}/prod/v1` });
 * await api.idle();   // every invocation finished, usage writes included
 * await api.close(); restore();
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { APIGatewayProxyEvent, APIGatewayProxyResult, Context } from 'aws-lambda';
import type { HttpResponsePrelude, StreamingHandler } from '../../lambda/aws/awslambda';
import { DEFAULT_BINARY_MEDIA_TYPES } from '../../lib/gateway-api';
import { HTTP_INTEGRATION_RESPONSE_CONTENT_TYPE, PRELUDE_DELIMITER_LENGTH, RuntimeResponseStream } from './awslambda-shim';

/** The classic proxy handler shape (`bufferedHandler(...)`). */
export type BufferedProxyHandler = (event: APIGatewayProxyEvent) => Promise<APIGatewayProxyResult>;

export interface LocalApiGatewayOptions {
  /** Serves `ANY /v1/{proxy+}` and `GET /healthz`, streamed. */
  readonly streaming: StreamingHandler<APIGatewayProxyEvent>;
  /** Serves `/metrics`, `/metrics/{proxy+}`, `/dashboard` and `/dashboard/{proxy+}`, buffered. */
  readonly buffered: BufferedProxyHandler;
  /** @default 'prod' */
  readonly stage?: string;
  /** Request content types passed base64-encoded. @default DEFAULT_BINARY_MEDIA_TYPES of lib/gateway-api.ts */
  readonly binaryMediaTypes?: readonly string[];
}

export interface LocalApiGateway {
  /** `http://127.0.0.1:<port>`; the API lives under `${url}/<stage>`. */
  readonly url: string;
  readonly stage: string;
  /** Every event handed to a function, oldest first. Holds request headers (keys): never print it. */
  readonly events: APIGatewayProxyEvent[];
  /** Resolves once no invocation is running: the functions' work after the response (metering) is done too. */
  idle(): Promise<void>;
  /** Stops listening, drops open connections (which closes running response streams), then waits for {@link idle}. */
  close(): Promise<void>;
}

/** API Gateway's documented request payload limit for REST APIs. */
export const MAX_REQUEST_BYTES = 10 * 1024 * 1024;
/** API Gateway requires the streamed prelude (status and headers) within the first 16 KB. */
export const MAX_PRELUDE_BYTES = 16 * 1024;

const API_ID = 'localapi01';
const ACCOUNT_ID = '123456789012';
const FUNCTION_TIMEOUT_MS = 15 * 60 * 1000;
/** Connection-level request headers that API Gateway's front end consumes rather than passes on. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'transfer-encoding', 'upgrade']);
/** Set by API Gateway itself; a client's own values are replaced (X-Forwarded-For is appended to). */
const GATEWAY_SET = new Set(['x-forwarded-port', 'x-forwarded-proto', 'x-amzn-trace-id']);

interface Route {
  readonly integration: 'streaming' | 'buffered';
  readonly resource: string;
  readonly proxy: string | null;
}

/**
 * The route a stage-relative, still percent-encoded path and method take, or null (API Gateway's 403). A trailing
 * slash does not change the route (`/dashboard/` is the `/dashboard` resource) but stays in `event.path`.
 */
function routeOf(method: string, requestPath: string): Route | null {
  const path = requestPath.length > 1 && requestPath.endsWith('/') ? requestPath.slice(0, -1) : requestPath;
  const greedy = (prefix: string): string | null => {
    if (!path.startsWith(`${prefix}/`)) return null;
    const rest = path.slice(prefix.length + 1);
    return rest === '' ? null : rest;
  };
  const v1 = greedy('/v1');
  if (v1 !== null) return { integration: 'streaming', resource: '/v1/{proxy+}', proxy: v1 };
  if (path === '/healthz') return method === 'GET' ? { integration: 'streaming', resource: '/healthz', proxy: null } : null;
  for (const name of ['/metrics', '/dashboard']) {
    if (path === name) return { integration: 'buffered', resource: name, proxy: null };
    const rest = greedy(name);
    if (rest !== null) return { integration: 'buffered', resource: `${name}/{proxy+}`, proxy: rest };
  }
  return null;
}

export async function startLocalApiGateway(options: LocalApiGatewayOptions): Promise<LocalApiGateway> {
  const stage = options.stage ?? 'prod';
  const binaryMediaTypes = options.binaryMediaTypes ?? DEFAULT_BINARY_MEDIA_TYPES;
  const events: APIGatewayProxyEvent[] = [];
  const running = new Set<Promise<void>>();
  const track = (invocation: Promise<void>) => {
    const tracked = invocation.finally(() => running.delete(tracked));
    running.add(tracked);
  };

  // noDelay: each body chunk leaves in its own segment, so streaming is observable chunk by chunk.
  const server: Server = createServer({ noDelay: true }, (req, res) => {
    handle(req, res).catch((error: unknown) => {
      // A fault of this fake itself: answer as API Gateway does for an internal failure, never hang the client.
      if (!res.headersSent) sendGatewayError(res, 500, 'Internal server error', randomUUID());
      else res.destroy(error instanceof Error ? error : new Error(String(error)));
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const requestId = randomUUID();
    const method = (req.method ?? 'GET').toUpperCase();
    const target = req.url ?? '/';
    const queryAt = target.indexOf('?');
    const fullPath = queryAt < 0 ? target : target.slice(0, queryAt);
    const search = queryAt < 0 ? '' : target.slice(queryAt + 1);
    const stagePrefix = `/${stage}`;
    const path = fullPath.startsWith(`${stagePrefix}/`) ? fullPath.slice(stagePrefix.length) : null;
    const route = path === null ? null : routeOf(method, path);
    if (path === null || route === null) {
      req.resume();
      return sendGatewayError(res, 403, 'Missing Authentication Token', requestId, 'MissingAuthenticationTokenException');
    }

    const body = await readBody(req);
    if (body === null) return sendGatewayError(res, 413, 'Request Too Long', requestId);
    const event = eventFor({ req, method, path, fullPath, search, body, route, stage, requestId, binaryMediaTypes });
    events.push(event);

    if (route.integration === 'buffered') {
      const invocation = invokeBuffered(options.buffered, event, req, res, binaryMediaTypes);
      track(invocation);
      return invocation;
    }
    const invocation = invokeStreaming(options.streaming, event, res);
    track(invocation);
    return invocation;
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;

  const idle = async () => {
    while (running.size > 0) await Promise.allSettled([...running]);
  };
  return {
    url: `http://127.0.0.1:${port}`,
    stage,
    events,
    idle,
    async close() {
      const closed = new Promise<void>((resolve, reject) => server.close((error) => (error ? reject(error) : resolve())));
      server.closeAllConnections();
      await closed;
      await idle();
    },
  };
}

// ─── The event ───────────────────────────────────────────────────────────────────────────────────────────────────

interface EventInput {
  readonly req: IncomingMessage;
  readonly method: string;
  /** Stage-relative, percent-encoded as sent. */
  readonly path: string;
  /** With the stage. */
  readonly fullPath: string;
  readonly search: string;
  readonly body: Buffer;
  readonly route: Route;
  readonly stage: string;
  readonly requestId: string;
  readonly binaryMediaTypes: readonly string[];
}

function eventFor(input: EventInput): APIGatewayProxyEvent {
  const { req, method, route } = input;
  const sourceIp = (req.socket.remoteAddress ?? '127.0.0.1').replace(/^::ffff:/, '');
  const headerPairs: [string, string][] = [];
  let forwardedFor: string | undefined;
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
    const name = req.rawHeaders[i]!;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || GATEWAY_SET.has(lower)) continue;
    if (lower === 'x-forwarded-for') {
      forwardedFor = forwardedFor === undefined ? req.rawHeaders[i + 1]! : `${forwardedFor}, ${req.rawHeaders[i + 1]!}`;
      continue;
    }
    headerPairs.push([name, req.rawHeaders[i + 1]!]);
  }
  const traceId = `Root=1-${Math.floor(Date.now() / 1000).toString(16)}-${randomBytes(12).toString('hex')}`;
  headerPairs.push(
    ['X-Amzn-Trace-Id', traceId],
    ['X-Forwarded-For', forwardedFor === undefined ? sourceIp : `${forwardedFor}, ${sourceIp}`],
    ['X-Forwarded-Port', String(req.socket.localPort ?? 443)],
    ['X-Forwarded-Proto', 'http'],
  );

  const query = [...new URLSearchParams(input.search)];
  const contentType = req.headers['content-type'];
  const binary = isBinaryMediaType(contentType, input.binaryMediaTypes);
  const now = new Date();
  const host = req.headers.host ?? `127.0.0.1:${req.socket.localPort ?? 0}`;

  return {
    resource: route.resource,
    path: input.path,
    httpMethod: method,
    headers: lastValues(headerPairs),
    multiValueHeaders: allValues(headerPairs),
    queryStringParameters: query.length > 0 ? lastValues(query) : null,
    multiValueQueryStringParameters: query.length > 0 ? allValues(query) : null,
    pathParameters: route.proxy === null ? null : { proxy: safeDecode(route.proxy) },
    stageVariables: null,
    requestContext: {
      accountId: ACCOUNT_ID,
      apiId: API_ID,
      authorizer: undefined,
      domainName: host.replace(/:\d+$/, ''),
      domainPrefix: host.split('.')[0]!.replace(/:\d+$/, ''),
      extendedRequestId: randomBytes(8).toString('base64url').slice(0, 14) + '=',
      httpMethod: method,
      identity: {
        accessKey: null,
        accountId: null,
        apiKey: null,
        apiKeyId: null,
        caller: null,
        clientCert: null,
        cognitoAuthenticationProvider: null,
        cognitoAuthenticationType: null,
        cognitoIdentityId: null,
        cognitoIdentityPoolId: null,
        principalOrgId: null,
        sourceIp,
        user: null,
        userAgent: req.headers['user-agent'] ?? null,
        userArn: null,
      },
      path: input.fullPath,
      protocol: `HTTP/${req.httpVersion}`,
      requestId: input.requestId,
      requestTime: requestTime(now),
      requestTimeEpoch: now.getTime(),
      resourceId: 'res001',
      resourcePath: route.resource,
      stage: input.stage,
    },
    body: input.body.byteLength === 0 ? null : binary ? input.body.toString('base64') : input.body.toString('utf8'),
    isBase64Encoded: input.body.byteLength > 0 && binary,
  };
}

/** `binaryMediaTypes` entries are `type/subtype` with `*` wildcards, matched against the media type only. */
export function isBinaryMediaType(contentType: string | undefined, binaryMediaTypes: readonly string[]): boolean {
  if (contentType === undefined) return false;
  const type = contentType.split(';')[0]!.trim().toLowerCase();
  return binaryMediaTypes.some((pattern) => {
    const [wantType, wantSub] = pattern.toLowerCase().split('/');
    const [gotType, gotSub] = type.split('/');
    return (wantType === '*' || wantType === gotType) && (wantSub === '*' || wantSub === gotSub);
  });
}

/** `$context.requestTime`: `09/Apr/2015:12:34:56 +0000`. */
function requestTime(date: Date): string {
  const months = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
  const two = (n: number) => String(n).padStart(2, '0');
  return (
    `${two(date.getUTCDate())}/${months[date.getUTCMonth()]}/${date.getUTCFullYear()}:` +
    `${two(date.getUTCHours())}:${two(date.getUTCMinutes())}:${two(date.getUTCSeconds())} +0000`
  );
}

function safeDecode(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

function lastValues(pairs: readonly (readonly [string, string])[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of pairs) out[name] = value;
  return out;
}

function allValues(pairs: readonly (readonly [string, string])[]): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const [name, value] of pairs) (out[name] ??= []).push(value);
  return out;
}

/** The whole request body, or null when it is over {@link MAX_REQUEST_BYTES}. */
async function readBody(req: IncomingMessage): Promise<Buffer | null> {
  const chunks: Buffer[] = [];
  let size = 0;
  let tooLarge = false;
  for await (const chunk of req) {
    size += (chunk as Buffer).byteLength;
    if (size > MAX_REQUEST_BYTES) tooLarge = true;
    if (!tooLarge) chunks.push(chunk as Buffer);
  }
  return tooLarge ? null : Buffer.concat(chunks);
}

// ─── Integrations ────────────────────────────────────────────────────────────────────────────────────────────────

function lambdaContext(requestId: string, functionName: string): Context {
  const deadline = Date.now() + FUNCTION_TIMEOUT_MS;
  const unsupported = () => {
    throw new Error('Legacy context callbacks are not available to async handlers.');
  };
  return {
    callbackWaitsForEmptyEventLoop: true,
    functionName,
    functionVersion: '$LATEST',
    invokedFunctionArn: `arn:aws:lambda:us-east-1:${ACCOUNT_ID}:function:${functionName}`,
    memoryLimitInMB: '256',
    awsRequestId: requestId,
    logGroupName: `/aws/lambda/${functionName}`,
    logStreamName: `2026/01/01/[$LATEST]${randomBytes(16).toString('hex')}`,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
    done: unsupported,
    fail: unsupported,
    succeed: unsupported,
  };
}

/**
 * Runs the streaming function once. The client's response ends when the function ends its stream, not when the
 * handler resolves: the handler goes on with its bookkeeping after that, and the invocation lasts until it does.
 */
async function invokeStreaming(
  handler: StreamingHandler<APIGatewayProxyEvent>,
  event: APIGatewayProxyEvent,
  res: ServerResponse,
): Promise<void> {
  const requestId = event.requestContext.requestId;
  const relay = new IntegrationResponseRelay(res, requestId);
  const stream = new RelayedResponseStream(relay);
  relay.attach(stream);
  // API Gateway tells a streaming function the client left by closing its stream; the adapter watches 'close'.
  res.on('close', () => {
    if (!stream.writableFinished && !stream.destroyed) stream.destroy();
  });
  try {
    await handler(event, stream, lambdaContext(randomUUID(), 'proxy'));
    // The runtime ends a stream the handler left open once the handler's promise resolves.
    if (!stream.writableEnded && !stream.destroyed) stream.end();
  } catch {
    // A rejected invocation: before any byte, API Gateway answers 502; after, the client's stream is cut.
    relay.fail();
    if (!stream.destroyed) stream.destroy();
  }
}

/** What reaches the Runtime API is recorded (as the shim does) and relayed to the client as it arrives. */
class RelayedResponseStream extends RuntimeResponseStream {
  constructor(private readonly relay: IntegrationResponseRelay) {
    super();
  }

  override _write(chunk: Buffer, encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    super._write(chunk, encoding, (error) => {
      if (error) return callback(error);
      this.relay.push(chunk).then(() => callback(), callback);
    });
  }
}

/** API Gateway's side of a streamed HTTP integration response: prelude first, then body bytes to the client. */
class IntegrationResponseRelay {
  private stream: RuntimeResponseStream | undefined;
  private prelude: Buffer | null = Buffer.alloc(0);
  private failed = false;

  constructor(
    private readonly res: ServerResponse,
    private readonly requestId: string,
  ) {}

  attach(stream: RuntimeResponseStream): void {
    this.stream = stream;
    stream.on('finish', () => this.finish());
  }

  async push(chunk: Buffer): Promise<void> {
    if (this.failed || this.res.destroyed) return;
    if (this.prelude !== null) {
      if (this.stream?.contentType !== HTTP_INTEGRATION_RESPONSE_CONTENT_TYPE) return this.fail();
      const pending = Buffer.concat([this.prelude, chunk]);
      const end = pending.indexOf(0);
      if (end < 0 || pending.length < end + PRELUDE_DELIMITER_LENGTH) {
        if (pending.length > MAX_PRELUDE_BYTES) return this.fail();
        this.prelude = pending;
        return;
      }
      const delimiter = pending.subarray(end, end + PRELUDE_DELIMITER_LENGTH);
      if (delimiter.some((byte) => byte !== 0) || end > MAX_PRELUDE_BYTES) return this.fail();
      let prelude: HttpResponsePrelude;
      try {
        prelude = JSON.parse(pending.subarray(0, end).toString('utf8')) as HttpResponsePrelude;
        this.writeHead(prelude);
      } catch {
        return this.fail();
      }
      this.prelude = null;
      chunk = pending.subarray(end + PRELUDE_DELIMITER_LENGTH);
      if (chunk.length === 0) return;
    }
    if (this.res.write(chunk)) return;
    await new Promise<void>((resolve) => {
      const done = () => {
        this.res.off('drain', done);
        this.res.off('close', done);
        resolve();
      };
      this.res.on('drain', done);
      this.res.on('close', done);
    });
  }

  /** Ends the client's response, or answers 502 when the function never sent a complete prelude. */
  finish(): void {
    if (this.failed || this.res.destroyed) return;
    if (this.prelude !== null) return this.fail();
    this.res.end();
  }

  fail(): void {
    if (this.failed) return;
    this.failed = true;
    if (!this.res.headersSent) sendGatewayError(this.res, 502, 'Internal server error', this.requestId);
    else this.res.destroy();
  }

  private writeHead(prelude: HttpResponsePrelude): void {
    const status = prelude.statusCode;
    if (!Number.isInteger(status) || status < 100 || status > 599) throw new Error('bad status');
    applyHeaders(this.res, prelude.headers, prelude.multiValueHeaders);
    this.res.setHeader('x-amzn-RequestId', this.requestId);
    this.res.writeHead(status);
    // The status and headers reach the client before the first body byte, as for an SSE stream on AWS.
    this.res.flushHeaders();
  }
}

async function invokeBuffered(
  handler: BufferedProxyHandler,
  event: APIGatewayProxyEvent,
  req: IncomingMessage,
  res: ServerResponse,
  binaryMediaTypes: readonly string[],
): Promise<void> {
  const requestId = event.requestContext.requestId;
  let result: APIGatewayProxyResult;
  try {
    result = await handler(event);
  } catch {
    return sendGatewayError(res, 502, 'Internal server error', requestId);
  }
  if (res.destroyed) return;
  if (!Number.isInteger(result?.statusCode) || typeof (result.body ?? '') !== 'string') {
    return sendGatewayError(res, 502, 'Internal server error', requestId);
  }
  // A base64 body becomes bytes only when the client's first Accept type is a binary media type; otherwise API
  // Gateway hands the client the base64 text itself.
  const firstAccept = String(req.headers.accept ?? '').split(',')[0]!.trim();
  const decode = result.isBase64Encoded === true && isBinaryMediaType(firstAccept || undefined, binaryMediaTypes);
  const body = decode ? Buffer.from(result.body, 'base64') : Buffer.from(result.body ?? '', 'utf8');
  try {
    applyHeaders(res, result.headers, result.multiValueHeaders);
  } catch {
    return sendGatewayError(res, 502, 'Internal server error', requestId);
  }
  res.setHeader('x-amzn-RequestId', requestId);
  res.setHeader('content-length', body.byteLength);
  res.writeHead(result.statusCode);
  res.end(body);
}

type HeaderMap = Readonly<Record<string, string | number | boolean | readonly (string | number | boolean)[]>>;

/** `headers` and `multiValueHeaders` merged; for a name in both, the multi-value list wins, as on API Gateway. */
function applyHeaders(res: ServerResponse, headers: HeaderMap | undefined, multi: HeaderMap | undefined): void {
  const merged = new Map<string, { name: string; values: string[] }>();
  const add = (source: HeaderMap | undefined) => {
    for (const [name, value] of Object.entries(source ?? {})) {
      const values = (Array.isArray(value) ? value : [value]).map(String);
      merged.set(name.toLowerCase(), { name, values });
    }
  };
  add(headers);
  add(multi);
  for (const { name, values } of merged.values()) {
    if (HOP_BY_HOP.has(name.toLowerCase()) || name.toLowerCase() === 'content-length') continue;
    res.setHeader(name, values.length === 1 ? values[0]! : values);
  }
}

function sendGatewayError(res: ServerResponse, status: number, message: string, requestId: string, errorType?: string): void {
  const payload = JSON.stringify({ message });
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(payload),
    'x-amzn-RequestId': requestId,
    ...(errorType === undefined ? {} : { 'x-amzn-ErrorType': errorType }),
  });
  res.end(payload);
}
