import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { gzipSync } from 'node:zlib';
import { collectingContext } from '../../lambda/core/handler';
import { createLogger } from '../../lambda/core/log';
import { createUpstreamClient } from '../../lambda/local/upstream-client';
import { coreHarness, JSON_HEADERS, chatBody } from '../support/core-harness';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream';

let server: Server;
let base: string;
const client = createUpstreamClient();

before(async () => {
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString();
      switch (req.url) {
        case '/echo':
          res.writeHead(201, { 'content-type': 'application/json', 'x-seen-method': req.method ?? '', 'x-seen-a': req.headers['x-a'] ?? '' });
          res.end(JSON.stringify({ body, length: req.headers['content-length'] ?? null }));
          return;
        case '/gzip':
          res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' });
          res.end(gzipSync('{"ok":true}'));
          return;
        case '/empty':
          res.writeHead(204);
          res.end();
          return;
        case '/cut':
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          res.write('data: 1\n\n');
          setTimeout(() => res.destroy(), 20);
          return;
        case '/slow':
          setTimeout(() => {
            res.writeHead(200);
            res.end('late');
          }, 2_000);
          return;
        default:
          res.writeHead(404);
          res.end();
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(() => {
  server.closeAllConnections();
  server.close();
});

describe('createUpstreamClient', () => {
  it('sends method, headers and body and answers a Web Response', async () => {
    const response = await client(`${base}/echo`, { method: 'PUT', headers: { 'x-a': '1' }, body: new TextEncoder().encode('héllo') });
    assert.equal(response.status, 201);
    assert.equal(response.headers.get('x-seen-method'), 'PUT');
    assert.deepEqual(await response.json(), { body: 'héllo', length: '6' });
  });

  it('takes headers as a Headers, a record in any case, or a list of pairs, combining repeated names', async () => {
    const given: NonNullable<RequestInit['headers']>[] = [new Headers([['X-A', '1'], ['x-a', '2']]), { 'x-a': '1, 2' }, { 'X-A': '1, 2' }, [['x-a', '1'], ['X-A', '2']]];
    for (const headers of given) {
      const response = await client(`${base}/echo`, { method: 'POST', headers, body: 'x' });
      assert.equal(response.headers.get('x-seen-a'), '1, 2', JSON.stringify([...new Headers(headers)]));
    }
    await assert.rejects(client(`${base}/echo`, { headers: { 'x-a': 'line\nbreak' } }), 'an invalid value is refused, not sent');
  });

  it('decodes gzip like fetch does', async () => {
    const response = await client(`${base}/gzip`);
    assert.deepEqual(await response.json(), { ok: true });
  });

  it('gives a null body for 204', async () => {
    const response = await client(`${base}/empty`);
    assert.equal(response.status, 204);
    assert.equal(response.body, null);
  });

  it('errors the body stream when the upstream cuts the connection mid-body', async () => {
    const response = await client(`${base}/cut`);
    await assert.rejects(response.text());
  });

  it('rejects when the signal aborts before the headers', async () => {
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error('gave up')), 50);
    await assert.rejects(client(`${base}/slow`, { signal: controller.signal }), /gave up/);
  });

  it('rejects when the upstream cannot be reached', async () => {
    await assert.rejects(client('http://127.0.0.1:9/nothing'));
  });

  it('sends a string body as UTF-8 with its length', async () => {
    const response = await client(`${base}/echo`, { method: 'POST', body: 'héllo' });
    assert.deepEqual(await response.json(), { body: 'héllo', length: '6' });
  });

  it('refuses a streamed body, which could not be sent again, instead of sending it', async () => {
    const body = new ReadableStream<Uint8Array>({ start: (c) => c.close() });
    await assert.rejects(client(`${base}/echo`, { method: 'POST', body, duplex: 'half' } as RequestInit), TypeError);
  });
});

/** One request as the upstream received it: on which connection, the how-manieth on it, with which body. */
interface Arrival {
  readonly connection: number;
  readonly nthOnConnection: number;
  readonly body: string;
}

/**
 * What the upstream does with a request: answer it; close the connection without a byte (`close`: FIN, `reset`:
 * RST), which is what a request written into a connection the upstream had closed for idleness sees; send part or
 * all of an answer and then close; or hold it unanswered.
 */
type Treatment = 'answer' | 'close' | 'reset' | 'status-line-then-close' | 'headers-then-close' | 'hold';

describe('createUpstreamClient when the upstream closes a kept-alive connection', () => {
  let upstream: Server;
  let url: string;
  let arrivals: Arrival[] = [];
  let treat: (arrival: Arrival) => Treatment = () => 'answer';
  let onArrival: ((arrival: Arrival) => void) | undefined;
  const closed = new Map<number, Promise<unknown>>();
  const sockets = new Map<number, Socket>();

  before(async () => {
    const connections = new WeakMap<Socket, { id: number; requests: number }>();
    let opened = 0;
    upstream = createServer((req, res) => {
      const socket = req.socket;
      let connection = connections.get(socket);
      if (connection === undefined) {
        connection = { id: ++opened, requests: 0 };
        connections.set(socket, connection);
        closed.set(connection.id, once(socket, 'close'));
        sockets.set(connection.id, socket);
      }
      const nthOnConnection = ++connection.requests;
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const arrival = { connection: connection.id, nthOnConnection, body: Buffer.concat(chunks).toString() };
        arrivals.push(arrival);
        onArrival?.(arrival);
        switch (treat(arrival)) {
          case 'answer':
            res.writeHead(200, { 'content-type': 'application/json' });
            res.end(JSON.stringify({ answered: arrival.body }));
            return;
          case 'close':
            socket.destroy();
            return;
          case 'reset':
            socket.resetAndDestroy();
            return;
          case 'status-line-then-close':
            socket.end('HTTP/1.1 200 OK\r\n');
            return;
          case 'headers-then-close':
            res.writeHead(200, { 'content-type': 'text/event-stream' });
            res.write('data: 1\n\n', () => socket.destroy());
            return;
          case 'hold':
            return;
        }
      });
    });
    // Long enough that only the client's own idle timeout can close a connection during a test.
    upstream.keepAliveTimeout = 60_000;
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}/v1/chat/completions`;
  });
  after(() => {
    upstream.closeAllConnections();
    upstream.close();
  });

  /** A new client, so a new pool, and an upstream that answers until the test says otherwise. */
  function newClient(options: { idleSocketTimeoutMs?: number } = {}) {
    arrivals = [];
    treat = () => 'answer';
    onArrival = undefined;
    const lines: string[] = [];
    const fetchUpstream = createUpstreamClient({ ...options, log: createLogger('debug', (line) => lines.push(line)) });
    const post = (body: string, init: RequestInit = {}) => fetchUpstream(url, { method: 'POST', body: new TextEncoder().encode(body), ...init });
    const resent = () => lines.map((line) => JSON.parse(line) as { message: string }).filter((l) => l.message === 'upstream_request_resent');
    return { post, resent };
  }

  /** A new client whose first requests have been answered at once, leaving `connections` idle in its pool. */
  async function warmClient(options: { idleSocketTimeoutMs?: number } = {}, connections = 1) {
    const warm = newClient(options);
    const answers = await Promise.all(Array.from({ length: connections }, async () => (await warm.post('first')).json()));
    assert.deepEqual(answers, Array(connections).fill({ answered: 'first' }));
    assert.equal(new Set(arrivals.map((a) => a.connection)).size, connections);
    // A connection goes back to the pool once its answer has been read, on the next tick.
    await nextTurn();
    return warm;
  }

  it('sends the request again on a new connection, not another pooled one, when the reused one closes without a byte of answer', async () => {
    // Two idle connections in the pool, and an upstream that has closed both: only a new connection gets through.
    const { post, resent } = await warmClient({}, 2);
    const pooled = new Set(arrivals.map((a) => a.connection));
    treat = (a) => (pooled.has(a.connection) ? 'close' : 'answer');
    const response = await post('second');
    assert.equal(response.status, 200);
    assert.deepEqual(await response.json(), { answered: 'second' });
    const second = arrivals.filter((a) => a.body === 'second');
    assert.equal(second.length, 2);
    assert.ok(pooled.has(second[0]!.connection));
    assert.equal(second[0]!.nthOnConnection, 2);
    // Answered once, on a connection of its own.
    assert.ok(!pooled.has(second[1]!.connection));
    assert.equal(second[1]!.nthOnConnection, 1);
    assert.equal(resent().length, 1);
  });

  it('sends the request again when the reused connection is reset (RST)', async () => {
    const { post, resent } = await warmClient();
    const reused = arrivals[0]!.connection;
    treat = (a) => (a.connection === reused && a.nthOnConnection === 2 ? 'reset' : 'answer');
    assert.deepEqual(await (await post('second')).json(), { answered: 'second' });
    assert.equal(arrivals.filter((a) => a.body === 'second' && a.connection !== reused).length, 1);
    assert.equal(resent().length, 1);
  });

  it('sends again at most once: a failing new connection is an error', async () => {
    const { post, resent } = await warmClient();
    const reused = arrivals[0]!.connection;
    treat = () => 'close';
    await assert.rejects(post('second'), { code: 'ECONNRESET' });
    assert.deepEqual(
      arrivals.map((a) => [a.connection === reused, a.nthOnConnection, a.body]),
      [
        [true, 1, 'first'],
        [true, 2, 'second'],
        [false, 1, 'second'],
      ],
    );
    assert.equal(resent().length, 1);
  });

  it('does not send again when the status line had arrived', async () => {
    const { post, resent } = await warmClient();
    treat = (a) => (a.nthOnConnection === 2 ? 'status-line-then-close' : 'answer');
    await assert.rejects(post('second'));
    assert.deepEqual(arrivals.map((a) => a.body), ['first', 'second']);
    assert.equal(resent().length, 0);
  });

  it('does not send again when the answer breaks after its headers: the body stays an error', async () => {
    const { post, resent } = await warmClient();
    treat = (a) => (a.nthOnConnection === 2 ? 'headers-then-close' : 'answer');
    const response = await post('second');
    assert.equal(response.status, 200);
    await assert.rejects(response.text());
    assert.deepEqual(arrivals.map((a) => a.body), ['first', 'second']);
    assert.equal(resent().length, 0);
  });

  it('does not send again when the reused connection closes only after the upstream held the request: it may have run it', async () => {
    const { post, resent } = await warmClient();
    const reused = arrivals[0]!.connection;
    treat = (a) => (a.nthOnConnection === 2 ? 'hold' : 'answer');
    // The upstream works on the request well past the stale-connection window, then its connection breaks.
    onArrival = (a) => {
      if (a.body === 'second') setTimeout(() => sockets.get(reused)?.destroy(), 1_300);
    };
    await assert.rejects(post('second'), { code: 'ECONNRESET' });
    assert.deepEqual(arrivals.map((a) => a.body), ['first', 'second']);
    assert.equal(resent().length, 0);
  });

  it('does not send again when a new connection closes without answering', async () => {
    const { post, resent } = newClient();
    treat = () => 'close';
    await assert.rejects(post('first'), { code: 'ECONNRESET' });
    assert.deepEqual(arrivals.map((a) => [a.nthOnConnection, a.body]), [[1, 'first']]);
    assert.equal(resent().length, 0);
  });

  it('does not send again when the caller aborts while waiting on a reused connection', async () => {
    const { post, resent } = await warmClient();
    treat = (a) => (a.nthOnConnection === 2 ? 'hold' : 'answer');
    const controller = new AbortController();
    onArrival = (a) => {
      if (a.body === 'second') controller.abort(new Error('client went away'));
    };
    await assert.rejects(post('second', { signal: controller.signal }), /client went away/);
    // The abort closed the held connection; a resend would have been logged on that close.
    await closed.get(arrivals[1]!.connection);
    await nextTurn();
    assert.deepEqual(arrivals.map((a) => a.body), ['first', 'second']);
    assert.equal(resent().length, 0);
  });

  it('closes a pooled connection idle for idleSocketTimeoutMs, before the upstream does', { timeout: 10_000 }, async () => {
    const { post, resent } = await warmClient({ idleSocketTimeoutMs: 50 });
    const first = arrivals[0]!.connection;
    // The upstream keeps idle connections for 60 s: only the client closes this one.
    await closed.get(first);
    assert.deepEqual(await (await post('second')).json(), { answered: 'second' });
    assert.notEqual(arrivals[1]!.connection, first);
    assert.equal(arrivals[1]!.nthOnConnection, 1);
    assert.equal(resent().length, 0);
  });
});

describe('the proxy core on createUpstreamClient', () => {
  let upstream: FakeUpstream;
  before(async () => {
    upstream = await startFakeUpstream();
  });
  after(() => upstream.close());

  it('streams, strips injected usage and meters exactly as with fetch', async () => {
    const body = chatBody({ stream: true });
    const direct = await (await fetch(`${upstream.url}/v1/chat/completions`, { method: 'POST', headers: JSON_HEADERS, body })).text();
    const gw = coreHarness({ upstreamUrl: upstream.url });
    const viaNode = coreHarness({ upstreamUrl: upstream.url, fetch: createUpstreamClient() });
    const a = await gw.send('/v1/chat/completions', { method: 'POST', headers: JSON_HEADERS, body });
    const b = await viaNode.send('/v1/chat/completions', { method: 'POST', headers: JSON_HEADERS, body });
    assert.equal(b.text, direct);
    assert.equal(a.text, direct);
    assert.deepEqual({ ...b.event, request_id: '', ts: '', latency_ms: 0, ttft_ms: 0 }, { ...a.event, request_id: '', ts: '', latency_ms: 0, ttft_ms: 0 });
  });

  it('meters an upstream reset as partial', async () => {
    const viaNode = coreHarness({ upstreamUrl: upstream.url, fetch: createUpstreamClient() });
    const ctx = collectingContext();
    const response = await viaNode.handle(
      new Request('http://gw.test/v1/chat/completions', {
        method: 'POST',
        headers: { ...JSON_HEADERS, 'x-fake-reset-after': '2' },
        body: chatBody({ stream: true }),
      }),
      ctx,
    );
    await assert.rejects(response.text());
    await ctx.settled();
    const event = viaNode.sink.events.at(-1);
    assert.equal(event?.usage_source, 'partial');
    assert.equal(event?.error, 'upstream_reset');
  });
});
