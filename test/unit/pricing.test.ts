import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { calcPrice, waitForUpdate } from '@pydantic/genai-prices';
import { NO_TOKENS, priceOf, pricingPathOf, type TokenUsage } from '../../lambda/core/pricing';

const usage = (prompt: number, cached: number, completion: number): TokenUsage => ({
  ...NO_TOKENS,
  prompt_tokens: prompt,
  cached_prompt_tokens: cached,
  completion_tokens: completion,
  total_tokens: prompt + completion,
});

/** The database's own answer, in nano-dollars, as priceOf states it. */
function reference(u: TokenUsage, model: string, provider: string, at: Date): number | null {
  let result;
  try {
    result = calcPrice(
      { input_tokens: u.prompt_tokens, cache_read_tokens: u.cached_prompt_tokens > 0 ? u.cached_prompt_tokens : undefined, output_tokens: u.completion_tokens },
      model,
      { providerId: provider, timestamp: at },
    );
  } catch {
    return null;
  }
  if (result === null) return null;
  const nano = Math.round(result.total_price * 1e9);
  return Number.isSafeInteger(nano) && nano >= 0 ? nano : null;
}

describe('priceOf', () => {
  it('gives exactly the database cost for every model it knows, on the first request and every later one', async () => {
    const providers = (await waitForUpdate())!;
    const usages = [
      usage(1000, 0, 100),
      usage(1_234_567, 1_000_000, 98_765),
      usage(7, 7, 3),
      usage(3, 0, 0),
      usage(0, 0, 11),
      usage(10, 20, 5), // more cached than prompt: invalid usage, no price
      usage(987_654_321, 123_456_789, 555_555),
    ];
    const times = [new Date('2026-11-22T12:00:00Z'), new Date('2026-11-22T03:30:00Z'), new Date('2024-01-01T00:00:00Z')];
    const paths = { flat: 0, database: 0 };
    let compared = 0;
    for (const provider of providers) {
      for (const model of provider.models) {
        for (const at of times) {
          for (const u of usages) {
            const expected = reference(u, model.id, provider.id, at);
            // Twice: the first request finds the model, the next ones reuse what was found.
            for (let round = 0; round < 2; round++) {
              const { cost_nano_usd } = priceOf(u, model.id, provider.id, at);
              assert.equal(cost_nano_usd, expected, `${provider.id}/${model.id} at ${at.toISOString()}, usage ${JSON.stringify(u)}, round ${round}`);
              compared++;
            }
          }
        }
        const path = pricingPathOf(model.id, provider.id);
        if (path === 'flat' || path === 'database') paths[path]++;
      }
    }
    assert.ok(compared > 10_000);
    // Most models have flat token prices, computed without the database's general rules; the rest use them.
    assert.ok(paths.flat > 1_000, `flat: ${paths.flat}`);
    assert.ok(paths.database > 20, `database: ${paths.database}`);
  });

  it('says unknown_model for a model the database does not know, every time', () => {
    for (let round = 0; round < 2; round++) {
      assert.deepEqual(priceOf(usage(10, 0, 10), 'my-local-llama', 'openai', new Date()), { cost_nano_usd: null, cost_source: 'unknown_model' });
    }
    assert.equal(pricingPathOf('my-local-llama', 'openai'), 'unknown_model');
  });

  it('keeps no usage at a cost of 0 with cost_source no_usage', () => {
    assert.deepEqual(priceOf(NO_TOKENS, 'gpt-4o-mini', 'openai', new Date()), { cost_nano_usd: 0, cost_source: 'no_usage' });
  });
});
