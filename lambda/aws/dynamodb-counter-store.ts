/**
 * Live per-user totals in DynamoDB (the AWS {@link CounterStore}). Item layout, indexes and their limits are
 * described in `table-design.ts`.
 *
 * ## Counting each request once: the product guarantee
 *
 * A request's usage is added to its user's totals at most once, however often `record()` is called with it, and
 * whenever it cannot tell whether an addition landed it says so instead of guessing:
 *
 * 1. Claim: put the marker `R#<request_id>` with `attribute_not_exists(pk)` and a random token of this call.
 *    If it already exists and holds another token, the request is counted (or being counted) elsewhere: skip.
 *    If it holds our own token, an earlier attempt of this very call wrote it: carry on. The token makes the claim
 *    safe to retry even when a put's outcome was unknown.
 * 2. Add: `UpdateItem` with `ADD` on the all-time, day, month and per-model items (`SET if_not_exists` for
 *    `first_active`; `last_active` moves only forwards, see {@link DynamoDbCounterStore}). A transaction would
 *    tie claim and additions together, but at twice the write cost and not in the local engine the tests run on
 *    (dynalite); without one, and since an `ADD` is not idempotent:
 *    - only failures DynamoDB documents as "not applied" are retried, with jittered exponential backoff:
 *      `ThrottlingException`, `ProvisionedThroughputExceededException`, `RequestLimitExceeded`, and failures
 *      before the request left (connection refused, DNS, credentials, connect timeout);
 *    - an ambiguous failure (a timeout or reset after sending, a 5xx) is never retried. `record()` rejects with a
 *      {@link CounterWriteError} naming the request ids, with outcome `uncertain`;
 *    - the SDK client must not retry on its own either: the store refuses a client whose `maxAttempts` is not 1
 *      (use {@link createCounterStoreClient}).
 * 3. Confirm: set `applied = true` on the marker. A marker left at `applied = false` (its TTL is a week) marks a
 *    request whose totals may be incomplete. Totals are derived data: the repair is the reconcile from the event
 *    log, which recomputes a user's totals for a day or month and overwrites them (it never replays deltas, since
 *    an incomplete marker does not tell which additions landed).
 *
 * If nothing was added and the failure was definite (e.g. throttled through every retry), the store deletes its
 * own marker again and reports outcome `not_applied`: calling `record()` again with the event is then safe.
 */
import { randomUUID } from 'node:crypto';
import {
  BatchGetItemCommand,
  DeleteItemCommand,
  DynamoDBClient,
  GetItemCommand,
  PutItemCommand,
  QueryCommand,
  UpdateItemCommand,
  type AttributeValue,
  type DynamoDBClientConfig,
  type QueryCommandInput,
  type QueryCommandOutput,
  type UpdateItemCommandInput,
} from '@aws-sdk/client-dynamodb';
import { BadRequestError } from '../core/errors';
import { describeError, silentLogger, type Logger } from '../core/log';
import type {
  CounterStore,
  ListUsersQuery,
  ModelTotals,
  UsageTotals,
  UserDetail,
  UserPage,
  UserSort,
  UserTotals,
} from '../core/ports';
import { eventDate, isErrorEvent, isGatewayRateLimited, type UsageEvent } from '../core/usage-event';
import {
  DAY_TOTALS_TTL_DAYS,
  MODEL_TOTALS_PREFIX,
  MONTH_TOTALS_TTL_DAYS,
  PARTITION_KEY,
  PERIOD_ATTRIBUTE,
  PERIOD_SHARDS,
  REQUEST_MARKER_PREFIX,
  REQUEST_MARKER_SK,
  REQUEST_MARKER_TTL_DAYS,
  SORT_KEY,
  TTL_ATTRIBUTE,
  USER_PREFIX,
  USER_SORT_INDEXES,
  periodName,
  periodPartition,
  shardOfUser,
  totalsSortKey,
  userIdOfPartitionKey,
  userPartitionKey,
} from './table-design';

// ---------------------------------------------------------------------------------------------------------------
// Failure classification and retries
// ---------------------------------------------------------------------------------------------------------------

/**
 * What a failed DynamoDB call means for the data:
 * - `retryable`: DynamoDB did not apply it and says trying again later may work (throttling, not sent at all);
 * - `rejected`: DynamoDB answered and did not apply it (validation, conditional check, missing table, access);
 * - `ambiguous`: it may or may not have been applied (timeout or reset after sending, 5xx).
 */
export type DynamoDbFailureKind = 'retryable' | 'rejected' | 'ambiguous';

const THROTTLING_ERRORS = new Set([
  'ThrottlingException',
  'ProvisionedThroughputExceededException',
  'RequestLimitExceeded',
]);

/** Node socket errors that happen before a single request byte is written. */
const NOT_SENT_CODES = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EADDRNOTAVAIL',
]);

/** Classifies an error thrown by `DynamoDBClient.send`. */
export function classifyDynamoDbFailure(error: unknown): DynamoDbFailureKind {
  if (!(error instanceof Error)) return 'ambiguous';
  if (THROTTLING_ERRORS.has(error.name)) return 'retryable';
  const status = (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
  if (typeof status === 'number') return status >= 400 && status < 500 ? 'rejected' : 'ambiguous';
  // No HTTP answer: only failures that provably happened before sending are safe to repeat.
  if (error.name === 'CredentialsProviderError') return 'retryable';
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string' && NOT_SENT_CODES.has(code)) return 'retryable';
  // @smithy/node-http-handler's connect timeout: the socket never connected, so nothing was sent.
  if (error.name === 'TimeoutError' && error.message.includes('did not establish a connection')) return 'retryable';
  return 'ambiguous';
}

export interface RetryPolicy {
  /** Attempts per call, the first included. @default 6 */
  readonly maxAttempts?: number;
  /** Upper bound of the first backoff; doubles per attempt (full jitter). @default 25 */
  readonly baseDelayMs?: number;
  /** @default 1000 */
  readonly maxDelayMs?: number;
  /** @default setTimeout */
  readonly sleep?: (ms: number) => Promise<void>;
}

const defaultSleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Full-jitter exponential backoff before attempt `attempt + 1`. */
function backoffMs(policy: RetryPolicy | undefined, attempt: number): number {
  const base = policy?.baseDelayMs ?? 25;
  const cap = policy?.maxDelayMs ?? 1000;
  return Math.random() * Math.min(cap, base * 2 ** (attempt - 1));
}

/**
 * Sends a command, retrying only what `idempotent` allows: `retryable` failures always, `ambiguous` ones only
 * when repeating the call cannot change the outcome (reads, token-guarded writes). Throws the last error.
 * `call` sends a fresh command on every attempt.
 * @example await sendWithRetry(() => client.send(new GetItemCommand(input)), { idempotent: true })
 */
export async function sendWithRetry<T>(
  call: () => Promise<T>,
  options: { readonly idempotent: boolean; readonly policy?: RetryPolicy },
): Promise<T> {
  const maxAttempts = options.policy?.maxAttempts ?? 6;
  const sleep = options.policy?.sleep ?? defaultSleep;
  for (let attempt = 1; ; attempt++) {
    try {
      return await call();
    } catch (error) {
      const kind = classifyDynamoDbFailure(error);
      const repeatable = kind === 'retryable' || (kind === 'ambiguous' && options.idempotent);
      if (!repeatable || attempt >= maxAttempts) throw error;
      await sleep(backoffMs(options.policy, attempt));
    }
  }
}

/**
 * A DynamoDB client suited to the counter store: the SDK's own retries are off (the store retries only what is
 * safe), and timeouts are short so a stuck call fails instead of holding the Lambda.
 * @example const store = new DynamoDbCounterStore({ client: createCounterStoreClient(), tableName })
 */
export function createCounterStoreClient(config: DynamoDBClientConfig = {}): DynamoDBClient {
  return new DynamoDBClient({
    requestHandler: { connectionTimeout: 1_000, requestTimeout: 3_000, throwOnRequestTimeout: true },
    ...config,
    maxAttempts: 1,
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------------------------

/**
 * - `not_applied`: nothing of the event was added and its marker is gone; recording it again is safe.
 * - `uncertain`: some or all of the additions may be missing (or may have landed); recording it again would be
 *   skipped. The reconcile from the event log repairs the totals.
 */
export type CounterWriteOutcome = 'not_applied' | 'uncertain';

export interface CounterWriteFailure {
  readonly requestId: string;
  readonly outcome: CounterWriteOutcome;
  readonly cause: unknown;
}

/** `record()` could not count some events exactly; `failures` says which and how. */
export class CounterWriteError extends Error {
  readonly failures: readonly CounterWriteFailure[];

  constructor(failures: readonly CounterWriteFailure[]) {
    const list = failures.map((f) => `${f.requestId} (${f.outcome})`).join(', ');
    super(`Counter update failed for request ${list}.`, { cause: failures[0]?.cause });
    this.name = 'CounterWriteError';
    this.failures = failures;
  }

  get requestIds(): readonly string[] {
    return this.failures.map((f) => f.requestId);
  }
}

/** The store was given a client that could replay non-idempotent writes. */
export class CounterStoreConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CounterStoreConfigError';
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------------------------------

export interface DynamoDbCounterStoreOptions {
  /** A client with `maxAttempts: 1`, e.g. from {@link createCounterStoreClient}. */
  readonly client: DynamoDBClient;
  readonly tableName: string;
  /** @default silentLogger */
  readonly logger?: Logger;
  /** Events of one `record()` call written at the same time. @default 8 */
  readonly concurrency?: number;
  readonly retry?: RetryPolicy;
  /** Clock for marker TTLs. @default Date.now */
  readonly now?: () => number;
}

const DAY_SECONDS = 86_400;
const MAX_CURSOR_LENGTH = 32_768;
/** DynamoDB's limit for a partition key value (in bytes; characters are a cheap first bound). */
const MAX_KEY_LENGTH = 2048;

/** Totals attribute names; the same in every period. */
const TOTALS_NUMBERS = [
  'requests',
  'errors',
  'prompt_tokens',
  'completion_tokens',
  'cached_prompt_tokens',
  'reasoning_tokens',
  'total_tokens',
  'cost_nano_usd',
  'unpriced_requests',
  'rate_limited',
] as const satisfies readonly (keyof UsageTotals)[];

const MODEL_NUMBERS = ['requests', 'total_tokens', 'cost_nano_usd', 'unpriced_requests'] as const satisfies readonly (
  keyof ModelTotals
)[];

type Increments = Record<(typeof TOTALS_NUMBERS)[number], number>;

interface TotalsTarget {
  readonly sk: string;
  readonly period: string;
  readonly expiresAt: number | null;
}

type Item = Record<string, AttributeValue>;

/**
 * Per-user totals in one DynamoDB table.
 *
 * `first_active`/`last_active` are the earliest and latest request time, not the first and last recorded: events
 * finish out of order (a long stream started earlier ends later), so an update moves `last_active` only forwards
 * (condition `last_active_ms <= :ts`); when that condition fails it retries the additions with a condition that
 * moves `first_active` backwards, and finally with neither. A failed condition is a definite "not applied", so
 * this costs at most two extra writes for an out-of-order event and never risks counting twice.
 *
 * @example
 * const store = new DynamoDbCounterStore({ client: createCounterStoreClient(), tableName: 'usage' });
 * await store.record([event]);
 */
export class DynamoDbCounterStore implements CounterStore {
  private readonly client: DynamoDBClient;
  private readonly tableName: string;
  private readonly logger: Logger;
  private readonly concurrency: number;
  private readonly retry: RetryPolicy | undefined;
  private readonly now: () => number;
  private clientChecked: Promise<void> | undefined;

  constructor(options: DynamoDbCounterStoreOptions) {
    this.client = options.client;
    this.tableName = options.tableName;
    this.logger = options.logger ?? silentLogger;
    this.concurrency = Math.max(1, options.concurrency ?? 8);
    this.retry = options.retry;
    this.now = options.now ?? Date.now;
  }

  async record(events: readonly UsageEvent[]): Promise<void> {
    if (events.length === 0) return;
    await (this.clientChecked ??= this.checkClient());
    const failures: CounterWriteFailure[] = [];
    await forEachLimited(events, this.concurrency, async (event) => {
      const failure = await this.recordOne(event);
      if (failure) failures.push(failure);
    });
    if (failures.length > 0) throw new CounterWriteError(failures);
  }

  /**
   * One Query per shard of the period's ranking partition, merged. The cursor holds, per shard, the last user
   * taken from it (or that it is exhausted), so the next page resumes every shard exactly where it stopped.
   */
  async listUsers(query: ListUsersQuery): Promise<UserPage> {
    if (!Number.isSafeInteger(query.limit) || query.limit < 1) {
      throw new BadRequestError('invalid_limit', 'limit must be a positive integer.', { param: 'limit' });
    }
    const periodKey = query.period === 'all' ? '' : query.periodKey;
    const start = query.cursor === undefined ? initialPositions() : this.decodeCursor(query, periodKey);
    const { indexName, sortKey } = USER_SORT_INDEXES[query.sort];
    const sk = totalsSortKey(query.period, periodKey);
    const descending = query.order === 'desc';

    const shards = start.map((position, shard) => {
      const partition = periodPartition(query.period, periodKey, shard);
      return new ShardReader(position, (after, limit) =>
        this.query({
          IndexName: indexName,
          KeyConditionExpression: '#p = :p',
          ExpressionAttributeNames: { '#p': PERIOD_ATTRIBUTE },
          ExpressionAttributeValues: { ':p': { S: partition } },
          ScanIndexForward: !descending,
          Limit: limit,
          ...(after && {
            ExclusiveStartKey: {
              [PERIOD_ATTRIBUTE]: { S: partition },
              [sortKey]: { N: after[0] },
              [PARTITION_KEY]: { S: after[1] },
              [SORT_KEY]: { S: sk },
            },
          }),
        }),
      );
    });

    // k-way merge: each shard comes in index order, so repeatedly taking the best head yields the global order.
    // One more than a page per shard tells, without another round trip, whether a shard has more.
    const fetchLimit = query.limit + 1;
    const users: UserTotals[] = [];
    const sortValue = (item: Item) => Number(item[sortKey]?.N ?? '0');
    while (users.length < query.limit) {
      await Promise.all(shards.map((s) => s.fill(fetchLimit)));
      let best: ShardReader | undefined;
      for (const reader of shards) {
        const head = reader.head();
        if (!head) continue;
        const bestHead = best?.head();
        // On a tie the lower shard goes first; any fixed rule keeps the paging exact.
        if (!bestHead || (descending ? sortValue(head) > sortValue(bestHead) : sortValue(head) < sortValue(bestHead))) {
          best = reader;
        }
      }
      if (!best) break;
      const item = best.take(sortKey);
      users.push({ user_id: userIdOfPartitionKey(item[PARTITION_KEY]!.S!), ...totalsOf(item) });
    }
    await Promise.all(shards.map((s) => s.fill(fetchLimit)));
    if (!shards.some((s) => s.hasMore())) return { users, nextCursor: null };
    const state: CursorState = {
      v: 1,
      p: periodName(query.period, periodKey),
      s: query.sort,
      o: query.order,
      k: shards.map((s) => s.position()),
    };
    return { users, nextCursor: Buffer.from(JSON.stringify(state), 'utf8').toString('base64url') };
  }

  /**
   * Three point reads (all-time, day, month) in one BatchGetItem plus a Query of the user's `M#` items. A Query
   * of the whole user partition would be one call, but it would also read every day and month item the user
   * ever had (hundreds for an active user) to return three of them.
   */
  async getUser(userId: string | null, day: string, month: string): Promise<UserDetail | null> {
    const pk = userPartitionKey(userId);
    const allSk = totalsSortKey('all', '');
    const daySk = totalsSortKey('day', day);
    const monthSk = totalsSortKey('month', month);
    const [totals, byModel] = await Promise.all([
      this.getTotalsItems(pk, [allSk, daySk, monthSk]),
      this.queryModels(pk),
    ]);
    const all = totals.get(allSk);
    if (!all) return null;
    const dayItem = totals.get(daySk);
    const monthItem = totals.get(monthSk);
    return {
      user_id: userId,
      day: dayItem ? totalsOf(dayItem) : null,
      month: monthItem ? totalsOf(monthItem) : null,
      all: totalsOf(all),
      byModel,
    };
  }

  // --- writing ---------------------------------------------------------------------------------------------------

  private async checkClient(): Promise<void> {
    const maxAttempts = await this.client.config.maxAttempts();
    if (maxAttempts !== 1) {
      this.clientChecked = undefined;
      throw new CounterStoreConfigError(
        `The counter store needs a DynamoDB client with maxAttempts: 1 (got ${maxAttempts}); the SDK's own ` +
          'retries could apply an ADD twice. Use createCounterStoreClient().',
      );
    }
  }

  private async recordOne(event: UsageEvent): Promise<CounterWriteFailure | null> {
    const requestId = event.request_id;
    const token = randomUUID();
    const userPk = userPartitionKey(event.user_id);
    const day = eventDate(event);
    const month = day.slice(0, 7);

    try {
      if (!(await this.claim(event, token, userPk))) {
        this.logger.debug('counter update skipped: request already counted', { request_id: requestId });
        return null;
      }
    } catch (error) {
      // The claim was retried through ambiguity and still failed: our marker may or may not exist. Removing it
      // (if it is ours) makes the outcome definite.
      return this.giveUp(requestId, token, error, 'claim');
    }

    const writes = [
      this.addTotals(userPk, event, { sk: totalsSortKey('all', ''), period: 'ALL', expiresAt: null }),
      this.addTotals(userPk, event, {
        sk: totalsSortKey('day', day),
        period: periodName('day', day),
        expiresAt: expiry(day, DAY_TOTALS_TTL_DAYS),
      }),
      this.addTotals(userPk, event, {
        sk: totalsSortKey('month', month),
        period: periodName('month', month),
        expiresAt: expiry(`${month}-01`, MONTH_TOTALS_TTL_DAYS),
      }),
    ];
    if (event.model !== null) writes.push(this.addModel(userPk, event.model, event));
    const results = await Promise.allSettled(writes);
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed.length > 0) {
      const cause: unknown = failed[0]!.reason;
      const noneLanded =
        failed.length === results.length && failed.every((r) => classifyDynamoDbFailure(r.reason) !== 'ambiguous');
      if (noneLanded) return this.giveUp(requestId, token, cause, 'add');
      this.logger.error('counter update incomplete; the reconcile from the event log repairs it', {
        request_id: requestId,
        error: describeError(cause),
      });
      return { requestId, outcome: 'uncertain', cause };
    }

    try {
      await this.update(
        {
          Key: markerKey(requestId),
          UpdateExpression: 'SET #applied = :yes',
          ExpressionAttributeNames: { '#applied': 'applied' },
          ExpressionAttributeValues: { ':yes': { BOOL: true } },
        },
        true,
      );
    } catch (error) {
      // The totals are complete; only the flag is stale, and the reconcile finds nothing to repair.
      this.logger.warn('counter marker not confirmed', { request_id: requestId, error: describeError(error) });
    }
    return null;
  }

  /** Writes the marker; true when this call owns it. */
  private async claim(event: UsageEvent, token: string, userPk: string): Promise<boolean> {
    const nowMs = this.now();
    try {
      await this.send(
        () =>
          this.client.send(
            new PutItemCommand({
              TableName: this.tableName,
              Item: {
                ...markerKey(event.request_id),
                token: { S: token },
                applied: { BOOL: false },
                user_pk: { S: userPk },
                ts: { S: event.ts },
                created_at: { S: new Date(nowMs).toISOString() },
                [TTL_ATTRIBUTE]: { N: String(Math.floor(nowMs / 1000) + REQUEST_MARKER_TTL_DAYS * DAY_SECONDS) },
              },
              ConditionExpression: 'attribute_not_exists(#pk)',
              ExpressionAttributeNames: { '#pk': PARTITION_KEY },
            }),
          ),
        true,
      );
      return true;
    } catch (error) {
      if (!isConditionFailure(error)) throw error;
    }
    const { Item } = await this.send(
      () =>
        this.client.send(
          new GetItemCommand({
            TableName: this.tableName,
            Key: markerKey(event.request_id),
            ConsistentRead: true,
            ProjectionExpression: '#token',
            ExpressionAttributeNames: { '#token': 'token' },
          }),
        ),
      true,
    );
    return Item?.['token']?.S === token;
  }

  /** Nothing was added: remove our marker so the event can be recorded again, else report it as uncertain. */
  private async giveUp(
    requestId: string,
    token: string,
    cause: unknown,
    stage: 'claim' | 'add',
  ): Promise<CounterWriteFailure> {
    try {
      await this.send(
        () =>
          this.client.send(
            new DeleteItemCommand({
              TableName: this.tableName,
              Key: markerKey(requestId),
              ConditionExpression: '#token = :token',
              ExpressionAttributeNames: { '#token': 'token' },
              ExpressionAttributeValues: { ':token': { S: token } },
            }),
          ),
        true,
      );
    } catch (error) {
      // A failed condition means the marker is absent or not ours: either way ours is not in the way.
      if (!isConditionFailure(error)) {
        this.logger.error('counter update failed and its marker could not be removed', {
          request_id: requestId,
          stage,
          error: describeError(cause),
        });
        return { requestId, outcome: 'uncertain', cause };
      }
    }
    this.logger.warn('counter update not applied', { request_id: requestId, stage, error: describeError(cause) });
    return { requestId, outcome: 'not_applied', cause };
  }

  private async addTotals(userPk: string, event: UsageEvent, target: TotalsTarget): Promise<void> {
    const increments = incrementsOf(event);
    const tsMs = Date.parse(event.ts);
    const names: Record<string, string> = {
      '#period': PERIOD_ATTRIBUTE,
      '#first': 'first_active',
      '#first_ms': 'first_active_ms',
      '#last': 'last_active',
      '#last_ms': 'last_active_ms',
    };
    const values: Item = {
      ':period': { S: `${target.period}#${shardOfUser(userPk)}` },
      ':ts': { S: event.ts },
      ':ms': { N: String(tsMs) },
    };
    const adds = TOTALS_NUMBERS.map((attr, i) => {
      names[`#n${i}`] = attr;
      values[`:n${i}`] = { N: String(increments[attr]) };
      return `#n${i} :n${i}`;
    });
    const sets = ['#period = :period'];
    if (target.expiresAt !== null) {
      names['#exp'] = TTL_ATTRIBUTE;
      values[':exp'] = { N: String(target.expiresAt) };
      sets.push('#exp = :exp');
    }
    const add = (moreSets: readonly string[], condition?: string) =>
      this.update({
        Key: { [PARTITION_KEY]: { S: userPk }, [SORT_KEY]: { S: target.sk } },
        UpdateExpression: `ADD ${adds.join(', ')} SET ${[...sets, ...moreSets].join(', ')}`,
        ExpressionAttributeNames: names,
        ExpressionAttributeValues: values,
        // Where supported, the failed condition hands back the item, which spares a blind second attempt.
        ...(condition && { ConditionExpression: condition, ReturnValuesOnConditionCheckFailure: 'ALL_OLD' }),
      });
    const keepFirst = ['#first = if_not_exists(#first, :ts)', '#first_ms = if_not_exists(#first_ms, :ms)'];
    const keepLast = ['#last = if_not_exists(#last, :ts)', '#last_ms = if_not_exists(#last_ms, :ms)'];

    let current: Item | undefined;
    try {
      // The usual case: the latest request of the period so far.
      await add([...keepFirst, '#last = :ts', '#last_ms = :ms'], 'attribute_not_exists(#last_ms) OR #last_ms <= :ms');
      return;
    } catch (error) {
      if (!isConditionFailure(error)) throw error;
      current = (error as { Item?: Item }).Item;
    }
    const firstMs = current?.['first_active_ms']?.N;
    if (firstMs === undefined || Number(firstMs) > tsMs) {
      try {
        await add(['#first = :ts', '#first_ms = :ms', ...keepLast], '#first_ms > :ms');
        return;
      } catch (error) {
        if (!isConditionFailure(error)) throw error;
      }
    }
    await add([...keepFirst, ...keepLast]);
  }

  private async addModel(userPk: string, model: string, event: UsageEvent): Promise<void> {
    const increments = incrementsOf(event);
    const names: Record<string, string> = { '#model': 'model' };
    const values: Item = { ':model': { S: model } };
    const adds = MODEL_NUMBERS.map((attr, i) => {
      names[`#n${i}`] = attr;
      values[`:n${i}`] = { N: String(increments[attr]) };
      return `#n${i} :n${i}`;
    });
    await this.update({
      Key: { [PARTITION_KEY]: { S: userPk }, [SORT_KEY]: { S: MODEL_TOTALS_PREFIX + model } },
      UpdateExpression: `ADD ${adds.join(', ')} SET #model = :model`,
      ExpressionAttributeNames: names,
      ExpressionAttributeValues: values,
    });
  }

  // --- reading ---------------------------------------------------------------------------------------------------

  private async getTotalsItems(pk: string, sks: readonly string[]): Promise<Map<string, Item>> {
    const found = new Map<string, Item>();
    let keys: Item[] = sks.map((sk) => ({ [PARTITION_KEY]: { S: pk }, [SORT_KEY]: { S: sk } }));
    for (let attempt = 1; keys.length > 0; attempt++) {
      const batch = keys;
      const out = await this.send(
        () => this.client.send(new BatchGetItemCommand({ RequestItems: { [this.tableName]: { Keys: batch } } })),
        true,
      );
      for (const item of out.Responses?.[this.tableName] ?? []) found.set(item[SORT_KEY]!.S!, item);
      keys = out.UnprocessedKeys?.[this.tableName]?.Keys ?? [];
      if (keys.length > 0) {
        // Unprocessed keys are how a BatchGetItem reports throttling of part of the batch.
        if (attempt >= (this.retry?.maxAttempts ?? 6)) {
          throw new Error('DynamoDB left keys of a BatchGetItem unprocessed through every attempt.');
        }
        await (this.retry?.sleep ?? defaultSleep)(backoffMs(this.retry, attempt));
      }
    }
    return found;
  }

  private async queryModels(pk: string): Promise<ModelTotals[]> {
    const models: ModelTotals[] = [];
    let start: Item | undefined;
    do {
      const out = await this.query({
        KeyConditionExpression: '#pk = :pk AND begins_with(#sk, :m)',
        ExpressionAttributeNames: { '#pk': PARTITION_KEY, '#sk': SORT_KEY },
        ExpressionAttributeValues: { ':pk': { S: pk }, ':m': { S: MODEL_TOTALS_PREFIX } },
        ...(start && { ExclusiveStartKey: start }),
      });
      for (const item of out.Items ?? []) {
        models.push({
          model: item['model']?.S ?? item[SORT_KEY]!.S!.slice(MODEL_TOTALS_PREFIX.length),
          requests: num(item, 'requests'),
          total_tokens: num(item, 'total_tokens'),
          cost_nano_usd: num(item, 'cost_nano_usd'),
          unpriced_requests: num(item, 'unpriced_requests'),
        });
      }
      start = out.LastEvaluatedKey;
    } while (start);
    return models.sort(
      (a, b) => b.cost_nano_usd - a.cost_nano_usd || b.requests - a.requests || (a.model < b.model ? -1 : 1),
    );
  }

  private decodeCursor(query: ListUsersQuery, periodKey: string): ShardPosition[] {
    const invalid = () =>
      new BadRequestError('invalid_cursor', 'cursor is not a cursor of this listing.', { param: 'cursor' });
    const raw = query.cursor ?? '';
    if (raw.length === 0 || raw.length > MAX_CURSOR_LENGTH || !/^[A-Za-z0-9_-]+$/.test(raw)) throw invalid();
    let state: unknown;
    try {
      state = JSON.parse(Buffer.from(raw, 'base64url').toString('utf8'));
    } catch {
      throw invalid();
    }
    if (!isCursorState(state)) throw invalid();
    if (state.p !== periodName(query.period, periodKey) || state.s !== query.sort || state.o !== query.order) {
      throw invalid();
    }
    return state.k;
  }

  // --- calls -----------------------------------------------------------------------------------------------------

  /** An UpdateItem; not idempotent unless said so, so only definite failures are retried. */
  private update(input: Omit<UpdateItemCommandInput, 'TableName'>, idempotent = false) {
    return this.send(
      () => this.client.send(new UpdateItemCommand({ TableName: this.tableName, ...input })),
      idempotent,
    );
  }

  private query(input: Omit<QueryCommandInput, 'TableName'>): Promise<QueryCommandOutput> {
    return this.send(() => this.client.send(new QueryCommand({ TableName: this.tableName, ...input })), true);
  }

  private send<T>(call: () => Promise<T>, idempotent: boolean): Promise<T> {
    return sendWithRetry(call, { idempotent, ...(this.retry && { policy: this.retry }) });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Paging over the shards
// ---------------------------------------------------------------------------------------------------------------

/** `null`: not started; `0`: exhausted; `[sort value, user pk]`: the last user taken from the shard. */
type ShardPosition = null | 0 | readonly [string, string];

interface CursorState {
  readonly v: 1;
  readonly p: string;
  readonly s: UserSort;
  readonly o: 'asc' | 'desc';
  readonly k: ShardPosition[];
}

function initialPositions(): ShardPosition[] {
  return Array.from({ length: PERIOD_SHARDS }, () => null);
}

function isCursorState(value: unknown): value is CursorState {
  if (typeof value !== 'object' || value === null) return false;
  const c = value as Record<string, unknown>;
  if (c['v'] !== 1 || typeof c['p'] !== 'string') return false;
  if (typeof c['s'] !== 'string' || !Object.hasOwn(USER_SORT_INDEXES, c['s'])) return false;
  if (c['o'] !== 'asc' && c['o'] !== 'desc') return false;
  const k = c['k'];
  if (!Array.isArray(k) || k.length !== PERIOD_SHARDS) return false;
  return k.every(
    (p) =>
      p === null ||
      p === 0 ||
      (Array.isArray(p) &&
        p.length === 2 &&
        typeof p[0] === 'string' &&
        /^-?\d{1,38}$/.test(p[0]) &&
        typeof p[1] === 'string' &&
        p[1].startsWith(USER_PREFIX) &&
        p[1].length > USER_PREFIX.length &&
        p[1].length <= MAX_KEY_LENGTH),
  );
}

/**
 * Reads one shard of a ranking index lazily, remembering the last item taken for the cursor. A refill starts
 * after the last item taken: a Query's LastEvaluatedKey is its last returned item, and the buffer is always
 * drained before a refill, so the two are the same position.
 */
class ShardReader {
  private buffer: Item[] = [];
  private done: boolean;
  private taken: ShardPosition;

  constructor(
    start: ShardPosition,
    private readonly query: (after: readonly [string, string] | null, limit: number) => Promise<QueryCommandOutput>,
  ) {
    this.done = start === 0;
    this.taken = start;
  }

  /** Makes sure there is a head item unless the shard is exhausted. */
  async fill(limit: number): Promise<void> {
    while (this.buffer.length === 0 && !this.done) {
      const out = await this.query(this.taken === 0 ? null : this.taken, limit);
      this.buffer = out.Items ?? [];
      if (!out.LastEvaluatedKey) this.done = true;
      // An empty page that still points further on: resume from where DynamoDB stopped reading.
      else if (this.buffer.length === 0) this.taken = positionOfKey(out.LastEvaluatedKey);
    }
  }

  head(): Item | undefined {
    return this.buffer[0];
  }

  take(sortKey: string): Item {
    const item = this.buffer.shift()!;
    this.taken = [item[sortKey]?.N ?? '0', item[PARTITION_KEY]!.S!];
    return item;
  }

  hasMore(): boolean {
    return this.buffer.length > 0 || !this.done;
  }

  /** Where the next page resumes this shard. */
  position(): ShardPosition {
    return this.hasMore() ? this.taken : 0;
  }
}

function positionOfKey(key: Item): readonly [string, string] {
  const sortAttr = Object.keys(key).find((k) => k !== PERIOD_ATTRIBUTE && k !== PARTITION_KEY && k !== SORT_KEY);
  return [(sortAttr && key[sortAttr]?.N) || '0', key[PARTITION_KEY]?.S ?? USER_PREFIX];
}

// ---------------------------------------------------------------------------------------------------------------
// Small pieces
// ---------------------------------------------------------------------------------------------------------------

function incrementsOf(event: UsageEvent): Increments {
  return {
    requests: 1,
    errors: isErrorEvent(event) ? 1 : 0,
    prompt_tokens: event.prompt_tokens,
    completion_tokens: event.completion_tokens,
    cached_prompt_tokens: event.cached_prompt_tokens,
    reasoning_tokens: event.reasoning_tokens,
    total_tokens: event.total_tokens,
    cost_nano_usd: event.cost_nano_usd ?? 0,
    unpriced_requests: event.cost_source === 'unknown_model' ? 1 : 0,
    rate_limited: isGatewayRateLimited(event) ? 1 : 0,
  };
}

function totalsOf(item: Item): UsageTotals {
  const numbers = Object.fromEntries(TOTALS_NUMBERS.map((attr) => [attr, num(item, attr)])) as Increments;
  return {
    ...numbers,
    first_active: item['first_active']?.S ?? '',
    last_active: item['last_active']?.S ?? '',
  };
}

function num(item: Item, attr: string): number {
  const n = item[attr]?.N;
  return n === undefined ? 0 : Number(n);
}

function markerKey(requestId: string): Item {
  return { [PARTITION_KEY]: { S: REQUEST_MARKER_PREFIX + requestId }, [SORT_KEY]: { S: REQUEST_MARKER_SK } };
}

/** TTL of a period item: counted from the period's first day, so every write of the item sets the same value. */
function expiry(firstDay: string, days: number): number {
  return Math.floor(Date.parse(firstDay + 'T00:00:00Z') / 1000) + days * DAY_SECONDS;
}

function isConditionFailure(error: unknown): boolean {
  return error instanceof Error && error.name === 'ConditionalCheckFailedException';
}

async function forEachLimited<T>(items: readonly T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await work(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}
