/**
 * Usage events for store and query tests: a plain successful request with no usage, to be overridden field by
 * field, and the fields of a priced request.
 */
import { USAGE_EVENT_VERSION, type UsageEvent } from '../../lambda/core/usage-event';

/** @example sampleEvent({ request_id: 'r1', user_id: 'bob', ...priced(10, 5, 4500) }) */
export function sampleEvent(overrides: Partial<UsageEvent> = {}): UsageEvent {
  return {
    v: USAGE_EVENT_VERSION,
    request_id: '00000000-0000-4000-8000-000000000000',
    ts: '2026-11-22T10:00:00.000Z',
    user_id: 'alice',
    properties: {},
    provider: 'openai',
    model: 'gpt-4o',
    path: '/v1/chat/completions',
    method: 'POST',
    status: 200,
    stream: false,
    latency_ms: 100,
    ttft_ms: 50,
    prompt_tokens: 0,
    completion_tokens: 0,
    cached_prompt_tokens: 0,
    reasoning_tokens: 0,
    total_tokens: 0,
    cost_usd: 0,
    cost_nano_usd: 0,
    cost_source: 'no_usage',
    usage_source: 'none',
    error: null,
    key_id: null,
    ...overrides,
  };
}

/** The fields of a request priced from provider usage. */
export const priced = (prompt: number, completion: number, nanos: number): Partial<UsageEvent> => ({
  prompt_tokens: prompt,
  completion_tokens: completion,
  total_tokens: prompt + completion,
  cost_nano_usd: nanos,
  cost_usd: nanos / 1e9,
  cost_source: 'genai-prices',
  usage_source: 'provider',
});
