/**
 * Bad input, generated: thousands of seeded cases sent as raw bytes to the real local server (node:http adapter,
 * DuckDB and event files) in front of the fake upstream. Broken and oversized bodies, invalid UTF-8, control
 * characters in user ids and properties, lying framing, odd methods and targets, huge header blocks, malformed
 * answers from the upstream, and random metrics queries.
 *
 * For every case: the server keeps answering `/healthz`; a 5xx only ever comes from the upstream; every answer
 * the gateway makes itself is a JSON error with `message`, `type`, `code` and the `param` at fault; and, at the
 * end, every request that reached the upstream left exactly one usage event, and no other request left one.
 *
 * `FUZZ_SEED=<n>` replays another sequence; a failure names the case's family, index and seed.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { localConfigFromEnv } from '../../lambda/core/config';
import { createLogger } from '../../lambda/core/log';
import type { UsageEvent } from '../../lambda/core/usage-event';
import { readEvents } from '../../lambda/local/event-files';
import { openLocalGateway, type LocalGateway } from '../../lambda/local/local-gateway';
import { serve, type NodeServer } from '../../lambda/local/node-adapter';
import { GARBAGE_KINDS, startFakeUpstream, type FakeUpstream, type GarbageKind } from '../support/fake-upstream';
import { Prng } from '../support/prng';
import { rawExchange, rawRequest, type RawExchange, type RawHeader, type RawRequestOptions, type RawResponse } from '../support/raw-http';

const SEED = Number(process.env.FUZZ_SEED ?? 20261122);
const GATEWAY_KEY = 'gw_fuzz_key_0123456789abcdef';
const METRICS_KEY = 'mk_fuzz_key_0123456789abcdef';
const PROVIDER_KEY = 'sk-fuzz-provider-key-0123456789';
/** Small, so generated bodies cross it often. */
const MAX_BODY_BYTES = 64 * 1024;
const CONCURRENCY = 8;
/** `FUZZ_SCALE=0.1` runs a tenth of the cases (a quick look), `FUZZ_SCALE=10` ten times as many. */
const SCALE = Number(process.env.FUZZ_SCALE ?? 1);
const scaled = (count: number) => Math.max(1, Math.round(count * SCALE));

const AUTH: readonly RawHeader[] = [
  ['Authorization', `Bearer ${PROVIDER_KEY}`],
  ['Helicone-Auth', `Bearer ${GATEWAY_KEY}`],
];
const METRICS_AUTH: RawHeader = ['Authorization', `Bearer ${METRICS_KEY}`];

let upstream: FakeUpstream;
let dataDir: string;
let gateway: LocalGateway;
let server: NodeServer;
let port: number;
const logLines: string[] = [];

/** What the gateway should do with a proxy request: forward it, or refuse it with this status, code and param. */
type Verdict = 'forward' | { readonly status: number; readonly code: string; readonly param: string | null | RegExp };

interface FuzzCase {
  readonly family: string;
  readonly index: number;
  /** A short description for failure messages (never the whole body). */
  readonly what: string;
  readonly request: Buffer;
  readonly endAfterSend?: boolean;
  readonly head?: boolean;
  /** The expected outcome of the first answer, when the case can predict it. */
  readonly verdict?: Verdict;
  /** Case-specific checks of the exchange, after the common ones. */
  check?(exchange: RawExchange, label: string): void | Promise<void>;
}

/** Every answer seen, for the accounting at the end. */
const answers: { readonly label: string; readonly response: RawResponse }[] = [];
let casesRun = 0;

function labelOf(c: FuzzCase): string {
  const label = `${c.family}#${c.index} (seed ${SEED}): ${c.what}`;
  // FUZZ_DEBUG=1 adds the request's first bytes to failure messages.
  return process.env.FUZZ_DEBUG ? `${label}\n${JSON.stringify(c.request.subarray(0, 1500).toString('latin1'))}` : label;
}

/** Answers from the fake upstream carry its `openai-version` header; the gateway's own answers never do. */
function fromUpstream(response: RawResponse): boolean {
  return response.headers['openai-version'] !== undefined;
}

/**
 * The one upstream failure this file provokes: the fake drops the connection on a model id that is not valid
 * percent-encoding, so the gateway must answer 502 `upstream_unreachable` and meter it.
 */
const DROPPED_BY_UPSTREAM = '/v1/models/%ZZ';

/** The gateway's own 502 for an upstream that failed, told apart from a fault of the gateway by its code. */
function upstreamFailure(response: RawResponse): boolean {
  if (fromUpstream(response) || response.status !== 502) return false;
  try {
    return errorOf(response).code === 'upstream_unreachable';
  } catch {
    return false;
  }
}

const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

/** The checks every answer must pass, whatever the request was. */
function checkAnswer(response: RawResponse, label: string, head: boolean): void {
  answers.push({ label, response });
  if (fromUpstream(response)) return;
  if (upstreamFailure(response)) {
    assert.ok(label.includes(DROPPED_BY_UPSTREAM), `${label}: 502 upstream_unreachable, yet the upstream was not made to fail`);
    return;
  }
  assert.ok(response.status < 500, `${label}: the gateway itself answered ${response.status}: ${response.body.toString('utf8').slice(0, 300)}`);
  if (response.status < 400) return;
  const type = response.headers['content-type'] ?? '';
  assert.match(type, /^application\/json/, `${label}: a gateway error is JSON, got "${type}"`);
  if (head) return;
  let body: { error?: Record<string, unknown> };
  try {
    body = JSON.parse(response.body.toString('utf8')) as typeof body;
  } catch {
    assert.fail(`${label}: a gateway error body is not JSON: ${response.body.toString('latin1').slice(0, 200)}`);
  }
  const error = body.error;
  assert.ok(error !== undefined && typeof error === 'object', `${label}: the error body has an "error" object`);
  assert.equal(typeof error.message, 'string', `${label}: error.message`);
  assert.ok((error.message as string).length > 0, `${label}: error.message is not empty`);
  assert.equal(typeof error.type, 'string', `${label}: error.type`);
  assert.equal(typeof error.code, 'string', `${label}: error.code`);
  assert.ok('param' in error, `${label}: error.param is present (null when no parameter is at fault)`);
  if (PARAMETER_CODES.has(error.code as string)) {
    assert.equal(typeof error.param, 'string', `${label}: ${String(error.code)} names the parameter at fault`);
  }
}

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
  'body_too_large',
  'incomplete_body',
  'invalid_rate_limit_policy',
  'invalid_request_target',
  'invalid_parameter',
  'unknown_parameter',
  'invalid_cursor',
  'invalid_path',
  'invalid_range',
  'unknown_user',
  'invalid_limits',
  'unsupported_media_type',
  'expectation_failed',
]);

function errorOf(response: RawResponse): { code: string; param: string | null } {
  const parsed = JSON.parse(response.body.toString('utf8')) as { error: { code: string; param: string | null } };
  return parsed.error;
}

function checkVerdict(response: RawResponse, verdict: Verdict, label: string): void {
  if (verdict === 'forward') {
    assert.ok(fromUpstream(response), `${label}: should reach the upstream, got ${response.status} ${response.body.toString('utf8').slice(0, 300)}`);
    return;
  }
  assert.ok(!fromUpstream(response), `${label}: should be refused (${verdict.code}) before the upstream, got its ${response.status}`);
  const error = errorOf(response);
  assert.equal(response.status, verdict.status, `${label}: status (${error.code}: ${JSON.stringify(error)})`);
  assert.equal(error.code, verdict.code, `${label}: code`);
  if (verdict.param instanceof RegExp) assert.match(String(error.param), verdict.param, `${label}: param`);
  else assert.equal(error.param, verdict.param, `${label}: param`);
}

async function runCase(c: FuzzCase): Promise<void> {
  const label = labelOf(c);
  const exchange = await rawExchange(port, c.request, { endAfterSend: c.endAfterSend ?? false, head: c.head ?? false });
  casesRun++;
  assert.ok(exchange.responses.length > 0, `${label}: no answer at all (${exchange.raw.byteLength} bytes, reset: ${exchange.reset})`);
  for (const response of exchange.responses) checkAnswer(response, label, c.head ?? false);
  if (c.verdict !== undefined) checkVerdict(exchange.responses[0]!, c.verdict, label);
  await c.check?.(exchange, label);
}

/** Runs cases a few at a time, then proves the server still answers its health check. */
async function runAll(cases: readonly FuzzCase[]): Promise<void> {
  let next = 0;
  const failures: unknown[] = [];
  const worker = async () => {
    while (next < cases.length && failures.length === 0) {
      const c = cases[next++]!;
      try {
        await runCase(c);
      } catch (error) {
        failures.push(error);
      }
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  if (failures.length > 0) throw failures[0];
  await assertHealthy();
}

async function assertHealthy(): Promise<void> {
  const exchange = await rawExchange(port, rawRequest({ method: 'GET', target: '/healthz' }));
  assert.equal(exchange.responses[0]?.status, 200, 'the server still answers /healthz');
}

function proxyRequest(options: Partial<RawRequestOptions> & { headers?: readonly RawHeader[] }): Buffer {
  return rawRequest({ method: 'POST', target: '/v1/chat/completions', ...options, headers: options.headers ?? AUTH });
}

// ---------------------------------------------------------------------------------------------------------------
// What the gateway does with a request: a model of the documented rules, checked against what it really does.

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const PROPERTY_NAME = /^[A-Za-z0-9_-]{1,64}$/;
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** Whether node:http accepts a header line at all: a token name, and no control byte but HTAB in the value. */
function parsableHeader(name: string, value: Buffer): boolean {
  if (!TOKEN.test(name)) return false;
  for (const byte of value) if ((byte < 0x20 && byte !== 0x09) || byte === 0x7f) return false;
  return true;
}

/** A header value as the gateway reads it: latin1, without surrounding spaces and tabs. */
function headerText(value: Buffer): string {
  return value.toString('latin1').replace(/^[\t ]+|[\t ]+$/g, '');
}

function checkUserIdRule(value: string, param: string): Verdict | null {
  if (value.length === 0 || value.length > 256 || CONTROL.test(value)) return { status: 400, code: 'invalid_user_id', param };
  return null;
}

function isJsonType(contentType: string | undefined): boolean {
  if (contentType === undefined) return false;
  const type = contentType.split(';')[0]!.trim().toLowerCase();
  return type === 'application/json' || type.endsWith('+json');
}

interface ProxyRequestModel {
  readonly headers: readonly RawHeader[];
  readonly body: Buffer | undefined;
}

/**
 * How the gateway reads a body: as JSON when labelled JSON (refusing bad UTF-8 or syntax) or when it starts like
 * an object (then only if it parses); identity comes only from an object.
 */
function readModelBody(body: Buffer | undefined, contentType: string | undefined): { refusal?: Verdict; object?: Record<string, unknown> } {
  if (body === undefined || body.byteLength === 0) return {};
  const json = isJsonType(contentType);
  if (!json && !/^[ \t\r\n]*\{/.test(body.toString('latin1'))) return {};
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(body);
  } catch {
    return json ? { refusal: { status: 400, code: 'invalid_body', param: 'body' } } : {};
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return json ? { refusal: { status: 400, code: 'invalid_json', param: 'body' } } : {};
  }
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? { object: value as Record<string, unknown> } : {};
}

/**
 * The verdict the README's rules give, in the order the gateway checks them: request id, gateway key, properties
 * (by name, as `Headers` lists them), body size and syntax, then the user id (header first, then body fields).
 * Null when node:http refuses the header block itself; undefined when a value holds CR or LF, which starts a new
 * header line (or ends the block) on the wire, so the request's shape is node's call.
 */
function expectedVerdict(model: ProxyRequestModel): Verdict | null | undefined {
  const values = new Map<string, string>();
  for (const [, raw] of model.headers) {
    const value = Buffer.isBuffer(raw) ? raw : Buffer.from(raw, 'latin1');
    if (value.includes(0x0d) || value.includes(0x0a)) return undefined;
  }
  for (const [name, raw] of model.headers) {
    const value = Buffer.isBuffer(raw) ? raw : Buffer.from(raw, 'latin1');
    if (!parsableHeader(name, value)) return null;
    const key = name.toLowerCase();
    const text = headerText(value);
    values.set(key, values.has(key) ? `${values.get(key)}, ${text}` : text);
  }
  const requestId = values.get('helicone-request-id');
  if (requestId !== undefined && !UUID.test(requestId.trim())) {
    return { status: 400, code: 'invalid_request_id', param: 'Helicone-Request-Id' };
  }
  const auth = values.get('helicone-auth');
  const token = auth === undefined ? null : /^\s*Bearer\s+(\S+)\s*$/i.exec(auth)?.[1] ?? null;
  if (token === null) return { status: 401, code: 'missing_gateway_key', param: 'Helicone-Auth' };
  if (token !== GATEWAY_KEY) return { status: 401, code: 'invalid_gateway_key', param: 'Helicone-Auth' };
  let count = 0;
  for (const name of [...values.keys()].sort()) {
    if (!name.startsWith('helicone-property-')) continue;
    const propertyName = name.slice('helicone-property-'.length);
    if (!PROPERTY_NAME.test(propertyName)) return { status: 400, code: 'invalid_property', param: name.slice(0, 100) };
    count++;
    if (count > 20) return { status: 400, code: 'too_many_properties', param: name };
    const value = values.get(name)!.trim();
    if (value.length > 256 || CONTROL.test(value)) return { status: 400, code: 'invalid_property', param: name };
  }
  if (model.body !== undefined && model.body.byteLength > MAX_BODY_BYTES) return { status: 413, code: 'body_too_large', param: 'body' };
  const { refusal, object: parsed } = readModelBody(model.body, values.get('content-type'));
  if (refusal !== undefined) return refusal;
  const userHeader = values.get('helicone-user-id');
  if (userHeader !== undefined) return checkUserIdRule(userHeader.trim(), 'Helicone-User-Id') ?? 'forward';
  for (const field of ['user', 'safety_identifier'] as const) {
    const value = parsed?.[field];
    if (value === undefined || value === null || value === '') continue;
    if (typeof value !== 'string') return { status: 400, code: 'invalid_user_id', param: field };
    return checkUserIdRule(value, field) ?? 'forward';
  }
  return 'forward';
}

/** The user id and properties a forwarded request must be billed with. */
function expectedIdentity(model: ProxyRequestModel): { userId: string | null; properties: Record<string, string> } {
  const values = new Map<string, string>();
  for (const [name, raw] of model.headers) {
    const key = name.toLowerCase();
    const text = headerText(Buffer.isBuffer(raw) ? raw : Buffer.from(raw, 'latin1'));
    values.set(key, values.has(key) ? `${values.get(key)}, ${text}` : text);
  }
  const properties: Record<string, string> = {};
  for (const [name, value] of values) {
    if (name.startsWith('helicone-property-')) properties[name.slice('helicone-property-'.length)] = value.trim();
  }
  let userId: string | null = values.get('helicone-user-id')?.trim() ?? null;
  if (userId === null) {
    const parsed = readModelBody(model.body, values.get('content-type')).object;
    for (const field of ['user', 'safety_identifier']) {
      const value = parsed?.[field];
      if (typeof value === 'string' && value !== '') {
        userId = value;
        break;
      }
    }
  }
  return { userId, properties };
}

/** Forwarded requests whose usage event must carry this identity, checked once events are on disk. */
const identityChecks = new Map<string, { label: string; userId: string | null; properties: Record<string, string> }>();

function modelCase(family: string, index: number, what: string, model: ProxyRequestModel, extra: Partial<RawRequestOptions> = {}): FuzzCase {
  const verdict = expectedVerdict(model);
  const request = proxyRequest({ headers: model.headers, ...(model.body === undefined ? {} : { body: model.body }), ...extra });
  return {
    family,
    index,
    what,
    request,
    ...(verdict === undefined ? {} : { verdict: verdict ?? { status: 400, code: 'bad_http', param: null } }),
    check(exchange, label) {
      const response = exchange.responses[0]!;
      if (verdict !== 'forward') return;
      const id = response.headers['helicone-id'];
      assert.ok(id, `${label}: a forwarded answer carries Helicone-Id`);
      identityChecks.set(id, { label, ...expectedIdentity(model) });
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Generators

const MODELS = ['gpt-4o-mini', 'gpt-4o', 'o3-mini', 'text-embedding-3-small', 'gpt-3.5-turbo-instruct', 'no-such-model', ''];
const PRINTABLE = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_.@:/+=!?#$%&*()[]{}<>,;\'"`~^|\\';

function randomText(rng: Prng, max: number): string {
  const length = rng.int(0, max);
  let text = rng.string(PRINTABLE, length);
  if (rng.chance(0.2)) text += rng.pick(['é', '🌍', '\u0000', '\u0085', '\n', '\t', '\u202e', '\ud800', '\\u0000', '日本語']);
  return text;
}

/** A user id of any sort: fine, empty, too long, with control characters, or not a string at all. */
function randomBodyUser(rng: Prng): unknown {
  switch (rng.int(0, 9)) {
    case 0:
      return '';
    case 1:
      return 'u'.repeat(rng.int(250, 300));
    case 2:
      return `user\u0000${rng.int(0, 99)}`;
    case 3:
      return `user\n${rng.int(0, 99)}`;
    case 4:
      return rng.int(0, 1000);
    case 5:
      return { id: 'nested' };
    case 6:
      return null;
    case 7:
      return `user\u009b${rng.int(0, 9)}`;
    default:
      return `fuzz-user-${rng.int(0, 40)}`;
  }
}

function randomRequestObject(rng: Prng, endpoint: string): Record<string, unknown> {
  const body: Record<string, unknown> = { model: rng.pick(MODELS) };
  const text = randomText(rng, 60);
  if (endpoint === 'chat') body.messages = rng.chance(0.9) ? [{ role: rng.pick(['user', 'system', 'assistant', 'tool', 42]), content: rng.chance(0.8) ? text : [{ type: 'text', text }] }] : rng.pick([null, 'hi', [], {}]);
  if (endpoint === 'completions') body.prompt = rng.chance(0.8) ? text : rng.pick([[1, 2, 3], null, 7]);
  if (endpoint === 'responses') body.input = rng.chance(0.8) ? text : rng.pick([[{ role: 'user', content: text }], null, 3]);
  if (endpoint === 'embeddings') body.input = rng.chance(0.8) ? text : rng.pick([[text, text], [[1, 2]], null]);
  if (rng.chance(0.3)) body.stream = rng.pick([true, false, 'yes', 1, null]);
  if (rng.chance(0.2)) body.stream_options = rng.pick([{ include_usage: true }, { include_usage: false }, null, 'x', [], { other: 1 }]);
  if (rng.chance(0.2)) body.max_tokens = rng.pick([1, 16, 4096, -1, 1e308, 'many', null, 2 ** 53]);
  if (rng.chance(0.1)) body.max_output_tokens = rng.pick([1, 99999999, -5, 'x']);
  if (rng.chance(0.3)) body.user = randomBodyUser(rng);
  if (rng.chance(0.1)) body.safety_identifier = randomBodyUser(rng);
  if (rng.chance(0.05)) body['constructor'] = { prototype: { polluted: true } };
  return body;
}

/** Ways to break a JSON text. */
function mutateJson(rng: Prng, text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  switch (rng.int(0, 11)) {
    case 0:
      return bytes.subarray(0, rng.int(0, bytes.byteLength)); // truncated
    case 1: {
      const copy = Buffer.from(bytes); // one byte changed
      if (copy.byteLength > 0) copy[rng.int(0, copy.byteLength - 1)] = rng.int(0, 255);
      return copy;
    }
    case 2: {
      const at = rng.int(0, bytes.byteLength); // invalid UTF-8 spliced in
      return Buffer.concat([bytes.subarray(0, at), Buffer.from(rng.pick([[0xff], [0xc3, 0x28], [0xed, 0xa0, 0x80], [0xf8, 0x88, 0x80, 0x80, 0x80], [0xe2, 0x82], [0xc0, 0xaf]])), bytes.subarray(at)]);
    }
    case 3:
      return rng.bytes(rng.int(1, 300)); // noise
    case 4:
      return Buffer.from(`${'['.repeat(rng.int(1000, 20000))}${rng.chance(0.5) ? ']'.repeat(100) : ''}`); // deep
    case 5: // duplicate keys, and keys that name Object internals
      return Buffer.from(`{"__proto__":{"polluted":true},"model":"gpt-4o-mini","model":"x","messages":[],"user":"dup","user":"${rng.int(0, 9)}","stream":true}`);
    case 6:
      return Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), bytes]); // byte order mark
    case 7:
      return Buffer.from(rng.pick(['null', '[]', '"just a string"', '123', 'true', '{}', ' ', '\u0000', 'NaN', '{"a":Infinity}', "{'single':'quotes'}"]));
    case 8:
      return Buffer.from(text.replace(/"/g, rng.pick(['\u201c', "'", '\\"', '']))); // unicode quotes
    case 9:
      return Buffer.from(`${text}${rng.pick([',', '}', 'garbage', '\u0000', '\n\n{"second":1}'])}`); // trailing garbage
    case 10:
      return Buffer.from(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"${'\\u'.padEnd(rng.int(2, 6), 'd')}"}]}`); // broken escapes
    default:
      return Buffer.from(`{"model":"gpt-4o-mini","n":${rng.pick(['1e999', '-0', '00', '0x10', '1.', '.5', '+1', '9'.repeat(400)])}}`); // number edge cases
  }
}

const CONTENT_TYPES = [
  'application/json',
  'application/json; charset=utf-8',
  'APPLICATION/JSON',
  'application/problem+json',
  'application/json; charset=latin1',
  'text/plain',
  'text/json',
  'application/x-www-form-urlencoded',
  'multipart/form-data; boundary=xyz',
  'application/octet-stream',
  '',
  ';;;',
];
const ENDPOINTS: Record<string, string> = {
  chat: '/v1/chat/completions',
  completions: '/v1/completions',
  responses: '/v1/responses',
  embeddings: '/v1/embeddings',
};

/** Bodies: well-formed, oddly typed, broken, non-UTF-8, under every content type. */
function bodyCases(rng: Prng, count: number): FuzzCase[] {
  const cases: FuzzCase[] = [];
  for (let i = 0; i < count; i++) {
    const endpoint = rng.pick(Object.keys(ENDPOINTS));
    const object = randomRequestObject(rng, endpoint);
    const text = JSON.stringify(object);
    const broken = rng.chance(0.45);
    const body = broken ? mutateJson(rng, text) : Buffer.from(text, 'utf8');
    const contentType = rng.chance(0.65) ? 'application/json' : rng.pick(CONTENT_TYPES);
    const headers: RawHeader[] = [...AUTH];
    if (contentType !== '' || rng.chance(0.5)) headers.push(['Content-Type', contentType]);
    if (rng.chance(0.1)) headers.push(['Helicone-User-Id', `body-fuzz-${rng.int(0, 20)}`]);
    const framing = rng.chance(0.15) ? 'chunked' : 'length';
    cases.push(
      modelCase('body', i, `${endpoint} ${broken ? 'broken' : 'whole'} ${body.byteLength}B as "${contentType}" ${framing}`, { headers, body }, {
        target: ENDPOINTS[endpoint]!,
        framing,
      }),
    );
  }
  return cases;
}

/** Pieces header values are made of; the dangerous bytes are the point. */
const VALUE_PIECES: readonly (() => Buffer)[] = [
  () => Buffer.from('user'),
  () => Buffer.from('42'),
  () => Buffer.from(' '),
  () => Buffer.from('\t'),
  () => Buffer.from('@example.com'),
  () => Buffer.from('\u00e9', 'latin1'), // é as one latin1 byte
  () => Buffer.from('é🌍', 'utf8'), // UTF-8 bytes, read as latin1 by HTTP
  () => Buffer.from([0xa0]), // no-break space
  () => Buffer.from([0x85]), // C1 next line
  () => Buffer.from([0x9b]), // C1 CSI
  () => Buffer.from([0x00]),
  () => Buffer.from([0x1b]), // ESC
  () => Buffer.from([0x7f]),
  () => Buffer.from('\r'),
  () => Buffer.from('\n'),
  () => Buffer.from('\r\nX-Injected: 1'),
  () => Buffer.from('"; DROP TABLE user_totals; --'),
  () => Buffer.from('x'.repeat(120)),
];

function randomValue(rng: Prng, dangerous: boolean): Buffer {
  const pieces: Buffer[] = [];
  const count = rng.int(1, 5);
  for (let i = 0; i < count; i++) {
    pieces.push(dangerous ? rng.pick(VALUE_PIECES)() : rng.pick(VALUE_PIECES.slice(0, 8))());
  }
  return Buffer.concat(pieces);
}

const NAME_PIECES = ['plan', 'team', 'Feature', 'A_b-9', 'x'.repeat(70), '', 'a.b', 'a!b', "a'b", 'a~b', 'a b', 'é', 'a@b', 'a/b'];

/** Identity and segmentation headers: user ids, properties, request ids, gateway keys and rate-limit policies. */
function headerCases(rng: Prng, count: number): FuzzCase[] {
  const cases: FuzzCase[] = [];
  for (let i = 0; i < count; i++) {
    const headers: RawHeader[] = [['Authorization', `Bearer ${PROVIDER_KEY}`]];
    const notes: string[] = [];
    const auth = rng.int(0, 19);
    if (auth === 0) notes.push('no gateway key');
    else if (auth === 1) headers.push(['Helicone-Auth', 'Bearer wrong-key-0123456789']);
    else if (auth === 2) headers.push(['helicone-auth', `bearer   ${GATEWAY_KEY}  `]);
    else if (auth === 3) headers.push(['Helicone-Auth', GATEWAY_KEY]);
    else headers.push(['Helicone-Auth', `Bearer ${GATEWAY_KEY}`]);
    if (rng.chance(0.75)) {
      const value = randomValue(rng, rng.chance(0.6));
      headers.push([rng.pick(['Helicone-User-Id', 'helicone-user-id', 'HELICONE-USER-ID']), value]);
      notes.push(`user id ${JSON.stringify(value.toString('latin1').slice(0, 40))}`);
      if (rng.chance(0.05)) headers.push(['Helicone-User-Id', randomValue(rng, false)]);
    }
    const properties = rng.chance(0.15) ? rng.int(18, 23) : rng.int(0, 4);
    for (let p = 0; p < properties; p++) {
      const name = rng.chance(0.85) ? `${rng.pick(NAME_PIECES.slice(0, 4))}${p}` : rng.pick(NAME_PIECES);
      headers.push([`Helicone-Property-${name}`, randomValue(rng, rng.chance(0.4))]);
    }
    if (properties > 0) notes.push(`${properties} properties`);
    if (rng.chance(0.1)) {
      const id = rng.pick([crypto.randomUUID(), crypto.randomUUID().toUpperCase(), 'not-a-uuid', `${crypto.randomUUID()}x`, ' ']);
      headers.push(['Helicone-Request-Id', id]);
      notes.push(`request id "${id}"`);
    }
    const policy = rng.chance(0.1) ? rng.pick(['100000;w=60', '100000;w=3600;u=request;s=user', '5;w=1', 'abc', ';;', '0;w=60', '1e9;w=60', '100000;w=60;s=team']) : undefined;
    if (policy !== undefined) notes.push(`policy "${policy}"`);
    for (let x = rng.int(0, 3); x > 0; x--) headers.push([`X-Fuzz-${x}`, randomValue(rng, false)]);
    const withBody = rng.chance(0.5);
    const body = withBody ? Buffer.from(JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: `header fuzz ${i}` }] })) : undefined;
    if (withBody) headers.push(['Content-Type', 'application/json']);
    const model = { headers, body };
    const c = modelCase('headers', i, notes.join(', ') || 'plain', model, withBody ? {} : { method: 'GET', target: '/v1/models' });
    if (policy !== undefined) {
      headers.push(['Helicone-RateLimit-Policy', policy]);
      // A malformed policy is refused after every other check; a generous one changes nothing.
      const base = c.verdict;
      const valid = /^100000;/.test(policy);
      const request = proxyRequest({ headers, ...(body === undefined ? { method: 'GET', target: '/v1/models' } : { body }) });
      const verdict: Verdict | undefined = base === 'forward' && !valid ? { status: 400, code: 'invalid_rate_limit_policy', param: 'Helicone-RateLimit-Policy' } : base;
      cases.push({ ...c, request, ...(verdict === undefined ? {} : { verdict }), check: verdict === 'forward' ? c.check : undefined });
    } else {
      cases.push(c);
    }
  }
  return cases;
}

function chatBody(size: number): Buffer {
  const base = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: '' }] });
  return Buffer.from(JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'a'.repeat(Math.max(0, size - base.length)) }] }));
}

/** Bodies around the size limit, chunked and not, and Content-Lengths that lie either way. */
function sizeCases(rng: Prng, count: number): FuzzCase[] {
  const cases: FuzzCase[] = [];
  const json: RawHeader[] = [...AUTH, ['Content-Type', 'application/json']];
  for (let i = 0; i < count; i++) {
    const kind = i % 8;
    const size = MAX_BODY_BYTES + rng.int(-64, 64);
    const body = chatBody(size);
    const verdict: Verdict = body.byteLength > MAX_BODY_BYTES ? { status: 413, code: 'body_too_large', param: 'body' } : 'forward';
    if (kind === 0 || kind === 1) {
      const framing = kind === 0 ? 'length' : 'chunked';
      cases.push({ family: 'size', index: i, what: `${body.byteLength}B ${framing}`, request: proxyRequest({ headers: json, body, framing }), verdict });
    } else if (kind === 2) {
      const declared = rng.pick([MAX_BODY_BYTES + 1, 10 * MAX_BODY_BYTES, 2 ** 40, Number.MAX_SAFE_INTEGER]);
      cases.push({
        family: 'size',
        index: i,
        what: `Content-Length ${declared} over the limit, short body`,
        request: proxyRequest({ headers: json, body: '{}', framing: declared }),
        endAfterSend: true,
        verdict: { status: 413, code: 'body_too_large', param: 'body' },
      });
    } else if (kind === 3) {
      // Claims more than it sends, then closes its side: node or the body reader refuse it, never a 5xx.
      const small = chatBody(rng.int(10, 2000));
      cases.push({
        family: 'size',
        index: i,
        what: `Content-Length ${small.byteLength + 100} for ${small.byteLength}B, then end of input`,
        request: proxyRequest({ headers: json, body: small, framing: small.byteLength + rng.int(1, 100) }),
        endAfterSend: true,
        check(exchange, label) {
          const response = exchange.responses[0]!;
          assert.equal(response.status, 400, `${label}: a body that ends early is a 400`);
          assert.ok(['bad_http', 'incomplete_body'].includes(errorOf(response).code), `${label}: ${errorOf(response).code}`);
        },
      });
    } else if (kind === 4) {
      // Claims less than it sends: the rest is read as the next request and refused as malformed.
      const whole = chatBody(rng.int(50, 500));
      const claimed = rng.int(1, whole.byteLength - 1);
      cases.push({
        family: 'size',
        index: i,
        what: `Content-Length ${claimed} for ${whole.byteLength}B`,
        request: proxyRequest({ headers: json, body: whole, framing: claimed }),
      });
    } else if (kind === 5) {
      const bad = rng.pick(['abc', '-1', '1e3', '0x10', '1 2', '+5', '']);
      cases.push({
        family: 'size',
        index: i,
        what: `Content-Length "${bad}"`,
        request: proxyRequest({ headers: [...json, ['Content-Length', bad]], body: '{}', framing: 'none' }),
        verdict: { status: 400, code: 'bad_http', param: null },
      });
    } else if (kind === 6) {
      const conflict = rng.pick<readonly RawHeader[]>([
        [['Content-Length', '2'], ['Content-Length', '3']],
        [['Content-Length', '2'], ['Transfer-Encoding', 'chunked']],
        [['Transfer-Encoding', 'gzip, chunked']],
        [['Transfer-Encoding', 'chunked'], ['Transfer-Encoding', 'chunked']],
      ]);
      cases.push({
        family: 'size',
        index: i,
        what: `conflicting framing ${conflict.map(([n, v]) => `${n}: ${String(v)}`).join(', ')}`,
        request: proxyRequest({ headers: [...json, ...conflict], body: '2\r\n{}\r\n0\r\n\r\n', framing: 'none' }),
      });
    } else {
      const bad = rng.pick(['zz\r\n{}\r\n0\r\n\r\n', '2\r\n{}', '-1\r\n', `${'f'.repeat(20)}\r\n{}\r\n0\r\n\r\n`, '2;ext=\u0000\r\n{}\r\n0\r\n\r\n']);
      cases.push({
        family: 'size',
        index: i,
        what: `broken chunked framing ${JSON.stringify(bad.slice(0, 24))}`,
        request: proxyRequest({ headers: [...json, ['Transfer-Encoding', 'chunked']], body: bad, framing: 'none' }),
        endAfterSend: true,
        check(exchange, label) {
          assert.equal(exchange.responses[0]!.status, 400, `${label}: broken chunked framing is a 400`);
        },
      });
    }
  }
  return cases;
}

const METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'HEAD', 'PROPFIND', 'QUERY', 'M-SEARCH', 'PURGE', 'LINK', 'SEARCH', 'TRACE', 'CONNECT', 'FOO', 'get', 'G ET', 'PRI'];
const TARGETS = [
  '/v1/models',
  '/v1/chat/completions',
  '/v1/files',
  '/v1',
  '/metrics/users',
  '/healthz',
  '/dashboard/',
  '/',
  '*',
  'http://evil.example/v1/models',
  'https://evil.example:8443/v1/models?x=1',
  '//evil.example/v1/models',
  '/v1/../../healthz',
  '/v1/%2e%2e/%2e%2e/healthz',
  '/v1%2f..%2fhealthz',
  '/v1/models/%ZZ',
  '/v1/models?a=%ZZ&b=\u00ff',
  'v1/models',
  'mailto:x@example.com',
  '/v1/models#fragment',
];

/** Request lines, versions, hosts and header blocks that bend HTTP/1.1. */
function protocolCases(rng: Prng, count: number): FuzzCase[] {
  const cases: FuzzCase[] = [];
  for (let i = 0; i < count; i++) {
    const kind = i % 7;
    if (kind <= 2) {
      const method = rng.pick(METHODS);
      const target = rng.pick(TARGETS);
      const version = rng.chance(0.85) ? 'HTTP/1.1' : rng.pick(['HTTP/1.0', 'HTTP/2.0', 'HTTP/0.9', 'HTTP/1.2', 'HTTX/1.1', 'HTTP/1.1 extra']);
      const host = rng.chance(0.8) ? '127.0.0.1' : rng.pick([null, 'evil.example', 'a b', 'x/v1/models?', 'user@host', '[::1]:80', '\u00ff']);
      const head = method === 'HEAD';
      cases.push({
        family: 'protocol',
        index: i,
        what: `${method} ${target} ${version} host=${JSON.stringify(host)}`,
        request: rawRequest({ method, target, version, host, headers: AUTH }),
        head,
        check(exchange, label) {
          const response = exchange.responses[0]!;
          if (method === 'TRACE' || method === 'CONNECT') {
            if (!fromUpstream(response) && response.status !== 400) {
              assert.equal(response.status, 405, `${label}: ${method} is refused`);
              assert.equal(errorOf(response).param, 'method', `${label}: param`);
            }
          }
        },
      });
    } else if (kind === 3) {
      const length = rng.pick([1000, 4000, 8000, 15000, 17000, 40000]);
      const where = rng.pick(['path', 'query', 'metrics']);
      const target = where === 'path' ? `/v1/${'a'.repeat(length)}` : where === 'query' ? `/v1/models?q=${'b'.repeat(length)}` : `/metrics/users/${'c'.repeat(length)}`;
      cases.push({
        family: 'protocol',
        index: i,
        what: `${length}-character ${where}`,
        request: rawRequest({ method: 'GET', target, headers: [...AUTH, METRICS_AUTH] }),
        check(exchange, label) {
          const response = exchange.responses[0]!;
          if (length > 16 * 1024) assert.equal(response.status, 431, `${label}: a request line past the header limit is a 431`);
        },
      });
    } else if (kind === 4) {
      const count = rng.pick([200, 200, 2000, 5000]);
      const size = rng.pick([1, 8, 30]);
      const headers: RawHeader[] = [...AUTH];
      for (let h = 0; h < count; h++) headers.push([`X-Many-${h}`, 'v'.repeat(size)]);
      const bytes = headers.reduce((sum, [n, v]) => sum + n.length + v.length, 0);
      cases.push({
        family: 'protocol',
        index: i,
        what: `${count} headers of ${size}B (${bytes}B)`,
        request: rawRequest({ method: 'GET', target: '/v1/models', headers }),
        check(exchange, label) {
          const response = exchange.responses[0]!;
          if (bytes > 16 * 1024) {
            assert.equal(response.status, 431, `${label}: a header block past 16 KiB is a 431`);
            assert.equal(errorOf(response).code, 'headers_too_large', `${label}: code`);
          } else if (count <= 200) {
            assert.equal(response.status, 200, `${label}: 200 small headers are fine`);
          }
        },
      });
    } else if (kind === 5) {
      const variant = rng.int(0, 5);
      const lines = [
        `X-Folded: a\r\n b`,
        `X-Bad\u00ffName: v`,
        `: no name`,
        `X-No-Colon`,
        `Expect: ${rng.pick(['100-continue', '200-ok', 'something'])}`,
        `Upgrade: ${rng.pick(['websocket', 'h2c'])}\r\nConnection: Upgrade, close`,
      ];
      const raw = Buffer.from(`POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${PROVIDER_KEY}\r\nHelicone-Auth: Bearer ${GATEWAY_KEY}\r\nContent-Type: application/json\r\n${lines[variant]}\r\nContent-Length: 2\r\n${variant === 5 ? '' : 'Connection: close\r\n'}\r\n{}`, 'latin1');
      cases.push({
        family: 'protocol',
        index: i,
        what: `header line ${JSON.stringify(lines[variant])}`,
        request: raw,
        check(exchange, label) {
          const response = exchange.responses[0]!;
          if (variant === 4 && !lines[4]!.includes('100-continue')) {
            assert.equal(response.status, 417, `${label}: an unmet Expect is a 417`);
            assert.equal(errorOf(response).param, 'Expect', `${label}: param`);
          }
        },
      });
    } else {
      // Several requests on one connection, the last one malformed.
      const first = rawRequest({ method: 'GET', target: '/v1/models', headers: [...AUTH, ['Connection', 'keep-alive']] });
      const second = rawRequest({ method: 'POST', target: '/v1/embeddings', headers: [...AUTH, ['Connection', 'keep-alive'], ['Content-Type', 'application/json']], body: '{"model":"text-embedding-3-small","input":"pipelined"}' });
      const third = Buffer.from(rng.pick(['GARBAGE\r\n\r\n', 'GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n', `GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`]), 'latin1');
      cases.push({
        family: 'protocol',
        index: i,
        what: 'pipelined requests',
        request: Buffer.concat([first, second, third]),
        check(exchange, label) {
          assert.ok(exchange.responses.length >= 2, `${label}: each pipelined request is answered (${exchange.responses.length})`);
          assert.equal(exchange.responses[0]!.status, 200, `${label}: first answer`);
          assert.equal(exchange.responses[1]!.status, 200, `${label}: second answer`);
        },
      });
    }
  }
  return cases;
}

/** Kinds whose answer is cut: the client must see an incomplete body and the event an upstream reset. */
const CUT_KINDS: ReadonlySet<GarbageKind> = new Set(['cut-mid-event', 'bad-gzip', 'short-body']);
/** SSE kinds holding the `"usage":null` members and usage chunk the gateway's own include_usage adds. */
const USAGE_ARTEFACT_KINDS: ReadonlySet<GarbageKind> = new Set(['lone-cr', 'truncated-event', 'cut-mid-event']);

/** The upstream's answer straight from the fake, per kind/endpoint/stream/size, to compare with the gateway's. */
const directAnswers = new Map<string, RawResponse | null>();

function garbageRequest(kind: GarbageKind, target: string, body: string, bytes: number, direct: boolean): Buffer {
  const headers: RawHeader[] = [
    ...(direct ? [AUTH[0]!] : AUTH),
    ['Content-Type', 'application/json'],
    ['X-Fake-Garbage', kind],
    ['X-Fake-Garbage-Bytes', String(bytes)],
    ['Helicone-User-Id', `garbage-${kind}`],
  ];
  return rawRequest({ method: 'POST', target, headers, body });
}

/** Malformed answers from the upstream, through every metered endpoint, streaming and not. */
function garbageCases(rng: Prng, rounds: number): FuzzCase[] {
  const cases: FuzzCase[] = [];
  let index = 0;
  for (let round = 0; round < rounds; round++) {
    for (const kind of GARBAGE_KINDS) {
      const endpoint = rng.pick(['chat', 'completions', 'responses']);
      const target = ENDPOINTS[endpoint]!;
      const stream = rng.chance(0.5);
      const askedUsage = stream && rng.chance(0.3);
      const object = randomRequestObject(new Prng(index), endpoint);
      delete object.user;
      delete object.safety_identifier;
      const body = JSON.stringify({ ...object, model: 'gpt-4o-mini', stream, ...(askedUsage ? { stream_options: { include_usage: true } } : {}) });
      const bytes = kind === 'huge-line' || kind === 'binary' ? rng.pick([1, 4096, 65536, 1024 * 1024]) : 0;
      const key = `${kind}|${target}|${body}|${bytes}`;
      const stripped = stream && !askedUsage && endpoint !== 'responses';
      cases.push({
        family: 'garbage',
        index: index++,
        what: `${kind} on ${target}${stream ? ' streaming' : ''}${askedUsage ? ' with include_usage' : ''}${bytes ? ` ${bytes}B` : ''}`,
        request: garbageRequest(kind, target, body, bytes, false),
        async check(exchange, label) {
          const response = exchange.responses[0]!;
          assert.ok(fromUpstream(response), `${label}: the upstream's answer reaches the client`);
          if (!directAnswers.has(key)) {
            const direct = await rawExchange(Number(new URL(upstream.url).port), garbageRequest(kind, target, body, bytes, true));
            directAnswers.set(key, direct.responses[0] ?? null);
          }
          const direct = directAnswers.get(key)!;
          assert.ok(direct !== null, `${label}: the fake answered directly`);
          assert.equal(response.status, direct.status, `${label}: status as the upstream sent it`);
          if (CUT_KINDS.has(kind)) {
            assert.equal(response.complete, false, `${label}: a broken upstream answer reaches the client cut, not complete`);
            return;
          }
          assert.ok(response.complete, `${label}: complete answer`);
          if (!stripped || !USAGE_ARTEFACT_KINDS.has(kind)) {
            assert.ok(response.body.equals(direct.body), `${label}: the client gets the upstream's bytes (${response.body.byteLength} vs ${direct.body.byteLength})`);
          } else {
            const text = response.body.toString('latin1');
            assert.ok(!text.includes('"usage":null'), `${label}: the usage the gateway asked for is removed`);
            assert.ok(!text.includes('"choices":[],"usage"'), `${label}: the usage chunk the gateway asked for is removed`);
          }
        },
      });
    }
  }
  return cases;
}

// ---------------------------------------------------------------------------------------------------------------
// Metrics API

const METRICS_ROUTES = [
  '/metrics/users',
  '/metrics/users/{id}',
  '/metrics/users/{id}/usage',
  '/metrics/users/{id}/summary',
  '/metrics/users/{id}/limits',
  '/metrics/usage',
  '/metrics/distribution',
  '/metrics/anomalies',
  '/metrics/export',
  '/metrics/queries/{id}',
  '/metrics/nothing',
  '/metrics',
];
const PARAMS = ['period', 'date', 'sort', 'order', 'limit', 'cursor', 'from', 'to', 'group_by', 'user_id', 'tz', 'interval', 'metric', 'factor', 'min_requests', 'min_cost', 'cohort', 'format'];
const GOOD_VALUES: Record<string, readonly string[]> = {
  period: ['day', 'month', 'all'],
  date: ['today', '2026-01-31'],
  sort: ['cost', 'requests', 'tokens', 'last_active'],
  order: ['asc', 'desc'],
  limit: ['1', '50', '1000', '10000'],
  from: ['today', '2026-01-01'],
  to: ['today'],
  group_by: ['user', 'model', 'property:plan', 'property:Team0'],
  user_id: ['fuzz-user-1', 'garbage-binary'],
  tz: ['+05:30', '-08:00', 'Z', 'UTC', ' 01:00'],
  interval: ['hour', 'day', 'month'],
  metric: ['cost', 'requests'],
  factor: ['3', '1.5'],
  min_requests: ['0', '100'],
  min_cost: ['0', '0.5'],
  cohort: ['plan', 'team'],
  format: ['csv', 'ndjson'],
  cursor: ['eyJwIjoiMjAyNi0xMSJ9'],
};
const BAD_VALUES = [
  '',
  '-1',
  '0',
  '1.5',
  '99999999999999999999',
  'NaN',
  '2026-02-30',
  '2026-13-01',
  '0000-01-01',
  '9999-12-31',
  '1999-01-01',
  "' OR 1=1 --",
  "'; DROP TABLE user_totals; --",
  '") UNION SELECT * FROM events --',
  "\\'",
  '%00',
  '\u0000',
  '\u2019 OR \u20191\u2019=\u20191',
  'property:a b',
  'property:' + 'x'.repeat(65),
  '+99:99',
  'x'.repeat(3000),
  '🌍',
  '%ZZ',
];

function today(): string {
  return new Date().toISOString().slice(0, 10);
}

function metricsValue(rng: Prng, name: string): string {
  const good = GOOD_VALUES[name];
  const value = good !== undefined && rng.chance(0.55) ? rng.pick(good) : rng.pick(BAD_VALUES);
  return value === 'today' ? today() : value;
}

/** Random routes, methods and query strings against the metrics API: only 200, 400, 404 or 405, always JSON. */
function metricsCases(rng: Prng, count: number): FuzzCase[] {
  const cases: FuzzCase[] = [];
  for (let i = 0; i < count; i++) {
    const route = rng.pick(METRICS_ROUTES);
    const id = rng.pick(['fuzz-user-1', 'garbage-binary', 'nobody', "' OR 1=1 --", 'a%2Fb', '%ZZ', '%00', '%E2%80%AE', 'x'.repeat(300), '..', 'usage.e30.x']);
    const path = route.replace('{id}', encodeURIComponent(id).replace(/%25/g, '%'));
    const params: string[] = [];
    for (let p = rng.int(0, 4); p > 0; p--) {
      const name = rng.chance(0.85) ? rng.pick(PARAMS) : rng.pick(['sortby', 'x', '', 'limit[]', 'ü', '__proto__']);
      params.push(`${encodeURIComponent(name)}=${encodeURIComponent(metricsValue(rng, name))}`);
      if (rng.chance(0.05)) params.push(params.at(-1)!); // the same parameter twice
    }
    const target = params.length > 0 ? `${path}?${params.join('&')}` : path;
    const method = rng.chance(0.85) ? 'GET' : rng.pick(['HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS']);
    const authorized = rng.chance(0.93);
    const headers: RawHeader[] = authorized
      ? [METRICS_AUTH]
      : [...rng.pick<readonly RawHeader[]>([[], [['Authorization', `Bearer ${GATEWAY_KEY}`]], [['Helicone-Auth', `Bearer ${METRICS_KEY}`]]])];
    let body: string | undefined;
    if (method === 'PUT') {
      headers.push(['Content-Type', rng.pick(['application/json', 'text/plain'])]);
      body = rng.pick(['{}', '{"monthly_budget_usd":1000000}', '{"blocked":"yes"}', '{"rate_limits":["100000;w=60"]}', '[', '{"unknown":1}', 'null']);
    }
    cases.push({
      family: 'metrics',
      index: i,
      what: `${method} ${target.slice(0, 160)}${authorized ? '' : ' without the metrics key'}`,
      request: rawRequest({ method, target, headers, ...(body === undefined ? {} : { body }) }),
      head: method === 'HEAD',
      check(exchange, label) {
        const response = exchange.responses[0]!;
        // Without the metrics key only routing answers (404, 405) come before the 401.
        const allowed = authorized ? [200, 400, 404, 405, 413, 415] : [400, 401, 404, 405];
        assert.ok(allowed.includes(response.status), `${label}: status ${response.status} ${response.body.toString('utf8').slice(0, 200)}`);
        if (method === 'HEAD' || response.status >= 400) return;
        const type = response.headers['content-type'] ?? '';
        if (route === '/metrics/export') {
          assert.match(type, /^(application\/json|text\/csv|application\/x-ndjson)/, `${label}: export type`);
        } else {
          assert.match(type, /^application\/json/, `${label}: JSON answer`);
          JSON.parse(response.body.toString('utf8'));
        }
      },
    });
  }
  return cases;
}

// ---------------------------------------------------------------------------------------------------------------

before(async () => {
  upstream = await startFakeUpstream();
  dataDir = await mkdtemp(join(tmpdir(), 'gateway-fuzz-'));
  const config = localConfigFromEnv({
    UPSTREAM_OPENAI_URL: upstream.url,
    DATA_DIR: dataDir,
    GATEWAY_KEYS: GATEWAY_KEY,
    METRICS_KEYS: METRICS_KEY,
    MAX_BODY_BYTES: String(MAX_BODY_BYTES),
    HOST: '127.0.0.1',
    PORT: '0',
  });
  const log = createLogger('debug', (line) => logLines.push(line));
  gateway = await openLocalGateway({ config, log });
  server = await serve(gateway.handler, { port: 0, host: '127.0.0.1', log });
  port = Number(new URL(server.url).port);
});

after(async () => {
  await server.close();
  await gateway.close();
  await upstream.close();
  await rm(dataDir, { recursive: true, force: true });
});

// Each phase takes seconds; the timeout turns a regression into a quadratic blow-up into a failure, not a hang.
const PHASE = { timeout: 120_000 };

describe('generated bad input against the local server', () => {
  const rng = new Prng(SEED);

  it('request bodies: broken JSON, invalid UTF-8, odd types and content types, chunked or not', PHASE, async () => {
    await runAll(bodyCases(rng.fork('body'), scaled(1200)));
  });

  it('identity headers: control characters, raw bytes, CR/LF, long and repeated values, bad names', PHASE, async () => {
    await runAll(headerCases(rng.fork('headers'), scaled(1100)));
  });

  it('sizes and framing: bodies around MAX_BODY_BYTES, lying and malformed Content-Length, broken chunks', PHASE, async () => {
    await runAll(sizeCases(rng.fork('size'), scaled(240)));
  });

  it('protocol: odd methods, targets, versions and hosts, long URLs, huge header blocks, pipelining', PHASE, async () => {
    await runAll(protocolCases(rng.fork('protocol'), scaled(420)));
  });

  it('garbage from the upstream: the client gets what it sent (or a cut stream) and the gateway survives', PHASE, async () => {
    await runAll(garbageCases(rng.fork('garbage'), scaled(6)));
  });

  it('the metrics API answers random queries with 200, 400, 404 or 405 and JSON, never a 500', PHASE, async () => {
    await runAll(metricsCases(rng.fork('metrics'), scaled(1000)));
  });

  it('every request that reached the upstream left exactly one usage event, and no other request left one', async () => {
    await server.idle();
    const events: UsageEvent[] = [];
    for await (const event of readEvents(dataDir)) events.push(event);
    const eventIds = new Map<string, UsageEvent>();
    for (const event of events) {
      assert.ok(!eventIds.has(event.request_id), `request ${event.request_id} has one event, not several`);
      eventIds.set(event.request_id, event);
    }
    const answeredIds = new Set<string>();
    for (const { label, response } of answers) {
      const id = response.headers['helicone-id'];
      if (id !== undefined) answeredIds.add(id);
      if (fromUpstream(response) || upstreamFailure(response)) {
        assert.ok(id !== undefined, `${label}: a forwarded answer carries Helicone-Id`);
        const event = eventIds.get(id);
        assert.ok(event !== undefined, `${label}: the forwarded request ${id} has a usage event`);
        assert.equal(event.status, response.status, `${label}: the event has the status the client got`);
        if (!fromUpstream(response)) assert.equal(event.error, 'upstream_unreachable', `${label}: the event names the failure`);
      } else if (id !== undefined && eventIds.has(id)) {
        assert.fail(`${label}: a request the gateway refused (${response.status}) has a usage event`);
      }
    }
    for (const event of events) assert.ok(answeredIds.has(event.request_id), `event ${event.request_id} belongs to an answer a client got`);
    // The comparison calls made straight to the fake carry Helicone-User-Id, which the gateway never forwards.
    const forwarded = upstream.requests.filter((request) => request.headers['helicone-user-id'] === undefined);
    assert.equal(events.length, forwarded.length, 'one event per request the upstream received from the gateway');

    for (const event of events) {
      if (event.user_id !== null) {
        assert.ok(event.user_id.length > 0 && event.user_id.length <= 256 && !CONTROL.test(event.user_id), `stored user id ${JSON.stringify(event.user_id)}`);
      }
      const names = Object.keys(event.properties);
      assert.ok(names.length <= 20, `at most 20 properties stored (${names.length})`);
      for (const [name, value] of Object.entries(event.properties)) {
        assert.match(name, /^[a-z0-9_-]{1,64}$/, 'stored property name');
        assert.ok(value.length <= 256 && !CONTROL.test(value), `stored property value ${JSON.stringify(value)}`);
      }
      for (const field of ['prompt_tokens', 'completion_tokens', 'cached_prompt_tokens', 'reasoning_tokens', 'total_tokens', 'latency_ms'] as const) {
        assert.ok(Number.isSafeInteger(event[field]) && event[field] >= 0, `${field} of ${event.request_id} is a count: ${event[field]}`);
      }
      assert.ok(event.cost_nano_usd === null || (Number.isSafeInteger(event.cost_nano_usd) && event.cost_nano_usd >= 0), `cost of ${event.request_id}`);
    }
    let checked = 0;
    for (const [id, expected] of identityChecks) {
      const event = eventIds.get(id);
      assert.ok(event, `${expected.label}: has its event`);
      assert.equal(event.user_id, expected.userId, `${expected.label}: billed to the user it named`);
      assert.deepEqual(event.properties, expected.properties, `${expected.label}: with its properties`);
      checked++;
    }
    assert.ok(checked > scaled(500), `enough forwarded cases had their identity checked (${checked})`);

    const byKind = new Map<string, UsageEvent[]>();
    for (const event of events) {
      const kind = event.user_id?.startsWith('garbage-') ? event.user_id.slice('garbage-'.length) : undefined;
      if (kind !== undefined) byKind.set(kind, [...(byKind.get(kind) ?? []), event]);
    }
    for (const kind of GARBAGE_KINDS) {
      const kindEvents = byKind.get(kind) ?? [];
      assert.ok(kindEvents.length > 0, `${kind}: metered`);
      for (const event of kindEvents) {
        const expectedError = CUT_KINDS.has(kind) ? 'upstream_reset' : kind === 'html-502' ? 'upstream_502' : null;
        assert.equal(event.error, expectedError, `${kind}: event error`);
        if (CUT_KINDS.has(kind)) assert.equal(event.usage_source, 'partial', `${kind}: a cut answer is metered with what arrived`);
      }
    }
    // An upstream claiming 1e308 tokens is not believed: the request is estimated, priced, and counted.
    for (const event of byKind.get('absurd-usage')!) {
      assert.equal(event.usage_source, 'estimated', 'absurd usage is replaced by an estimate');
      assert.equal(event.cost_source, 'genai-prices');
    }
    const exchange = await rawExchange(port, rawRequest({ method: 'GET', target: '/metrics/users/garbage-absurd-usage', headers: [METRICS_AUTH] }));
    assert.equal(exchange.responses[0]?.status, 200, 'the live totals took the request with absurd usage');
    const totals = JSON.parse(exchange.responses[0]!.body.toString('utf8')) as { all_time: { requests: number } };
    assert.equal(totals.all_time.requests, byKind.get('absurd-usage')!.length);
  });

  it('logged no gateway fault, and ran thousands of cases', () => {
    const faults = logLines.filter((line) => (JSON.parse(line) as { level: string }).level === 'error');
    assert.deepEqual(faults, [], 'no error-level log line');
    assert.ok(casesRun >= scaled(3000), `ran ${casesRun} cases`);
  });
});

/** The faults the generated cases found, each pinned by the smallest request that showed it. */
describe('faults found by the generated cases stay fixed', () => {
  const answer = async (request: Buffer, options: { endAfterSend?: boolean } = {}) => {
    const exchange = await rawExchange(port, request, options);
    assert.ok(exchange.responses.length > 0, 'answered');
    return exchange;
  };

  it('TRACE and CONNECT get a JSON 405 naming the method, not a 500 or a dropped connection', async () => {
    for (const method of ['TRACE', 'CONNECT']) {
      const { responses } = await answer(rawRequest({ method, target: method === 'CONNECT' ? 'evil.example:443' : '/v1/models', headers: AUTH }));
      assert.equal(responses[0]!.status, 405, method);
      assert.deepEqual(errorOf(responses[0]!), { code: 'method_not_allowed', param: 'method', message: `${method} is not supported.`, type: 'invalid_request_error' });
    }
  });

  it('a Host that is not a host name, or no Host at all, does not change or break the request', async () => {
    for (const host of ['a b', 'x/v1/completions?', null]) {
      const { responses } = await answer(rawRequest({ method: 'GET', target: '/v1/models', host, headers: AUTH }));
      assert.equal(responses[0]!.status, 200, `host ${JSON.stringify(host)}`);
      assert.equal(upstream.requests.at(-1)?.path, '/v1/models', 'the path is the request line\'s');
    }
  });

  it('an unmet Expect gets a JSON 417', async () => {
    const { responses } = await answer(proxyRequest({ headers: [...AUTH, ['Expect', '200-ok']], body: '{}' }));
    assert.equal(responses[0]!.status, 417);
    assert.equal(errorOf(responses[0]!).param, 'Expect');
  });

  it('a body that ends before its Content-Length is a 400, not a logged 500', async () => {
    const before = logLines.length;
    const { responses } = await answer(proxyRequest({ headers: [...AUTH, ['Content-Type', 'application/json']], body: '{"model":"gpt-4o-mini"}', framing: 100 }), {
      endAfterSend: true,
    });
    assert.equal(responses[0]!.status, 400);
    await server.idle();
    const faults = logLines.slice(before).filter((line) => (JSON.parse(line) as { level: string }).level === 'error');
    assert.deepEqual(faults, []);
  });

  it('a malformed request pipelined behind good ones is answered after them, in order', async () => {
    const good = rawRequest({ method: 'GET', target: '/v1/models', headers: [...AUTH, ['Connection', 'keep-alive']] });
    const { responses } = await answer(Buffer.concat([good, good, Buffer.from('GARBAGE\r\n\r\n')]));
    assert.deepEqual(responses.map((r) => r.status), [200, 200, 400]);
    assert.equal(errorOf(responses[2]!).code, 'bad_http');
  });

  it('an upstream body that fails before its first byte still gives the client the status and Helicone-Id', async () => {
    const { responses } = await answer(garbageRequest('bad-gzip', '/v1/chat/completions', '{"model":"gpt-4o-mini","messages":[]}', 0, false));
    assert.equal(responses[0]!.status, 200);
    assert.ok(responses[0]!.headers['helicone-id'], 'Helicone-Id');
    assert.equal(responses[0]!.complete, false, 'cut, not complete');
  });

  it('a stream the gateway rewrites keeps every other byte, even bytes that are not UTF-8', async () => {
    const body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"bytes"}],"stream":true}';
    const via = await answer(garbageRequest('binary', '/v1/chat/completions', body, 65536, false));
    const direct = await rawExchange(Number(new URL(upstream.url).port), garbageRequest('binary', '/v1/chat/completions', body, 65536, true));
    assert.ok(via.responses[0]!.body.equals(direct.responses[0]!.body), 'byte for byte');
  });

  it('events ended by mixed CR, LF and CRLF blank lines are still found, so injected usage is still removed', async () => {
    const body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"cr"}],"stream":true}';
    const { responses } = await answer(garbageRequest('lone-cr', '/v1/chat/completions', body, 0, false));
    const text = responses[0]!.body.toString('utf8');
    assert.ok(!text.includes('"usage"'), text);
    assert.ok(text.includes('Garbage') && text.includes('[DONE]'), 'the rest is there');
  });

  it('a megabyte answer in one SSE line, with no usage, is passed on and estimated without stalling the server', async () => {
    const body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"long"}],"stream":true}';
    const { responses } = await answer(garbageRequest('huge-line', '/v1/chat/completions', body, 1024 * 1024, false));
    const direct = await rawExchange(Number(new URL(upstream.url).port), garbageRequest('huge-line', '/v1/chat/completions', body, 1024 * 1024, true));
    assert.ok(responses[0]!.body.equals(direct.responses[0]!.body), 'passed on whole');
    await server.idle();
    await assertHealthy();
    const exchange = await rawExchange(port, rawRequest({ method: 'GET', target: '/metrics/users/garbage-huge-line', headers: [METRICS_AUTH] }));
    const totals = JSON.parse(exchange.responses[0]!.body.toString('utf8')) as { all_time: { completion_tokens: number } };
    assert.ok(totals.all_time.completion_tokens > 100_000, `estimated ${totals.all_time.completion_tokens} tokens for a megabyte of text`);
  });
});
