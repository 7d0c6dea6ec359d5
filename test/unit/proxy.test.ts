import assert from 'node:assert/strict';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { after, before, beforeEach, describe, it } from 'node:test';
import { collectingContext } from '../../lambda/core/handler';
import { signUserId } from '../../lambda/core/identity';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream';
import { proxyConfigFromEnv } from '../../lambda/core/config';
import { StaticKeyStore } from '../../lambda/core/keys';
import { silentLogger } from '../../lambda/core/log';
import { LightResponse } from '../../lambda/core/messages';
import { MAX_WHOLE_ANSWER_BYTES, createProxy, type RequestLimiter } from '../../lambda/core/proxy';
import { lazyTokenCounter } from '../../lambda/core/tokens';
import { UsageRecorder } from '../../lambda/core/usage-recorder';
import type { UsageEvent } from '../../lambda/core/usage-event';
import { JSON_HEADERS, chatBody, coreHarness, type CoreHarness } from '../support/core-harness';
import { RecordingCounters, RecordingSink } from '../support/recording-stores';

let upstream: FakeUpstream;
let gw: CoreHarness;

before(async () => {
  upstream = await startFakeUpstream();
  gw = coreHarness({ upstreamUrl: upstream.url });
});
after(() => upstream.close());
beforeEach(() => upstream.reset());

function lastUpstreamRequest() {
  const request = upstream.requests.at(-1);
  assert.ok(request, 'the upstream received a request');
  return request;
}

describe('forwarding', () => {
  it('keeps path, query, method and body, and passes Authorization through untouched', async () => {
    const body = chatBody();
    const { response } = await gw.send('/v1/chat/completions?api-version=2024-10-21', {
      method: 'POST',
      headers: JSON_HEADERS,
      body,
    });
    assert.equal(response.status, 200);
    const seen = lastUpstreamRequest();
    assert.equal(seen.method, 'POST');
    assert.equal(seen.path, '/v1/chat/completions?api-version=2024-10-21');
    assert.equal(seen.body, body);
    assert.equal(seen.headers.authorization, 'Bearer sk-test-provider-key');
  });

  it('removes every Helicone-* header and hop-by-hop headers before forwarding', async () => {
    await gw.send('/v1/chat/completions', {
      method: 'POST',
      headers: {
        ...JSON_HEADERS,
        'Helicone-User-Id': 'u1',
        'Helicone-Property-Plan': 'pro',
        'Helicone-Cache-Enabled': 'true',
        Connection: 'keep-alive, x-private-hop',
        'X-Private-Hop': 'secret',
        'Keep-Alive': 'timeout=5',
        'X-Custom': 'kept',
      },
      body: chatBody(),
    });
    const headers = lastUpstreamRequest().headers;
    for (const name of Object.keys(headers)) assert.ok(!name.startsWith('helicone-'), `${name} was forwarded`);
    assert.equal(headers['x-private-hop'], undefined);
    assert.equal(headers['keep-alive'], undefined);
    assert.equal(headers['x-custom'], 'kept');
  });

  it('returns upstream error statuses and bodies as they are and meters them as errors', async () => {
    const { response, text, event } = await gw.send('/v1/chat/completions', {
      method: 'POST',
      headers: { ...JSON_HEADERS, 'x-fake-status': '429' },
      body: chatBody(),
    });
    assert.equal(response.status, 429);
    assert.equal(response.headers.get('retry-after'), '1');
    assert.match(JSON.parse(text).error.message, /./);
    assert.equal(event?.status, 429);
    assert.equal(event?.error, 'upstream_rate_limited');
    assert.equal(event?.usage_source, 'none');
    assert.equal(event?.cost_nano_usd, 0);
  });

  it('answers 502 with a JSON error and still writes an event when the upstream is unreachable', async () => {
    const dead = coreHarness({ upstreamUrl: 'http://127.0.0.1:9' });
    const { response, text, event } = await dead.send('/v1/chat/completions', {
      method: 'POST',
      headers: JSON_HEADERS,
      body: chatBody(),
    });
    assert.equal(response.status, 502);
    assert.equal(JSON.parse(text).error.code, 'upstream_unreachable');
    assert.equal(event?.status, 502);
    assert.equal(event?.error, 'upstream_unreachable');
  });

  it('sets Helicone-Id on every response and uses a valid Helicone-Request-Id', async () => {
    const id = '7d0f5a3e-1b2c-4d5e-8f90-a1b2c3d4e5f6';
    const { response, event } = await gw.send('/v1/chat/completions', {
      method: 'POST',
      headers: { ...JSON_HEADERS, 'Helicone-Request-Id': id.toUpperCase() },
      body: chatBody(),
    });
    assert.equal(response.headers.get('helicone-id'), id);
    assert.equal(event?.request_id, id);
    const other = await gw.send('/v1/models', { headers: JSON_HEADERS });
    assert.match(other.response.headers.get('helicone-id') ?? '', /^[0-9a-f-]{36}$/);
  });
});

describe('identity', () => {
  it('prefers the Helicone-User-Id header over body.user and body.safety_identifier', async () => {
    const { event } = await gw.send('/v1/chat/completions', {
      method: 'POST',
      headers: { ...JSON_HEADERS, 'Helicone-User-Id': 'header-user' },
      body: chatBody({ user: 'body-user', safety_identifier: 'safety-user' }),
    });
    assert.equal(event?.user_id, 'header-user');
  });

  it('falls back to body.user, then body.safety_identifier, then no user', async () => {
    const a = await gw.send('/v1/chat/completions', {
      method: 'POST',
      headers: JSON_HEADERS,
      body: chatBody({ user: 'body-user', safety_identifier: 'safety-user' }),
    });
    assert.equal(a.event?.user_id, 'body-user');
    const b = await gw.send('/v1/chat/completions', {
      method: 'POST',
      headers: JSON_HEADERS,
      body: chatBody({ safety_identifier: 'safety-user' }),
    });
    assert.equal(b.event?.user_id, 'safety-user');
    const c = await gw.send('/v1/chat/completions', { method: 'POST', headers: JSON_HEADERS, body: chatBody() });
    assert.equal(c.event?.user_id, null);
    assert.equal(c.response.status, 200);
  });

  it('collects Helicone-Property-* headers under lower-case names', async () => {
    const { event } = await gw.send('/v1/chat/completions', {
      method: 'POST',
      headers: { ...JSON_HEADERS, 'Helicone-Property-Plan': 'premium', 'Helicone-Property-Feature': 'chat' },
      body: chatBody(),
    });
    assert.deepEqual(event?.properties, { feature: 'chat', plan: 'premium' });
  });

  const refused: Array<[string, Record<string, string>, string]> = [
    ['a user id over 256 characters', { 'Helicone-User-Id': 'u'.repeat(257) }, 'Helicone-User-Id'],
    ['a property name with a dot', { 'Helicone-Property-a.b': 'x' }, 'helicone-property-a.b'],
    ['a property value over 256 characters', { 'Helicone-Property-Plan': 'x'.repeat(257) }, 'helicone-property-plan'],
    [
      'more than 20 properties',
      Object.fromEntries(Array.from({ length: 21 }, (_, i) => [`Helicone-Property-P${String(i).padStart(2, '0')}`, 'x'])),
      'helicone-property-p20',
    ],
    ['a malformed Helicone-Request-Id', { 'Helicone-Request-Id': 'not-a-uuid' }, 'Helicone-Request-Id'],
  ];
  for (const [what, headers, param] of refused) {
    it(`refuses ${what} with a 400 naming the header, before anything is sent upstream`, async () => {
      const { response, text, event } = await gw.send('/v1/chat/completions', {
        method: 'POST',
        headers: { ...JSON_HEADERS, ...headers },
        body: chatBody(),
      });
      assert.equal(response.status, 400);
      assert.equal(JSON.parse(text).error.param, param);
      assert.equal(upstream.requests.length, 0);
      assert.equal(event, undefined);
    });
  }

  it('refuses a body user that is not a string', async () => {
    const { response, text } = await gw.send('/v1/chat/completions', {
      method: 'POST',
      headers: JSON_HEADERS,
      body: chatBody({ user: 42 }),
    });
    assert.equal(response.status, 400);
    assert.equal(JSON.parse(text).error.param, 'user');
  });
});

describe('request bodies', () => {
  it('refuses malformed JSON with a 400 that says so', async () => {
    const { response, text } = await gw.send('/v1/chat/completions', {
      method: 'POST',
      headers: JSON_HEADERS,
      body: '{"model": "gpt-4o-mini", ',
    });
    assert.equal(response.status, 400);
    assert.equal(JSON.parse(text).error.code, 'invalid_json');
    assert.equal(upstream.requests.length, 0);
  });

  it('refuses a body over MAX_BODY_BYTES with a 413', async () => {
    const small = coreHarness({ upstreamUrl: upstream.url, env: { MAX_BODY_BYTES: '2048' } });
    const { response, text } = await small.send('/v1/chat/completions', {
      method: 'POST',
      headers: JSON_HEADERS,
      body: chatBody({ messages: [{ role: 'user', content: 'x'.repeat(4096) }] }),
    });
    assert.equal(response.status, 413);
    assert.equal(JSON.parse(text).error.code, 'body_too_large');
  });
});

describe('gateway auth', () => {
  const key = 'gw_test_key_0123456789abcdef';
  let secured: CoreHarness;
  before(() => {
    secured = coreHarness({ upstreamUrl: upstream.url, gatewayKeys: [key, 'gw_other_key_0123456789abcdef'] });
  });

  it('refuses a request without Helicone-Auth with a 401 and sends nothing upstream', async () => {
    const { response, text } = await secured.send('/v1/chat/completions', { method: 'POST', headers: JSON_HEADERS, body: chatBody() });
    assert.equal(response.status, 401);
    assert.equal(JSON.parse(text).error.code, 'missing_gateway_key');
    assert.equal(upstream.requests.length, 0);
  });

  it('refuses a wrong key with a 401', async () => {
    const { response, text } = await secured.send('/v1/chat/completions', {
      method: 'POST',
      headers: { ...JSON_HEADERS, 'Helicone-Auth': 'Bearer gw_wrong_key_0123456789abcdef' },
      body: chatBody(),
    });
    assert.equal(response.status, 401);
    assert.equal(JSON.parse(text).error.code, 'invalid_gateway_key');
    assert.equal(upstream.requests.length, 0);
  });

  it('accepts a valid key and records its id, never the key', async () => {
    const { response, event } = await secured.send('/v1/chat/completions', {
      method: 'POST',
      headers: { ...JSON_HEADERS, 'Helicone-Auth': `Bearer ${key}` },
      body: chatBody(),
    });
    assert.equal(response.status, 200);
    assert.match(event?.key_id ?? '', /^[0-9a-f]{12}$/);
    assert.ok(!JSON.stringify(event).includes(key));
    assert.ok(!JSON.stringify(event).includes('sk-test-provider-key'));
  });
});

describe('metering', () => {
  it('records provider usage, the answered model and an exact cost', async () => {
    const { event, text } = await gw.send('/v1/chat/completions', {
      method: 'POST',
      headers: { ...JSON_HEADERS, 'Helicone-User-Id': 'u1' },
      body: chatBody(),
    });
    const answer = JSON.parse(text);
    assert.equal(event?.model, 'gpt-4o-mini-2024-07-18');
    assert.equal(event?.usage_source, 'provider');
    assert.equal(event?.prompt_tokens, answer.usage.prompt_tokens);
    assert.equal(event?.completion_tokens, answer.usage.completion_tokens);
    assert.equal(event?.total_tokens, answer.usage.total_tokens);
    // gpt-4o-mini: $0.15 / M input, $0.60 / M output.
    const expected = Math.round(answer.usage.prompt_tokens * 150 + answer.usage.completion_tokens * 600);
    assert.equal(event?.cost_nano_usd, expected);
    assert.equal(event?.cost_source, 'genai-prices');
    assert.equal(event?.stream, false);
    assert.equal(event?.v, 1);
    assert.match(event?.ts ?? '', /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
    assert.ok((event?.ttft_ms ?? -1) >= 0);
  });

  it('records cached and reasoning tokens', async () => {
    const { event } = await gw.send('/v1/chat/completions', {
      method: 'POST',
      headers: { ...JSON_HEADERS, 'x-fake-cached-tokens': '4' },
      body: chatBody({ model: 'o3-mini' }),
    });
    assert.equal(event?.cached_prompt_tokens, 4);
    assert.ok((event?.reasoning_tokens ?? 0) > 0);
  });

  it('gives an unknown model a null cost with cost_source unknown_model, never 0', async () => {
    const { event } = await gw.send('/v1/chat/completions', {
      method: 'POST',
      headers: JSON_HEADERS,
      body: chatBody({ model: 'acme-llm-unpriced' }),
    });
    assert.equal(event?.cost_usd, null);
    assert.equal(event?.cost_nano_usd, null);
    assert.equal(event?.cost_source, 'unknown_model');
    assert.ok((event?.total_tokens ?? 0) > 0);
  });

  it('estimates tokens with the tokenizer when the upstream reports no usage', async () => {
    const { event } = await gw.send('/v1/chat/completions', {
      method: 'POST',
      headers: { ...JSON_HEADERS, 'x-fake-no-usage': '1' },
      body: chatBody(),
    });
    assert.equal(event?.usage_source, 'estimated');
    assert.ok((event?.prompt_tokens ?? 0) > 3);
    assert.ok((event?.completion_tokens ?? 0) > 0);
    assert.equal(event?.total_tokens, (event?.prompt_tokens ?? 0) + (event?.completion_tokens ?? 0));
  });

  it('meters embeddings, completions and responses from their own usage shapes', async () => {
    const embeddings = await gw.send('/v1/embeddings', {
      method: 'POST',
      headers: JSON_HEADERS,
      body: JSON.stringify({ model: 'text-embedding-3-small', input: 'one two three' }),
    });
    assert.equal(embeddings.event?.usage_source, 'provider');
    assert.ok((embeddings.event?.prompt_tokens ?? 0) > 0);
    assert.equal(embeddings.event?.completion_tokens, 0);
    const completions = await gw.send('/v1/completions', {
      method: 'POST',
      headers: JSON_HEADERS,
      body: JSON.stringify({ model: 'gpt-3.5-turbo-instruct', prompt: 'Once upon a time' }),
    });
    assert.equal(completions.event?.usage_source, 'provider');
    assert.ok((completions.event?.completion_tokens ?? 0) > 0);
    const responses = await gw.send('/v1/responses', {
      method: 'POST',
      headers: JSON_HEADERS,
      body: JSON.stringify({ model: 'gpt-4o-mini', input: 'Tell me a story' }),
    });
    assert.equal(responses.event?.usage_source, 'provider');
    assert.ok((responses.event?.prompt_tokens ?? 0) > 0);
    assert.ok((responses.event?.completion_tokens ?? 0) > 0);
  });

  it('keeps answering when the stores fail: the event is retried and nothing reaches the client', async () => {
    gw.sink.failures = 1;
    gw.counters.failures = 1;
    const { response, event } = await gw.send('/v1/chat/completions', { method: 'POST', headers: JSON_HEADERS, body: chatBody() });
    assert.equal(response.status, 200);
    assert.ok(event, 'the retry delivered the event');
    assert.equal(gw.counters.events.at(-1)?.request_id, event.request_id);
  });
});

describe('streaming', () => {
  async function rawStream(target: string, body: string, headers: Record<string, string> = {}): Promise<string> {
    const response = await fetch(target, { method: 'POST', headers: { ...JSON_HEADERS, ...headers }, body });
    return response.text();
  }

  it('adds include_usage upstream and hides it: the client stream is byte-identical to the direct one', async () => {
    const body = chatBody({ stream: true });
    const direct = await rawStream(`${upstream.url}/v1/chat/completions`, body);
    assert.ok(!direct.includes('"usage"'));
    const { text, event, response } = await gw.send('/v1/chat/completions', { method: 'POST', headers: JSON_HEADERS, body });
    assert.equal(response.headers.get('content-type'), 'text/event-stream; charset=utf-8');
    assert.equal(text, direct);
    const forwarded = JSON.parse(lastUpstreamRequest().body);
    assert.deepEqual(forwarded.stream_options, { include_usage: true });
    assert.equal(event?.usage_source, 'provider');
    assert.equal(event?.stream, true);
    assert.ok((event?.completion_tokens ?? 0) > 0);
  });

  it('leaves a stream that asked for usage exactly as the upstream sent it', async () => {
    const body = chatBody({ stream: true, stream_options: { include_usage: true } });
    const direct = await rawStream(`${upstream.url}/v1/chat/completions`, body);
    assert.ok(direct.includes('"usage":null'));
    const { text, event } = await gw.send('/v1/chat/completions', { method: 'POST', headers: JSON_HEADERS, body });
    assert.equal(text, direct);
    assert.equal(lastUpstreamRequest().body, body);
    assert.equal(event?.usage_source, 'provider');
  });

  it('hides injected usage from legacy completions streams too', async () => {
    const body = JSON.stringify({ model: 'gpt-3.5-turbo-instruct', prompt: 'Hello', stream: true });
    const direct = await rawStream(`${upstream.url}/v1/completions`, body);
    const { text, event } = await gw.send('/v1/completions', { method: 'POST', headers: JSON_HEADERS, body });
    assert.equal(text, direct);
    assert.equal(event?.usage_source, 'provider');
  });

  it('meters Responses API streams from response.completed', async () => {
    const body = JSON.stringify({ model: 'gpt-4o-mini', input: 'Hello there', stream: true });
    const direct = await rawStream(`${upstream.url}/v1/responses`, body);
    const { text, event } = await gw.send('/v1/responses', { method: 'POST', headers: JSON_HEADERS, body });
    assert.equal(text, direct);
    assert.equal(event?.usage_source, 'provider');
    assert.ok((event?.total_tokens ?? 0) > 0);
  });

  it('delivers chunks as they arrive, before the upstream has finished', async () => {
    const ctx = collectingContext();
    const response = await gw.handle(
      new Request('http://gateway.test/v1/chat/completions', {
        method: 'POST',
        headers: { ...JSON_HEADERS, 'x-fake-chunk-delay-ms': '150', 'x-fake-words': '4' },
        body: chatBody({ stream: true }),
      }),
      ctx,
    );
    const reader = response.body!.getReader();
    const started = Date.now();
    const first = await reader.read();
    const firstAt = Date.now() - started;
    assert.ok(!first.done && first.value.byteLength > 0);
    let rest = 0;
    for (;;) {
      const { done } = await reader.read();
      if (done) break;
      rest += 1;
    }
    const totalMs = Date.now() - started;
    assert.ok(rest >= 3, `expected several separate chunks, got ${rest + 1}`);
    assert.ok(firstAt < totalMs / 2, `first chunk after ${firstAt} ms of ${totalMs} ms`);
    await ctx.settled();
  });

  it('writes a partial event when the client goes away mid-stream', async () => {
    const before = gw.sink.events.length;
    const ctx = collectingContext();
    const response = await gw.handle(
      new Request('http://gateway.test/v1/chat/completions', {
        method: 'POST',
        headers: { ...JSON_HEADERS, 'x-fake-chunk-delay-ms': '30', 'x-fake-words': '40', 'Helicone-User-Id': 'quitter' },
        body: chatBody({ stream: true }),
      }),
      ctx,
    );
    const reader = response.body!.getReader();
    await reader.read();
    await reader.read();
    await reader.read();
    await reader.cancel();
    await ctx.settled();
    const event = gw.sink.events[before];
    assert.equal(event?.user_id, 'quitter');
    assert.equal(event?.usage_source, 'partial');
    assert.ok((event?.completion_tokens ?? 0) > 0 && (event?.completion_tokens ?? 0) < 40);
    assert.equal(event?.error, null);
  });

  it('serves a stream through its own reader (as the local server reads it) with the same chunks and metering', async () => {
    const send = () =>
      gw.handle(
        new Request('http://gateway.test/v1/chat/completions', {
          method: 'POST',
          headers: { ...JSON_HEADERS, 'x-fake-words': '12', 'Helicone-User-Id': 'reader' },
          body: chatBody({ stream: true }),
        }),
        collectingContext(),
      );
    const viaStream = await (await send()).text();
    const ctx = collectingContext();
    const before = gw.sink.events.length;
    const response = await gw.handle(
      new Request('http://gateway.test/v1/chat/completions', {
        method: 'POST',
        headers: { ...JSON_HEADERS, 'x-fake-words': '12', 'Helicone-User-Id': 'reader' },
        body: chatBody({ stream: true }),
      }),
      ctx,
    );
    assert.ok(response instanceof LightResponse);
    const reader = response.takeReader()!;
    assert.ok(reader, 'a reader of its own');
    assert.equal(response.bodyUsed, true);
    let viaReader = '';
    const decoder = new TextDecoder();
    for (let result = await reader.read(); !result.done; result = await reader.read()) viaReader += decoder.decode(result.value, { stream: true });
    assert.equal(viaReader, viaStream);
    await ctx.settled();
    assert.equal(gw.sink.events[before]?.usage_source, 'provider');
    assert.equal(gw.sink.events[before]?.completion_tokens, 12);
  });

  it('writes a partial event when the client cancels its own reader mid-stream', async () => {
    const before = gw.sink.events.length;
    const ctx = collectingContext();
    const response = await gw.handle(
      new Request('http://gateway.test/v1/chat/completions', {
        method: 'POST',
        headers: { ...JSON_HEADERS, 'x-fake-chunk-delay-ms': '30', 'x-fake-words': '40' },
        body: chatBody({ stream: true }),
      }),
      ctx,
    );
    const reader = (response as LightResponse).takeReader()!;
    await reader.read();
    await reader.read();
    const pending = reader.read();
    await reader.cancel();
    await pending;
    await ctx.settled();
    const event = gw.sink.events[before];
    assert.equal(event?.usage_source, 'partial');
    assert.ok((event?.completion_tokens ?? 0) < 40);
  });

  it('writes a partial event with upstream_reset and breaks the client stream when the upstream resets', async () => {
    const before = gw.sink.events.length;
    const ctx = collectingContext();
    const response = await gw.handle(
      new Request('http://gateway.test/v1/chat/completions', {
        method: 'POST',
        headers: { ...JSON_HEADERS, 'x-fake-reset-after': '3', 'x-fake-words': '20' },
        body: chatBody({ stream: true }),
      }),
      ctx,
    );
    await assert.rejects(response.text());
    await ctx.settled();
    const event = gw.sink.events[before];
    assert.equal(event?.usage_source, 'partial');
    assert.equal(event?.error, 'upstream_reset');
    assert.ok((event?.completion_tokens ?? 0) > 0);
  });
});

describe('answers taken whole', () => {
  const usageAnswer = JSON.stringify({
    id: 'chatcmpl-1',
    object: 'chat.completion',
    model: 'gpt-4o-mini-2024-07-18',
    choices: [{ index: 0, message: { role: 'assistant', content: 'hi' }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 12, completion_tokens: 3, total_tokens: 15 },
  });
  /** A core whose upstream answers with this body and these headers. */
  const answering = (body: string | ReadableStream<Uint8Array> | null, headers: Record<string, string>) =>
    coreHarness({ upstreamUrl: 'http://upstream.test', fetch: (async () => new Response(body, { status: 200, headers })) as typeof fetch });

  it('hands a JSON answer of known length to the server adapter whole, byte for byte, and meters it', async () => {
    const core = answering(usageAnswer, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(usageAnswer)) });
    const ctx = collectingContext();
    const response = await core.handle(new Request('http://gateway.test/v1/chat/completions', { method: 'POST', headers: JSON_HEADERS, body: chatBody() }), ctx);
    assert.ok(response instanceof LightResponse);
    assert.equal(response.headers.get('content-length'), String(Buffer.byteLength(usageAnswer)));
    assert.equal(new TextDecoder().decode(response.takeInMemory()), usageAnswer);
    await ctx.settled();
    assert.equal(core.sink.events[0]?.usage_source, 'provider');
    assert.equal(core.sink.events[0]?.total_tokens, 15);
    assert.equal(core.sink.events[0]?.model, 'gpt-4o-mini-2024-07-18');
  });

  it('streams an answer over MAX_WHOLE_ANSWER_BYTES, one without a length, and an event stream', async () => {
    const big = JSON.stringify({ data: 'x'.repeat(MAX_WHOLE_ANSWER_BYTES) });
    const cases: [string, string, Record<string, string>][] = [
      ['too large', big, { 'content-type': 'application/json', 'content-length': String(big.length) }],
      ['no length', usageAnswer, { 'content-type': 'application/json' }],
      ['event stream', 'data: {}\n\n', { 'content-type': 'text/event-stream', 'content-length': '10' }],
    ];
    for (const [name, body, headers] of cases) {
      const core = answering(body, headers);
      const response = await core.handle(
        new Request('http://gateway.test/v1/chat/completions', { method: 'POST', headers: JSON_HEADERS, body: chatBody() }),
        collectingContext(),
      );
      assert.ok(response instanceof LightResponse);
      assert.equal(response.takeInMemory(), undefined, `${name}: streamed, not taken whole`);
      assert.equal(await response.text(), body, name);
    }
  });

  it('mirrors an answer that breaks off before its declared length: status and headers, then a cut body', async () => {
    const encoder = new TextEncoder();
    const cut = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(encoder.encode(usageAnswer.slice(0, 20)));
        controller.error(new Error('connection reset'));
      },
    });
    const core = answering(cut, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(usageAnswer)) });
    const ctx = collectingContext();
    const response = await core.handle(new Request('http://gateway.test/v1/chat/completions', { method: 'POST', headers: JSON_HEADERS, body: chatBody() }), ctx);
    assert.equal(response.status, 200);
    assert.ok(response.headers.get('helicone-id'));
    await assert.rejects(response.text());
    await ctx.settled();
    assert.equal(core.sink.events[0]?.error, 'upstream_reset');
  });
});

describe('content types', () => {
  it('meters a JSON body sent with a form content type (curl -d) and forwards it unchanged', async () => {
    const body = chatBody({ user: 'curl-user' });
    const { event } = await gw.send('/v1/chat/completions', {
      method: 'POST',
      headers: { authorization: 'Bearer sk-test-provider-key', 'content-type': 'application/x-www-form-urlencoded' },
      body,
    });
    assert.equal(lastUpstreamRequest().body, body);
    assert.equal(event?.user_id, 'curl-user');
  });

  it('forwards a non-JSON body it cannot read without refusing it', async () => {
    const { event } = await gw.send('/v1/audio/transcriptions', {
      method: 'POST',
      headers: { authorization: 'Bearer sk-test-provider-key', 'content-type': 'multipart/form-data; boundary=x' },
      body: '--x\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--x--\r\n',
    });
    assert.equal(lastUpstreamRequest().path, '/v1/audio/transcriptions');
    assert.equal(event?.usage_source, 'none');
  });
});

describe('signed user ids', () => {
  const secret = 'user-signing-secret-0123456789';
  let signed: CoreHarness;
  before(() => {
    signed = coreHarness({ upstreamUrl: upstream.url, env: { USER_ID_SIGNING_SECRETS: `old-secret-0123456789abcdef,${secret}` } });
  });

  it('accepts a user id signed with any configured secret', async () => {
    const { response, event } = await signed.send('/v1/chat/completions', {
      method: 'POST',
      headers: { ...JSON_HEADERS, 'Helicone-User-Id': 'alice', 'Helicone-User-Id-Signature': signUserId(secret, 'alice') },
      body: chatBody(),
    });
    assert.equal(response.status, 200);
    assert.equal(event?.user_id, 'alice');
  });

  const refusals: Array<[string, Record<string, string>, string, string]> = [
    ['no user id', {}, '{}', 'missing_user_id'],
    ['a body user without the header', {}, '{"user":"alice"}', 'unsigned_user_id'],
    ['no signature', { 'Helicone-User-Id': 'alice' }, '{}', 'invalid_user_signature'],
    ['a signature for someone else', { 'Helicone-User-Id': 'alice', 'Helicone-User-Id-Signature': signUserId(secret, 'bob') }, '{}', 'invalid_user_signature'],
    ['a signature with another secret', { 'Helicone-User-Id': 'alice', 'Helicone-User-Id-Signature': signUserId('not-the-secret-0123456789', 'alice') }, '{}', 'invalid_user_signature'],
  ];
  for (const [what, headers, extra, code] of refusals) {
    it(`refuses ${what} with a 401 and sends nothing upstream`, async () => {
      const { response, text } = await signed.send('/v1/chat/completions', {
        method: 'POST',
        headers: { ...JSON_HEADERS, ...headers },
        body: chatBody(JSON.parse(extra)),
      });
      assert.equal(response.status, 401);
      assert.equal(JSON.parse(text).error.code, code);
      assert.equal(upstream.requests.length, 0);
    });
  }
});

describe('pseudonymised user ids', () => {
  it('stores a keyed hash of the user id, never the id itself', async () => {
    const hashed = coreHarness({ upstreamUrl: upstream.url, env: { USER_ID_HASH_SECRET: 'hash-secret-0123456789abcdef' } });
    const { event } = await hashed.send('/v1/chat/completions', {
      method: 'POST',
      headers: { ...JSON_HEADERS, 'Helicone-User-Id': 'alice@example.com' },
      body: chatBody(),
    });
    assert.match(event?.user_id ?? '', /^u_[0-9a-f]{32}$/);
    assert.ok(!JSON.stringify(event).includes('alice'));
    const again = await hashed.send('/v1/chat/completions', {
      method: 'POST',
      headers: { ...JSON_HEADERS, 'Helicone-User-Id': 'alice@example.com' },
      body: chatBody(),
    });
    assert.equal(again.event?.user_id, event?.user_id, 'the same user maps to the same id');
  });
});

describe('deferred metering (the local server)', () => {
  it('writes the event on a later timer turn, not in the turn that ends the answer, with latency taken at the end', async () => {
    const sink = new RecordingSink();
    let clock = 1_000;
    const proxy = createProxy({
      config: proxyConfigFromEnv({ UPSTREAM_OPENAI_URL: upstream.url }),
      gatewayKeys: new StaticKeyStore([]),
      recorder: new UsageRecorder({ sink, counters: new RecordingCounters(), log: silentLogger }),
      tokenCounter: lazyTokenCounter(async () => (await import('../../lambda/tokenizer')).o200kCounter),
      log: silentLogger,
      now: () => clock,
      deferMetering: true,
    });
    const context = collectingContext();
    // A stream: its answer ends when the client has read it (a JSON answer is taken whole before it is returned).
    const response = await proxy(
      new Request('http://gateway.test/v1/chat/completions', { method: 'POST', headers: JSON_HEADERS, body: chatBody({ stream: true }) }),
      context,
    );
    clock += 250;
    await response.text();
    // Within the same turn the answer is complete but nothing is recorded yet; the clock moves on meanwhile.
    await Promise.resolve();
    assert.equal(sink.events.length, 0, 'the event waits for a timer turn');
    clock += 5_000;
    await context.settled();
    assert.equal(sink.events.length, 1);
    assert.equal(sink.events[0]!.latency_ms, 250, 'latency ends with the answer, not with the bookkeeping');
    assert.equal(sink.events[0]!.usage_source, 'provider');
  });
});

describe('memory while the stores confirm', () => {
  it('lets go of the request and its answer while the event and the limiter still wait for their stores', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    // Stores that take their time, like a counter flush half a second away.
    const waiting: (() => void)[] = [];
    const slow = () => new Promise<void>((resolve) => waiting.push(resolve));
    class SlowCounters extends RecordingCounters {
      override async record(events: readonly UsageEvent[]): Promise<void> {
        await slow();
        await super.record(events);
      }
    }
    const counters = new SlowCounters();
    let settled = 0;
    const limiter: RequestLimiter = {
      admit: async () => ({
        admitted: true,
        headers: {},
        settle: async () => {
          await slow();
          settled += 1;
        },
      }),
    };
    const proxy = createProxy({
      config: proxyConfigFromEnv({ UPSTREAM_OPENAI_URL: upstream.url }),
      gatewayKeys: new StaticKeyStore([]),
      recorder: new UsageRecorder({ sink: new RecordingSink(), counters, log: silentLogger }),
      limiter,
      tokenCounter: lazyTokenCounter(async () => (await import('../../lambda/tokenizer')).o200kCounter),
      log: silentLogger,
      deferMetering: true,
    });
    const context = collectingContext();
    // Made in a function of its own, so that only the weak references outlive it here.
    const exchange = async (): Promise<{ request: WeakRef<Request>; response: WeakRef<Response> }> => {
      const request = new Request('http://gateway.test/v1/chat/completions', { method: 'POST', headers: JSON_HEADERS, body: chatBody() });
      const response = await proxy(request, context);
      assert.equal(response.status, 200);
      await response.text();
      return { request: new WeakRef(request), response: new WeakRef(response) };
    };
    const refs = await exchange();
    // The bookkeeping has started and is waiting for both stores.
    while (waiting.length < 2) await new Promise((resolve) => setTimeout(resolve, 5));
    // deref() keeps its object alive until the end of the current job, so collect in jobs of their own.
    for (let i = 0; i < 3; i++) {
      await new Promise((resolve) => setImmediate(resolve));
      gc();
    }
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(refs.request.deref(), undefined, 'the request is not kept while the stores confirm');
    assert.equal(refs.response.deref(), undefined, 'the answer is not kept while the stores confirm');
    for (const resolve of waiting) resolve();
    await context.settled();
    assert.equal(counters.events.length, 1, 'the event is still counted');
    assert.equal(settled, 1, 'the limiter still settles');
  });
});
