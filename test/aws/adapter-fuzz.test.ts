/**
 * Bad input, generated, on the AWS path: thousands of seeded API Gateway REST proxy events (payload format 1.0),
 * as API Gateway sends them and in malformed variants it could plausibly deliver, driven through the proxy
 * function's streaming handler (on the awslambda shim) and the metrics function's buffered handler. Behind them
 * are the real apps (`createProxyApp`, `createMetricsApp`) on dynalite and the Firehose, S3, Secrets Manager and
 * Athena fakes, and a local upstream, reached with the runtime's fetch, that answers every request with a 200.
 * Four proxy events in five go to the same core on in-memory stores instead (a forwarded request costs the AWS
 * stores several SDK calls); every fifth goes through the deployed app.
 *
 * For every event: the handler neither throws nor rejects; it never answers a 5xx of its own; every error it
 * answers is JSON in the gateway's shape (`message`, `type`, `code`, and the `param` at fault); the streaming
 * prelude has a numeric status and string headers; no response header holds CR or LF; and a request the gateway
 * refused never reaches the upstream (at the end: one upstream request, and one usage event, per answer the
 * upstream gave).
 *
 * `FUZZ_SEED=<n>` replays another sequence, `FUZZ_SCALE=0.1` runs a tenth of the cases, `FUZZ_CASE=proxy#918`
 * replays one case and shows its log, `FUZZ_KEEP_GOING=1` reports every failing case. A failure names the family,
 * case index and seed, and prints the event.
 */
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { AthenaClient } from '@aws-sdk/client-athena';
import { S3Client } from '@aws-sdk/client-s3';
import { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import type { APIGatewayProxyEvent, APIGatewayProxyResult, Context } from 'aws-lambda';
import { metricsLambdaConfigFromEnv, proxyLambdaConfigFromEnv } from '../../lambda/aws/aws-config';
import type { HttpResponsePrelude } from '../../lambda/aws/awslambda';
import { bufferedHandler } from '../../lambda/aws/buffered-adapter';
import { createCounterStoreClient } from '../../lambda/aws/dynamodb-counter-store';
import { createGatewayKey } from '../../lambda/aws/dynamodb-key-store';
import { createFirehoseClient } from '../../lambda/aws/firehose-event-sink';
import { createMetricsApp } from '../../lambda/aws/metrics-app';
import { createProxyApp } from '../../lambda/aws/proxy-app';
import { streamingHandler } from '../../lambda/aws/streaming-adapter';
import { healthCheck, createGateway } from '../../lambda/core/gateway';
import { errorResponse, NotFoundError } from '../../lambda/core/errors';
import { StaticKeyStore } from '../../lambda/core/keys';
import { createLogger } from '../../lambda/core/log';
import { proxyConfigFromEnv } from '../../lambda/core/config';
import { createProxy } from '../../lambda/core/proxy';
import { lazyTokenCounter } from '../../lambda/core/tokens';
import { UsageRecorder } from '../../lambda/core/usage-recorder';
import { docsSampleEvent } from '../support/api-gateway-events';
import { RuntimeResponseStream, awslambdaShim, installAwslambdaShim } from '../support/awslambda-shim';
import { FAKE_CREDENTIALS, TEST_REGION, startDynalite, type LocalDynamoDb } from '../support/dynalite';
import { FakeAthena } from '../support/fake-athena';
import { FakeFirehose } from '../support/fake-firehose';
import { FakeS3 } from '../support/fake-s3';
import { startFakeSecretsManager, type FakeSecretsManager } from '../support/fake-secrets-manager';
import { Prng } from '../support/prng';
import { RecordingCounters, RecordingSink } from '../support/recording-stores';

const SEED = Number(process.env.FUZZ_SEED ?? 20261123);
const SCALE = Number(process.env.FUZZ_SCALE ?? 1);
const scaled = (count: number) => Math.max(1, Math.round(count * SCALE));
/** Events in flight at once: the handlers are re-entrant, as a warm container's never are, which is stricter. */
const CONCURRENCY = 8;
/** Small, so generated bodies cross it often. */
const MAX_BODY_BYTES = 64 * 1024;

const STREAM = 'usage-events';
const ADMIN_SECRET_ID = 'llm-usage-gateway/admin-key';
const ADMIN_KEY = 'admin-fuzz-key-0123456789abcdef';
const PROVIDER_KEY = 'sk-fuzz-provider-key-0123456789';
/** Every event carries this request header when its headers are readable at all: how a forwarded request is told apart upstream. */
const CASE_HEADER = 'x-fuzz-case';
/** On every answer of the fake upstream, never on one of the gateway's own. */
const UPSTREAM_MARK = 'x-fake-upstream';

const lambdaContext = {} as Context;
type ProxyFunction = (event: APIGatewayProxyEvent, stream: RuntimeResponseStream, context: Context) => Promise<void>;
type MetricsFunction = (event: APIGatewayProxyEvent) => Promise<APIGatewayProxyResult>;

let restoreAwslambda: () => void;
let dynamo: LocalDynamoDb;
let firehose: FakeFirehose;
let s3: FakeS3;
let athena: FakeAthena;
let secrets: FakeSecretsManager;
let gatewayKey: string;
/** The proxy Lambda as deployed (`createProxyApp` on the AWS fakes), and the same core on in-memory stores. */
let proxyFunctions: Record<ProxyApp, ProxyFunction>;
const memorySink = new RecordingSink();
let metricsFunction: MetricsFunction;
const logLines: string[] = [];

// ---------------------------------------------------------------------------------------------------------------
// The upstream: a local HTTP server that answers everything with a 200 in OpenAI's formats, and remembers which
// case sent what. The gateway reaches it with the runtime's own fetch, as it reaches OpenAI when deployed.

interface UpstreamRequest {
  readonly caseId: string | null;
  readonly method: string;
  readonly url: string;
}
const upstreamRequests: UpstreamRequest[] = [];
let upstreamServer: Server;
let upstreamUrl: string;

function answerUpstream(req: IncomingMessage, res: ServerResponse): void {
  const chunks: Buffer[] = [];
  req.on('data', (chunk: Buffer) => chunks.push(chunk));
  req.on('end', () => {
    const caseId = req.headers[CASE_HEADER];
    upstreamRequests.push({ caseId: typeof caseId === 'string' ? caseId : null, method: req.method ?? '', url: req.url ?? '' });
    let stream = false;
    try {
      stream = (JSON.parse(Buffer.concat(chunks).toString('utf8')) as { stream?: unknown }).stream === true;
    } catch {
      // Not JSON: answered as JSON all the same.
    }
    const usage = { prompt_tokens: 9, completion_tokens: 3, total_tokens: 12 };
    let body: string;
    if (stream) {
      const events = [
        { id: 'chatcmpl-fuzz', object: 'chat.completion.chunk', created: 1, model: 'gpt-4o-mini', choices: [{ index: 0, delta: { content: 'Hi there you' }, finish_reason: null }] },
        { id: 'chatcmpl-fuzz', object: 'chat.completion.chunk', created: 1, model: 'gpt-4o-mini', choices: [], usage },
      ];
      body = events.map((event) => `data: ${JSON.stringify(event)}\n\n`).join('') + 'data: [DONE]\n\n';
    } else {
      body = JSON.stringify({ id: 'chatcmpl-fuzz', object: 'chat.completion', created: 1, model: 'gpt-4o-mini', choices: [{ index: 0, message: { role: 'assistant', content: 'Hi there you' }, finish_reason: 'stop' }], usage });
    }
    res.writeHead(200, { 'content-type': stream ? 'text/event-stream' : 'application/json', 'openai-version': '2020-10-01', [UPSTREAM_MARK]: '1' });
    res.end(body);
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Cases

type Family = 'proxy' | 'metrics';
type ProxyApp = 'aws' | 'memory';

interface AdapterCase {
  readonly family: Family;
  readonly index: number;
  /** A short description for failure messages. */
  readonly what: string;
  /** The event as delivered: deliberately not always an `APIGatewayProxyEvent`. */
  readonly event: Record<string, unknown>;
  /** The value of {@link CASE_HEADER} the event carries. */
  readonly caseId: string;
  /** Which proxy app answers a proxy event. */
  readonly app?: ProxyApp;
  /** What the answer must be, when the adapter itself decides it. */
  readonly expect?: { readonly status: number; readonly code: string; readonly param: string | null };
}

/** What a failure message shows of the event: all of it, with long strings shortened. */
function printable(event: Record<string, unknown>): string {
  return JSON.stringify(
    event,
    (_key, value: unknown) => (typeof value === 'string' && value.length > 300 ? `${value.slice(0, 300)}…(${value.length} chars)` : value === undefined ? '<undefined>' : value),
    1,
  ).replace(/[\u007f-\u009f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

function labelOf(c: AdapterCase): string {
  return `${c.family}${c.app === 'aws' ? ' (deployed app)' : ''}#${c.index} (seed ${SEED}): ${c.what}`;
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** Codes whose error is always about one header, parameter or the body, so `param` must name it. */
const PARAMETER_CODES = new Set([
  'missing_gateway_key',
  'invalid_gateway_key',
  'missing_metrics_key',
  'invalid_metrics_key',
  'invalid_user_id',
  'invalid_property',
  'too_many_properties',
  'invalid_request_id',
  'invalid_json',
  'invalid_body',
  'invalid_base64',
  'body_too_large',
  'incomplete_body',
  'invalid_header',
  'invalid_rate_limit_policy',
  'invalid_parameter',
  'unknown_parameter',
  'invalid_cursor',
  'invalid_path',
  'invalid_range',
  'unknown_user',
  'invalid_limits',
  'unsupported_media_type',
  'invalid_method',
]);

interface Answer {
  readonly status: number;
  /** Header names in lower case; Set-Cookie and other repeated values joined. */
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Buffer;
}

/** Header maps of a prelude or proxy result: names tokens, values strings without CR or LF. */
function checkHeaderMaps(label: string, single: unknown, multi: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  if (single !== undefined) {
    assert.ok(single !== null && typeof single === 'object' && !Array.isArray(single), `${label}: headers is an object`);
    for (const [name, value] of Object.entries(single as Record<string, unknown>)) {
      assert.match(name, TOKEN, `${label}: header name ${JSON.stringify(name)}`);
      assert.equal(typeof value, 'string', `${label}: header ${name} is a string`);
      assert.ok(!/[\r\n\0]/.test(value as string), `${label}: header ${name} holds CR, LF or NUL: ${JSON.stringify(value)}`);
      out[name.toLowerCase()] = value as string;
    }
  }
  if (multi !== undefined) {
    assert.ok(multi !== null && typeof multi === 'object' && !Array.isArray(multi), `${label}: multiValueHeaders is an object`);
    for (const [name, values] of Object.entries(multi as Record<string, unknown>)) {
      assert.match(name, TOKEN, `${label}: header name ${JSON.stringify(name)}`);
      assert.ok(Array.isArray(values), `${label}: multi-value header ${name} is an array`);
      for (const value of values as unknown[]) {
        assert.equal(typeof value, 'string', `${label}: a value of ${name} is a string`);
        assert.ok(!/[\r\n\0]/.test(value as string), `${label}: header ${name} holds CR, LF or NUL: ${JSON.stringify(value)}`);
      }
      out[name.toLowerCase()] = [...(out[name.toLowerCase()] === undefined ? [] : [out[name.toLowerCase()]!]), ...(values as string[])].join(', ');
    }
  }
  return out;
}

/** The checks every answer must pass, whatever the event was. */
function checkAnswer(c: AdapterCase, answer: Answer, label: string): void {
  assert.ok(Number.isInteger(answer.status) && answer.status >= 100 && answer.status <= 599, `${label}: status ${answer.status}`);
  const fromUpstream = answer.headers[UPSTREAM_MARK] === '1';
  if (fromUpstream) {
    assert.equal(c.family, 'proxy', `${label}: only the proxy forwards`);
    assert.ok(upstreamRequests.some((request) => request.caseId === c.caseId), `${label}: an upstream answer, yet the upstream never saw the case`);
    return;
  }
  assert.ok(!upstreamRequests.some((request) => request.caseId === c.caseId), `${label}: refused with ${answer.status}, yet the request reached the upstream`);
  const text = answer.body.toString('utf8');
  assert.ok(answer.status < 500, `${label}: the gateway itself answered ${answer.status}: ${text.slice(0, 300)}`);
  if (c.expect !== undefined) {
    assert.equal(answer.status, c.expect.status, `${label}: status (${text.slice(0, 300)})`);
  }
  if (answer.status < 400) return;
  const type = answer.headers['content-type'] ?? '';
  assert.match(type, /^application\/json/, `${label}: a gateway error is JSON, got "${type}"`);
  let parsed: { error?: Record<string, unknown> };
  try {
    parsed = JSON.parse(text) as typeof parsed;
  } catch {
    assert.fail(`${label}: a gateway error body is not JSON: ${text.slice(0, 200)}`);
  }
  const error = parsed.error;
  assert.ok(error !== undefined && error !== null && typeof error === 'object', `${label}: the error body has an "error" object`);
  assert.equal(typeof error.message, 'string', `${label}: error.message`);
  assert.ok((error.message as string).length > 0, `${label}: error.message is not empty`);
  assert.equal(typeof error.type, 'string', `${label}: error.type`);
  assert.equal(typeof error.code, 'string', `${label}: error.code`);
  assert.ok('param' in error, `${label}: error.param is present (null when no parameter is at fault)`);
  if (PARAMETER_CODES.has(error.code as string)) {
    assert.equal(typeof error.param, 'string', `${label}: ${String(error.code)} names the parameter at fault`);
    // Empty only when what it names is: a query parameter sent as `?=value`.
    assert.ok((error.param as string).length <= 200, `${label}: param ${JSON.stringify(error.param)}`);
  }
  if (c.expect !== undefined) {
    assert.equal(error.code, c.expect.code, `${label}: code`);
    assert.equal(error.param, c.expect.param, `${label}: param`);
  }
}

async function runProxy(c: AdapterCase, label: string): Promise<Answer> {
  const stream = new RuntimeResponseStream();
  try {
    await proxyFunctions[c.app ?? 'memory'](c.event as unknown as APIGatewayProxyEvent, stream, lambdaContext);
  } catch (error) {
    assert.fail(`${label}: the streaming handler rejected: ${String((error as Error)?.stack ?? error)}`);
  }
  assert.equal(stream.writableFinished, true, `${label}: the response stream was ended`);
  let prelude: HttpResponsePrelude;
  let body: Buffer;
  try {
    ({ prelude, body } = stream.decoded());
  } catch (error) {
    assert.fail(`${label}: no well-formed prelude: ${String(error)} in ${JSON.stringify(stream.bytes().subarray(0, 300).toString('latin1'))}`);
  }
  assert.equal(typeof prelude.statusCode, 'number', `${label}: prelude statusCode is a number`);
  const allowed = new Set(['statusCode', 'headers', 'multiValueHeaders']);
  for (const key of Object.keys(prelude)) assert.ok(allowed.has(key), `${label}: prelude key ${key}`);
  const headers = checkHeaderMaps(label, prelude.headers, prelude.multiValueHeaders);
  return { status: prelude.statusCode, headers, body };
}

async function runMetrics(c: AdapterCase, label: string): Promise<Answer> {
  let result: APIGatewayProxyResult;
  try {
    result = await metricsFunction(c.event as unknown as APIGatewayProxyEvent);
  } catch (error) {
    assert.fail(`${label}: the buffered handler rejected: ${String((error as Error)?.stack ?? error)}`);
  }
  assert.equal(typeof result.statusCode, 'number', `${label}: statusCode is a number`);
  assert.equal(typeof result.body, 'string', `${label}: body is a string`);
  assert.equal(typeof result.isBase64Encoded, 'boolean', `${label}: isBase64Encoded is a boolean`);
  const headers = checkHeaderMaps(label, result.headers, result.multiValueHeaders);
  return { status: result.statusCode, headers, body: Buffer.from(result.body, result.isBase64Encoded ? 'base64' : 'utf8') };
}

const answered: { readonly family: Family; readonly app: ProxyApp | undefined; readonly fromUpstream: boolean; readonly status: number; readonly code: string | null }[] = [];
let casesRun = 0;

function errorCodeOf(answer: Answer): string | null {
  if (answer.status < 400) return null;
  try {
    return String((JSON.parse(answer.body.toString('utf8')) as { error: { code: unknown } }).error.code);
  } catch {
    return null;
  }
}

async function runCase(c: AdapterCase): Promise<void> {
  const label = labelOf(c);
  try {
    const answer = c.family === 'proxy' ? await runProxy(c, label) : await runMetrics(c, label);
    casesRun++;
    answered.push({ family: c.family, app: c.app, fromUpstream: answer.headers[UPSTREAM_MARK] === '1', status: answer.status, code: errorCodeOf(answer) });
    checkAnswer(c, answer, label);
  } catch (error) {
    // The event goes last, after what was wrong with the answer: replayable as it stands.
    if (error instanceof Error) error.message += `\nevent: ${printable(c.event)}`;
    throw error;
  }
}

/** `FUZZ_KEEP_GOING=1` runs every case and reports how many failed, with the first of them, instead of stopping. */
const KEEP_GOING = process.env.FUZZ_KEEP_GOING === '1';
/** `FUZZ_CASE=proxy#918` replays that one case (the others are still generated, so it is the same event). */
const ONLY = process.env.FUZZ_CASE;

async function runAll(generated: readonly AdapterCase[]): Promise<void> {
  const cases = ONLY === undefined ? generated : generated.filter((c) => `${c.family}#${c.index}` === ONLY);
  let next = 0;
  const failures: unknown[] = [];
  const worker = async () => {
    while (next < cases.length && (KEEP_GOING || failures.length === 0)) {
      const c = cases[next++]!;
      try {
        await runCase(c);
      } catch (error) {
        failures.push(error);
      }
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  if (failures.length > 1 && KEEP_GOING) {
    const first = failures[0] as Error;
    first.message = `${failures.length} of ${cases.length} cases failed; what each found, in brief:\n${failures
      .map((failure) => String((failure as Error).message).split('\n')[0])
      .join('\n')}\n\nThe first in full: ${first.message}`;
  }
  if (failures.length > 0) throw failures[0];
}

// ---------------------------------------------------------------------------------------------------------------
// Generators

const PRINTABLE = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_.@:/+=!?#$%&*()[]{}<>,;\'"`~^|\\';

/** Pieces header values are made of: mostly harmless, then what API Gateway could plausibly pass on. */
const VALUE_PIECES = ['user', '42', ' ', '\t', '@example.com', 'é', 'ü', '\u00a0', 'x'.repeat(120), '日本', '🌍', '\u0000', '\u001b', '\u007f', '\u0085', '\r', '\n', '\r\nX-Injected: 1', '\ud800', '"; DROP TABLE x; --'];

function headerValue(rng: Prng, dangerous: boolean): string {
  let value = '';
  for (let i = rng.int(1, 4); i > 0; i--) value += dangerous ? rng.pick(VALUE_PIECES) : rng.pick(VALUE_PIECES.slice(0, 7));
  return value;
}

const ODD_HEADER_NAMES = ['Bad Header', 'x:y', 'é', 'X-Ctl\u0001', '', ' ', 'X-Trailing ', '(x)', 'X\r\nY', 'x'.repeat(300)];

function chatObject(rng: Prng, index: number): Record<string, unknown> {
  const body: Record<string, unknown> = {
    model: rng.pick(['gpt-4o-mini', 'gpt-4o', 'o3-mini', 'no-such-model', '']),
    messages: [{ role: 'user', content: `adapter fuzz ${index} ${rng.string(PRINTABLE, rng.int(0, 40))}` }],
  };
  if (rng.chance(0.25)) body.stream = rng.pick([true, false, 'yes', null]);
  if (rng.chance(0.1)) body.user = rng.pick(['body-user', '', 'u'.repeat(300), 'ctl\u0000', 7, null]);
  if (rng.chance(0.05)) body.max_tokens = rng.pick([1, -1, 'many', 1e308]);
  return body;
}

/** Ways to break a JSON text. */
function brokenJson(rng: Prng, text: string): string {
  switch (rng.int(0, 6)) {
    case 0:
      return text.slice(0, rng.int(0, text.length));
    case 1:
      return `${text}${rng.pick([',', '}', 'garbage', '\u0000'])}`;
    case 2:
      return text.replace(/"/g, rng.pick(['\u201c', "'", '']));
    case 3:
      return rng.pick(['null', '[]', '"string"', '123', 'true', ' ', 'NaN', "{'a':1}", '{"a":Infinity}']);
    case 4:
      return '['.repeat(rng.int(100, 5000));
    case 5:
      return `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"\\u${rng.string('0123456789abcdefXZ', rng.int(0, 4))}"}]}`;
    default:
      return rng.string(PRINTABLE, rng.int(1, 200));
  }
}

const CONTENT_TYPES = ['application/json', 'application/json; charset=utf-8', 'APPLICATION/JSON', 'application/problem+json', 'text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/octet-stream', '', ';;;'];

interface BodyChoice {
  readonly body: unknown;
  readonly isBase64Encoded: unknown;
  readonly what: string;
  /** Set when the body is declared base64 but is not. */
  readonly invalidBase64?: boolean;
}

function isStrictBase64(text: string): boolean {
  return text.length % 4 === 0 && /^[A-Za-z0-9+/]*={0,2}$/.test(text);
}

/** Bodies as API Gateway hands them over: text, base64 (binary media types), absent, and broken variants. */
function bodyChoice(rng: Prng, index: number, wild: boolean): BodyChoice {
  const json = JSON.stringify(chatObject(rng, index));
  switch (wild ? rng.int(0, 15) : rng.pick([8, 15])) {
    case 0:
      return { body: null, isBase64Encoded: false, what: 'no body' };
    case 1:
      return { body: '', isBase64Encoded: rng.chance(0.5), what: 'empty body' };
    case 2: {
      const text = brokenJson(rng, json);
      return { body: text, isBase64Encoded: false, what: `broken JSON ${text.length}B` };
    }
    case 3: {
      // Invalid UTF-8 after base64 decoding.
      const bytes = Buffer.concat([Buffer.from(json.slice(0, 20)), Buffer.from(rng.pick([[0xff], [0xc3, 0x28], [0xed, 0xa0, 0x80], [0xe2, 0x82], [0xc0, 0xaf]])), Buffer.from(json.slice(20))]);
      return { body: bytes.toString('base64'), isBase64Encoded: true, what: 'base64 of invalid UTF-8' };
    }
    case 4: {
      const text = rng.pick(['!!!!', 'abc', 'a===', '====', 'Zm9v YmFy', 'Zm9v\nYmFy', json, `${Buffer.from(json).toString('base64')}*`, 'Zm9vYg', '-_-_']);
      const invalid = !isStrictBase64(text);
      return { body: text, isBase64Encoded: true, what: `"base64" ${JSON.stringify(text.slice(0, 20))}`, ...(invalid ? { invalidBase64: true } : {}) };
    }
    case 5: {
      const size = MAX_BODY_BYTES + rng.int(-200, 200);
      const filler = 'a'.repeat(Math.max(0, size - json.length));
      const big = JSON.stringify({ ...(JSON.parse(json) as object), filler });
      return { body: rng.chance(0.5) ? big : Buffer.from(big).toString('base64'), isBase64Encoded: undefined, what: `${big.length}B around the limit` };
    }
    case 6:
      return { body: 'x'.repeat(rng.pick([200_000, 1_000_000])), isBase64Encoded: false, what: 'huge text body' };
    case 7: {
      const flag = rng.pick(['true', 'false', 1, 0, null, 'yes']);
      return { body: rng.chance(0.5) ? json : Buffer.from(json).toString('base64'), isBase64Encoded: flag, what: `isBase64Encoded ${JSON.stringify(flag)}` };
    }
    case 8:
      return { body: Buffer.from(json).toString('base64'), isBase64Encoded: true, what: 'base64 JSON' };
    case 9:
      return { body: rng.bytes(rng.int(1, 300)).toString('base64'), isBase64Encoded: true, what: 'base64 noise' };
    default:
      return { body: json, isBase64Encoded: false, what: 'JSON' };
  }
}

/** `event.path` values: ordinary, then what a `{proxy+}` resource could hand over. */
function pathChoice(rng: Prng, base: string, wild: boolean, longSegment = 10_000): unknown {
  if (!wild || rng.chance(0.7)) return base;
  return rng.pick<unknown>([
    `${base}/`,
    base.replace('/', '//'),
    `${base}/./x/..`,
    `/v1/../${base.slice(1)}`,
    '/v1/%2e%2e/metrics/users',
    '/v1/..%2f..%2fmetrics',
    `${base}%2Fx`,
    `${base}/%ZZ`,
    `${base}/a%00b`,
    '//evil.example/v1/models',
    `${base}?x=1`,
    `${base}#frag`,
    base.slice(1),
    '',
    null,
    undefined,
    `${base}/日本`,
    `${base}/\\evil`,
    `${base}/${'a'.repeat(longSegment)}`,
    '/../../etc/passwd',
    `${base}/a b`,
    `${base}/\t\n`,
    `${base}/\ud800`,
    '/',
    '*',
    42,
  ]);
}

/** `httpMethod`: what API Gateway sends for `ANY`, then values it never should. */
function methodChoice(rng: Prng, usual: string, wild: boolean): { method: unknown; expect?: AdapterCase['expect'] } {
  if (!wild || rng.chance(0.8)) return { method: usual };
  const method = rng.pick<unknown>(['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS', 'post', 'Get', '', null, undefined, 'CONNECT', 'TRACE', 'TRACK', 'connect', 'G ET', 'FOO', 'M-SEARCH', 'PROPFIND', 'POST ', '\u0000', 'DELETE\r\n', 42, 'ÜBER']);
  if (method === undefined || method === null || method === '') return { method };
  if (typeof method !== 'string' || !TOKEN.test(method)) return { method, expect: { status: 400, code: 'invalid_method', param: 'method' } };
  // What API Gateway REST serves; a Request could not even carry CONNECT, TRACE or TRACK.
  if (!['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'].includes(method.toUpperCase())) {
    return { method, expect: { status: 405, code: 'method_not_allowed', param: 'method' } };
  }
  return { method };
}

type Pair = readonly [string, string];

/**
 * Puts header (or query) pairs into an event the ways API Gateway does (`multiValue*` with every value, the
 * single-value map with the last one), and the ways a malformed event could: one map only, neither, null or
 * absent, maps that disagree, and multi-value entries that are not arrays of strings.
 */
function placePairs(rng: Prng, event: Record<string, unknown>, pairs: readonly Pair[], single: string, multi: string, wild: boolean): string {
  const last: Record<string, string> = {};
  const all: Record<string, unknown[]> = {};
  for (const [name, value] of pairs) {
    last[name] = value;
    (all[name] ??= []).push(value);
  }
  const absent = () => (rng.chance(0.5) ? null : undefined);
  const set = (key: string, value: unknown) => {
    if (value === undefined) delete event[key];
    else event[key] = value;
  };
  const shape = wild ? rng.int(0, 99) : 0;
  if (shape < 75) {
    set(single, pairs.length === 0 && multi.includes('Query') ? null : last);
    set(multi, pairs.length === 0 && multi.includes('Query') ? null : all);
    return 'both maps';
  }
  if (shape < 83) {
    set(single, last);
    set(multi, absent());
    return `${single} only`;
  }
  if (shape < 89) {
    set(single, absent());
    set(multi, all);
    return `${multi} only`;
  }
  if (shape < 92) {
    set(single, absent());
    set(multi, absent());
    return 'neither map';
  }
  if (shape < 96) {
    // Maps that disagree: other case in the single map, and a value the multi map lacks.
    const skewed: Record<string, string> = {};
    for (const [name, value] of Object.entries(last)) skewed[rng.chance(0.5) ? name.toLowerCase() : name.toUpperCase()] = value;
    skewed['X-Only-Single'] = 'single';
    set(single, skewed);
    set(multi, all);
    return 'maps that disagree';
  }
  const broken: Record<string, unknown> = { ...all };
  const names = Object.keys(broken);
  if (names.length > 0) {
    const name = rng.pick(names);
    broken[name] = rng.pick<unknown>([null, 'bare string', [null], [], [7], undefined]);
  } else {
    broken['X-Broken'] = 'bare string';
  }
  set(single, last);
  set(multi, broken);
  return `broken ${multi}`;
}

/** Query parameters, encoded any way API Gateway could decode them. */
function queryPairs(rng: Prng, metrics: boolean, wild: boolean): Pair[] {
  const pairs: Pair[] = [];
  const names = metrics ? ['period', 'date', 'sort', 'order', 'limit', 'cursor', 'from', 'to', 'group_by', 'tz', 'interval', 'format', 'x'] : ['api-version', 'x', 'q'];
  for (let i = rng.int(0, 4); i > 0; i--) {
    const name = !wild || rng.chance(0.85) ? rng.pick(names) : rng.pick(['', 'a b', '%', '&', '=', '日本', '\u0000', 'a'.repeat(200)]);
    const value = !wild || rng.chance(0.7)
      ? rng.pick(['day', 'month', 'all', 'cost', 'asc', '10', 'today', '2026-01-31', 'user', 'csv', '+05:30'])
      : rng.pick(['', '&x=1', '=', '#', '%ZZ', '%', '\ud800', '日本', 'a'.repeat(3000), '\r\n', '\u0000', '1e999', '-1', ' ']);
    pairs.push([name, value]);
  }
  if (wild && pairs.length > 0 && rng.chance(0.1)) pairs.push(pairs[0]!);
  return pairs;
}

/** A copy of the developer guide's `requestContext`, or a variant with fields missing or odd. */
function requestContextChoice(rng: Prng, event: Record<string, unknown>, publicPath: unknown, wild: boolean): string {
  const context = (event.requestContext ?? {}) as Record<string, unknown>;
  context.path = publicPath;
  context.domainName = 'abc123.execute-api.eu-west-1.amazonaws.com';
  const variant = wild ? rng.int(0, 19) : 19;
  if (variant === 0) {
    delete event.requestContext;
    return 'no requestContext';
  }
  if (variant === 1) {
    event.requestContext = {};
    return 'empty requestContext';
  }
  if (variant === 2) {
    event.requestContext = null;
    return 'null requestContext';
  }
  if (variant === 3) {
    const domain = rng.pick<unknown>(['', 'a b', '999.999.999.999', 'evil.example/x', '[::1]:99999', 'host:70000', 'xn--', '..', null, 5, 'é.example']);
    context.domainName = domain;
    return `domainName ${JSON.stringify(domain)}`;
  }
  if (variant === 4) {
    for (const field of ['identity', 'stage', 'requestId', 'httpMethod', 'resourcePath']) delete context[field];
    return 'requestContext without identity, stage, ids';
  }
  return 'requestContext';
}

function stagePath(rng: Prng, path: unknown, wild: boolean): { publicPath: unknown; what: string } {
  const stage = rng.pick(['/prod', '/v1', '/dev-2', '', '/base/path']);
  if (typeof path !== 'string' || !wild || rng.chance(0.85)) return { publicPath: typeof path === 'string' ? `${stage}${path}` : path, what: `stage ${stage || 'none'}` };
  const odd = rng.pick<unknown>(['/pr od', '/pr\nod', '/pr\u0000od', '//evil.example', '/日本', '/x"y', null, 7, '/other/prefix/not/matching']);
  return { publicPath: typeof odd === 'string' && !odd.includes('not/matching') ? `${odd}${path}` : odd, what: `stage ${JSON.stringify(odd)}` };
}

function baseEvent(): Record<string, unknown> {
  return docsSampleEvent() as unknown as Record<string, unknown>;
}

const PROXY_PATHS = ['/v1/chat/completions', '/v1/chat/completions', '/v1/chat/completions', '/v1/chat/completions', '/v1/completions', '/v1/embeddings', '/v1/responses', '/v1/models', '/v1/models', '/healthz', '/metrics/users', '/v1'];

/** Proxy events: OpenAI calls through API Gateway, with every part open to mutation. */
function proxyCases(rng: Prng, count: number): AdapterCase[] {
  const cases: AdapterCase[] = [];
  for (let index = 0; index < count; index++) {
    const caseId = `proxy-${index}`;
    // A third of the events are as API Gateway sends them for a well-behaved client; the rest bend something.
    const wild = rng.chance(0.65);
    const notes: string[] = [wild ? 'bent' : 'plain'];
    const event = baseEvent();
    const base = rng.pick(PROXY_PATHS);
    const { method, expect } = methodChoice(rng, base === '/v1/models' || base === '/healthz' ? 'GET' : 'POST', wild);
    notes.push(`${String(method)} ${base}`);
    const path = pathChoice(rng, base, wild);
    if (path !== base) notes.push(`path ${JSON.stringify(typeof path === 'string' ? path.slice(0, 40) : path)}`);
    event.httpMethod = method;
    event.path = path;
    event.resource = '/{proxy+}';
    event.pathParameters = typeof path === 'string' ? { proxy: path.replace(/^\//, '') } : null;

    const headers: Pair[] = [
      ['Host', 'abc123.execute-api.eu-west-1.amazonaws.com'],
      ['X-Forwarded-Proto', 'https'],
      ['Authorization', `Bearer ${PROVIDER_KEY}`],
      [CASE_HEADER, caseId],
    ];
    const auth = wild ? rng.int(0, 19) : 19;
    if (auth === 0) notes.push('no gateway key');
    else if (auth === 1) headers.push(['Helicone-Auth', 'Bearer gw_wrong_key_0123456789abcdef']);
    else if (auth === 2) headers.push(['helicone-auth', `bearer   ${gatewayKey}  `]);
    else if (auth === 3) {
      headers.push(['Helicone-Auth', `Bearer ${gatewayKey}`], ['HELICONE-AUTH', `Bearer ${gatewayKey}`]);
      notes.push('gateway key twice, differing case');
    } else headers.push(['Helicone-Auth', `Bearer ${gatewayKey}`]);

    const choice = bodyChoice(rng, index, wild);
    notes.push(choice.what);
    const contentType = !wild || rng.chance(0.7) ? 'application/json' : rng.pick(CONTENT_TYPES);
    if (contentType !== '' || rng.chance(0.5)) headers.push([rng.pick(['Content-Type', 'content-type']), contentType]);
    if (rng.chance(0.5)) headers.push(['Helicone-User-Id', !wild || rng.chance(0.7) ? `fuzz-user-${rng.int(0, 30)}` : headerValue(rng, true)]);
    if (wild && rng.chance(0.1)) headers.push(['helicone-user-id', `fuzz-user-${rng.int(0, 30)}`]);
    for (let p = wild && rng.chance(0.1) ? rng.int(18, 23) : rng.int(0, 2); p > 0; p--) {
      const name = !wild || rng.chance(0.85) ? rng.pick(['plan', 'team', 'Feature']) : rng.pick(['a.b', 'x'.repeat(70), '']);
      headers.push([`Helicone-Property-${name}${p}`, headerValue(rng, wild && rng.chance(0.2))]);
    }
    if (wild && rng.chance(0.35)) {
      const name = rng.chance(0.7) ? rng.pick(['X-Extra', 'Cookie', 'Accept', 'User-Agent', 'x-forwarded-prefix', 'Content-Length', 'Transfer-Encoding', 'Connection', 'Expect', 'Helicone-Request-Id']) : rng.pick(ODD_HEADER_NAMES);
      const value = rng.chance(0.4) ? headerValue(rng, true) : rng.pick(['99999999999', '0', '5', 'chunked', 'close', '100-continue', 'not-a-uuid', 'a=1']);
      headers.push([name, value]);
      notes.push(`header ${JSON.stringify(name.slice(0, 30))}: ${JSON.stringify(value.slice(0, 30))}`);
    }
    if (wild && rng.chance(0.1)) {
      const host = rng.pick(['999.999.999.999', '[::1]:99999', 'a:70000', 'evil.example/@x', '', 'a b', '1.2.3.4.5', 'localhost:0', 'é.example', 'api.example.com, other.example']);
      headers[0] = ['Host', host];
      notes.push(`Host ${JSON.stringify(host)}`);
    }
    if (wild && rng.chance(0.05)) headers[1] = ['X-Forwarded-Proto', rng.pick(['ftp', 'HTTP', 'https, http', '', 'javascript'])];
    notes.push(placePairs(rng, event, headers, 'headers', 'multiValueHeaders', wild));
    const query = queryPairs(rng, false, wild);
    if (query.length > 0) notes.push(`query ${JSON.stringify(query).slice(0, 60)}`);
    placePairs(rng, event, query, 'queryStringParameters', 'multiValueQueryStringParameters', wild);
    const stage = stagePath(rng, path, wild);
    notes.push(stage.what, requestContextChoice(rng, event, stage.publicPath, wild));
    event.body = choice.body;
    if (choice.isBase64Encoded === undefined) {
      const encoded = typeof choice.body === 'string' && isStrictBase64(choice.body) && choice.body.length > 0 && !choice.body.startsWith('{');
      event.isBase64Encoded = encoded;
    } else {
      event.isBase64Encoded = choice.isBase64Encoded;
    }
    // An absent method is taken as GET, and neither GET nor HEAD carries a body.
    const effective = method === undefined || method === null || method === '' ? 'GET' : typeof method === 'string' ? method.toUpperCase() : null;
    const carriesBody = effective !== 'GET' && effective !== 'HEAD';
    const base64Refusal = choice.invalidBase64 === true && carriesBody && expect === undefined && event.isBase64Encoded === true;
    cases.push({
      family: 'proxy',
      index,
      what: notes.join(', '),
      event,
      caseId,
      app: index % 5 === 0 ? 'aws' : 'memory',
      ...(expect !== undefined ? { expect } : base64Refusal && headersReadable(headers) ? { expect: { status: 400, code: 'invalid_base64', param: 'body' } } : {}),
    });
  }
  return cases;
}

/** Whether every header is valid HTTP (a token name, no control character but tab in the value): else the adapter's 400 comes first. */
function headersReadable(pairs: readonly Pair[]): boolean {
  return pairs.every(([name, value]) => name === '' || (TOKEN.test(name) && /^[\t\x20-\x7e\x80-\xff]*$/.test(value)));
}

const METRICS_PATHS = [
  '/metrics/users',
  '/metrics/users/fuzz-user-1',
  '/metrics/users/fuzz-user-1/usage',
  '/metrics/users/fuzz-user-1/summary',
  '/metrics/users/fuzz-user-1/limits',
  '/metrics/users/a%40b.c',
  '/metrics/users/%ZZ',
  '/metrics/usage',
  '/metrics/distribution',
  '/metrics/anomalies',
  '/metrics/export',
  '/metrics/queries/q-1',
  '/metrics/nothing',
  '/metrics',
  '/dashboard',
  '/dashboard/',
  '/dashboard/app.js',
  '/dashboard/../metrics/users',
  '/healthz',
  '/v1/models',
];

/** Metrics events: admin calls through API Gateway to the buffered handler, mutated the same ways. */
function metricsCases(rng: Prng, count: number): AdapterCase[] {
  const cases: AdapterCase[] = [];
  for (let index = 0; index < count; index++) {
    const caseId = `metrics-${index}`;
    const wild = rng.chance(0.65);
    const notes: string[] = [wild ? 'bent' : 'plain'];
    const event = baseEvent();
    const base = rng.pick(METRICS_PATHS);
    const usual = base.endsWith('/limits') && rng.chance(0.5) ? 'PUT' : 'GET';
    const { method, expect } = methodChoice(rng, usual, wild);
    notes.push(`${String(method)} ${base}`);
    // Segments past DynamoDB's 2 KB key limit are the known fault pinned below, kept out of the generated cases.
    const path = pathChoice(rng, base, wild, 1_000);
    if (path !== base) notes.push(`path ${JSON.stringify(typeof path === 'string' ? path.slice(0, 40) : path)}`);
    event.httpMethod = method;
    event.path = path;
    event.resource = '/metrics/{proxy+}';
    event.pathParameters = typeof path === 'string' ? { proxy: path.replace(/^\/metrics\/?/, '') } : null;
    const headers: Pair[] = [
      ['Host', 'abc123.execute-api.eu-west-1.amazonaws.com'],
      ['X-Forwarded-Proto', 'https'],
      [CASE_HEADER, caseId],
    ];
    const auth = wild ? rng.int(0, 14) : 14;
    if (auth === 0) notes.push('no admin key');
    else if (auth === 1) headers.push(['Authorization', 'Bearer wrong-admin-key-0123456789']);
    else if (auth === 2) headers.push(['Authorization', `Bearer ${ADMIN_KEY}`], ['authorization', `Bearer ${ADMIN_KEY}`]);
    else headers.push(['Authorization', `Bearer ${ADMIN_KEY}`]);
    let choice: BodyChoice = { body: null, isBase64Encoded: false, what: 'no body' };
    if (method === 'PUT' || rng.chance(0.1)) {
      choice = rng.chance(0.6)
        ? { body: rng.pick(['{}', '{"monthly_budget_usd":5}', '{"blocked":"yes"}', '{"rate_limits":["100;w=60"]}', '[', '{"unknown":1}', 'null', '{"monthly_budget_usd":1e400}']), isBase64Encoded: false, what: 'limits body' }
        : bodyChoice(rng, index, wild);
      headers.push(['Content-Type', rng.chance(0.8) ? 'application/json' : rng.pick(CONTENT_TYPES)]);
      notes.push(choice.what);
    }
    if (wild && rng.chance(0.3)) {
      const name = rng.chance(0.6) ? rng.pick(['X-Extra', 'Cookie', 'Accept', 'x-forwarded-prefix', 'Content-Length', 'Origin']) : rng.pick(ODD_HEADER_NAMES);
      const value = headerValue(rng, rng.chance(0.5));
      headers.push([name, value]);
      notes.push(`header ${JSON.stringify(name.slice(0, 30))}: ${JSON.stringify(value.slice(0, 30))}`);
    }
    if (wild && rng.chance(0.05)) headers[0] = ['Host', rng.pick(['999.999.999.999', '[::1]:99999', 'a:70000', 'evil.example/@x', ''])];
    notes.push(placePairs(rng, event, headers, 'headers', 'multiValueHeaders', wild));
    const query = queryPairs(rng, true, wild);
    if (query.length > 0) notes.push(`query ${JSON.stringify(query).slice(0, 80)}`);
    placePairs(rng, event, query, 'queryStringParameters', 'multiValueQueryStringParameters', wild);
    const stage = stagePath(rng, path, wild);
    notes.push(stage.what, requestContextChoice(rng, event, stage.publicPath, wild));
    event.body = choice.body;
    event.isBase64Encoded = choice.isBase64Encoded;
    cases.push({ family: 'metrics', index, what: notes.join(', '), event, caseId, ...(expect !== undefined ? { expect } : {}) });
  }
  return cases;
}

// ---------------------------------------------------------------------------------------------------------------

before(async () => {
  restoreAwslambda = installAwslambdaShim();
  upstreamServer = createServer(answerUpstream);
  await new Promise<void>((resolve) => upstreamServer.listen(0, '127.0.0.1', resolve));
  upstreamUrl = `http://127.0.0.1:${(upstreamServer.address() as AddressInfo).port}`;
  [dynamo, firehose, s3, athena] = await Promise.all([startDynalite(), FakeFirehose.start(), FakeS3.start(), FakeAthena.start()]);
  secrets = await startFakeSecretsManager({ [ADMIN_SECRET_ID]: JSON.stringify({ key: ADMIN_KEY }) });
  gatewayKey = (await createGatewayKey(dynamo.client, dynamo.tableName, 'fuzz')).key;
  // FUZZ_CASE also shows what the gateway logged for it.
  const log = createLogger('debug', (line) => {
    logLines.push(line);
    if (ONLY !== undefined) process.stderr.write(`${line}\n`);
  });
  const s3Client = new S3Client({ endpoint: s3.endpoint, forcePathStyle: true, region: TEST_REGION, credentials: FAKE_CREDENTIALS });
  // dynalite runs in this process, sharing its event loop with thousands of generated cases: on a loaded machine an
  // answer can take longer than the 3 s a call to DynamoDB itself is given, which would log an (ambiguous) counter
  // failure that is no fault of the adapters.
  const counters = createCounterStoreClient({
    endpoint: dynamo.endpoint,
    region: TEST_REGION,
    credentials: FAKE_CREDENTIALS,
    requestHandler: { connectionTimeout: 10_000, requestTimeout: 30_000, throwOnRequestTimeout: true },
  });
  const proxyApp = createProxyApp(
    proxyLambdaConfigFromEnv({
      UPSTREAM_OPENAI_URL: upstreamUrl,
      EVENTS_STREAM_NAME: STREAM,
      COUNTERS_TABLE_NAME: dynamo.tableName,
      RECOVERY_BUCKET_NAME: 'usage-log',
      MAX_BODY_BYTES: String(MAX_BODY_BYTES),
      LOG_LEVEL: 'debug',
    }),
    {
      firehose: createFirehoseClient(TEST_REGION, { endpoint: firehose.endpoint, credentials: FAKE_CREDENTIALS }),
      s3: s3Client,
      counters,
      keys: dynamo.client,
      loadTokenizer: async () => (await import('../../lambda/tokenizer')).o200kCounter,
    },
    log,
  );
  // The deployed composition (see proxy-app.ts) without the AWS clients: no limiter, keys and usage in memory.
  const memoryProxy = createProxy({
    config: proxyConfigFromEnv({ UPSTREAM_OPENAI_URL: upstreamUrl, MAX_BODY_BYTES: String(MAX_BODY_BYTES) }),
    gatewayKeys: new StaticKeyStore([gatewayKey]),
    recorder: new UsageRecorder({ sink: memorySink, counters: new RecordingCounters(), log }),
    tokenCounter: lazyTokenCounter(async () => (await import('../../lambda/tokenizer')).o200kCounter),
    log,
  });
  const memoryApp = createGateway({
    proxy: memoryProxy,
    metrics: async () => errorResponse(new NotFoundError('unknown_route', 'The metrics API is served under /metrics by its own function.')),
    extra: { '/healthz': async (request) => healthCheck(request) },
  });
  proxyFunctions = {
    aws: awslambdaShim.streamifyResponse(streamingHandler(proxyApp, { logger: log })) as ProxyFunction,
    memory: awslambdaShim.streamifyResponse(streamingHandler(memoryApp, { logger: log })) as ProxyFunction,
  };
  const metricsApp = createMetricsApp(
    metricsLambdaConfigFromEnv({
      COUNTERS_TABLE_NAME: dynamo.tableName,
      ADMIN_KEY_SECRET_ARN: ADMIN_SECRET_ID,
      ATHENA_WORKGROUP: 'usage',
      ATHENA_DATABASE: 'usage_db',
      ATHENA_TABLE: 'usage_events',
      RESULTS_BUCKET_NAME: 'athena-results',
      QUERY_WAIT_MS: '0',
      LOG_LEVEL: 'debug',
    }),
    {
      counters,
      athena: new AthenaClient({ endpoint: athena.endpoint, region: TEST_REGION, credentials: FAKE_CREDENTIALS, maxAttempts: 1 }),
      secrets: new SecretsManagerClient({ endpoint: secrets.endpoint, region: TEST_REGION, credentials: FAKE_CREDENTIALS }),
      s3: s3Client,
    },
    log,
  );
  metricsFunction = bufferedHandler(metricsApp, { logger: log });
});

after(async () => {
  restoreAwslambda?.();
  upstreamServer?.closeAllConnections();
  await Promise.all([dynamo?.close(), firehose?.close(), s3?.close(), athena?.close(), secrets?.close(), new Promise((resolve) => upstreamServer?.close(resolve) ?? resolve(undefined))]);
});

const PHASE = { timeout: 120_000 };

describe('generated API Gateway events through the Lambda adapters', () => {
  const rng = new Prng(SEED);

  it('proxy events through the streaming handler: never a throw, a 5xx of its own, or a refused request upstream', PHASE, async () => {
    await runAll(proxyCases(rng.fork('proxy'), scaled(2600)));
  });

  it('metrics events through the buffered handler: never a throw or a 5xx of its own, errors in the JSON shape', PHASE, async () => {
    await runAll(metricsCases(rng.fork('metrics'), scaled(1400)));
  });

  it('one upstream request and one usage event per answer the upstream gave, and none for refusals', { skip: ONLY !== undefined }, (t) => {
    const outcomes = new Map<string, number>();
    for (const answer of answered) {
      const key = `${answer.family} ${answer.fromUpstream ? 'upstream' : 'gateway'} ${answer.status}${answer.code === null ? '' : ` ${answer.code}`}`;
      outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
    }
    t.diagnostic(`outcomes: ${JSON.stringify(Object.fromEntries([...outcomes].sort((a, b) => b[1] - a[1])))}`);
    const forwarded = answered.filter((answer) => answer.fromUpstream).length;
    assert.equal(upstreamRequests.length, forwarded, 'upstream requests = answers from the upstream');
    assert.equal(new Set(upstreamRequests.map((request) => request.caseId)).size, upstreamRequests.length, 'each forwarded case reached the upstream once');
    const forwardedBy = (app: ProxyApp) => answered.filter((answer) => answer.fromUpstream && answer.app === app).length;
    assert.equal(firehose.records(STREAM).length, forwardedBy('aws'), 'usage events in Firehose = answers from the upstream through the deployed app');
    assert.equal(memorySink.events.length, forwardedBy('memory'), 'usage events in memory = answers from the upstream through the in-memory app');
    assert.ok(forwardedBy('aws') > scaled(100), `enough events went through the deployed app to the upstream (${forwardedBy('aws')})`);
    assert.ok(forwarded > scaled(600), `enough events were forwarded to exercise the upstream path (${forwarded})`);
    const refused = answered.filter((answer) => !answer.fromUpstream && answer.status >= 400).length;
    assert.ok(refused > scaled(600), `enough events were refused (${refused})`);
  });

  it('logged no fault of the gateway, and ran thousands of cases', () => {
    const faults = logLines.filter((line) => (JSON.parse(line) as { level: string }).level === 'error');
    assert.deepEqual(faults.slice(0, 5).map((line) => line.slice(0, 600)), [], 'no error-level log line');
    if (ONLY === undefined) assert.ok(casesRun >= scaled(4000), `ran ${casesRun} cases`);
  });
});

/** A fault the generated events found behind the adapters, in the core's metrics API on DynamoDB. */
describe('faults found behind the adapters', () => {
  const lookup = (path: string) => {
    const event = baseEvent();
    event.httpMethod = 'GET';
    event.path = path;
    event.headers = { Host: 'abc123.execute-api.eu-west-1.amazonaws.com', Authorization: `Bearer ${ADMIN_KEY}` };
    event.multiValueHeaders = { Host: ['abc123.execute-api.eu-west-1.amazonaws.com'], Authorization: [`Bearer ${ADMIN_KEY}`] };
    event.queryStringParameters = null;
    event.multiValueQueryStringParameters = null;
    event.body = null;
    return metricsFunction(event as unknown as APIGatewayProxyEvent);
  };

  it('a path user id longer than any stored one (and than a DynamoDB key holds) is a 400 naming it, not a 500', async () => {
    for (const id of ['a'.repeat(257), 'a'.repeat(3_000)]) {
      for (const path of [`/metrics/users/${id}`, `/metrics/users/${id}/limits`]) {
        const result = await lookup(path);
        assert.equal(result.statusCode, 400, `${path.slice(0, 40)}…: ${result.statusCode} ${result.body.slice(0, 200)}`);
        const error = (JSON.parse(result.body) as { error: { code: string; param: string } }).error;
        assert.deepEqual([error.code, error.param], ['invalid_user_id', 'userId']);
      }
    }
    const longest = await lookup(`/metrics/users/${'a'.repeat(256)}`);
    assert.equal(longest.statusCode, 404, 'an id at the limit is looked up (and unknown)');
  });
});
