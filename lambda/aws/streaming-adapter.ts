/**
 * Runs a fetch-style handler as a Lambda response-streaming handler behind API Gateway REST (response transfer
 * mode `STREAM`). Translation only: event to `Request`, then the `Response` status and headers as the
 * `HttpResponseStream` prelude and its body chunk by chunk as the core produces it.
 *
 * @example
 * // lambda/aws/proxy-entry.ts
 * export const handler = awslambda.streamifyResponse(streamingHandler(gateway));
 */
import type { APIGatewayProxyEvent } from 'aws-lambda';
import { errorResponse } from '../core/errors';
import { collectingContext, type FetchHandler } from '../core/handler';
import { createLogger, describeError, type Logger } from '../core/log';
import { apiGatewayResponseHeaders, logHandlerFailure, requestFromApiGatewayEvent } from './api-gateway-request';
import type { AwsLambdaRuntime, HttpResponsePrelude, ResponseStream, StreamingHandler } from './awslambda';

export interface StreamingHandlerOptions {
  /** Where adapter-level faults are logged (never bodies or headers). @default JSON lines on stdout */
  readonly logger?: Logger;
}

/**
 * Wraps `fetchHandler` for `awslambda.streamifyResponse`.
 *
 * Order of work per invocation: build the `Request`, call the core with an ExecutionContext that collects
 * `waitUntil` promises, send the prelude at once (an SSE client sees the status before the first event), pipe
 * the body with backpressure, end the stream, and only then await the collected promises. The Node 24 runtime
 * asks for the next invocation as soon as the handler resolves and never waits for stray promises, so the
 * usage writes must finish inside the handler, but after the client has its answer.
 *
 * If the response stream closes early (client gone), the body reader is cancelled so the core sees the
 * cancellation, the request's signal is aborted, and the `waitUntil` work is still awaited.
 * A throw before the prelude becomes the JSON error response. Once the prelude is out, the only failure the
 * handler reports is a body that broke off mid-way ({@link BrokenBody}), so the client's answer is cut, not ended.
 */
export function streamingHandler(
  fetchHandler: FetchHandler,
  options: StreamingHandlerOptions = {},
): StreamingHandler<APIGatewayProxyEvent> {
  const log = options.logger ?? createLogger('info');
  return async (event, responseStream) => {
    const context = collectingContext();
    const abort = new AbortController();
    const closed = watchEarlyClose(responseStream);
    closed.promise.then(() => abort.abort(), () => undefined);

    let response: Response;
    try {
      response = await fetchHandler(requestFromApiGatewayEvent(event, { signal: abort.signal }), context);
    } catch (error) {
      logHandlerFailure(log, event, error);
      response = errorResponse(error);
    }

    let broken: BrokenBody | undefined;
    try {
      broken = await sendResponse(response, responseStream, closed, log);
    } catch (error) {
      log.error('response_stream_failed', { error: describeError(error) });
      if (!responseStream.writableEnded && !responseStream.destroyed) responseStream.end();
    }
    await context.settled();
    // The answer broke off after its status went out (the upstream reset mid-stream). Ending the stream normally
    // would hand the client a cut answer that looks complete; failing the invocation makes the runtime close the
    // response with error trailers, so API Gateway cuts the client's connection as the upstream cut ours. The
    // usage writes above are done by now, and the event records the failure (`upstream_reset`).
    if (broken !== undefined) throw broken;
  };
}

/** Raised from the handler, after its usage writes, when the response body failed after the prelude was sent. */
export class BrokenBody extends Error {
  constructor(cause: unknown) {
    super('The response body failed after the status was sent; the answer was cut off.', { cause });
    this.name = 'BrokenBody';
  }
}

/** The prelude for a `Response`: status, single-value headers, and `Set-Cookie` as a multi-value header. */
export function preludeFor(response: Response): HttpResponsePrelude {
  const { headers, multiValueHeaders } = apiGatewayResponseHeaders(response.headers);
  return Object.keys(multiValueHeaders).length > 0
    ? { statusCode: response.status, headers, multiValueHeaders }
    : { statusCode: response.status, headers };
}

interface EarlyClose {
  /** Resolves when the stream closes or errors before it finished: nobody is reading any more. */
  readonly promise: Promise<void>;
  readonly happened: () => boolean;
}

function watchEarlyClose(stream: ResponseStream): EarlyClose {
  let happened = false;
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  const onGone = () => {
    if (stream.writableFinished) return;
    happened = true;
    resolve();
  };
  // Stays attached: a plain Writable with no 'error' listener would crash the process on a late error.
  stream.on('error', onGone);
  stream.on('close', onGone);
  return { promise, happened: () => happened };
}

/** Looked up per invocation, not at load: the runtime installs the global before loading the handler module. */
function runtime(): AwsLambdaRuntime {
  // @types/aws-lambda types this global more loosely; AwsLambdaRuntime states what the runtime really provides.
  const global = (globalThis as unknown as { awslambda?: AwsLambdaRuntime }).awslambda;
  if (global === undefined) throw new Error('The Lambda runtime global `awslambda` is not installed.');
  return global;
}

/** Sends the prelude and the body; resolves with the body's failure when it broke off after the prelude. */
async function sendResponse(
  response: Response,
  responseStream: ResponseStream,
  closed: EarlyClose,
  log: Logger,
): Promise<BrokenBody | undefined> {
  const stream = runtime().HttpResponseStream.from(responseStream, preludeFor(response));
  const reader = response.body?.getReader();
  const cancelBody = (reason: unknown = new Error('The client closed the response stream.')) =>
    reader?.cancel(reason).catch(() => undefined);
  // Also cancels a read that is waiting on the core, so a slow upstream is dropped as soon as the client goes.
  closed.promise.then(() => cancelBody(), () => undefined);

  // The runtime writes the prelude and delimiter just before the first write; an empty one sends them now,
  // also for a response without a body, which would otherwise end with no prelude at all.
  if (!closed.happened()) stream.write(new Uint8Array(0));

  if (reader !== undefined) {
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        if (closed.happened()) {
          await cancelBody();
          return undefined;
        }
        if (!stream.write(bytesOf(value)) && !closed.happened()) await drained(stream);
      }
    } catch (error) {
      // The prelude is out, so the status cannot change any more; the core meters its own failures. The stream is
      // left unended: the handler fails the invocation once the usage writes are done (see streamingHandler).
      if (closed.happened()) return undefined;
      log.warn('response_body_failed', { error: describeError(error) });
      await cancelBody(error);
      return new BrokenBody(error);
    } finally {
      reader.releaseLock();
    }
  }
  if (closed.happened()) return undefined;
  await finished(stream, closed);
  return undefined;
}

/**
 * A Buffer view of a body chunk (no copy). The 3.x runtime client JSON-encodes anything whose constructor is
 * not exactly Uint8Array or Buffer, so a Uint8Array subclass must not reach it as is.
 */
function bytesOf(chunk: unknown): Buffer {
  if (ArrayBuffer.isView(chunk)) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  if (typeof chunk === 'string') return Buffer.from(chunk);
  if (chunk instanceof ArrayBuffer) return Buffer.from(chunk);
  throw new TypeError('The response body produced a chunk that is not bytes.');
}

/** Waits for 'drain', or for the stream to go away (the caller checked it had not gone already). */
function drained(stream: ResponseStream): Promise<void> {
  return new Promise<void>((resolve) => {
    const settle = () => {
      stream.off('drain', settle);
      stream.off('close', settle);
      stream.off('error', settle);
      resolve();
    };
    stream.on('drain', settle);
    stream.on('close', settle);
    stream.on('error', settle);
  });
}

/** Ends the stream and waits until its last byte was handed to the socket ('finish'), or it went away. */
function finished(stream: ResponseStream, closed: EarlyClose): Promise<void> {
  return new Promise<void>((resolve) => {
    stream.end(() => resolve());
    closed.promise.then(() => resolve(), () => resolve());
  });
}
