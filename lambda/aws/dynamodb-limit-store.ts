/**
 * Rate-limit windows, monthly budgets and per-user limits in the counters table (the AWS {@link LimitStore}); the
 * items are described in `table-design.ts`.
 *
 * A charge is one conditional `UpdateItem` per counter, all sent at once, so a check costs one round trip:
 * `ADD used :amount` under `attribute_not_exists(used) OR used <= :limit - :amount`. DynamoDB applies each
 * conditionally and atomically, so however many requests race, a counter never passes its limit. Charges of one
 * request are not one transaction (the local engine the tests run on has none, and a transaction doubles the write
 * cost): when one is refused, those that were added are taken back with `ADD used -:amount`. Until then a
 * concurrent request may see the counter higher than it ends up, so a race near a limit can refuse a request that
 * would have fitted; it can never admit one that does not.
 *
 * `ADD` is not idempotent: like the counter store, this store needs a client without SDK retries and repeats only
 * failures DynamoDB reports as not applied. A charge whose outcome is unknown (a timeout after sending) is reported
 * as a failure; what it may have added stays counted, which errs towards refusing.
 */
import {
  DeleteItemCommand,
  GetItemCommand,
  PutItemCommand,
  UpdateItemCommand,
  type AttributeValue,
  type DynamoDBClient,
  type UpdateItemCommandInput,
} from '@aws-sdk/client-dynamodb';
import { describeError, silentLogger, type Logger } from '../core/log';
import { userLimitsFromJson, userLimitsToJson } from '../core/limits';
import type { LimitCharge, LimitChargeResult, LimitCounter, LimitStore, UserLimits } from '../core/ports';
import { CounterStoreConfigError, sendWithRetry, type RetryPolicy } from './dynamodb-counter-store';
import {
  BUDGET_USAGE_PREFIX,
  BUDGET_USAGE_TTL_DAYS,
  LIMIT_WINDOW_PREFIX,
  LIMIT_WINDOW_SK_PREFIX,
  LIMIT_WINDOW_TTL_SLACK_DAYS,
  NO_USER,
  PARTITION_KEY,
  SORT_KEY,
  TTL_ATTRIBUTE,
  USER_LIMITS_PREFIX,
  USER_LIMITS_SK,
  userPartitionKey,
} from './table-design';

export interface DynamoDbLimitStoreOptions {
  /** A client with `maxAttempts: 1`, e.g. from `createCounterStoreClient()`. */
  readonly client: DynamoDBClient;
  readonly tableName: string;
  /** @default silentLogger */
  readonly logger?: Logger;
  /**
   * Retries of failures DynamoDB reports as not applied. A check holds up the request, so it gives up sooner than
   * the counter store, which writes after the answer.
   * @default { maxAttempts: 3, baseDelayMs: 10, maxDelayMs: 100 }
   */
  readonly retry?: RetryPolicy;
}

type Item = Record<string, AttributeValue>;

const DAY_SECONDS = 86_400;
const USED = 'used';

/** Key of a counter's item. */
export function limitCounterKey(counter: LimitCounter): Item {
  if (counter.kind === 'budget') {
    return { [PARTITION_KEY]: { S: userPartitionKey(counter.userId) }, [SORT_KEY]: { S: BUDGET_USAGE_PREFIX + counter.month } };
  }
  return {
    [PARTITION_KEY]: { S: LIMIT_WINDOW_PREFIX + counter.segment },
    [SORT_KEY]: { S: `${LIMIT_WINDOW_SK_PREFIX}${counter.unit}#${counter.windowSeconds}#${counter.windowStart}` },
  };
}

/** Epoch seconds after which TTL removes a counter's item: the same value on every write of the item. */
function expiresAt(counter: LimitCounter): number {
  if (counter.kind === 'budget') {
    return Math.floor(Date.parse(`${counter.month}-01T00:00:00Z`) / 1000) + BUDGET_USAGE_TTL_DAYS * DAY_SECONDS;
  }
  return Math.floor((counter.windowStart + counter.windowSeconds * 1000) / 1000) + LIMIT_WINDOW_TTL_SLACK_DAYS * DAY_SECONDS;
}

function userLimitsKey(userId: string | null): Item {
  return { [PARTITION_KEY]: { S: USER_LIMITS_PREFIX + (userId ?? NO_USER) }, [SORT_KEY]: { S: USER_LIMITS_SK } };
}

function usedOf(item: Item | undefined): number {
  const n = item?.[USED]?.N;
  return n === undefined ? 0 : Number(n);
}

function isConditionFailure(error: unknown): error is Error & { Item?: Item } {
  return error instanceof Error && error.name === 'ConditionalCheckFailedException';
}

/**
 * @example
 * const limits = new DynamoDbLimitStore({ client: createCounterStoreClient(), tableName });
 * const { admitted } = await limits.charge([{ counter, amount: 1, limit: 100 }]);
 */
export class DynamoDbLimitStore implements LimitStore {
  private readonly client: DynamoDBClient;
  private readonly tableName: string;
  private readonly logger: Logger;
  private readonly retry: RetryPolicy;
  private clientChecked: Promise<void> | undefined;

  constructor(options: DynamoDbLimitStoreOptions) {
    this.client = options.client;
    this.tableName = options.tableName;
    this.logger = options.logger ?? silentLogger;
    this.retry = options.retry ?? { maxAttempts: 3, baseDelayMs: 10, maxDelayMs: 100 };
  }

  async charge(charges: readonly LimitCharge[]): Promise<LimitChargeResult> {
    if (charges.length === 0) return { admitted: true, fits: [], used: [] };
    await (this.clientChecked ??= this.checkClient());
    const outcomes = await Promise.allSettled(charges.map((charge) => this.chargeOne(charge)));
    const added = outcomes.flatMap((o, i) => (o.status === 'fulfilled' && o.value.fits ? [i] : []));
    const failed = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
    if (added.length === charges.length) {
      return {
        admitted: true,
        fits: charges.map(() => true),
        used: outcomes.map((o) => (o as PromiseFulfilledResult<{ used: number }>).value.used),
      };
    }
    await this.takeBack(added.map((i) => charges[i]!));
    if (failed !== undefined) throw failed.reason;
    const results = outcomes.map((o) => (o as PromiseFulfilledResult<{ fits: boolean; used: number }>).value);
    return {
      admitted: false,
      fits: results.map((r) => r.fits),
      // What the store found: a charge that was added and taken back reports its value before the addition.
      used: results.map((r, i) => (r.fits ? r.used - charges[i]!.amount : r.used)),
    };
  }

  async adjust(adjustments: readonly { readonly counter: LimitCounter; readonly amount: number }[]): Promise<void> {
    await (this.clientChecked ??= this.checkClient());
    const results = await Promise.allSettled(adjustments.map(({ counter, amount }) => this.add(counter, amount)));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
  }

  async read(counters: readonly LimitCounter[]): Promise<number[]> {
    return Promise.all(counters.map(async (counter) => usedOf(await this.getItem(limitCounterKey(counter)))));
  }

  async getLimits(userId: string | null): Promise<UserLimits | null> {
    const item = await this.getItem(userLimitsKey(userId));
    const text = item?.['limits']?.S;
    return text === undefined ? null : userLimitsFromJson(text);
  }

  async putLimits(userId: string | null, limits: UserLimits | null): Promise<void> {
    // Whole-item writes: repeating one after an unknown outcome changes nothing.
    if (limits === null) {
      await this.send(() => this.client.send(new DeleteItemCommand({ TableName: this.tableName, Key: userLimitsKey(userId) })), true);
      return;
    }
    await this.send(
      () =>
        this.client.send(
          new PutItemCommand({
            TableName: this.tableName,
            Item: { ...userLimitsKey(userId), limits: { S: userLimitsToJson(limits) }, updated_at: { S: limits.updatedAt } },
          }),
        ),
      true,
    );
  }

  // --- calls -----------------------------------------------------------------------------------------------------

  private async chargeOne(charge: LimitCharge): Promise<{ fits: boolean; used: number }> {
    const { counter, amount, limit } = charge;
    const input: Omit<UpdateItemCommandInput, 'TableName'> = {
      Key: limitCounterKey(counter),
      UpdateExpression: 'ADD #used :amount SET #exp = :exp',
      ExpressionAttributeNames: { '#used': USED, '#exp': TTL_ATTRIBUTE },
      ExpressionAttributeValues: { ':amount': { N: String(amount) }, ':exp': { N: String(expiresAt(counter)) } },
      ReturnValues: 'UPDATED_NEW',
    };
    if (limit !== null) {
      const max = limit - amount;
      // A missing item counts as 0, which fits only while the amount alone is within the limit.
      input.ConditionExpression = max >= 0 ? 'attribute_not_exists(#used) OR #used <= :max' : '#used <= :max';
      input.ExpressionAttributeValues![':max'] = { N: String(max) };
      // Real DynamoDB hands back the item with the failure, which spares a read.
      input.ReturnValuesOnConditionCheckFailure = 'ALL_OLD';
    }
    try {
      const out = await this.update(input);
      return { fits: true, used: usedOf(out.Attributes) };
    } catch (error) {
      if (!isConditionFailure(error)) throw error;
      const used = error.Item !== undefined ? usedOf(error.Item) : usedOf(await this.getItem(limitCounterKey(counter)));
      return { fits: false, used };
    }
  }

  /** Undoes charges of a refused request; a failure leaves the counter high, which only ever refuses more. */
  private async takeBack(charges: readonly LimitCharge[]): Promise<void> {
    await Promise.all(
      charges.map((charge) =>
        charge.amount === 0
          ? undefined
          : this.add(charge.counter, -charge.amount).catch((error: unknown) =>
              this.logger.error('limit charge not taken back', { error: describeError(error) }),
            ),
      ),
    );
  }

  private async add(counter: LimitCounter, amount: number): Promise<void> {
    await this.update({
      Key: limitCounterKey(counter),
      UpdateExpression: 'ADD #used :amount SET #exp = :exp',
      ExpressionAttributeNames: { '#used': USED, '#exp': TTL_ATTRIBUTE },
      ExpressionAttributeValues: { ':amount': { N: String(amount) }, ':exp': { N: String(expiresAt(counter)) } },
    });
  }

  private async getItem(key: Item): Promise<Item | undefined> {
    const out = await this.send(
      () => this.client.send(new GetItemCommand({ TableName: this.tableName, Key: key, ConsistentRead: true })),
      true,
    );
    return out.Item;
  }

  /** An `ADD`: only failures DynamoDB reports as not applied are repeated. */
  private update(input: Omit<UpdateItemCommandInput, 'TableName'>) {
    return this.send(() => this.client.send(new UpdateItemCommand({ TableName: this.tableName, ...input })), false);
  }

  private send<T>(call: () => Promise<T>, idempotent: boolean): Promise<T> {
    return sendWithRetry(call, { idempotent, policy: this.retry });
  }

  private async checkClient(): Promise<void> {
    const maxAttempts = await this.client.config.maxAttempts();
    if (maxAttempts !== 1) {
      this.clientChecked = undefined;
      throw new CounterStoreConfigError(
        `The limit store needs a DynamoDB client with maxAttempts: 1 (got ${maxAttempts}); the SDK's own retries ` +
          'could apply an ADD twice. Use createCounterStoreClient().',
      );
    }
  }
}
