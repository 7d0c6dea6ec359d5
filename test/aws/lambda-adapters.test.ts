/**
 * The Lambda adapters in-process: API Gateway REST proxy events into `Request`s, and `Response`s out through the
 * runtime's streaming wire format (reproduced by the awslambda shim) or as buffered proxy results.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { APIGatewayProxyEvent, Context } from 'aws-lambda';
import { apiGatewayResponseHeaders, requestFromApiGatewayEvent } from '../../lambda/aws/api-gateway-request';
import { bufferedHandler } from '../../lambda/aws/buffered-adapter';
import { streamingHandler } from '../../lambda/aws/streaming-adapter';
import { BadRequestError, GatewayError, RateLimitedError } from '../../lambda/core/errors';
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

/** The faults the generated events of adapter-fuzz.test.ts found, each pinned by the smallest event that showed it. */
describe('requestFromApiGatewayEvent on malformed events', () => {
  const chat = () => {
    const event = restProxyEvent({ method: 'POST', path: '/v1/chat/completions', headers: [['Host', 'api.example.com']], body: '{"model":"gpt-4o-mini"}' });
    event.requestContext.domainName = 'fallback.example.com';
    return event as APIGatewayProxyEvent & Record<string, any>;
  };
  const refusal = (code: string, param: string | null, status = 400) => (error: unknown) =>
    error instanceof GatewayError && error.statusCode === status && error.code === code && (error.param ?? null) === param;

  it('falls back to the domain name when Host would not parse as a URL authority, instead of a TypeError', () => {
    for (const host of ['999.999.999.999', '1.2.3.4.5', '[::1]:99999', 'api.example.com:70000']) {
      const event = chat();
      event.headers.Host = host;
      event.multiValueHeaders.Host = [host];
      assert.equal(new URL(requestFromApiGatewayEvent(event).url).host, 'fallback.example.com', host);
    }
  });

  it('falls back to localhost when the domain name is not a host either', () => {
    for (const domainName of ['evil.example/x', '', '999.999.999.999', null]) {
      const event = chat();
      delete event.headers.Host;
      delete event.multiValueHeaders.Host;
      event.requestContext.domainName = domainName as string;
      const url = new URL(requestFromApiGatewayEvent(event).url);
      assert.deepEqual([url.host, url.pathname], ['localhost', '/v1/chat/completions'], String(domainName));
    }
  });

  it('answers CONNECT, TRACE, TRACK and other methods API Gateway never serves with a 405 naming the method, not a TypeError', () => {
    for (const method of ['CONNECT', 'trace', 'Track', 'PROPFIND', 'FOO']) {
      const event = chat();
      event.httpMethod = method;
      assert.throws(() => requestFromApiGatewayEvent(event), refusal('method_not_allowed', 'method', 405), method);
    }
  });

  it('refuses a method that is not an HTTP token, or not a string, with a 400 naming the method', () => {
    for (const method of ['G ET', 'POST ', 'ÜBER', 'po\u017Ft', '\u0000', 42, {}]) {
      const event = chat();
      event.httpMethod = method as string;
      assert.throws(() => requestFromApiGatewayEvent(event), refusal('invalid_method', 'method'), JSON.stringify(method));
    }
  });

  it('leaves out a stage prefix that is not a plain path instead of failing on it', () => {
    for (const stage of ['/pr\nod', '/pr\u0000od', '/日本', '//evil.example', '/x"y', '/a b']) {
      const event = chat();
      event.requestContext.path = `${stage}/v1/chat/completions`;
      assert.equal(requestFromApiGatewayEvent(event).headers.get('x-forwarded-prefix'), null, JSON.stringify(stage));
    }
    const event = chat();
    event.requestContext.path = '/prod/v1/chat/completions';
    assert.equal(requestFromApiGatewayEvent(event).headers.get('x-forwarded-prefix'), '/prod');
  });

  it('reads a path that is not a string as /', () => {
    const event = chat();
    event.path = 42 as unknown as string;
    assert.equal(new URL(requestFromApiGatewayEvent(event).url).pathname, '/');
  });

  it('reads multi-value entries that are null, a bare string or hold non-strings without inventing values', () => {
    const event = chat();
    event.multiValueHeaders['X-Null'] = null as unknown as string[];
    event.headers['X-Null'] = 'from the single map';
    event.multiValueHeaders['X-Bare'] = 'abc' as unknown as string[];
    event.multiValueHeaders['X-Mixed'] = [null, 'kept', 7] as unknown as string[];
    const headers = requestFromApiGatewayEvent(event).headers;
    assert.equal(headers.get('x-null'), 'from the single map');
    assert.equal(headers.get('x-bare'), 'abc');
    assert.equal(headers.get('x-mixed'), 'kept');
  });

  it('refuses a header value with a control character other than tab, which could not be forwarded', () => {
    for (const value of ['a\u007fb', '\u001b[31m', 'a\u0001', '\r\nX-Injected: 1']) {
      const event = chat();
      event.multiValueHeaders.Accept = [value];
      assert.throws(() => requestFromApiGatewayEvent(event), refusal('invalid_header', 'Accept'), JSON.stringify(value));
    }
    const event = chat();
    event.multiValueHeaders['X-Latin1'] = ['caf\u00e9\tau lait'];
    assert.equal(requestFromApiGatewayEvent(event).headers.get('x-latin1'), 'caf\u00e9\tau lait');
  });

  it('skips query values that are null rather than sending "null"', () => {
    const event = chat();
    event.queryStringParameters = { a: null, b: '1' } as unknown as Record<string, string>;
    event.multiValueQueryStringParameters = { c: [null, 'x'], d: 'bare' } as unknown as Record<string, string[]>;
    assert.equal(new URL(requestFromApiGatewayEvent(event).url).search, '?c=x&d=bare&b=1');
  });

  it('refuses a body marked base64 that is not base64, instead of forwarding what node makes of it', () => {
    for (const body of ['!!!!', 'Zm9v YmFy', 'Zm9vYg', '{"model":"gpt-4o-mini"}', '-_-_']) {
      const event = chat();
      event.body = body;
      event.isBase64Encoded = true;
      assert.throws(() => requestFromApiGatewayEvent(event), refusal('invalid_base64', 'body'), body);
    }
  });

  it('decodes only when isBase64Encoded is true, not when it is a truthy string', async () => {
    const event = chat();
    event.isBase64Encoded = 'false' as unknown as boolean;
    assert.equal(await requestFromApiGatewayEvent(event).text(), '{"model":"gpt-4o-mini"}');
  });

  it('refuses a body that is not text, and an invocation that is not an event, with a 400', () => {
    const event = chat();
    event.body = 5 as unknown as string;
    assert.throws(() => requestFromApiGatewayEvent(event), refusal('invalid_body', 'body'));
    assert.throws(() => requestFromApiGatewayEvent(null as unknown as APIGatewayProxyEvent), refusal('invalid_event', null));
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

  it('answers an invocation that is not an event with a JSON 400 instead of rejecting', async () => {
    const log = recordingLogger();
    const responseStream = new RuntimeResponseStream();
    const handler = awslambdaShim.streamifyResponse(streamingHandler(async () => new Response('unreachable'), { logger: log.logger }));
    await handler(null as unknown as APIGatewayProxyEvent, responseStream, lambdaContext);
    const { prelude, body } = responseStream.decoded();
    assert.equal(prelude.statusCode, 400);
    assert.equal(JSON.parse(body.toString()).error.code, 'invalid_event');
  });

  it('logs an event it cannot translate as a refusal, not as a fault of the gateway', async () => {
    const log = recordingLogger();
    await stream(async () => new Response('unreachable'), { event: restProxyEvent({ method: 'TRACE' }), logger: log.logger });
    assert.deepEqual(log.messages(), ['request_refused']);
  });

  it('fails the invocation after its usage writes, without ending the stream, when the body breaks after the prelude', async () => {
    const log = recordingLogger();
    const responseStream = new RuntimeResponseStream();
    let usageWritten = false;
    const failing = stream(
      async (_request, context) => {
        context.waitUntil(new Promise<void>((resolve) => setTimeout(resolve, 20)).then(() => void (usageWritten = true)));
        return new Response(
          new ReadableStream<Uint8Array>({
            start(controller) {
              controller.enqueue(new TextEncoder().encode('partial'));
            },
            pull(controller) {
              controller.error(new Error('upstream reset'));
            },
          }),
        );
      },
      { logger: log.logger, stream: responseStream },
    );
    await assert.rejects(failing, (error: Error) => {
      assert.equal(error.name, 'BrokenBody');
      assert.equal((error.cause as Error).message, 'upstream reset');
      return true;
    });
    assert.ok(usageWritten, 'the usage writes finished before the invocation failed');
    assert.equal(responseStream.decoded().body.toString(), 'partial');
    assert.equal(responseStream.writableEnded, false, 'a cut answer is not ended as if complete');
    assert.deepEqual(log.messages(), ['response_body_failed']);
  });

  it('ends the stream normally when the body completes', async () => {
    const responseStream = await stream(async () => new Response('whole answer'));
    assert.equal(responseStream.decoded().body.toString(), 'whole answer');
    assert.equal(responseStream.writableFinished, true);
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

  it('answers an event it cannot translate with the JSON 4xx, logged as a refusal', async () => {
    const log = recordingLogger();
    const handler = bufferedHandler(async () => new Response('unreachable'), { logger: log.logger });
    const event = restProxyEvent({ method: 'POST', body: '!!!!' });
    event.isBase64Encoded = true;
    const result = await handler(event);
    assert.equal(result.statusCode, 400);
    assert.deepEqual(JSON.parse(result.body).error, { message: 'The body is marked base64-encoded but is not valid base64.', type: 'invalid_request_error', code: 'invalid_base64', param: 'body' });
    assert.deepEqual(log.messages(), ['request_refused']);
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
