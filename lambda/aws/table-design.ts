/**
 * The DynamoDB table behind the live per-user totals and the gateway keys: one on-demand table, every item
 * under a string partition key `pk` and string sort key `sk`. The CDK construct mirrors
 * {@link counterTableDefinition}; tests create the same table in dynalite from it.
 *
 * ## Items
 *
 * | pk                | sk                | what                                                      |
 * |-------------------|-------------------|-----------------------------------------------------------|
 * | `U#<user>`        | `T#ALL`           | all-time totals of the user                               |
 * | `U#<user>`        | `T#D#YYYY-MM-DD`  | totals of one UTC day (expire after 400 days)             |
 * | `U#<user>`        | `T#M#YYYY-MM`     | totals of one UTC month (expire after about 3 years)      |
 * | `U#<user>`        | `M#<model>`       | all-time totals of the user for one model                 |
 * | `R#<request_id>`  | `R`               | "this request is counted" marker (expires after a week)   |
 * | `K#<sha256 hex>`  | `K`               | a gateway key, found by the hash of the presented key     |
 * | `KEYS`            | `<key_id>`        | the listing of gateway keys (ids, labels, dates)          |
 * | `U#<user>`        | `B#YYYY-MM`       | the user's spending plus open reservations in one UTC month, `used` in nano-dollars (expires after 400 days) |
 * | `L#<user>`        | `LIMITS`          | the user's own limits (JSON `limits`), set through the metrics API |
 * | `RL#<segment>`    | `W#<unit>#<w>#<start ms>` | one rate-limit window of one segment (`user:<id>`, `property:<name>:<value>`), `used` in requests or nano-dollars (expires a day after the window) |
 *
 * Limit counters are changed with conditional `ADD`s (`attribute_not_exists(used) OR used <= :limit - :amount`), so
 * concurrent requests can never push one past its limit. User limits have a partition prefix of their own so the
 * metrics function can be allowed to write them (IAM `dynamodb:LeadingKeys` `L#*`) and nothing else.
 *
 * A user's detail reads its three totals items by key and Queries its `M#` items; it never reads the whole user
 * partition, which holds a day item for every active day.
 *
 * The user of requests that named none is {@link NO_USER}: a NUL character, which no real user id holds
 * (user ids never contain control characters), so the bucket cannot collide with a real user.
 *
 * Totals items hold a number attribute per `UsageTotals` field (cost as integer nano-dollars, so sums are exact),
 * `first_active`/`last_active` as ISO strings and `first_active_ms`/`last_active_ms` as epoch milliseconds.
 *
 * ## Ranking users without a Scan
 *
 * Totals items also carry `period` = `<period>#<shard>` (`D#2026-11-22#3`, `M#2026-11#3`, `ALL#3`). Four global
 * secondary indexes share that partition key and each sorts by one number ({@link USER_SORT_INDEXES}), so a
 * ranked page of users is a Query per shard, forwards or backwards. Per-model items, markers and key items have
 * no `period` and stay out of these (sparse) indexes.
 *
 * Why shards: without them every request of a day writes the same GSI partition (`D#2026-11-22`), and because the
 * index sort key changes on every update each write costs the index a delete plus a put. One index partition takes
 * about 1,000 write units per second, so an unsharded day (and month, and all-time) partition would cap the whole
 * gateway near 500 requests per second, and GSI throttling pushes back on the table writes themselves. Users are
 * spread over {@link PERIOD_SHARDS} shards by a hash of their id (a user always lands in the same shard), which
 * lifts that ceiling about tenfold; reads query every shard in parallel and merge (see the counter store).
 * Changing {@link PERIOD_SHARDS} re-shards nothing that is already written: it needs a rebuild of the totals.
 *
 * A page costs one Query per shard, each reading at most a page plus one item.
 *
 * Sizing: a request costs up to about 30 write units: the marker (put, then confirm), four `ADD`s, and for each
 * of the three totals items up to two writes per ranking index (a changed index key is a delete plus a put). The
 * ranking indexes are most of that; they are what makes `/metrics/users` a Query instead of a Scan. One user's
 * items share a partition (about 1,000 write units per second) and each request updates four of them, so a single
 * user (or the no-user bucket) tops out near 250 requests per second before DynamoDB throttles; the store retries
 * throttled writes with backoff.
 *
 * ## Ties
 *
 * Users with the same value of the sort key come back in the order the index keeps them within a shard, and
 * across shards the lower shard first. Paging never repeats nor skips a user as long as nothing is written
 * between pages; under live traffic a user whose totals change between two pages can move across the page
 * boundary (every ranked view of live counters has this property).
 */
import type { CreateTableCommandInput } from '@aws-sdk/client-dynamodb';
import type { Period, UserSort } from '../core/ports';

export const PARTITION_KEY = 'pk';
export const SORT_KEY = 'sk';
/** Partition key of the ranking indexes: `<period>#<shard>`. */
export const PERIOD_ATTRIBUTE = 'period';
/** Epoch seconds after which DynamoDB TTL deletes the item; the CDK construct enables TTL on it. */
export const TTL_ATTRIBUTE = 'expires_at';

/** Number of shards of each ranking partition. Part of the stored data: changing it needs a rebuild. */
export const PERIOD_SHARDS = 10;

/** Lifetimes of period totals, counted from the period's first day (so every write sets the same value). */
export const DAY_TOTALS_TTL_DAYS = 400;
export const MONTH_TOTALS_TTL_DAYS = 3 * 366;
export const REQUEST_MARKER_TTL_DAYS = 7;

/** The user key of requests that named no user. */
export const NO_USER = '\u0000';

export const USER_PREFIX = 'U#';
export const TOTALS_ALL_SK = 'T#ALL';
export const DAY_TOTALS_PREFIX = 'T#D#';
export const MONTH_TOTALS_PREFIX = 'T#M#';
export const MODEL_TOTALS_PREFIX = 'M#';
export const REQUEST_MARKER_PREFIX = 'R#';
export const REQUEST_MARKER_SK = 'R';
export const GATEWAY_KEY_PREFIX = 'K#';
export const GATEWAY_KEY_SK = 'K';
export const GATEWAY_KEY_LIST_PK = 'KEYS';
export const BUDGET_USAGE_PREFIX = 'B#';
export const USER_LIMITS_PREFIX = 'L#';
export const USER_LIMITS_SK = 'LIMITS';
export const LIMIT_WINDOW_PREFIX = 'RL#';
export const LIMIT_WINDOW_SK_PREFIX = 'W#';
/** Lifetime of a month's spending item, counted from the month's first day. */
export const BUDGET_USAGE_TTL_DAYS = 400;
/** How long a window item outlives its window. */
export const LIMIT_WINDOW_TTL_SLACK_DAYS = 1;

/** The index and the number attribute behind each `/metrics/users?sort=`. */
export const USER_SORT_INDEXES: Readonly<Record<UserSort, { readonly indexName: string; readonly sortKey: string }>> = {
  cost: { indexName: 'users-by-cost', sortKey: 'cost_nano_usd' },
  requests: { indexName: 'users-by-requests', sortKey: 'requests' },
  tokens: { indexName: 'users-by-tokens', sortKey: 'total_tokens' },
  last_active: { indexName: 'users-by-last-active', sortKey: 'last_active_ms' },
};

const SORTS = Object.keys(USER_SORT_INDEXES) as UserSort[];

/**
 * Key schema, attributes and indexes of the table; `TableName` is added by whoever creates it.
 * @example await client.send(new CreateTableCommand({ TableName: 'usage', ...counterTableDefinition }))
 */
export const counterTableDefinition = {
  BillingMode: 'PAY_PER_REQUEST',
  KeySchema: [
    { AttributeName: PARTITION_KEY, KeyType: 'HASH' },
    { AttributeName: SORT_KEY, KeyType: 'RANGE' },
  ],
  AttributeDefinitions: [
    { AttributeName: PARTITION_KEY, AttributeType: 'S' },
    { AttributeName: SORT_KEY, AttributeType: 'S' },
    { AttributeName: PERIOD_ATTRIBUTE, AttributeType: 'S' },
    ...SORTS.map((sort) => ({ AttributeName: USER_SORT_INDEXES[sort].sortKey, AttributeType: 'N' as const })),
  ],
  GlobalSecondaryIndexes: SORTS.map((sort) => ({
    IndexName: USER_SORT_INDEXES[sort].indexName,
    KeySchema: [
      { AttributeName: PERIOD_ATTRIBUTE, KeyType: 'HASH' as const },
      { AttributeName: USER_SORT_INDEXES[sort].sortKey, KeyType: 'RANGE' as const },
    ],
    // Pages return whole totals; projecting them avoids a second read per user.
    Projection: { ProjectionType: 'ALL' as const },
  })),
} as const satisfies Omit<CreateTableCommandInput, 'TableName'>;

/** Partition key of a user's items; `null` is the no-user bucket. */
export function userPartitionKey(userId: string | null): string {
  return USER_PREFIX + (userId ?? NO_USER);
}

/** Inverse of {@link userPartitionKey}. */
export function userIdOfPartitionKey(pk: string): string | null {
  const id = pk.slice(USER_PREFIX.length);
  return id === NO_USER ? null : id;
}

/** Sort key of a totals item: `T#ALL`, `T#D#2026-11-22`, `T#M#2026-11`. */
export function totalsSortKey(period: Period, periodKey: string): string {
  if (period === 'all') return TOTALS_ALL_SK;
  return (period === 'day' ? DAY_TOTALS_PREFIX : MONTH_TOTALS_PREFIX) + periodKey;
}

/** The unsharded period name: `D#2026-11-22`, `M#2026-11`, `ALL`. */
export function periodName(period: Period, periodKey: string): string {
  if (period === 'all') return 'ALL';
  return (period === 'day' ? 'D#' : 'M#') + periodKey;
}

/** The ranking partition of one shard: `D#2026-11-22#3`. */
export function periodPartition(period: Period, periodKey: string, shard: number): string {
  return `${periodName(period, periodKey)}#${shard}`;
}

/** The shard of a user: FNV-1a of its partition key, so it is stable across processes and releases. */
export function shardOfUser(userPk: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < userPk.length; i++) {
    hash ^= userPk.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return (hash >>> 0) % PERIOD_SHARDS;
}
