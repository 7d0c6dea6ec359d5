/**
 * The Lambda Node.js runtime's global `awslambda`, as the runtime interface client actually implements it
 * (`aws-lambda-nodejs-runtime-interface-client`: `HttpResponseStream.js`, `ResponseStream.js`, `UserFunction.js`).
 *
 * `@types/aws-lambda` declares the same global more loosely (the response stream as a full `Writable`, the
 * prelude as `Record<string, unknown>`). The runtime hands the handler a plain object exposing only part of
 * `Writable`, so the adapters code against {@link ResponseStream} and reach the global through
 * {@link AwsLambdaRuntime}, which states exactly what they rely on.
 */

/**
 * The response stream the runtime passes to a streaming handler: an HTTP request body to the Runtime API
 * (`POST /2018-06-01/runtime/invocation/{id}/response`, `Lambda-Runtime-Function-Response-Mode: streaming`,
 * chunked). Only these members exist on the real object.
 */
export interface ResponseStream {
  write(chunk: Uint8Array | string, callback?: (error?: Error | null) => void): boolean;
  end(callback?: () => void): unknown;
  destroy(error?: Error): unknown;
  on(event: string, listener: (...args: any[]) => void): unknown;
  once(event: string, listener: (...args: any[]) => void): unknown;
  off(event: string, listener: (...args: any[]) => void): unknown;
  /** Sets the Runtime API request's Content-Type; throws once the first chunk was written. */
  setContentType(contentType: string): void;
  readonly destroyed: boolean;
  readonly writableEnded: boolean;
  readonly writableFinished: boolean;
  readonly writableNeedDrain: boolean;
}

/**
 * The metadata `HttpResponseStream.from` sends before the body: API Gateway (REST, response transfer mode
 * `STREAM`) and function URLs read it as the HTTP status and headers. On the wire it is this object as JSON,
 * then 8 NUL bytes, then the body; API Gateway requires it within the first 16 KB.
 */
export interface HttpResponsePrelude {
  readonly statusCode: number;
  readonly headers?: Readonly<Record<string, string>>;
  /** Headers with more than one value (API Gateway REST). `Set-Cookie` travels here. */
  readonly multiValueHeaders?: Readonly<Record<string, readonly string[]>>;
  /** Cookies for function URLs (payload format 2.0). */
  readonly cookies?: readonly string[];
}

/** A handler the runtime streams: it writes to `responseStream` and resolves once it is done with it. */
export type StreamingHandler<TEvent> = (
  event: TEvent,
  responseStream: ResponseStream,
  context: import('aws-lambda').Context,
) => Promise<void>;

/** Content type `HttpResponseStream.from` gives the Runtime API request. */
export type HttpIntegrationResponseContentType = 'application/vnd.awslambda.http-integration-response';

/** The global the runtime installs before it loads the handler module. */
export interface AwsLambdaRuntime {
  /** Marks a handler as streaming; `highWaterMark` sizes the Runtime API socket's buffer. */
  streamifyResponse<TEvent>(
    handler: StreamingHandler<TEvent>,
    options?: { readonly highWaterMark?: number },
  ): StreamingHandler<TEvent>;
  readonly HttpResponseStream: {
    /**
     * Sets the stream's content type to {@link HttpIntegrationResponseContentType} and arranges for the prelude
     * and the 8-byte NUL delimiter to be written just before the first `write()`. Nothing is sent until then:
     * a stream that is only `end()`ed carries no prelude at all.
     */
    from(responseStream: ResponseStream, prelude: HttpResponsePrelude): ResponseStream;
  };
}
