/**
 * What a request cost, from the bundled `@pydantic/genai-prices` database (historic prices, cache-read rates).
 * Costs are exact integers of nano-dollars from here on; only the API turns them back into USD numbers.
 */
import { calcPrice, findProvider } from '@pydantic/genai-prices';
import type { CostSource } from './usage-event';

export interface TokenUsage {
  readonly prompt_tokens: number;
  readonly completion_tokens: number;
  readonly cached_prompt_tokens: number;
  readonly reasoning_tokens: number;
  readonly total_tokens: number;
}

export const NO_TOKENS: TokenUsage = {
  prompt_tokens: 0,
  completion_tokens: 0,
  cached_prompt_tokens: 0,
  reasoning_tokens: 0,
  total_tokens: 0,
};

export interface Price {
  readonly cost_nano_usd: number | null;
  readonly cost_source: CostSource;
}

/**
 * The cost of `usage` on `model` at time `at`. An unknown model is `cost_nano_usd: null` with
 * `cost_source: 'unknown_model'`, never a silent 0.
 * @example priceOf({ prompt_tokens: 1000, completion_tokens: 100, ... }, 'gpt-4o-mini', 'openai', new Date())
 *   // { cost_nano_usd: 210000, cost_source: 'genai-prices' }
 */
export function priceOf(usage: TokenUsage, model: string | null, provider: string, at: Date): Price {
  if (usage.total_tokens === 0 && usage.prompt_tokens === 0 && usage.completion_tokens === 0) {
    return { cost_nano_usd: 0, cost_source: 'no_usage' };
  }
  if (model === null) return { cost_nano_usd: null, cost_source: 'unknown_model' };
  let result;
  try {
    result = calcPrice(
      {
        // genai-prices wants the total input count with the cached part reported separately.
        input_tokens: usage.prompt_tokens,
        cache_read_tokens: usage.cached_prompt_tokens > 0 ? usage.cached_prompt_tokens : undefined,
        // OpenAI's completion_tokens already include reasoning tokens, which are billed as output.
        output_tokens: usage.completion_tokens,
      },
      model,
      { providerId: provider, timestamp: at },
    );
  } catch {
    // The price database rejects inconsistent usage (e.g. cached > prompt from a misbehaving upstream).
    result = null;
  }
  if (result === null) return { cost_nano_usd: null, cost_source: 'unknown_model' };
  const nano = Math.round(result.total_price * 1e9);
  // Totals add costs as exact integers: a cost past 2^53 (or not a number at all) must not reach them.
  if (!Number.isSafeInteger(nano) || nano < 0) return { cost_nano_usd: null, cost_source: 'unknown_model' };
  return { cost_nano_usd: nano, cost_source: 'genai-prices' };
}

/**
 * The provider id for an upstream base URL, as genai-prices names it (`openai`, `groq`, `openrouter`…);
 * `openai` when the URL is not a known provider's (a self-hosted OpenAI-compatible server, a test double).
 */
export function providerOf(upstreamUrl: string): string {
  try {
    return findProvider({ providerApiUrl: upstreamUrl })?.id ?? 'openai';
  } catch {
    return 'openai';
  }
}
