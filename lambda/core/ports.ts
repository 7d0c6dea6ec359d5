/**
 * The storage ports. The core only ever talks to these interfaces; `lambda/local/` implements them on files and
 * DuckDB, `lambda/aws/` on Firehose, DynamoDB and Athena. Every adapter takes its client in its constructor so
 * tests can hand it one pointed at a local server.
 */
import type { UsageEvent } from './usage-event';

/** Appends usage events to the durable event log (the source of truth). */
export interface EventSink {
  /**
   * Makes the events durable, or hands them to a recovery path that is (a spool, a fallback bucket).
   * Resolves once that is done; rejects only when the events could be neither written nor spooled.
   */
  write(events: readonly UsageEvent[]): Promise<void>;
  /** Writes out anything buffered. */
  flush?(): Promise<void>;
  close?(): Promise<void>;
}

/** The period a set of live totals covers. */
export type Period = 'day' | 'month' | 'all';

/** Totals of one user over one period; the same shape in every period. */
export interface UsageTotals {
  readonly requests: number;
  readonly errors: number;
  readonly prompt_tokens: number;
  readonly completion_tokens: number;
  readonly cached_prompt_tokens: number;
  readonly reasoning_tokens: number;
  readonly total_tokens: number;
  /** Exact sum of the priced requests' cost in nano-dollars. */
  readonly cost_nano_usd: number;
  /** Requests whose model had no known price (their cost is not in `cost_nano_usd`). */
  readonly unpriced_requests: number;
  /** Requests refused with 429 by the gateway's own limits. */
  readonly rate_limited: number;
  /** ISO-8601 UTC of the first and last request in the period. */
  readonly first_active: string;
  readonly last_active: string;
}

export interface UserTotals extends UsageTotals {
  /** Null is the bucket of requests that named no user. */
  readonly user_id: string | null;
}

export interface ModelTotals {
  readonly model: string;
  readonly requests: number;
  readonly total_tokens: number;
  readonly cost_nano_usd: number;
  readonly unpriced_requests: number;
}

export type UserSort = 'cost' | 'requests' | 'tokens' | 'last_active';

export interface ListUsersQuery {
  readonly period: Period;
  /** `YYYY-MM-DD` for day, `YYYY-MM` for month, ignored for all. */
  readonly periodKey: string;
  readonly sort: UserSort;
  readonly order: 'asc' | 'desc';
  readonly limit: number;
  /** Opaque cursor from a previous page's `nextCursor`. */
  readonly cursor?: string;
}

export interface UserPage {
  readonly users: readonly UserTotals[];
  readonly nextCursor: string | null;
}

export interface UserDetail {
  readonly user_id: string | null;
  readonly day: UsageTotals | null;
  readonly month: UsageTotals | null;
  readonly all: UsageTotals;
  readonly byModel: readonly ModelTotals[];
}

/** Live per-user totals, updated as requests finish. Derived from the event log, so rebuildable. */
export interface CounterStore {
  /**
   * Adds the events to the totals of their user for the event's day, month and all time, and to the per-model
   * totals. Recording the same `request_id` twice must count it once.
   */
  record(events: readonly UsageEvent[]): Promise<void>;
  listUsers(query: ListUsersQuery): Promise<UserPage>;
  /** `day` and `month` are the period keys to report (`YYYY-MM-DD`, `YYYY-MM`); null when the user is unknown. */
  getUser(userId: string | null, day: string, month: string): Promise<UserDetail | null>;
  close?(): Promise<void>;
}

/** Totals per group over a range of days, answered from the event log. */
export interface UsageQuery {
  /** Inclusive UTC days, `YYYY-MM-DD`. */
  readonly from: string;
  readonly to: string;
  readonly groupBy: 'user' | 'model' | { readonly property: string };
  readonly sort: 'cost' | 'requests';
  readonly order: 'asc' | 'desc';
  readonly limit: number;
  readonly userId?: string;
}

export interface UsageGroupRow {
  readonly group: string | null;
  readonly requests: number;
  readonly errors: number;
  readonly users: number;
  readonly prompt_tokens: number;
  readonly completion_tokens: number;
  readonly total_tokens: number;
  readonly cost_nano_usd: number;
  readonly unpriced_requests: number;
}

/** A history query either answers now or keeps running under an id the caller can poll. */
export type HistoryResult<T> =
  | { readonly state: 'done'; readonly rows: readonly T[] }
  | { readonly state: 'running'; readonly queryId: string };

/** Queries over the event log (DuckDB over local files, Athena over the Parquet log). */
export interface HistoryStore {
  /** Totals per group over a day range, deduplicated by `request_id`. Waits at most `waitMs` before `running`. */
  usage(query: UsageQuery, waitMs: number): Promise<HistoryResult<UsageGroupRow>>;
  /** Result of a query that was `running`; `running` again while it still is. Throws NotFoundError for an unknown id. */
  queryResult(queryId: string): Promise<HistoryResult<UsageGroupRow>>;
  close?(): Promise<void>;
}

/**
 * Checks API keys: gateway keys (`Helicone-Auth: Bearer <key>`) and metrics keys (`Authorization: Bearer <key>`)
 * each have their own store. Keys are only ever held as SHA-256 hashes.
 */
export interface KeyStore {
  /** True when keys are required at all. */
  readonly enabled: boolean;
  /** The key's id (first 12 hex of its hash) when valid, else null. Must compare in constant time. */
  verify(key: string): Promise<string | null>;
}
