/**
 * API Gateway REST API (payload format 1.0) proxy translation: the event into a Web `Request`, and a Web
 * `Response`'s headers into the `headers` / `multiValueHeaders` pair API Gateway expects back.
 * Translation only: size limits, identity and everything else belong to the core.
 */
import type { APIGatewayProxyEvent } from 'aws-lambda';
import { PATH_PREFIX_HEADER } from '../core/handler';
import { BadRequestError } from '../core/errors';

export interface ApiGatewayRequestOptions {
  /** Aborted by the adapter when the client goes away, so the core can stop its upstream call. */
  readonly signal?: AbortSignal;
}

/**
 * Builds the Web `Request` an API Gateway REST proxy event describes.
 *
 * - URL: `x-forwarded-proto` (default `https`), the `Host` header (else `requestContext.domainName`), then
 *   `event.path`, which for a REST API carries no stage prefix (`/v1/chat/completions`, not
 *   `/prod/v1/chat/completions`).
 * - Query and headers: the `multiValue*` maps, which hold every value; the single-value maps (which keep only
 *   the last value of a repeated name) fill in names missing from them.
 * - Body: base64-decoded when `isBase64Encoded`; dropped for GET and HEAD, which cannot carry one.
 *
 * @throws BadRequestError when a header name or value is not valid HTTP.
 * @example
 * const request = requestFromApiGatewayEvent(event, { signal: abort.signal });
 * request.url; // 'https://abc123.execute-api.eu-west-1.amazonaws.com/v1/chat/completions?x=1'
 */
export function requestFromApiGatewayEvent(
  event: APIGatewayProxyEvent,
  options: ApiGatewayRequestOptions = {},
): Request {
  const method = (event.httpMethod || 'GET').toUpperCase();
  const headers = headersFrom(event);
  // What API Gateway strips from the path (the stage, a base path mapping): links the app hands out need it back.
  // Whatever a client sent under this name is replaced, never trusted.
  headers.delete(PATH_PREFIX_HEADER);
  const publicPath = event.requestContext?.path;
  if (typeof publicPath === 'string' && event.path && publicPath.endsWith(event.path) && publicPath.length > event.path.length) {
    headers.set(PATH_PREFIX_HEADER, publicPath.slice(0, publicPath.length - event.path.length));
  }
  return new Request(urlFrom(event, headers), {
    method,
    headers,
    body: bodyFrom(event, method),
    signal: options.signal,
  });
}

function headersFrom(event: APIGatewayProxyEvent): Headers {
  const headers = new Headers();
  const seen = new Set<string>();
  for (const [name, values] of Object.entries(event.multiValueHeaders ?? {})) {
    // The AWS documentation's own sample event carries an empty header name; it means nothing, skip it.
    if (name === '' || values === undefined) continue;
    seen.add(name.toLowerCase());
    appendHeader(headers, name, values);
  }
  for (const [name, value] of Object.entries(event.headers ?? {})) {
    if (name === '' || value === undefined || seen.has(name.toLowerCase())) continue;
    appendHeader(headers, name, [value]);
  }
  return headers;
}

function appendHeader(headers: Headers, name: string, values: readonly string[]): void {
  try {
    if (name.toLowerCase() === 'cookie') {
      // Several Cookie headers fold into one with "; " (RFC 6265 §5.4), not the ", " Headers.append would use.
      const existing = headers.get('cookie');
      headers.set('cookie', [...(existing === null ? [] : [existing]), ...values].join('; '));
      return;
    }
    for (const value of values) headers.append(name, value);
  } catch (cause) {
    throw new BadRequestError('invalid_header', 'A request header is not valid HTTP.', { param: name, cause });
  }
}

const HOST = /^[A-Za-z0-9.-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$/;

function urlFrom(event: APIGatewayProxyEvent, headers: Headers): string {
  const forwardedProto = headers.get('x-forwarded-proto')?.split(',')[0]?.trim().toLowerCase();
  const proto = forwardedProto === 'http' || forwardedProto === 'https' ? forwardedProto : 'https';
  const hostHeader = headers.get('host')?.trim();
  // A Host that is not a plain host[:port] could move the path into the authority once concatenated.
  const host = hostHeader && HOST.test(hostHeader) ? hostHeader : event.requestContext?.domainName || 'localhost';

  const rawPath = event.path || '/';
  // Concatenated, never resolved with `new URL(path, base)`: a path like `//other.host/x` must stay a path.
  // `?` and `#` can only be decoded characters of the path itself, so they are escaped back.
  const path = (rawPath.startsWith('/') ? rawPath : `/${rawPath}`).replace(/\?/g, '%3F').replace(/#/g, '%23');

  const query = new URLSearchParams();
  const multi = event.multiValueQueryStringParameters ?? {};
  for (const [name, values] of Object.entries(multi)) {
    for (const value of values ?? []) query.append(name, value);
  }
  for (const [name, value] of Object.entries(event.queryStringParameters ?? {})) {
    if (value !== undefined && multi[name] === undefined) query.append(name, value);
  }
  const search = query.toString();
  return `${proto}://${host}${path}${search === '' ? '' : `?${search}`}`;
}

function bodyFrom(event: APIGatewayProxyEvent, method: string): Uint8Array | undefined {
  if (method === 'GET' || method === 'HEAD' || event.body === null || event.body === undefined) return undefined;
  // Bytes even for a text body: given a string, Request would add a content-type the client never sent.
  return Buffer.from(event.body, event.isBase64Encoded ? 'base64' : 'utf8');
}

/** Hop-by-hop headers describe one connection; API Gateway runs its own, so they are not passed on. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade']);

/**
 * Splits a Web `Response`'s headers into API Gateway's REST shape. `Headers` already folds repeated fields into
 * one comma-separated value, except `Set-Cookie`, which cannot be folded and goes to `multiValueHeaders`.
 *
 * @example
 * apiGatewayResponseHeaders(new Headers([['content-type', 'text/plain'], ['set-cookie', 'a=1'], ['set-cookie', 'b=2']]))
 * // { headers: { 'content-type': 'text/plain' }, multiValueHeaders: { 'set-cookie': ['a=1', 'b=2'] } }
 */
export function apiGatewayResponseHeaders(source: Headers): {
  headers: Record<string, string>;
  multiValueHeaders: Record<string, string[]>;
} {
  const headers: Record<string, string> = {};
  for (const [name, value] of source) {
    if (name === 'set-cookie' || HOP_BY_HOP.has(name)) continue;
    headers[name] = value;
  }
  const cookies = source.getSetCookie();
  return { headers, multiValueHeaders: cookies.length > 0 ? { 'set-cookie': cookies } : {} };
}
