/**
 * Rebuilds the DynamoDB live totals of a range of days from the event log (`npm run reconcile:aws`).
 *
 * 1. One Athena query ({@link dayTotalsSql}) computes every user's totals per UTC day of the range from the
 *    Parquet log, each request once however often Firehose delivered it.
 * 2. The day items the table holds for the range are listed through the `users-by-requests` ranking index (a Query
 *    per day and shard, never a Scan), so users the log no longer knows for a day are found too.
 * 3. Each day item that differs is overwritten with the log's totals (deleted when the log has none), and the
 *    difference, new minus old, is added to the user's month and all-time items with `ADD`. Month and all-time
 *    items are rollups of day items, so adding the range's difference makes them what recording every logged
 *    request once would have given, without reading days outside the range (all-time outlives the day items' TTL).
 *
 * Limits, stated precisely:
 * - `first_active`/`last_active` of month and all-time items only widen (to the range's earliest and latest
 *   request); a request removed by the reconcile does not move them back.
 * - Per-model items (`M#<model>`) are all-time only and have no per-day items to take a difference from, so they
 *   are left as they are.
 * - The writes are not one transaction. Day items are written last, user by user, so a run that fails midway
 *   leaves the users it did not reach exactly as before for their day items; their month and all-time items may
 *   already hold the difference. The error names the user; the report of a complete run lists every change.
 * - The ranking index is eventually consistent: run the reconcile when no writes for the range are in flight
 *   (for past days, always).
 */
import {
  DeleteItemCommand,
  PutItemCommand,
  QueryCommand,
  UpdateItemCommand,
  type AttributeValue,
  type DynamoDBClient,
} from '@aws-sdk/client-dynamodb';
import { silentLogger, type Logger } from '../core/log';
import type { HistoryRow, HistoryStore } from '../core/ports';
import { addDays } from '../core/history-sql';
import { checkReconcileRange, DAY_TOTALS_NUMBERS, dayTotalsSql, type DayTotalsNumber } from '../core/reconcile-sql';
import { sendWithRetry } from './dynamodb-counter-store';
import {
  DAY_TOTALS_TTL_DAYS,
  MONTH_TOTALS_TTL_DAYS,
  PARTITION_KEY,
  PERIOD_ATTRIBUTE,
  PERIOD_SHARDS,
  SORT_KEY,
  TTL_ATTRIBUTE,
  USER_SORT_INDEXES,
  periodPartition,
  shardOfUser,
  totalsSortKey,
  userIdOfPartitionKey,
  userPartitionKey,
} from './table-design';

type Item = Record<string, AttributeValue>;
type Numbers = Record<DayTotalsNumber, number>;

interface DayTotals {
  readonly numbers: Numbers;
  readonly firstActive: string;
  readonly lastActive: string;
}

export interface ReconcileDynamoDbOptions {
  /** The Athena history store (any {@link HistoryStore} whose relation holds the log). */
  readonly history: HistoryStore;
  readonly client: DynamoDBClient;
  readonly tableName: string;
  /** UTC days, inclusive. */
  readonly from: string;
  readonly to: string;
  readonly log?: Logger;
  /** How long to wait for the Athena query. @default 900000 (15 minutes) */
  readonly queryTimeoutMs?: number;
  /** @default setTimeout-based sleep */
  readonly sleep?: (ms: number) => Promise<void>;
}

/** One user's day whose totals changed. */
export interface ReconciledDay {
  readonly user_id: string | null;
  readonly day: string;
  readonly requests_before: number;
  readonly requests_after: number;
  readonly cost_nano_usd_before: number;
  readonly cost_nano_usd_after: number;
}

export interface DynamoDbReconcileReport {
  readonly from: string;
  readonly to: string;
  /** Distinct users with day totals in the range, before and after. */
  readonly users_before: number;
  readonly users_after: number;
  readonly requests_before: number;
  readonly requests_after: number;
  /** Day items rewritten or deleted. */
  readonly changed: readonly ReconciledDay[];
  /** The Athena query execution id of step 1, for its cost and scan figures. */
  readonly query_id: string | null;
}

const QUERY_POLL_MS = 1_000;

/**
 * @example
 * const report = await reconcileDynamoDbCounters({ history, client: createCounterStoreClient(), tableName, from, to });
 */
export async function reconcileDynamoDbCounters(options: ReconcileDynamoDbOptions): Promise<DynamoDbReconcileReport> {
  const { from, to, client, tableName } = options;
  checkReconcileRange(from, to);
  const log = options.log ?? silentLogger;
  const sleep = options.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));

  const { rows, queryId } = await runDayTotals(options, sleep);
  const wanted = new Map<string, DayTotals>();
  for (const row of rows) wanted.set(dayKey(userPartitionKey(textOf(row.user_id)), String(row.day)), totalsOfRow(row));

  const held = new Map<string, DayTotals>();
  const { indexName } = USER_SORT_INDEXES.requests;
  for (let day = from; day <= to; day = addDays(day, 1)) {
    for (let shard = 0; shard < PERIOD_SHARDS; shard++) {
      let start: Item | undefined;
      do {
        const page = await sendWithRetry(
          () =>
            client.send(
              new QueryCommand({
                TableName: tableName,
                IndexName: indexName,
                KeyConditionExpression: '#p = :p',
                ExpressionAttributeNames: { '#p': PERIOD_ATTRIBUTE },
                ExpressionAttributeValues: { ':p': { S: periodPartition('day', day, shard) } },
                ExclusiveStartKey: start,
              }),
            ),
          { idempotent: true },
        );
        for (const item of page.Items ?? []) held.set(dayKey(item[PARTITION_KEY]!.S!, day), totalsOfItem(item));
        start = page.LastEvaluatedKey;
      } while (start !== undefined);
    }
  }

  // Group the differing days by user, so each user's rollups are adjusted before its day items are rewritten.
  const byUser = new Map<string, { day: string; before: DayTotals | undefined; after: DayTotals | undefined }[]>();
  for (const key of new Set([...held.keys(), ...wanted.keys()])) {
    const before = held.get(key);
    const after = wanted.get(key);
    if (before && after && sameTotals(before, after)) continue;
    const [userPk, day] = splitDayKey(key);
    const days = byUser.get(userPk) ?? [];
    days.push({ day, before, after });
    byUser.set(userPk, days);
  }

  const changed: ReconciledDay[] = [];
  for (const [userPk, days] of byUser) {
    const monthDeltas = new Map<string, Numbers>();
    const allDelta = zeroNumbers();
    let first: string | null = null;
    let last: string | null = null;
    for (const { day, before, after } of days) {
      const month = day.slice(0, 7);
      const monthDelta = monthDeltas.get(month) ?? zeroNumbers();
      for (const name of DAY_TOTALS_NUMBERS) {
        const delta = (after?.numbers[name] ?? 0) - (before?.numbers[name] ?? 0);
        monthDelta[name] += delta;
        allDelta[name] += delta;
      }
      monthDeltas.set(month, monthDelta);
      if (after) {
        if (first === null || after.firstActive < first) first = after.firstActive;
        if (last === null || after.lastActive > last) last = after.lastActive;
      }
    }
    try {
      for (const [month, delta] of monthDeltas) {
        await adjustRollup(client, tableName, userPk, totalsSortKey('month', month), `M#${month}`, delta, first, last, expiry(`${month}-01`, MONTH_TOTALS_TTL_DAYS));
      }
      await adjustRollup(client, tableName, userPk, totalsSortKey('all', ''), 'ALL', allDelta, first, last, null);
      for (const { day, before, after } of days) {
        await writeDay(client, tableName, userPk, day, after);
        changed.push({
          user_id: userIdOfPartitionKey(userPk),
          day,
          requests_before: before?.numbers.requests ?? 0,
          requests_after: after?.numbers.requests ?? 0,
          cost_nano_usd_before: before?.numbers.cost_nano_usd ?? 0,
          cost_nano_usd_after: after?.numbers.cost_nano_usd ?? 0,
        });
      }
    } catch (error) {
      throw new Error(
        `Reconcile stopped at user ${JSON.stringify(userIdOfPartitionKey(userPk))}: its month and all-time totals may ` +
          `already hold the difference while some of its day totals do not. ${(error as Error).message}`,
        { cause: error },
      );
    }
  }
  const users = (totals: Map<string, DayTotals>) => new Set([...totals.keys()].map((key) => splitDayKey(key)[0])).size;
  const requests = (totals: Map<string, DayTotals>) => [...totals.values()].reduce((sum, t) => sum + t.numbers.requests, 0);
  const report: DynamoDbReconcileReport = {
    from,
    to,
    users_before: users(held),
    users_after: users(wanted),
    requests_before: requests(held),
    requests_after: requests(wanted),
    changed,
    query_id: queryId,
  };
  log.info('counters reconciled from the event log', { from, to, days_changed: changed.length });
  return report;
}

async function runDayTotals(
  options: ReconcileDynamoDbOptions,
  sleep: (ms: number) => Promise<void>,
): Promise<{ rows: readonly HistoryRow[]; queryId: string | null }> {
  const { history } = options;
  const timeoutMs = options.queryTimeoutMs ?? 15 * 60_000;
  const statement = dayTotalsSql({ from: options.from, to: options.to }, history.dialect, history.source);
  let result = await history.execute(statement, Math.min(timeoutMs, 20_000));
  const queryId = result.state === 'running' ? result.queryId : null;
  const deadline = Date.now() + timeoutMs;
  while (result.state === 'running') {
    if (Date.now() > deadline) throw new Error(`The Athena query ${result.queryId} did not finish in ${timeoutMs} ms.`);
    await sleep(QUERY_POLL_MS);
    result = await history.queryResult(result.queryId);
  }
  return { rows: result.rows, queryId };
}

/** Adds a difference to a month or all-time item; its first/last activity widens to the range's. */
async function adjustRollup(
  client: DynamoDBClient,
  tableName: string,
  userPk: string,
  sk: string,
  period: string,
  delta: Numbers,
  first: string | null,
  last: string | null,
  expiresAt: number | null,
): Promise<void> {
  const key = { [PARTITION_KEY]: { S: userPk }, [SORT_KEY]: { S: sk } };
  const names: Record<string, string> = { '#period': PERIOD_ATTRIBUTE };
  const values: Item = { ':period': { S: `${period}#${shardOfUser(userPk)}` } };
  const adds = DAY_TOTALS_NUMBERS.map((name, i) => {
    names[`#n${i}`] = name;
    values[`:n${i}`] = { N: String(delta[name]) };
    return `#n${i} :n${i}`;
  });
  const sets = ['#period = :period'];
  if (expiresAt !== null) {
    names['#exp'] = TTL_ATTRIBUTE;
    values[':exp'] = { N: String(expiresAt) };
    sets.push('#exp = :exp');
  }
  // An ADD is not idempotent: only failures DynamoDB documents as not applied are retried.
  await sendWithRetry(
    () =>
      client.send(
        new UpdateItemCommand({
          TableName: tableName,
          Key: key,
          UpdateExpression: `ADD ${adds.join(', ')} SET ${sets.join(', ')}`,
          ExpressionAttributeNames: names,
          ExpressionAttributeValues: values,
        }),
      ),
    { idempotent: false },
  );
  for (const [edge, ts, comparison] of [
    ['first', first, '>'],
    ['last', last, '<'],
  ] as const) {
    if (ts === null) continue;
    try {
      await sendWithRetry(
        () =>
          client.send(
            new UpdateItemCommand({
              TableName: tableName,
              Key: key,
              UpdateExpression: 'SET #t = :t, #ms = :ms',
              ConditionExpression: `attribute_not_exists(#ms) OR #ms ${comparison} :ms`,
              ExpressionAttributeNames: { '#t': `${edge}_active`, '#ms': `${edge}_active_ms` },
              ExpressionAttributeValues: { ':t': { S: ts }, ':ms': { N: String(Date.parse(ts)) } },
            }),
          ),
        { idempotent: true },
      );
    } catch (error) {
      if ((error as Error).name !== 'ConditionalCheckFailedException') throw error;
    }
  }
}

/** Overwrites a day item with the log's totals, or deletes it when the log has no request of the user that day. */
async function writeDay(client: DynamoDBClient, tableName: string, userPk: string, day: string, totals: DayTotals | undefined): Promise<void> {
  const key = { [PARTITION_KEY]: { S: userPk }, [SORT_KEY]: { S: totalsSortKey('day', day) } };
  if (totals === undefined) {
    await sendWithRetry(() => client.send(new DeleteItemCommand({ TableName: tableName, Key: key })), { idempotent: true });
    return;
  }
  const item: Item = {
    ...key,
    [PERIOD_ATTRIBUTE]: { S: periodPartition('day', day, shardOfUser(userPk)) },
    [TTL_ATTRIBUTE]: { N: String(expiry(day, DAY_TOTALS_TTL_DAYS)) },
    first_active: { S: totals.firstActive },
    first_active_ms: { N: String(Date.parse(totals.firstActive)) },
    last_active: { S: totals.lastActive },
    last_active_ms: { N: String(Date.parse(totals.lastActive)) },
  };
  for (const name of DAY_TOTALS_NUMBERS) item[name] = { N: String(totals.numbers[name]) };
  await sendWithRetry(() => client.send(new PutItemCommand({ TableName: tableName, Item: item })), { idempotent: true });
}

function dayKey(userPk: string, day: string): string {
  return `${day}\n${userPk}`;
}

function splitDayKey(key: string): [userPk: string, day: string] {
  const cut = key.indexOf('\n');
  return [key.slice(cut + 1), key.slice(0, cut)];
}

function zeroNumbers(): Numbers {
  return Object.fromEntries(DAY_TOTALS_NUMBERS.map((name) => [name, 0])) as Numbers;
}

function textOf(value: unknown): string | null {
  return value === null || value === undefined ? null : String(value);
}

function totalsOfRow(row: HistoryRow): DayTotals {
  const numbers = zeroNumbers();
  for (const name of DAY_TOTALS_NUMBERS) numbers[name] = Number(row[name] ?? 0);
  return { numbers, firstActive: String(row.first_active), lastActive: String(row.last_active) };
}

function totalsOfItem(item: Item): DayTotals {
  const numbers = zeroNumbers();
  for (const name of DAY_TOTALS_NUMBERS) numbers[name] = Number(item[name]?.N ?? 0);
  return { numbers, firstActive: item['first_active']?.S ?? '', lastActive: item['last_active']?.S ?? '' };
}

function sameTotals(a: DayTotals, b: DayTotals): boolean {
  return DAY_TOTALS_NUMBERS.every((name) => a.numbers[name] === b.numbers[name]) && a.firstActive === b.firstActive && a.lastActive === b.lastActive;
}

/** TTL of a period item, counted from the period's first day (as the counter store sets it). */
function expiry(firstDay: string, days: number): number {
  return Math.floor(Date.parse(`${firstDay}T00:00:00Z`) / 1000) + days * 86_400;
}
