/**
 * The usage event: one flat, versioned record per proxied request.
 *
 * This is the unit of truth of the whole product. The event log (files locally, Firehose → S3 Parquet on AWS)
 * holds these records; live counters and every history query are derived from them, and can be rebuilt from them.
 */

/** Bumped when a field changes meaning or type; readers must accept every version up to this one. */
export const USAGE_EVENT_VERSION = 1;

/** Where the token counts of an event come from. */
export type UsageSource =
  /** The provider reported usage in its answer. */
  | 'provider'
  /** The provider reported none; tokens were counted with a tokenizer from the request and the answer. */
  | 'estimated'
  /** The stream ended early (client gone, upstream reset); tokens were counted from what had arrived. */
  | 'partial'
  /** No tokens apply (an error before any answer, a route that has no tokens). */
  | 'none';

/** Where the cost of an event comes from. */
export type CostSource =
  /** Priced from the bundled `@pydantic/genai-prices` database at the event's timestamp. */
  | 'genai-prices'
  /** The model has no known price: `cost_usd` is null, never a silent 0. */
  | 'unknown_model'
  /** No tokens were used, so nothing is owed (e.g. an upstream error without usage). */
  | 'no_usage';

export interface UsageEvent {
  /** Schema version of this record, {@link USAGE_EVENT_VERSION}. */
  readonly v: number;
  /** UUID of the request; also sent back as `Helicone-Id`. Deduplication key everywhere. */
  readonly request_id: string;
  /** ISO-8601 UTC time the request arrived, e.g. `2026-11-22T14:03:07.123Z`. */
  readonly ts: string;
  /** End user the request is billed to, or null when the caller named none. */
  readonly user_id: string | null;
  /** `Helicone-Property-<Name>` headers: `<name>` in lower case → value. */
  readonly properties: Readonly<Record<string, string>>;
  /** Provider id as known to genai-prices, e.g. `openai`. */
  readonly provider: string;
  /** Model as answered by the upstream, else as requested, else null. */
  readonly model: string | null;
  /** Request path without query string, e.g. `/v1/chat/completions`. */
  readonly path: string;
  readonly method: string;
  /** HTTP status the client received (upstream status, or the gateway's own for its errors). */
  readonly status: number;
  readonly stream: boolean;
  /** Milliseconds from the request's arrival to the end of the response body. */
  readonly latency_ms: number;
  /** Milliseconds from the request's arrival to the first upstream body byte; null when none arrived. */
  readonly ttft_ms: number | null;
  readonly prompt_tokens: number;
  readonly completion_tokens: number;
  /** Part of `prompt_tokens` served from the provider's prompt cache. */
  readonly cached_prompt_tokens: number;
  /** Part of `completion_tokens` spent on reasoning. */
  readonly reasoning_tokens: number;
  readonly total_tokens: number;
  /** Cost in USD (derived from `cost_nano_usd`), or null for an unpriced model. */
  readonly cost_usd: number | null;
  /** Exact cost in integer nano-dollars (1e-9 USD); what storage sums. Null for an unpriced model. */
  readonly cost_nano_usd: number | null;
  readonly cost_source: CostSource;
  readonly usage_source: UsageSource;
  /** Short error description for non-2xx answers or broken streams, else null. Never a request or answer body. */
  readonly error: string | null;
  /** Non-secret id of the gateway key used (first 12 hex chars of its SHA-256), or null without gateway auth. */
  readonly key_id: string | null;
}

/** UTC date partition of an event, `YYYY-MM-DD`. */
export function eventDate(event: Pick<UsageEvent, 'ts'>): string {
  return event.ts.slice(0, 10);
}

/** True when the event counts as an error in the totals: any status outside 2xx, or a broken stream. */
export function isErrorEvent(event: Pick<UsageEvent, 'status' | 'error'>): boolean {
  return event.status < 200 || event.status >= 300 || event.error !== null;
}

/** The `error` of an event the gateway refused itself for one of its own limits, with status 429. */
export const GATEWAY_RATE_LIMITED_ERROR = 'rate_limited';

/**
 * True when the gateway itself refused the request for one of its own limits (status 429 and error
 * `rate_limited`), not a provider's 429 (`upstream_rate_limited`). This is what every `rate_limited` total counts,
 * in the live counters and in history queries alike.
 */
export function isGatewayRateLimited(event: Pick<UsageEvent, 'status' | 'error'>): boolean {
  return event.status === 429 && event.error === GATEWAY_RATE_LIMITED_ERROR;
}

/** Converts exact nano-dollars to the USD number the API returns. */
export function nanoToUsd(nanos: number | bigint): number {
  return Number(nanos) / 1e9;
}
