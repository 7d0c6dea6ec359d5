import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { LightRequest, LightResponse, bytesBody, readAll, readerBody, streamBody, streamOfReader, type BodySource, type LightReader, type ReadResult } from '../../lambda/core/messages';

const URL_ = 'http://localhost:8787/v1/chat/completions?x=1';

function streamOf(...parts: string[]): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>({
    start(controller) {
      for (const part of parts) controller.enqueue(new TextEncoder().encode(part));
      controller.close();
    },
  });
}

function request(body: ReadableStream<Uint8Array> | null, method = 'POST'): LightRequest {
  return new LightRequest(URL_, method, new Headers({ 'content-type': 'application/json' }), new AbortController().signal, body === null ? null : streamBody(body));
}

describe('LightRequest', () => {
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
    const light = new LightRequest(URL_, 'POST', headers, controller.signal, streamBody(body));
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

describe('LightResponse', () => {
  it('reads like a standard Response', async () => {
    const headers = new Headers({ 'content-type': 'application/json' });
    const light = new LightResponse('http://up.local/v1/x', 201, 'Created', headers, streamBody(streamOf('{"ok":true}')));
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
    const light = new LightResponse('http://up.local/', 429, 'Too Many Requests', new Headers(), streamBody(streamOf('slow down')));
    assert.equal(light.ok, false);
    const copy = light.clone();
    assert.ok(copy instanceof Response);
    assert.equal(copy.status, 429);
    assert.equal(await copy.text(), 'slow down');
    assert.equal(await light.text(), 'slow down');
  });

  it('has no body for a bodiless answer', async () => {
    const light = new LightResponse('http://up.local/', 204, 'No Content', new Headers(), null);
    assert.equal(light.body, null);
    assert.equal(await light.text(), '');
  });
});

/** A source that says which way it was read. */
function watchedSource(text: string): BodySource & { readonly calls: string[] } {
  const inner = bytesBody(new TextEncoder().encode(text));
  const calls: string[] = [];
  return {
    calls,
    stream: () => {
      calls.push('stream');
      return inner.stream();
    },
    bytes: () => {
      calls.push('bytes');
      return inner.bytes();
    },
  };
}

describe('bodies read whole', () => {
  it('reads arrayBuffer() from the source without making a stream, and is then used', async () => {
    const source = watchedSource('{"a":1}');
    const light = new LightRequest(URL_, 'POST', new Headers(), new AbortController().signal, source);
    assert.equal(new TextDecoder().decode(await light.arrayBuffer()), '{"a":1}');
    assert.deepEqual(source.calls, ['bytes']);
    assert.equal(light.bodyUsed, true);
    // Like a standard body after arrayBuffer(): a locked stream, and every further read rejects.
    assert.equal(light.body!.locked, true);
    await assert.rejects(light.text(), TypeError);
    await assert.rejects(light.arrayBuffer(), TypeError);
    assert.deepEqual(source.calls, ['bytes']);
  });

  it('reads through the stream once the body stream was asked for', async () => {
    const source = watchedSource('abc');
    const light = new LightResponse('http://up.local/', 200, 'OK', new Headers(), source);
    assert.ok(light.body instanceof ReadableStream);
    assert.equal(new TextDecoder().decode(await light.arrayBuffer()), 'abc');
    assert.deepEqual(source.calls, ['stream']);
  });

  it('answers bytes() like arrayBuffer()', async () => {
    const light = new LightResponse('', 200, '', new Headers(), bytesBody(new Uint8Array([1, 2, 3])));
    assert.deepEqual([...(await light.bytes())], [1, 2, 3]);
  });

  it('hands an untouched body held in memory to an adapter once, and then counts it used', async () => {
    const bytes = new TextEncoder().encode('whole');
    const light = new LightResponse('', 200, '', new Headers(), bytesBody(bytes));
    assert.equal(light.type, 'default', 'made by the gateway, like new Response()');
    assert.equal(light.takeInMemory(), bytes);
    assert.equal(light.bodyUsed, true);
    assert.equal(light.takeInMemory(), undefined);
    await assert.rejects(light.text(), TypeError);
  });

  it('does not hand over a body in memory once it was read another way', async () => {
    const light = new LightResponse('', 200, '', new Headers(), bytesBody(new TextEncoder().encode('x')));
    assert.equal(await light.text(), 'x');
    assert.equal(light.takeInMemory(), undefined);
    const streamed = new LightResponse('', 200, '', new Headers(), streamBody(streamOf('y')));
    assert.equal(streamed.takeInMemory(), undefined, 'a stream is not in memory');
    assert.equal(await streamed.text(), 'y', 'and is still there to read');
  });

  it('gives an ArrayBuffer of exactly the body, also for a view into a larger buffer', async () => {
    const backing = new TextEncoder().encode('--body--');
    const light = new LightResponse('', 200, '', new Headers(), bytesBody(backing.subarray(2, 6)));
    const buffer = await light.arrayBuffer();
    assert.equal(buffer.byteLength, 4);
    assert.equal(new TextDecoder().decode(buffer), 'body');
  });
});

describe('bodies read through a reader', () => {
  /** A reader over these parts that notes a cancel. */
  function partsReader(...parts: string[]): LightReader & { cancelled: boolean } {
    const queue = parts.map((part) => new TextEncoder().encode(part));
    return {
      cancelled: false,
      async read(): Promise<ReadResult> {
        const value = queue.shift();
        return value === undefined ? { done: true } : { done: false, value };
      },
      async cancel() {
        this.cancelled = true;
      },
    };
  }

  it('hands its reader to a consumer that asks first, once, and then counts as used', async () => {
    const reader = partsReader('a', 'b');
    const light = new LightResponse('', 200, '', new Headers(), readerBody(reader));
    assert.equal(light.takeReader(), reader);
    assert.equal(light.bodyUsed, true);
    assert.equal(light.takeReader(), undefined);
    assert.equal(light.takeInMemory(), undefined);
    await assert.rejects(light.text(), TypeError);
  });

  it('reads as a Web stream, whole, or not at all once the stream was taken', async () => {
    assert.equal(await new LightResponse('', 200, '', new Headers(), readerBody(partsReader('x', 'y', 'z'))).text(), 'xyz');
    assert.equal(new TextDecoder().decode(await new LightResponse('', 200, '', new Headers(), readerBody(partsReader('1', '2'))).arrayBuffer()), '12');
    const streamed = new LightResponse('', 200, '', new Headers(), readerBody(partsReader('s')));
    assert.ok(streamed.body instanceof ReadableStream);
    assert.equal(streamed.takeReader(), undefined, 'the stream has it now');
  });

  it('passes a cancel of the Web stream on to the reader', async () => {
    const reader = partsReader('a', 'b', 'c');
    const stream = streamOfReader(reader);
    const streamReader = stream.getReader();
    assert.equal(new TextDecoder().decode((await streamReader.read()).value), 'a');
    await streamReader.cancel();
    assert.equal(reader.cancelled, true);
  });

  it('collects everything a reader has left', async () => {
    assert.equal(new TextDecoder().decode(await readAll(partsReader('he', 'll', 'o'))), 'hello');
    assert.equal((await readAll(partsReader())).byteLength, 0);
  });

  it('has no reader for a body without one (a stream, bytes in memory)', () => {
    assert.equal(new LightResponse('', 200, '', new Headers(), streamBody(streamOf('x'))).takeReader(), undefined);
    assert.equal(new LightResponse('', 200, '', new Headers(), bytesBody(new Uint8Array(1))).takeReader(), undefined);
  });
});
