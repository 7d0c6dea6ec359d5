/**
 * Serves a fetch-style handler over node:http. Translation only: sockets to `Request`, `Response` back to the
 * socket chunk by chunk as the handler produces it, and client disconnects to request aborts and body
 * cancellation. Work registered with `waitUntil` is tracked so shutdown can wait for it.
 */
import { createServer, maxHeaderSize, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { Readable } from 'node:stream';
import { BadRequestError, GatewayError, MethodNotAllowedError, errorResponse } from '../core/errors';
import type { ExecutionContext, FetchHandler } from '../core/handler';
import { describeError, type Logger } from '../core/log';

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

function requestFrom(req: IncomingMessage, signal: AbortSignal): Request {
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
  const hasBody = req.method !== 'GET' && req.method !== 'HEAD';
  return new Request(url, {
    method: req.method,
    headers,
    body: hasBody ? (Readable.toWeb(req) as ReadableStream<Uint8Array>) : undefined,
    signal,
    // Required by Node's fetch for a streamed request body.
    duplex: 'half',
  } as RequestInit);
}

async function writeResponse(response: Response, res: ServerResponse): Promise<void> {
  const headers: string[] = [];
  for (const [name, value] of response.headers) {
    if (name === 'set-cookie') continue;
    headers.push(name, value);
  }
  for (const cookie of response.headers.getSetCookie()) headers.push('set-cookie', cookie);
  res.writeHead(response.status, response.statusText || undefined, headers);
  if (response.body === null) {
    res.end();
    return;
  }
  // An SSE client should see the status before the first event; other answers go out with their first chunk.
  if ((response.headers.get('content-type') ?? '').includes('text/event-stream')) res.flushHeaders();
  const reader = response.body.getReader();
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

/**
 * Starts serving `handler`.
 * @example const { url, close } = await serve(gateway, { port: 8787, host: '127.0.0.1', log });
 */
export async function serve(
  handler: FetchHandler,
  options: { readonly port: number; readonly host: string; readonly log: Logger },
): Promise<NodeServer> {
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
  const server = createServer({ noDelay: true, keepAliveTimeout: 65_000, requestTimeout: 0, requireHostHeader: false }, (req, res) => {
    const abort = new AbortController();
    const socket = req.socket;
    const open = owed.get(socket) ?? new Set<IncomingMessage>();
    owed.set(socket, open);
    open.add(req);
    res.on('close', () => {
      if (!res.writableFinished) abort.abort();
      open.delete(req);
      whenAnswered.get(socket)?.();
    });
    req.on('error', () => abort.abort());
    void (async () => {
      let response: Response;
      try {
        response = await handler(requestFrom(req, abort.signal), context);
      } catch (error) {
        if (!(error instanceof GatewayError) || error.statusCode >= 500) {
          options.log.error('handler_failed', { method: req.method, error: describeError(error) });
        }
        response = errorResponse(error);
      }
      try {
        await writeResponse(response, res);
      } catch (error) {
        options.log.warn('response_write_failed', { error: describeError(error) });
        res.destroy();
      }
    })();
  });
  server.on('clientError', (error, socket) => {
    // Malformed HTTP never reaches the handler; answer it in the same JSON shape when the socket still can.
    if (!socket.writable) {
      socket.destroy();
      return;
    }
    const tooLarge = (error as { code?: string }).code === 'HPE_HEADER_OVERFLOW';
    const answer = rawJsonError(
      tooLarge ? '431 Request Header Fields Too Large' : '400 Bad Request',
      tooLarge
        ? new BadRequestError('headers_too_large', `The request line and headers exceed ${maxHeaderSize} bytes.`)
        : new BadRequestError('bad_http', 'Malformed HTTP request.'),
    );
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
    res.writeHead(417, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body) });
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
