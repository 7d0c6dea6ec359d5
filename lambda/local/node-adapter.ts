/**
 * Serves a fetch-style handler over node:http. Translation only: sockets to `Request`, `Response` back to the
 * socket chunk by chunk as the handler produces it, and client disconnects to request aborts and body
 * cancellation. Work registered with `waitUntil` is tracked so shutdown can wait for it.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { errorResponse } from '../core/errors';
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

function requestFrom(req: IncomingMessage, signal: AbortSignal): Request {
  const headers = new Headers();
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    try {
      headers.append(raw[i]!, raw[i + 1]!);
    } catch {
      // node:http has validated the header already; Headers is stricter about a few bytes. Skip, don't crash.
    }
  }
  const host = req.headers.host ?? 'localhost';
  const url = `http://${host}${req.url ?? '/'}`;
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
  // Send the status line and headers now: an SSE client should not wait for the first event to see them.
  res.flushHeaders();
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
    // The body failed mid-way (upstream broke). Headers are gone already: cut the connection so the client
    // sees an incomplete answer rather than a clean end.
    res.destroy();
  } finally {
    res.off('close', onClose);
  }
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

  const server = createServer({ noDelay: true, keepAliveTimeout: 65_000, requestTimeout: 0 }, (req, res) => {
    const abort = new AbortController();
    res.on('close', () => {
      if (!res.writableFinished) abort.abort();
    });
    req.on('error', () => abort.abort());
    void (async () => {
      let response: Response;
      try {
        response = await handler(requestFrom(req, abort.signal), context);
      } catch (error) {
        options.log.error('handler_failed', { method: req.method, error: describeError(error) });
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
    if (!socket.writable) return;
    const body = JSON.stringify({
      error: { message: 'Malformed HTTP request.', type: 'invalid_request_error', code: 'bad_http', param: null },
    });
    const status = (error as { code?: string }).code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : '400 Bad Request';
    socket.end(
      `HTTP/1.1 ${status}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
    );
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
