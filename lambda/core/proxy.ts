/**
 * The proxy: `ANY /v1/*` to the upstream, path, query, method and body unchanged, the answer streamed back as it
 * arrives, and one usage event per request written after the client's response has finished.
 */
import type { ProxyConfig } from './config';
import {
  BadRequestError,
  GatewayError,
  PayloadTooLargeError,
  UnauthorizedError,
  UpstreamError,
  UpstreamTimeoutError,
  errorResponse,
} from './errors';
import type { ExecutionContext, FetchHandler } from './handler';
import { propertiesFrom, requestIdFrom, userIdFrom, userIdPolicy } from './identity';
import { bearerToken } from './keys';
import { describeError, type Logger } from './log';
import type { KeyStore } from './ports';
import { NO_TOKENS, priceOf, providerOf, type TokenUsage } from './pricing';
import { bytesBody, LightResponse, readerBody, type LightReader, type ReadResult } from './messages';
import { createResponseMeter, type MeterReading } from './response-meter';
import { endpointOf, estimatePromptTokens, type Endpoint, type TokenCounterLoader } from './tokens';
import type { UsageRecorder } from './usage-recorder';
import { USAGE_EVENT_VERSION, type UsageEvent, type UsageSource } from './usage-event';

export const GATEWAY_AUTH_HEADER = 'helicone-auth';
export const GATEWAY_ID_HEADER = 'Helicone-Id';

/** What the gateway knows of a request when it decides whether to forward it. */
export interface Admission {
  readonly requestId: string;
  readonly userId: string | null;
  readonly properties: Readonly<Record<string, string>>;
  readonly endpoint: Endpoint;
  readonly requestedModel: string | null;
  readonly provider: string;
  /** Parsed JSON body (for `max_tokens` / `max_output_tokens`), if any. */
  readonly body: Readonly<Record<string, unknown>> | undefined;
  /** The client's request headers (e.g. `Helicone-RateLimit-Policy`). */
  readonly headers: Headers;
  /** Milliseconds since the epoch at arrival. */
  readonly at: number;
  /** Estimated prompt tokens of the body (loads the tokenizer on first use). */
  estimatePromptTokens(): Promise<number>;
}

/** The limiter's answer: refuse with an error, or admit and settle once the request's usage is known. */
export type AdmissionDecision =
  | { readonly admitted: false; readonly error: GatewayError; readonly headers: Readonly<Record<string, string>> }
  | {
      readonly admitted: true;
      /** Headers for the client's response (remaining quota, budget). */
      readonly headers: Readonly<Record<string, string>>;
      /** Called once with the final usage event, after the response; releases reservations. Never rejects. */
      settle(event: UsageEvent): Promise<void>;
    };

type AdmittedDecision = Extract<AdmissionDecision, { readonly admitted: true }>;

const ignore = (): undefined => undefined;

/** Per-user limits and budgets, checked before anything is sent upstream. */
export interface RequestLimiter {
  admit(admission: Admission): Promise<AdmissionDecision>;
}

export interface ProxyDeps {
  readonly config: ProxyConfig;
  /** Rate limits and budgets; without one every authenticated request is forwarded. */
  readonly limiter?: RequestLimiter;
  readonly gatewayKeys: KeyStore;
  readonly recorder: UsageRecorder;
  readonly tokenCounter: TokenCounterLoader;
  readonly log: Logger;
  /** The HTTP client for the upstream. @default globalThis.fetch */
  readonly fetch?: typeof fetch;
  /** Milliseconds since the epoch. @default Date.now */
  readonly now?: () => number;
  readonly newId?: () => string;
  /**
   * Whether a finished request's bookkeeping (pricing, the event, the stores) waits for a timer turn instead of
   * running as soon as the last byte is handed over. A server answering many requests at once sets it: a request
   * that has already arrived (the next one on a kept-alive connection) is then read and forwarded first, and the
   * bookkeeping runs while that one waits for the upstream. A runtime with one request at a time (Lambda) gains
   * nothing from it. The event's latency is taken when the answer ends either way. @default false
   */
  readonly deferMetering?: boolean;
}

// RFC 9110 §7.6.1 connection-specific fields, plus the framing fields the runtime recomputes.
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'host',
  'content-length',
  'expect',
  'http2-settings',
]);

/**
 * Headers for the upstream: the caller's, minus hop-by-hop fields and every `Helicone-*` header. A plain record of
 * lower-case names (fetch takes one as it takes a `Headers`): the values come from a `Headers`, so they are valid and
 * already combined, and no second `Headers` needs building.
 */
export function upstreamRequestHeaders(incoming: Headers): Record<string, string> {
  const listed = new Set(
    (incoming.get('connection') ?? '')
      .split(',')
      .map((name) => name.trim().toLowerCase())
      .filter(Boolean),
  );
  const out: Record<string, string> = {};
  for (const [name, value] of incoming) {
    if (HOP_BY_HOP.has(name) || listed.has(name) || name.startsWith('helicone-')) continue;
    out[name] = value;
  }
  // The runtime's fetch would decompress transparently; asking for identity keeps bytes and headers consistent.
  out['accept-encoding'] = 'identity';
  return out;
}

/** Headers for the client: the upstream's, minus hop-by-hop fields and the encoding fetch already undid. */
function clientResponseHeaders(
  upstream: Headers,
  requestId: string,
  bodyRewritten: boolean,
  gatewayHeaders: Readonly<Record<string, string>>,
): Headers {
  const listed = new Set(
    (upstream.get('connection') ?? '')
      .split(',')
      .map((name) => name.trim().toLowerCase())
      .filter(Boolean),
  );
  const out = new Headers();
  const decoded = upstream.has('content-encoding');
  for (const [name, value] of upstream) {
    if (name === 'set-cookie') continue;
    if (HOP_BY_HOP.has(name) && name !== 'content-length') continue;
    if (listed.has(name)) continue;
    if (name === 'content-encoding') continue;
    if (name === 'content-length' && (decoded || bodyRewritten)) continue;
    out.append(name, value);
  }
  for (const cookie of upstream.getSetCookie()) out.append('set-cookie', cookie);
  for (const [name, value] of Object.entries(gatewayHeaders)) out.set(name, value);
  out.set(GATEWAY_ID_HEADER, requestId);
  return out;
}

/** The client's body broke off (a connection closed before its Content-Length, bad chunked framing). */
function incompleteBody(error: unknown): GatewayError {
  // The runtime adapter ended the body with its own answer (a body that took too long): keep it.
  if (error instanceof GatewayError) return error;
  // Otherwise the client's fault, and nothing was sent upstream.
  return new BadRequestError('incomplete_body', 'The request body ended before it was complete.', { param: 'body', cause: error });
}

/** Reads the request body up to `limit` bytes; a larger body is a 413 without reading the rest. */
async function readBody(request: Request, limit: number): Promise<Uint8Array> {
  const declared = request.headers.get('content-length');
  const declaredBytes = declared === null ? Number.NaN : Number(declared);
  if (declaredBytes > limit) {
    throw new PayloadTooLargeError('body_too_large', `The request body is larger than ${limit} bytes.`, { param: 'body' });
  }
  if (Number.isSafeInteger(declaredBytes) && declaredBytes >= 0) {
    // A declared length within the limit: read whole, without a stream (HTTP framing holds the body to it).
    let bytes: Uint8Array;
    try {
      bytes = new Uint8Array(await request.arrayBuffer());
    } catch (error) {
      throw incompleteBody(error);
    }
    if (bytes.byteLength > limit) {
      throw new PayloadTooLargeError('body_too_large', `The request body is larger than ${limit} bytes.`, { param: 'body' });
    }
    return bytes;
  }
  if (request.body === null) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = request.body.getReader();
  for (;;) {
    let read: Awaited<ReturnType<typeof reader.read>>;
    try {
      read = await reader.read();
    } catch (error) {
      throw incompleteBody(error);
    }
    const { done, value } = read;
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel().catch(() => undefined);
      throw new PayloadTooLargeError('body_too_large', `The request body is larger than ${limit} bytes.`, { param: 'body' });
    }
    chunks.push(value);
  }
  return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
}

function isJsonContentType(value: string | null): boolean {
  if (value === null) return false;
  const type = value.split(';')[0]!.trim().toLowerCase();
  return type === 'application/json' || type.endsWith('+json');
}

function looksLikeJsonObject(bytes: Uint8Array): boolean {
  for (const byte of bytes) {
    if (byte === 0x20 || byte === 0x09 || byte === 0x0a || byte === 0x0d) continue;
    return byte === 0x7b; // '{'
  }
  return false;
}

const fatalDecoder = new TextDecoder('utf-8', { fatal: true });

/** Parses a JSON request body; malformed JSON or invalid UTF-8 is a 400 naming what is wrong. */
function parseJsonBody(bytes: Uint8Array): unknown {
  let text: string;
  try {
    text = fatalDecoder.decode(bytes);
  } catch {
    throw new BadRequestError('invalid_body', 'The request body is not valid UTF-8.', { param: 'body' });
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    const detail = error instanceof Error ? error.message : 'parse error';
    throw new BadRequestError('invalid_json', `The request body is not valid JSON: ${detail.slice(0, 200)}`, {
      param: 'body',
    });
  }
}

interface PreparedRequest {
  readonly requestId: string;
  readonly keyId: string | null;
  readonly userId: string | null;
  readonly properties: Record<string, string>;
  readonly endpoint: Endpoint;
  readonly body: Record<string, unknown> | undefined;
  readonly requestedModel: string | null;
  readonly stream: boolean;
  /** True when the gateway added `stream_options.include_usage` and must hide its effects. */
  readonly injectedUsage: boolean;
  readonly upstreamBody: Uint8Array | undefined;
  /** The request's URL, parsed. */
  readonly url: URL;
}

function isTokenEndpoint(endpoint: Endpoint): boolean {
  return endpoint !== 'other';
}

/**
 * Creates the proxy handler.
 * @example const proxy = createProxy({ config, gatewayKeys, recorder, tokenCounter, log });
 *          const res = await proxy(new Request('http://gw/v1/chat/completions', { method: 'POST', body }), ctx);
 */
export function createProxy(deps: ProxyDeps): FetchHandler {
  const upstreamFetch = deps.fetch ?? globalThis.fetch;
  const now = deps.now ?? Date.now;
  const newId = deps.newId ?? (() => crypto.randomUUID());
  const provider = deps.config.provider ?? providerOf(deps.config.upstreamUrl);
  const upstreamBase = deps.config.upstreamUrl;
  const userIds = userIdPolicy({ signingSecrets: deps.config.userIdSigningSecrets, hashSecret: deps.config.userIdHashSecret });

  /**
   * Records the event and releases the limiter's reservation, after the response; never rejects. It lives out
   * here, and closes over nothing of a request, because the stores can take until their next flush to confirm
   * (half a second and more): a function made inside the request's scope would keep that whole scope (request,
   * body, answer, streams) alive as long, and a busy server's young heap full of them.
   */
  const recordAfterResponse = (usageEvent: UsageEvent, decision: AdmittedDecision | undefined): Promise<void> =>
    Promise.all([deps.recorder.record(usageEvent), decision?.settle(usageEvent).catch(ignore)]).then(ignore);

  async function prepare(request: Request): Promise<PreparedRequest> {
    const requestId = requestIdFrom(request.headers, newId);
    let keyId: string | null = null;
    if (deps.gatewayKeys.enabled) {
      const token = bearerToken(request.headers.get(GATEWAY_AUTH_HEADER));
      if (token === null) {
        throw new UnauthorizedError('missing_gateway_key', 'Send the gateway key as "Helicone-Auth: Bearer <key>".', {
          param: 'Helicone-Auth',
        });
      }
      keyId = await deps.gatewayKeys.verify(token);
      if (keyId === null) {
        throw new UnauthorizedError('invalid_gateway_key', 'The gateway key in Helicone-Auth is not valid.', {
          param: 'Helicone-Auth',
        });
      }
    }
    const properties = propertiesFrom(request.headers);
    const url = new URL(request.url);
    const endpoint = endpointOf(url.pathname);
    const hasBody = request.method !== 'GET' && request.method !== 'HEAD';
    const raw = hasBody ? await readBody(request, deps.config.maxBodyBytes) : undefined;
    let body: Record<string, unknown> | undefined;
    if (raw !== undefined && raw.byteLength > 0) {
      let parsed: unknown;
      if (isJsonContentType(request.headers.get('content-type'))) {
        parsed = parseJsonBody(raw);
      } else if (looksLikeJsonObject(raw)) {
        // `curl -d '{…}'` sends JSON labelled as a form; meter it if it parses, forward it as is either way.
        try {
          parsed = parseJsonBody(raw);
        } catch {
          parsed = undefined;
        }
      }
      if (parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed)) body = parsed as Record<string, unknown>;
    }
    const userId = userIds.admit(userIdFrom(request.headers, body), request.headers);
    const stream = body?.stream === true;
    let upstreamBody = raw;
    let injectedUsage = false;
    if (stream && (endpoint === 'chat' || endpoint === 'completions')) {
      const options = body!.stream_options;
      const asked = options !== null && typeof options === 'object' && (options as { include_usage?: unknown }).include_usage === true;
      if (!asked) {
        const base = options !== null && typeof options === 'object' && !Array.isArray(options) ? options : {};
        upstreamBody = Buffer.from(JSON.stringify({ ...body, stream_options: { ...base, include_usage: true } }), 'utf8');
        injectedUsage = true;
      }
    }
    return {
      requestId,
      keyId,
      userId,
      properties,
      endpoint,
      body,
      requestedModel: typeof body?.model === 'string' ? body.model : null,
      stream,
      injectedUsage,
      upstreamBody,
      url,
    };
  }

  return async function proxy(request: Request, context: ExecutionContext): Promise<Response> {
    const started = now();
    const startedAt = new Date(started);
    let prepared: PreparedRequest;
    try {
      prepared = await prepare(request);
    } catch (error) {
      // Refused before anything was sent upstream: no usage to meter, and no trustworthy id to bill it to.
      const id = newId();
      logRefusal(deps.log, request, error, id);
      return errorResponse(error, { [GATEWAY_ID_HEADER]: id });
    }
    const { url } = prepared;
    const path = url.pathname;
    let admitted: AdmittedDecision | undefined;
    let limitHeaders: Readonly<Record<string, string>> = {};

    const event = (fields: {
      status: number;
      model: string | null;
      usage: TokenUsage;
      usageSource: UsageSource;
      error: string | null;
      ttft: number | null;
      /** When the answer ended; now when not given. */
      endedAt?: number;
    }): UsageEvent => {
      const price = priceOf(fields.usage, fields.model, provider, startedAt);
      return {
        v: USAGE_EVENT_VERSION,
        request_id: prepared.requestId,
        ts: startedAt.toISOString(),
        user_id: prepared.userId,
        properties: prepared.properties,
        provider,
        model: fields.model,
        path,
        method: request.method,
        status: fields.status,
        stream: prepared.stream,
        latency_ms: Math.max(0, (fields.endedAt ?? now()) - started),
        ttft_ms: fields.ttft,
        ...fields.usage,
        cost_usd: price.cost_nano_usd === null ? null : price.cost_nano_usd / 1e9,
        cost_nano_usd: price.cost_nano_usd,
        cost_source: price.cost_source,
        usage_source: fields.usageSource,
        error: fields.error,
        key_id: prepared.keyId,
      };
    };

    const estimate = async (text: string, includePrompt: boolean): Promise<TokenUsage | null> => {
      if (!isTokenEndpoint(prepared.endpoint) || prepared.body === undefined) return null;
      try {
        const counter = await deps.tokenCounter();
        const prompt = includePrompt ? estimatePromptTokens(counter, prepared.endpoint, prepared.body) : 0;
        const completion = prepared.endpoint === 'embeddings' ? 0 : counter.count(text);
        return { ...NO_TOKENS, prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
      } catch (error) {
        deps.log.error('token_estimate_failed', { request_id: prepared.requestId, error: describeError(error) });
        return null;
      }
    };

    if (deps.limiter !== undefined) {
      let decision: AdmissionDecision;
      try {
        decision = await deps.limiter.admit({
          requestId: prepared.requestId,
          userId: prepared.userId,
          properties: prepared.properties,
          endpoint: prepared.endpoint,
          requestedModel: prepared.requestedModel,
          provider,
          body: prepared.body,
          headers: request.headers,
          at: started,
          estimatePromptTokens: async () => (await estimate('', true))?.prompt_tokens ?? 0,
        });
      } catch (error) {
        logRefusal(deps.log, request, error, prepared.requestId);
        return errorResponse(error, { [GATEWAY_ID_HEADER]: prepared.requestId });
      }
      if (!decision.admitted) {
        // Refused by the gateway's own limits: counted per user, never forwarded.
        context.waitUntil(
          deps.recorder.record(
            event({
              status: decision.error.statusCode,
              model: prepared.requestedModel,
              usage: NO_TOKENS,
              usageSource: 'none',
              error: decision.error.statusCode === 429 ? 'rate_limited' : decision.error.code,
              ttft: null,
            }),
          ),
        );
        return errorResponse(decision.error, { ...decision.headers, [GATEWAY_ID_HEADER]: prepared.requestId });
      }
      admitted = decision;
      limitHeaders = decision.headers;
    }

    const upstreamAbort = new AbortController();
    const onClientAbort = () => upstreamAbort.abort(new Error('client_closed'));
    request.signal.addEventListener('abort', onClientAbort, { once: true });
    const headersTimer = setTimeout(
      () => upstreamAbort.abort(new UpstreamTimeoutError('upstream_timeout', 'The upstream did not answer in time.')),
      deps.config.upstreamTimeoutMs,
    );

    let upstream: Response;
    try {
      upstream = await upstreamFetch(upstreamBase + path + url.search, {
        method: request.method,
        headers: upstreamRequestHeaders(request.headers),
        body: prepared.upstreamBody,
        signal: upstreamAbort.signal,
        redirect: 'manual',
      });
    } catch (error) {
      clearTimeout(headersTimer);
      request.signal.removeEventListener('abort', onClientAbort);
      const clientGone = request.signal.aborted;
      const reason = upstreamAbort.signal.reason;
      const gatewayError: GatewayError = clientGone
        ? new UpstreamError('client_closed', 'The client closed the request.')
        : reason instanceof UpstreamTimeoutError
          ? reason
          : new UpstreamError('upstream_unreachable', 'The upstream could not be reached.', { cause: error });
      deps.log.warn('upstream_failed', { request_id: prepared.requestId, code: gatewayError.code, error: describeError(error) });
      const status = clientGone ? 499 : gatewayError.statusCode;
      const usage = clientGone ? await estimate('', true) : null;
      context.waitUntil(
        recordAfterResponse(
          event({
            status,
            model: prepared.requestedModel,
            usage: usage ?? NO_TOKENS,
            usageSource: usage === null ? 'none' : 'partial',
            error: gatewayError.code,
            ttft: null,
          }),
          admitted,
        ),
      );
      return errorResponse(gatewayError, { ...limitHeaders, [GATEWAY_ID_HEADER]: prepared.requestId });
    }
    clearTimeout(headersTimer);

    const status = upstream.status;
    const meter = createResponseMeter(upstream.headers.get('content-type'), prepared.endpoint, {
      stripInjectedUsage: prepared.injectedUsage && status >= 200 && status < 300,
    });
    let ttft: number | null = null;
    let finished = false;

    const finish = (how: 'complete' | 'client_closed' | 'upstream_broken', failure?: unknown): void => {
      if (finished) return;
      finished = true;
      const endedAt = now();
      request.signal.removeEventListener('abort', onClientAbort);
      const ok = status >= 200 && status < 300;
      const recordPromise = (async () => {
        if (deps.deferMetering === true) await new Promise<void>((resolve) => setTimeout(resolve, 0));
        // Read once the answer is out (the meter takes no more input): parsing it must not hold up the answer's end.
        const reading: MeterReading = meter.reading();
        const model = reading.model ?? prepared.requestedModel;
        let usage: TokenUsage = NO_TOKENS;
        let usageSource: UsageSource = 'none';
        if (reading.usage !== null) {
          usage = reading.usage;
          usageSource = 'provider';
        } else if (how !== 'complete') {
          const estimated = await estimate(reading.text, true);
          if (estimated !== null) {
            usage = estimated;
            usageSource = 'partial';
          }
        } else if (ok) {
          const estimated = await estimate(reading.text, true);
          if (estimated !== null) {
            usage = estimated;
            usageSource = 'estimated';
          }
        }
        const error =
          how === 'upstream_broken'
            ? 'upstream_reset'
            : !ok
              ? upstreamErrorCode(status)
              : reading.streamError !== null
                ? 'stream_error'
                : null;
        if (how === 'upstream_broken') {
          deps.log.warn('upstream_stream_broken', { request_id: prepared.requestId, error: describeError(failure) });
        }
        // Returned, not awaited: this function's scope (the request, its body, the answer) is let go now rather
        // than when the stores are done, which can be a counter flush later.
        return recordAfterResponse(event({ status, model, usage, usageSource, error, ttft, endedAt }), admitted);
      })();
      context.waitUntil(recordPromise);
    };

    const wholeLength = wholeAnswerLength(upstream, request.method);
    if (wholeLength !== null) {
      // The first upstream byte came with the headers, just now; a JSON answer's body comes all at once behind them.
      ttft = Math.max(0, now() - started);
      let bytes: Uint8Array;
      try {
        bytes = new Uint8Array(await upstream.arrayBuffer());
      } catch (error) {
        if (request.signal.aborted) {
          finish('client_closed');
          return errorResponse(new UpstreamError('client_closed', 'The client closed the request.'), { [GATEWAY_ID_HEADER]: prepared.requestId });
        }
        finish('upstream_broken', error);
        // Mirror the broken upstream: the status and headers, then a cut answer, never a clean end.
        return new Response(
          new ReadableStream<Uint8Array>({ start: (controller) => controller.error(new Error('upstream connection broken')) }),
          { status, statusText: upstream.statusText, headers: clientResponseHeaders(upstream.headers, prepared.requestId, true, limitHeaders) },
        );
      }
      const passed = meter.push(bytes);
      const rest = meter.end();
      const out = rest.byteLength === 0 ? passed : Buffer.concat([passed, rest]);
      finish('complete');
      return new LightResponse(
        '',
        status,
        upstream.statusText,
        clientResponseHeaders(upstream.headers, prepared.requestId, out.byteLength !== wholeLength, limitHeaders),
        bytesBody(out),
      );
    }

    // Chunk by chunk, through the upstream body's own reader when it offers one (no Web stream on the local server).
    const ownReader = upstream instanceof LightResponse ? upstream.takeReader() : undefined;
    if (ownReader === undefined && upstream.body === null) {
      finish('complete');
      return new Response(null, { status, headers: clientResponseHeaders(upstream.headers, prepared.requestId, false, limitHeaders) });
    }
    const reader: LightReader = ownReader ?? upstream.body!.getReader();
    let over = false;
    const relay: LightReader = {
      async read(): Promise<ReadResult> {
        while (!over) {
          let result: ReadResult;
          try {
            result = await reader.read();
          } catch (error) {
            // Cancelled meanwhile (the client went away), or the client's abort stopped the upstream: nobody is
            // reading any more.
            if (over || request.signal.aborted) {
              over = true;
              finish('client_closed');
              return { done: true };
            }
            over = true;
            finish('upstream_broken', error);
            // Mirror the broken upstream: the client must not mistake a cut answer for a complete one.
            throw new Error('upstream connection broken');
          }
          if (result.done) {
            over = true;
            const rest = meter.end();
            finish('complete');
            if (rest.byteLength > 0) return { done: false, value: rest };
            break;
          }
          ttft ??= Math.max(0, now() - started);
          const out = meter.push(result.value);
          // A chunk the meter held back (half an event) yields nothing yet: keep reading.
          if (out.byteLength > 0) return { done: false, value: out };
        }
        return { done: true };
      },
      async cancel() {
        over = true;
        finish('client_closed');
        await reader.cancel().catch(() => undefined);
      },
    };

    return new LightResponse(
      '',
      status,
      upstream.statusText,
      clientResponseHeaders(upstream.headers, prepared.requestId, prepared.injectedUsage, limitHeaders),
      readerBody(relay),
    );
  };
}

/** The largest answer the proxy reads whole and passes on in one piece; a larger one streams chunk by chunk. */
export const MAX_WHOLE_ANSWER_BYTES = 1024 * 1024;

// Statuses whose answers never have a body.
const NULL_BODY_STATUSES = new Set([101, 103, 204, 205, 304]);

/**
 * The length of an answer to take whole, or null to stream it: an answer that declares its length, up to
 * {@link MAX_WHOLE_ANSWER_BYTES}, unencoded, and not an event stream (a JSON completion: it arrives all at once,
 * and a client can do nothing with half of it). Reading it whole costs no time and spares a stream per hop;
 * an event stream, a body of unknown or larger size, or a compressed one (whose size once decoded is unknown)
 * streams as it arrives.
 */
function wholeAnswerLength(upstream: Response, method: string): number | null {
  if (method === 'HEAD' || NULL_BODY_STATUSES.has(upstream.status)) return null;
  const headers = upstream.headers;
  const length = headers.get('content-length');
  if (length === null || headers.has('content-encoding')) return null;
  if ((headers.get('content-type') ?? '').toLowerCase().includes('text/event-stream')) return null;
  const bytes = Number(length);
  return Number.isSafeInteger(bytes) && bytes >= 0 && bytes <= MAX_WHOLE_ANSWER_BYTES ? bytes : null;
}

function upstreamErrorCode(status: number): string {
  return status === 429 ? 'upstream_rate_limited' : `upstream_${status}`;
}

function logRefusal(log: Logger, request: Request, error: unknown, id: string): void {
  const code = error instanceof GatewayError ? error.code : 'internal_error';
  const status = error instanceof GatewayError ? error.statusCode : 500;
  const fields = { request_id: id, method: request.method, path: new URL(request.url).pathname, status, code };
  if (status >= 500) log.error('request_failed', { ...fields, error: describeError(error) });
  else log.info('request_refused', fields);
}
