/**
 * Serves a fetch-style handler over node:http. Translation only: sockets to `Request`, `Response` back to the
 * socket chunk by chunk as the handler produces it, and client disconnects to request aborts and body
 * cancellation. Work registered with `waitUntil` is tracked so shutdown can wait for it.
 *
 * A client cannot hold a connection by sending slowly: the request line and headers must arrive within
 * `headersTimeoutMs`, and the body within `bodyTimeoutMs` without pausing longer than `bodyIdleTimeoutMs`;
 * otherwise the answer is a JSON 408 and the connection is closed.
 */
import { createServer, maxHeaderSize, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { DEFAULT_BODY_IDLE_TIMEOUT_MS, DEFAULT_BODY_TIMEOUT_MS } from '../core/config';
import { BadRequestError, GatewayError, MethodNotAllowedError, RequestTimeoutError, errorResponse } from '../core/errors';
import type { ExecutionContext, FetchHandler } from '../core/handler';
import { describeError, type Logger } from '../core/log';
import { LightRequest, LightResponse, type BodySource, type LightReader } from '../core/messages';

export interface ServeOptions {
  readonly port: number;
  readonly host: string;
  readonly log: Logger;
  /** Longest a request body may take to arrive, counted from the end of its headers. @default DEFAULT_BODY_TIMEOUT_MS */
  readonly bodyTimeoutMs?: number;
  /** Longest the body may pause between two chunks. @default DEFAULT_BODY_IDLE_TIMEOUT_MS (at most bodyTimeoutMs) */
  readonly bodyIdleTimeoutMs?: number;
  /**
   * Longest the request line and headers may take, from the request's first byte (a new connection: from its
   * opening). node checks a few times per period, so a slow client is cut within about 1.25 times this.
   * @default DEFAULT_HEADERS_TIMEOUT_MS
   */
  readonly headersTimeoutMs?: number;
}

/** Headers are a few kilobytes: a client that needs longer than this for them is stalled or slow on purpose. */
export const DEFAULT_HEADERS_TIMEOUT_MS = 30_000;

export interface NodeServer {
  readonly server: Server;
  /** `http://host:port` the server listens on. */
  readonly url: string;
  /** Stops accepting connections, waits for open requests and their `waitUntil` work, then resolves. */
  close(): Promise<void>;
  /** Resolves when every `waitUntil` promise registered so far has settled. */
  idle(): Promise<void>;
}

// Methods a WHATWG Request refuses to represent; node:http parses them, so they are answered here.
const UNREPRESENTABLE_METHODS = new Set(['CONNECT', 'TRACE', 'TRACK']);
// A Host value that can only name a host and port: anything else (spaces, `/`, `?`, `@`) would change how the
// URL parses, so it is replaced rather than trusted. The host plays no part in routing or forwarding.
const AUTHORITY = /^[A-Za-z0-9._~:[\]-]{1,255}$/;

/** The request's URL: its origin-form target on the Host it names; absolute-form keeps only its path and query. */
function urlOf(req: IncomingMessage): URL {
  const host = req.headers.host !== undefined && AUTHORITY.test(req.headers.host) ? req.headers.host : 'localhost';
  const target = req.url ?? '/';
  try {
    if (target.startsWith('/')) return new URL(`http://${host}${target}`);
    if (target === '*') return new URL(`http://${host}/`);
    const absolute = new URL(target);
    if (absolute.protocol === 'http:' || absolute.protocol === 'https:') {
      return new URL(`http://${host}${absolute.pathname}${absolute.search}`);
    }
  } catch {
    // Falls through to the 400.
  }
  throw new BadRequestError('invalid_request_target', 'The request target is not a valid path.', { param: 'path' });
}

/** Whether a `Request` can carry a body for this method; the bytes of one that cannot are read and dropped. */
function carriesBody(method: string | undefined): boolean {
  return method !== 'GET' && method !== 'HEAD';
}

function requestFrom(req: IncomingMessage, signal: AbortSignal, body: BodySource | undefined): LightRequest {
  if (UNREPRESENTABLE_METHODS.has(req.method ?? '')) {
    throw new MethodNotAllowedError('method_not_allowed', `${req.method} is not supported.`, { param: 'method' });
  }
  const url = urlOf(req);
  const headers = new Headers();
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    try {
      headers.append(raw[i]!, raw[i + 1]!);
    } catch {
      // node:http has validated the header already; Headers is stricter about a few bytes. Skip, don't crash.
    }
  }
  return new LightRequest(url.href, req.method!, headers, signal, body ?? null);
}

interface BodyDeadlines {
  readonly totalMs: number;
  readonly idleMs: number;
}

/** What a request's body watch hands the server. */
interface RequestBody {
  /** The body for the `Request`; undefined when the method cannot carry one (its bytes are read and dropped). */
  readonly source: BodySource | undefined;
  /** Bytes received so far. */
  readonly received: () => number;
  /** True once the body arrived whole, the connection went, or a deadline passed: nothing more to wait for. */
  readonly settled: () => boolean;
  /** Nobody will read the stream any more (the answer is out): the rest of the body is read and dropped. */
  discard(): void;
}

/** How much of a request body is read ahead of the handler before the socket is paused. */
const BODY_HIGH_WATER_MARK = 64 * 1024;

/**
 * A request body on its way in, handed to the handler whichever way it asks first: as a Web stream (with
 * backpressure), or whole (`arrayBuffer()`, read as fast as it comes). Until it asks, up to
 * {@link BODY_HIGH_WATER_MARK} bytes are held.
 */
class BodyFeed implements BodySource {
  private queued: Uint8Array[] = [];
  private queuedBytes = 0;
  private outcome: { readonly error?: unknown } | undefined;
  private controller: ReadableStreamDefaultController<Uint8Array> | undefined;
  private whole: { resolve(bytes: Uint8Array): void; reject(error: unknown): void } | undefined;

  constructor(
    private readonly hooks: {
      /** The reader wants more: resume a paused socket. */
      readonly wantMore: () => void;
      /** The reader cancelled the stream: the rest of the body is read and dropped. */
      readonly cancelled: () => void;
    },
  ) {}

  /** Takes a chunk; false when the reader has enough for now (pause until `wantMore`). */
  push(chunk: Uint8Array): boolean {
    if (this.controller !== undefined) {
      this.controller.enqueue(chunk);
      return (this.controller.desiredSize ?? 1) > 0;
    }
    this.queued.push(chunk);
    this.queuedBytes += chunk.byteLength;
    return this.whole !== undefined || this.queuedBytes < BODY_HIGH_WATER_MARK;
  }

  /** The body is complete (no error) or broke off (an error). */
  end(error?: unknown): void {
    if (this.outcome !== undefined) return;
    this.outcome = error === undefined ? {} : { error };
    if (this.controller !== undefined) {
      try {
        if (error === undefined) this.controller.close();
        else this.controller.error(error);
      } catch {
        // The reader cancelled the stream already.
      }
    } else if (this.whole !== undefined) {
      this.settleWhole();
    }
  }

  stream(): ReadableStream<Uint8Array> {
    return new ReadableStream<Uint8Array>(
      {
        start: (controller) => {
          this.controller = controller;
          for (const chunk of this.queued) controller.enqueue(chunk);
          this.queued = [];
          if (this.outcome === undefined) return;
          if (this.outcome.error === undefined) controller.close();
          else controller.error(this.outcome.error);
        },
        pull: () => this.hooks.wantMore(),
        cancel: () => this.hooks.cancelled(),
      },
      { highWaterMark: BODY_HIGH_WATER_MARK, size: (chunk) => chunk.byteLength },
    );
  }

  bytes(): Promise<Uint8Array> {
    return new Promise<Uint8Array>((resolve, reject) => {
      this.whole = { resolve, reject };
      if (this.outcome !== undefined) this.settleWhole();
      else this.hooks.wantMore();
    });
  }

  private settleWhole(): void {
    const whole = this.whole!;
    if (this.outcome!.error !== undefined) {
      whole.reject(this.outcome!.error);
      return;
    }
    const bytes = new Uint8Array(this.queuedBytes);
    let offset = 0;
    for (const chunk of this.queued) {
      bytes.set(chunk, offset);
      offset += chunk.byteLength;
    }
    this.queued = [];
    whole.resolve(bytes);
  }
}

/**
 * Reads a request's body off the socket into a {@link BodyFeed} (with backpressure), under two deadlines: the whole body
 * within `totalMs` of its headers, and no pause longer than `idleMs` while the gateway waits for the client. A
 * pause the gateway causes (its reader is behind) does not count as idle. When a deadline passes the stream
 * errors with the {@link RequestTimeoutError} that `onTimeout` also receives.
 *
 * Without this a client announcing a body it never sends (`Content-Length: 1000` and ten bytes, a chunked body
 * with no last chunk, a byte every few seconds) would hold its connection and the handler waiting on it forever.
 */
function watchBody(
  req: IncomingMessage,
  deadlines: BodyDeadlines,
  onTimeout: (error: RequestTimeoutError, deadline: 'idle' | 'total') => void,
): RequestBody {
  let feeding = carriesBody(req.method);
  let settled = false;
  let paused = false;
  let received = 0;
  let idleTimer: NodeJS.Timeout | undefined;

  const socket = req.socket;
  const stop = () => {
    settled = true;
    disarmIdle();
    clearTimeout(totalTimer);
    req.off('data', onData);
    socket.off('close', onGone);
  };
  /** Ends what the stream hands out, with an error when the body did not arrive whole. */
  const unfeed = (error?: Error) => {
    if (!feeding) return;
    feeding = false;
    feed?.end(error);
  };
  const expire = (deadline: 'idle' | 'total') => {
    if (settled) return;
    stop();
    const error = new RequestTimeoutError(
      'request_body_timeout',
      deadline === 'idle'
        ? `The request body stalled: no byte of it arrived for ${deadlines.idleMs} ms.`
        : `The request body did not arrive within ${deadlines.totalMs} ms.`,
      { param: 'body' },
    );
    unfeed(error);
    onTimeout(error, deadline);
  };
  const armIdle = () => {
    // Restarting the one timer, rather than replacing it, on every chunk.
    if (idleTimer === undefined) idleTimer = setTimeout(() => expire('idle'), deadlines.idleMs).unref();
    else idleTimer.refresh();
  };
  /** A cleared timer cannot be restarted by refresh(): forget it, so the next armIdle() makes a new one. */
  const disarmIdle = () => {
    clearTimeout(idleTimer);
    idleTimer = undefined;
  };
  const onData = (chunk: Buffer) => {
    received += chunk.byteLength;
    if (feeding && feed !== undefined) {
      if (!feed.push(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength))) {
        // The reader is behind: the client is not what we are waiting for until it catches up.
        paused = true;
        req.pause();
        disarmIdle();
        return;
      }
    }
    armIdle();
  };
  const resume = () => {
    if (!paused || settled) return;
    paused = false;
    req.resume();
    armIdle();
  };

  const feed = feeding
    ? new BodyFeed({
        wantMore: () => resume(),
        cancelled: () => {
          feeding = false;
          resume();
        },
      })
    : undefined;
  const totalTimer = setTimeout(() => expire('total'), deadlines.totalMs).unref();
  armIdle();
  req.on('data', onData);
  req.once('end', () => {
    if (settled) return;
    stop();
    unfeed();
  });
  // The connection's close, not the request's: once the answer is out node detaches the request from its
  // connection, and the request never hears that the rest of its body will not come.
  function onGone(): void {
    if (settled) return;
    stop();
    unfeed(new Error('The connection closed before the request body was complete.'));
  }
  socket.once('close', onGone);
  return {
    source: feed,
    received: () => received,
    settled: () => settled,
    discard() {
      unfeed(new Error('The answer was sent before the request body was read.'));
      resume();
    },
  };
}

async function writeResponse(response: Response, res: ServerResponse): Promise<void> {
  const headers: string[] = [];
  for (const [name, value] of response.headers) {
    if (name === 'set-cookie') continue;
    headers.push(name, value);
  }
  for (const cookie of response.headers.getSetCookie()) headers.push('set-cookie', cookie);
  // An answer held whole in memory goes out in one write, its length known, without a stream to read.
  const whole = response instanceof LightResponse ? response.takeInMemory() : undefined;
  if (whole !== undefined) {
    if (!response.headers.has('content-length')) headers.push('content-length', String(whole.byteLength));
    res.writeHead(response.status, response.statusText || undefined, headers);
    res.end(whole);
    return;
  }
  res.writeHead(response.status, response.statusText || undefined, headers);
  // A light answer's chunks are read without a Web stream.
  const ownReader = response instanceof LightResponse ? response.takeReader() : undefined;
  if (ownReader === undefined && response.body === null) {
    res.end();
    return;
  }
  // An SSE client should see the status before the first event; other answers go out with their first chunk.
  if ((response.headers.get('content-type') ?? '').includes('text/event-stream')) res.flushHeaders();
  const reader: LightReader = ownReader ?? response.body!.getReader();
  const onClose = () => {
    if (!res.writableFinished) reader.cancel().catch(() => undefined);
  };
  res.on('close', onClose);
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (res.destroyed) return;
      if (!res.write(value)) {
        await new Promise<void>((resolve) => {
          const settle = () => {
            res.off('drain', settle);
            res.off('close', settle);
            resolve();
          };
          res.on('drain', settle);
          res.on('close', settle);
        });
      }
    }
    res.end();
  } catch {
    // The body failed mid-way (upstream broke): cut the connection so the client sees an incomplete answer rather
    // than a clean end. The status line and headers (Helicone-Id) go first even when no byte of the body came, and
    // the socket closes only once they have left.
    if (res.destroyed) return;
    res.flushHeaders();
    if (res.socket !== null) res.socket.destroySoon();
    else res.destroy();
  } finally {
    res.off('close', onClose);
  }
}

function errorBody(error: GatewayError): unknown {
  return { error: { message: error.message, type: error.type, code: error.code, param: error.param ?? null } };
}

/** A whole HTTP/1.1 JSON error answer for a socket no `ServerResponse` owns; the connection closes after it. */
function rawJsonError(status: string, error: GatewayError): string {
  const body = JSON.stringify(errorBody(error));
  return `HTTP/1.1 ${status}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`;
}

function positiveMs(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value <= 0) throw new RangeError(`${name} must be a positive whole number of milliseconds, got ${value}`);
  return value;
}

/**
 * Starts serving `handler`.
 * @example const { url, close } = await serve(gateway, { port: 8787, host: '127.0.0.1', log, bodyTimeoutMs: config.bodyTimeoutMs });
 */
export async function serve(handler: FetchHandler, options: ServeOptions): Promise<NodeServer> {
  const totalMs = positiveMs('bodyTimeoutMs', options.bodyTimeoutMs ?? DEFAULT_BODY_TIMEOUT_MS);
  const deadlines: BodyDeadlines = {
    totalMs,
    idleMs: Math.min(totalMs, positiveMs('bodyIdleTimeoutMs', options.bodyIdleTimeoutMs ?? DEFAULT_BODY_IDLE_TIMEOUT_MS)),
  };
  const headersTimeoutMs = positiveMs('headersTimeoutMs', options.headersTimeoutMs ?? DEFAULT_HEADERS_TIMEOUT_MS);
  const pending = new Set<Promise<unknown>>();
  const context: ExecutionContext = {
    waitUntil(promise) {
      const tracked: Promise<unknown> = promise.catch(() => undefined).finally(() => pending.delete(tracked));
      pending.add(tracked);
    },
  };

  // Requests each connection still owes an answer to: a malformed request pipelined behind whole ones is answered
  // after them.
  const owed = new WeakMap<Duplex, Set<IncomingMessage>>();
  const whenAnswered = new WeakMap<Duplex, () => void>();

  // requireHostHeader off: a request without Host gets the gateway's JSON answers, not node's empty 400.
  // requestTimeout off: the body's deadlines are kept per request below, where the answer can be the gateway's
  // JSON 408 and the handler's work can be stopped; node's would be an empty 408 written under a running handler.
  const server = createServer(
    {
      noDelay: true,
      keepAliveTimeout: 65_000,
      requestTimeout: 0,
      headersTimeout: headersTimeoutMs,
      // node looks for overdue headers on this period (30 s unless told), which would let a slow client keep a
      // connection up to twice the timeout.
      connectionsCheckingInterval: Math.max(10, Math.min(1_000, Math.floor(headersTimeoutMs / 4))),
      requireHostHeader: false,
    },
    (req, res) => {
      const abort = new AbortController();
      const socket = req.socket;
      const open = owed.get(socket) ?? new Set<IncomingMessage>();
      owed.set(socket, open);
      open.add(req);
      // Set once an answer is chosen: the handler's, or the 408 of a body that did not come in time.
      let answered = false;
      const answer = async (response: Response) => {
        answered = true;
        try {
          await writeResponse(response, res);
        } catch (error) {
          options.log.warn('response_write_failed', { error: describeError(error) });
          res.destroy();
        }
      };
      const body = watchBody(req, deadlines, (error, deadline) => {
        options.log.info('request_body_timeout', { method: req.method, deadline, received_bytes: body.received() });
        // Stops whatever the handler started for this request (an upstream call of a GET with a lying body).
        abort.abort(error);
        // The rest of the request is unknown, so the connection cannot carry another one.
        const closeConnection = () => socket.destroySoon();
        if (!answered) {
          res.once('close', closeConnection);
          void answer(errorResponse(error, { connection: 'close' }));
        } else if (res.writableFinished) {
          closeConnection();
        } else {
          // The handler answered without waiting for the body (a refusal): that answer finishes first.
          res.once('close', closeConnection);
        }
      });
      res.on('finish', () => {
        if (!body.settled()) body.discard();
      });
      res.on('close', () => {
        if (!res.writableFinished) abort.abort();
        open.delete(req);
        whenAnswered.get(socket)?.();
      });
      req.on('error', () => abort.abort());
      void (async () => {
        let response: Response;
        try {
          response = await handler(requestFrom(req, abort.signal, body.source), context);
        } catch (error) {
          if (!(error instanceof GatewayError) || error.statusCode >= 500) {
            options.log.error('handler_failed', { method: req.method, error: describeError(error) });
          }
          response = errorResponse(error);
        }
        if (answered) {
          // The 408 went out while the handler was still at work; what it answered in the end is not wanted.
          await response.body?.cancel().catch(() => undefined);
          return;
        }
        await answer(response);
      })();
    },
  );
  server.on('clientError', (error, socket) => {
    // Malformed HTTP never reaches the handler; answer it in the same JSON shape when the socket still can.
    if (!socket.writable) {
      socket.destroy();
      return;
    }
    const code = (error as { code?: string }).code;
    if (code === 'ERR_HTTP_REQUEST_TIMEOUT' && (socket as Socket).bytesRead === 0) {
      // A connection opened and never used: nobody asked anything, so there is nobody to answer.
      socket.destroy();
      return;
    }
    const answer =
      code === 'HPE_HEADER_OVERFLOW'
        ? rawJsonError('431 Request Header Fields Too Large', new BadRequestError('headers_too_large', `The request line and headers exceed ${maxHeaderSize} bytes.`))
        : code === 'ERR_HTTP_REQUEST_TIMEOUT'
          ? rawJsonError('408 Request Timeout', new RequestTimeoutError('request_headers_timeout', `The request line and headers did not arrive within ${headersTimeoutMs} ms.`))
          : rawJsonError('400 Bad Request', new BadRequestError('bad_http', 'Malformed HTTP request.'));
    // Written now, the answer would overtake those of the whole requests before it, and the client would read it as
    // the answer to its first request. (A request cut by this very error is never whole: it is not waited for.)
    const before = [...(owed.get(socket) ?? [])].filter((req) => req.complete);
    if (before.length === 0) {
      socket.end(answer);
      return;
    }
    whenAnswered.set(socket, () => {
      if (before.some((req) => owed.get(socket)?.has(req))) return;
      whenAnswered.delete(socket);
      if (socket.writable) socket.end(answer);
      else socket.destroy();
    });
  });
  // A CONNECT tunnel or an unmet Expect never reaches the request handler either; node would drop the socket or
  // answer with an empty body.
  server.on('connect', (_req: IncomingMessage, socket: Duplex) => {
    socket.on('error', () => socket.destroy());
    socket.end(rawJsonError('405 Method Not Allowed', new MethodNotAllowedError('method_not_allowed', 'CONNECT is not supported.', { param: 'method' })));
  });
  server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
    req.resume();
    const body = JSON.stringify(errorBody(new BadRequestError('expectation_failed', 'Only "Expect: 100-continue" is supported.', { param: 'Expect' })));
    // Closing rather than reading whatever body may follow: no handler runs, so no body deadline would bound it.
    res.writeHead(417, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body), connection: 'close' });
    res.end(body);
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;

  const idle = async () => {
    while (pending.size > 0) await Promise.all([...pending]);
  };
  return {
    server,
    url: `http://${host}:${address.port}`,
    idle,
    async close() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
      });
      await idle();
    },
  };
}
