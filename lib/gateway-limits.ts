import { limitsConfigFromEnv } from '../lambda/core/limits';

/**
 * Default rate limits and budget of every user (per-user limits are set through the metrics API and stored in the
 * counters table). Validated at synth time by the same parser the functions use at cold start.
 */
export interface GatewayLimits {
  /**
   * Monthly budget in USD of every user without a budget of their own (`DEFAULT_MONTHLY_BUDGET_USD`).
   * @default - no default budget
   */
  readonly defaultMonthlyBudgetUsd?: number;
  /**
   * Rate-limit policies of every user without policies of their own, e.g. `'1000;w=86400'`
   * (`DEFAULT_RATE_LIMIT_POLICY`; a comma-separated list for several).
   * @default - no default rate limit
   */
  readonly defaultRateLimitPolicy?: string;
  /**
   * Output tokens assumed for a request without `max_tokens` / `max_output_tokens` when its worst-case cost is
   * reserved against a budget (`BUDGET_ASSUMED_OUTPUT_TOKENS`).
   * @default 4096
   */
  readonly assumedOutputTokens?: number;
  /**
   * Refuse requests (500) while the counters table cannot be read or written, instead of forwarding them
   * unchecked (`LIMITS_FAIL_CLOSED`).
   * @default false
   */
  readonly failClosed?: boolean;
}

/**
 * The functions' environment variables for `limits`; only what is set, so the defaults live in one place (the code).
 * @throws Error naming the setting when a value would fail the functions' cold start
 * @example environment: { ...otherVariables, ...limitsEnvironment(props.limits) }
 */
export function limitsEnvironment(limits: GatewayLimits = {}): Record<string, string> {
  const env: Record<string, string> = {};
  if (limits.defaultMonthlyBudgetUsd !== undefined) {
    const budget = limits.defaultMonthlyBudgetUsd;
    // Fixed-point text: the parser takes decimals only, never exponents.
    env.DEFAULT_MONTHLY_BUDGET_USD = Number.isFinite(budget) ? budget.toFixed(9).replace(/\.?0+$/, '') : String(budget);
  }
  if (limits.defaultRateLimitPolicy !== undefined) env.DEFAULT_RATE_LIMIT_POLICY = limits.defaultRateLimitPolicy;
  if (limits.assumedOutputTokens !== undefined) env.BUDGET_ASSUMED_OUTPUT_TOKENS = String(limits.assumedOutputTokens);
  if (limits.failClosed !== undefined) env.LIMITS_FAIL_CLOSED = String(limits.failClosed);
  try {
    limitsConfigFromEnv(env);
  } catch (error) {
    throw new Error(`limits: ${error instanceof Error ? error.message : String(error)}`);
  }
  return env;
}
