/**
 * The local server's upstream HTTP client: the subset of `fetch` the proxy core uses, on node:http(s) with
 * keep-alive agents. Node's built-in fetch spends about a millisecond of CPU per request on WHATWG plumbing that a
 * proxy hop does not need; this client answers with a Web `Response` (a light one, see core/messages.ts), so the core
 * cannot tell the difference.
 *
 * Like fetch it decodes `content-encoding` (gzip, deflate, br), follows no redirects when asked not to, and rejects
 * when the signal aborts before the response headers; after that an abort destroys the body stream. Like browsers
 * (and undici) it sends a request once more, on a new connection, when a pooled keep-alive connection turns out to
 * have been closed by the upstream before the request reached it: see {@link createUpstreamClient}.
 */
import { Agent as HttpAgent, request as httpRequest, type ClientRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { describeError, silentLogger, type Logger } from '../core/log';
import { createBrotliDecompress, createGunzip, createInflate } from 'node:zlib';
import { LightResponse, streamOfReader, type BodySource, type LightReader, type ReadResult } from '../core/messages';

// Statuses whose responses never have a body (Response refuses one).
const NULL_BODY_STATUSES = new Set([101, 103, 204, 205, 304]);

/**
 * The answer's body, decoded as its `content-encoding` says (taken from the headers already read: reading
 * `message.headers` would make node build a second copy of them).
 */
function decoded(message: IncomingMessage, encoding: string | null): Readable {
  switch ((encoding ?? '').trim().toLowerCase()) {
    case 'gzip':
    case 'x-gzip':
      return message.pipe(createGunzip());
    case 'deflate':
      return message.pipe(createInflate());
    case 'br':
      return message.pipe(createBrotliDecompress());
    default:
      return message;
  }
}

/**
 * A reader of a Node stream's chunks, without a Web stream: reads only as fast as the consumer asks, cancels by
 * destroying. A socket that closes before the body is complete fails the read, like fetch's "terminated".
 */
function nodeReader(source: Readable, message: IncomingMessage): LightReader {
  let failure: Error | undefined;
  let ended = false;
  let waiting: (() => void) | undefined;
  const wake = () => {
    const resume = waiting;
    waiting = undefined;
    resume?.();
  };
  const fail = (error: Error) => {
    failure ??= error;
    wake();
  };
  const cut = () => fail(new Error('upstream connection closed mid-body'));
  source.on('readable', wake);
  source.on('end', () => {
    ended = true;
    wake();
  });
  source.on('error', fail);
  message.on('aborted', cut);
  message.on('close', () => {
    if (!message.complete) cut();
  });
  if (message.destroyed && !message.complete) cut();
  return {
    async read(): Promise<ReadResult> {
      for (;;) {
        if (failure !== undefined) throw failure;
        const chunk = source.read() as Buffer | null;
        if (chunk !== null) return { done: false, value: new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength) };
        if (ended || source.readableEnded) return { done: true };
        await new Promise<void>((resolve) => {
          waiting = resolve;
        });
      }
    },
    async cancel() {
      message.destroy();
      if (source !== message) source.destroy();
    },
  };
}

/** The whole of a Node stream's bytes; rejects like {@link nodeReader}'s reads. */
function wholeOf(source: Readable, message: IncomingMessage): Promise<Uint8Array> {
  return new Promise<Uint8Array>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      chunks.push(chunk);
      size += chunk.byteLength;
    };
    const onEnd = () => {
      cleanup();
      const bytes = new Uint8Array(size);
      let offset = 0;
      for (const chunk of chunks) {
        bytes.set(chunk, offset);
        offset += chunk.byteLength;
      }
      resolve(bytes);
    };
    const onError = (error: unknown) => {
      cleanup();
      reject(error);
    };
    // A socket that closes before the body is complete is a broken answer, like fetch's "terminated".
    const onAborted = () => onError(new Error('upstream connection closed mid-body'));
    const onClose = () => {
      if (!message.complete) onAborted();
    };
    const cleanup = () => {
      source.off('data', onData);
      source.off('end', onEnd);
      source.off('error', onError);
      message.off('aborted', onAborted);
      message.off('close', onClose);
    };
    if (message.destroyed && !message.complete) {
      onAborted();
      return;
    }
    source.on('data', onData);
    source.on('end', onEnd);
    source.on('error', onError);
    message.on('aborted', onAborted);
    message.on('close', onClose);
  });
}

/** An upstream answer's body: chunk by chunk when the proxy streams it, its bytes when it takes it whole. */
function bodyOf(message: IncomingMessage, encoding: string | null): BodySource {
  return {
    reader: () => nodeReader(decoded(message, encoding), message),
    stream: () => streamOfReader(nodeReader(decoded(message, encoding), message)),
    bytes: () => wholeOf(decoded(message, encoding), message),
  };
}

export interface UpstreamClientOptions {
  /** Most sockets kept per upstream host. @default 256 */
  readonly maxSockets?: number;
  /**
   * How long an idle keep-alive connection may wait in the pool before it is closed, in milliseconds. It is kept
   * below the idle timeouts upstreams commonly use (5 s for Node and uvicorn servers, 60 s and more for load
   * balancers), so the pool usually closes a connection before the upstream does; an upstream announcing
   * `Keep-Alive: timeout=N` shortens it to N − 1 s. Without it, Node keeps idle connections until the upstream closes
   * them, which is exactly the moment a request can be written into a dead connection (and so does 0). @default 4000
   */
  readonly idleSocketTimeoutMs?: number;
  /** Where a request sent again on a new connection is noted (host and error only). @default silentLogger */
  readonly log?: Logger;
}

// The errors of a connection the peer had closed: Node's "socket hang up" (ECONNRESET: closed before any answer),
// a reset read (ECONNRESET), a write into a closed connection (EPIPE) and a locally aborted connection.
const CONNECTION_CLOSED_CODES = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED']);

/**
 * How soon after the whole request went out a closed connection still counts as stale: the upstream's close was
 * already on its way (a round trip, plus a busy event loop noticing it). Later, the upstream may have read and run
 * the request, and sending it again could run (and bill) it twice.
 */
const STALE_CONNECTION_WINDOW_MS = 1_000;

function isConnectionClosed(error: unknown): boolean {
  const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown };
  return (typeof code === 'string' && CONNECTION_CLOSED_CODES.has(code)) || message === 'socket hang up';
}

/**
 * The request body as bytes in memory. The core has already read (and capped) the body before forwarding, and only
 * bytes can be sent a second time; a stream could not be replayed, so one is refused rather than sent.
 */
function bodyBytes(body: RequestInit['body']): Uint8Array | undefined {
  if (body === undefined || body === null) return undefined;
  if (typeof body === 'string') return Buffer.from(body, 'utf8');
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  if (ArrayBuffer.isView(body)) return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
  throw new TypeError('The upstream client sends bodies given as bytes or a string, not streams or forms.');
}

/** A record whose names are all lower case and values all strings (as the proxy builds for the upstream). */
function isLowerCaseRecord(record: object): record is Record<string, string> {
  for (const [name, value] of Object.entries(record)) {
    if (typeof value !== 'string' || name !== name.toLowerCase()) return false;
  }
  return true;
}

interface UpstreamRequest {
  readonly url: URL;
  readonly method: string;
  readonly headers: Record<string, string>;
  readonly body: Uint8Array | undefined;
  readonly signal: AbortSignal | undefined;
}

/**
 * Creates a fetch-compatible client for the proxy's upstream calls.
 *
 * **Stale keep-alive connections.** An upstream closes a keep-alive connection after it has been idle for a while.
 * If the gateway picks that connection from its pool at the same moment (its event loop was busy, so it had not yet
 * seen the close), the request is written into a dead connection and fails with ECONNRESET ("socket hang up") or
 * EPIPE, although the upstream never read it. Two defences:
 * - the pool closes idle connections first (`idleSocketTimeoutMs`), which makes the race rare;
 * - a request is sent once more, on a new connection outside the pool, when all of these hold: it went out on a
 *   reused connection (`request.reusedSocket`, for which Node's documentation recommends this retry), the error is
 *   ECONNRESET, EPIPE, ECONNABORTED or "socket hang up", not one byte of an answer arrived (not even the status line),
 *   and the caller's signal is not aborted. The body is bytes in memory, so the same body is sent.
 *
 * Why this is safe enough: a stale-connection failure means the upstream closed the connection before reading the
 * request, so it did no work and bills nothing. The residual risk is an upstream that read the request on a reused
 * connection and then died before answering anything (a crash, a load balancer dropping it): that request is sent
 * again and could be run, and billed, twice. It is bounded to one extra send; a fresh connection failing, a failure
 * after any answer byte (a broken stream stays an error), and an aborted request are never sent again.
 *
 * @example createProxy({ ..., fetch: createUpstreamClient({ log }) })
 */
export function createUpstreamClient(options: UpstreamClientOptions = {}): typeof fetch {
  const agentOptions = {
    keepAlive: true,
    maxSockets: options.maxSockets ?? 256,
    // The most recently used connection is the least likely to have been closed by the upstream for idleness.
    scheduling: 'lifo' as const,
    // On a pooled agent, `timeout` is the idle time after which a free connection is closed (and the cap on a
    // `Keep-Alive: timeout` hint, which Node ignores without it). On a connection in use it only emits 'timeout'
    // events, which nothing here listens to: a slow answer is the proxy's upstream timeout to judge.
    timeout: options.idleSocketTimeoutMs ?? 4_000,
  };
  const httpAgent = new HttpAgent(agentOptions);
  const httpsAgent = new HttpsAgent(agentOptions);
  const log = options.log ?? silentLogger;

  const exchange = (request: UpstreamRequest, pooled: boolean): Promise<Response> =>
    new Promise<Response>((resolve, reject) => {
      const { url, signal } = request;
      if (signal?.aborted) return reject(signal.reason);
      const secure = url.protocol === 'https:';
      // `agent: false` opens a connection of its own, closed after the answer: a resend must not take another
      // connection from a pool that may hold more of the ones the upstream closed.
      const agent = pooled ? (secure ? httpsAgent : httpAgent) : false;
      let socket: Socket | undefined;
      let bytesReadBefore = 0;
      let responded = false;
      /** When the whole request had been handed to the connection; undefined while it is still being sent. */
      let sentAt: number | undefined;

      const req: ClientRequest = (secure ? httpsRequest : httpRequest)(
        url,
        { method: request.method, headers: request.headers, agent },
        (message) => {
          responded = true;
          signal?.removeEventListener('abort', onAbortBeforeHeaders);
          signal?.addEventListener('abort', () => message.destroy(), { once: true });
          const responseHeaders = new Headers();
          const raw = message.rawHeaders;
          for (let i = 0; i < raw.length; i += 2) {
            try {
              responseHeaders.append(raw[i]!, raw[i + 1]!);
            } catch {
              // A header value Headers refuses (stray bytes): drop that header rather than the answer.
            }
          }
          const status = message.statusCode ?? 502;
          const hasBody = !NULL_BODY_STATUSES.has(status) && request.method !== 'HEAD';
          if (!hasBody) message.resume();
          resolve(
            new LightResponse(
              url.href,
              status < 200 || status > 599 ? 502 : status,
              message.statusMessage ?? '',
              responseHeaders,
              hasBody ? bodyOf(message, responseHeaders.get('content-encoding')) : null,
            ),
          );
        },
      );
      // A reused connection has read earlier answers: only bytes read after it was handed to this request count.
      // (On TLS this counts decrypted bytes, so the upstream's close_notify alert is not taken for an answer.)
      req.once('socket', (assigned: Socket) => {
        socket = assigned;
        bytesReadBefore = assigned.bytesRead;
      });
      const onAbortBeforeHeaders = () => {
        req.destroy();
        reject(signal?.reason ?? new Error('aborted'));
      };
      signal?.addEventListener('abort', onAbortBeforeHeaders, { once: true });
      req.on('error', (error) => {
        signal?.removeEventListener('abort', onAbortBeforeHeaders);
        const answered = responded || (socket !== undefined && socket.bytesRead > bytesReadBefore);
        // A stale connection fails at once, within about a round trip of the request going out. An upstream that
        // held the request for longer may have run it (a slow answer cut by a proxy): never sent twice.
        const failedAtOnce = sentAt === undefined || performance.now() - sentAt < STALE_CONNECTION_WINDOW_MS;
        // An abort also ends in "socket hang up", hence the signal check before anything else.
        if (pooled && req.reusedSocket && !answered && failedAtOnce && !signal?.aborted && isConnectionClosed(error)) {
          log.info('upstream_request_resent', { host: url.host, error: describeError(error) });
          resolve(exchange(request, false));
          return;
        }
        reject(error);
      });
      req.setNoDelay(true);
      req.once('finish', () => {
        sentAt = performance.now();
      });
      req.end(request.body);
    });

  const client = async (input: string | URL | Request, init: RequestInit = {}): Promise<Response> => {
    const url = new URL(typeof input === 'string' || input instanceof URL ? input : input.url);
    const headers: Record<string, string> = {};
    // The proxy hands over a record of lower-case names it built for this call: taken as it is. Anything else is
    // read through a Headers, which checks and combines it.
    const given = init.headers;
    if (given !== undefined && given !== null && !(given instanceof Headers) && !Array.isArray(given) && isLowerCaseRecord(given)) {
      Object.assign(headers, given);
    } else {
      (given instanceof Headers ? given : new Headers(given)).forEach((value, name) => {
        headers[name] = value;
      });
    }
    const body = bodyBytes(init.body);
    if (body !== undefined) headers['content-length'] = String(body.byteLength);
    return exchange({ url, method: init.method ?? 'GET', headers, body, signal: init.signal ?? undefined }, true);
  };
  return client as typeof fetch;
}
