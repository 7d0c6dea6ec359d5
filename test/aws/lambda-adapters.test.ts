/**
 * The Lambda adapters in-process: API Gateway REST proxy events into `Request`s, and `Response`s out through the
 * runtime's streaming wire format (reproduced by the awslambda shim) or as buffered proxy results.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { Context } from 'aws-lambda';
import { apiGatewayResponseHeaders, requestFromApiGatewayEvent } from '../../lambda/aws/api-gateway-request';
import { bufferedHandler } from '../../lambda/aws/buffered-adapter';
import { streamingHandler } from '../../lambda/aws/streaming-adapter';
import { BadRequestError, RateLimitedError } from '../../lambda/core/errors';
import type { ExecutionContext, FetchHandler } from '../../lambda/core/handler';
import { createLogger, type Logger } from '../../lambda/core/log';
import { docsSampleEvent, restProxyEvent } from '../support/api-gateway-events';
import {
  DEFAULT_RESPONSE_CONTENT_TYPE,
  HTTP_INTEGRATION_RESPONSE_CONTENT_TYPE,
  RuntimeResponseStream,
  awslambdaShim,
  installAwslambdaShim,
} from '../support/awslambda-shim';

const lambdaContext = {} as Context;

function recordingLogger(): { logger: Logger; messages: () => string[] } {
  const lines: string[] = [];
  return {
    logger: createLogger('debug', (line) => lines.push(line)),
    messages: () => lines.map((line) => (JSON.parse(line) as { message: string }).message),
  };
}

function bytesFrom(...chunks: string[]): Uint8Array[] {
  return chunks.map((chunk) => new TextEncoder().encode(chunk));
}

/** Runs the streaming adapter once; resolves with the stream and what the core saw. */
async function stream(
  fetchHandler: FetchHandler,
  options: { event?: ReturnType<typeof restProxyEvent>; stream?: RuntimeResponseStream; logger?: Logger } = {},
): Promise<RuntimeResponseStream> {
  const responseStream = options.stream ?? new RuntimeResponseStream();
  const handler = awslambdaShim.streamifyResponse(
    streamingHandler(fetchHandler, { logger: options.logger ?? recordingLogger().logger }),
  );
  await handler(options.event ?? restProxyEvent(), responseStream, lambdaContext);
  return responseStream;
}

describe('requestFromApiGatewayEvent', () => {
  it('builds method, URL and query from the developer guide sample, with no stage prefix in the path', () => {
    const request = requestFromApiGatewayEvent(docsSampleEvent());
    assert.equal(request.method, 'POST');
    const url = new URL(request.url);
    assert.equal(url.origin, 'https://gy415nuibc.execute-api.us-east-1.amazonaws.com');
    assert.equal(url.pathname, '/hello/world');
    assert.deepEqual(url.searchParams.getAll('multivalueName'), ['you', 'me']);
    assert.deepEqual(url.searchParams.getAll('name'), ['me']);
  });

  it('keeps every header of the sample and skips its empty header name', () => {
    const request = requestFromApiGatewayEvent(docsSampleEvent());
    assert.equal(request.headers.get('headername'), 'headerValue');
    assert.equal(request.headers.get('x-forwarded-for'), '54.240.196.186, 54.182.214.83');
    assert.equal(request.headers.get('content-type'), 'application/json');
    assert.equal(request.headers.get('host'), 'gy415nuibc.execute-api.us-east-1.amazonaws.com');
    assert.equal([...request.headers.keys()].includes(''), false);
  });

  it('passes the sample text body through unchanged', async () => {
    assert.equal(await requestFromApiGatewayEvent(docsSampleEvent()).text(), '{\r\n\t"a": 1\r\n}');
  });

  it('decodes a base64 body to the exact bytes', async () => {
    const binary = Uint8Array.from({ length: 256 }, (_, i) => i);
    const request = requestFromApiGatewayEvent(restProxyEvent({ method: 'PUT', path: '/upload', body: binary }));
    assert.deepEqual(new Uint8Array(await request.arrayBuffer()), binary);
  });

  it('sends every value of a repeated header and query parameter', () => {
    const event = restProxyEvent({
      path: '/v1/models',
      headers: [
        ['Host', 'api.example.com'],
        ['Helicone-Property-Team', 'search'],
        ['Helicone-Property-Team', 'ads'],
      ],
      query: [
        ['tag', 'a'],
        ['tag', 'b'],
      ],
    });
    const request = requestFromApiGatewayEvent(event);
    assert.equal(request.headers.get('helicone-property-team'), 'search, ads');
    assert.deepEqual(new URL(request.url).searchParams.getAll('tag'), ['a', 'b']);
  });

  it('falls back to the single-value maps when the multi-value maps are missing', () => {
    const event = restProxyEvent({ headers: [['Host', 'api.example.com'], ['X-Trace', 't1']], query: [['q', '1']] });
    event.multiValueHeaders = null as unknown as typeof event.multiValueHeaders;
    event.multiValueQueryStringParameters = null;
    const request = requestFromApiGatewayEvent(event);
    assert.equal(request.headers.get('x-trace'), 't1');
    assert.equal(request.url, 'https://api.example.com/?q=1');
  });

  it('uses requestContext.domainName when there is no Host header, and https when no protocol is forwarded', () => {
    const event = restProxyEvent({ path: '/v1/chat/completions', headers: [] });
    event.requestContext.domainName = 'abc123.execute-api.eu-west-1.amazonaws.com';
    assert.equal(requestFromApiGatewayEvent(event).url, 'https://abc123.execute-api.eu-west-1.amazonaws.com/v1/chat/completions');
  });

  it('honours X-Forwarded-Proto http and ignores a Host that is not a host name', () => {
    const event = restProxyEvent({ headers: [['Host', 'evil.example/@x'], ['X-Forwarded-Proto', 'http']] });
    event.requestContext.domainName = 'api.example.com';
    assert.equal(requestFromApiGatewayEvent(event).url, 'http://api.example.com/');
  });

  it('keeps a path starting with // a path, and escapes a decoded ? in it', () => {
    const event = restProxyEvent({ path: '//other.example/a?b', headers: [['Host', 'api.example.com']] });
    const url = new URL(requestFromApiGatewayEvent(event).url);
    assert.equal(url.host, 'api.example.com');
    assert.equal(url.pathname, '//other.example/a%3Fb');
    assert.equal(url.search, '');
  });

  it('joins repeated Cookie headers with "; "', () => {
    const event = restProxyEvent({ headers: [['Cookie', 'a=1'], ['Cookie', 'b=2']] });
    assert.equal(requestFromApiGatewayEvent(event).headers.get('cookie'), 'a=1; b=2');
  });

  it('adds no content type the client did not send', () => {
    const request = requestFromApiGatewayEvent(restProxyEvent({ method: 'POST', body: '{"model":"gpt-4o-mini"}' }));
    assert.equal(request.headers.get('content-type'), null);
  });

  it('drops a body sent with GET, which a Request cannot carry', async () => {
    const request = requestFromApiGatewayEvent(restProxyEvent({ method: 'GET', body: 'ignored' }));
    assert.equal(request.body, null);
  });

  it('rejects a header that is not valid HTTP with a BadRequestError naming it', () => {
    const event = restProxyEvent({ headers: [['Bad Header', 'x']] });
    assert.throws(
      () => requestFromApiGatewayEvent(event),
      (error: unknown) => error instanceof BadRequestError && error.statusCode === 400 && error.param === 'Bad Header',
    );
  });

  it("hands the adapter's abort signal to the request", () => {
    const abort = new AbortController();
    const request = requestFromApiGatewayEvent(restProxyEvent(), { signal: abort.signal });
    abort.abort();
    assert.equal(request.signal.aborted, true);
  });
});

describe('apiGatewayResponseHeaders', () => {
  it('puts Set-Cookie in multiValueHeaders, folds other repeats and drops hop-by-hop headers', () => {
    const headers = new Headers([
      ['content-type', 'text/plain'],
      ['x-multi', 'a'],
      ['x-multi', 'b'],
      ['set-cookie', 'a=1; Path=/'],
      ['set-cookie', 'b=2, with comma; Path=/'],
      ['transfer-encoding', 'chunked'],
      ['connection', 'keep-alive'],
    ]);
    assert.deepEqual(apiGatewayResponseHeaders(headers), {
      headers: { 'content-type': 'text/plain', 'x-multi': 'a, b' },
      multiValueHeaders: { 'set-cookie': ['a=1; Path=/', 'b=2, with comma; Path=/'] },
    });
  });
});

describe('awslambda shim', () => {
  it('like the runtime, sends no prelude for a stream that is only ended', async () => {
    const responseStream = new RuntimeResponseStream();
    awslambdaShim.HttpResponseStream.from(responseStream, { statusCode: 204, headers: {} });
    await new Promise<void>((resolve) => responseStream.end(() => resolve()));
    assert.equal(responseStream.bytes().length, 0);
  });

  it('like the runtime, refuses a content type change after the first write', () => {
    const responseStream = new RuntimeResponseStream();
    assert.equal(responseStream.contentType, DEFAULT_RESPONSE_CONTENT_TYPE);
    responseStream.write('x');
    assert.throws(() => awslambdaShim.HttpResponseStream.from(responseStream, { statusCode: 200 }), /too late/);
  });
});

describe('streamingHandler', () => {
  let restore: () => void;
  before(() => {
    restore = installAwslambdaShim();
  });
  after(() => restore());

  it('writes the JSON prelude, 8 NUL bytes, then the body, as an HTTP integration response', async () => {
    const responseStream = await stream(
      async () => new Response('hello', { status: 200, headers: { 'content-type': 'text/plain' } }),
    );
    assert.equal(responseStream.contentType, HTTP_INTEGRATION_RESPONSE_CONTENT_TYPE);
    const expected = Buffer.concat([
      Buffer.from(JSON.stringify({ statusCode: 200, headers: { 'content-type': 'text/plain' } })),
      Buffer.alloc(8),
      Buffer.from('hello'),
    ]);
    assert.deepEqual(responseStream.bytes(), expected);
    assert.equal(responseStream.writableFinished, true);
  });

  it('gives the core the request API Gateway described', async () => {
    let seen: { method: string; url: string; body: string; user: string | null } | undefined;
    await stream(
      async (request) => {
        seen = { method: request.method, url: request.url, body: await request.text(), user: request.headers.get('helicone-user-id') };
        return new Response(null, { status: 204 });
      },
      {
        event: restProxyEvent({
          method: 'POST',
          path: '/v1/chat/completions',
          headers: [['Host', 'api.example.com'], ['Helicone-User-Id', 'alice']],
          body: '{"model":"gpt-4o-mini"}',
        }),
      },
    );
    assert.deepEqual(seen, {
      method: 'POST',
      url: 'https://api.example.com/v1/chat/completions',
      body: '{"model":"gpt-4o-mini"}',
      user: 'alice',
    });
  });

  it('translates status and headers, with Set-Cookie as a multi-value header', async () => {
    const headers = new Headers([
      ['content-type', 'text/event-stream'],
      ['x-multi', 'a'],
      ['x-multi', 'b'],
      ['set-cookie', 'a=1'],
      ['set-cookie', 'b=2'],
      ['transfer-encoding', 'chunked'],
    ]);
    const { prelude } = (await stream(async () => new Response('x', { status: 201, headers }))).decoded();
    assert.deepEqual(prelude, {
      statusCode: 201,
      headers: { 'content-type': 'text/event-stream', 'x-multi': 'a, b' },
      multiValueHeaders: { 'set-cookie': ['a=1', 'b=2'] },
    });
  });

  it('delivers a binary body byte for byte', async () => {
    const binary = Uint8Array.from({ length: 256 }, (_, i) => i);
    const responseStream = await stream(
      async () => new Response(binary, { headers: { 'content-type': 'application/octet-stream' } }),
    );
    assert.deepEqual(new Uint8Array(responseStream.decoded().body), binary);
  });

  it('sends the prelude for a response without a body', async () => {
    const responseStream = await stream(async () => new Response(null, { status: 204 }));
    assert.deepEqual(responseStream.decoded(), { prelude: { statusCode: 204, headers: {} }, body: Buffer.alloc(0) });
  });

  it('writes each chunk as the core produces it, before the core produces the next', { timeout: 5000 }, async () => {
    const responseStream = new RuntimeResponseStream();
    const chunks = bytesFrom('data: {"n":1}\n\n', 'data: {"n":2}\n\n', 'data: [DONE]\n\n');
    const deliveredBeforePull: number[] = [];
    let sent = 0;
    let expected = 0;
    await stream(
      async () =>
        new Response(
          new ReadableStream<Uint8Array>(
            {
              async pull(controller) {
                // Produce the next chunk only once the previous one reached the runtime: a buffering adapter
                // never delivers it, the wait times out and the body errors.
                await responseStream.waitForBody(expected);
                deliveredBeforePull.push(responseStream.receivedBody().length);
                const chunk = chunks[sent++];
                if (chunk === undefined) return controller.close();
                expected += chunk.length;
                controller.enqueue(chunk);
              },
            },
            { highWaterMark: 0 },
          ),
          { headers: { 'content-type': 'text/event-stream' } },
        ),
      { stream: responseStream },
    );
    const [a, b, c] = chunks.map((chunk) => chunk.length) as [number, number, number];
    assert.deepEqual(deliveredBeforePull, [0, a, a + b, a + b + c]);
    assert.equal(responseStream.decoded().body.toString(), 'data: {"n":1}\n\ndata: {"n":2}\n\ndata: [DONE]\n\n');
    // Prelude, delimiter, the empty write that flushes them, then one write per chunk.
    assert.deepEqual(
      responseStream.chunks.slice(3).map((chunk) => chunk.toString()),
      ['data: {"n":1}\n\n', 'data: {"n":2}\n\n', 'data: [DONE]\n\n'],
    );
  });

  it('stops pulling from the core while the response stream reports backpressure', { timeout: 5000 }, async () => {
    const responseStream = new RuntimeResponseStream({ highWaterMark: 64 });
    responseStream.hold();
    const total = 10;
    let pulls = 0;
    const done = stream(
      async () =>
        new Response(
          new ReadableStream<Uint8Array>(
            {
              pull(controller) {
                if (pulls === total) return controller.close();
                pulls++;
                controller.enqueue(new Uint8Array(100).fill(0x61));
              },
            },
            { highWaterMark: 0 },
          ),
        ),
      { stream: responseStream },
    );
    // Give an adapter that ignores backpressure ample turns of the event loop to drain the core.
    for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
    assert.equal(pulls, 1);
    responseStream.release();
    await done;
    assert.equal(pulls, total);
    assert.equal(responseStream.decoded().body.length, total * 100);
  });

  it('cancels the body and aborts the request when the client goes away, then still awaits waitUntil', { timeout: 5000 }, async () => {
    const responseStream = new RuntimeResponseStream();
    const order: string[] = [];
    let cancelReason: unknown;
    let signal: AbortSignal | undefined;
    const done = stream(
      async (request: Request, ctx: ExecutionContext) => {
        signal = request.signal;
        let cancelled!: () => void;
        const wasCancelled = new Promise<void>((resolve) => (cancelled = resolve));
        // Like the core's metering: write a partial usage event once the body was cancelled.
        ctx.waitUntil(
          wasCancelled.then(async () => {
            await new Promise((resolve) => setTimeout(resolve, 20));
            order.push('partial-event-written');
          }),
        );
        return new Response(
          new ReadableStream<Uint8Array>({
            start(controller) {
              controller.enqueue(new TextEncoder().encode('data: first\n\n'));
            },
            cancel(reason) {
              cancelReason = reason;
              order.push('body-cancelled');
              cancelled();
            },
          }),
        );
      },
      { stream: responseStream },
    ).then(() => order.push('handler-returned'));

    await responseStream.waitForBody('data: first\n\n'.length);
    responseStream.destroy(new Error('socket hang up'));
    await done;
    assert.deepEqual(order, ['body-cancelled', 'partial-event-written', 'handler-returned']);
    assert.ok(cancelReason instanceof Error);
    assert.equal(signal?.aborted, true);
  });

  it('ends the response stream before awaiting the waitUntil work', { timeout: 5000 }, async () => {
    const responseStream = new RuntimeResponseStream();
    const order: string[] = [];
    responseStream.on('finish', () => order.push('stream-finished'));
    await stream(
      async (_request, ctx) => {
        // Metering that finishes only after the stream did: an adapter awaiting it before end() never ends.
        const finished = new Promise<string>((resolve) => {
          const timer = setTimeout(() => resolve('usage-timed-out'), 2000);
          responseStream.once('finish', () => {
            clearTimeout(timer);
            resolve('usage-written');
          });
        });
        ctx.waitUntil(finished.then((what) => order.push(what)));
        return new Response('done');
      },
      { stream: responseStream },
    );
    order.push('handler-returned');
    assert.deepEqual(order, ['stream-finished', 'usage-written', 'handler-returned']);
  });

  it('turns a throw from the core into a JSON 500 that hides the detail', async () => {
    const log = recordingLogger();
    const responseStream = await stream(
      async () => {
        throw new Error('upstream key sk-secret rejected');
      },
      { logger: log.logger },
    );
    const { prelude, body } = responseStream.decoded();
    assert.equal(prelude.statusCode, 500);
    assert.equal(prelude.headers?.['content-type'], 'application/json; charset=utf-8');
    const error = (JSON.parse(body.toString()) as { error: { type: string; message: string } }).error;
    assert.equal(error.type, 'server_error');
    assert.doesNotMatch(body.toString(), /sk-secret/);
    assert.deepEqual(log.messages(), ['handler_failed']);
  });

  it("answers a GatewayError thrown by the core with the error's own status", async () => {
    const { prelude } = (
      await stream(async () => {
        throw new RateLimitedError('rate_limited', 'Slow down.');
      })
    ).decoded();
    assert.equal(prelude.statusCode, 429);
  });

  it('answers 400 for an event whose headers are not valid HTTP', async () => {
    const responseStream = await stream(async () => new Response('unreachable'), {
      event: restProxyEvent({ headers: [['Bad Header', 'x']] }),
    });
    const { prelude, body } = responseStream.decoded();
    assert.equal(prelude.statusCode, 400);
    assert.match(body.toString(), /"param":"Bad Header"/);
  });

  it('ends the stream cleanly, without throwing, when the body fails after the prelude', async () => {
    const log = recordingLogger();
    const responseStream = await stream(
      async () =>
        new Response(
          new ReadableStream<Uint8Array>({
            start(controller) {
              controller.enqueue(new TextEncoder().encode('partial'));
            },
            pull(controller) {
              controller.error(new Error('upstream reset'));
            },
          }),
        ),
      { logger: log.logger },
    );
    assert.equal(responseStream.decoded().body.toString(), 'partial');
    assert.equal(responseStream.writableFinished, true);
    assert.deepEqual(log.messages(), ['response_body_failed']);
  });
});

describe('bufferedHandler', () => {
  const quiet = recordingLogger().logger;

  it('returns a JSON body as text with its status and headers', async () => {
    const handler = bufferedHandler(async () => Response.json({ users: 2 }, { status: 200 }), { logger: quiet });
    assert.deepEqual(await handler(restProxyEvent({ path: '/v1/usage/users' })), {
      statusCode: 200,
      headers: { 'content-type': 'application/json' },
      body: '{"users":2}',
      isBase64Encoded: false,
    });
  });

  it('returns a binary body as base64', async () => {
    const binary = Uint8Array.from({ length: 256 }, (_, i) => 255 - i);
    const handler = bufferedHandler(
      async () => new Response(binary, { headers: { 'content-type': 'application/vnd.apache.parquet' } }),
      { logger: quiet },
    );
    const result = await handler(restProxyEvent());
    assert.equal(result.isBase64Encoded, true);
    assert.deepEqual(new Uint8Array(Buffer.from(result.body, 'base64')), binary);
  });

  it('returns text without a content type when the bytes are UTF-8, base64 when they are not', async () => {
    const text = bufferedHandler(async () => new Response(new TextEncoder().encode('plain ✓')), { logger: quiet });
    assert.deepEqual(await text(restProxyEvent()).then((r) => [r.body, r.isBase64Encoded]), ['plain ✓', false]);
    const bytes = bufferedHandler(async () => new Response(new Uint8Array([0xff, 0xfe])), { logger: quiet });
    assert.deepEqual(await bytes(restProxyEvent()).then((r) => [r.body, r.isBase64Encoded]), ['//4=', true]);
  });

  it('returns repeated Set-Cookie values in multiValueHeaders', async () => {
    const handler = bufferedHandler(
      async () => new Response('ok', { headers: [['set-cookie', 'a=1'], ['set-cookie', 'b=2'], ['content-type', 'text/plain']] }),
      { logger: quiet },
    );
    const result = await handler(restProxyEvent());
    assert.deepEqual(result.multiValueHeaders, { 'set-cookie': ['a=1', 'b=2'] });
    assert.deepEqual(result.headers, { 'content-type': 'text/plain' });
  });

  it('awaits the waitUntil work before returning', async () => {
    const order: string[] = [];
    const handler = bufferedHandler(
      async (_request, ctx) => {
        ctx.waitUntil(new Promise((resolve) => setTimeout(resolve, 20)).then(() => order.push('usage-written')));
        return new Response('ok');
      },
      { logger: quiet },
    );
    await handler(restProxyEvent());
    order.push('handler-returned');
    assert.deepEqual(order, ['usage-written', 'handler-returned']);
  });

  it('turns a throw from the core into the JSON error response', async () => {
    const handler = bufferedHandler(
      async () => {
        throw new Error('database exploded');
      },
      { logger: quiet },
    );
    const result = await handler(restProxyEvent());
    assert.equal(result.statusCode, 500);
    assert.equal(result.isBase64Encoded, false);
    assert.equal((JSON.parse(result.body) as { error: { type: string } }).error.type, 'server_error');
    assert.doesNotMatch(result.body, /database exploded/);
  });

  it('gives the core the request API Gateway described', async () => {
    let url: string | undefined;
    const handler = bufferedHandler(
      async (request) => {
        url = request.url;
        return new Response(null, { status: 204 });
      },
      { logger: quiet },
    );
    const result = await handler(docsSampleEvent());
    assert.equal(url, 'https://gy415nuibc.execute-api.us-east-1.amazonaws.com/hello/world?name=me&multivalueName=you&multivalueName=me');
    assert.deepEqual(result, { statusCode: 204, headers: {}, body: '', isBase64Encoded: false });
  });
});
