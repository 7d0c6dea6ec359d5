/**
 * Runs a fetch-style handler as a classic (buffered) API Gateway REST proxy handler, for answers that are small
 * and complete at once, like the metrics API. Translation only.
 *
 * @example
 * // lambda/aws/metrics-entry.ts
 * export const handler = bufferedHandler(metricsApi);
 */
import type { APIGatewayProxyEvent, APIGatewayProxyResult } from 'aws-lambda';
import { errorResponse } from '../core/errors';
import { collectingContext, type FetchHandler } from '../core/handler';
import { createLogger, type Logger } from '../core/log';
import { apiGatewayResponseHeaders, logHandlerFailure, requestFromApiGatewayEvent } from './api-gateway-request';

export interface BufferedHandlerOptions {
  /** Where adapter-level faults are logged (never bodies or headers). @default JSON lines on stdout */
  readonly logger?: Logger;
}

/**
 * Wraps `fetchHandler` as `(event) => Promise<APIGatewayProxyResult>`. The body is returned as text when the
 * content type is textual (or, without one, when it is valid UTF-8), and base64 with `isBase64Encoded`
 * otherwise; `Set-Cookie` goes to `multiValueHeaders`. Work registered with `waitUntil` is awaited before the
 * result is returned, because the runtime freezes the process as soon as the handler resolves.
 */
export function bufferedHandler(
  fetchHandler: FetchHandler,
  options: BufferedHandlerOptions = {},
): (event: APIGatewayProxyEvent) => Promise<APIGatewayProxyResult> {
  const log = options.logger ?? createLogger('info');
  return async (event) => {
    const context = collectingContext();
    let result: APIGatewayProxyResult;
    try {
      result = await proxyResultFrom(await fetchHandler(requestFromApiGatewayEvent(event), context));
    } catch (error) {
      logHandlerFailure(log, event, error);
      result = await proxyResultFrom(errorResponse(error));
    }
    await context.settled();
    return result;
  };
}

/**
 * The proxy result for a complete `Response`.
 * @example await proxyResultFrom(Response.json({ ok: true })) // { statusCode: 200, body: '{"ok":true}', isBase64Encoded: false, ... }
 */
export async function proxyResultFrom(response: Response): Promise<APIGatewayProxyResult> {
  const { headers, multiValueHeaders } = apiGatewayResponseHeaders(response.headers);
  const bytes = new Uint8Array(await response.arrayBuffer());
  const text = textOf(bytes, response.headers.get('content-type'));
  const result: APIGatewayProxyResult =
    text === undefined
      ? { statusCode: response.status, headers, body: Buffer.from(bytes).toString('base64'), isBase64Encoded: true }
      : { statusCode: response.status, headers, body: text, isBase64Encoded: false };
  if (Object.keys(multiValueHeaders).length > 0) result.multiValueHeaders = multiValueHeaders;
  return result;
}

const TEXTUAL =
  /^(text\/|application\/(json|xml|javascript|x-www-form-urlencoded|x-ndjson|problem\+json)\b)|\+(json|xml)\b|;\s*charset=/i;

/** The body as text, or undefined when it must travel as base64. */
function textOf(bytes: Uint8Array, contentType: string | null): string | undefined {
  if (bytes.byteLength === 0) return '';
  if (contentType !== null) return TEXTUAL.test(contentType) ? Buffer.from(bytes).toString('utf8') : undefined;
  // No content type to go by: text only if the bytes are valid UTF-8.
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return undefined;
  }
}
