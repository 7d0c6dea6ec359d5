/**
 * The local server's upstream HTTP client: the subset of `fetch` the proxy core uses, on node:http(s) with
 * keep-alive agents. Node's built-in fetch spends about a millisecond of CPU per request on WHATWG plumbing that a
 * proxy hop does not need; this client answers with the same Web `Response`, so the core cannot tell the difference.
 *
 * Like fetch it decodes `content-encoding` (gzip, deflate, br), follows no redirects when asked not to, and rejects
 * when the signal aborts before the response headers; after that an abort destroys the body stream.
 */
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import type { Readable } from 'node:stream';
import { createBrotliDecompress, createGunzip, createInflate } from 'node:zlib';

// Statuses whose responses never have a body (Response refuses one).
const NULL_BODY_STATUSES = new Set([101, 103, 204, 205, 304]);

function decoded(message: IncomingMessage): Readable {
  switch ((message.headers['content-encoding'] ?? '').trim().toLowerCase()) {
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

/** A pull-based Web stream over a Node stream: reads only as fast as the consumer takes, cancels by destroying. */
function webStreamOf(source: Readable, message: IncomingMessage): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>({
    start(controller) {
      source.on('error', (error) => controller.error(error));
      // A socket that closes before the body is complete is a broken answer, like fetch's "terminated".
      message.on('aborted', () => controller.error(new Error('upstream connection closed mid-body')));
      message.on('close', () => {
        if (!message.complete) controller.error(new Error('upstream connection closed mid-body'));
      });
    },
    pull(controller) {
      return new Promise<void>((resolve) => {
        const take = (): boolean => {
          const chunk = source.read() as Buffer | null;
          if (chunk === null) return false;
          controller.enqueue(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
          return true;
        };
        if (take()) return resolve();
        const onReadable = () => {
          if (take()) {
            cleanup();
            resolve();
          }
        };
        const onEnd = () => {
          cleanup();
          try {
            controller.close();
          } catch {
            // Already errored.
          }
          resolve();
        };
        const onError = () => {
          cleanup();
          resolve();
        };
        const cleanup = () => {
          source.off('readable', onReadable);
          source.off('end', onEnd);
          source.off('error', onError);
          message.off('close', onError);
        };
        source.on('readable', onReadable);
        source.on('end', onEnd);
        source.on('error', onError);
        message.on('close', onError);
        if (source.readableEnded) onEnd();
      });
    },
    cancel() {
      message.destroy();
      if (source !== message) source.destroy();
    },
  });
}

export interface UpstreamClientOptions {
  /** Most sockets kept per upstream host. @default 256 */
  readonly maxSockets?: number;
}

/**
 * Creates a fetch-compatible client for the proxy's upstream calls.
 * @example createProxy({ ..., fetch: createUpstreamClient() })
 */
export function createUpstreamClient(options: UpstreamClientOptions = {}): typeof fetch {
  const agentOptions = { keepAlive: true, maxSockets: options.maxSockets ?? 256, scheduling: 'lifo' as const };
  const httpAgent = new HttpAgent(agentOptions);
  const httpsAgent = new HttpsAgent(agentOptions);

  const client = (input: string | URL | Request, init: RequestInit = {}): Promise<Response> =>
    new Promise<Response>((resolve, reject) => {
      const url = new URL(typeof input === 'string' || input instanceof URL ? input : input.url);
      const secure = url.protocol === 'https:';
      const headers: Record<string, string> = {};
      new Headers(init.headers).forEach((value, name) => {
        headers[name] = value;
      });
      const body = init.body as Uint8Array | undefined | null;
      if (body !== undefined && body !== null) headers['content-length'] = String(body.byteLength);
      const signal = init.signal ?? undefined;
      if (signal?.aborted) return reject(signal.reason);

      const req = (secure ? httpsRequest : httpRequest)(
        url,
        { method: init.method ?? 'GET', headers, agent: secure ? httpsAgent : httpAgent },
        (message) => {
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
          const hasBody = !NULL_BODY_STATUSES.has(status) && init.method !== 'HEAD';
          if (!hasBody) message.resume();
          resolve(
            new Response(hasBody ? webStreamOf(decoded(message), message) : null, {
              status: status < 200 || status > 599 ? 502 : status,
              statusText: message.statusMessage ?? '',
              headers: responseHeaders,
            }),
          );
        },
      );
      const onAbortBeforeHeaders = () => {
        req.destroy();
        reject(signal?.reason ?? new Error('aborted'));
      };
      signal?.addEventListener('abort', onAbortBeforeHeaders, { once: true });
      req.on('error', (error) => {
        signal?.removeEventListener('abort', onAbortBeforeHeaders);
        reject(error);
      });
      req.setNoDelay(true);
      req.end(body ?? undefined);
    });
  return client as typeof fetch;
}
