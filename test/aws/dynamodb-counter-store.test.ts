import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { GetItemCommand, type AttributeValue } from '@aws-sdk/client-dynamodb';
import {
  CounterStoreConfigError,
  CounterWriteError,
  DynamoDbCounterStore,
  classifyDynamoDbFailure,
} from '../../lambda/aws/dynamodb-counter-store';
import { DAY_TOTALS_TTL_DAYS, MONTH_TOTALS_TTL_DAYS, NO_USER, TTL_ATTRIBUTE } from '../../lambda/aws/table-design';
import { BadRequestError } from '../../lambda/core/errors';
import type { ListUsersQuery, UserSort, UserTotals } from '../../lambda/core/ports';
import type { UsageEvent } from '../../lambda/core/usage-event';
import { startDynalite, type LocalDynamoDb } from '../support/dynalite';
import { sampleEvent } from '../support/usage-events';

const noWait = { sleep: async () => {} };
let sequence = 0;

function usageEvent(overrides: Partial<UsageEvent>): UsageEvent {
  sequence++;
  return sampleEvent({ request_id: `00000000-0000-4000-8000-${String(sequence).padStart(12, '0')}`, ...overrides });
}

function priced(tokens: { prompt: number; completion: number }, costNano: number): Partial<UsageEvent> {
  return {
    prompt_tokens: tokens.prompt,
    completion_tokens: tokens.completion,
    total_tokens: tokens.prompt + tokens.completion,
    cost_nano_usd: costNano,
    cost_usd: costNano / 1e9,
    cost_source: 'genai-prices',
    usage_source: 'provider',
  };
}

async function rawItem(db: LocalDynamoDb, pk: string, sk: string): Promise<Record<string, AttributeValue> | undefined> {
  const out = await db.client.send(
    new GetItemCommand({ TableName: db.tableName, Key: { pk: { S: pk }, sk: { S: sk } }, ConsistentRead: true }),
  );
  return out.Item;
}

describe('DynamoDbCounterStore', () => {
  let db: LocalDynamoDb;
  let store: DynamoDbCounterStore;

  before(async () => {
    db = await startDynalite();
    store = new DynamoDbCounterStore({ client: db.client, tableName: db.tableName, retry: noWait });
  });
  after(() => db.close());

  describe('record and getUser', () => {
    it('adds events to exact day, month and all-time totals and per-model totals', async () => {
      const user = 'exact-user';
      const events = [
        usageEvent({
          user_id: user,
          ts: '2026-11-22T10:00:00.000Z',
          ...priced({ prompt: 100, completion: 50 }, 1500),
          cached_prompt_tokens: 20,
          reasoning_tokens: 10,
        }),
        // A broken stream: status 200 but an error, so it counts as an error; partial usage is still priced.
        usageEvent({
          user_id: user,
          ts: '2026-11-22T09:00:00.000Z',
          ...priced({ prompt: 10, completion: 5 }, 200),
          usage_source: 'partial',
          error: 'stream_interrupted',
        }),
        usageEvent({
          user_id: user,
          ts: '2026-11-22T11:00:00.000Z',
          model: 'my-finetune',
          prompt_tokens: 30,
          completion_tokens: 20,
          total_tokens: 50,
          cost_usd: null,
          cost_nano_usd: null,
          cost_source: 'unknown_model',
          usage_source: 'provider',
        }),
        // Refused by the gateway's own limit.
        usageEvent({ user_id: user, ts: '2026-11-22T12:00:00.000Z', status: 429, error: 'rate_limited' }),
        // A 429 from the upstream is an error but not the gateway's rate limiting.
        usageEvent({ user_id: user, ts: '2026-11-22T13:00:00.000Z', status: 429, error: 'upstream_rate_limited' }),
        usageEvent({
          user_id: user,
          ts: '2026-11-23T00:30:00.000Z',
          status: 500,
          error: 'upstream_error',
          model: null,
        }),
        usageEvent({
          user_id: user,
          ts: '2026-10-31T23:59:59.999Z',
          model: 'gpt-4o-mini',
          ...priced({ prompt: 1, completion: 1 }, 7),
        }),
      ];
      await store.record([events[3]!, events[0]!, events[6]!]);
      await store.record([events[5]!, events[1]!, events[2]!, events[4]!]);

      const detail = await store.getUser(user, '2026-11-22', '2026-11');
      assert.ok(detail);
      assert.equal(detail.user_id, user);
      assert.deepEqual(detail.day, {
        requests: 5,
        errors: 3,
        prompt_tokens: 140,
        completion_tokens: 75,
        cached_prompt_tokens: 20,
        reasoning_tokens: 10,
        total_tokens: 215,
        cost_nano_usd: 1700,
        unpriced_requests: 1,
        rate_limited: 1,
        first_active: '2026-11-22T09:00:00.000Z',
        last_active: '2026-11-22T13:00:00.000Z',
      });
      assert.deepEqual(detail.month, {
        requests: 6,
        errors: 4,
        prompt_tokens: 140,
        completion_tokens: 75,
        cached_prompt_tokens: 20,
        reasoning_tokens: 10,
        total_tokens: 215,
        cost_nano_usd: 1700,
        unpriced_requests: 1,
        rate_limited: 1,
        first_active: '2026-11-22T09:00:00.000Z',
        last_active: '2026-11-23T00:30:00.000Z',
      });
      assert.deepEqual(detail.all, {
        requests: 7,
        errors: 4,
        prompt_tokens: 141,
        completion_tokens: 76,
        cached_prompt_tokens: 20,
        reasoning_tokens: 10,
        total_tokens: 217,
        cost_nano_usd: 1707,
        unpriced_requests: 1,
        rate_limited: 1,
        first_active: '2026-10-31T23:59:59.999Z',
        last_active: '2026-11-23T00:30:00.000Z',
      });
      // Events without a model count in the totals but in no model's row.
      assert.deepEqual(detail.byModel, [
        { model: 'gpt-4o', requests: 4, total_tokens: 165, cost_nano_usd: 1700, unpriced_requests: 0 },
        { model: 'gpt-4o-mini', requests: 1, total_tokens: 2, cost_nano_usd: 7, unpriced_requests: 0 },
        { model: 'my-finetune', requests: 1, total_tokens: 50, cost_nano_usd: 0, unpriced_requests: 1 },
      ]);

      const otherDay = await store.getUser(user, '2026-11-23', '2026-10');
      assert.equal(otherDay?.day?.requests, 1);
      assert.equal(otherDay?.month?.requests, 1);
      assert.equal(otherDay?.month?.first_active, '2026-10-31T23:59:59.999Z');
    });

    it('moves first_active back and last_active forward whatever order the events arrive in', async () => {
      const user = 'out-of-order';
      const times = ['12:00', '08:00', '15:00', '10:00', '07:00', '14:59'].map((t) => `2026-11-22T${t}:00.000Z`);
      for (const ts of times) await store.record([usageEvent({ user_id: user, ts })]);
      const detail = await store.getUser(user, '2026-11-22', '2026-11');
      assert.equal(detail?.day?.requests, 6);
      assert.equal(detail?.day?.first_active, '2026-11-22T07:00:00.000Z');
      assert.equal(detail?.day?.last_active, '2026-11-22T15:00:00.000Z');
      assert.equal(detail?.all.first_active, '2026-11-22T07:00:00.000Z');
    });

    it('counts a request recorded twice once', async () => {
      const event = usageEvent({ user_id: 'twice', ...priced({ prompt: 3, completion: 4 }, 11) });
      await store.record([event]);
      await store.record([event]);
      await store.record([event, event]);
      const detail = await store.getUser('twice', '2026-11-22', '2026-11');
      assert.equal(detail?.all.requests, 1);
      assert.equal(detail?.all.total_tokens, 7);
      assert.equal(detail?.all.cost_nano_usd, 11);
      assert.equal(detail?.byModel[0]?.requests, 1);
    });

    it('counts a request once when 20 record() calls race with it', async () => {
      const event = usageEvent({ user_id: 'racing', ...priced({ prompt: 5, completion: 5 }, 3) });
      await Promise.all(Array.from({ length: 20 }, () => store.record([event])));
      const detail = await store.getUser('racing', '2026-11-22', '2026-11');
      assert.equal(detail?.day?.requests, 1);
      assert.equal(detail?.month?.cost_nano_usd, 3);
      assert.equal(detail?.all.total_tokens, 10);
    });

    it('marks a counted request as applied, with a TTL', async () => {
      const event = usageEvent({ user_id: 'marked' });
      await store.record([event]);
      const marker = await rawItem(db, `R#${event.request_id}`, 'R');
      assert.equal(marker?.['applied']?.BOOL, true);
      assert.ok(Number(marker?.[TTL_ATTRIBUTE]?.N) > Date.now() / 1000);
    });

    it('keeps requests without a user in their own bucket, reported as user null', async () => {
      await store.record([
        usageEvent({ user_id: null, ts: '2026-11-22T01:00:00.000Z' }),
        usageEvent({ user_id: null, ts: '2026-11-22T02:00:00.000Z' }),
      ]);
      const detail = await store.getUser(null, '2026-11-22', '2026-11');
      assert.equal(detail?.user_id, null);
      assert.equal(detail?.all.requests, 2);
      assert.ok(await rawItem(db, `U#${NO_USER}`, 'T#ALL'));
    });

    it('returns null for an unknown user, and null day or month for periods without requests', async () => {
      assert.equal(await store.getUser('nobody', '2026-11-22', '2026-11'), null);
      await store.record([usageEvent({ user_id: 'one-day', ts: '2026-11-20T00:00:00.000Z' })]);
      const detail = await store.getUser('one-day', '2026-11-21', '2026-12');
      assert.equal(detail?.day, null);
      assert.equal(detail?.month, null);
      assert.equal(detail?.all.requests, 1);
    });

    it('sets the TTL attribute on day and month totals only', async () => {
      await store.record([usageEvent({ user_id: 'ttl', ts: '2026-11-22T10:00:00.000Z' })]);
      const day = await rawItem(db, 'U#ttl', 'T#D#2026-11-22');
      const month = await rawItem(db, 'U#ttl', 'T#M#2026-11');
      const all = await rawItem(db, 'U#ttl', 'T#ALL');
      const model = await rawItem(db, 'U#ttl', 'M#gpt-4o');
      assert.equal(Number(day?.[TTL_ATTRIBUTE]?.N), Date.UTC(2026, 10, 22) / 1000 + DAY_TOTALS_TTL_DAYS * 86_400);
      assert.equal(Number(month?.[TTL_ATTRIBUTE]?.N), Date.UTC(2026, 10, 1) / 1000 + MONTH_TOTALS_TTL_DAYS * 86_400);
      assert.ok(all && !(TTL_ATTRIBUTE in all));
      assert.ok(model && !(TTL_ATTRIBUTE in model));
    });

    it('refuses a client whose SDK retries could replay an ADD', async () => {
      const retrying = new DynamoDbCounterStore({ client: db.newClient({ maxAttempts: 3 }), tableName: db.tableName });
      await assert.rejects(retrying.record([usageEvent({ user_id: 'never' })]), CounterStoreConfigError);
      assert.equal(await store.getUser('never', '2026-11-22', '2026-11'), null);
    });
  });

  describe('listUsers', () => {
    const DAY = '2026-05-04';
    const users: string[] = [];

    before(async () => {
      // 24 named users plus the no-user bucket, with deliberate ties in cost and requests.
      const events: UsageEvent[] = [];
      for (let i = 0; i < 24; i++) {
        const user = i % 7 === 0 ? `team#${i}` : `user-${String(i).padStart(2, '0')}`;
        users.push(user);
        const ts = new Date(Date.UTC(2026, 4, 4, 1, i)).toISOString();
        events.push(usageEvent({ user_id: user, ts, ...priced({ prompt: i * 10, completion: 5 }, (i % 6) * 1000) }));
        if (i % 3 === 0) events.push(usageEvent({ user_id: user, ts: '2026-05-04T00:00:00.000Z' }));
      }
      const anonymous = priced({ prompt: 1, completion: 1 }, 1);
      events.push(usageEvent({ user_id: null, ts: '2026-05-04T03:00:00.000Z', ...anonymous }));
      // Another day of the same month, for users that must not appear in the day's listing.
      events.push(usageEvent({ user_id: 'other-day', ts: '2026-05-05T00:00:00.000Z' }));
      await store.record(events);
    });

    const valueOf: Record<UserSort, (u: UserTotals) => number> = {
      cost: (u) => u.cost_nano_usd,
      requests: (u) => u.requests,
      tokens: (u) => u.total_tokens,
      last_active: (u) => Date.parse(u.last_active),
    };

    async function allPages(query: Omit<ListUsersQuery, 'cursor'>): Promise<UserTotals[]> {
      const seen: UserTotals[] = [];
      let cursor: string | undefined;
      for (let page = 0; page < 100; page++) {
        const result = await store.listUsers({ ...query, ...(cursor !== undefined && { cursor }) });
        assert.ok(result.users.length <= query.limit);
        // A cursor is only handed out when there is more: never an empty last page.
        assert.ok(page === 0 || result.users.length > 0, 'a cursor led to an empty page');
        seen.push(...result.users);
        if (result.nextCursor === null) return seen;
        cursor = result.nextCursor;
      }
      assert.fail('paging did not end');
    }

    for (const sort of ['cost', 'requests', 'tokens', 'last_active'] as const) {
      for (const order of ['asc', 'desc'] as const) {
        it(`pages through a day sorted by ${sort} ${order}, visiting each user exactly once`, async () => {
          const listed = await allPages({ period: 'day', periodKey: DAY, sort, order, limit: 4 });
          const ids = listed.map((u) => u.user_id);
          assert.equal(new Set(ids).size, ids.length, 'no user twice');
          assert.deepEqual(new Set(ids), new Set<string | null>([...users, null]));
          const values = listed.map(valueOf[sort]);
          for (let i = 1; i < values.length; i++) {
            const inOrder = order === 'asc' ? values[i - 1]! <= values[i]! : values[i - 1]! >= values[i]!;
            assert.ok(inOrder, `${sort} ${order} at ${i}`);
          }
        });
      }
    }

    it('lists month and all-time periods from the same events', async () => {
      const month = await allPages({
        period: 'month',
        periodKey: '2026-05',
        sort: 'requests',
        order: 'desc',
        limit: 10,
      });
      assert.ok(month.some((u) => u.user_id === 'other-day'));
      assert.equal(month.length, users.length + 2);
      assert.equal(month[0]?.requests, 2);
      const all = await allPages({ period: 'all', periodKey: 'ignored', sort: 'cost', order: 'desc', limit: 50 });
      assert.ok(all.some((u) => u.user_id === 'user-05'));
    });

    it('returns whole totals and ends with a null cursor when one page holds everyone', async () => {
      const page = await store.listUsers({ period: 'day', periodKey: DAY, sort: 'tokens', order: 'desc', limit: 100 });
      assert.equal(page.nextCursor, null);
      assert.equal(page.users.length, 25);
      assert.deepEqual(page.users[0], {
        user_id: 'user-23',
        requests: 1,
        errors: 0,
        prompt_tokens: 230,
        completion_tokens: 5,
        cached_prompt_tokens: 0,
        reasoning_tokens: 0,
        total_tokens: 235,
        cost_nano_usd: 5000,
        unpriced_requests: 0,
        rate_limited: 0,
        first_active: '2026-05-04T01:23:00.000Z',
        last_active: '2026-05-04T01:23:00.000Z',
      });
    });

    it('pages one user at a time', async () => {
      const listed = await allPages({ period: 'day', periodKey: DAY, sort: 'last_active', order: 'desc', limit: 1 });
      assert.equal(listed.length, 25);
      assert.equal(listed[0]?.user_id, null);
    });

    it('returns an empty last page for a day without requests', async () => {
      const page = await store.listUsers({
        period: 'day',
        periodKey: '2020-01-01',
        sort: 'cost',
        order: 'desc',
        limit: 5,
      });
      assert.deepEqual(page, { users: [], nextCursor: null });
    });

    it('rejects malformed cursors and cursors of another listing with 400 invalid_cursor', async () => {
      const base = { period: 'day', periodKey: DAY, sort: 'cost', order: 'desc', limit: 3 } as const;
      const first = await store.listUsers(base);
      assert.ok(first.nextCursor);
      const encode = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
      const state = JSON.parse(Buffer.from(first.nextCursor, 'base64url').toString()) as { k: unknown[] };
      const shards = state.k;
      const bad: [string, ListUsersQuery][] = [
        ['not base64url', { ...base, cursor: 'not a cursor!' }],
        ['empty', { ...base, cursor: '' }],
        ['not JSON', { ...base, cursor: Buffer.from('{{{').toString('base64url') }],
        ['wrong shape', { ...base, cursor: encode({ hello: 'world' }) }],
        ['wrong shard count', { ...base, cursor: encode({ ...state, k: [null] }) }],
        ['bad position', { ...base, cursor: encode({ ...state, k: shards.map(() => ['1e9', 'U#x']) }) }],
        ['not a user key', { ...base, cursor: encode({ ...state, k: shards.map(() => ['1', 'K#x']) }) }],
        ['other sort', { ...base, sort: 'requests', cursor: first.nextCursor }],
        ['other order', { ...base, order: 'asc', cursor: first.nextCursor }],
        ['other day', { ...base, periodKey: '2026-05-05', cursor: first.nextCursor }],
      ];
      for (const [why, query] of bad) {
        await assert.rejects(store.listUsers(query), (error: unknown) => {
          assert.ok(error instanceof BadRequestError, why);
          assert.equal(error.statusCode, 400);
          assert.equal(error.code, 'invalid_cursor');
          assert.equal(error.param, 'cursor');
          return true;
        });
      }
    });
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Failure handling, through a proxy in front of dynalite that injects DynamoDB's own error answers.
// ---------------------------------------------------------------------------------------------------------------

type Fault = 'throttle' | 'apply-then-500' | 'apply-then-reset' | undefined;

interface FaultProxy {
  readonly endpoint: string;
  /** Every operation seen, as `UpdateItem:T#ALL` (operation and sort key). */
  readonly seen: string[];
  decide: (operation: string, sk: string | undefined) => Fault;
  close(): Promise<void>;
}

async function startFaultProxy(target: string): Promise<FaultProxy> {
  const upstream = new URL(target);
  const proxy: FaultProxy = {
    endpoint: '',
    seen: [],
    decide: () => undefined,
    close: async () => {},
  };
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const operation = String(req.headers['x-amz-target']).split('.')[1] ?? '';
      const sk = (JSON.parse(body.toString()) as { Key?: { sk?: { S?: string } } }).Key?.sk?.S;
      proxy.seen.push(`${operation}:${sk ?? ''}`);
      const fault = proxy.decide(operation, sk);
      if (fault === 'throttle') {
        res.writeHead(400, { 'content-type': 'application/x-amz-json-1.0' });
        res.end(
          JSON.stringify({
            __type: 'com.amazonaws.dynamodb.v20120810#ThrottlingException',
            message: 'Throughput exceeds the current capacity for one or more global secondary indexes.',
          }),
        );
        return;
      }
      const forward = httpRequest(
        { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers },
        (answer) => {
          const answerChunks: Buffer[] = [];
          answer.on('data', (c: Buffer) => answerChunks.push(c));
          answer.on('end', () => {
            if (fault === 'apply-then-500') {
              res.writeHead(500, { 'content-type': 'application/x-amz-json-1.0' });
              res.end(
                JSON.stringify({
                  __type: 'com.amazonaws.dynamodb.v20120810#InternalServerError',
                  message: 'Internal server error',
                }),
              );
            } else if (fault === 'apply-then-reset') {
              res.socket?.destroy();
            } else {
              res.writeHead(answer.statusCode ?? 500, answer.headers);
              res.end(Buffer.concat(answerChunks));
            }
          });
        },
      );
      forward.end(body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return Object.assign(proxy, {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  });
}

describe('DynamoDbCounterStore under failures', () => {
  let db: LocalDynamoDb;
  let proxy: FaultProxy;
  let store: DynamoDbCounterStore;
  let direct: DynamoDbCounterStore;

  before(async () => {
    db = await startDynalite();
    proxy = await startFaultProxy(db.endpoint);
    const client = db.newClient({ endpoint: proxy.endpoint });
    store = new DynamoDbCounterStore({ client, tableName: db.tableName, retry: { ...noWait, maxAttempts: 4 } });
    direct = new DynamoDbCounterStore({ client: db.client, tableName: db.tableName });
  });
  after(async () => {
    await proxy.close();
    await db.close();
  });

  const allTimeAdds = () => proxy.seen.filter((s) => s === 'UpdateItem:T#ALL').length;

  it('retries a throttled update and counts the request once', async () => {
    let throttles = 2;
    proxy.decide = (op, sk) => (op === 'UpdateItem' && sk === 'T#ALL' && throttles-- > 0 ? 'throttle' : undefined);
    proxy.seen.length = 0;
    await store.record([usageEvent({ user_id: 'throttled', ...priced({ prompt: 1, completion: 1 }, 5) })]);
    assert.equal(allTimeAdds(), 3, 'two throttled attempts and one that landed');
    const detail = await direct.getUser('throttled', '2026-11-22', '2026-11');
    assert.equal(detail?.all.requests, 1);
    assert.equal(detail?.all.cost_nano_usd, 5);
    assert.equal(detail?.day?.requests, 1);
  });

  it('gives up on a request throttled through every attempt, removes its marker, and can record it later', async () => {
    proxy.decide = (op) => (op === 'UpdateItem' ? 'throttle' : undefined);
    const event = usageEvent({ user_id: 'always-throttled' });
    await assert.rejects(store.record([event]), (error: unknown) => {
      assert.ok(error instanceof CounterWriteError);
      assert.deepEqual(error.requestIds, [event.request_id]);
      assert.equal(error.failures[0]?.outcome, 'not_applied');
      return true;
    });
    assert.equal(await rawItem(db, `R#${event.request_id}`, 'R'), undefined);
    proxy.decide = () => undefined;
    await store.record([event]);
    assert.equal((await direct.getUser('always-throttled', '2026-11-22', '2026-11'))?.all.requests, 1);
  });

  for (const fault of ['apply-then-500', 'apply-then-reset'] as const) {
    it(`does not retry an update whose outcome is unknown (${fault}) and names the request`, async () => {
      const user = `ambiguous-${fault}`;
      proxy.decide = (op, sk) => (op === 'UpdateItem' && sk === 'T#ALL' ? fault : undefined);
      proxy.seen.length = 0;
      const event = usageEvent({ user_id: user, ...priced({ prompt: 2, completion: 2 }, 9) });
      await assert.rejects(store.record([event]), (error: unknown) => {
        assert.ok(error instanceof CounterWriteError);
        assert.deepEqual(error.requestIds, [event.request_id]);
        assert.equal(error.failures[0]?.outcome, 'uncertain');
        assert.match(error.message, new RegExp(event.request_id));
        return true;
      });
      assert.equal(allTimeAdds(), 1, 'sent once, never replayed');
      proxy.decide = () => undefined;

      // The update did land once; recording the request again must not add it a second time.
      await store.record([event]);
      const detail = await direct.getUser(user, '2026-11-22', '2026-11');
      assert.equal(detail?.all.requests, 1);
      assert.equal(detail?.all.cost_nano_usd, 9);
      const marker = await rawItem(db, `R#${event.request_id}`, 'R');
      assert.equal(marker?.['applied']?.BOOL, false, 'left for the reconcile to find');
    });
  }

  it('reports a failure of one event without losing the others of the batch', async () => {
    proxy.decide = (op, sk) => (op === 'UpdateItem' && sk === 'T#M#2026-01' ? 'apply-then-500' : undefined);
    const fine = usageEvent({ user_id: 'batch', ts: '2026-02-01T00:00:00.000Z' });
    const broken = usageEvent({ user_id: 'batch', ts: '2026-01-15T00:00:00.000Z' });
    await assert.rejects(store.record([fine, broken]), (error: unknown) => {
      assert.ok(error instanceof CounterWriteError);
      assert.deepEqual(error.requestIds, [broken.request_id]);
      return true;
    });
    proxy.decide = () => undefined;
    assert.equal((await direct.getUser('batch', '2026-02-01', '2026-02'))?.month?.requests, 1);
  });
});

describe('classifyDynamoDbFailure', () => {
  const serviceError = (name: string, status: number) =>
    Object.assign(new Error(name), { name, $metadata: { httpStatusCode: status } });

  it('retries throttling, which DynamoDB documents as not applied', () => {
    for (const name of ['ThrottlingException', 'ProvisionedThroughputExceededException', 'RequestLimitExceeded']) {
      assert.equal(classifyDynamoDbFailure(serviceError(name, 400)), 'retryable', name);
    }
  });

  it('treats other 4xx answers as rejected and 5xx answers as ambiguous', () => {
    assert.equal(classifyDynamoDbFailure(serviceError('ValidationException', 400)), 'rejected');
    assert.equal(classifyDynamoDbFailure(serviceError('InternalServerError', 500)), 'ambiguous');
    assert.equal(classifyDynamoDbFailure(serviceError('ServiceUnavailable', 503)), 'ambiguous');
  });

  it('retries failures before sending, but not timeouts or resets after it', () => {
    assert.equal(classifyDynamoDbFailure(Object.assign(new Error('connect'), { code: 'ECONNREFUSED' })), 'retryable');
    assert.equal(classifyDynamoDbFailure(Object.assign(new Error('dns'), { code: 'ENOTFOUND' })), 'retryable');
    const reset = Object.assign(new Error('socket hang up'), { name: 'TimeoutError', code: 'ECONNRESET' });
    assert.equal(classifyDynamoDbFailure(reset), 'ambiguous');
    const timeout = Object.assign(new Error('a request has exceeded the configured 3000 ms requestTimeout'), {
      name: 'TimeoutError',
    });
    assert.equal(classifyDynamoDbFailure(timeout), 'ambiguous');
  });

  it('recognises a refused connection from the real client as retryable', async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const db = await startDynalite();
    try {
      const client = db.newClient({ endpoint: `http://127.0.0.1:${port}` });
      const error = await client
        .send(new GetItemCommand({ TableName: 't', Key: { pk: { S: 'a' }, sk: { S: 'b' } } }))
        .then(() => undefined, (e: unknown) => e);
      assert.equal(classifyDynamoDbFailure(error), 'retryable');
    } finally {
      await db.close();
    }
  });
});
