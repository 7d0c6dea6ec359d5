/**
 * Exact accounting under load, on loopback, bounded in count and time: many concurrent requests of 500 users,
 * mixed streaming and non-streaming, successes, upstream errors and broken streams, then, per user, what the
 * client sent must equal the events in the event log, the live counters and the history totals, exactly: requests,
 * errors, prompt / completion / total tokens, cost and unpriced requests.
 *
 * - Local: the real server (`bin/local-server.ts`, as `npm start` runs it) in a child process on a fresh data
 *   directory, the fake upstream in this process; log = the event files, live = `GET /metrics/users?period=all`
 *   (every page), history = `GET /metrics/usage?group_by=user` (DuckDB over the event files).
 * - AWS: the local API Gateway → the proxy Lambda's streaming handler → the fake upstream, usage to the Firehose
 *   fake and DynamoDB (dynalite, in a child process); log = the records Firehose accepted, live = the metrics
 *   Lambda on DynamoDB, history = the metrics Lambda on the Athena fake, which runs the very SQL it is sent on
 *   DuckDB over the records Firehose accepted.
 *
 * Most traffic goes over raw keep-alive `node:http` connections (a client per request through the OpenAI SDK
 * would cost more CPU than the gateway itself); a slice goes through the official `openai` SDK.
 *
 * What the client can know exactly, it checks per request: one event per answer, under its `Helicone-Id`, with
 * the user, status, properties, error-ness and (where the fake upstream's counts apply) the tokens the upstream
 * reported. Tokens the gateway estimates itself (a stream cut short, an upstream that reports no usage) are
 * compared between the stores only.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { Agent, request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it, type TestContext } from 'node:test';
import { AthenaClient } from '@aws-sdk/client-athena';
import { S3Client } from '@aws-sdk/client-s3';
import { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import OpenAI from 'openai';
import { metricsLambdaConfigFromEnv, proxyLambdaConfigFromEnv } from '../../lambda/aws/aws-config';
import { bufferedHandler } from '../../lambda/aws/buffered-adapter';
import { createCounterStoreClient } from '../../lambda/aws/dynamodb-counter-store';
import { createGatewayKey } from '../../lambda/aws/dynamodb-key-store';
import { createFirehoseClient } from '../../lambda/aws/firehose-event-sink';
import { createMetricsApp } from '../../lambda/aws/metrics-app';
import { createProxyApp } from '../../lambda/aws/proxy-app';
import { streamingHandler } from '../../lambda/aws/streaming-adapter';
import { createLogger, type Logger } from '../../lambda/core/log';
import { isErrorEvent, nanoToUsd, type UsageEvent, type UsageSource } from '../../lambda/core/usage-event';
import { openDuckDb, type DuckDb } from '../../lambda/local/duckdb';
import { eventsRelationSql } from '../../lambda/local/duckdb-history-store';
import { listEventFiles, partitionDir, readEvents } from '../../lambda/local/event-files';
import { buildLocalServer } from '../../bin/build-local-server';
import { awslambdaShim, installAwslambdaShim } from '../support/awslambda-shim';
import { FAKE_CREDENTIALS, TEST_REGION } from '../support/dynalite';
import { startDynaliteProcess, type DynaliteProcess } from '../support/dynalite-process';
import { FakeAthena, type ExecutionParameterValue } from '../support/fake-athena';
import { FakeFirehose } from '../support/fake-firehose';
import { FakeS3 } from '../support/fake-s3';
import { startFakeSecretsManager, type FakeSecretsManager } from '../support/fake-secrets-manager';
import { countWords, FAKE_HEADERS, isReasoningModel, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream';
import { startLocalApiGateway, type LocalApiGateway } from '../support/local-api-gateway';
import { Prng } from '../support/prng';

const ROOT = join(__dirname, '..', '..');
const USERS = 500;

/** The shape of one load run. */
interface Scenario {
  readonly seed: number;
  readonly requests: number;
  /** Requests in flight at once. */
  readonly concurrency: number;
  /** Every `sdkEvery`-th request goes through the official OpenAI SDK. */
  readonly sdkEvery: number;
  /** Deadline for the whole load (every answer in), so a stalled gateway fails the test instead of hanging it. */
  readonly loadDeadlineMs: number;
  /**
   * The client sees a stream the upstream broke as cut short: the local server cuts the client's connection, the
   * Lambda streaming adapter fails the invocation so API Gateway cuts it (see streaming-adapter.ts).
   */
  readonly brokenStreamsCutShort: boolean;
}

const LOCAL: Scenario = { seed: 20_000, requests: 20_000, concurrency: 200, sdkEvery: 64, loadDeadlineMs: 300_000, brokenStreamsCutShort: true };

/**
 * The AWS path costs some thirty times the CPU per request of the local one here (measured on this 2-core machine:
 * 20–30 ms in this process and 7–8 ms in dynalite per request). Each request makes about nine AWS SDK calls: the
 * counter claim, four counter additions (all-time, day, month, model) and the claim's confirmation, the spending
 * counter, Firehose, and a limits lookup per user every 30 s. Each is built, signed and parsed by the SDK in this
 * process (its middleware, signing and the garbage they leave dominate the profile) and answered by dynalite over
 * loopback. 20,000 requests would need over ten minutes of CPU, so `npm test` sends 2,000: still 200 in flight,
 * all 500 users and every kind of request. `LOAD_AWS_REQUESTS=20000` runs the full count (about 15 minutes here).
 */
const AWS_REQUESTS = awsRequests(process.env.LOAD_AWS_REQUESTS);
const AWS: Scenario = {
  seed: 4_000,
  requests: AWS_REQUESTS,
  concurrency: 200,
  sdkEvery: 16,
  // About 27 requests a second here: a deadline that grows with the count.
  loadDeadlineMs: Math.max(300_000, AWS_REQUESTS * 150),
  brokenStreamsCutShort: true,
};

function awsRequests(value: string | undefined): number {
  if (value === undefined || value === '') return 2_000;
  const count = Number(value);
  if (!Number.isSafeInteger(count) || count < 500) throw new Error(`LOAD_AWS_REQUESTS must be a whole number of at least 500, not "${value}".`);
  return count;
}

/**
 * The SDK timeouts of the proxy's Firehose and DynamoDB clients here. The factories' own (1 s to connect, 3 s per
 * call) are meant for a Lambda container that runs one invocation on its own CPU; here one process plays
 * {@link AWS}.concurrency containers on a shared core, so a call can wait seconds for the event loop, not for the
 * service. With the production timeouts such a call times out, the counter store rightly reports its addition as
 * uncertain (left to the reconcile) and the sink resends a batch that may have landed (a Firehose duplicate): the
 * harness's slowness, not the accounting, would decide the outcome. Only the timeouts change; every retry and
 * classification rule is the product's.
 */
const HARNESS_TIMEOUTS = { connectionTimeout: 60_000, requestTimeout: 120_000, throwOnRequestTimeout: true } as const;

/** No single request may take longer than this; one that does counts as unanswered. */
const REQUEST_TIMEOUT_MS = 120_000;
/** Bound on waiting for the stores to hold every event after the last answer. */
const SETTLE_DEADLINE_MS = 90_000;
/** The live totals must stay the same for this long before they are compared (longer than a counter flush). */
const QUIET_MS = 1_500;

const PROVIDER_KEY = 'sk-load-provider-key-0123456789abcdef';

// ─── The plan: which request each index sends, and what it must cost ─────────────────────────────────────────────

type Endpoint = 'chat' | 'responses' | 'embeddings' | 'completions';

const PATHS: Record<Endpoint, string> = {
  chat: '/v1/chat/completions',
  responses: '/v1/responses',
  embeddings: '/v1/embeddings',
  completions: '/v1/completions',
};

interface TokenCounts {
  readonly prompt_tokens: number;
  readonly completion_tokens: number;
  readonly cached_prompt_tokens: number;
  readonly reasoning_tokens: number;
  readonly total_tokens: number;
}

const NO_TOKENS: TokenCounts = { prompt_tokens: 0, completion_tokens: 0, cached_prompt_tokens: 0, reasoning_tokens: 0, total_tokens: 0 };

interface PlannedRequest {
  readonly index: number;
  readonly userId: string;
  /** The user goes in the body's `user` field rather than in `Helicone-User-Id`. */
  readonly userInBody: boolean;
  readonly endpoint: Endpoint;
  readonly stream: boolean;
  /** The client itself asks for `stream_options.include_usage`. */
  readonly includeUsage: boolean;
  /** Sent as `Helicone-Request-Id`; otherwise the gateway picks the id. */
  readonly requestId: string | undefined;
  readonly viaSdk: boolean;
  /** `Helicone-Property-*` headers, names as sent. */
  readonly properties: Readonly<Record<string, string>>;
  /** `x-fake-*` headers steering the fake upstream. */
  readonly controls: Readonly<Record<string, string>>;
  readonly body: Readonly<Record<string, unknown>>;
  /** HTTP status the client must receive. */
  readonly status: number;
  /** The answer's body is cut short (the upstream breaks the stream). */
  readonly broken: boolean;
  readonly error: boolean;
  readonly usageSource: UsageSource;
  /** Tokens of the event, or null when the gateway estimates them itself. */
  readonly tokens: TokenCounts | null;
}

const VOCABULARY = 'usage tokens every user gateway meters stream answer model price budget request event counter history log'.split(' ');
const PLANS = ['free', 'pro', 'team'] as const;
const FEATURES = ['chat', 'search', 'summary'] as const;

/**
 * The user ids: mostly plain, some with characters that paths, keys and SQL must carry intact, and some that a
 * header cannot carry (non-ASCII), which always go in the body's `user` field.
 */
function userIds(count: number): string[] {
  return Array.from({ length: count }, (_, i) => {
    const n = String(i).padStart(3, '0');
    switch (i % 50) {
      case 7:
        return `user+${n}@example.com`;
      case 19:
        return `team/${n}`;
      case 23:
        return `with space ${n}`;
      case 31:
        return `josé-${n}`;
      case 41:
        return `用户-${n}`;
      case 45:
        return `percent%2F${n}?x=1&y=#`;
      default:
        return `load-user-${n}`;
    }
  });
}

const headerSafe = (text: string) => /^[\x20-\x7e]*$/.test(text);

function uuidFrom(rng: Prng): string {
  const b = rng.bytes(16);
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function sentence(rng: Prng, words: number): string {
  return Array.from({ length: words }, () => rng.pick(VOCABULARY)).join(' ');
}

/** Prompt tokens as the fake upstream counts them for a list of messages: words plus 3 per message. */
function messageTokens(texts: readonly string[]): number {
  return texts.reduce((sum, text) => sum + countWords(text) + 3, 0);
}

function upstreamTokens(prompt: number, words: number, reasoningModel: boolean, cached: number): TokenCounts {
  const reasoning = reasoningModel ? 2 * words : 0;
  const completion = words + reasoning;
  return { prompt_tokens: prompt, completion_tokens: completion, cached_prompt_tokens: cached, reasoning_tokens: reasoning, total_tokens: prompt + completion };
}

/**
 * Deterministic from the seed. The first {@link USERS} requests give every user one; the rest are skewed
 * (user k is drawn with a density falling off with k), so users end with very different counts.
 */
function planRequests(scenario: Scenario): PlannedRequest[] {
  const rng = new Prng(scenario.seed);
  const users = userIds(USERS);
  const planOf = (user: number) => PLANS[user % PLANS.length]!;
  const plan: PlannedRequest[] = [];
  for (let index = 0; index < scenario.requests; index++) {
    const r = rng.fork(`request-${index}`);
    const userIndex = index < USERS ? index : Math.floor(USERS * r.next() ** 2);
    const userId = users[userIndex]!;
    const userInBody = !headerSafe(userId) || r.chance(0.1);
    const properties: Record<string, string> = {};
    if (r.chance(0.8)) properties['Plan'] = planOf(userIndex);
    if (r.chance(0.5)) properties['Feature'] = r.pick(FEATURES);
    const requestId = r.chance(0.5) ? uuidFrom(r) : undefined;
    const viaSdk = index % scenario.sdkEvery === 5;
    const words = r.int(1, 24);
    const text = sentence(r, r.int(1, 30));
    const controls: Record<string, string> = { [FAKE_HEADERS.words]: String(words) };
    const user = userInBody ? { user: userId } : {};

    const roll = r.next();
    let endpoint: Endpoint = 'chat';
    let stream = false;
    let includeUsage = false;
    let status = 200;
    let broken = false;
    let usageSource: UsageSource = 'provider';
    let tokens: TokenCounts | null;
    let body: Record<string, unknown>;

    if (roll < 0.21) {
      // Not chat: embeddings, the Responses API (streamed or not), legacy completions (streamed or not).
      if (roll < 0.07) {
        endpoint = 'embeddings';
        body = { model: 'text-embedding-3-small', input: text, ...user };
        tokens = { ...NO_TOKENS, prompt_tokens: countWords(text), total_tokens: countWords(text) };
      } else if (roll < 0.16) {
        endpoint = 'responses';
        stream = r.chance(0.5);
        const model = r.chance(0.2) ? 'o4-mini' : 'gpt-4o-mini';
        const instructions = r.chance(0.3) ? sentence(r, r.int(1, 10)) : undefined;
        body = { model, input: text, ...(instructions === undefined ? {} : { instructions }), ...(stream ? { stream } : {}), ...user };
        const prompt = messageTokens(instructions === undefined ? [text] : [instructions, text]);
        tokens = upstreamTokens(prompt, words, isReasoningModel(model), 0);
      } else {
        endpoint = 'completions';
        stream = r.chance(0.5);
        includeUsage = stream && r.chance(0.5);
        body = {
          model: 'gpt-3.5-turbo-instruct',
          prompt: text,
          ...(stream ? { stream } : {}),
          ...(includeUsage ? { stream_options: { include_usage: true } } : {}),
          ...user,
        };
        tokens = upstreamTokens(messageTokens([text]), words, false, 0);
      }
    } else {
      const model = roll < 0.23 ? 'acme-unpriced-1' : r.pick(['gpt-4o-mini', 'gpt-4o-mini', 'gpt-4o-mini', 'gpt-4.1', 'o3-mini']);
      stream = r.chance(0.5);
      includeUsage = stream && r.chance(0.4);
      const system = r.chance(0.3) ? sentence(r, r.int(1, 12)) : undefined;
      const messages = [...(system === undefined ? [] : [{ role: 'system', content: system }]), { role: 'user', content: text }];
      const prompt = messageTokens(messages.map((m) => m.content));
      const cached = r.chance(0.2) ? r.int(1, prompt) : 0;
      if (cached > 0) controls[FAKE_HEADERS.cachedTokens] = String(cached);
      body = {
        model,
        messages,
        ...(stream ? { stream } : {}),
        ...(includeUsage ? { stream_options: { include_usage: true } } : {}),
        ...user,
      };
      tokens = upstreamTokens(prompt, words, isReasoningModel(model), cached);
      const fault = r.next();
      if (fault < 0.06) {
        // The upstream refuses: passed through with its status, metered as an error without tokens.
        status = r.pick([400, 401, 429, 500, 503]);
        controls[FAKE_HEADERS.status] = String(status);
        usageSource = 'none';
        tokens = NO_TOKENS;
      } else if (fault < 0.075 && stream) {
        // The upstream breaks the stream after a few words: an error, tokens counted from what had arrived.
        broken = true;
        controls[FAKE_HEADERS.resetAfter] = String(r.int(1, 3));
        controls[FAKE_HEADERS.words] = String(Math.max(words, 6));
        usageSource = 'partial';
        tokens = null;
      } else if (fault < 0.085) {
        // The upstream reports no usage: the gateway counts the tokens itself.
        controls[FAKE_HEADERS.noUsage] = '1';
        usageSource = 'estimated';
        tokens = null;
      }
    }
    plan.push({
      index,
      userId,
      userInBody,
      endpoint,
      stream,
      includeUsage,
      requestId,
      viaSdk,
      properties,
      controls,
      body,
      status,
      broken,
      error: status >= 400 || broken,
      usageSource,
      tokens,
    });
  }
  return plan;
}

// ─── Sending ─────────────────────────────────────────────────────────────────────────────────────────────────────

/** What the client saw of one request. */
interface Outcome {
  /** 0 when no answer arrived. */
  status: number;
  /** The `Helicone-Id` of the answer. */
  heliconeId: string | undefined;
  /** The body arrived whole. */
  complete: boolean;
  /** Usage the client saw in the answer (non-streamed, or the stream's usage event), if any. */
  usage: { prompt: number; completion: number; total: number } | null;
  /** `error.code` of an error answer's JSON body. */
  errorCode: string | undefined;
  /** Something the client saw that it must not (e.g. usage it did not ask for). */
  problem: string | undefined;
  failure: string | undefined;
}

const noOutcome = (failure?: string): Outcome => ({
  status: 0,
  heliconeId: undefined,
  complete: false,
  usage: null,
  errorCode: undefined,
  problem: undefined,
  failure,
});

interface Target {
  /** Base URL of the OpenAI-compatible API, ending in `/v1`. */
  readonly apiBase: string;
  readonly gatewayKey: string;
}

/** The request's headers; the gateway key is left out when the client sends it itself (the SDK's defaultHeaders). */
function headersOf(planned: PlannedRequest, gatewayKey: string | null): Record<string, string> {
  const headers: Record<string, string> = { ...(gatewayKey === null ? {} : { 'Helicone-Auth': `Bearer ${gatewayKey}` }), ...planned.controls };
  if (!planned.userInBody) headers['Helicone-User-Id'] = planned.userId;
  if (planned.requestId !== undefined) headers['Helicone-Request-Id'] = planned.requestId;
  for (const [name, value] of Object.entries(planned.properties)) headers[`Helicone-Property-${name}`] = value;
  return headers;
}

/** Usage in a non-streamed answer (chat, completions, embeddings or a Responses object). */
function usageOfAnswer(answer: unknown): Outcome['usage'] {
  const usage = (answer as { usage?: Record<string, number> | null } | null)?.usage;
  if (usage === null || usage === undefined) return null;
  return {
    prompt: usage.prompt_tokens ?? usage.input_tokens ?? -1,
    completion: usage.completion_tokens ?? usage.output_tokens ?? 0,
    total: usage.total_tokens ?? -1,
  };
}

/** The usage carried by an SSE body: the chunk with `usage` set (chat, completions) or `response.completed`. */
function usageOfStream(text: string): Outcome['usage'] {
  let found: Outcome['usage'] = null;
  for (const line of text.split('\n')) {
    if (!line.startsWith('data: {')) continue;
    const data = JSON.parse(line.slice(6)) as { usage?: unknown; type?: string; response?: unknown };
    if (data.type === 'response.completed') found = usageOfAnswer(data.response);
    else if (data.usage !== undefined && data.usage !== null) found = usageOfAnswer(data);
  }
  return found;
}

/** Checks what the client sees of usage: what it asked for, and nothing the gateway asked for on its behalf. */
function clientUsageProblem(planned: PlannedRequest, outcome: Outcome, text: string | undefined): string | undefined {
  if (outcome.status !== 200 || planned.broken) return undefined;
  const hidden = planned.stream && !planned.includeUsage && planned.endpoint !== 'responses';
  if (hidden) return text !== undefined && text.includes('"usage":{') ? 'usage the client did not ask for reached it' : undefined;
  if (planned.tokens === null || planned.usageSource !== 'provider') return undefined;
  const want = { prompt: planned.tokens.prompt_tokens, completion: planned.tokens.completion_tokens, total: planned.tokens.total_tokens };
  if (outcome.usage === null) return 'no usage in the answer';
  if (outcome.usage.prompt !== want.prompt || outcome.usage.completion !== want.completion || outcome.usage.total !== want.total) {
    return `answer usage ${JSON.stringify(outcome.usage)}, expected ${JSON.stringify(want)}`;
  }
  return undefined;
}

function errorCodeOf(text: string): string | undefined {
  try {
    const code = (JSON.parse(text) as { error?: { code?: unknown } }).error?.code;
    return typeof code === 'string' ? code : undefined;
  } catch {
    return undefined;
  }
}

/** Resends of a request whose reused keep-alive connection the server had already closed. */
const MAX_STALE_CONNECTION_RESENDS = 3;

/**
 * One request over a raw keep-alive connection; reads the whole answer. A request written to a pooled connection
 * the server closed for idleness meanwhile fails with ECONNRESET before any answer: the server never read it, so it
 * is sent again, as node's documentation advises (`request.reusedSocket`). Should the server have read it after
 * all, the log would show an event no answer carried, which the log check reports.
 */
async function sendRaw(agent: Agent, target: Target, planned: PlannedRequest, counts: { staleConnectionResends: number }): Promise<Outcome> {
  for (let resends = 0; ; resends++) {
    const { outcome, staleConnection } = await sendRawOnce(agent, target, planned);
    if (!staleConnection || resends >= MAX_STALE_CONNECTION_RESENDS) return outcome;
    counts.staleConnectionResends++;
  }
}

function sendRawOnce(agent: Agent, target: Target, planned: PlannedRequest): Promise<{ outcome: Outcome; staleConnection: boolean }> {
  const url = new URL(`${target.apiBase}${PATHS[planned.endpoint].slice('/v1'.length)}`);
  const payload = Buffer.from(JSON.stringify(planned.body), 'utf8');
  return new Promise((resolve) => {
    const outcome = noOutcome();
    let settled = false;
    const done = (failure?: string, staleConnection = false) => {
      if (settled) return;
      settled = true;
      if (failure !== undefined && outcome.failure === undefined) outcome.failure = failure;
      resolve({ outcome, staleConnection });
    };
    const req = httpRequest(
      {
        agent,
        host: url.hostname,
        port: url.port,
        method: 'POST',
        path: url.pathname,
        headers: {
          ...headersOf(planned, target.gatewayKey),
          authorization: `Bearer ${PROVIDER_KEY}`,
          'content-type': 'application/json',
          'content-length': String(payload.byteLength),
        },
      },
      (res) => {
        outcome.status = res.statusCode ?? 0;
        const id = res.headers['helicone-id'];
        outcome.heliconeId = typeof id === 'string' ? id : undefined;
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('error', () => undefined);
        res.on('close', () => {
          outcome.complete = res.complete;
          const text = Buffer.concat(chunks).toString('utf8');
          if (res.complete && outcome.status !== 200) outcome.errorCode = errorCodeOf(text);
          if (res.complete && outcome.status === 200) {
            try {
              outcome.usage = planned.stream ? usageOfStream(text) : usageOfAnswer(JSON.parse(text));
              outcome.problem = clientUsageProblem(planned, outcome, text);
            } catch (error) {
              outcome.problem = `unreadable answer: ${(error as Error).message}`;
            }
          }
          done();
        });
      },
    );
    req.setTimeout(REQUEST_TIMEOUT_MS, () => req.destroy(new Error(`no answer within ${REQUEST_TIMEOUT_MS} ms`)));
    req.on('error', (error: NodeJS.ErrnoException) => {
      const stale = req.reusedSocket && outcome.status === 0 && (error.code === 'ECONNRESET' || error.code === 'EPIPE');
      done(error.message, stale);
    });
    req.end(payload);
  });
}

/** One request through the official SDK, as an application would send it. */
async function sendWithSdk(openai: OpenAI, planned: PlannedRequest): Promise<Outcome> {
  const outcome = noOutcome();
  const options = { headers: headersOf(planned, null) };
  const answered = (response: Response) => {
    outcome.status = response.status;
    outcome.heliconeId = response.headers.get('helicone-id') ?? undefined;
  };
  const body = planned.body as never;
  try {
    if (planned.stream) {
      const { data, response } = await (planned.endpoint === 'chat'
        ? openai.chat.completions.create(body as OpenAI.Chat.ChatCompletionCreateParamsStreaming, options).withResponse()
        : planned.endpoint === 'completions'
          ? openai.completions.create(body as OpenAI.CompletionCreateParamsStreaming, options).withResponse()
          : openai.responses.create(body as OpenAI.Responses.ResponseCreateParamsStreaming, options).withResponse());
      answered(response);
      let sawUsage = false;
      for await (const event of data as AsyncIterable<{ usage?: unknown; type?: string; response?: unknown }>) {
        if (event.type === 'response.completed') outcome.usage = usageOfAnswer(event.response);
        else if (event.usage !== undefined && event.usage !== null) {
          outcome.usage = usageOfAnswer(event);
          sawUsage = true;
        }
      }
      outcome.complete = true;
      outcome.problem = clientUsageProblem(planned, outcome, sawUsage ? '"usage":{' : '');
    } else {
      const { data, response } = await (planned.endpoint === 'chat'
        ? openai.chat.completions.create(body as OpenAI.Chat.ChatCompletionCreateParamsNonStreaming, options).withResponse()
        : planned.endpoint === 'completions'
          ? openai.completions.create(body as OpenAI.CompletionCreateParamsNonStreaming, options).withResponse()
          : planned.endpoint === 'embeddings'
            ? openai.embeddings.create(body as OpenAI.EmbeddingCreateParams, options).withResponse()
            : openai.responses.create(body as OpenAI.Responses.ResponseCreateParamsNonStreaming, options).withResponse());
      answered(response);
      outcome.complete = true;
      outcome.usage = usageOfAnswer(data);
      outcome.problem = clientUsageProblem(planned, outcome, undefined);
    }
  } catch (error) {
    if (error instanceof OpenAI.APIError && error.status !== undefined) {
      outcome.status = error.status;
      outcome.heliconeId = error.headers?.get('helicone-id') ?? undefined;
      outcome.errorCode = error.code ?? undefined;
      outcome.complete = true;
    } else if (outcome.status === 0) {
      outcome.failure = error instanceof Error ? error.message : String(error);
    }
    // A stream the SDK could not finish reading: the status came, the body did not end (outcome.complete false).
  }
  return outcome;
}

interface LoadResult {
  readonly outcomes: Outcome[];
  readonly elapsedMs: number;
  /** Requests sent again because their pooled connection had been closed by the server (never read by it). */
  readonly staleConnectionResends: number;
}

/** Sends the whole plan, `concurrency` at a time; stops issuing new requests once the deadline has passed. */
async function runLoad(plan: readonly PlannedRequest[], scenario: Scenario, target: Target): Promise<LoadResult> {
  const agent = new Agent({ keepAlive: true, maxSockets: scenario.concurrency, maxFreeSockets: scenario.concurrency });
  const openai = new OpenAI({
    apiKey: PROVIDER_KEY,
    baseURL: target.apiBase,
    defaultHeaders: { 'Helicone-Auth': `Bearer ${target.gatewayKey}` },
    // A retry would be a second request, metered as such: the count sent must be the count made.
    maxRetries: 0,
    timeout: REQUEST_TIMEOUT_MS,
  });
  const outcomes: Outcome[] = new Array(plan.length);
  const counts = { staleConnectionResends: 0 };
  const started = performance.now();
  let next = 0;
  const worker = async () => {
    for (;;) {
      const index = next++;
      if (index >= plan.length) return;
      const planned = plan[index]!;
      if (performance.now() - started > scenario.loadDeadlineMs) {
        outcomes[index] = noOutcome('not sent: load deadline passed');
        continue;
      }
      outcomes[index] = planned.viaSdk ? await sendWithSdk(openai, planned) : await sendRaw(agent, target, planned, counts);
    }
  };
  try {
    await Promise.all(Array.from({ length: scenario.concurrency }, worker));
  } finally {
    agent.destroy();
  }
  return { outcomes, elapsedMs: performance.now() - started, staleConnectionResends: counts.staleConnectionResends };
}

// ─── Accounting ──────────────────────────────────────────────────────────────────────────────────────────────────

/** Totals one source holds for one user; a source fills in only what it knows. */
interface Totals {
  requests?: number;
  errors?: number;
  prompt_tokens?: number;
  completion_tokens?: number;
  cached_prompt_tokens?: number;
  reasoning_tokens?: number;
  total_tokens?: number;
  cost_usd?: number;
  unpriced_requests?: number;
}

const TOTAL_FIELDS = [
  'requests',
  'errors',
  'prompt_tokens',
  'completion_tokens',
  'cached_prompt_tokens',
  'reasoning_tokens',
  'total_tokens',
  'cost_usd',
  'unpriced_requests',
] as const satisfies readonly (keyof Totals)[];

type PerUser = Map<string, Totals>;

/** Per user: what was sent and answered, and the tokens of the requests whose tokens the client can know. */
function clientTotals(plan: readonly PlannedRequest[]): PerUser {
  const byUser = new Map<string, { sent: number; errors: number; tokens: TokenCounts | null }>();
  for (const planned of plan) {
    const user = byUser.get(planned.userId) ?? { sent: 0, errors: 0, tokens: NO_TOKENS };
    user.sent++;
    if (planned.error) user.errors++;
    user.tokens =
      user.tokens === null || planned.tokens === null
        ? null
        : {
            prompt_tokens: user.tokens.prompt_tokens + planned.tokens.prompt_tokens,
            completion_tokens: user.tokens.completion_tokens + planned.tokens.completion_tokens,
            cached_prompt_tokens: user.tokens.cached_prompt_tokens + planned.tokens.cached_prompt_tokens,
            reasoning_tokens: user.tokens.reasoning_tokens + planned.tokens.reasoning_tokens,
            total_tokens: user.tokens.total_tokens + planned.tokens.total_tokens,
          };
    byUser.set(planned.userId, user);
  }
  const out: PerUser = new Map();
  for (const [userId, user] of byUser) out.set(userId, { requests: user.sent, errors: user.errors, ...(user.tokens ?? {}) });
  return out;
}

/** Per user totals of a list of events, each request id once. */
function eventTotals(events: readonly UsageEvent[]): PerUser {
  const nanos = new Map<string, number>();
  const out: PerUser = new Map();
  const seen = new Set<string>();
  for (const event of events) {
    if (seen.has(event.request_id)) continue;
    seen.add(event.request_id);
    const user = String(event.user_id);
    const t = out.get(user) ?? { requests: 0, errors: 0, prompt_tokens: 0, completion_tokens: 0, cached_prompt_tokens: 0, reasoning_tokens: 0, total_tokens: 0, unpriced_requests: 0 };
    t.requests! += 1;
    if (isErrorEvent(event)) t.errors! += 1;
    t.prompt_tokens! += event.prompt_tokens;
    t.completion_tokens! += event.completion_tokens;
    t.cached_prompt_tokens! += event.cached_prompt_tokens;
    t.reasoning_tokens! += event.reasoning_tokens;
    t.total_tokens! += event.total_tokens;
    if (event.cost_nano_usd === null) t.unpriced_requests! += 1;
    nanos.set(user, (nanos.get(user) ?? 0) + (event.cost_nano_usd ?? 0));
    out.set(user, t);
  }
  // The stores sum exact nano-dollars and show the sum in USD: so does this.
  for (const [user, t] of out) t.cost_usd = nanoToUsd(nanos.get(user)!);
  return out;
}

function pick(row: Record<string, unknown>, fields: readonly (keyof Totals)[]): Totals {
  const out: Totals = {};
  for (const field of fields) if (typeof row[field] === 'number') out[field] = row[field] as number;
  return out;
}

/**
 * Compares every source with every other, per user, on the fields both hold. Returns the mismatches, each naming
 * the user and what each source holds.
 */
function compareSources(sources: Readonly<Record<string, PerUser>>): { mismatched: string[]; users: number } {
  const names = Object.keys(sources);
  const users = new Set<string>();
  for (const source of Object.values(sources)) for (const user of source.keys()) users.add(user);
  const mismatched: string[] = [];
  for (const user of [...users].sort()) {
    const rows = names.map((name) => sources[name]!.get(user));
    let differs = rows.some((row) => row === undefined);
    for (const field of TOTAL_FIELDS) {
      const values = rows.map((row) => row?.[field]).filter((value): value is number => value !== undefined);
      if (values.some((value) => value !== values[0])) differs = true;
    }
    if (differs) {
      const shown = names.map((name, i) => `${name} ${rows[i] === undefined ? '(absent)' : JSON.stringify(rows[i])}`);
      mismatched.push(`user ${JSON.stringify(user)}:\n      ${shown.join('\n      ')}`);
    }
  }
  return { mismatched, users: users.size };
}

function sumOf(perUser: PerUser, field: keyof Totals): number {
  let total = 0;
  for (const totals of perUser.values()) total += totals[field] ?? 0;
  return total;
}

/**
 * What the client saw, request by request: every request answered with the status planned, a whole body unless
 * the stream was meant to break, a `Helicone-Id` (the one sent, when one was), no two answers with one id, and
 * usage as the client asked for it.
 */
function checkAnswers(
  plan: readonly PlannedRequest[],
  outcomes: readonly Outcome[],
  scenario: Scenario,
): { failures: string[]; idToIndex: Map<string, number> } {
  const failures: string[] = [];
  const idToIndex = new Map<string, number>();
  for (const planned of plan) {
    const outcome = outcomes[planned.index]!;
    const what = `request ${planned.index} (${planned.viaSdk ? 'SDK' : 'raw'} ${planned.endpoint}${planned.stream ? ' stream' : ''}, user ${JSON.stringify(planned.userId)})`;
    if (outcome.status === 0) {
      failures.push(`${what}: no answer (${outcome.failure ?? 'unknown'})`);
      continue;
    }
    if (outcome.status !== planned.status) failures.push(`${what}: status ${outcome.status}, expected ${planned.status}`);
    if (!planned.broken && !outcome.complete) failures.push(`${what}: body cut short`);
    if (planned.broken && scenario.brokenStreamsCutShort && outcome.complete) failures.push(`${what}: body complete, but the upstream broke the stream`);
    if (outcome.problem !== undefined) failures.push(`${what}: ${outcome.problem}`);
    if (outcome.heliconeId === undefined) {
      failures.push(`${what}: no Helicone-Id`);
      continue;
    }
    if (planned.requestId !== undefined && outcome.heliconeId !== planned.requestId) {
      failures.push(`${what}: Helicone-Id ${outcome.heliconeId}, sent Helicone-Request-Id ${planned.requestId}`);
    }
    const other = idToIndex.get(outcome.heliconeId);
    if (other !== undefined) failures.push(`${what}: Helicone-Id ${outcome.heliconeId} also answered request ${other}`);
    idToIndex.set(outcome.heliconeId, planned.index);
  }
  return { failures, idToIndex };
}

/**
 * The log against the answers: one event per answer under its Helicone-Id (none missing, none twice, none for a
 * request never sent), each with the user, status, properties and error-ness of its request, and the tokens the
 * upstream reported where the client can know them.
 */
function checkLog(
  plan: readonly PlannedRequest[],
  idToIndex: ReadonlyMap<string, number>,
  events: readonly UsageEvent[],
  { duplicatesAllowed }: { duplicatesAllowed: boolean },
): { failures: string[]; duplicates: number } {
  const failures: string[] = [];
  const lines = new Map<string, number>();
  for (const event of events) lines.set(event.request_id, (lines.get(event.request_id) ?? 0) + 1);
  let duplicates = 0;
  for (const [id, count] of lines) {
    if (count > 1) {
      duplicates += count - 1;
      if (!duplicatesAllowed) failures.push(`request ${id} is in the log ${count} times`);
    }
    if (!idToIndex.has(id)) failures.push(`the log holds request ${id}, which no answer carried`);
  }
  for (const [id, index] of idToIndex) if (!lines.has(id)) failures.push(`request ${index} (Helicone-Id ${id}) has no event in the log`);
  const checked = new Set<string>();
  for (const event of events) {
    const index = idToIndex.get(event.request_id);
    if (index === undefined || checked.has(event.request_id)) continue;
    checked.add(event.request_id);
    const planned = plan[index]!;
    const wrong: string[] = [];
    const expectSame = (field: string, actual: unknown, expected: unknown) => {
      if (JSON.stringify(actual) !== JSON.stringify(expected)) wrong.push(`${field} ${JSON.stringify(actual)} (expected ${JSON.stringify(expected)})`);
    };
    expectSame('user_id', event.user_id, planned.userId);
    expectSame('status', event.status, planned.status);
    expectSame('path', event.path, PATHS[planned.endpoint]);
    expectSame('stream', event.stream, planned.stream);
    expectSame('error?', isErrorEvent(event), planned.error);
    expectSame('usage_source', event.usage_source, planned.usageSource);
    const properties = Object.fromEntries(Object.entries(planned.properties).map(([name, value]) => [name.toLowerCase(), value]));
    expectSame('properties', sortedKeys(event.properties), sortedKeys(properties));
    if (planned.tokens !== null) {
      const { prompt_tokens, completion_tokens, cached_prompt_tokens, reasoning_tokens, total_tokens } = event;
      expectSame('tokens', { prompt_tokens, completion_tokens, cached_prompt_tokens, reasoning_tokens, total_tokens }, planned.tokens);
    }
    if (wrong.length > 0) failures.push(`request ${index} (${planned.endpoint}${planned.stream ? ' stream' : ''}): ${wrong.join(', ')}`);
  }
  return { failures, duplicates };
}

function sortedKeys(record: Readonly<Record<string, string>>): Record<string, string> {
  return Object.fromEntries(Object.entries(record).sort(([a], [b]) => (a < b ? -1 : 1)));
}

function firstFew(lines: readonly string[], count = 5): string {
  return lines.slice(0, count).map((line) => `  - ${line}`).join('\n') + (lines.length > count ? `\n  … and ${lines.length - count} more` : '');
}

/** Rejects with `message` if `promise` has not settled within `ms`. */
async function withDeadline<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${message} (after ${ms} ms)`)), ms);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

// ─── Reading the metrics API ─────────────────────────────────────────────────────────────────────────────────────

interface MetricsReader {
  /** Base URL of the metrics API, ending in `/metrics`. */
  readonly base: string;
  readonly key: string;
}

async function getJson(reader: MetricsReader, path: string): Promise<{ status: number; body: any }> {
  const response = await fetch(`${reader.base}${path}`, {
    headers: { authorization: `Bearer ${reader.key}` },
    signal: AbortSignal.timeout(SETTLE_DEADLINE_MS),
  });
  const text = await response.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return { status: response.status, body };
}

const LIVE_FIELDS = TOTAL_FIELDS;
const HISTORY_FIELDS = ['requests', 'errors', 'prompt_tokens', 'completion_tokens', 'total_tokens', 'cost_usd', 'unpriced_requests'] as const;

/** All-time live totals of every user: `GET /metrics/users?period=all`, page by page. */
async function liveTotals(reader: MetricsReader): Promise<{ perUser: PerUser; pages: number }> {
  const perUser: PerUser = new Map();
  let cursor: string | null = null;
  let pages = 0;
  do {
    const query: string = `/users?period=all&sort=requests&limit=200${cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`}`;
    const { status, body } = await getJson(reader, query);
    assert.equal(status, 200, `GET /metrics${query}: ${JSON.stringify(body).slice(0, 300)}`);
    pages++;
    for (const user of body.users as { user_id: string | null }[]) {
      const userId = String(user.user_id);
      assert.ok(!perUser.has(userId), `user ${JSON.stringify(userId)} listed twice across pages`);
      perUser.set(userId, pick(user, LIVE_FIELDS));
    }
    cursor = body.next_cursor;
    assert.ok(pages <= USERS, 'the user listing keeps handing out cursors');
  } while (cursor !== null);
  return { perUser, pages };
}

/**
 * Polls the live totals until they hold `expected` requests and have not moved for {@link QUIET_MS}, or the
 * deadline passes; returns the last reading either way (the comparison then names what is missing).
 */
async function settledLiveTotals(reader: MetricsReader, expected: number): Promise<{ perUser: PerUser; pages: number; waitedMs: number }> {
  const started = performance.now();
  let last = await liveTotals(reader);
  let lastChange = performance.now();
  for (;;) {
    const now = performance.now();
    if (now - started > SETTLE_DEADLINE_MS) break;
    if (sumOf(last.perUser, 'requests') >= expected && now - lastChange >= QUIET_MS) break;
    await sleep(250);
    const reading = await liveTotals(reader);
    if (JSON.stringify([...reading.perUser]) !== JSON.stringify([...last.perUser])) lastChange = performance.now();
    last = reading;
  }
  return { ...last, waitedMs: performance.now() - started };
}

/**
 * Reads the event files until they hold `expected` distinct request ids, or the deadline passes. Events normally
 * land before the live totals do; while the event log is degraded they wait in its spool and arrive later.
 */
async function settledEventFiles(dataDir: string, expected: number): Promise<{ log: UsageEvent[]; waitedMs: number }> {
  const started = performance.now();
  for (;;) {
    const log: UsageEvent[] = [];
    for await (const event of readEvents(dataDir)) log.push(event);
    const distinct = new Set(log.map((event) => event.request_id)).size;
    if (distinct >= expected || performance.now() - started > SETTLE_DEADLINE_MS) return { log, waitedMs: performance.now() - started };
    await sleep(500);
  }
}

/** Waits for a history answer: 200 at once, or 202 with a query id that is polled until done (bounded). */
async function historyAnswer(reader: MetricsReader, path: string): Promise<any> {
  let { status, body } = await getJson(reader, path);
  const started = performance.now();
  while (status === 202) {
    assert.ok(performance.now() - started < SETTLE_DEADLINE_MS, `history query ${path} still running after ${SETTLE_DEADLINE_MS} ms`);
    await sleep(200);
    ({ status, body } = await getJson(reader, `/queries/${encodeURIComponent(body.query_id)}`));
  }
  assert.equal(status, 200, `GET /metrics${path}: ${JSON.stringify(body).slice(0, 300)}`);
  assert.equal(body.state, 'done');
  return body;
}

/** History totals per user over the days of the run: `GET /metrics/usage?group_by=user`. */
async function historyTotals(reader: MetricsReader, from: string, to: string): Promise<PerUser> {
  const body = await historyAnswer(reader, `/usage?from=${from}&to=${to}&group_by=user&sort=requests&limit=10000`);
  const perUser: PerUser = new Map();
  for (const group of body.groups as { group: string | null }[]) perUser.set(String(group.group), pick(group, HISTORY_FIELDS));
  return perUser;
}

const today = () => new Date().toISOString().slice(0, 10);

/**
 * The other read paths agree with the ones compared per user: one user's live detail (`/metrics/users/{id}`,
 * whose per-model rows add up to its all-time totals), a history summary (`/metrics/users/{id}/summary`), and
 * history totals per property value (`group_by=property:plan`) against the log.
 */
async function checkOtherReadPaths(reader: MetricsReader, live: PerUser, log: readonly UsageEvent[], from: string, to: string, sample: readonly string[]): Promise<string[]> {
  const failures: string[] = [];
  const logTotals = eventTotals(log);
  for (const userId of sample) {
    const path = `/users/${encodeURIComponent(userId)}`;
    const { status, body } = await getJson(reader, path);
    if (status !== 200) {
      failures.push(`GET /metrics${path}: ${status} ${JSON.stringify(body).slice(0, 200)}`);
      continue;
    }
    if (body.user_id !== userId) failures.push(`GET /metrics${path} names user ${JSON.stringify(body.user_id)}`);
    const allTime = pick(body.all_time, LIVE_FIELDS);
    if (JSON.stringify(allTime) !== JSON.stringify(live.get(userId))) {
      failures.push(`user ${JSON.stringify(userId)}: all_time ${JSON.stringify(allTime)} but listed ${JSON.stringify(live.get(userId))}`);
    }
    const models = body.by_model as { requests: number; total_tokens: number }[];
    const byModel = { requests: models.reduce((s, m) => s + m.requests, 0), total_tokens: models.reduce((s, m) => s + m.total_tokens, 0) };
    if (byModel.requests !== allTime.requests || byModel.total_tokens !== allTime.total_tokens) {
      failures.push(`user ${JSON.stringify(userId)}: per-model rows add up to ${JSON.stringify(byModel)}, all_time ${JSON.stringify(allTime)}`);
    }
  }
  for (const userId of sample.slice(0, 3)) {
    const summary = await historyAnswer(reader, `/users/${encodeURIComponent(userId)}/summary?from=${from}&to=${to}`);
    const got = { requests: summary.total_requests, errors: summary.error_count, total_tokens: summary.total_tokens, cost_usd: summary.total_cost };
    const want = logTotals.get(userId);
    const expected = { requests: want?.requests, errors: want?.errors, total_tokens: want?.total_tokens, cost_usd: want?.cost_usd };
    if (JSON.stringify(got) !== JSON.stringify(expected)) failures.push(`summary of ${JSON.stringify(userId)}: ${JSON.stringify(got)}, log ${JSON.stringify(expected)}`);
  }
  const byPlan = await historyAnswer(reader, `/usage?from=${from}&to=${to}&group_by=property:plan&sort=requests&limit=100`);
  const planTotals = eventTotals(log.map((event) => ({ ...event, user_id: event.properties.plan ?? null })));
  for (const group of byPlan.groups as { group: string | null }[]) {
    const got = pick(group, HISTORY_FIELDS);
    const want = pick({ ...planTotals.get(String(group.group)) }, HISTORY_FIELDS);
    if (JSON.stringify(got) !== JSON.stringify(want)) failures.push(`plan ${JSON.stringify(group.group)}: history ${JSON.stringify(got)}, log ${JSON.stringify(want)}`);
  }
  if ((byPlan.groups as unknown[]).length !== planTotals.size) failures.push(`${byPlan.groups.length} plan groups in history, ${planTotals.size} in the log`);
  return failures;
}

/** Users whose detail is read one by one: every special id, and some plain ones. */
function sampleUsers(plan: readonly PlannedRequest[]): string[] {
  const users = [...new Set(plan.map((p) => p.userId))];
  return [...users.filter((u) => !u.startsWith('load-user-')).slice(0, 12), ...users.filter((u) => u.startsWith('load-user-')).slice(0, 8)];
}

/** Share of requests the gateway may answer 502 `upstream_unreachable` before the run itself counts as broken. */
const MAX_UNREACHABLE_SHARE = 0.01;

/**
 * The plan as the gateway can meter it. Now and then the gateway's upstream client takes a keep-alive connection
 * the upstream has just closed for idleness (more often while its event loop is saturated, as here) and answers
 * 502 `upstream_unreachable`: the request never reached the upstream, and the gateway meters it as that error
 * without tokens. Accounting must still add up for it, so its expectations become those of that error.
 */
function asMetered(plan: readonly PlannedRequest[], outcomes: readonly Outcome[]): { plan: PlannedRequest[]; unreachable: number } {
  let unreachable = 0;
  const metered = plan.map((planned) => {
    const outcome = outcomes[planned.index]!;
    if (outcome.status !== 502 || outcome.errorCode !== 'upstream_unreachable') return planned;
    unreachable++;
    return { ...planned, status: 502, broken: false, error: true, usageSource: 'none' as const, tokens: NO_TOKENS };
  });
  return { plan: metered, unreachable };
}

/** The whole comparison; throws one assertion error listing everything that did not match. */
function assertAccounting(
  t: TestContext,
  scenario: Scenario,
  planned: readonly PlannedRequest[],
  outcomes: readonly Outcome[],
  log: readonly UsageEvent[],
  logName: string,
  live: PerUser,
  history: PerUser,
  otherFailures: readonly string[],
  { duplicatesAllowed }: { duplicatesAllowed: boolean },
): void {
  const sections: string[] = [];
  const metered = asMetered(planned, outcomes);
  const plan = metered.plan;
  if (metered.unreachable > 0) {
    const line = `${metered.unreachable} requests were answered 502 upstream_unreachable (a reused upstream connection was reset)`;
    t.diagnostic(line);
    if (metered.unreachable > planned.length * MAX_UNREACHABLE_SHARE) sections.push(`${line}: more than ${MAX_UNREACHABLE_SHARE * 100}% of the requests`);
  }
  const answers = checkAnswers(plan, outcomes, scenario);
  const logCheck = checkLog(plan, answers.idToIndex, log, { duplicatesAllowed });
  const sources = { sent: clientTotals(plan), [logName]: eventTotals(log), live, history };
  const comparison = compareSources(sources);
  const distinct = new Set(log.map((event) => event.request_id)).size;
  t.diagnostic(
    `sent ${plan.length} (${plan.filter((p) => p.viaSdk).length} through the SDK) to ${comparison.users} users; ` +
      `answered ${outcomes.filter((o) => o.status !== 0).length}; expected errors ${plan.filter((p) => p.error).length}; ` +
      `${logName}: ${log.length} records, ${distinct} distinct request ids, ${logCheck.duplicates} duplicates; ` +
      `live requests ${sumOf(live, 'requests')}; history requests ${sumOf(history, 'requests')}`,
  );
  if (answers.failures.length > 0) sections.push(`${answers.failures.length} answers not as planned:\n${firstFew(answers.failures)}`);
  if (logCheck.failures.length > 0) sections.push(`${logCheck.failures.length} disagreements between answers and ${logName}:\n${firstFew(logCheck.failures)}`);
  if (comparison.mismatched.length > 0) {
    sections.push(
      `${comparison.mismatched.length} of ${comparison.users} users differ between sent / ${logName} / live / history ` +
        `(totals: sent ${plan.length}, ${logName} ${distinct}, live ${sumOf(live, 'requests')}, history ${sumOf(history, 'requests')}):\n` +
        firstFew(comparison.mismatched),
    );
  }
  if (otherFailures.length > 0) sections.push(`${otherFailures.length} disagreements on other read paths:\n${firstFew(otherFailures)}`);
  assert.equal(sections.length, 0, `accounting does not add up:\n${sections.join('\n')}`);
}

/** A logger keeping its JSON lines, so a failure can say what the gateway logged. */
function recordingLogger(lines: string[]): Logger {
  return createLogger('warn', (line) => lines.push(line));
}

/** Each distinct message the gateway logged, how often, and its first line in full (log lines hold no secrets). */
function logSummary(lines: readonly string[]): string {
  const counts = new Map<string, { count: number; first: string }>();
  for (const line of lines) {
    let message = line.slice(0, 80);
    try {
      message = (JSON.parse(line) as { message: string }).message;
    } catch {
      // not JSON: counted by its start
    }
    const seen = counts.get(message);
    if (seen) seen.count++;
    else counts.set(message, { count: 1, first: line.slice(0, 600) });
  }
  return [...counts].map(([message, { count, first }]) => `${message} ×${count}, first: ${first}`).join(' | ') || 'nothing';
}

// ─── Local ───────────────────────────────────────────────────────────────────────────────────────────────────────

describe('exact accounting under load through the local gateway', () => {
  const GATEWAY_KEY = 'gw_load_key_0123456789abcdef';
  const METRICS_KEY = 'mk_load_key_0123456789abcdef';
  let upstream: FakeUpstream;
  let dataDir: string;
  let bundleDir: string | undefined;
  let child: ChildProcess | undefined;
  let gatewayUrl: string;
  const gatewayOutput: string[] = [];

  before(async () => {
    upstream = await startFakeUpstream({ record: false });
    dataDir = await mkdtemp(join(tmpdir(), 'gateway-load-'));
    // The server as `npm start` runs it (the bundle, on plain Node), in its own process: it has an event loop (and,
    // when free, a core) of its own. The bundle is built afresh from the sources, inside the project so its native
    // dependency resolves. The stdin pipe makes it stop itself should this process die without stopping it.
    await mkdir(join(ROOT, 'dist'), { recursive: true });
    bundleDir = await mkdtemp(join(ROOT, 'dist', 'test-load-'));
    const bundle = await buildLocalServer(join(bundleDir, 'local-server.cjs'));
    child = spawn(process.execPath, ['--enable-source-maps', '--import', './bench/exit-with-parent.cjs', bundle], {
      cwd: ROOT,
      env: {
        PATH: process.env.PATH,
        PORT: '0',
        HOST: '127.0.0.1',
        DATA_DIR: dataDir,
        UPSTREAM_OPENAI_URL: upstream.url,
        GATEWAY_KEYS: GATEWAY_KEY,
        METRICS_KEYS: METRICS_KEY,
        LOG_LEVEL: 'warn',
      },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const started = child;
    gatewayUrl = await withDeadline(
      new Promise<string>((resolve, reject) => {
        let output = '';
        const onData = (chunk: Buffer) => {
          output += chunk.toString();
          const match = /OpenAI base URL:\s+(http:\/\/\S+)\/v1/.exec(output);
          if (match) resolve(match[1]!);
        };
        started.stdout!.on('data', onData);
        started.stderr!.on('data', onData);
        started.once('exit', (code) => reject(new Error(`the gateway exited with ${code} before serving:\n${output}`)));
      }),
      60_000,
      'the local gateway did not start',
    );
    // Its later output (warnings and errors only) is kept for the failure message.
    const keep = (chunk: Buffer) => gatewayOutput.push(...chunk.toString().split('\n').filter((line) => line !== ''));
    started.stdout!.on('data', keep);
    started.stderr!.on('data', keep);
  });

  after(async () => {
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child!.once('exit', resolve));
      child.kill('SIGTERM');
      const killer = setTimeout(() => child!.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(killer);
    }
    await upstream?.close();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
    if (bundleDir) await rm(bundleDir, { recursive: true, force: true });
  });

  it(
    `${LOCAL.requests} requests, ${LOCAL.concurrency} in flight, ${USERS} users: per user, sent = events = live = history`,
    { timeout: LOCAL.loadDeadlineMs + 4 * SETTLE_DEADLINE_MS },
    async (t) => {
      const plan = planRequests(LOCAL);
      const from = today();
      const { outcomes, elapsedMs, staleConnectionResends } = await runLoad(plan, LOCAL, { apiBase: `${gatewayUrl}/v1`, gatewayKey: GATEWAY_KEY });
      t.diagnostic(
        `load: ${plan.length} requests in ${(elapsedMs / 1000).toFixed(1)} s (${Math.round(plan.length / (elapsedMs / 1000))} req/s); ` +
          `${staleConnectionResends} resent after a stale keep-alive connection`,
      );

      const reader: MetricsReader = { base: `${gatewayUrl}/metrics`, key: METRICS_KEY };
      const answered = outcomes.filter((o) => o.heliconeId !== undefined).length;
      // Events are fsync'd before the counters are written; once the live totals are complete and still, the log is.
      const settled = await settledLiveTotals(reader, answered);
      t.diagnostic(`live totals settled ${(settled.waitedMs / 1000).toFixed(1)} s after the last answer (${settled.pages} pages)`);
      const { log, waitedMs } = await settledEventFiles(dataDir, answered);
      t.diagnostic(`event files complete ${(waitedMs / 1000).toFixed(1)} s after the live totals`);
      const to = today();
      const history = await historyTotals(reader, from, to);
      const others = await checkOtherReadPaths(reader, settled.perUser, log, from, to, sampleUsers(plan));
      try {
        assertAccounting(t, LOCAL, plan, outcomes, log, 'event files', settled.perUser, history, others, { duplicatesAllowed: false });
      } finally {
        if (gatewayOutput.length > 0) t.diagnostic(`the gateway logged: ${logSummary(gatewayOutput)}`);
      }
    },
  );
});

// ─── AWS ─────────────────────────────────────────────────────────────────────────────────────────────────────────

describe('exact accounting under load through the AWS adapters', () => {
  const ADMIN_KEY = 'admin-load-key-0123456789abcdef';
  const ADMIN_SECRET_ID = 'llm-usage-gateway/admin-key';
  const STREAM = 'usage-events';
  const GLUE_DATABASE = 'usage_db';
  const GLUE_TABLE = 'usage_events';
  let restoreAwslambda: (() => void) | undefined;
  let dynamo: DynaliteProcess;
  let firehose: FakeFirehose;
  let s3: FakeS3;
  let athena: FakeAthena;
  let secrets: FakeSecretsManager;
  let upstream: FakeUpstream;
  let duck: DuckDb;
  let historyDir: string;
  let api: LocalApiGateway;
  let gatewayKey: string;
  const logLines: string[] = [];

  /** Athena's side: the SQL the metrics function sent, on DuckDB over the records Firehose accepted, by day. */
  async function runOnEventLog(sql: string, params: readonly ExecutionParameterValue[]): Promise<Record<string, unknown>[]> {
    await rm(historyDir, { recursive: true, force: true });
    const byDay = new Map<string, string[]>();
    for (const record of firehose.records(STREAM)) {
      const day = (JSON.parse(record) as UsageEvent).ts.slice(0, 10);
      byDay.set(day, [...(byDay.get(day) ?? []), record]);
    }
    for (const [day, records] of byDay) {
      await mkdir(partitionDir(historyDir, day), { recursive: true });
      await writeFile(join(partitionDir(historyDir, day), 'delivery-0001.ndjson'), records.join(''));
    }
    const files = await listEventFiles(historyDir);
    if (files.length === 0) return [];
    return duck.exclusive(async (db) => {
      await db.run(`CREATE SCHEMA IF NOT EXISTS ${GLUE_DATABASE}`);
      await db.run(`CREATE OR REPLACE VIEW ${GLUE_DATABASE}.${GLUE_TABLE} AS ${eventsRelationSql(files)}`);
      return db.all(sql, [...params]);
    });
  }

  before(async () => {
    restoreAwslambda = installAwslambdaShim();
    [dynamo, firehose, s3, athena, secrets, upstream, duck] = await Promise.all([
      startDynaliteProcess(),
      FakeFirehose.start(),
      FakeS3.start(),
      FakeAthena.start(),
      startFakeSecretsManager({ [ADMIN_SECRET_ID]: JSON.stringify({ key: ADMIN_KEY }) }),
      startFakeUpstream({ record: false }),
      openDuckDb(':memory:'),
    ]);
    historyDir = await mkdtemp(join(tmpdir(), 'gateway-load-athena-'));
    athena.answer = runOnEventLog;
    gatewayKey = (await createGatewayKey(dynamo.client, dynamo.tableName, 'load')).key;
    const log = recordingLogger(logLines);
    const s3Client = () => new S3Client({ endpoint: s3.endpoint, forcePathStyle: true, region: TEST_REGION, credentials: FAKE_CREDENTIALS });
    const proxy = createProxyApp(
      proxyLambdaConfigFromEnv({
        UPSTREAM_OPENAI_URL: upstream.url,
        EVENTS_STREAM_NAME: STREAM,
        COUNTERS_TABLE_NAME: dynamo.tableName,
        RECOVERY_BUCKET_NAME: 'usage-log',
      }),
      {
        firehose: createFirehoseClient(TEST_REGION, { endpoint: firehose.endpoint, credentials: FAKE_CREDENTIALS, requestHandler: HARNESS_TIMEOUTS }),
        s3: s3Client(),
        counters: createCounterStoreClient({ endpoint: dynamo.endpoint, region: TEST_REGION, credentials: FAKE_CREDENTIALS, requestHandler: HARNESS_TIMEOUTS }),
        keys: dynamo.client,
        loadTokenizer: async () => (await import('../../lambda/tokenizer')).o200kCounter,
      },
      log,
    );
    const metrics = createMetricsApp(
      metricsLambdaConfigFromEnv({
        COUNTERS_TABLE_NAME: dynamo.tableName,
        ADMIN_KEY_SECRET_ARN: ADMIN_SECRET_ID,
        ATHENA_WORKGROUP: 'usage',
        ATHENA_DATABASE: GLUE_DATABASE,
        ATHENA_TABLE: GLUE_TABLE,
        QUERY_WAIT_MS: '20000',
      }),
      {
        counters: createCounterStoreClient({ endpoint: dynamo.endpoint, region: TEST_REGION, credentials: FAKE_CREDENTIALS }),
        athena: new AthenaClient({ endpoint: athena.endpoint, region: TEST_REGION, credentials: FAKE_CREDENTIALS, maxAttempts: 1 }),
        secrets: new SecretsManagerClient({ endpoint: secrets.endpoint, region: TEST_REGION, credentials: FAKE_CREDENTIALS }),
        s3: s3Client(),
      },
      log,
    );
    api = await startLocalApiGateway({
      streaming: awslambdaShim.streamifyResponse(streamingHandler(proxy, { logger: log })),
      buffered: bufferedHandler(metrics, { logger: log }),
    });
  });

  after(async () => {
    await api?.close();
    await Promise.all([dynamo?.close(), firehose?.close(), s3?.close(), athena?.close(), secrets?.close(), upstream?.close(), duck?.close()]);
    if (historyDir) await rm(historyDir, { recursive: true, force: true });
    restoreAwslambda?.();
  });

  it(
    `${AWS.requests} requests, ${AWS.concurrency} in flight, ${USERS} users: per user, sent = Firehose = DynamoDB = Athena`,
    { timeout: AWS.loadDeadlineMs + 4 * SETTLE_DEADLINE_MS },
    async (t) => {
      const plan = planRequests(AWS);
      const from = today();
      const cpuBefore = process.cpuUsage();
      const dynaliteCpuBefore = await dynamo.cpuMs();
      const { outcomes, elapsedMs, staleConnectionResends } = await runLoad(plan, AWS, { apiBase: `${api.url}/${api.stage}/v1`, gatewayKey });
      // Every invocation runs its usage writes before it returns: once none runs, every write has landed.
      await withDeadline(api.idle(), SETTLE_DEADLINE_MS, 'proxy invocations were still running');
      const cpu = process.cpuUsage(cpuBefore);
      const dynaliteCpuMs = (await dynamo.cpuMs()) - dynaliteCpuBefore;
      t.diagnostic(
        `load: ${plan.length} requests in ${(elapsedMs / 1000).toFixed(1)} s (${Math.round(plan.length / (elapsedMs / 1000))} req/s), ` +
          `CPU per request: ${((cpu.user + cpu.system) / 1000 / plan.length).toFixed(1)} ms in this process, ` +
          `${(dynaliteCpuMs / plan.length).toFixed(1)} ms in dynalite; ` +
          `${staleConnectionResends} resent after a stale keep-alive connection`,
      );

      const reader: MetricsReader = { base: `${api.url}/${api.stage}/metrics`, key: ADMIN_KEY };
      const log = firehose.records(STREAM).map((record) => JSON.parse(record) as UsageEvent);
      const live = (await liveTotals(reader)).perUser;
      const to = today();
      const history = await historyTotals(reader, from, to);
      const others = await checkOtherReadPaths(reader, live, log, from, to, sampleUsers(plan));
      try {
        // Firehose delivers at least once: a call that timed out may have landed and be sent again. History
        // queries keep one copy per request id, so duplicates are counted here, not failed.
        assertAccounting(t, AWS, plan, outcomes, log, 'Firehose', live, history, others, { duplicatesAllowed: true });
      } finally {
        if (logLines.length > 0) t.diagnostic(`the functions logged: ${logSummary(logLines)}`);
      }
    },
  );
});
