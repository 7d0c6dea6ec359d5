/**
 * API Gateway REST API (payload format 1.0) proxy translation: the event into a Web `Request`, and a Web
 * `Response`'s headers into the `headers` / `multiValueHeaders` pair API Gateway expects back, for both Lambda
 * adapters (streaming and buffered), with how they log an event they could not translate.
 * Translation only: size limits, identity and everything else belong to the core.
 */
import type { APIGatewayProxyEvent } from 'aws-lambda';
import { PATH_PREFIX_HEADER } from '../core/handler';
import { BadRequestError, GatewayError, MethodNotAllowedError } from '../core/errors';
import { describeError, type Logger } from '../core/log';

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
 * The event is read defensively: a map that is null or absent is empty, a value that is not a string is skipped,
 * a `Host` or domain name that would not make a URL falls back to `localhost`. What cannot be turned into a
 * request is the client's 400 (or 405), never a throw of another kind.
 *
 * @throws BadRequestError when a header is not valid HTTP, the method is not an HTTP token, or a body marked
 *   base64 is not base64; MethodNotAllowedError for a method API Gateway does not serve (CONNECT, TRACE, …).
 * @example
 * const request = requestFromApiGatewayEvent(event, { signal: abort.signal });
 * request.url; // 'https://abc123.execute-api.eu-west-1.amazonaws.com/v1/chat/completions?x=1'
 */
export function requestFromApiGatewayEvent(
  event: APIGatewayProxyEvent,
  options: ApiGatewayRequestOptions = {},
): Request {
  if (!isObject(event)) throw new BadRequestError('invalid_event', 'The invocation is not an API Gateway proxy event.');
  const method = methodOf(event.httpMethod);
  const headers = headersFrom(event);
  // What API Gateway strips from the path (the stage, a base path mapping): links the app hands out need it back.
  // Whatever a client sent under this name is replaced, never trusted.
  headers.delete(PATH_PREFIX_HEADER);
  const prefix = pathPrefixOf(event);
  if (prefix !== undefined) headers.set(PATH_PREFIX_HEADER, prefix);
  return new Request(urlFrom(event, headers), {
    method,
    headers,
    body: bodyFrom(event, method),
    signal: options.signal,
  });
}

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** The entries of a map the event may lack, or hold as null (API Gateway's "none"). */
function entriesOf(map: unknown): [string, unknown][] {
  return isObject(map) ? Object.entries(map) : [];
}

/** The string values of a `multiValue*` entry: an array of strings, or a lone string some producers send. */
function valuesOf(value: unknown): string[] {
  if (typeof value === 'string') return [value];
  return Array.isArray(value) ? value.filter((item): item is string => typeof item === 'string') : [];
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/**
 * The methods API Gateway REST serves (an `ANY` method stands for these). No other reaches a function through it,
 * and some could not be forwarded anyway: a `Request` refuses CONNECT, TRACE and TRACK.
 */
const API_GATEWAY_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);

function methodOf(raw: unknown): string {
  if (raw === undefined || raw === null || raw === '') return 'GET';
  // Checked before upper-casing: 'ſ'.toUpperCase() is 'S', so a non-token could otherwise turn into a method.
  if (typeof raw !== 'string' || !TOKEN.test(raw)) {
    throw new BadRequestError('invalid_method', 'httpMethod is not an HTTP method.', { param: 'method' });
  }
  const method = raw.toUpperCase();
  if (!API_GATEWAY_METHODS.has(method)) {
    throw new MethodNotAllowedError('method_not_allowed', `${method.slice(0, 32)} is not supported.`, {
      param: 'method',
      headers: { allow: [...API_GATEWAY_METHODS].join(', ') },
    });
  }
  return method;
}

function headersFrom(event: Record<string, unknown>): Headers {
  const headers = new Headers();
  const seen = new Set<string>();
  for (const [name, value] of entriesOf(event.multiValueHeaders)) {
    const values = valuesOf(value);
    // The AWS documentation's own sample event carries an empty header name; it means nothing, skip it.
    if (name === '' || values.length === 0) continue;
    seen.add(name.toLowerCase());
    appendHeader(headers, name, values);
  }
  for (const [name, value] of entriesOf(event.headers)) {
    if (name === '' || typeof value !== 'string' || seen.has(name.toLowerCase())) continue;
    appendHeader(headers, name, [value]);
  }
  return headers;
}

/**
 * What a header value may hold on the wire: tab, visible ASCII, space and obs-text. `Headers` lets other control
 * characters through (DEL, ESC, …), but node's HTTP client refuses to send them, so a request carrying one would
 * fail only once forwarded, as an upstream error; node:http refuses such a request line outright, too.
 */
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

function appendHeader(headers: Headers, name: string, values: readonly string[]): void {
  try {
    if (!values.every((value) => FIELD_VALUE.test(value))) throw new TypeError('control character in the value');
    if (name.toLowerCase() === 'cookie') {
      // Several Cookie headers fold into one with "; " (RFC 6265 §5.4), not the ", " Headers.append would use.
      const existing = headers.get('cookie');
      headers.set('cookie', [...(existing === null ? [] : [existing]), ...values].join('; '));
      return;
    }
    for (const value of values) headers.append(name, value);
  } catch (cause) {
    throw new BadRequestError('invalid_header', 'A request header is not valid HTTP.', { param: name.slice(0, 100), cause });
  }
}

/** A path prefix fit for links: `/segment[/segment…]` of URL path characters, no empty segment. */
const PATH_PREFIX = /^(?:\/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+$/;

/** The part of the public path (`requestContext.path`) in front of `event.path`: the stage or a base path. */
function pathPrefixOf(event: Record<string, unknown>): string | undefined {
  const context = event.requestContext;
  const publicPath = isObject(context) ? context.path : undefined;
  const path = event.path;
  if (typeof publicPath !== 'string' || typeof path !== 'string' || path === '') return undefined;
  if (!publicPath.endsWith(path) || publicPath.length <= path.length) return undefined;
  const prefix = publicPath.slice(0, publicPath.length - path.length).replace(/\/+$/, '');
  return PATH_PREFIX.test(prefix) ? prefix : undefined;
}

const HOST = /^[A-Za-z0-9.-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$/;

/** A host[:port] the URL parser takes as exactly that (not `999.999.999.999`, not port 99999). */
function usableHost(proto: string, candidate: unknown): candidate is string {
  if (typeof candidate !== 'string' || !HOST.test(candidate)) return false;
  try {
    new URL(`${proto}://${candidate}/`);
    return true;
  } catch {
    return false;
  }
}

function urlFrom(event: Record<string, unknown>, headers: Headers): string {
  const forwardedProto = headers.get('x-forwarded-proto')?.split(',')[0]?.trim().toLowerCase();
  const proto = forwardedProto === 'http' || forwardedProto === 'https' ? forwardedProto : 'https';
  const hostHeader = headers.get('host')?.trim();
  const domainName = isObject(event.requestContext) ? event.requestContext.domainName : undefined;
  // A Host that is not a plain host[:port] could move the path into the authority once concatenated.
  const host = usableHost(proto, hostHeader) ? hostHeader : usableHost(proto, domainName) ? domainName : 'localhost';

  const rawPath = typeof event.path === 'string' && event.path !== '' ? event.path : '/';
  // Concatenated, never resolved with `new URL(path, base)`: a path like `//other.host/x` must stay a path.
  // `?` and `#` can only be decoded characters of the path itself, so they are escaped back.
  const path = (rawPath.startsWith('/') ? rawPath : `/${rawPath}`).replace(/\?/g, '%3F').replace(/#/g, '%23');

  const query = new URLSearchParams();
  const multi = new Set<string>();
  for (const [name, value] of entriesOf(event.multiValueQueryStringParameters)) {
    const values = valuesOf(value);
    if (values.length === 0) continue;
    multi.add(name);
    for (const item of values) query.append(name, item);
  }
  for (const [name, value] of entriesOf(event.queryStringParameters)) {
    if (typeof value === 'string' && !multi.has(name)) query.append(name, value);
  }
  const search = query.toString();
  return `${proto}://${host}${path}${search === '' ? '' : `?${search}`}`;
}

/** Standard base64 as API Gateway writes it: the 64 letters, padded to a multiple of four. */
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

function bodyFrom(event: Record<string, unknown>, method: string): Uint8Array | undefined {
  const body = event.body;
  if (method === 'GET' || method === 'HEAD' || body === null || body === undefined) return undefined;
  if (typeof body !== 'string') throw new BadRequestError('invalid_body', 'The event body is not text.', { param: 'body' });
  if (event.isBase64Encoded !== true) {
    // Bytes even for a text body: given a string, Request would add a content-type the client never sent.
    return Buffer.from(body, 'utf8');
  }
  // Node's decoder skips what is not base64 and decodes the rest: garbage in, different garbage forwarded.
  if (body.length % 4 !== 0 || !BASE64.test(body)) {
    throw new BadRequestError('invalid_base64', 'The body is marked base64-encoded but is not valid base64.', { param: 'body' });
  }
  return Buffer.from(body, 'base64');
}

/**
 * Logs what the core threw instead of answering: a fault of the gateway (a 5xx, or not a GatewayError at all) at
 * error level; a client's mistake (a header that is not HTTP, an unsupported method) only at debug, as the
 * refusals the core answers itself are never errors. The method is logged only as far as it is a method name.
 */
export function logHandlerFailure(log: Logger, event: unknown, error: unknown): void {
  const raw = (event as { httpMethod?: unknown } | null | undefined)?.httpMethod;
  const method = typeof raw === 'string' && /^[A-Za-z-]{1,16}$/.test(raw) ? raw : undefined;
  if (error instanceof GatewayError && error.statusCode < 500) {
    log.debug('request_refused', { method, status: error.statusCode, code: error.code });
  } else {
    log.error('handler_failed', { method, error: describeError(error) });
  }
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
