import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';
import OpenAI, { APIError, AuthenticationError, BadRequestError, InternalServerError, RateLimitError } from 'openai';
import { FAKE_CREATED, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream';

const API_KEY = 'sk-test-not-a-real-key';

let upstream: FakeUpstream;
let client: OpenAI;

before(async () => {
  upstream = await startFakeUpstream();
  // No retries: a simulated 429/500 must surface on the first answer, not after the SDK's backoff.
  client = new OpenAI({ apiKey: API_KEY, baseURL: `${upstream.url}/v1`, maxRetries: 0 });
});
after(() => upstream.close());
beforeEach(() => upstream.reset());

const hello = [
  { role: 'system' as const, content: 'You are terse.' },
  { role: 'user' as const, content: 'Say hello to the whole team' },
];
/** 3 system words + 6 user words, plus 3 per message. */
const HELLO_PROMPT_TOKENS = 3 + 6 + 2 * 3;

/** POSTs JSON to the fake without the SDK, for checks on the raw wire format. */
function post(path: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${upstream.url}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

interface SseMessage {
  event: string | undefined;
  data: string;
}

/** Splits an SSE body into its events; asserts the framing (blank-line separated, `event:`/`data:` lines only). */
function parseSse(text: string): SseMessage[] {
  assert.ok(text.endsWith('\n\n'), 'an SSE body ends with a blank line');
  return text
    .slice(0, -2)
    .split('\n\n')
    .map((block) => {
      let event: string | undefined;
      let data: string | undefined;
      for (const line of block.split('\n')) {
        if (line.startsWith('event: ')) event = line.slice('event: '.length);
        else if (line.startsWith('data: ')) data = line.slice('data: '.length);
        else assert.fail(`unexpected SSE line ${JSON.stringify(line)}`);
      }
      assert.ok(data !== undefined, 'every event has data');
      return { event, data };
    });
}

describe('chat completions', () => {
  it('answers a chat.completion with the dated model snapshot and word-count usage', async () => {
    const completion = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: hello });

    assert.equal(completion.object, 'chat.completion');
    assert.match(completion.id, /^chatcmpl-/);
    assert.equal(completion.created, FAKE_CREATED);
    assert.equal(completion.model, 'gpt-4o-mini-2024-07-18');
    assert.equal(completion.service_tier, 'default');
    assert.match(completion.system_fingerprint ?? '', /^fp_/);
    const [choice] = completion.choices;
    assert.equal(choice?.finish_reason, 'stop');
    assert.equal(choice?.logprobs, null);
    assert.equal(choice?.message.role, 'assistant');
    assert.equal(choice?.message.refusal, null);
    assert.deepEqual(choice?.message.annotations, []);
    assert.equal(choice?.message.content?.split(' ').length, 8);
    assert.deepEqual(completion.usage, {
      prompt_tokens: HELLO_PROMPT_TOKENS,
      completion_tokens: 8,
      total_tokens: HELLO_PROMPT_TOKENS + 8,
      prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
      completion_tokens_details: {
        reasoning_tokens: 0,
        audio_tokens: 0,
        accepted_prediction_tokens: 0,
        rejected_prediction_tokens: 0,
      },
    });
  });

  it('echoes any model other than gpt-4o-mini as requested', async () => {
    const completion = await client.chat.completions.create({ model: 'gpt-4.1', messages: hello });
    assert.equal(completion.model, 'gpt-4.1');
  });

  it('answers as many words as x-fake-words asks', async () => {
    const completion = await client.chat.completions.create(
      { model: 'gpt-4o', messages: hello },
      { headers: { 'x-fake-words': '3' } },
    );
    assert.equal(completion.choices[0]?.message.content?.split(' ').length, 3);
    assert.equal(completion.usage?.completion_tokens, 3);
  });

  it('counts reasoning tokens into completion tokens for o-series models', async () => {
    const completion = await client.chat.completions.create(
      { model: 'o3-mini', messages: hello },
      { headers: { 'x-fake-words': '5' } },
    );
    assert.equal(completion.usage?.completion_tokens_details?.reasoning_tokens, 10);
    assert.equal(completion.usage?.completion_tokens, 15);
    assert.equal(completion.usage?.total_tokens, HELLO_PROMPT_TOKENS + 15);
  });

  it('reports the cached prompt tokens x-fake-cached-tokens names', async () => {
    const completion = await client.chat.completions.create(
      { model: 'gpt-4o', messages: hello },
      { headers: { 'x-fake-cached-tokens': '7' } },
    );
    assert.equal(completion.usage?.prompt_tokens_details?.cached_tokens, 7);
  });

  it('derives the answer from the last user message', async () => {
    const ask = (content: string) =>
      client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content }] });
    const [first, again, other] = await Promise.all([ask('apples'), ask('apples'), ask('oranges')]);
    assert.equal(first.choices[0]?.message.content, again.choices[0]?.message.content);
    assert.notEqual(first.choices[0]?.message.content, other.choices[0]?.message.content);
  });

  it('omits usage entirely with x-fake-no-usage', async () => {
    const response = await post('/v1/chat/completions', { model: 'gpt-4o', messages: hello }, { 'x-fake-no-usage': '1' });
    const body = (await response.json()) as Record<string, unknown>;
    assert.equal(response.status, 200);
    assert.equal('usage' in body, false);
  });
});

describe('streamed chat completions', () => {
  it('streams role, word deltas and a stop chunk under one id, with no usage key without include_usage', async () => {
    const stream = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: hello, stream: true });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);

    assert.equal(chunks.length, 1 + 8 + 1);
    assert.deepEqual(chunks[0]?.choices[0]?.delta, { role: 'assistant', content: '', refusal: null });
    assert.deepEqual(chunks.at(-1)?.choices[0]?.delta, {});
    assert.equal(chunks.at(-1)?.choices[0]?.finish_reason, 'stop');
    assert.equal(new Set(chunks.map((chunk) => chunk.id)).size, 1);
    assert.ok(chunks.every((chunk) => chunk.created === FAKE_CREATED && chunk.model === 'gpt-4o-mini-2024-07-18'));
    assert.ok(chunks.every((chunk) => !('usage' in chunk)));

    const streamed = chunks.map((chunk) => chunk.choices[0]?.delta.content ?? '').join('');
    const whole = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: hello });
    assert.equal(streamed, whole.choices[0]?.message.content);
  });

  it('with include_usage sends usage:null on every chunk and a final choice-less usage chunk', async () => {
    const stream = await client.chat.completions.create({
      model: 'gpt-4o-mini',
      messages: hello,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);

    const last = chunks.at(-1);
    assert.deepEqual(last?.choices, []);
    assert.equal(last?.usage?.prompt_tokens, HELLO_PROMPT_TOKENS);
    assert.equal(last?.usage?.completion_tokens, 8);
    assert.ok(chunks.slice(0, -1).every((chunk) => chunk.usage === null));
  });

  it('puts the usage key in OpenAI order and ends with [DONE] on the wire', async () => {
    const response = await post('/v1/chat/completions', {
      model: 'gpt-4o-mini',
      messages: hello,
      stream: true,
      stream_options: { include_usage: true },
    });
    assert.match(response.headers.get('content-type') ?? '', /^text\/event-stream/);
    const events = parseSse(await response.text());

    assert.equal(events.at(-1)?.data, '[DONE]');
    const chunks = events.slice(0, -1).map((event) => {
      assert.equal(event.event, undefined, 'chat chunks carry no event name');
      assert.equal(JSON.stringify(JSON.parse(event.data)), event.data, 'compact JSON');
      return JSON.parse(event.data) as Record<string, unknown>;
    });
    for (const chunk of chunks) {
      assert.deepEqual(Object.keys(chunk), [
        'id', 'object', 'created', 'model', 'service_tier', 'system_fingerprint', 'choices', 'usage',
      ]);
    }
    assert.equal(chunks.filter((chunk) => chunk.usage !== null).length, 1);
    assert.deepEqual(chunks.at(-1)?.choices, []);
  });

  it('sends no usage key at all on the wire without include_usage', async () => {
    const response = await post('/v1/chat/completions', { model: 'gpt-4o-mini', messages: hello, stream: true });
    const text = await response.text();
    assert.equal(text.includes('"usage"'), false);
    assert.ok(text.endsWith('data: [DONE]\n\n'));
  });

  it('sends no usage chunk with x-fake-no-usage even when include_usage is asked', async () => {
    const body = { model: 'gpt-4o-mini', messages: hello, stream: true, stream_options: { include_usage: true } };
    const text = await (await post('/v1/chat/completions', body, { 'x-fake-no-usage': '1' })).text();
    assert.equal(text.includes('"usage"'), false);
    assert.equal(text.includes('"choices":[]'), false);
  });

  it('streams byte-identical bodies for identical requests', async () => {
    const body = { model: 'gpt-4o-mini', messages: hello, stream: true, stream_options: { include_usage: true } };
    const [first, second] = await Promise.all([post('/v1/chat/completions', body), post('/v1/chat/completions', body)]);
    assert.equal(await first.text(), await second.text());
  });

  it('breaks the connection after x-fake-reset-after content chunks, so the SDK stream throws', async () => {
    const stream = await client.chat.completions.create(
      { model: 'gpt-4o-mini', messages: hello, stream: true },
      { headers: { 'x-fake-reset-after': '2' } },
    );
    const contents: string[] = [];
    await assert.rejects(async () => {
      for await (const chunk of stream) contents.push(chunk.choices[0]?.delta.content ?? '');
    });
    // The role chunk (empty content) and exactly two words arrived before the break.
    assert.equal(contents.length, 3);
    assert.equal(contents.join('').split(' ').length, 2);
  });

  it('breaks the connection after x-fake-error-after events of any kind', async () => {
    const response = await post(
      '/v1/chat/completions',
      { model: 'gpt-4o-mini', messages: hello, stream: true },
      { 'x-fake-error-after': '1' },
    );
    assert.equal(response.status, 200);
    const reader = response.body!.getReader();
    let received = '';
    await assert.rejects(async () => {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        received += Buffer.from(value).toString('utf8');
      }
    });
    assert.equal(parseSse(received).length, 1);
  });

  it('answers 200 and then breaks before the first event with x-fake-error-after: 0', async () => {
    const response = await post(
      '/v1/chat/completions',
      { model: 'gpt-4o-mini', messages: hello, stream: true },
      { 'x-fake-error-after': '0' },
    );
    assert.equal(response.status, 200);
    await assert.rejects(response.text());
  });
});

describe('legacy completions', () => {
  it('answers a text_completion with plain usage', async () => {
    const completion = await client.completions.create({ model: 'gpt-3.5-turbo-instruct', prompt: 'Once upon a time' });
    assert.equal(completion.object, 'text_completion');
    assert.match(completion.id, /^cmpl-/);
    assert.equal(completion.choices[0]?.finish_reason, 'stop');
    assert.equal(completion.choices[0]?.text.split(' ').length, 8);
    assert.deepEqual(completion.usage, { prompt_tokens: 4 + 3, completion_tokens: 8, total_tokens: 15 });
  });

  it('streams text chunks with the same include_usage semantics as chat', async () => {
    const stream = await client.completions.create({
      model: 'gpt-3.5-turbo-instruct',
      prompt: 'Once upon a time',
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);

    assert.equal(chunks.length, 8 + 1 + 1);
    assert.equal(chunks.at(-2)?.choices[0]?.finish_reason, 'stop');
    assert.deepEqual(chunks.at(-1)?.choices, []);
    assert.equal(chunks.at(-1)?.usage?.total_tokens, 15);
    assert.ok(chunks.slice(0, -1).every((chunk) => chunk.usage === null));
  });
});

describe('responses', () => {
  it('answers a response object with a message item and Responses usage', async () => {
    const response = await client.responses.create({ model: 'gpt-4o-mini', input: 'Say hello to the whole team' });
    assert.equal(response.object, 'response');
    assert.equal(response.status, 'completed');
    assert.equal(response.model, 'gpt-4o-mini-2024-07-18');
    assert.equal(response.output[0]?.type, 'message');
    assert.equal(response.output_text.split(' ').length, 8);
    assert.deepEqual(response.usage, {
      input_tokens: 6 + 3,
      input_tokens_details: { cached_tokens: 0 },
      output_tokens: 8,
      output_tokens_details: { reasoning_tokens: 0 },
      total_tokens: 17,
    });
  });

  it('puts a reasoning item first and counts reasoning tokens for o-series models', async () => {
    const response = await client.responses.create(
      { model: 'o4-mini', input: 'Think about it', instructions: 'Be brief.' },
      { headers: { 'x-fake-words': '4' } },
    );
    assert.deepEqual(response.output.map((item) => item.type), ['reasoning', 'message']);
    assert.equal(response.usage?.input_tokens, 3 + 3 + 2 + 3);
    assert.equal(response.usage?.output_tokens_details.reasoning_tokens, 8);
    assert.equal(response.usage?.output_tokens, 12);
  });

  it('streams the Responses event sequence ending in response.completed with usage', async () => {
    const stream = await client.responses.create(
      { model: 'gpt-4o-mini', input: 'Say hello to the whole team', stream: true },
      { headers: { 'x-fake-cached-tokens': '2' } },
    );
    const events = [];
    for await (const event of stream) events.push(event);

    const types = events.map((event) => event.type);
    assert.deepEqual(types, [
      'response.created',
      'response.in_progress',
      'response.output_item.added',
      'response.content_part.added',
      ...Array<string>(8).fill('response.output_text.delta'),
      'response.output_text.done',
      'response.content_part.done',
      'response.output_item.done',
      'response.completed',
    ]);
    assert.deepEqual(events.map((event) => event.sequence_number), events.map((_, i) => i));
    const completed = events.at(-1);
    assert.ok(completed?.type === 'response.completed');
    assert.equal(completed.response.usage?.total_tokens, 17);
    assert.equal(completed.response.usage?.input_tokens_details.cached_tokens, 2);
  });

  it('names each SSE event and sends no [DONE]', async () => {
    const response = await post('/v1/responses', { model: 'gpt-4o', input: 'Hi', stream: true });
    const events = parseSse(await response.text());
    for (const event of events) assert.equal(event.event, (JSON.parse(event.data) as { type: string }).type);
    assert.equal(events.at(-1)?.event, 'response.completed');
    assert.ok(events.every((event) => event.data !== '[DONE]'));
  });

  it('accumulates into the same final response through the SDK response stream helper', async () => {
    const stream = client.responses.stream({ model: 'o3-mini', input: 'Say hello' });
    const final = await stream.finalResponse();
    const whole = await client.responses.create({ model: 'o3-mini', input: 'Say hello' });
    // The helper's final response has no output_text convenience field; read the accumulated message instead.
    const message = final.output.find((item) => item.type === 'message');
    assert.ok(message?.type === 'message');
    assert.deepEqual(message.content.map((part) => (part.type === 'output_text' ? part.text : '')), [whole.output_text]);
    assert.deepEqual(final.usage, whole.usage);
  });

  it('omits usage from response.completed with x-fake-no-usage', async () => {
    const stream = await client.responses.create(
      { model: 'gpt-4o', input: 'Hi', stream: true },
      { headers: { 'x-fake-no-usage': '1' } },
    );
    let completed: unknown;
    for await (const event of stream) if (event.type === 'response.completed') completed = event.response;
    assert.ok(completed && typeof completed === 'object');
    assert.equal('usage' in completed, false);
  });
});

describe('embeddings', () => {
  it('answers base64 by default, which the SDK decodes to the same floats as the float format', async () => {
    const decoded = await client.embeddings.create({ model: 'text-embedding-3-small', input: ['one', 'two words'] });
    assert.equal(JSON.parse(upstream.requests.at(-1)!.body).encoding_format, 'base64');
    const floats = await client.embeddings.create({
      model: 'text-embedding-3-small',
      input: ['one', 'two words'],
      encoding_format: 'float',
    });

    assert.equal(decoded.object, 'list');
    assert.equal(decoded.data.length, 2);
    assert.equal(decoded.data[0]?.embedding.length, 8);
    assert.deepEqual(decoded.data, floats.data);
    assert.notDeepEqual(decoded.data[0]?.embedding, decoded.data[1]?.embedding);
    assert.deepEqual(decoded.usage, { prompt_tokens: 3, total_tokens: 3 });
  });

  it('honours dimensions', async () => {
    const result = await client.embeddings.create({ model: 'text-embedding-3-small', input: 'hello', dimensions: 40 });
    assert.equal(result.data[0]?.embedding.length, 40);
  });
});

describe('models', () => {
  it('lists models', async () => {
    const ids = [];
    for await (const model of client.models.list()) ids.push(model.id);
    assert.ok(ids.includes('gpt-4o-mini'));
  });
});

describe('errors', () => {
  it('surfaces x-fake-status 429 as a RateLimitError with retry-after', async () => {
    const error = await client.chat.completions
      .create({ model: 'gpt-4o', messages: hello }, { headers: { 'x-fake-status': '429' } })
      .catch((e: unknown) => e);
    assert.ok(error instanceof RateLimitError);
    assert.equal(error.status, 429);
    assert.equal(error.code, 'rate_limit_exceeded');
    assert.equal(error.headers.get('retry-after'), '1');
  });

  it('surfaces 400, 401 and 500 as the matching SDK errors, also for stream requests', async () => {
    const cases = [
      { status: '400', type: BadRequestError },
      { status: '401', type: AuthenticationError },
      { status: '500', type: InternalServerError },
    ];
    for (const { status, type } of cases) {
      const error = await client.chat.completions
        .create({ model: 'gpt-4o', messages: hello, stream: true }, { headers: { 'x-fake-status': status } })
        .catch((e: unknown) => e);
      assert.ok(error instanceof type, `status ${status}`);
      assert.equal((error as APIError).status, Number(status));
    }
  });

  it('answers an unknown route with a 404 unknown_url error', async () => {
    const response = await post('/v1/nothing-here', {});
    assert.equal(response.status, 404);
    assert.deepEqual(await response.json(), {
      error: {
        message: 'Invalid URL (POST /v1/nothing-here)',
        type: 'invalid_request_error',
        param: null,
        code: 'unknown_url',
      },
    });
  });

  it('rejects a body that is not JSON with a 400', async () => {
    const response = await post('/v1/chat/completions', 'model=gpt-4o');
    assert.equal(response.status, 400);
    const body = (await response.json()) as { error: { type: string } };
    assert.equal(body.error.type, 'invalid_request_error');
  });

  it('rejects a request without an authorization header with a 401', async () => {
    const response = await fetch(`${upstream.url}/v1/models`);
    assert.equal(response.status, 401);
  });

  it('rejects a malformed control header instead of ignoring it', async () => {
    const response = await post('/v1/chat/completions', { model: 'gpt-4o', messages: hello }, { 'x-fake-words': 'ten' });
    assert.equal(response.status, 400);
  });
});

describe('recording', () => {
  it('records method, path with query, headers and body, and sets x-request-id', async () => {
    const response = await post('/v1/chat/completions?trace=1', { model: 'gpt-4o', messages: hello });
    assert.match(response.headers.get('x-request-id') ?? '', /^req_[0-9a-f]{32}$/);
    assert.equal(upstream.requests.length, 1);
    const [recorded] = upstream.requests;
    assert.equal(recorded?.method, 'POST');
    assert.equal(recorded?.path, '/v1/chat/completions?trace=1');
    assert.equal(recorded?.headers.authorization, `Bearer ${API_KEY}`);
    assert.deepEqual(JSON.parse(recorded?.body ?? ''), { model: 'gpt-4o', messages: hello });

    upstream.reset();
    assert.equal(upstream.requests.length, 0);
  });

  it('records nothing when started with record: false', async () => {
    const quiet = await startFakeUpstream({ record: false });
    try {
      const response = await fetch(`${quiet.url}/v1/models`, { headers: { authorization: 'Bearer x' } });
      assert.equal(response.status, 200);
      assert.equal(quiet.requests.length, 0);
    } finally {
      await quiet.close();
    }
  });
});
