import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { GetItemCommand } from '@aws-sdk/client-dynamodb';
import { CounterStoreConfigError } from '../../lambda/aws/dynamodb-counter-store';
import { DynamoDbLimitStore, limitCounterKey } from '../../lambda/aws/dynamodb-limit-store';
import { BUDGET_USAGE_TTL_DAYS, TTL_ATTRIBUTE } from '../../lambda/aws/table-design';
import { collectingContext } from '../../lambda/core/handler';
import type { LimitCounter } from '../../lambda/core/ports';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream';
import { runConcurrencyProof } from '../support/limits-proof';
import { FAKE_CREDENTIALS, TEST_REGION, startDynalite, type LocalDynamoDb } from '../support/dynalite';
import { startFakeSecretsManager } from '../support/fake-secrets-manager';
import { createMetricsApp } from '../../lambda/aws/metrics-app';
import { metricsLambdaConfigFromEnv } from '../../lambda/aws/aws-config';
import { silentLogger } from '../../lambda/core/log';
import { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';

const T0 = Date.UTC(2026, 10, 22, 10);

function windowOf(segment: string): LimitCounter {
  return { kind: 'window', segment, unit: 'request', windowSeconds: 60, windowStart: T0 };
}
const budgetOf = (userId: string | null): LimitCounter => ({ kind: 'budget', userId, month: '2026-11' });

let db: LocalDynamoDb;
let store: DynamoDbLimitStore;

before(async () => {
  db = await startDynalite();
  store = new DynamoDbLimitStore({ client: db.client, tableName: db.tableName });
});
after(() => db.close());

describe('DynamoDbLimitStore', () => {
  it('adds while the counter stays within its limit and reports the value after', async () => {
    const counter = windowOf('user:a');
    assert.deepEqual(await store.charge([{ counter, amount: 1, limit: 2 }]), { admitted: true, fits: [true], used: [1] });
    assert.deepEqual(await store.charge([{ counter, amount: 1, limit: 2 }]), { admitted: true, fits: [true], used: [2] });
    assert.deepEqual(await store.charge([{ counter, amount: 1, limit: 2 }]), { admitted: false, fits: [false], used: [2] });
  });

  it('is all or nothing: a charge that fitted is taken back when another is refused', async () => {
    const window = windowOf('user:b');
    const budget = budgetOf('b');
    const result = await store.charge([
      { counter: window, amount: 1, limit: 10 },
      { counter: budget, amount: 500, limit: 400 },
    ]);
    assert.deepEqual(result, { admitted: false, fits: [true, false], used: [0, 0] });
    assert.deepEqual(await store.read([window, budget]), [0, 0]);
  });

  it('refuses an amount larger than the limit even on a counter never charged', async () => {
    assert.equal((await store.charge([{ counter: budgetOf('c'), amount: 11, limit: 10 }])).admitted, false);
    assert.deepEqual(await store.read([budgetOf('c')]), [0]);
  });

  it('counts without a cap when the limit is null, and settles with signed adjustments', async () => {
    await store.charge([{ counter: budgetOf(null), amount: 5_000_000_000_000, limit: null }]);
    await store.adjust([{ counter: budgetOf(null), amount: -1 }]);
    assert.deepEqual(await store.read([budgetOf(null)]), [4_999_999_999_999]);
  });

  it('never lets concurrent charges pass a limit', async () => {
    const counter = windowOf('user:crowd');
    const results = await Promise.all(Array.from({ length: 60 }, () => store.charge([{ counter, amount: 1, limit: 13 }])));
    assert.equal(results.filter((r) => r.admitted).length, 13);
    assert.deepEqual(await store.read([counter]), [13]);
  });

  it('lets TTL remove window items a day after the window, and month items after 400 days', async () => {
    await store.adjust([{ counter: budgetOf('ttl'), amount: 1 }]);
    await store.charge([{ counter: windowOf('user:ttl'), amount: 1, limit: 5 }]);
    const expiry = async (counter: LimitCounter) =>
      Number((await db.client.send(new GetItemCommand({ TableName: db.tableName, Key: limitCounterKey(counter) }))).Item?.[TTL_ATTRIBUTE]?.N);
    assert.equal(await expiry(windowOf('user:ttl')), (T0 + 60_000) / 1000 + 86_400);
    assert.equal(await expiry(budgetOf('ttl')), Date.UTC(2026, 10, 1) / 1000 + BUDGET_USAGE_TTL_DAYS * 86_400);
  });

  it('keeps user limits under their own partition and forgets them again', async () => {
    await store.putLimits('u1', { monthlyBudgetNanoUsd: 7, rateLimits: ['5;w=60;u=request;s=user'], updatedAt: 't' });
    assert.deepEqual(await store.getLimits('u1'), { monthlyBudgetNanoUsd: 7, rateLimits: ['5;w=60;u=request;s=user'], updatedAt: 't' });
    const item = await db.client.send(new GetItemCommand({ TableName: db.tableName, Key: { pk: { S: 'L#u1' }, sk: { S: 'LIMITS' } } }));
    assert.ok(item.Item);
    await store.putLimits('u1', null);
    assert.equal(await store.getLimits('u1'), null);
  });

  it('refuses a client whose SDK retries could apply an ADD twice', async () => {
    const retrying = new DynamoDbLimitStore({ client: db.newClient({ maxAttempts: 3 }), tableName: db.tableName });
    await assert.rejects(retrying.charge([{ counter: windowOf('user:r'), amount: 1, limit: 1 }]), CounterStoreConfigError);
  });

  it('reports a failure of DynamoDB instead of an answer', async () => {
    const missing = new DynamoDbLimitStore({ client: db.client, tableName: 'no-such-table' });
    await assert.rejects(missing.charge([{ counter: windowOf('user:m'), amount: 1, limit: 1 }]), /ResourceNotFound|non-existent|not found/i);
  });
});

describe('concurrency proof on dynalite', () => {
  let upstream: FakeUpstream;
  before(async () => {
    upstream = await startFakeUpstream();
  });
  after(() => upstream.close());

  it('forwards exactly k of N parallel requests against a budget that holds k worst cases', async () => {
    const result = await runConcurrencyProof({ store, upstreamUrl: upstream.url, userId: 'budget-crowd', n: 20, k: 6, limit: 'budget' });
    assert.equal(result.forwarded, 6);
    assert.equal(result.statuses.filter((s) => s === 429).length, 14);
    const spent = result.events.reduce((sum, e) => sum + (e.cost_nano_usd ?? 0), 0);
    const [used] = await store.read([{ kind: 'budget', userId: 'budget-crowd', month: new Date().toISOString().slice(0, 7) }]);
    assert.equal(used, spent);
  });

  it('forwards exactly k of N parallel requests against a policy of k requests', async () => {
    const result = await runConcurrencyProof({ store, upstreamUrl: upstream.url, userId: 'window-crowd', n: 20, k: 9, limit: 'window' });
    assert.equal(result.forwarded, 9);
    assert.equal(result.statuses.filter((s) => s === 429).length, 11);
  });
});

describe('limit routes in the metrics Lambda app', () => {
  it('writes a user’s limits to the table the proxy reads them from', async (t) => {
    const config = metricsLambdaConfigFromEnv({
      COUNTERS_TABLE_NAME: db.tableName,
      ADMIN_KEY_SECRET_ARN: 'arn:aws:secretsmanager:us-east-1:123456789012:secret:admin',
      ATHENA_WORKGROUP: 'wg',
      ATHENA_DATABASE: 'db',
      ATHENA_TABLE: 'events',
      DEFAULT_MONTHLY_BUDGET_USD: '3',
    });
    const sm = await startFakeSecretsManager({ [config.adminKeySecretArn]: JSON.stringify({ key: 'admin-key-0123456789abcdef' }) });
    t.after(() => sm.close());
    const secrets = new SecretsManagerClient({ endpoint: sm.endpoint, region: TEST_REGION, credentials: FAKE_CREDENTIALS });
    const app = createMetricsApp(config, { counters: db.client, secrets }, silentLogger);
    const response = await app(
      new Request('https://api.test/metrics/users/ursula/limits', {
        method: 'PUT',
        headers: { authorization: 'Bearer admin-key-0123456789abcdef', 'content-type': 'application/json' },
        body: JSON.stringify({ rate_limits: ['7;w=3600'] }),
      }),
      collectingContext(),
    );
    assert.equal(response.status, 200, await response.clone().text());
    const body = (await response.json()) as { effective: unknown };
    assert.deepEqual(body.effective, { monthly_budget_usd: 3, rate_limits: ['7;w=3600;u=request;s=user'], blocked: false });
    assert.deepEqual((await store.getLimits('ursula'))?.rateLimits, ['7;w=3600;u=request;s=user']);
  });
});
