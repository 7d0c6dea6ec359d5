/**
 * A local Lambda Runtime API (`2018-06-01`), enough to drive the official runtime interface client: it hands out
 * queued events on `GET /runtime/invocation/next` (long poll, with the Lambda-Runtime-* headers), and receives
 * buffered or streamed responses and errors. Streamed responses (`Lambda-Runtime-Function-Response-Mode:
 * streaming`, chunked) are recorded chunk by chunk with their arrival time, and every request is written to an
 * ordered timeline so tests can check what happened before what.
 */
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';

const PREFIX = '/2018-06-01/runtime';

export type RuntimeApiEventKind =
  | 'next-requested'
  | 'invocation-delivered'
  | 'response-started'
  | 'response-chunk'
  | 'response-ended'
  | 'response-aborted'
  | 'invocation-error'
  | 'init-error';

export interface RuntimeApiEvent {
  readonly kind: RuntimeApiEventKind;
  readonly requestId?: string;
  /** `performance.now()` when it happened. */
  readonly at: number;
}

export interface ReceivedChunk {
  readonly at: number;
  readonly bytes: Buffer;
}

export interface InvocationOutcome {
  readonly requestId: string;
  /** `response` for a response (streamed or buffered), `error` for `/invocation/{id}/error`. */
  readonly kind: 'response' | 'error';
  /** Headers of the runtime's POST. */
  readonly headers: IncomingHttpHeaders;
  readonly streaming: boolean;
  readonly chunks: readonly ReceivedChunk[];
  readonly body: Buffer;
  readonly trailers: Readonly<Record<string, string | undefined>>;
  /** True when the runtime API cut the response short (see {@link InvokeOptions.disconnectWhen}). */
  readonly aborted: boolean;
}

export interface InvokeOptions {
  readonly requestId?: string;
  /** Milliseconds the invocation has left, sent as Lambda-Runtime-Deadline-Ms. @default 30000 */
  readonly timeoutMs?: number;
  /** Destroys the response connection once this returns true for what arrived, like a client going away. */
  readonly disconnectWhen?: (received: Buffer) => boolean;
  /** Called on every chunk of the streamed response, with everything received so far. */
  readonly onChunk?: (received: Buffer) => void;
}

interface Pending {
  readonly requestId: string;
  readonly event: unknown;
  readonly options: InvokeOptions;
  resolve(outcome: InvocationOutcome): void;
  reject(error: Error): void;
}

export class LambdaRuntimeApi {
  /** Everything that happened, in order. */
  readonly timeline: RuntimeApiEvent[] = [];
  /** Called after each timeline entry, for tests that wait for one. */
  onEvent: ((event: RuntimeApiEvent) => void) | undefined;
  private readonly queue: Pending[] = [];
  private readonly waitingForNext: ServerResponse[] = [];
  private readonly inFlight = new Map<string, Pending>();
  private initError: Error | undefined;

  private constructor(private readonly server: Server) {}

  /** Starts on 127.0.0.1, on a free port. */
  static async start(): Promise<LambdaRuntimeApi> {
    const server = createServer();
    const api = new LambdaRuntimeApi(server);
    server.on('request', (req, res) => api.route(req, res));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return api;
  }

  /** `host:port`, the value of `AWS_LAMBDA_RUNTIME_API`. */
  get hostPort(): string {
    const { address, port } = this.server.address() as AddressInfo;
    return `${address}:${port}`;
  }

  /** Adds an entry to the timeline, for things the test itself observes. */
  mark(kind: string, requestId?: string): void {
    this.record(kind as RuntimeApiEventKind, requestId);
  }

  /** Queues an event and resolves with what the runtime posted back for it. */
  invoke(event: unknown, options: InvokeOptions = {}): Promise<InvocationOutcome> {
    if (this.initError) return Promise.reject(this.initError);
    return new Promise<InvocationOutcome>((resolve, reject) => {
      this.queue.push({ requestId: options.requestId ?? randomUUID(), event, options, resolve, reject });
      this.deliver();
    });
  }

  async close(): Promise<void> {
    for (const pending of [...this.queue, ...this.inFlight.values()]) pending.reject(new Error('Runtime API closed.'));
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  private record(kind: RuntimeApiEventKind, requestId?: string): void {
    const event = { kind, requestId, at: performance.now() };
    this.timeline.push(event);
    this.onEvent?.(event);
  }

  private deliver(): void {
    while (this.queue.length > 0 && this.waitingForNext.length > 0) {
      const pending = this.queue.shift()!;
      const res = this.waitingForNext.shift()!;
      if (res.destroyed) {
        this.queue.unshift(pending);
        continue;
      }
      this.inFlight.set(pending.requestId, pending);
      const body = JSON.stringify(pending.event);
      res.writeHead(200, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(body),
        'lambda-runtime-aws-request-id': pending.requestId,
        'lambda-runtime-deadline-ms': String(Date.now() + (pending.options.timeoutMs ?? 30_000)),
        'lambda-runtime-invoked-function-arn': 'arn:aws:lambda:us-east-1:123456789012:function:gateway-proxy',
        'lambda-runtime-trace-id': `Root=1-${Math.floor(Date.now() / 1000).toString(16)}-${randomUUID().replace(/-/g, '').slice(0, 24)};Sampled=0`,
      });
      res.end(body);
      this.record('invocation-delivered', pending.requestId);
    }
  }

  private route(req: IncomingMessage, res: ServerResponse): void {
    const url = req.url ?? '';
    if (req.method === 'GET' && url === `${PREFIX}/invocation/next`) {
      this.record('next-requested');
      this.waitingForNext.push(res);
      this.deliver();
      return;
    }
    const invocation = /^\/2018-06-01\/runtime\/invocation\/([^/]+)\/(response|error)$/.exec(url);
    if (req.method === 'POST' && invocation) {
      const requestId = decodeURIComponent(invocation[1]!);
      const pending = this.inFlight.get(requestId);
      if (pending === undefined) return reply(res, 400, { errorMessage: 'Unknown request id', errorType: 'InvalidRequestID' });
      return invocation[2] === 'response' ? this.receiveResponse(req, res, pending) : this.receiveError(req, res, pending);
    }
    if (req.method === 'POST' && url === `${PREFIX}/init/error`) {
      void readAll(req).then((body) => {
        this.record('init-error');
        this.initError = new Error(`The runtime failed to initialise: ${body.toString()}`);
        for (const pending of this.queue.splice(0)) pending.reject(this.initError);
        reply(res, 202, { status: 'OK' });
      });
      return;
    }
    reply(res, 404, { errorMessage: `No route for ${req.method} ${url}`, errorType: 'NotFound' });
  }

  private receiveResponse(req: IncomingMessage, res: ServerResponse, pending: Pending): void {
    const { requestId, options } = pending;
    const streaming = String(req.headers['lambda-runtime-function-response-mode'] ?? '').toLowerCase() === 'streaming';
    const chunks: ReceivedChunk[] = [];
    let received = Buffer.alloc(0);
    let aborted = false;
    this.record('response-started', requestId);
    const settle = () => {
      this.inFlight.delete(requestId);
      pending.resolve({
        requestId,
        kind: 'response',
        headers: req.headers,
        streaming,
        chunks,
        body: received,
        trailers: { ...req.trailers },
        aborted,
      });
    };
    req.on('data', (chunk: Buffer) => {
      if (aborted) return;
      chunks.push({ at: performance.now(), bytes: chunk });
      received = Buffer.concat([received, chunk]);
      this.record('response-chunk', requestId);
      options.onChunk?.(received);
      if (options.disconnectWhen?.(received)) {
        aborted = true;
        this.record('response-aborted', requestId);
        req.socket.destroy();
        settle();
      }
    });
    req.on('end', () => {
      if (aborted) return;
      this.record('response-ended', requestId);
      reply(res, 202, { status: 'OK' });
      settle();
    });
  }

  private receiveError(req: IncomingMessage, res: ServerResponse, pending: Pending): void {
    void readAll(req).then((body) => {
      this.record('invocation-error', pending.requestId);
      this.inFlight.delete(pending.requestId);
      reply(res, 202, { status: 'OK' });
      pending.resolve({
        requestId: pending.requestId,
        kind: 'error',
        headers: req.headers,
        streaming: false,
        chunks: [{ at: performance.now(), bytes: body }],
        body,
        trailers: {},
        aborted: false,
      });
    });
  }
}

function reply(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

async function readAll(req: IncomingMessage): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of req) parts.push(part as Buffer);
  return Buffer.concat(parts);
}
