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
  /** Inclusive days, `YYYY-MM-DD`, in UTC shifted by `tzOffsetMinutes`. */
  readonly from: string;
  readonly to: string;
  readonly groupBy: 'user' | 'model' | { readonly property: string };
  readonly sort: 'cost' | 'requests';
  readonly order: 'asc' | 'desc';
  readonly limit: number;
  readonly userId?: string;
  /** Offset of the days from UTC in minutes, e.g. 330 for `+05:30`. @default 0 */
  readonly tzOffsetMinutes?: number;
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

/** The SQL dialect a history store runs: DuckDB locally, Athena (Trino) on AWS. */
export type SqlDialect = 'duckdb' | 'athena';

/** One value of a history result row: numbers for numeric columns, strings for text, null for SQL NULL. */
export type HistoryValue = string | number | null;
export type HistoryRow = Readonly<Record<string, HistoryValue>>;

/**
 * A statement built in core (`lambda/core/history-sql.ts`) for the store's dialect and relation, with positional
 * `?` placeholders and their values in order.
 */
export interface HistoryStatement {
  readonly sql: string;
  readonly params: readonly (string | number)[];
  /** Inclusive `dt` partitions the statement reads; the local store reads only these days' files. */
  readonly days: { readonly from: string; readonly to: string };
}

export type ExportFormat = 'csv' | 'ndjson';

/** The per-request events of a day range, deduplicated by `request_id`, oldest first. */
export interface EventExportQuery {
  readonly from: string;
  readonly to: string;
  readonly userId?: string;
  readonly format: ExportFormat;
  /** @default 0 */
  readonly tzOffsetMinutes?: number;
}

/** A link to one file of an export, valid until the export's `expiresAt`. */
export interface ExportFile {
  readonly url: string;
  readonly key: string;
  readonly bytes: number | null;
}

/**
 * An export either streams its events through the API (locally) or is written by the query engine to files the
 * caller downloads through pre-signed links (AWS), and may still be running there.
 */
export type EventExport =
  | { readonly state: 'streaming'; readonly events: AsyncIterable<UsageEvent> }
  | {
      readonly state: 'done';
      readonly format: ExportFormat;
      readonly compression: 'none' | 'gzip';
      readonly files: readonly ExportFile[];
      /** ISO-8601 UTC time the links stop working. */
      readonly expiresAt: string;
    }
  | { readonly state: 'running'; readonly queryId: string };

/**
 * Queries over the event log (DuckDB over local files, Athena over the Parquet log). The statements are built in
 * core for the store's {@link dialect} and {@link source}; the store only runs them and hands back plain rows.
 */
export interface HistoryStore {
  readonly dialect: SqlDialect;
  /** The relation statements read: every UsageEvent column plus `dt`. */
  readonly source: string;
  /** Runs a statement, waiting at most `waitMs` before answering `running` with a query id. */
  execute(statement: HistoryStatement, waitMs: number): Promise<HistoryResult<HistoryRow>>;
  /** Result of a statement that was `running`; `running` again while it still is. Throws NotFoundError for an unknown id. */
  queryResult(queryId: string): Promise<HistoryResult<HistoryRow>>;
  /** Starts an export of events. */
  exportEvents(query: EventExportQuery, waitMs: number): Promise<EventExport>;
  /** Result of an export that was `running`. Throws NotFoundError for an unknown id. */
  exportResult(queryId: string): Promise<EventExport>;
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

/**
 * A counter the limiter keeps: the requests (or cost) of one segment in one rate-limit window, or what one user has
 * spent (and holds reserved) in one UTC month.
 */
export type LimitCounter =
  | {
      readonly kind: 'window';
      /** Who the window counts: `user:<id>`, `user:` + NUL for no user, `property:<name>:<value>`, … */
      readonly segment: string;
      readonly unit: 'request' | 'cents';
      readonly windowSeconds: number;
      /** Epoch milliseconds of the window's first instant (a multiple of the window length). */
      readonly windowStart: number;
    }
  | {
      readonly kind: 'budget';
      /** Null is the bucket of requests that named no user. */
      readonly userId: string | null;
      /** `YYYY-MM`, UTC. */
      readonly month: string;
    };

/** Adds `amount` to a counter unless the counter would then exceed `limit`. */
export interface LimitCharge {
  readonly counter: LimitCounter;
  /** Requests for `request` windows; nano-dollars for `cents` windows and budgets. */
  readonly amount: number;
  /** Highest value the counter may reach; null counts without a cap. */
  readonly limit: number | null;
}

export interface LimitChargeResult {
  /** True when every charge fitted and all were added; false when none was. */
  readonly admitted: boolean;
  /** Per charge, in order: whether it fitted its limit. */
  readonly fits: readonly boolean[];
  /** Per charge: the counter after the charge when admitted, else the counter as the store found it. */
  readonly used: readonly number[];
}

/** A user's own limits, set through the metrics API. A field left out means "the configured default". */
export interface UserLimits {
  /** Monthly budget in nano-dollars; null: no budget for this user, whatever the default. */
  readonly monthlyBudgetNanoUsd?: number | null;
  /** Rate-limit policies in canonical form (`100;w=3600;u=request;s=user`); replaces the default policies. */
  readonly rateLimits?: readonly string[];
  readonly blocked?: boolean;
  /** ISO-8601 UTC time of the last change. */
  readonly updatedAt: string;
}

/**
 * Rate-limit windows, monthly budgets and per-user limits, in the same store as the live totals (DuckDB locally,
 * DynamoDB on AWS). The limiter in `limits.ts` decides; the store only keeps counters and checks them atomically.
 */
export interface LimitStore {
  /**
   * All or nothing: adds every charge's amount when each counter stays within its limit (`used + amount <= limit`),
   * otherwise adds none. Concurrent calls never let a counter pass its limit.
   */
  charge(charges: readonly LimitCharge[]): Promise<LimitChargeResult>;
  /** Adds signed amounts without any limit: settles a reservation against the real cost, records spending. */
  adjust(adjustments: readonly { readonly counter: LimitCounter; readonly amount: number }[]): Promise<void>;
  /** Current values (0 for a counter never charged). */
  read(counters: readonly LimitCounter[]): Promise<number[]>;
  /** The user's own limits, or null when only the defaults apply. */
  getLimits(userId: string | null): Promise<UserLimits | null>;
  /** Sets the user's own limits; null removes them (back to the defaults). */
  putLimits(userId: string | null, limits: UserLimits | null): Promise<void>;
  close?(): Promise<void>;
}
