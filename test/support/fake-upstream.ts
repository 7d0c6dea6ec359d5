/**
 * A local stand-in for the OpenAI API: a small `node:http` server that answers chat completions, legacy
 * completions, the Responses API, embeddings and the model list in OpenAI's own wire formats (JSON and SSE), close
 * enough that the official `openai` SDK works against it unchanged.
 *
 * Everything it answers is deterministic: the text is derived from the last user message, ids from a hash of the
 * request body, and `created` is fixed at {@link FAKE_CREATED}, so two identical requests produce byte-identical
 * bodies. Token counts follow simple rules a test can recompute (see {@link countWords}):
 *
 * - prompt tokens: whitespace-separated words of every message (or prompt / input) plus 3 per message;
 * - completion tokens: the number of words answered; for reasoning models (`o1`, `o3-mini`, `o4-mini`, …) a further
 *   2 × that many reasoning tokens, included in the completion tokens as OpenAI does.
 *
 * Request headers steer it (a proxy forwards them untouched), see {@link FAKE_HEADERS}.
 *
 * @example
 * ```ts
 * const upstream = await startFakeUpstream();
 * const client = new OpenAI({ apiKey: 'sk-test', baseURL: `${upstream.url}/v1` });
 * const answer = await client.chat.completions.create(
 *   { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Hello there' }] },
 *   { headers: { 'x-fake-words': '3' } },
 * );
 * answer.usage?.completion_tokens; // 3
 * await upstream.close();
 * ```
 */

import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

// ─── Public API ────────────────────────────────────────────────────────────────────────────────────────────────────

export interface RecordedRequest {
  readonly method: string;
  /** Path with query string, e.g. `/v1/chat/completions?x=1`. */
  readonly path: string;
  /** Request headers as Node received them (lower-case names). Holds the `authorization` header: never print it. */
  readonly headers: Record<string, string | string[] | undefined>;
  /** Raw request body text. */
  readonly body: string;
}

export interface FakeUpstream {
  /** Base address without trailing slash, e.g. `http://127.0.0.1:41234`; the API lives under `${url}/v1`. */
  readonly url: string;
  /** Every request received since start or the last {@link FakeUpstream.reset}, oldest first (empty when not recording). */
  readonly requests: RecordedRequest[];
  /** Stops listening and drops open (keep-alive) connections. */
  close(): Promise<void>;
  /** Forgets the recorded requests. */
  reset(): void;
}

export interface FakeUpstreamOptions {
  /** @default 0 (any free port) */
  readonly port?: number;
  /** Keep every request in {@link FakeUpstream.requests}; benchmarks turn it off. @default true */
  readonly record?: boolean;
}

/** The `created` / `created_at` timestamp of every answer (2023-11-14T22:13:20Z). */
export const FAKE_CREATED = 1_700_000_000;

/** Number of words answered when `x-fake-words` is absent. */
export const DEFAULT_ANSWER_WORDS = 8;

/** Dimensions of an embedding when the request names none. */
export const DEFAULT_EMBEDDING_DIMENSIONS = 8;

/** The `system_fingerprint` of every chat answer. */
export const FAKE_SYSTEM_FINGERPRINT = 'fp_f4ce0upstr';

/** Request headers that steer the fake. Values are non-negative integers unless said otherwise. */
export const FAKE_HEADERS = {
  /** Answer with this HTTP status (400–599) and an OpenAI error body; 429 also carries `retry-after: 1`. */
  status: 'x-fake-status',
  /** Wait this many milliseconds before sending the response headers. */
  delayMs: 'x-fake-delay-ms',
  /** Wait this many milliseconds before each SSE event. */
  chunkDelayMs: 'x-fake-chunk-delay-ms',
  /** Number of words in the answer (default {@link DEFAULT_ANSWER_WORDS}). */
  words: 'x-fake-words',
  /** `1`: send no usage at all (no `usage` key, no usage chunk, even when `include_usage` is asked). */
  noUsage: 'x-fake-no-usage',
  /** Report this many cached prompt tokens. */
  cachedTokens: 'x-fake-cached-tokens',
  /** Streams: after this many SSE events of any kind, close the connection without ending the body. */
  errorAfter: 'x-fake-error-after',
  /** Streams: after this many content events (text deltas), close the connection without ending the body. */
  resetAfter: 'x-fake-reset-after',
  /** Answer with a malformed response of this kind instead of the real one (see {@link GARBAGE_KINDS}). */
  garbage: 'x-fake-garbage',
  /** Size in bytes of the `huge-line` and `binary` garbage (default {@link DEFAULT_GARBAGE_BYTES}). */
  garbageBytes: 'x-fake-garbage-bytes',
} as const;

/**
 * Malformed answers the fake sends on request (`x-fake-garbage: <kind>`), whatever the path, for robustness tests of
 * whatever reads upstream answers. All are deterministic (bytes derive from the request body) and status 200 unless
 * said otherwise:
 *
 * - `non-json-data`: SSE whose data lines are not JSON objects (broken JSON, arrays, strings, null), a comment, an
 *   event without data, then `[DONE]`;
 * - `lone-cr`: SSE chat chunks with lone-CR line endings, a CR in the text, and mixed line endings;
 * - `truncated-event`: one valid chunk, then half an event, and the body ends cleanly;
 * - `cut-mid-event`: one valid chunk, then half an event, and the connection breaks (no chunked terminator);
 * - `binary`: pseudo-random bytes (NUL, CR, LF, invalid UTF-8) labelled `text/event-stream`;
 * - `huge-line`: one `data:` line of many bytes, then `[DONE]`;
 * - `no-blank-lines`: SSE chunks separated by single newlines, never a blank line;
 * - `sse-as-text`: a valid chat stream labelled `text/plain`;
 * - `sse-as-json`: a valid chat stream labelled `application/json`;
 * - `json-not-json`: `application/json` whose body is HTML;
 * - `truncated-json`: `application/json` cut in the middle of a string;
 * - `deep-json`: `application/json` nested 100,000 arrays deep;
 * - `absurd-usage`: a chat completion whose usage holds 1e308, -5, "7", 1e400 and nested garbage;
 * - `empty-json`: `application/json` with an empty body;
 * - `bad-gzip`: `content-encoding: gzip` over bytes that are not gzip;
 * - `short-body`: `content-length` larger than the body, then the connection closes;
 * - `html-502`: status 502 with an HTML page, as a load balancer in front of a provider sends.
 */
export const GARBAGE_KINDS = [
  'non-json-data',
  'lone-cr',
  'truncated-event',
  'cut-mid-event',
  'binary',
  'huge-line',
  'no-blank-lines',
  'sse-as-text',
  'sse-as-json',
  'json-not-json',
  'truncated-json',
  'deep-json',
  'absurd-usage',
  'empty-json',
  'bad-gzip',
  'short-body',
  'html-502',
] as const;

export type GarbageKind = (typeof GARBAGE_KINDS)[number];

/** Size of the `huge-line` and `binary` garbage when `x-fake-garbage-bytes` is absent: 1 MiB. */
export const DEFAULT_GARBAGE_BYTES = 1024 * 1024;

/**
 * Splits text into whitespace-separated words; the fake's unit of "tokens".
 *
 * @example countWords('  Hello   there ') // 2
 */
export function countWords(text: string): number {
  let count = 0;
  let inWord = false;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    const space = code === 32 || (code >= 9 && code <= 13) || code === 0xa0;
    if (!space && !inWord) count++;
    inWord = !space;
  }
  return count;
}

/** True for model names the fake treats as reasoning models: `o` followed by a digit (`o1`, `o3-mini`, `o4-mini`). */
export function isReasoningModel(model: string): boolean {
  return /^o\d/.test(model);
}

/**
 * The model name as the upstream answers it: the request's model, except `gpt-4o-mini` which OpenAI answers with its
 * dated snapshot.
 */
export function answeredModel(requested: string): string {
  return requested === 'gpt-4o-mini' ? 'gpt-4o-mini-2024-07-18' : requested;
}

/**
 * Starts the fake on 127.0.0.1.
 *
 * @example
 * ```ts
 * let upstream: FakeUpstream;
 * before(async () => { upstream = await startFakeUpstream(); });
 * after(() => upstream.close());
 * ```
 */
export async function startFakeUpstream(options: FakeUpstreamOptions = {}): Promise<FakeUpstream> {
  const record = options.record ?? true;
  const requests: RecordedRequest[] = [];

  // noDelay: every SSE event leaves in its own TCP segment, so a proxy's streaming is observable event by event.
  const server = createServer({ noDelay: true, keepAlive: true }, (req, res) => {
    handle(req, res, record ? requests : undefined).catch((error: unknown) => {
      // Only reached on a fault of the fake itself; the socket is dropped so the test sees it instead of hanging.
      res.destroy(error instanceof Error ? error : new Error(String(error)));
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    reset() {
      requests.length = 0;
    },
    close() {
      return new Promise<void>((resolve, reject) => {
        server.close((error) => (error ? reject(error) : resolve()));
        server.closeAllConnections();
      });
    },
  };
}

// ─── Request handling ──────────────────────────────────────────────────────────────────────────────────────────────

/** An OpenAI-shaped error answer: `{"error":{"message","type","param","code"}}`. */
class OpenAIErrorReply extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly code: string | null = null,
    readonly param: string | null = null,
  ) {
    super(message);
    this.name = 'OpenAIErrorReply';
  }
}

/** How a request asked the fake to behave, parsed from {@link FAKE_HEADERS}. */
interface Controls {
  readonly status: number | undefined;
  readonly delayMs: number;
  readonly chunkDelayMs: number;
  readonly words: number;
  readonly noUsage: boolean;
  readonly cachedTokens: number;
  readonly errorAfter: number | undefined;
  readonly resetAfter: number | undefined;
  readonly garbage: GarbageKind | undefined;
  readonly garbageBytes: number;
}

type Json = Record<string, unknown>;

async function handle(req: IncomingMessage, res: ServerResponse, requests: RecordedRequest[] | undefined): Promise<void> {
  const body = await readBody(req);
  const method = req.method ?? 'GET';
  const path = req.url ?? '/';
  requests?.push({ method, path, headers: { ...req.headers }, body });

  res.setHeader('x-request-id', `req_${randomBytes(16).toString('hex')}`);
  res.setHeader('openai-version', '2020-10-01');

  try {
    const controls = controlsFrom(req);
    if (controls.delayMs > 0) await sleep(controls.delayMs);
    if (controls.status !== undefined) throw simulatedError(controls.status);
    if (!req.headers.authorization) {
      throw new OpenAIErrorReply(
        401,
        "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        'invalid_request_error',
      );
    }
    if (controls.garbage !== undefined) return await sendGarbage(res, controls.garbage, body, controls.garbageBytes);
    await route(method, path, body, controls, res);
  } catch (error) {
    if (!(error instanceof OpenAIErrorReply)) throw error;
    if (error.status === 429) res.setHeader('retry-after', '1');
    sendJson(res, error.status, {
      error: { message: error.message, type: error.type, param: error.param, code: error.code },
    });
  }
}

async function route(method: string, path: string, body: string, controls: Controls, res: ServerResponse): Promise<void> {
  const pathname = path.split('?', 1)[0]!;
  if (method === 'POST') {
    switch (pathname) {
      case '/v1/chat/completions':
        return chatCompletions(parseJsonBody(body), body, controls, res);
      case '/v1/completions':
        return completions(parseJsonBody(body), body, controls, res);
      case '/v1/responses':
        return responses(parseJsonBody(body), body, controls, res);
      case '/v1/embeddings':
        return embeddings(parseJsonBody(body), controls, res);
    }
  }
  if (method === 'GET' && pathname === '/v1/models') return sendJson(res, 200, { object: 'list', data: MODELS.map(modelObject) });
  if (method === 'GET' && pathname.startsWith('/v1/models/')) {
    const id = decodeURIComponent(pathname.slice('/v1/models/'.length));
    if (MODELS.includes(id)) return sendJson(res, 200, modelObject(id));
    throw new OpenAIErrorReply(404, `The model '${id}' does not exist`, 'invalid_request_error', 'model_not_found', 'model');
  }
  throw new OpenAIErrorReply(404, `Invalid URL (${method} ${pathname})`, 'invalid_request_error', 'unknown_url');
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function controlsFrom(req: IncomingMessage): Controls {
  const status = integerHeader(req, FAKE_HEADERS.status);
  if (status !== undefined && (status < 400 || status > 599)) {
    throw badControl(FAKE_HEADERS.status, 'an HTTP error status between 400 and 599');
  }
  return {
    status,
    delayMs: integerHeader(req, FAKE_HEADERS.delayMs) ?? 0,
    chunkDelayMs: integerHeader(req, FAKE_HEADERS.chunkDelayMs) ?? 0,
    words: integerHeader(req, FAKE_HEADERS.words) ?? DEFAULT_ANSWER_WORDS,
    noUsage: headerValue(req, FAKE_HEADERS.noUsage) === '1',
    cachedTokens: integerHeader(req, FAKE_HEADERS.cachedTokens) ?? 0,
    errorAfter: integerHeader(req, FAKE_HEADERS.errorAfter),
    resetAfter: integerHeader(req, FAKE_HEADERS.resetAfter),
    garbage: garbageKind(req),
    garbageBytes: integerHeader(req, FAKE_HEADERS.garbageBytes) ?? DEFAULT_GARBAGE_BYTES,
  };
}

function garbageKind(req: IncomingMessage): GarbageKind | undefined {
  const value = headerValue(req, FAKE_HEADERS.garbage)?.trim();
  if (value === undefined) return undefined;
  if (!(GARBAGE_KINDS as readonly string[]).includes(value)) throw badControl(FAKE_HEADERS.garbage, `one of ${GARBAGE_KINDS.join(', ')}`);
  return value as GarbageKind;
}

function headerValue(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

function integerHeader(req: IncomingMessage, name: string): number | undefined {
  const value = headerValue(req, name);
  if (value === undefined) return undefined;
  // A typo in a test's control header must fail loudly, not silently fall back to the default behaviour.
  if (!/^\d+$/.test(value.trim())) throw badControl(name, 'a non-negative integer');
  return Number(value.trim());
}

function badControl(name: string, expected: string): OpenAIErrorReply {
  return new OpenAIErrorReply(400, `Header ${name} must be ${expected}.`, 'invalid_request_error', 'invalid_header', name);
}

/** The error bodies OpenAI sends for the statuses tests simulate most; any other status gets a generic one. */
function simulatedError(status: number): OpenAIErrorReply {
  switch (status) {
    case 400:
      return new OpenAIErrorReply(400, 'Invalid request.', 'invalid_request_error');
    case 401:
      return new OpenAIErrorReply(401, 'Incorrect API key provided.', 'invalid_request_error', 'invalid_api_key');
    case 429:
      return new OpenAIErrorReply(
        429,
        'Rate limit reached for requests. Please try again in 1s.',
        'requests',
        'rate_limit_exceeded',
      );
    case 500:
      return new OpenAIErrorReply(
        500,
        'The server had an error while processing your request. Sorry about that!',
        'server_error',
      );
    default:
      return new OpenAIErrorReply(
        status,
        `The upstream answered with status ${status}.`,
        status >= 500 ? 'server_error' : 'invalid_request_error',
      );
  }
}

function parseJsonBody(body: string): Json {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    parsed = undefined;
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new OpenAIErrorReply(
      400,
      "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
      'invalid_request_error',
    );
  }
  return parsed as Json;
}

function requiredModel(request: Json): string {
  if (typeof request.model !== 'string' || request.model === '') {
    throw new OpenAIErrorReply(400, 'you must provide a model parameter', 'invalid_request_error', null, null);
  }
  return request.model;
}

function missingParameter(name: string): OpenAIErrorReply {
  return new OpenAIErrorReply(
    400,
    `Missing required parameter: '${name}'.`,
    'invalid_request_error',
    'missing_required_parameter',
    name,
  );
}

// ─── Answer: text and token counts ─────────────────────────────────────────────────────────────────────────────────

/** Words the answers are made of; which ones, and in which order, depends on the last user message. */
const VOCABULARY = [
  'the', 'gateway', 'counts', 'every', 'token', 'for', 'each', 'user', 'and', 'answers', 'with', 'a', 'steady',
  'stream', 'of', 'words', 'from', 'its', 'own', 'small', 'model', 'that', 'never', 'sleeps', 'unless', 'asked',
  'to', 'wait', 'between', 'chunks', 'so', 'tests',
];

interface Answer {
  /** Hex digest of the request body; the source of every id of the answer. */
  readonly hash: string;
  readonly model: string;
  /** Answer split into stream deltas: the first word, then each further word with its leading space. */
  readonly deltas: readonly string[];
  readonly text: string;
  readonly usage: TokenCounts;
}

interface TokenCounts {
  readonly prompt: number;
  readonly cached: number;
  /** Includes {@link TokenCounts.reasoning}. */
  readonly completion: number;
  readonly reasoning: number;
  readonly total: number;
}

function withoutStreamOptions(body: string): string {
  try {
    const parsed = JSON.parse(body) as Record<string, unknown>;
    if (parsed !== null && typeof parsed === 'object' && 'stream_options' in parsed) {
      const { stream_options: _ignored, ...rest } = parsed;
      return JSON.stringify(rest);
    }
  } catch {
    // Not JSON: hash as is.
  }
  return body;
}

function answerFor(body: string, requestedModel: string, lastUserText: string, promptTokens: number, controls: Controls, reasoning: boolean): Answer {
  const seed = createHash('sha256').update(lastUserText).digest();
  const deltas: string[] = [];
  for (let i = 0; i < controls.words; i++) {
    const word = VOCABULARY[(seed[i % seed.length]! + i) % VOCABULARY.length]!;
    deltas.push(i === 0 ? word[0]!.toUpperCase() + word.slice(1) : ` ${word}`);
  }
  const words = controls.words;
  const reasoningTokens = reasoning && isReasoningModel(requestedModel) ? 2 * words : 0;
  const completion = words + reasoningTokens;
  return {
    // stream_options only changes what is sent, not what is answered: a proxy that adds include_usage on the
    // client's behalf must see the same ids as a direct call.
    hash: createHash('sha256').update(withoutStreamOptions(body)).digest('hex'),
    model: answeredModel(requestedModel),
    deltas,
    text: deltas.join(''),
    usage: {
      prompt: promptTokens,
      cached: controls.cachedTokens,
      completion,
      reasoning: reasoningTokens,
      total: promptTokens + completion,
    },
  };
}

/** Text of a message `content`: a string, or the `text` of each part of a content array. */
function contentText(content: unknown): string {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) return '';
  const texts: string[] = [];
  for (const part of content) {
    if (typeof part === 'string') texts.push(part);
    else if (part && typeof part === 'object' && typeof (part as Json).text === 'string') texts.push((part as Json).text as string);
  }
  return texts.join(' ');
}

/** Prompt tokens of a list of messages: their words plus 3 per message. */
function messageTokens(texts: readonly string[]): number {
  let tokens = 0;
  for (const text of texts) tokens += countWords(text) + 3;
  return tokens;
}

function chatUsage(usage: TokenCounts): Json {
  return {
    prompt_tokens: usage.prompt,
    completion_tokens: usage.completion,
    total_tokens: usage.total,
    prompt_tokens_details: { cached_tokens: usage.cached, audio_tokens: 0 },
    completion_tokens_details: {
      reasoning_tokens: usage.reasoning,
      audio_tokens: 0,
      accepted_prediction_tokens: 0,
      rejected_prediction_tokens: 0,
    },
  };
}

// ─── POST /v1/chat/completions ─────────────────────────────────────────────────────────────────────────────────────

async function chatCompletions(request: Json, body: string, controls: Controls, res: ServerResponse): Promise<void> {
  const model = requiredModel(request);
  if (!Array.isArray(request.messages)) throw missingParameter('messages');
  const messages = request.messages as Json[];
  const texts = messages.map((message) => contentText(message?.content));
  const lastUser = [...messages].reverse().find((message) => message?.role === 'user');
  const answer = answerFor(body, model, contentText(lastUser?.content), messageTokens(texts), controls, true);
  const head = {
    id: `chatcmpl-${answer.hash.slice(0, 29)}`,
    object: request.stream === true ? 'chat.completion.chunk' : 'chat.completion',
    created: FAKE_CREATED,
    model: answer.model,
    service_tier: 'default',
    system_fingerprint: FAKE_SYSTEM_FINGERPRINT,
  };

  if (request.stream !== true) {
    return sendJson(res, 200, {
      ...head,
      choices: [
        {
          index: 0,
          message: { role: 'assistant', content: answer.text, refusal: null, annotations: [] },
          logprobs: null,
          finish_reason: 'stop',
        },
      ],
      ...(controls.noUsage ? {} : { usage: chatUsage(answer.usage) }),
    });
  }

  // OpenAI semantics: with include_usage every chunk carries `"usage":null` and one extra chunk with no choices
  // carries the totals; without it no chunk has a usage key at all.
  const includeUsage = includeUsageAsked(request) && !controls.noUsage;
  const chunk = (delta: Json, finishReason: string | null): string =>
    data({
      ...head,
      choices: [{ index: 0, delta, logprobs: null, finish_reason: finishReason }],
      ...(includeUsage ? { usage: null } : {}),
    });
  const events: SseEvent[] = [{ text: chunk({ role: 'assistant', content: '', refusal: null }, null), content: false }];
  for (const delta of answer.deltas) events.push({ text: chunk({ content: delta }, null), content: true });
  events.push({ text: chunk({}, 'stop'), content: false });
  if (includeUsage) events.push({ text: data({ ...head, choices: [], usage: chatUsage(answer.usage) }), content: false });
  events.push({ text: DONE, content: false });
  return stream(res, events, controls);
}

function includeUsageAsked(request: Json): boolean {
  const options = request.stream_options;
  return typeof options === 'object' && options !== null && (options as Json).include_usage === true;
}

// ─── POST /v1/completions ──────────────────────────────────────────────────────────────────────────────────────────

/**
 * Legacy completions: usage is the plain three counts (no details, no reasoning), as OpenAI sends for its instruct
 * models.
 */
async function completions(request: Json, body: string, controls: Controls, res: ServerResponse): Promise<void> {
  const model = requiredModel(request);
  if (request.prompt === undefined) throw missingParameter('prompt');
  const prompts = Array.isArray(request.prompt) ? request.prompt.map(promptText) : [promptText(request.prompt)];
  const answer = answerFor(body, model, prompts.at(-1) ?? '', messageTokens(prompts), controls, false);
  const head = { id: `cmpl-${answer.hash.slice(0, 29)}`, object: 'text_completion', created: FAKE_CREATED, model: answer.model };
  const usage = { prompt_tokens: answer.usage.prompt, completion_tokens: answer.usage.completion, total_tokens: answer.usage.total };

  if (request.stream !== true) {
    return sendJson(res, 200, {
      ...head,
      choices: [{ text: answer.text, index: 0, logprobs: null, finish_reason: 'stop' }],
      ...(controls.noUsage ? {} : { usage }),
    });
  }

  const includeUsage = includeUsageAsked(request) && !controls.noUsage;
  const chunk = (text: string, finishReason: string | null): string =>
    data({
      ...head,
      choices: [{ text, index: 0, logprobs: null, finish_reason: finishReason }],
      ...(includeUsage ? { usage: null } : {}),
    });
  const events: SseEvent[] = answer.deltas.map((delta) => ({ text: chunk(delta, null), content: true }));
  events.push({ text: chunk('', 'stop'), content: false });
  if (includeUsage) events.push({ text: data({ ...head, choices: [], usage }), content: false });
  events.push({ text: DONE, content: false });
  return stream(res, events, controls);
}

/** A legacy prompt is a string, or (like each element of a prompt array) an array of token ids. */
function promptText(prompt: unknown): string {
  if (typeof prompt === 'string') return prompt;
  if (Array.isArray(prompt)) return prompt.map(String).join(' ');
  return '';
}

// ─── POST /v1/responses ────────────────────────────────────────────────────────────────────────────────────────────

async function responses(request: Json, body: string, controls: Controls, res: ServerResponse): Promise<void> {
  const model = requiredModel(request);
  if (request.input === undefined) throw missingParameter('input');
  const items: Json[] =
    typeof request.input === 'string' ? [{ role: 'user', content: request.input }] : Array.isArray(request.input) ? request.input : [];
  const texts = items.map((item) => contentText(item?.content) || (typeof item?.output === 'string' ? item.output : ''));
  if (typeof request.instructions === 'string') texts.unshift(request.instructions);
  const lastUser = [...items].reverse().find((item) => item?.role === 'user');
  const answer = answerFor(body, model, contentText(lastUser?.content), messageTokens(texts), controls, true);

  const id = `resp_${answer.hash.slice(0, 48)}`;
  const messageId = `msg_${answer.hash.slice(8, 56)}`;
  const textPart = (text: string) => ({ type: 'output_text', annotations: [], logprobs: [], text });
  const message = (status: string, content: Json[]) => ({ id: messageId, type: 'message', status, content, role: 'assistant' });
  const done = message('completed', [textPart(answer.text)]);
  // Reasoning models put a reasoning item before the message, which shifts the message's output_index.
  const reasoningItem = answer.usage.reasoning > 0 ? { id: `rs_${answer.hash.slice(16, 64)}`, type: 'reasoning', summary: [] } : undefined;
  const usage = {
    input_tokens: answer.usage.prompt,
    input_tokens_details: { cached_tokens: answer.usage.cached },
    output_tokens: answer.usage.completion,
    output_tokens_details: { reasoning_tokens: answer.usage.reasoning },
    total_tokens: answer.usage.total,
  };
  const snapshot = (status: string, output: Json[], withUsage: boolean): Json => {
    const response: Json = {
      id,
      object: 'response',
      created_at: FAKE_CREATED,
      status,
      background: false,
      completed_at: status === 'completed' ? FAKE_CREATED : null,
      error: null,
      incomplete_details: null,
      instructions: typeof request.instructions === 'string' ? request.instructions : null,
      max_output_tokens: typeof request.max_output_tokens === 'number' ? request.max_output_tokens : null,
      model: answer.model,
      output,
      parallel_tool_calls: true,
      previous_response_id: typeof request.previous_response_id === 'string' ? request.previous_response_id : null,
      reasoning: { effort: reasoningItem ? 'medium' : null, summary: null },
      service_tier: 'default',
      store: request.store !== false,
      temperature: 1,
      text: { format: { type: 'text' } },
      tool_choice: 'auto',
      tools: [],
      top_p: 1,
      truncation: 'disabled',
      usage: withUsage ? usage : null,
      user: null,
      metadata: {},
    };
    if (controls.noUsage) delete response.usage;
    return response;
  };
  const finalOutput = reasoningItem ? [reasoningItem, done] : [done];

  if (request.stream !== true) return sendJson(res, 200, snapshot('completed', finalOutput, true));

  const events: SseEvent[] = [];
  let sequence = 0;
  const emit = (type: string, fields: Json, content = false) => {
    events.push({ text: `event: ${type}\n${data({ type, sequence_number: sequence++, ...fields })}`, content });
  };
  emit('response.created', { response: snapshot('in_progress', [], false) });
  emit('response.in_progress', { response: snapshot('in_progress', [], false) });
  if (reasoningItem) {
    emit('response.output_item.added', { output_index: 0, item: reasoningItem });
    emit('response.output_item.done', { output_index: 0, item: reasoningItem });
  }
  const outputIndex = reasoningItem ? 1 : 0;
  const at = { item_id: messageId, output_index: outputIndex, content_index: 0 };
  emit('response.output_item.added', { output_index: outputIndex, item: message('in_progress', []) });
  emit('response.content_part.added', { ...at, part: textPart('') });
  for (const delta of answer.deltas) emit('response.output_text.delta', { ...at, delta, logprobs: [] }, true);
  emit('response.output_text.done', { ...at, text: answer.text, logprobs: [] });
  emit('response.content_part.done', { ...at, part: textPart(answer.text) });
  emit('response.output_item.done', { output_index: outputIndex, item: done });
  emit('response.completed', { response: snapshot('completed', finalOutput, true) });
  return stream(res, events, controls);
}

// ─── POST /v1/embeddings ───────────────────────────────────────────────────────────────────────────────────────────

/**
 * One vector per input, derived from the input's hash. Every component is a multiple of 1/128 in [-1, 1), exactly
 * representable as float32, so the float JSON and the base64 float32 encoding (the SDK's default) decode to the
 * same numbers.
 */
async function embeddings(request: Json, controls: Controls, res: ServerResponse): Promise<void> {
  const model = requiredModel(request);
  if (request.input === undefined) throw missingParameter('input');
  const input = request.input;
  // A string, an array of strings, an array of token ids, or an array of token-id arrays.
  const inputs: unknown[] = Array.isArray(input) && input.length > 0 && typeof input[0] !== 'number' ? input : [input];
  const dimensions = typeof request.dimensions === 'number' && request.dimensions > 0 ? request.dimensions : DEFAULT_EMBEDDING_DIMENSIONS;
  const base64 = request.encoding_format === 'base64';
  let promptTokens = 0;
  const data = inputs.map((item, index) => {
    const text = Array.isArray(item) ? item.map(String).join(' ') : String(item);
    promptTokens += countWords(text);
    const vector = embeddingOf(text, dimensions);
    return { object: 'embedding', index, embedding: base64 ? float32Base64(vector) : vector };
  });
  return sendJson(res, 200, {
    object: 'list',
    data,
    model: answeredModel(model),
    ...(controls.noUsage ? {} : { usage: { prompt_tokens: promptTokens, total_tokens: promptTokens } }),
  });
}

function embeddingOf(text: string, dimensions: number): number[] {
  const vector: number[] = [];
  for (let block = 0; vector.length < dimensions; block++) {
    const bytes = createHash('sha256').update(`${block}:${text}`).digest();
    for (const byte of bytes) {
      if (vector.length === dimensions) break;
      vector.push((byte - 128) / 128);
    }
  }
  return vector;
}

function float32Base64(vector: readonly number[]): string {
  const buffer = Buffer.alloc(vector.length * 4);
  vector.forEach((value, i) => buffer.writeFloatLE(value, i * 4));
  return buffer.toString('base64');
}

// ─── GET /v1/models ────────────────────────────────────────────────────────────────────────────────────────────────

const MODELS = ['gpt-4o-mini', 'gpt-4o-mini-2024-07-18', 'gpt-4o', 'gpt-4.1', 'o3-mini', 'o4-mini', 'gpt-3.5-turbo-instruct', 'text-embedding-3-small'];

function modelObject(id: string): Json {
  return { id, object: 'model', created: FAKE_CREATED, owned_by: 'system' };
}

// ─── Wire output ───────────────────────────────────────────────────────────────────────────────────────────────────

/** One server-sent event, ready to write; `content` marks the events that carry answer text. */
interface SseEvent {
  readonly text: string;
  readonly content: boolean;
}

const DONE = 'data: [DONE]\n\n';

function data(value: Json): string {
  return `data: ${JSON.stringify(value)}\n\n`;
}

function sendJson(res: ServerResponse, status: number, value: Json): void {
  const text = JSON.stringify(value);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/**
 * Writes the events one at a time, each waiting for the previous one to reach the socket, so each becomes its own
 * TCP write instead of being coalesced with the next (Node corks a response's writes within one tick).
 * `x-fake-error-after` / `x-fake-reset-after` end the socket after the counted event without the chunked-encoding
 * terminator: everything written is delivered, then the client's body read fails as on an upstream reset.
 */
async function stream(res: ServerResponse, events: readonly SseEvent[], controls: Controls): Promise<void> {
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' });
  let written = 0;
  let contentWritten = 0;
  const broken = () =>
    (controls.errorAfter !== undefined && written >= controls.errorAfter) ||
    (controls.resetAfter !== undefined && contentWritten >= controls.resetAfter);

  if (broken()) return breakConnection(res);
  for (const event of events) {
    if (controls.chunkDelayMs > 0) await sleep(controls.chunkDelayMs);
    if (res.destroyed) return;
    await write(res, event.text);
    written++;
    if (event.content) contentWritten++;
    if (broken()) return breakConnection(res);
  }
  res.end();
}

function write(res: ServerResponse, text: string | Buffer): Promise<void> {
  return new Promise((resolve) => {
    // Resolves on close too: the client may hang up mid-stream, and the write callback alone may never fire then.
    const onClose = () => resolve();
    res.once('close', onClose);
    res.write(text, () => {
      res.off('close', onClose);
      resolve();
    });
  });
}

function breakConnection(res: ServerResponse): void {
  // The headers are still unsent when the break comes before the first event: the client must see a 200 first.
  res.flushHeaders();
  // destroySoon ends the socket after pending writes: delivered data stays delivered, the body never terminates.
  res.socket?.destroySoon();
}

// ─── Garbage ───────────────────────────────────────────────────────────────────────────────────────────────────────

/** Deterministic bytes from a seed (SHA-256 in counter mode): the same request always gets the same garbage. */
function seededBytes(seed: string, size: number): Buffer {
  const out = Buffer.alloc(size);
  for (let block = 0, offset = 0; offset < size; block++) {
    const digest = createHash('sha256').update(`${block}:${seed}`).digest();
    offset += digest.copy(out, offset, 0, Math.min(digest.length, size - offset));
  }
  return out;
}

/** A chat stream's chunks (with usage), as `data:` payloads, for the kinds that mislabel or reframe a valid stream. */
function chatChunkPayloads(hash: string): string[] {
  const head = { id: `chatcmpl-${hash.slice(0, 29)}`, object: 'chat.completion.chunk', created: FAKE_CREATED, model: 'gpt-4o-mini-2024-07-18' };
  const chunk = (delta: Json, finish: string | null) =>
    JSON.stringify({ ...head, choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }], usage: null });
  return [
    chunk({ role: 'assistant', content: '' }, null),
    chunk({ content: 'Garbage' }, null),
    chunk({ content: ' in,\r garbage out' }, null),
    chunk({}, 'stop'),
    JSON.stringify({ ...head, choices: [], usage: { prompt_tokens: 5, completion_tokens: 4, total_tokens: 9 } }),
  ];
}

const SSE = 'text/event-stream; charset=utf-8';

async function sendGarbage(res: ServerResponse, kind: GarbageKind, body: string, bytes: number): Promise<void> {
  // As for real answers, what the gateway adds in stream_options changes nothing in the garbage.
  const hash = createHash('sha256').update(withoutStreamOptions(body)).digest('hex');
  const payloads = chatChunkPayloads(hash);
  const valid = payloads.map((p) => `data: ${p}\n\n`).join('') + DONE;
  const head = (status: number, headers: Record<string, string | number>) => res.writeHead(status, headers);
  switch (kind) {
    case 'non-json-data':
      head(200, { 'content-type': SSE });
      for (const part of ['data: {not json\n\n', 'data: [1, 2\n\n', 'data: "a string"\n\n', 'data: null\n\n', 'data: 42\n\n', ': a comment\n\n', 'event: ping\n\n', 'data:\n\n', DONE]) {
        await write(res, part);
      }
      return void res.end();
    case 'lone-cr':
      head(200, { 'content-type': SSE });
      await write(res, `data: ${payloads[0]}\r\r`);
      await write(res, `data: ${payloads[1]}\r`);
      await write(res, `\rdata: ${payloads[2]}\n\r\n`);
      await write(res, `data: ${payloads[3]}\r\n\r\ndata: ${payloads[4]}\r\r\r`);
      await write(res, 'data: [DONE]\r\r');
      return void res.end();
    case 'truncated-event':
    case 'cut-mid-event': {
      head(200, { 'content-type': SSE });
      await write(res, `data: ${payloads[0]}\n\n`);
      await write(res, `data: ${payloads[1]!.slice(0, 40)}`);
      if (kind === 'cut-mid-event') return breakConnection(res);
      return void res.end();
    }
    case 'binary':
      head(200, { 'content-type': SSE });
      await write(res, seededBytes(hash, bytes));
      return void res.end();
    case 'huge-line':
      head(200, { 'content-type': SSE });
      await write(res, `data: {"choices":[{"delta":{"content":"${'x'.repeat(bytes)}`);
      await write(res, `"}}]}\n\n${DONE}`);
      return void res.end();
    case 'no-blank-lines':
      head(200, { 'content-type': SSE });
      await write(res, payloads.map((p) => `data: ${p}\n`).join(''));
      return void res.end();
    case 'sse-as-text':
    case 'sse-as-json':
      head(200, { 'content-type': kind === 'sse-as-text' ? 'text/plain' : 'application/json' });
      await write(res, valid);
      return void res.end();
    case 'json-not-json':
      return sendRaw(res, 200, 'application/json', '<html><body>Bad gateway</body></html>');
    case 'truncated-json':
      return sendRaw(res, 200, 'application/json', '{"id":"chatcmpl-1","model":"gpt-4o-mini","choices":[{"message":{"content":"cut');
    case 'deep-json':
      return sendRaw(res, 200, 'application/json', '['.repeat(100_000) + ']'.repeat(100_000));
    case 'absurd-usage':
      return sendRaw(
        res,
        200,
        'application/json',
        '{"id":"chatcmpl-2","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"absurd"}}],' +
          '"usage":{"prompt_tokens":1e308,"completion_tokens":-5,"total_tokens":"7","prompt_tokens_details":{"cached_tokens":1e400},"completion_tokens_details":[1,2]}}',
      );
    case 'empty-json':
      return sendRaw(res, 200, 'application/json', '');
    case 'bad-gzip':
      res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' });
      await write(res, seededBytes(hash, 512));
      return void res.end();
    case 'short-body':
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': 100 });
      await write(res, '{"id":"chatcmpl-3","model":"gpt-4o-mini"');
      return breakConnection(res);
    case 'html-502':
      return sendRaw(res, 502, 'text/html', '<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>');
  }
}

function sendRaw(res: ServerResponse, status: number, contentType: string, text: string): void {
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
