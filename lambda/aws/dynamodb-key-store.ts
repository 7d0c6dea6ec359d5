/**
 * Gateway keys in DynamoDB (the AWS {@link KeyStore} for `Helicone-Auth: Bearer <key>`), and the admin functions
 * behind `bin/keys.ts`.
 *
 * Only the SHA-256 of a key is stored. A key item is `pk = K#<sha256 hex>`, `sk = K`, so checking a presented
 * key is a GetItem by its hash: the secret is never compared with anything, and how long the lookup takes tells
 * an attacker nothing about how close a guess was. The listing lives in a small item collection
 * (`pk = KEYS`, `sk = <key_id>`) so listing and revoking by id are a Query and a GetItem, never a Scan.
 *
 * A key is written listing first, key item second: a failure in between leaves a listed key that does not work
 * (visible, harmless, revocable), never a working key nobody can see.
 */
import { createHash, randomBytes } from 'node:crypto';
import {
  GetItemCommand,
  PutItemCommand,
  QueryCommand,
  UpdateItemCommand,
  type AttributeValue,
  type DynamoDBClient,
  type QueryCommandOutput,
} from '@aws-sdk/client-dynamodb';
import type { KeyStore } from '../core/ports';
import { sendWithRetry } from './dynamodb-counter-store';
import { GATEWAY_KEY_LIST_PK, GATEWAY_KEY_PREFIX, GATEWAY_KEY_SK, PARTITION_KEY, SORT_KEY } from './table-design';

/** Every gateway key starts with this, then 32 random bytes in base64url (43 characters). */
export const GATEWAY_KEY_TEXT_PREFIX = 'gw_';
const GATEWAY_KEY_PATTERN = /^gw_[A-Za-z0-9_-]{43}$/;
const KEY_ID_PATTERN = /^[0-9a-f]{12}$/;
const MAX_LABEL_LENGTH = 200;

type Item = Record<string, AttributeValue>;

/** What may be shown about a key: never the key, never its hash. */
export interface GatewayKeyInfo {
  /** First 12 hex characters of the key's SHA-256; also the `key_id` of usage events. */
  readonly key_id: string;
  readonly label: string | null;
  /** ISO-8601 UTC. */
  readonly created_at: string;
  readonly revoked_at: string | null;
}

export interface CreatedGatewayKey extends GatewayKeyInfo {
  /** The key itself. Returned once, at creation; only its hash is stored. */
  readonly key: string;
}

/** A key id that is not 12 lowercase hex characters, or a label that cannot be stored. */
export class InvalidGatewayKeyInputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InvalidGatewayKeyInputError';
  }
}

/** SHA-256 hex of a key: how keys are stored and looked up. */
export function gatewayKeyHash(key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex');
}

/** The public id of a key hash. */
export function keyIdOfHash(hash: string): string {
  return hash.slice(0, 12);
}

function keyItemKey(hash: string): Item {
  return { [PARTITION_KEY]: { S: GATEWAY_KEY_PREFIX + hash }, [SORT_KEY]: { S: GATEWAY_KEY_SK } };
}

function listingKey(keyId: string): Item {
  return { [PARTITION_KEY]: { S: GATEWAY_KEY_LIST_PK }, [SORT_KEY]: { S: keyId } };
}

function infoOf(item: Item): GatewayKeyInfo {
  return {
    key_id: item['key_id']?.S ?? item[SORT_KEY]!.S!,
    label: item['label']?.S ?? null,
    created_at: item['created_at']?.S ?? '',
    revoked_at: item['revoked_at']?.S ?? null,
  };
}

function isConditionFailure(error: unknown): boolean {
  return error instanceof Error && error.name === 'ConditionalCheckFailedException';
}

const read = <T>(call: () => Promise<T>) => sendWithRetry(call, { idempotent: true });

/**
 * Creates a gateway key and returns it, the only time it is ever available in plain text.
 * @example const { key, key_id } = await createGatewayKey(client, 'usage', 'ci pipeline');
 */
export async function createGatewayKey(
  client: DynamoDBClient,
  tableName: string,
  label?: string,
  now: () => Date = () => new Date(),
): Promise<CreatedGatewayKey> {
  const cleanLabel = label === undefined || label.trim() === '' ? null : label.trim();
  if (cleanLabel !== null && (cleanLabel.length > MAX_LABEL_LENGTH || /\p{Cc}/u.test(cleanLabel))) {
    throw new InvalidGatewayKeyInputError(
      `label must be at most ${MAX_LABEL_LENGTH} characters without control characters`,
    );
  }
  const createdAt = now().toISOString();
  // A 48-bit key id collides with an existing one about never; the conditional put makes sure, and a
  // collision just draws a new key.
  for (let draw = 0; draw < 3; draw++) {
    const key = GATEWAY_KEY_TEXT_PREFIX + randomBytes(32).toString('base64url');
    const hash = gatewayKeyHash(key);
    const keyId = keyIdOfHash(hash);
    const fields: Item = {
      key_id: { S: keyId },
      created_at: { S: createdAt },
      ...(cleanLabel !== null && { label: { S: cleanLabel } }),
    };
    const listed = await putOnce(client, tableName, { ...listingKey(keyId), ...fields, key_hash: { S: hash } }, (old) =>
      old['key_hash']?.S === hash,
    );
    if (!listed) continue;
    await putOnce(client, tableName, { ...keyItemKey(hash), ...fields }, () => true);
    return { key, key_id: keyId, label: cleanLabel, created_at: createdAt, revoked_at: null };
  }
  throw new Error('Could not draw an unused gateway key id.');
}

/**
 * Puts an item that must not exist yet. When it does, `isOurs` decides from the stored item whether it is this
 * very write (the client retried a put whose first attempt landed) or somebody else's.
 */
async function putOnce(
  client: DynamoDBClient,
  tableName: string,
  item: Item,
  isOurs: (old: Item) => boolean,
): Promise<boolean> {
  try {
    await sendWithRetry(
      () =>
        client.send(
          new PutItemCommand({
            TableName: tableName,
            Item: item,
            ConditionExpression: 'attribute_not_exists(#pk)',
            ExpressionAttributeNames: { '#pk': PARTITION_KEY },
          }),
        ),
      { idempotent: true },
    );
    return true;
  } catch (error) {
    if (!isConditionFailure(error)) throw error;
  }
  const { Item: old } = await read(() =>
    client.send(
      new GetItemCommand({
        TableName: tableName,
        Key: { [PARTITION_KEY]: item[PARTITION_KEY]!, [SORT_KEY]: item[SORT_KEY]! },
        ConsistentRead: true,
      }),
    ),
  );
  return old !== undefined && isOurs(old);
}

/**
 * Revokes a key by its id; revoking twice keeps the first date. Null when no key has that id.
 * @example await revokeGatewayKey(client, 'usage', '3f2a9c0d41b7')
 */
export async function revokeGatewayKey(
  client: DynamoDBClient,
  tableName: string,
  keyId: string,
  now: () => Date = () => new Date(),
): Promise<GatewayKeyInfo | null> {
  if (!KEY_ID_PATTERN.test(keyId)) {
    throw new InvalidGatewayKeyInputError('key id must be 12 lowercase hexadecimal characters');
  }
  const { Item: listed } = await read(() =>
    client.send(new GetItemCommand({ TableName: tableName, Key: listingKey(keyId), ConsistentRead: true })),
  );
  const hash = listed?.['key_hash']?.S;
  if (!listed || !hash) return null;
  const revokedAt = now().toISOString();
  const revoke = (key: Item, mustExist: boolean) =>
    sendWithRetry(
      () =>
        client.send(
          new UpdateItemCommand({
            TableName: tableName,
            Key: key,
            UpdateExpression: 'SET #revoked = if_not_exists(#revoked, :now)',
            ...(mustExist && { ConditionExpression: 'attribute_exists(#pk)' }),
            ExpressionAttributeNames: { '#revoked': 'revoked_at', ...(mustExist && { '#pk': PARTITION_KEY }) },
            ExpressionAttributeValues: { ':now': { S: revokedAt } },
            ReturnValues: 'ALL_NEW',
          }),
        ),
      { idempotent: true },
    );
  // The key item first: that is the one that lets requests in.
  try {
    await revoke(keyItemKey(hash), true);
  } catch (error) {
    // No key item: a creation that stopped half-way; the key never worked, so only the listing needs marking.
    if (!isConditionFailure(error)) throw error;
  }
  const { Attributes } = await revoke(listingKey(keyId), false);
  return infoOf(Attributes ?? listed);
}

/**
 * All gateway keys, oldest first, without secrets.
 * @example for (const k of await listGatewayKeys(client, 'usage')) console.log(k.key_id, k.label)
 */
export async function listGatewayKeys(client: DynamoDBClient, tableName: string): Promise<GatewayKeyInfo[]> {
  const keys: GatewayKeyInfo[] = [];
  let start: Item | undefined;
  do {
    const exclusiveStart = start;
    const out: QueryCommandOutput = await read(() =>
      client.send(
        new QueryCommand({
          TableName: tableName,
          KeyConditionExpression: '#pk = :keys',
          ExpressionAttributeNames: {
            '#pk': PARTITION_KEY,
            '#sk': SORT_KEY,
            '#id': 'key_id',
            '#label': 'label',
            '#created': 'created_at',
            '#revoked': 'revoked_at',
          },
          ExpressionAttributeValues: { ':keys': { S: GATEWAY_KEY_LIST_PK } },
          // Hashes stay in the table; the listing never needs them.
          ProjectionExpression: '#sk, #id, #label, #created, #revoked',
          ConsistentRead: true,
          ...(exclusiveStart && { ExclusiveStartKey: exclusiveStart }),
        }),
      ),
    );
    for (const item of out.Items ?? []) keys.push(infoOf(item));
    start = out.LastEvaluatedKey;
  } while (start);
  return keys.sort((a, b) => a.created_at.localeCompare(b.created_at) || a.key_id.localeCompare(b.key_id));
}

export interface DynamoDbKeyStoreOptions {
  readonly client: DynamoDBClient;
  readonly tableName: string;
  /** How long an answer (valid or not) is reused, so a warm container does not read DynamoDB per request. A
   * revoked key keeps working in a warm container for at most this long. @default 60000 */
  readonly cacheTtlMs?: number;
  /** Most answers kept; the least recently used goes first. @default 1000 */
  readonly maxCacheEntries?: number;
  /** @default Date.now */
  readonly now?: () => number;
}

interface CacheEntry {
  readonly expiresAt: number;
  readonly keyId: Promise<string | null>;
}

/**
 * Checks gateway keys against DynamoDB, with a small cache of recent answers keyed by hash (never by the key).
 * @example const keys = new DynamoDbKeyStore({ client, tableName: 'usage' }); const keyId = await keys.verify(token);
 */
export class DynamoDbKeyStore implements KeyStore {
  /** On AWS a gateway key is always required. */
  readonly enabled = true;
  private readonly client: DynamoDBClient;
  private readonly tableName: string;
  private readonly ttlMs: number;
  private readonly maxEntries: number;
  private readonly now: () => number;
  private readonly cache = new Map<string, CacheEntry>();

  constructor(options: DynamoDbKeyStoreOptions) {
    this.client = options.client;
    this.tableName = options.tableName;
    this.ttlMs = options.cacheTtlMs ?? 60_000;
    this.maxEntries = Math.max(1, options.maxCacheEntries ?? 1000);
    this.now = options.now ?? Date.now;
  }

  async verify(key: string): Promise<string | null> {
    // Not shaped like a key: no lookup, and no cache entry a flood of garbage could churn.
    if (!GATEWAY_KEY_PATTERN.test(key)) return null;
    const hash = gatewayKeyHash(key);
    const now = this.now();
    const cached = this.cache.get(hash);
    if (cached && cached.expiresAt > now) {
      // Re-insert to mark it recently used.
      this.cache.delete(hash);
      this.cache.set(hash, cached);
      return cached.keyId;
    }
    // Concurrent requests with the same key share one lookup.
    const keyId = this.lookUp(hash);
    this.cache.delete(hash);
    this.cache.set(hash, { expiresAt: now + this.ttlMs, keyId });
    while (this.cache.size > this.maxEntries) this.cache.delete(this.cache.keys().next().value!);
    keyId.catch(() => {
      // A failed lookup is not an answer: do not remember it.
      if (this.cache.get(hash)?.keyId === keyId) this.cache.delete(hash);
    });
    return keyId;
  }

  private async lookUp(hash: string): Promise<string | null> {
    const { Item } = await read(() =>
      this.client.send(
        new GetItemCommand({
          TableName: this.tableName,
          Key: keyItemKey(hash),
          ProjectionExpression: '#id, #revoked',
          ExpressionAttributeNames: { '#id': 'key_id', '#revoked': 'revoked_at' },
        }),
      ),
    );
    if (!Item || Item['revoked_at']?.S) return null;
    return Item['key_id']?.S ?? keyIdOfHash(hash);
  }
}
