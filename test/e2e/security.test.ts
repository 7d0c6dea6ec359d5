/**
 * Security properties, end to end: no open relay, keys kept only as hashes, no key or body in any log line or
 * stored file (failures included), no way to aim the gateway at another host, a metrics API with its own key,
 * signed and pseudonymised user ids, and SQL injection attempts that change nothing.
 *
 * The local server runs as `npm start` builds it (node:http adapter, DuckDB, event files) against the fake
 * upstream; the AWS proxy function runs in-process on dynalite and the Firehose and S3 fakes.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ScanCommand } from '@aws-sdk/client-dynamodb';
import { S3Client } from '@aws-sdk/client-s3';
import { proxyLambdaConfigFromEnv } from '../../lambda/aws/aws-config';
import { createGatewayKey, gatewayKeyHash } from '../../lambda/aws/dynamodb-key-store';
import { createFirehoseClient } from '../../lambda/aws/firehose-event-sink';
import { createProxyApp } from '../../lambda/aws/proxy-app';
import { ConfigError, localConfigFromEnv } from '../../lambda/core/config';
import { collectingContext, type FetchHandler } from '../../lambda/core/handler';
import { signUserId } from '../../lambda/core/identity';
import { createLogger } from '../../lambda/core/log';
import type { UsageEvent } from '../../lambda/core/usage-event';
import { readEvents } from '../../lambda/local/event-files';
import { openLocalGateway, type LocalGateway } from '../../lambda/local/local-gateway';
import { serve, type NodeServer } from '../../lambda/local/node-adapter';
import { FAKE_CREDENTIALS, TEST_REGION, startDynalite, type LocalDynamoDb } from '../support/dynalite';
import { FakeFirehose } from '../support/fake-firehose';
import { FakeS3 } from '../support/fake-s3';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream';
import { rawExchange, rawRequest, type RawHeader } from '../support/raw-http';

const PROVIDER_KEY = 'sk-sec-provider-key-5f1c0d9e8b7a';
const GATEWAY_KEY = 'gw_sec_gateway_key_0a9b8c7d6e';
const METRICS_KEY = 'mk_sec_metrics_key_1b2c3d4e5f';
const WRONG_KEY = 'gw_sec_wrong_key_9z8y7x6w5v4u';
/** Placed in prompts only. */
const PROMPT_MARKER = 'PROMPT-MARKER-6c1f0e2d';
/** Placed in Responses API `instructions`, which the fake echoes in its answer: a marker in answer bodies. */
const ANSWER_MARKER = 'ANSWER-MARKER-93ab47e1';
const SECRETS = [PROVIDER_KEY, GATEWAY_KEY, METRICS_KEY, WRONG_KEY, PROMPT_MARKER, ANSWER_MARKER];

const ROOT = resolve(__dirname, '../..');

let upstream: FakeUpstream;
const cleanups: (() => Promise<void>)[] = [];

before(async () => {
  upstream = await startFakeUpstream();
});

after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  await upstream.close();
});

interface LocalServer {
  readonly gateway: LocalGateway;
  readonly server: NodeServer;
  readonly port: number;
  readonly dataDir: string;
  readonly logLines: string[];
  /** Stops the server and closes the stores (the database checkpoints); the data directory stays until the end. */
  close(): Promise<void>;
}

/** The local server as `npm start` builds it, on a fresh data directory, logging at debug into `logLines`. */
async function startLocal(env: Record<string, string> = {}, prepare?: (dataDir: string) => Promise<void>): Promise<LocalServer> {
  const dataDir = await mkdtemp(join(tmpdir(), 'gateway-security-'));
  await prepare?.(dataDir);
  const config = localConfigFromEnv({
    UPSTREAM_OPENAI_URL: upstream.url,
    DATA_DIR: dataDir,
    GATEWAY_KEYS: GATEWAY_KEY,
    METRICS_KEYS: METRICS_KEY,
    HOST: '127.0.0.1',
    PORT: '0',
    LOG_LEVEL: 'debug',
    ...env,
  });
  const logLines: string[] = [];
  const log = createLogger('debug', (line) => logLines.push(line));
  const gateway = await openLocalGateway({ config, log });
  const server = await serve(gateway.handler, { port: 0, host: '127.0.0.1', log });
  let closing: Promise<void> | undefined;
  const close = () => (closing ??= server.close().then(() => gateway.close()));
  cleanups.push(async () => {
    await close();
    await rm(dataDir, { recursive: true, force: true });
  });
  return { gateway, server, port: Number(new URL(server.url).port), dataDir, logLines, close };
}

const GATEWAY_AUTH: readonly RawHeader[] = [
  ['Authorization', `Bearer ${PROVIDER_KEY}`],
  ['Helicone-Auth', `Bearer ${GATEWAY_KEY}`],
];

async function call(port: number, method: string, target: string, headers: readonly RawHeader[] = GATEWAY_AUTH, body?: string) {
  const json: RawHeader[] = body === undefined ? [] : [['Content-Type', 'application/json']];
  const exchange = await rawExchange(port, rawRequest({ method, target, headers: [...headers, ...json], ...(body === undefined ? {} : { body }) }));
  const response = exchange.responses[0];
  assert.ok(response, `${method} ${target} is answered`);
  return response;
}

function jsonOf(body: Buffer): any {
  return JSON.parse(body.toString('utf8'));
}

/** Every file under `dir`, with its bytes. */
async function filesUnder(dir: string): Promise<{ path: string; bytes: Buffer }[]> {
  const out: { path: string; bytes: Buffer }[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await filesUnder(path)));
    else if (entry.isFile()) out.push({ path, bytes: await readFile(path) });
  }
  return out;
}

/** Fails if any of `needles` occurs in any haystack, naming where. */
function assertAbsent(haystacks: readonly { where: string; text: Buffer | string }[], needles: readonly string[]): void {
  for (const { where, text } of haystacks) {
    const bytes = Buffer.isBuffer(text) ? text : Buffer.from(text, 'utf8');
    for (const needle of needles) {
      assert.equal(bytes.indexOf(needle), -1, `"${needle}" appears in ${where}`);
      // Keys could also leak re-encoded: as UTF-16 (a string dump) or base64.
      assert.equal(bytes.indexOf(Buffer.from(needle, 'utf16le')), -1, `"${needle}" (UTF-16) appears in ${where}`);
      assert.equal(bytes.indexOf(Buffer.from(needle).toString('base64').slice(0, 16)), -1, `"${needle}" (base64) appears in ${where}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------

describe('no open relay', () => {
  it('locally, a non-loopback HOST is refused unless gateway keys are set', () => {
    for (const host of ['0.0.0.0', '::', '192.168.1.20', 'gateway.example.com']) {
      assert.throws(() => localConfigFromEnv({ HOST: host }), (error: unknown) => error instanceof ConfigError && error.variable === 'HOST', host);
      assert.equal(localConfigFromEnv({ HOST: host, GATEWAY_KEYS: GATEWAY_KEY }).host, host);
    }
    for (const host of ['127.0.0.1', '127.1.2.3', 'localhost', '::1']) assert.equal(localConfigFromEnv({ HOST: host }).host, host);
    assert.equal(localConfigFromEnv({}).host, '127.0.0.1', 'the default without keys is loopback');
  });

  /** Starts `bin/local-server.ts` as `npm start` does, without its dashboard build step. */
  function startBin(env: Record<string, string>): { child: ChildProcess; output: () => string; exited: Promise<number | null> } {
    const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'bin/local-server.ts')], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
    child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
    const exited = new Promise<number | null>((resolveExit) => child.on('exit', (code) => resolveExit(code)));
    cleanups.push(async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        await exited;
      }
    });
    return { child, output: () => output, exited };
  }

  /** Loopback addresses a TCP port listens on, from the kernel's socket table (no traffic sent anywhere). */
  async function listeningAddresses(port: number): Promise<string[]> {
    const addresses: string[] = [];
    for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
      let text: string;
      try {
        text = await readFile(file, 'utf8');
      } catch {
        continue;
      }
      for (const line of text.split('\n').slice(1)) {
        const fields = line.trim().split(/\s+/);
        if (fields.length < 4 || fields[3] !== '0A') continue; // 0A: LISTEN
        const [address, hexPort] = fields[1]!.split(':') as [string, string];
        if (Number.parseInt(hexPort, 16) === port) addresses.push(address);
      }
    }
    return addresses;
  }

  it('`npm start` without gateway keys listens on 127.0.0.1 only', { timeout: 60_000 }, async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'gateway-security-bin-'));
    cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
    const bin = startBin({ PORT: '0', DATA_DIR: dataDir, UPSTREAM_OPENAI_URL: upstream.url });
    let port = 0;
    for (let i = 0; i < 600 && port === 0; i++) {
      const match = /OpenAI base URL:\s+http:\/\/[^:]+:(\d+)\/v1/.exec(bin.output());
      if (match) port = Number(match[1]);
      else await new Promise((r) => setTimeout(r, 50));
      assert.equal(bin.child.exitCode, null, `the server is running: ${bin.output()}`);
    }
    assert.ok(port > 0, `the server printed its address: ${bin.output()}`);
    assert.match(bin.output(), /listening on 127\.0\.0\.1 only/);
    if (process.platform === 'linux') {
      assert.deepEqual(await listeningAddresses(port), ['0100007F'], 'bound to 127.0.0.1 and nothing else');
    }
    const health = await call(port, 'GET', '/healthz', []);
    assert.equal(health.status, 200);
    bin.child.kill('SIGTERM');
    assert.equal(await bin.exited, 0, 'stops cleanly');
  });

  it('`npm start` with HOST=0.0.0.0 and no gateway keys refuses to start, naming HOST', { timeout: 60_000 }, async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'gateway-security-bin-'));
    cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
    const bin = startBin({ PORT: '0', HOST: '0.0.0.0', DATA_DIR: dataDir, UPSTREAM_OPENAI_URL: upstream.url });
    assert.equal(await bin.exited, 2);
    assert.match(bin.output(), /Configuration error: HOST: binding to 0\.0\.0\.0 needs GATEWAY_KEYS/);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// The AWS proxy function, in-process.

let dynamo: LocalDynamoDb;
let firehose: FakeFirehose;
let s3: FakeS3;
const awsLog: string[] = [];
let awsProxy: FetchHandler;
/** A working gateway key of the AWS table, created by the test that shows keys are stored hashed. */
let awsKey = '';

async function startAws(): Promise<void> {
  if (awsProxy !== undefined) return;
  [dynamo, firehose, s3] = await Promise.all([startDynalite(), FakeFirehose.start(), FakeS3.start()]);
  cleanups.push(async () => {
    await Promise.all([dynamo.close(), firehose.close(), s3.close()]);
  });
  const config = proxyLambdaConfigFromEnv({
    UPSTREAM_OPENAI_URL: upstream.url,
    EVENTS_STREAM_NAME: 'usage-events',
    COUNTERS_TABLE_NAME: dynamo.tableName,
    RECOVERY_BUCKET_NAME: 'usage-log',
    LOG_LEVEL: 'debug',
  });
  awsProxy = createProxyApp(
    config,
    {
      firehose: createFirehoseClient(TEST_REGION, { endpoint: firehose.endpoint, credentials: FAKE_CREDENTIALS }),
      s3: new S3Client({ endpoint: s3.endpoint, forcePathStyle: true, region: TEST_REGION, credentials: FAKE_CREDENTIALS, maxAttempts: 1 }),
      counters: dynamo.client,
      keys: dynamo.client,
      loadTokenizer: async () => (await import('../../lambda/tokenizer')).o200kCounter,
    },
    createLogger('debug', (line) => awsLog.push(line)),
  );
}

async function awsCall(headers: Record<string, string>, body: unknown = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: PROMPT_MARKER }] }) {
  const context = collectingContext();
  const response = await awsProxy(
    new Request('https://api.example.com/v1/chat/completions', {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${PROVIDER_KEY}`, ...headers },
      body: JSON.stringify(body),
    }),
    context,
  );
  const text = await response.text();
  await context.settled();
  return { status: response.status, text };
}

describe('on AWS', () => {
  before(startAws);

  it('a gateway key is always required: without Helicone-Auth, or with a wrong one, a 401 and nothing upstream', async () => {
    upstream.reset();
    for (const headers of [{}, { 'helicone-auth': `Bearer ${WRONG_KEY}` }, { 'helicone-auth': WRONG_KEY }] as Record<string, string>[]) {
      const { status, text } = await awsCall(headers);
      assert.equal(status, 401, JSON.stringify(headers));
      assert.equal(JSON.parse(text).error.param, 'Helicone-Auth');
    }
    assert.equal(upstream.requests.length, 0, 'nothing reached the upstream');
    assert.equal(firehose.records('usage-events').length, 0, 'and nothing was metered');
  });

  it('keys are stored only as SHA-256: the plain key appears nowhere in the table, and it works', async () => {
    const created = await createGatewayKey(dynamo.client, dynamo.tableName, 'security test');
    const items = JSON.stringify((await dynamo.client.send(new ScanCommand({ TableName: dynamo.tableName }))).Items);
    assert.ok(items.includes(gatewayKeyHash(created.key)), 'the hash is the lookup key');
    assert.equal(items.indexOf(created.key), -1, 'the key itself is not stored');
    assert.equal(items.indexOf(created.key.slice(3)), -1, 'nor its random part');
    upstream.reset();
    const { status } = await awsCall({ 'helicone-auth': `Bearer ${created.key}` });
    assert.equal(status, 200, 'the control: a valid key is let through');
    assert.equal(upstream.requests.length, 1);
    // Every later AWS test uses this key.
    awsKey = created.key;
  });

  it('a delivery failure logs the whole event for replay, and still no key or body', async () => {
    firehose.outage(Date.now() + 60_000);
    s3.failPuts(true);
    try {
      const { status } = await awsCall({ 'helicone-auth': `Bearer ${awsKey}`, 'helicone-user-id': 'aws-user' }, {
        model: 'gpt-4o-mini',
        messages: [{ role: 'user', content: PROMPT_MARKER }],
      });
      assert.equal(status, 200, 'the answer does not depend on metering');
    } finally {
      firehose.outage(0);
      s3.failPuts(false);
    }
    const undelivered = awsLog.filter((line) => line.includes('usage_event_undelivered'));
    assert.ok(undelivered.length > 0, 'the undelivered event was logged');
    assert.ok(undelivered.some((line) => line.includes('aws-user')), 'with the event in it');
    assertAbsent(awsLog.map((line, i) => ({ where: `AWS log line ${i}`, text: line })), [...SECRETS, awsKey]);
    assertAbsent(firehose.records('usage-events').map((record, i) => ({ where: `Firehose record ${i}`, text: record })), [...SECRETS, awsKey]);
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe('keys, Authorization and bodies never reach logs, events or the data directory', () => {
  let local: LocalServer;
  before(async () => {
    local = await startLocal();
  });

  it('after traffic of every kind, successes and failures alike', { timeout: 60_000 }, async () => {
    const { port } = local;
    const chat = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: `Tell me about ${PROMPT_MARKER}` }] });
    const responses = JSON.stringify({ model: 'gpt-4o-mini', instructions: ANSWER_MARKER, input: PROMPT_MARKER });
    const streamingResponses = JSON.stringify({ model: 'gpt-4o-mini', instructions: ANSWER_MARKER, input: PROMPT_MARKER, stream: true });
    const stream = JSON.stringify({ model: 'gpt-4o-mini', stream: true, messages: [{ role: 'user', content: PROMPT_MARKER }] });
    const user: RawHeader = ['Helicone-User-Id', 'security-user'];
    const cases: [string, readonly RawHeader[], string | undefined, number][] = [
      ['/v1/chat/completions', [...GATEWAY_AUTH, user], chat, 200],
      ['/v1/chat/completions', [...GATEWAY_AUTH, user], stream, 200],
      ['/v1/responses', [...GATEWAY_AUTH, user], responses, 200],
      ['/v1/responses', [...GATEWAY_AUTH, user], streamingResponses, 200],
      ['/v1/embeddings', [...GATEWAY_AUTH, user], JSON.stringify({ model: 'text-embedding-3-small', input: PROMPT_MARKER }), 200],
      ['/v1/chat/completions', [...GATEWAY_AUTH, user, ['X-Fake-Status', '500']], chat, 500],
      ['/v1/chat/completions', [...GATEWAY_AUTH, user, ['X-Fake-Status', '429']], chat, 429],
      ['/v1/chat/completions', [...GATEWAY_AUTH, user, ['X-Fake-Reset-After', '2']], stream, 200],
      ['/v1/chat/completions', [...GATEWAY_AUTH, user, ['X-Fake-Garbage', 'non-json-data']], stream, 200],
      ['/v1/chat/completions', [...GATEWAY_AUTH, user, ['X-Fake-No-Usage', '1']], chat, 200],
      ['/v1/chat/completions', [...GATEWAY_AUTH, user], `{"model":"gpt-4o-mini","messages":[{"content":"${PROMPT_MARKER}"`, 400],
      ['/v1/chat/completions', [...GATEWAY_AUTH, ['Helicone-User-Id', `bad\u0085${PROMPT_MARKER}`]], chat, 400],
      ['/v1/chat/completions', [...GATEWAY_AUTH, user, ['Helicone-RateLimit-Policy', PROMPT_MARKER]], chat, 400],
      ['/v1/chat/completions', [['Authorization', `Bearer ${PROVIDER_KEY}`], ['Helicone-Auth', `Bearer ${WRONG_KEY}`]], chat, 401],
      ['/v1/chat/completions', [['Authorization', `Bearer ${PROVIDER_KEY}`], ['Helicone-Auth', `Bearer ${METRICS_KEY}`]], chat, 401],
      ['/v1/chat/completions', [['Authorization', `Bearer ${PROVIDER_KEY}`]], chat, 401],
      ['/metrics/users/security-user', [['Authorization', `Bearer ${METRICS_KEY}`]], undefined, 200],
      ['/metrics/users', [['Authorization', `Bearer ${GATEWAY_KEY}`]], undefined, 401],
      ['/metrics/users', [['Authorization', `Bearer ${WRONG_KEY}`]], undefined, 401],
    ];
    for (const [target, headers, body, expected] of cases) {
      const response = await call(port, body === undefined ? 'GET' : 'POST', target, headers, body);
      if (!target.startsWith('/metrics') || expected !== 200) {
        assert.equal(response.status, expected, `${target} ${headers.map(([n]) => n).join(',')}`);
      }
    }
    // A client that hangs up mid-stream.
    await rawExchange(port, rawRequest({ method: 'POST', target: '/v1/chat/completions', headers: [...GATEWAY_AUTH, user, ['Content-Type', 'application/json'], ['X-Fake-Chunk-Delay-Ms', '50']], body: stream }), { timeoutMs: 60 });
    await local.server.idle();

    const answer = await call(port, 'POST', '/v1/responses', [...GATEWAY_AUTH, user], responses);
    assert.ok(answer.body.includes(ANSWER_MARKER), 'the control: the answer marker is in the answer body');
    await local.server.idle();
    await local.gateway.sink.flush();

    assert.ok(local.logLines.some((line) => line.includes('"level":"debug"')), 'debug logging was on');
    assertAbsent(local.logLines.map((line, i) => ({ where: `log line ${i}: ${line.slice(0, 120)}`, text: line })), SECRETS);
    const events: UsageEvent[] = [];
    for await (const event of readEvents(local.dataDir)) events.push(event);
    assert.ok(events.length >= 10, `the traffic was metered (${events.length} events)`);
    assertAbsent(events.map((event) => ({ where: `event ${event.request_id}`, text: JSON.stringify(event) })), SECRETS);
    for (const phase of ['running', 'closed']) {
      if (phase === 'closed') await local.close();
      const files = await filesUnder(local.dataDir);
      assert.ok(files.some((file) => file.path.endsWith('.duckdb')), 'the database is among the files checked');
      assertAbsent(files.map((file) => ({ where: `${file.path} (${phase})`, text: file.bytes })), SECRETS);
    }
  });

  it('an event log that cannot be written spools events for replay, without keys or bodies', { timeout: 60_000 }, async () => {
    const today = new Date().toISOString().slice(0, 10);
    // A file where the day's partition directory belongs: every write of the day fails, so events go to the spool.
    const degraded = await startLocal({}, async (dataDir) => {
      await mkdir(join(dataDir, 'events'), { recursive: true });
      await writeFile(join(dataDir, 'events', `dt=${today}`), 'not a directory');
    });
    const body = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: PROMPT_MARKER }] });
    const first = await call(degraded.port, 'POST', '/v1/chat/completions', [...GATEWAY_AUTH, ['Helicone-User-Id', 'spool-user']], body);
    assert.equal(first.status, 200, 'the answer does not depend on the event log');
    await degraded.server.idle();
    await degraded.close();
    const spooled = await filesUnder(join(degraded.dataDir, 'spool'));
    assert.ok(spooled.some((file) => file.bytes.includes('spool-user')), 'the event waits in the spool');
    assertAbsent(spooled.map((file) => ({ where: file.path, text: file.bytes })), SECRETS);
    assertAbsent(degraded.logLines.map((line, i) => ({ where: `log line ${i}`, text: line })), SECRETS);

    // The spool broken as well: the event is held in memory, and logged whole at the latest when the gateway stops.
    const broken = await startLocal({}, async (dataDir) => {
      await mkdir(join(dataDir, 'events'), { recursive: true });
      await writeFile(join(dataDir, 'events', `dt=${today}`), 'not a directory');
      await writeFile(join(dataDir, 'spool'), 'not a directory');
    });
    const response = await call(broken.port, 'POST', '/v1/chat/completions', [...GATEWAY_AUTH, ['Helicone-User-Id', 'replay-user']], body);
    assert.equal(response.status, 200, 'the answer does not depend on the event log');
    await broken.server.idle();
    await broken.close();
    const failures = broken.logLines.filter((line) => /"level":"(error|warn)"/.test(line));
    assert.ok(failures.some((line) => line.includes('replay-user')), `the event was logged for replay: ${failures.join('\n')}`);
    assertAbsent(broken.logLines.map((line, i) => ({ where: `log line ${i}`, text: line })), SECRETS);
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe('no server-side request forgery: requests go to UPSTREAM_OPENAI_URL and nowhere else', () => {
  let local: LocalServer;
  let evil: Server;
  let evilHost: string;
  const evilRequests: string[] = [];

  before(async () => {
    local = await startLocal();
    evil = createServer((req, res) => {
      evilRequests.push(`${req.method} ${req.url}`);
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"evil":true}');
    });
    await new Promise<void>((r) => evil.listen(0, '127.0.0.1', () => r()));
    evilHost = `127.0.0.1:${(evil.address() as AddressInfo).port}`;
    cleanups.push(() => new Promise<void>((r) => evil.close(() => r())));
  });

  it('ignores target headers, Host, absolute-form targets and path tricks', async () => {
    upstream.reset();
    const body = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'where do I go?' }] });
    const headerTricks: RawHeader[] = [
      ['Helicone-Target-Url', `http://${evilHost}`],
      ['Helicone-Target-Provider', `http://${evilHost}`],
      ['Helicone-OpenAI-Api-Base', `http://${evilHost}/v1`],
      ['X-Forwarded-Host', evilHost],
      ['X-Forwarded-Proto', 'http'],
      ['Forwarded', `host=${evilHost};proto=http`],
      ['X-Original-URL', `http://${evilHost}/v1/chat/completions`],
      ['X-Rewrite-URL', `http://${evilHost}/v1/chat/completions`],
    ];
    const attempts: { target: string; headers: RawHeader[]; host?: string }[] = [
      ...headerTricks.map((header) => ({ target: '/v1/chat/completions', headers: [header] })),
      { target: '/v1/chat/completions', headers: headerTricks },
      { target: '/v1/chat/completions', headers: [], host: evilHost },
      { target: `http://${evilHost}/v1/chat/completions`, headers: [] },
      { target: `http://${evilHost}/v1/chat/completions`, headers: [], host: evilHost },
      { target: `//${evilHost}/v1/chat/completions`, headers: [] },
      { target: `/v1/../..//${evilHost}/v1/chat/completions`, headers: [] },
      { target: `/v1//${evilHost}/v1/chat/completions`, headers: [] },
      { target: `/v1/@${evilHost}/chat/completions`, headers: [] },
      { target: `/v1/%2e%2e/%2e%2e/${evilHost}/v1/chat/completions`, headers: [] },
      { target: `/v1/..%2f..%2f${evilHost}%2fv1%2fchat%2fcompletions`, headers: [] },
      { target: `/v1/%2F%2F${evilHost}%2Fv1`, headers: [] },
      { target: `/v1\\..\\..\\${evilHost}\\v1`, headers: [] },
      { target: `/v1/chat/completions?url=http://${evilHost}/&host=${evilHost}`, headers: [] },
      { target: `/v1/chat/completions#@${evilHost}`, headers: [] },
    ];
    for (const attempt of attempts) {
      const exchange = await rawExchange(
        local.port,
        rawRequest({
          method: 'POST',
          target: attempt.target,
          host: attempt.host ?? '127.0.0.1',
          headers: [...GATEWAY_AUTH, ['Content-Type', 'application/json'], ...attempt.headers],
          body,
        }),
      );
      const response = exchange.responses[0];
      assert.ok(response, `${attempt.target}: answered`);
      assert.ok(response.status < 500, `${attempt.target}: ${response.status}`);
      assert.ok(!response.body.includes('"evil"'), `${attempt.target}: the answer is not the evil server's`);
    }
    assert.deepEqual(evilRequests, [], 'the other server received nothing');
    assert.ok(upstream.requests.length >= headerTricks.length + 2, 'the upstream got the forwarded ones');
    for (const request of upstream.requests) {
      assert.ok(request.path.startsWith('/v1'), `the upstream got ${request.path}`);
      for (const name of Object.keys(request.headers)) assert.ok(!name.startsWith('helicone-'), `${name} is not forwarded`);
    }
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe('the metrics API has its own key', () => {
  let local: LocalServer;
  before(async () => {
    local = await startLocal();
  });

  it('a gateway key does not open the metrics API, and a metrics key does not open the proxy', async () => {
    for (const headers of [[], [['Authorization', `Bearer ${GATEWAY_KEY}`]], [['Helicone-Auth', `Bearer ${METRICS_KEY}`]], [['Authorization', GATEWAY_KEY]]] as RawHeader[][]) {
      const response = await call(local.port, 'GET', '/metrics/users', headers);
      assert.equal(response.status, 401, JSON.stringify(headers.map(([n]) => n)));
      assert.equal(jsonOf(response.body).error.param, 'Authorization');
    }
    assert.equal((await call(local.port, 'GET', '/metrics/users', [['Authorization', `Bearer ${METRICS_KEY}`]])).status, 200, 'the control');
    upstream.reset();
    const body = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] });
    for (const key of [METRICS_KEY, WRONG_KEY]) {
      const response = await call(local.port, 'POST', '/v1/chat/completions', [['Authorization', `Bearer ${PROVIDER_KEY}`], ['Helicone-Auth', `Bearer ${key}`]], body);
      assert.equal(response.status, 401);
      assert.equal(jsonOf(response.body).error.code, 'invalid_gateway_key');
    }
    assert.equal(upstream.requests.length, 0);
    assert.equal((await call(local.port, 'POST', '/v1/chat/completions', GATEWAY_AUTH, body)).status, 200, 'the control');
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe('signed and pseudonymised user ids', () => {
  const SIGNING_SECRET = 'user-id-signing-secret-0123456789';
  const HASH_SECRET = 'user-id-hash-secret-abcdefghijklmnop';
  const RAW_ID = 'alice.raw-id-7f3a@example.com';
  let local: LocalServer;
  before(async () => {
    local = await startLocal({ USER_ID_SIGNING_SECRETS: SIGNING_SECRET, USER_ID_HASH_SECRET: HASH_SECRET });
  });

  const body = (extra: Record<string, unknown> = {}) => JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], ...extra });

  it('an end user cannot bill someone else: a missing, malformed or wrong signature, or a body user, is a 401', async () => {
    upstream.reset();
    const attempts: [RawHeader[], string, string][] = [
      [[['Helicone-User-Id', RAW_ID]], body(), 'invalid_user_signature'],
      [[['Helicone-User-Id', RAW_ID], ['Helicone-User-Id-Signature', 'zz']], body(), 'invalid_user_signature'],
      [[['Helicone-User-Id', RAW_ID], ['Helicone-User-Id-Signature', signUserId(SIGNING_SECRET, 'mallory')]], body(), 'invalid_user_signature'],
      [[['Helicone-User-Id', RAW_ID], ['Helicone-User-Id-Signature', signUserId('another-secret-0123456789', RAW_ID)]], body(), 'invalid_user_signature'],
      [[], body({ user: RAW_ID }), 'unsigned_user_id'],
      [[], body(), 'missing_user_id'],
    ];
    for (const [headers, payload, code] of attempts) {
      const response = await call(local.port, 'POST', '/v1/chat/completions', [...GATEWAY_AUTH, ...headers], payload);
      assert.equal(response.status, 401, code);
      assert.equal(jsonOf(response.body).error.code, code);
    }
    assert.equal(upstream.requests.length, 0, 'none reached the upstream');
  });

  it('with USER_ID_HASH_SECRET the raw id is stored nowhere, and the metrics API still finds the user by it', { timeout: 30_000 }, async () => {
    const signed: RawHeader[] = [...GATEWAY_AUTH, ['Helicone-User-Id', RAW_ID], ['Helicone-User-Id-Signature', signUserId(SIGNING_SECRET, RAW_ID)]];
    for (let i = 0; i < 3; i++) assert.equal((await call(local.port, 'POST', '/v1/chat/completions', signed, body())).status, 200);
    const metrics: RawHeader[] = [['Authorization', `Bearer ${METRICS_KEY}`]];
    const limits = await call(local.port, 'PUT', `/metrics/users/${encodeURIComponent(RAW_ID)}/limits`, metrics, '{"monthly_budget_usd": 100}');
    assert.equal(limits.status, 200);
    await local.server.idle();

    const user = await call(local.port, 'GET', `/metrics/users/${encodeURIComponent(RAW_ID)}`, metrics);
    assert.equal(user.status, 200, 'found by its raw id');
    const stored = jsonOf(user.body).user_id as string;
    assert.match(stored, /^u_[0-9a-f]{32}$/, 'shown in its stored, pseudonymised form');
    assert.equal(jsonOf(user.body).all_time.requests, 3);
    const summary = await call(local.port, 'GET', `/metrics/users/${encodeURIComponent(RAW_ID)}/summary`, metrics);
    assert.equal(jsonOf(summary.body).total_requests, 3, 'history routes hash path ids too');
    const list = await call(local.port, 'GET', '/metrics/users?period=all', metrics);
    assert.deepEqual(jsonOf(list.body).users.map((u: { user_id: string }) => u.user_id), [stored]);
    const filtered = await call(local.port, 'GET', `/metrics/usage?user_id=${encodeURIComponent(RAW_ID)}`, metrics);
    assert.deepEqual(jsonOf(filtered.body).groups.map((g: { group: string; requests: number }) => [g.group, g.requests]), [[stored, 3]], 'user_id filters are hashed too');
    const exported = await call(local.port, 'GET', `/metrics/export?user_id=${encodeURIComponent(RAW_ID)}`, metrics);
    assert.equal(exported.body.toString('utf8').trim().split('\n').length, 3, 'and so is the export filter');

    const events: UsageEvent[] = [];
    for await (const event of readEvents(local.dataDir)) events.push(event);
    assert.deepEqual([...new Set(events.map((event) => event.user_id))], [stored]);
    await local.gateway.counters.flush();
    // While running (the write-ahead log holds the latest writes) and after closing (all of it in the database).
    for (const phase of ['running', 'closed']) {
      if (phase === 'closed') await local.close();
      const files = await filesUnder(local.dataDir);
      assertAbsent(files.map((file) => ({ where: `${file.path} (${phase})`, text: file.bytes })), [RAW_ID, 'alice.raw-id']);
    }
    assertAbsent(local.logLines.map((line, i) => ({ where: `log line ${i}`, text: line })), [RAW_ID]);
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe('SQL injection is impossible by construction', () => {
  const PAYLOADS = [
    "' OR 1=1 --",
    "'; DROP TABLE user_totals; --",
    "'; DELETE FROM limit_counters; --",
    '") UNION SELECT * FROM events --',
    "1' UNION SELECT table_name FROM information_schema.tables --",
    "\\'; DROP TABLE events; --",
    "x'||(SELECT 1)||'",
    'a\u0000b',
    '\u2019 OR \u20191\u2019=\u20191',
    "'; COPY (SELECT 1) TO '/tmp/owned.csv'; --",
    "read_csv('/etc/passwd')",
    '$1',
    '?',
    ':name',
  ];
  const metrics: RawHeader[] = [['Authorization', `Bearer ${METRICS_KEY}`]];
  let local: LocalServer;

  /** What the data looks like through the API; compared before and after the attack. */
  async function snapshot(port: number): Promise<string> {
    const today = new Date().toISOString().slice(0, 10);
    const parts = await Promise.all(
      ['/metrics/users?period=all&limit=1000&sort=requests', `/metrics/usage?from=${today}&to=${today}&group_by=user&limit=10000`, `/metrics/usage?from=${today}&to=${today}&group_by=property:team`].map(
        async (target) => {
          const response = await call(port, 'GET', target, metrics);
          assert.equal(response.status, 200, target);
          const body = jsonOf(response.body);
          // Only what the attack could change; timestamps of reads do not move.
          return JSON.stringify(body.users ?? body.groups);
        },
      ),
    );
    return parts.join('\n');
  }

  before(async () => {
    local = await startLocal();
  });

  /** The payloads a header can carry as they are: printable ASCII (HTTP header values are read as latin1). */
  const ASCII_PAYLOADS = PAYLOADS.filter((p) => /^[\x20-\x7e]+$/.test(p));

  it('payloads stored as user ids and property values come back exactly as sent', async () => {
    const body = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] });
    for (const payload of [...ASCII_PAYLOADS, 'plain-user']) {
      const headers: RawHeader[] = [...GATEWAY_AUTH, ['Helicone-User-Id', payload], ['Helicone-Property-Team', payload]];
      assert.equal((await call(local.port, 'POST', '/v1/chat/completions', headers, body)).status, 200, payload);
    }
    // In a JSON body any character goes: the body's user carries the rest (a NUL is refused as a control character).
    for (const payload of PAYLOADS.filter((p) => !ASCII_PAYLOADS.includes(p))) {
      const status = (await call(local.port, 'POST', '/v1/chat/completions', GATEWAY_AUTH, JSON.stringify({ ...JSON.parse(body), user: payload }))).status;
      assert.equal(status, payload.includes('\u0000') ? 400 : 200, JSON.stringify(payload));
    }
    await local.server.idle();
    const response = await call(local.port, 'GET', '/metrics/users?period=all&limit=1000', metrics);
    const ids = new Set(jsonOf(response.body).users.map((u: { user_id: string }) => u.user_id));
    for (const payload of PAYLOADS.filter((p) => !p.includes('\u0000'))) assert.ok(ids.has(payload), `${JSON.stringify(payload)} stored as sent`);
    for (const payload of PAYLOADS.filter((p) => !p.includes('\u0000'))) {
      const user = await call(local.port, 'GET', `/metrics/users/${encodeURIComponent(payload)}`, metrics);
      assert.equal(user.status, 200, `${payload}: found by its own id`);
      assert.equal(jsonOf(user.body).user_id, payload);
      assert.equal(jsonOf(user.body).all_time.requests, 1);
    }
    const teams = await call(local.port, 'GET', '/metrics/usage?group_by=property:team', metrics);
    const groups = new Set(jsonOf(teams.body).groups.map((g: { group: string | null }) => g.group));
    for (const payload of ASCII_PAYLOADS) assert.ok(groups.has(payload), `property value ${JSON.stringify(payload)} grouped as sent`);
  });

  it('every metrics route refuses or finds nothing, never a 500, and all data is still there afterwards', { timeout: 60_000 }, async () => {
    const before = await snapshot(local.port);
    const today = new Date().toISOString().slice(0, 10);
    const statuses = new Map<number, number>();
    const send = async (method: string, target: string, body?: string) => {
      const response = await call(local.port, method, target, metrics, body);
      statuses.set(response.status, (statuses.get(response.status) ?? 0) + 1);
      assert.ok([200, 400, 404].includes(response.status), `${method} ${target}: ${response.status} ${response.body.toString('utf8').slice(0, 200)}`);
      if (response.status === 200 && method === 'GET' && !target.startsWith('/metrics/export')) {
        const answer = jsonOf(response.body);
        // At most the one user named: an injected condition would have matched every row.
        if (target.includes('user_id=') && Array.isArray(answer.groups)) assert.ok(answer.groups.length <= 1, `${target} matched ${answer.groups.length} groups`);
      }
      return response;
    };
    const q = encodeURIComponent;
    for (const payload of PAYLOADS) {
      const p = q(payload);
      for (const path of [`/metrics/users/${p}`, `/metrics/users/${p}/usage`, `/metrics/users/${p}/summary`, `/metrics/users/${p}/limits`, `/metrics/queries/${p}`, `/metrics/queries/usage.${Buffer.from(JSON.stringify({ p: { from: payload } })).toString('base64url')}.x`]) {
        await send('GET', path);
      }
      await send('PUT', `/metrics/users/${p}/limits`, JSON.stringify({ rate_limits: [payload] }));
      await send('PUT', `/metrics/users/${p}/limits`, JSON.stringify({ monthly_budget_usd: payload }));
      for (const [name, value] of [
        ['cursor', payload],
        ['cursor', Buffer.from(JSON.stringify({ p: 'all', s: 'cost', o: 'desc', v: 0, u: payload })).toString('base64url')],
        ['cursor', Buffer.from(JSON.stringify({ p: 'all', s: 'cost', o: 'desc', v: payload, u: 'x' })).toString('base64url')],
        ['date', payload],
        ['period', payload],
        ['sort', payload],
        ['order', payload],
        ['limit', payload],
      ]) {
        await send('GET', `/metrics/users?period=all&${name}=${q(value!)}`);
      }
      for (const route of ['/metrics/usage', '/metrics/export', '/metrics/distribution', '/metrics/anomalies']) {
        for (const name of ['user_id', 'from', 'to', 'tz', 'group_by', 'limit', 'format', 'sort', 'order', 'metric', 'cohort', 'factor', 'min_cost', 'min_requests', 'date']) {
          await send('GET', `${route}?${name}=${p}`);
        }
        await send('GET', `${route}?group_by=property:${p}`);
        await send('GET', `${route}?from=${today}&to=${today}&user_id=${p}`);
      }
      for (const name of ['from', 'to', 'tz', 'interval', 'group_by']) await send('GET', `/metrics/users/plain-user/usage?${name}=${p}`);
      await send('GET', `/metrics/users/plain-user/usage?group_by=property:${p}`);
    }
    assert.ok((statuses.get(400) ?? 0) > 100, `most attempts were refused as bad parameters: ${JSON.stringify([...statuses])}`);
    await local.server.idle();
    assert.equal(await snapshot(local.port), before, 'the data is unchanged');
    // Limits written for payload ids are data like any other: stored under the id, not executed.
    const own = await call(local.port, 'GET', `/metrics/users/${q("' OR 1=1 --")}/limits`, metrics);
    assert.equal(own.status, 200);
    assert.equal(jsonOf(own.body).user_id, "' OR 1=1 --");
  });
});
