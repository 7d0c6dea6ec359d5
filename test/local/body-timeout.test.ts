/**
 * Slow and lying clients against the local server (node:http adapter, real gateway on DuckDB and event files, fake
 * upstream): a body shorter than its Content-Length, a body that stalls half-way, one trickled a byte at a time, a
 * chunked body with no last chunk, headers that never end. Each is answered with a JSON 408 and its connection
 * closed, nothing reaches the upstream and no usage event is written, while honest clients, slow ones included,
 * are served as usual.
 *
 * The servers here get deadlines of a few hundred milliseconds; assertions are about what happens, never when.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { localConfigFromEnv } from '../../lambda/core/config';
import type { FetchHandler } from '../../lambda/core/handler';
import { silentLogger } from '../../lambda/core/log';
import type { UsageEvent } from '../../lambda/core/usage-event';
import { readEvents } from '../../lambda/local/event-files';
import { openLocalGateway, type LocalGateway } from '../../lambda/local/local-gateway';
import { serve, type NodeServer, type ServeOptions } from '../../lambda/local/node-adapter';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream';
import { parseResponses, rawExchange, rawRequest, type RawResponse } from '../support/raw-http';

const GATEWAY_KEY = 'gw_body_timeout_key_0123456789';
const PROVIDER_KEY = 'sk-body-timeout-provider-key-0123';
/** Long enough that a test which never sees its connection closed fails with what it received, not a hang. */
const SAFETY_MS = 10_000;

let upstream: FakeUpstream;
let dataDir: string;
let gateway: LocalGateway;
/** The gateway's handler; tests may watch which requests reached it. */
let handler: FetchHandler;
const reachedHandler = new Set<string>();
const servers: NodeServer[] = [];

before(async () => {
  upstream = await startFakeUpstream();
  dataDir = await mkdtemp(join(tmpdir(), 'gateway-body-timeout-'));
  const config = localConfigFromEnv({
    UPSTREAM_OPENAI_URL: upstream.url,
    DATA_DIR: dataDir,
    GATEWAY_KEYS: GATEWAY_KEY,
    HOST: '127.0.0.1',
    PORT: '0',
  });
  gateway = await openLocalGateway({ config, log: silentLogger });
  handler = (request, context) => {
    const id = request.headers.get('x-test-case');
    if (id !== null) reachedHandler.add(id);
    return gateway.handler(request, context);
  };
});

after(async () => {
  for (const server of servers) await server.close();
  await gateway.close();
  await upstream.close();
  await rm(dataDir, { recursive: true, force: true });
});

/** A server on the shared gateway with its own deadlines. */
async function serveWith(deadlines: Omit<ServeOptions, 'port' | 'host' | 'log'>): Promise<{ server: NodeServer; port: number }> {
  const server = await serve(handler, { port: 0, host: '127.0.0.1', log: silentLogger, ...deadlines });
  servers.push(server);
  return { server, port: Number(new URL(server.url).port) };
}

interface Ending {
  /** Every response the server sent before it closed the connection. */
  readonly responses: readonly RawResponse[];
  readonly raw: Buffer;
  /** True when the test gave up waiting (the server never closed the connection). */
  readonly gaveUp: boolean;
}

interface Client {
  write(bytes: string | Buffer): void;
  /** Writes `bytes` one byte every `everyMs` until they run out or the connection closes. */
  drip(bytes: string | Buffer, everyMs: number): void;
  /** Resolves once the server closed the connection. */
  readonly ended: Promise<Ending>;
  isClosed(): boolean;
  received(): Buffer;
  destroy(): void;
}

/** A raw connection the test writes to at its own pace. */
async function openClient(port: number): Promise<Client> {
  const socket: Socket = connect(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const chunks: Buffer[] = [];
  const timers = new Set<NodeJS.Timeout>();
  let closed = false;
  let gaveUp = false;
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  // A write after the server closed resets the connection; what it answered before is still in `chunks`.
  socket.on('error', () => undefined);
  const ended = new Promise<Ending>((resolve) => {
    const safety = setTimeout(() => {
      gaveUp = true;
      socket.destroy();
    }, SAFETY_MS);
    socket.once('close', () => {
      closed = true;
      clearTimeout(safety);
      for (const timer of timers) clearInterval(timer);
      const raw = Buffer.concat(chunks);
      resolve({ responses: parseResponses(raw), raw, gaveUp });
    });
  });
  return {
    write(bytes) {
      if (!closed) socket.write(bytes);
    },
    drip(bytes, everyMs) {
      const data = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes, 'latin1');
      let next = 0;
      const timer = setInterval(() => {
        if (closed || next >= data.byteLength) {
          clearInterval(timer);
          timers.delete(timer);
          return;
        }
        socket.write(data.subarray(next, next + 1));
        next++;
      }, everyMs);
      timers.add(timer);
    },
    ended,
    isClosed: () => closed,
    received: () => Buffer.concat(chunks),
    destroy: () => socket.destroy(),
  };
}

let caseCounter = 0;

/** Request headers of a chat completion marked with a fresh case id (also its user id), without framing. */
function chatHead(options: { id: string; framing: string; auth?: boolean; method?: string; path?: string; extra?: string }): string {
  const lines = [
    `${options.method ?? 'POST'} ${options.path ?? '/v1/chat/completions'} HTTP/1.1`,
    'Host: 127.0.0.1',
    `Authorization: Bearer ${PROVIDER_KEY}`,
    ...(options.auth === false ? [] : [`Helicone-Auth: Bearer ${GATEWAY_KEY}`]),
    `Helicone-User-Id: ${options.id}`,
    `X-Test-Case: ${options.id}`,
    'Content-Type: application/json',
    ...(options.extra === undefined ? [] : [options.extra]),
    options.framing,
  ];
  return `${lines.join('\r\n')}\r\n\r\n`;
}

function newCaseId(label: string): string {
  caseCounter++;
  return `${label}-${caseCounter}`;
}

function chatJson(id: string): string {
  return JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: `Hello from ${id}` }] });
}

function errorOf(response: RawResponse): { message: string; type: string; code: string; param: string | null } {
  return (JSON.parse(response.body.toString('utf8')) as { error: { message: string; type: string; code: string; param: string | null } }).error;
}

/** The one answer of a timed-out request: a JSON 408 naming the body, and the connection closed after it. */
function assertBodyTimeout(ending: Ending, deadline: RegExp): void {
  assert.equal(ending.gaveUp, false, `the server closed the connection (received ${JSON.stringify(ending.raw.toString('latin1').slice(0, 200))})`);
  assert.equal(ending.responses.length, 1, 'one answer');
  const response = ending.responses[0]!;
  assert.equal(response.status, 408);
  assert.equal(response.headers.connection, 'close');
  assert.match(response.headers['content-type'] ?? '', /^application\/json/);
  assert.equal(response.headers['openai-version'], undefined, "the gateway's own answer, not the upstream's");
  const error = errorOf(response);
  assert.equal(error.code, 'request_body_timeout');
  assert.equal(error.param, 'body');
  assert.equal(error.type, 'invalid_request_error');
  assert.match(error.message, deadline);
}

async function eventsOf(userId: string): Promise<UsageEvent[]> {
  for (const server of servers) await server.idle();
  await gateway.sink.flush();
  const events: UsageEvent[] = [];
  for await (const event of readEvents(dataDir)) if (event.user_id === userId) events.push(event);
  return events;
}

function upstreamSaw(id: string): boolean {
  return upstream.requests.some((request) => request.headers['x-test-case'] === id);
}

/** Nothing of the request went upstream and it left no usage event: like any refusal before forwarding. */
async function assertNotForwarded(id: string): Promise<void> {
  assert.equal(upstreamSaw(id), false, `${id} reached the upstream`);
  assert.deepEqual(await eventsOf(id), [], `${id} left a usage event`);
}

const STALLED = /stalled: no byte of it arrived for \d+ ms/;
const TOO_SLOW = /did not arrive within \d+ ms/;

describe('request body deadlines', () => {
  it('answers a body shorter than its Content-Length with a JSON 408 and closes the connection', async () => {
    const { port } = await serveWith({ bodyIdleTimeoutMs: 200, bodyTimeoutMs: 5_000 });
    const id = newCaseId('lying-length');
    const client = await openClient(port);
    client.write(chatHead({ id, framing: 'Content-Length: 1000' }) + '{"model":"');
    assertBodyTimeout(await client.ended, STALLED);
    await assertNotForwarded(id);
  });

  it('answers a body that stalls half-way with a 408, even on a keep-alive connection', async () => {
    const { port } = await serveWith({ bodyIdleTimeoutMs: 200, bodyTimeoutMs: 5_000 });
    const id = newCaseId('stall');
    const body = chatJson(id);
    const client = await openClient(port);
    client.write(chatHead({ id, framing: `Content-Length: ${body.length}`, extra: 'Connection: keep-alive' }));
    client.write(body.slice(0, 10));
    client.drip(body.slice(10, 20), 20);
    assertBodyTimeout(await client.ended, STALLED);
    await assertNotForwarded(id);
  });

  it('cuts a body trickled a byte at a time at the total deadline, though it never paused for long', async () => {
    // The pause allowed is capped at the whole deadline, which therefore always passes first.
    const { port } = await serveWith({ bodyIdleTimeoutMs: 5_000, bodyTimeoutMs: 600 });
    const id = newCaseId('slowloris');
    const client = await openClient(port);
    client.write(chatHead({ id, framing: 'Content-Length: 100000' }));
    client.drip('x'.repeat(100_000), 20);
    assertBodyTimeout(await client.ended, TOO_SLOW);
    await assertNotForwarded(id);
  });

  it('cuts a chunked body that keeps sending chunks and never its last one', async () => {
    const { port } = await serveWith({ bodyIdleTimeoutMs: 5_000, bodyTimeoutMs: 600 });
    const id = newCaseId('endless-chunks');
    const client = await openClient(port);
    client.write(chatHead({ id, framing: 'Transfer-Encoding: chunked' }) + '1\r\n{\r\n');
    // Each chunk is whole, so the framing is valid throughout; only the last chunk is missing.
    client.drip('1\r\n \r\n'.repeat(10_000), 5);
    assertBodyTimeout(await client.ended, TOO_SLOW);
    await assertNotForwarded(id);
  });

  it('does not count a pause the gateway causes as idle, and watches for a stall again once it reads on', async () => {
    // A handler slower than the idle deadline to read on after the first chunk: the body backs up past the stream's
    // high-water mark, node stops reading the socket, and the idle deadline is off meanwhile.
    const slowReader: FetchHandler = async (request) => {
      const reader = request.body!.getReader();
      await reader.read();
      await new Promise((resolve) => setTimeout(resolve, 600));
      for (;;) if ((await reader.read()).done) break;
      return new Response('{}', { status: 200, headers: { 'content-type': 'application/json' } });
    };
    const server = await serve(slowReader, { port: 0, host: '127.0.0.1', log: silentLogger, bodyIdleTimeoutMs: 200, bodyTimeoutMs: 5_000 });
    servers.push(server);
    const client = await openClient(Number(new URL(server.url).port));
    // 256 KiB of the 512 KiB announced, at once; then the client stalls for good.
    client.write(chatHead({ id: newCaseId('stall-after-backpressure'), framing: `Content-Length: ${512 * 1024}` }) + 'x'.repeat(256 * 1024));
    const started = Date.now();
    const ending = await client.ended;
    // The stall is seen by the idle deadline once the handler reads on (after 600 ms), not by the total one (5 s).
    assertBodyTimeout(ending, STALLED);
    assert.ok(Date.now() - started >= 600, 'no timeout while the handler was the one behind');
  });

  it('cuts a chunked body that stops mid-chunk', async () => {
    const { port } = await serveWith({ bodyIdleTimeoutMs: 200, bodyTimeoutMs: 5_000 });
    const id = newCaseId('stalled-chunk');
    const client = await openClient(port);
    client.write(chatHead({ id, framing: 'Transfer-Encoding: chunked' }) + '40\r\n{"model":"gpt-4o-mini"');
    assertBodyTimeout(await client.ended, STALLED);
    await assertNotForwarded(id);
  });

  it('forwards and meters the body of an honest client that is slow but keeps sending', async () => {
    const { port } = await serveWith({ bodyIdleTimeoutMs: 2_000, bodyTimeoutMs: 8_000 });
    const id = newCaseId('slow-but-steady');
    const body = chatJson(id);
    const client = await openClient(port);
    client.write(chatHead({ id, framing: `Content-Length: ${body.length}`, extra: 'Connection: close' }));
    const piece = Math.ceil(body.length / 6);
    for (let i = 0; i < body.length; i += piece) {
      client.write(body.slice(i, i + piece));
      await new Promise((resolve) => setTimeout(resolve, 60));
    }
    const ending = await client.ended;
    assert.equal(ending.gaveUp, false, 'answered and closed');
    const response = ending.responses[0];
    assert.equal(response?.status, 200, ending.raw.toString('utf8').slice(0, 300));
    assert.ok(response.headers['openai-version'], "the upstream's answer");
    assert.ok(upstreamSaw(id), 'forwarded');
    const events = await eventsOf(id);
    assert.equal(events.length, 1, 'one usage event');
    assert.equal(events[0]!.status, 200);
  });

  it('serves other clients while several bodies are stalled, and still times the stalled ones out', async () => {
    const { port } = await serveWith({ bodyIdleTimeoutMs: 1_500, bodyTimeoutMs: 3_000 });
    const stalled: { id: string; client: Client }[] = [];
    for (let i = 0; i < 6; i++) {
      const id = newCaseId('held');
      const client = await openClient(port);
      client.write(chatHead({ id, framing: 'Content-Length: 5000' }) + '{"model":');
      stalled.push({ id, client });
    }
    // Every stalled request is inside the gateway, waiting for its body, before the others arrive.
    for (let tries = 0; stalled.some(({ id }) => !reachedHandler.has(id)); tries++) {
      assert.ok(tries < 500, 'the stalled requests reached the handler');
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const id = newCaseId('meanwhile');
    const body = chatJson(id);
    const [chat, health] = await Promise.all([
      rawExchange(port, Buffer.from(chatHead({ id, framing: `Content-Length: ${body.length}`, extra: 'Connection: close' }) + body, 'latin1')),
      rawExchange(port, rawRequest({ method: 'GET', target: '/healthz' })),
    ]);
    assert.equal(chat.responses[0]?.status, 200, 'a normal request is answered meanwhile');
    assert.equal(health.responses[0]?.status, 200, 'the health check is answered meanwhile');
    for (const { id: heldId, client } of stalled) {
      assertBodyTimeout(await client.ended, STALLED);
      await assertNotForwarded(heldId);
    }
    assert.equal((await eventsOf(id)).length, 1, 'the normal request is metered');
  });

  it('sends a refusal made before the body was read, then closes the connection when the body does not come', async () => {
    const { port } = await serveWith({ bodyIdleTimeoutMs: 200, bodyTimeoutMs: 5_000 });
    const id = newCaseId('refused-early');
    const client = await openClient(port);
    client.write(chatHead({ id, auth: false, framing: 'Content-Length: 1000', extra: 'Connection: keep-alive' }) + '{"model":"');
    const ending = await client.ended;
    assert.equal(ending.gaveUp, false, 'the server closed the connection');
    assert.deepEqual(ending.responses.map((r) => r.status), [401], 'the refusal, and no 408 after it');
    assert.equal(errorOf(ending.responses[0]!).code, 'missing_gateway_key');
    await assertNotForwarded(id);
  });

  it('reads and drops the rest of a whole body after an early refusal, so the connection serves the next request', async () => {
    const { port } = await serveWith({ bodyIdleTimeoutMs: 2_000, bodyTimeoutMs: 8_000 });
    const id = newCaseId('refused-then-next');
    // Far more than the stream buffers, so the rest must be drained for the next request to be read.
    const big = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'a'.repeat(512 * 1024) }] });
    const first = chatHead({ id, auth: false, framing: `Content-Length: ${big.length}`, extra: 'Connection: keep-alive' }) + big;
    const exchange = await rawExchange(port, Buffer.concat([Buffer.from(first, 'latin1'), rawRequest({ method: 'GET', target: '/healthz' })]), { timeoutMs: SAFETY_MS });
    assert.deepEqual(exchange.responses.map((r) => r.status), [401, 200]);
  });

  it('stops the upstream call of a GET whose announced body never comes, answers 408, and meters what reached the upstream', async () => {
    const { port } = await serveWith({ bodyIdleTimeoutMs: 300, bodyTimeoutMs: 5_000 });
    const id = newCaseId('get-with-lying-body');
    const client = await openClient(port);
    // A GET's body is not read by the proxy: the request goes upstream at once, here to a slow answer.
    client.write(chatHead({ id, method: 'GET', path: '/v1/models', framing: 'Content-Length: 100', extra: 'X-Fake-Delay-Ms: 4000' }));
    assertBodyTimeout(await client.ended, STALLED);
    assert.ok(upstreamSaw(id), 'the request had reached the upstream');
    const events = await eventsOf(id);
    assert.equal(events.length, 1, 'the upstream call is metered once');
    assert.equal(events[0]!.status, 499, 'as a request the client side ended');
  });

  it('answers a valid body that arrives whole and at once as before', async () => {
    const { port } = await serveWith({ bodyIdleTimeoutMs: 200, bodyTimeoutMs: 600 });
    const id = newCaseId('whole');
    const body = chatJson(id);
    const exchange = await rawExchange(port, Buffer.from(chatHead({ id, framing: `Content-Length: ${body.length}`, extra: 'Connection: close' }) + body, 'latin1'));
    assert.equal(exchange.responses[0]?.status, 200);
  });

  it('answers an unmet Expect and closes the connection instead of waiting for a body no deadline covers', async () => {
    const { port } = await serveWith({ bodyIdleTimeoutMs: 200, bodyTimeoutMs: 5_000 });
    const id = newCaseId('unmet-expect');
    const client = await openClient(port);
    client.write(chatHead({ id, framing: 'Content-Length: 1000', extra: 'Expect: 200-ok\r\nConnection: keep-alive' }));
    const ending = await client.ended;
    assert.equal(ending.gaveUp, false, 'the server closed the connection');
    assert.deepEqual(ending.responses.map((r) => r.status), [417]);
    await assertNotForwarded(id);
  });

  it('refuses deadlines that are not positive whole milliseconds', async () => {
    for (const options of [{ bodyTimeoutMs: 0 }, { bodyIdleTimeoutMs: -1 }, { headersTimeoutMs: Number.NaN }, { bodyTimeoutMs: 1.5 }]) {
      await assert.rejects(serve(handler, { port: 0, host: '127.0.0.1', log: silentLogger, ...options }), RangeError, JSON.stringify(options));
    }
  });
});

describe('request header deadline', () => {
  it('answers headers that drip in without end with a JSON 408 and closes the connection', async () => {
    const { port } = await serveWith({ headersTimeoutMs: 300 });
    const client = await openClient(port);
    client.drip(`POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ${'a'.repeat(10_000)}`, 20);
    const ending = await client.ended;
    assert.equal(ending.gaveUp, false, 'the server closed the connection');
    assert.equal(ending.responses.length, 1);
    const response = ending.responses[0]!;
    assert.equal(response.status, 408);
    assert.equal(response.headers.connection, 'close');
    assert.equal(errorOf(response).code, 'request_headers_timeout');
  });

  it('closes a connection that never sends a byte, without an answer', async () => {
    const { port } = await serveWith({ headersTimeoutMs: 300 });
    const client = await openClient(port);
    const ending = await client.ended;
    assert.equal(ending.gaveUp, false, 'the server closed the connection');
    assert.equal(ending.raw.byteLength, 0);
  });

  it('leaves an idle keep-alive connection to the keep-alive timeout, not the header deadline', async () => {
    const { port } = await serveWith({ headersTimeoutMs: 200 });
    const client = await openClient(port);
    client.write(rawRequest({ method: 'GET', target: '/healthz', headers: [['Connection', 'keep-alive']] }));
    // Several header deadlines later the connection still serves a second request.
    await new Promise((resolve) => setTimeout(resolve, 700));
    assert.equal(client.isClosed(), false, 'still open');
    client.write(rawRequest({ method: 'GET', target: '/healthz' }));
    const ending = await client.ended;
    assert.deepEqual(ending.responses.map((r) => r.status), [200, 200]);
  });
});
