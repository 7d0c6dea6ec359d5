/**
 * An in-process stand-in for the Lambda Node.js runtime's global `awslambda`, reproducing what the runtime
 * interface client does byte for byte (`HttpResponseStream.js`, `ResponseStream.js`):
 *
 * - `HttpResponseStream.from(stream, prelude)` sets the content type to
 *   `application/vnd.awslambda.http-integration-response` and, just before the stream's first `write()`, writes
 *   `JSON.stringify(prelude)` and then 8 NUL bytes. Nothing is written before a `write()`: a stream that is only
 *   `end()`ed carries no prelude, as on the real runtime.
 * - The content type can no longer change after the first write.
 *
 * {@link RuntimeResponseStream} is the response stream the runtime would hand the handler, over a `Writable`
 * that records each chunk as the Runtime API would receive it and can hold writes back to create backpressure.
 */
import { Writable } from 'node:stream';
import type { AwsLambdaRuntime, HttpResponsePrelude, ResponseStream, StreamingHandler } from '../../lambda/aws/awslambda';

export const HTTP_INTEGRATION_RESPONSE_CONTENT_TYPE = 'application/vnd.awslambda.http-integration-response';
/** What the runtime's response stream sends when nobody set a content type. */
export const DEFAULT_RESPONSE_CONTENT_TYPE = 'application/octet-stream';
export const PRELUDE_DELIMITER_LENGTH = 8;

const STREAMING = Symbol.for('aws.lambda.runtime.handler.streaming');

type FirstWriteHook = (write: (chunk: Uint8Array | string) => void) => void;

/** A response stream that records what reaches the Runtime API. */
export class RuntimeResponseStream extends Writable implements ResponseStream {
  contentType = DEFAULT_RESPONSE_CONTENT_TYPE;
  /** Each chunk in the order it was accepted, exactly as written (prelude and delimiter are separate chunks). */
  readonly chunks: Buffer[] = [];
  /** Set by `HttpResponseStream.from`; runs once, just before the first chunk. */
  _onBeforeFirstWrite: FirstWriteHook | undefined;
  private writeCalled = false;
  private held: Array<() => void> | undefined;
  private readonly waiters = new Set<() => void>();

  /** @param highWaterMark bytes buffered before `write()` returns false (the runtime's socket buffer). */
  constructor(options: { highWaterMark?: number } = {}) {
    super({ highWaterMark: options.highWaterMark ?? 16 * 1024 });
  }

  setContentType(contentType: string): void {
    if (this.writeCalled) throw new Error('Cannot set content-type, too late.');
    this.contentType = contentType;
  }

  override write(chunk: unknown, encoding?: unknown, callback?: unknown): boolean {
    if (!this.writeCalled && typeof this._onBeforeFirstWrite === 'function') {
      this._onBeforeFirstWrite((ch) => {
        super.write(ch);
      });
    }
    this.writeCalled = true;
    return (super.write as (...args: unknown[]) => boolean)(chunk, encoding, callback);
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    const accept = () => {
      this.chunks.push(Buffer.from(chunk));
      for (const wake of [...this.waiters]) wake();
      callback();
    };
    if (this.held === undefined) accept();
    else this.held.push(accept);
  }

  /** Stops accepting chunks (a slow client): writes queue up until `write()` reports backpressure. */
  hold(): void {
    this.held ??= [];
  }

  /** Accepts the held chunks and every later one; the stream emits 'drain' once its buffer empties. */
  release(): void {
    const held = this.held ?? [];
    this.held = undefined;
    for (const accept of held) accept();
  }

  /** Everything received so far, concatenated. */
  bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }

  /** The prelude and the body received so far. */
  decoded(): DecodedHttpIntegrationResponse {
    return decodeHttpIntegrationResponse(this.bytes());
  }

  /** The body bytes received so far: empty while the prelude and delimiter are not complete. */
  receivedBody(): Buffer {
    try {
      return this.decoded().body;
    } catch {
      return Buffer.alloc(0);
    }
  }

  /** Resolves once at least `length` body bytes were received; rejects after `timeoutMs`. */
  waitForBody(length: number, timeoutMs = 2000): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const wake = () => {
        if (this.receivedBody().length < length) return;
        this.waiters.delete(wake);
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        this.waiters.delete(wake);
        reject(new Error(`Only ${this.receivedBody().length} of ${length} body bytes reached the response stream.`));
      }, timeoutMs);
      this.waiters.add(wake);
      wake();
    });
  }
}

export interface DecodedHttpIntegrationResponse {
  readonly prelude: HttpResponsePrelude;
  readonly body: Buffer;
}

/**
 * Splits a streamed HTTP integration response into its JSON prelude and body, checking the 8-NUL delimiter.
 * The first NUL byte ends the prelude: JSON text never contains a raw NUL.
 */
export function decodeHttpIntegrationResponse(bytes: Uint8Array): DecodedHttpIntegrationResponse {
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const end = buffer.indexOf(0);
  if (end < 0) throw new Error('No delimiter: the stream carries no prelude.');
  const delimiter = buffer.subarray(end, end + PRELUDE_DELIMITER_LENGTH);
  if (delimiter.length !== PRELUDE_DELIMITER_LENGTH || delimiter.some((b) => b !== 0)) {
    throw new Error('The prelude is not followed by 8 NUL bytes.');
  }
  return {
    prelude: JSON.parse(buffer.subarray(0, end).toString('utf8')) as HttpResponsePrelude,
    body: Buffer.from(buffer.subarray(end + PRELUDE_DELIMITER_LENGTH)),
  };
}

export const awslambdaShim: AwsLambdaRuntime = {
  streamifyResponse<TEvent>(handler: StreamingHandler<TEvent>) {
    (handler as unknown as Record<symbol, unknown>)[STREAMING] = 'response';
    return handler;
  },
  HttpResponseStream: {
    from(responseStream, prelude) {
      responseStream.setContentType(HTTP_INTEGRATION_RESPONSE_CONTENT_TYPE);
      const metadata = JSON.stringify(prelude);
      (responseStream as RuntimeResponseStream)._onBeforeFirstWrite = (write) => {
        write(metadata);
        write(new Uint8Array(PRELUDE_DELIMITER_LENGTH));
      };
      return responseStream;
    },
  },
};

/**
 * Installs {@link awslambdaShim} as `globalThis.awslambda` and returns the function that puts back what was there.
 * @example const restore = installAwslambdaShim(); after(restore);
 */
export function installAwslambdaShim(): () => void {
  const holder = globalThis as unknown as { awslambda?: AwsLambdaRuntime };
  const previous = holder.awslambda;
  holder.awslambda = awslambdaShim;
  return () => {
    if (previous === undefined) delete holder.awslambda;
    else holder.awslambda = previous;
  };
}
