import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createResponseMeter, usageFrom } from '../../lambda/core/response-meter';

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Feeds `text` to a meter in pieces of `size` bytes and returns what the client would see. */
function run(text: string, size: number, strip: boolean, type = 'text/event-stream', endpoint: 'chat' | 'responses' = 'chat') {
  const meter = createResponseMeter(type, endpoint, { stripInjectedUsage: strip });
  const bytes = enc.encode(text);
  const out: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += size) out.push(meter.push(bytes.subarray(i, i + size)));
  out.push(meter.end());
  return { seen: dec.decode(Buffer.concat(out)), reading: meter.reading() };
}

const USAGE = '{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":1}}';
const withUsage =
  'data: {"id":"c1","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":null}\n\n' +
  'data: {"id":"c1","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{"content":" there"}}],"usage":null}\n\n' +
  `data: {"id":"c1","model":"gpt-4o-mini-2024-07-18","choices":[],"usage":${USAGE}}\n\n` +
  'data: [DONE]\n\n';
const withoutUsage =
  'data: {"id":"c1","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n' +
  'data: {"id":"c1","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{"content":" there"}}]}\n\n' +
  'data: [DONE]\n\n';

describe('usageFrom', () => {
  it('reads chat-style usage with cached and reasoning details', () => {
    assert.deepEqual(usageFrom(JSON.parse(USAGE)), {
      prompt_tokens: 9,
      completion_tokens: 2,
      cached_prompt_tokens: 4,
      reasoning_tokens: 1,
      total_tokens: 11,
    });
  });
  it('reads Responses-style usage', () => {
    const usage = usageFrom({ input_tokens: 5, output_tokens: 7, input_tokens_details: { cached_tokens: 2 }, output_tokens_details: { reasoning_tokens: 3 } });
    assert.deepEqual(usage, { prompt_tokens: 5, completion_tokens: 7, cached_prompt_tokens: 2, reasoning_tokens: 3, total_tokens: 12 });
  });
  it('ignores values that are not usage objects and negative or non-numeric counts', () => {
    assert.equal(usageFrom(null), null);
    assert.equal(usageFrom('12'), null);
    assert.equal(usageFrom({ foo: 1 }), null);
    assert.equal(usageFrom({ prompt_tokens: -5, completion_tokens: 'x' })?.prompt_tokens, 0);
  });
});

describe('SSE metering', () => {
  for (const size of [1, 3, 17, 64, 10_000]) {
    it(`strips injected usage exactly, whatever the chunking (${size}-byte chunks)`, () => {
      const { seen, reading } = run(withUsage, size, true);
      assert.equal(seen, withoutUsage);
      assert.equal(reading.usage?.total_tokens, 11);
      assert.equal(reading.model, 'gpt-4o-mini-2024-07-18');
      assert.equal(reading.text, 'Hi there');
    });
  }

  it('passes every byte through when the client asked for usage itself', () => {
    const { seen, reading } = run(withUsage, 7, false);
    assert.equal(seen, withUsage);
    assert.equal(reading.usage?.prompt_tokens, 9);
  });

  it('understands CRLF event separators and multi-line data', () => {
    const text = 'data: {"model":"m1",\r\ndata: "choices":[{"delta":{"content":"ok"}}]}\r\n\r\ndata: [DONE]\r\n\r\n';
    const { seen, reading } = run(text, 5, false);
    assert.equal(seen, text);
    assert.equal(reading.model, 'm1');
    assert.equal(reading.text, 'ok');
  });

  it('keeps comments, unknown fields and garbage lines as they are', () => {
    const text = ': keep-alive\n\nevent: ping\ndata: not json\n\n' + withUsage;
    const { seen } = run(text, 11, true);
    assert.equal(seen, ': keep-alive\n\nevent: ping\ndata: not json\n\n' + withoutUsage);
  });

  it('reads usage and model from Responses API response.completed events', () => {
    const text =
      'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"Hello"}\n\n' +
      'event: response.completed\ndata: {"type":"response.completed","response":{"model":"gpt-4o-2024-08-06","usage":{"input_tokens":3,"output_tokens":1,"total_tokens":4}}}\n\n';
    const { seen, reading } = run(text, 9, false, 'text/event-stream', 'responses');
    assert.equal(seen, text);
    assert.equal(reading.model, 'gpt-4o-2024-08-06');
    assert.equal(reading.usage?.total_tokens, 4);
    assert.equal(reading.text, 'Hello');
  });

  it('flushes a final event that lacks its blank line', () => {
    const { seen } = run('data: {"choices":[{"delta":{"content":"x"}}],"usage":null}', 4, true);
    assert.equal(seen, 'data: {"choices":[{"delta":{"content":"x"}}]}');
  });

  it('keeps multi-byte characters intact across chunk boundaries', () => {
    const text = 'data: {"choices":[{"delta":{"content":"héllo 🌍"}}],"usage":null}\n\n';
    const { seen, reading } = run(text, 1, true);
    assert.equal(seen, 'data: {"choices":[{"delta":{"content":"héllo 🌍"}}]}\n\n');
    assert.equal(reading.text, 'héllo 🌍');
  });
});

describe('JSON metering', () => {
  it('reads usage, model and text from a complete JSON answer without changing it', () => {
    const body = JSON.stringify({ model: 'gpt-4o-mini', choices: [{ message: { content: 'Yes' } }], usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } });
    const { seen, reading } = run(body, 5, false, 'application/json');
    assert.equal(seen, body);
    assert.equal(reading.model, 'gpt-4o-mini');
    assert.equal(reading.usage?.total_tokens, 2);
    assert.equal(reading.text, 'Yes');
  });

  it('reports no usage for a truncated JSON answer instead of failing', () => {
    const { reading } = run('{"model":"x","usage":{"prompt_tok', 4, false, 'application/json');
    assert.equal(reading.usage, null);
    assert.equal(reading.model, null);
  });
});
