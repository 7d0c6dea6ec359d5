/**
 * Typed errors with one way out: every error the gateway itself raises is a {@link GatewayError}, and
 * {@link errorResponse} is the only place that turns one into an HTTP answer.
 *
 * The JSON body follows OpenAI's error shape so SDKs surface the message:
 * `{"error":{"message":"…","type":"invalid_request_error","code":"invalid_header","param":"Helicone-User-Id"}}`.
 */

export interface GatewayErrorOptions {
  /** The header, query parameter or body field that was wrong. */
  readonly param?: string;
  readonly cause?: unknown;
  /** Extra response headers (e.g. `Allow` on a 405). */
  readonly headers?: Readonly<Record<string, string>>;
}

export abstract class GatewayError extends Error {
  abstract readonly statusCode: number;
  /** OpenAI-style error type. */
  abstract readonly type: string;
  /** Machine-readable code, stable across releases. */
  readonly code: string;
  readonly param: string | undefined;
  readonly headers: Readonly<Record<string, string>>;

  constructor(code: string, message: string, options: GatewayErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.param = options.param;
    this.headers = options.headers ?? {};
  }
}

/** 400: a header, parameter or body the gateway cannot accept. */
export class BadRequestError extends GatewayError {
  readonly statusCode = 400;
  readonly type = 'invalid_request_error';
}

/** 401: missing or wrong gateway or metrics key. */
export class UnauthorizedError extends GatewayError {
  readonly statusCode = 401;
  readonly type = 'authentication_error';
}

/** 403: a valid caller that may not do this (e.g. a blocked user). */
export class ForbiddenError extends GatewayError {
  readonly statusCode = 403;
  readonly type = 'permission_error';
}

export class NotFoundError extends GatewayError {
  readonly statusCode = 404;
  readonly type = 'not_found_error';
}

export class MethodNotAllowedError extends GatewayError {
  readonly statusCode = 405;
  readonly type = 'invalid_request_error';
}

/**
 * 408: the client did not finish sending its request in time (a stalled or trickling body, headers that never end).
 * The connection is closed after the answer: what was left of the request is unknown.
 */
export class RequestTimeoutError extends GatewayError {
  readonly statusCode = 408;
  readonly type = 'invalid_request_error';
}

export class PayloadTooLargeError extends GatewayError {
  readonly statusCode = 413;
  readonly type = 'invalid_request_error';
}

export class UnsupportedMediaTypeError extends GatewayError {
  readonly statusCode = 415;
  readonly type = 'invalid_request_error';
}

export class RateLimitedError extends GatewayError {
  readonly statusCode = 429;
  readonly type = 'rate_limit_error';
}

/** 502: the upstream could not be reached or broke the protocol. */
export class UpstreamError extends GatewayError {
  readonly statusCode = 502;
  readonly type = 'upstream_error';
}

/** 504: the upstream did not answer in time. */
export class UpstreamTimeoutError extends GatewayError {
  readonly statusCode = 504;
  readonly type = 'upstream_error';
}

/** 500: a fault of the gateway itself. The message never carries internals. */
export class InternalError extends GatewayError {
  readonly statusCode = 500;
  readonly type = 'server_error';
}

/** Wraps anything thrown into a GatewayError; unknown errors become a 500 that hides their details. */
export function toGatewayError(error: unknown): GatewayError {
  if (error instanceof GatewayError) return error;
  return new InternalError('internal_error', 'The gateway failed to handle this request.', { cause: error });
}

/** The one function that turns an error into a JSON response. */
export function errorResponse(error: unknown, extraHeaders: Readonly<Record<string, string>> = {}): Response {
  const e = toGatewayError(error);
  const body = {
    error: { message: e.message, type: e.type, code: e.code, param: e.param ?? null },
  };
  return new Response(JSON.stringify(body), {
    status: e.statusCode,
    headers: { 'content-type': 'application/json; charset=utf-8', ...extraHeaders, ...e.headers },
  });
}
