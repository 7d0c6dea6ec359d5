import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { promisify } from 'node:util';
import { GetItemCommand, QueryCommand } from '@aws-sdk/client-dynamodb';
import {
  DynamoDbKeyStore,
  InvalidGatewayKeyInputError,
  createGatewayKey,
  listGatewayKeys,
  revokeGatewayKey,
} from '../../lambda/aws/dynamodb-key-store';
import { EXIT_USAGE, runKeysCli } from '../../bin/keys';
import { FAKE_CREDENTIALS, TEST_REGION, startDynalite, type LocalDynamoDb } from '../support/dynalite';

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

/** Counts the requests a client sends, to see when the cache answers instead of DynamoDB. */
function countRequests(db: LocalDynamoDb) {
  const client = db.newClient();
  const counter = { client, sent: 0 };
  client.middlewareStack.add(
    (next) => async (args) => {
      counter.sent++;
      return next(args);
    },
    { step: 'initialize', name: 'countRequests' },
  );
  return counter;
}

describe('gateway key administration', () => {
  let db: LocalDynamoDb;
  before(async () => {
    db = await startDynalite({ tableName: 'keys-admin' });
  });
  after(() => db.close());

  it('creates a gw_ key, returns it once and stores only its hash', async () => {
    const at = () => new Date('2026-11-22T10:00:00Z');
    const created = await createGatewayKey(db.client, db.tableName, '  ci pipeline  ', at);
    assert.match(created.key, /^gw_[A-Za-z0-9_-]{43}$/);
    assert.equal(created.key_id, sha256(created.key).slice(0, 12));
    assert.equal(created.label, 'ci pipeline');
    assert.equal(created.created_at, '2026-11-22T10:00:00.000Z');
    assert.equal(created.revoked_at, null);

    const { Item } = await db.client.send(
      new GetItemCommand({ TableName: db.tableName, Key: { pk: { S: `K#${sha256(created.key)}` }, sk: { S: 'K' } } }),
    );
    assert.equal(Item?.['key_id']?.S, created.key_id);
    assert.ok(!JSON.stringify(Item).includes(created.key));
    const everything = JSON.stringify(
      await db.client.send(
        new QueryCommand({
          TableName: db.tableName,
          KeyConditionExpression: 'pk = :p',
          ExpressionAttributeValues: { ':p': { S: 'KEYS' } },
        }),
      ),
    );
    assert.ok(!everything.includes(created.key), 'the plaintext key is stored nowhere');
  });

  it('lists keys with ids, labels and dates but no hashes', async () => {
    const a = await createGatewayKey(db.client, db.tableName, 'listed-a');
    const b = await createGatewayKey(db.client, db.tableName);
    const keys = await listGatewayKeys(db.client, db.tableName);
    const ours = keys.filter((k) => k.key_id === a.key_id || k.key_id === b.key_id);
    assert.equal(ours.length, 2);
    const listedA = ours.find((k) => k.key_id === a.key_id);
    assert.deepEqual(listedA, { key_id: a.key_id, label: 'listed-a', created_at: a.created_at, revoked_at: null });
    assert.equal(ours.find((k) => k.key_id === b.key_id)?.label, null);
    assert.ok(!JSON.stringify(keys).includes(sha256(a.key)), 'no hash in the listing');
  });

  it('revokes a key by id, keeps the first revocation date, and knows unknown ids', async () => {
    const created = await createGatewayKey(db.client, db.tableName, 'to revoke');
    const december = () => new Date('2026-12-01T00:00:00Z');
    const january = () => new Date('2027-01-01T00:00:00Z');
    const first = await revokeGatewayKey(db.client, db.tableName, created.key_id, december);
    assert.equal(first?.revoked_at, '2026-12-01T00:00:00.000Z');
    assert.equal(first?.label, 'to revoke');
    const again = await revokeGatewayKey(db.client, db.tableName, created.key_id, january);
    assert.equal(again?.revoked_at, '2026-12-01T00:00:00.000Z');
    const listed = (await listGatewayKeys(db.client, db.tableName)).find((k) => k.key_id === created.key_id);
    assert.equal(listed?.revoked_at, '2026-12-01T00:00:00.000Z');
    assert.equal(await revokeGatewayKey(db.client, db.tableName, '000000000000'), null);
  });

  it('refuses malformed key ids and labels', async () => {
    await assert.rejects(revokeGatewayKey(db.client, db.tableName, 'ABC'), InvalidGatewayKeyInputError);
    await assert.rejects(createGatewayKey(db.client, db.tableName, 'bad\nlabel'), InvalidGatewayKeyInputError);
    await assert.rejects(createGatewayKey(db.client, db.tableName, 'x'.repeat(201)), InvalidGatewayKeyInputError);
  });
});

describe('DynamoDbKeyStore', () => {
  let db: LocalDynamoDb;
  before(async () => {
    db = await startDynalite({ tableName: 'keys-verify' });
  });
  after(() => db.close());

  it('is always enabled and accepts a created key, answering its key id', async () => {
    const created = await createGatewayKey(db.client, db.tableName, 'verify');
    const store = new DynamoDbKeyStore({ client: db.client, tableName: db.tableName });
    assert.equal(store.enabled, true);
    assert.equal(await store.verify(created.key), created.key_id);
  });

  it('refuses unknown keys, near misses and revoked keys', async () => {
    const created = await createGatewayKey(db.client, db.tableName);
    const revoked = await createGatewayKey(db.client, db.tableName);
    await revokeGatewayKey(db.client, db.tableName, revoked.key_id);
    const store = new DynamoDbKeyStore({ client: db.client, tableName: db.tableName });
    const nearMiss = created.key.slice(0, -1) + (created.key.endsWith('A') ? 'B' : 'A');
    assert.equal(await store.verify(nearMiss), null);
    assert.equal(await store.verify('gw_' + 'A'.repeat(43)), null);
    assert.equal(await store.verify(revoked.key), null);
    assert.equal(await store.verify(''), null);
    assert.equal(await store.verify(sha256(created.key)), null, 'the hash is not a key');
  });

  it('answers repeated checks from its cache, valid and invalid alike, until the TTL passes', async () => {
    const created = await createGatewayKey(db.client, db.tableName);
    const unknown = 'gw_' + 'B'.repeat(43);
    const counter = countRequests(db);
    let now = 0;
    const store = new DynamoDbKeyStore({
      client: counter.client,
      tableName: db.tableName,
      cacheTtlMs: 60_000,
      now: () => now,
    });
    assert.equal(await store.verify(created.key), created.key_id);
    assert.equal(await store.verify(unknown), null);
    assert.equal(counter.sent, 2);
    now = 59_999;
    assert.equal(await store.verify(created.key), created.key_id);
    assert.equal(await store.verify(unknown), null);
    assert.equal(counter.sent, 2, 'both answered from the cache');

    // A revocation shows once the cached answer expires.
    await revokeGatewayKey(db.client, db.tableName, created.key_id);
    assert.equal(await store.verify(created.key), created.key_id);
    now = 60_000;
    assert.equal(await store.verify(created.key), null);
    assert.equal(counter.sent, 3);
  });

  it('keeps at most maxCacheEntries answers, dropping the least recently used', async () => {
    const keys = await Promise.all([1, 2, 3].map(() => createGatewayKey(db.client, db.tableName)));
    const counter = countRequests(db);
    const store = new DynamoDbKeyStore({ client: counter.client, tableName: db.tableName, maxCacheEntries: 2 });
    await store.verify(keys[0]!.key);
    await store.verify(keys[1]!.key);
    await store.verify(keys[0]!.key); // key 0 is now the most recently used
    await store.verify(keys[2]!.key); // evicts key 1
    assert.equal(counter.sent, 3);
    await store.verify(keys[0]!.key);
    assert.equal(counter.sent, 3, 'key 0 stayed cached');
    await store.verify(keys[1]!.key);
    assert.equal(counter.sent, 4, 'key 1 was evicted');
  });

  it('shares one lookup among concurrent checks of the same key', async () => {
    const created = await createGatewayKey(db.client, db.tableName);
    const counter = countRequests(db);
    const store = new DynamoDbKeyStore({ client: counter.client, tableName: db.tableName });
    const answers = await Promise.all(Array.from({ length: 10 }, () => store.verify(created.key)));
    assert.ok(answers.every((a) => a === created.key_id));
    assert.equal(counter.sent, 1);
  });

  it('does not look up strings that are not shaped like gateway keys', async () => {
    const counter = countRequests(db);
    const store = new DynamoDbKeyStore({ client: counter.client, tableName: db.tableName });
    for (const junk of ['sk-proj-123', 'gw_short', 'gw_' + '!'.repeat(43), 'Bearer gw_' + 'A'.repeat(43)]) {
      assert.equal(await store.verify(junk), null);
    }
    assert.equal(counter.sent, 0);
  });

  it('does not remember a failed lookup', async () => {
    const created = await createGatewayKey(db.client, db.tableName);
    let fail = true;
    const client = db.newClient();
    client.middlewareStack.add(
      (next) => async (args) => {
        if (fail) {
          const denied = { name: 'AccessDeniedException', $metadata: { httpStatusCode: 400 } };
          throw Object.assign(new Error('denied'), denied);
        }
        return next(args);
      },
      { step: 'initialize', name: 'failFirst' },
    );
    const store = new DynamoDbKeyStore({ client, tableName: db.tableName });
    await assert.rejects(store.verify(created.key), { name: 'AccessDeniedException' });
    fail = false;
    assert.equal(await store.verify(created.key), created.key_id);
  });
});

describe('bin/keys.ts', () => {
  const exec = promisify(execFile);
  const root = path.resolve(__dirname, '../..');
  let db: LocalDynamoDb;
  before(async () => {
    db = await startDynalite({ tableName: 'keys-cli' });
  });
  after(() => db.close());

  async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    try {
      const { stdout, stderr } = await exec(process.execPath, ['--import', 'tsx', 'bin/keys.ts', ...args], {
        cwd: root,
        env: {
          PATH: process.env['PATH'] ?? '',
          AWS_ACCESS_KEY_ID: FAKE_CREDENTIALS.accessKeyId,
          AWS_SECRET_ACCESS_KEY: FAKE_CREDENTIALS.secretAccessKey,
          AWS_EC2_METADATA_DISABLED: 'true',
          NODE_NO_WARNINGS: '1',
        },
      });
      return { code: 0, stdout, stderr };
    } catch (error) {
      const e = error as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  }

  it('adds, lists and revokes a key against the table at --endpoint', async () => {
    const target = ['--table', db.tableName, '--endpoint', db.endpoint, '--region', TEST_REGION];
    const added = await cli('add', ...target, '--label', 'from the cli');
    assert.equal(added.code, 0, added.stderr);
    const key = added.stdout.trim().split('\n').at(-1)!;
    assert.match(key, /^gw_[A-Za-z0-9_-]{43}$/);
    const keyId = sha256(key).slice(0, 12);
    assert.match(added.stdout, new RegExp(`Created gateway key ${keyId}`));

    const store = new DynamoDbKeyStore({ client: db.client, tableName: db.tableName });
    assert.equal(await store.verify(key), keyId);

    const listed = await cli('list', ...target, '--json');
    assert.equal(listed.code, 0, listed.stderr);
    const keys = JSON.parse(listed.stdout) as { key_id: string; label: string | null; revoked_at: string | null }[];
    assert.deepEqual(
      keys.map((k) => [k.key_id, k.label, k.revoked_at]),
      [[keyId, 'from the cli', null]],
    );
    assert.ok(!listed.stdout.includes(key));

    const revoked = await cli('revoke', ...target, keyId);
    assert.equal(revoked.code, 0, revoked.stderr);
    assert.match(revoked.stdout, new RegExp(`Revoked ${keyId}`));
    const fresh = new DynamoDbKeyStore({ client: db.client, tableName: db.tableName });
    assert.equal(await fresh.verify(key), null);

    const human = await cli('list', ...target);
    assert.match(human.stdout, new RegExp(`${keyId}  created .*  revoked .*  from the cli`));
  });

  it('exits 3 for an unknown key id', async () => {
    const target = ['--table', db.tableName, '--endpoint', db.endpoint, '--region', TEST_REGION];
    const unknown = await cli('revoke', ...target, 'abcdefabcdef');
    assert.equal(unknown.code, 3);
    assert.match(unknown.stderr, /no gateway key with id abcdefabcdef/);

  });

  it('exits 2 with a message and the usage for wrong usage, without calling AWS', async () => {
    const target = ['--table', db.tableName, '--endpoint', db.endpoint, '--region', TEST_REGION];
    const cases: [string[], RegExp][] = [
      [[], /Missing command/],
      [['rotate', '--table', 't'], /Unknown command "rotate"/],
      [['add'], /--table <name> is required/],
      [['revoke', '--table', 't'], /exactly one <key_id>/],
      [['list', '--table', 't', '--label', 'x'], /--label only applies to add/],
      [['add', '--table', 't', '--bogus'], /Unknown option '--bogus'/],
      [['add', '--table', 't', '--endpoint', 'not a url'], /is not a URL/],
      [['revoke', ...target, 'NOT-HEX'], /"NOT-HEX" is not a key id/],
      [['add', ...target, '--label', 'two\nlines'], /without control characters/],
    ];
    for (const [args, message] of cases) {
      const err: string[] = [];
      const code = await runKeysCli(args, { out: () => assert.fail('no output expected'), err: (t) => err.push(t) });
      assert.equal(code, EXIT_USAGE, args.join(' '));
      assert.match(err.join('\n'), message, args.join(' '));
      assert.match(err.join('\n'), /Usage:/);
    }
  });

  it('exits 1 and says why when the AWS call fails', async () => {
    const result = await cli('list', '--table', 'no-such-table', '--endpoint', db.endpoint, '--region', TEST_REGION);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /list failed: ResourceNotFoundException/);
  });
});
