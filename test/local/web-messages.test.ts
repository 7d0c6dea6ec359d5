import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { NodeRequest, NodeResponse } from '../../lambda/local/web-messages';

const URL_ = 'http://localhost:8787/v1/chat/completions?x=1';

function streamOf(...parts: string[]): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>({
    start(controller) {
      for (const part of parts) controller.enqueue(new TextEncoder().encode(part));
      controller.close();
    },
  });
}

function request(body: ReadableStream<Uint8Array> | null, method = 'POST'): NodeRequest {
  return new NodeRequest(URL_, method, new Headers({ 'content-type': 'application/json' }), new AbortController().signal, body);
}

describe('NodeRequest', () => {
  it('reads like a standard Request in every field the spec defaults', () => {
    const standard = new Request(URL_, { method: 'POST', body: 'x' });
    const light = request(streamOf('x'));
    for (const field of ['cache', 'credentials', 'destination', 'integrity', 'keepalive', 'mode', 'redirect', 'referrer', 'referrerPolicy', 'url', 'method'] as const) {
      assert.equal(light[field], standard[field], field);
    }
    assert.equal(Object.prototype.toString.call(light), '[object Request]');
  });

  it('carries the signal, headers and body stream it was given', () => {
    const controller = new AbortController();
    const headers = new Headers({ 'helicone-user-id': 'u1' });
    const body = streamOf('{}');
    const light = new NodeRequest(URL_, 'POST', headers, controller.signal, body);
    assert.equal(light.signal, controller.signal);
    assert.equal(light.headers, headers);
    assert.equal(light.body, body);
    controller.abort();
    assert.equal(light.signal.aborted, true);
  });

  it('reads its body as text and JSON, and is then used', async () => {
    const light = request(streamOf('{"a":', '1}'));
    assert.equal(light.bodyUsed, false);
    assert.deepEqual(await light.json(), { a: 1 });
    assert.equal(light.bodyUsed, true);
    await assert.rejects(light.text(), TypeError);
  });

  it('counts a body read through its stream as used, and refuses to read it again', async () => {
    const light = request(streamOf('abc'));
    const reader = light.body!.getReader();
    assert.equal(light.bodyUsed, true);
    assert.equal(new TextDecoder().decode((await reader.read()).value), 'abc');
    await assert.rejects(light.text(), TypeError);
  });

  it('clones like a Request: both copies read the whole body', async () => {
    const light = request(streamOf('hello ', 'world'));
    const copy = light.clone();
    assert.ok(copy instanceof Request);
    assert.equal(await copy.text(), 'hello world');
    assert.equal(await light.text(), 'hello world');
  });

  it('has an empty body without a stream (GET)', async () => {
    const light = request(null, 'GET');
    assert.equal(light.body, null);
    assert.equal(light.bodyUsed, false);
    assert.equal(await light.text(), '');
    assert.equal((await light.arrayBuffer()).byteLength, 0);
  });
});

describe('NodeResponse', () => {
  it('reads like a standard Response', async () => {
    const headers = new Headers({ 'content-type': 'application/json' });
    const light = new NodeResponse('http://up.local/v1/x', 201, 'Created', headers, streamOf('{"ok":true}'));
    const standard = new Response('{}', { status: 201 });
    assert.equal(light.ok, standard.ok);
    assert.equal(light.redirected, standard.redirected);
    assert.equal(light.status, 201);
    assert.equal(light.statusText, 'Created');
    assert.equal(light.headers, headers);
    assert.equal(Object.prototype.toString.call(light), '[object Response]');
    assert.equal(light.bodyUsed, false);
    assert.deepEqual(await light.json(), { ok: true });
    assert.equal(light.bodyUsed, true);
  });

  it('is not ok outside 200–299, and clones with its status and body', async () => {
    const light = new NodeResponse('http://up.local/', 429, 'Too Many Requests', new Headers(), streamOf('slow down'));
    assert.equal(light.ok, false);
    const copy = light.clone();
    assert.ok(copy instanceof Response);
    assert.equal(copy.status, 429);
    assert.equal(await copy.text(), 'slow down');
    assert.equal(await light.text(), 'slow down');
  });

  it('has no body for a bodiless answer', async () => {
    const light = new NodeResponse('http://up.local/', 204, 'No Content', new Headers(), null);
    assert.equal(light.body, null);
    assert.equal(await light.text(), '');
  });
});
