import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import { collectingContext } from '../../lambda/core/handler';
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
          res.writeHead(201, { 'content-type': 'application/json', 'x-seen-method': req.method ?? '' });
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
