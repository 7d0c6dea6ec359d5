/**
 * What a request cost, from the bundled `@pydantic/genai-prices` database (historic prices, cache-read rates).
 * Costs are exact integers of nano-dollars from here on; only the API turns them back into USD numbers.
 */
import { calcPrice, findProvider, type ModelInfo, type ModelPrice } from '@pydantic/genai-prices';
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
 * Price keys of usage the gateway never reports (it reports input, cached input and output tokens): on a model that
 * also prices these, each adds nothing to a request's cost. Every key here is checked against the whole price
 * database by the tests.
 */
const UNREPORTED_PRICE_KEYS = new Set([
  'cache_write_mtok',
  'cache_write_1h_mtok',
  'input_audio_mtok',
  'output_audio_mtok',
  'cache_audio_read_mtok',
  'input_image_mtok',
  'output_image_mtok',
  'cache_image_read_mtok',
  'input_video_mtok',
  'output_video_mtok',
  'output_reasoning_mtok',
  'web_searches_kcount',
  'storage_searches_kcount',
]);

/** Per-million-token prices of a model whose price does not depend on time or volume. */
interface FlatTokenPrices {
  readonly input: number | undefined;
  readonly cacheRead: number | undefined;
  readonly output: number | undefined;
}

/**
 * The flat token prices of a model's price entry, or null when its cost needs the database's general rules: prices
 * that change over time or by volume (tiers), or that charge anything the gateway reports as more than tokens.
 */
function flatTokenPrices(model: ModelInfo, entry: ModelPrice): FlatTokenPrices | null {
  if (Array.isArray(model.prices)) return null;
  for (const [key, value] of Object.entries(entry)) {
    if (value === undefined) continue;
    if (typeof value !== 'number' || !Number.isFinite(value)) return null;
    if (key !== 'input_mtok' && key !== 'cache_read_mtok' && key !== 'output_mtok' && !UNREPORTED_PRICE_KEYS.has(key)) return null;
  }
  return { input: entry.input_mtok as number | undefined, cacheRead: entry.cache_read_mtok as number | undefined, output: entry.output_mtok as number | undefined };
}

/**
 * The database's cost of token usage at flat prices, computed as it computes it (the same operations in the same
 * order, so the same number to the last bit): cached input is billed at the cache-read price when the model has one
 * and is then taken out of the input billed at the input price; a cached count above the input count is invalid.
 */
function flatCost(prices: FlatTokenPrices, usage: TokenUsage): number | null {
  const cached = usage.cached_prompt_tokens > 0 ? usage.cached_prompt_tokens : 0;
  const uncached = prices.cacheRead === undefined ? usage.prompt_tokens : usage.prompt_tokens - cached;
  if (uncached < 0) return null;
  let input = 0;
  if (prices.input !== undefined) input += (prices.input * uncached) / 1e6;
  if (prices.cacheRead !== undefined) input += (prices.cacheRead * cached) / 1e6;
  const output = prices.output === undefined ? 0 : (prices.output * usage.completion_tokens) / 1e6;
  return input + output;
}

/** What the database says of a model: unknown (null), flat token prices, or prices needing its general rules. */
type ModelPricing = null | { readonly flat: FlatTokenPrices | null };

/** Model names seen, by provider; bounded, since the model name comes from the client. */
const MAX_REMEMBERED_MODELS = 2_000;
const modelPricing = new Map<string, ModelPricing>();

function remember(key: string, pricing: ModelPricing): void {
  if (modelPricing.size >= MAX_REMEMBERED_MODELS) modelPricing.delete(modelPricing.keys().next().value!);
  modelPricing.set(key, pricing);
}

function databaseCost(usage: TokenUsage, model: string, provider: string, at: Date): ReturnType<typeof calcPrice> {
  return calcPrice(
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
}

/** The cost in USD (a float, as the database gives it), or null for an unknown model or invalid usage. */
function costUsd(usage: TokenUsage, model: string, provider: string, at: Date): number | null {
  // Finding a model means matching its name against every model of the provider: done once per name. The cost
  // itself is computed for every request, from the prices found.
  const key = `${provider}\u0000${model}`;
  const known = modelPricing.get(key);
  if (known === null) return null;
  if (known !== undefined && known.flat !== null) return flatCost(known.flat, usage);
  let result;
  try {
    result = databaseCost(usage, model, provider, at);
  } catch {
    // The price database rejects inconsistent usage (e.g. cached > prompt from a misbehaving upstream).
    return null;
  }
  if (known === undefined) remember(key, result === null ? null : { flat: flatTokenPrices(result.model, result.model_price) });
  return result === null ? null : result.total_price;
}

/** How a model's costs are computed once it has been seen: for tests and diagnostics. */
export function pricingPathOf(model: string, provider: string): 'unknown_model' | 'flat' | 'database' | 'not_seen' {
  const known = modelPricing.get(`${provider}\u0000${model}`);
  if (known === undefined) return 'not_seen';
  if (known === null) return 'unknown_model';
  return known.flat === null ? 'database' : 'flat';
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
  const usd = costUsd(usage, model, provider, at);
  if (usd === null) return { cost_nano_usd: null, cost_source: 'unknown_model' };
  const nano = Math.round(usd * 1e9);
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
