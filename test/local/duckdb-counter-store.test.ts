import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BadRequestError } from '../../lambda/core/errors';
import type { ListUsersQuery, UsageTotals, UserSort, UserTotals } from '../../lambda/core/ports';
import type { UsageEvent } from '../../lambda/core/usage-event';
import {
  DuckDbCounterStore,
  isGatewayRateLimited,
  type DuckDbCounterStoreOptions,
} from '../../lambda/local/duckdb-counter-store';
import { openDuckDb } from '../../lambda/local/duckdb';
import { priced, sampleEvent } from '../support/usage-events';

function usageEvent(request_id: string, ts: string, overrides: Partial<UsageEvent> = {}): UsageEvent {
  return sampleEvent({ request_id, ts, ...overrides });
}


/** A hand-checked set across a month boundary: errors, an unpriced model, both kinds of 429, no user. */
const EVENTS: readonly UsageEvent[] = [
  usageEvent('e1', '2026-03-31T10:00:00.000Z', { ...priced(100, 50, 1000), cached_prompt_tokens: 20 }),
  usageEvent('e2', '2026-03-31T12:00:00.000Z', { ...priced(10, 5, 30), model: 'gpt-4o-mini', reasoning_tokens: 2 }),
  usageEvent('e3', '2026-04-01T00:00:00.000Z', {
    ...priced(7, 3, 0),
    model: 'mystery-model',
    cost_nano_usd: null,
    cost_usd: null,
    cost_source: 'unknown_model',
  }),
  usageEvent('e4', '2026-04-01T01:00:00.000Z', { model: null, status: 429, error: 'rate_limited' }),
  usageEvent('e5', '2026-04-01T02:00:00.000Z', { user_id: 'bob', status: 429, error: 'upstream_rate_limited' }),
  usageEvent('e6', '2026-04-01T03:00:00.000Z', {
    ...priced(40, 10, 500),
    user_id: null,
    error: 'stream_interrupted',
    usage_source: 'partial',
  }),
  usageEvent('e7', '2026-03-31T09:00:00.000Z', { ...priced(1000, 0, 2500), user_id: 'bob' }),
];

const ZERO: Omit<UsageTotals, 'first_active' | 'last_active'> = {
  requests: 0,
  errors: 0,
  prompt_tokens: 0,
  completion_tokens: 0,
  cached_prompt_tokens: 0,
  reasoning_tokens: 0,
  total_tokens: 0,
  cost_nano_usd: 0,
  unpriced_requests: 0,
  rate_limited: 0,
};

async function* asAsync<T>(items: readonly T[]): AsyncIterable<T> {
  yield* items;
}

describe('DuckDbCounterStore', () => {
  let dir: string;
  let n = 0;
  const stores: DuckDbCounterStore[] = [];
  const open = async (options: Partial<DuckDbCounterStoreOptions> = {}) => {
    const store = await DuckDbCounterStore.open({ path: join(dir, `counters-${++n}.duckdb`), ...options });
    stores.push(store);
    return store;
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'duckdb-counters-'));
  });
  after(async () => {
    for (const store of stores) await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  describe('totals', () => {
    let store: DuckDbCounterStore;
    before(async () => {
      store = await open();
      await store.record(EVENTS);
    });

    it('adds each event to its user’s day, month and all-time totals, exactly', async () => {
      const alice = await store.getUser('alice', '2026-03-31', '2026-04');
      assert.deepEqual(alice, {
        user_id: 'alice',
        day: {
          ...ZERO,
          requests: 2,
          prompt_tokens: 110,
          completion_tokens: 55,
          cached_prompt_tokens: 20,
          reasoning_tokens: 2,
          total_tokens: 165,
          cost_nano_usd: 1030,
          first_active: '2026-03-31T10:00:00.000Z',
          last_active: '2026-03-31T12:00:00.000Z',
        },
        month: {
          ...ZERO,
          requests: 2,
          errors: 1,
          prompt_tokens: 7,
          completion_tokens: 3,
          total_tokens: 10,
          unpriced_requests: 1,
          rate_limited: 1,
          first_active: '2026-04-01T00:00:00.000Z',
          last_active: '2026-04-01T01:00:00.000Z',
        },
        all: {
          ...ZERO,
          requests: 4,
          errors: 1,
          prompt_tokens: 117,
          completion_tokens: 58,
          cached_prompt_tokens: 20,
          reasoning_tokens: 2,
          total_tokens: 175,
          cost_nano_usd: 1030,
          unpriced_requests: 1,
          rate_limited: 1,
          first_active: '2026-03-31T10:00:00.000Z',
          last_active: '2026-04-01T01:00:00.000Z',
        },
        byModel: [
          { model: 'gpt-4o', requests: 1, total_tokens: 150, cost_nano_usd: 1000, unpriced_requests: 0 },
          { model: 'gpt-4o-mini', requests: 1, total_tokens: 15, cost_nano_usd: 30, unpriced_requests: 0 },
          { model: 'mystery-model', requests: 1, total_tokens: 10, cost_nano_usd: 0, unpriced_requests: 1 },
        ],
      });
    });

    it('counts a provider’s 429 as an error but not as rate limited by the gateway', async () => {
      const bob = await store.getUser('bob', '2026-04-01', '2026-04');
      assert.deepEqual(bob?.day, {
        ...ZERO,
        requests: 1,
        errors: 1,
        first_active: '2026-04-01T02:00:00.000Z',
        last_active: '2026-04-01T02:00:00.000Z',
      });
      assert.equal(bob?.all.requests, 2);
      assert.equal(bob?.all.cost_nano_usd, 2500);
      assert.equal(isGatewayRateLimited({ status: 429, error: 'rate_limited' }), true);
      assert.equal(isGatewayRateLimited({ status: 429, error: 'upstream_rate_limited' }), false);
    });

    it('keeps requests that named no user in a bucket reported as null', async () => {
      const none = await store.getUser(null, '2026-04-01', '2026-04');
      assert.equal(none?.user_id, null);
      assert.deepEqual(none?.all, {
        ...ZERO,
        requests: 1,
        errors: 1,
        prompt_tokens: 40,
        completion_tokens: 10,
        total_tokens: 50,
        cost_nano_usd: 500,
        first_active: '2026-04-01T03:00:00.000Z',
        last_active: '2026-04-01T03:00:00.000Z',
      });
      const page = await store.listUsers({ period: 'all', periodKey: '', sort: 'cost', order: 'desc', limit: 10 });
      assert.deepEqual(
        page.users.map((u) => [u.user_id, u.cost_nano_usd]),
        [
          ['bob', 2500],
          ['alice', 1030],
          [null, 500],
        ],
      );
      assert.equal(page.nextCursor, null);
    });

    it('answers null for a user it has never seen, and null periods for quiet days', async () => {
      assert.equal(await store.getUser('carol', '2026-04-01', '2026-04'), null);
      const alice = await store.getUser('alice', '2026-05-01', '2026-05');
      assert.equal(alice?.day, null);
      assert.equal(alice?.month, null);
      assert.equal(alice?.all.requests, 4);
    });
  });

  describe('idempotency', () => {
    it('counts a request recorded twice in one batch once', async () => {
      const store = await open();
      await store.record([EVENTS[0], EVENTS[0], EVENTS[1]]);
      assert.equal((await store.getUser('alice', '2026-03-31', '2026-03'))?.all.requests, 2);
    });

    it('counts a request recorded again in a later batch once', async () => {
      const store = await open();
      await store.record([EVENTS[0]]);
      await store.record([EVENTS[0], EVENTS[1]]);
      await Promise.all([store.record([EVENTS[1]]), store.record([EVENTS[1]])]);
      const alice = await store.getUser('alice', '2026-03-31', '2026-03');
      assert.equal(alice?.all.requests, 2);
      assert.equal(alice?.day?.cost_nano_usd, 1030);
    });

    it('remembers counted requests across a restart', async () => {
      const path = join(dir, 'restart.duckdb');
      const now = () => Date.parse('2026-04-01T12:00:00.000Z');
      const first = await DuckDbCounterStore.open({ path, now });
      await first.record(EVENTS);
      await first.close();
      const second = await open({ path, now });
      await second.record(EVENTS);
      assert.equal((await second.getUser('alice', '2026-03-31', '2026-03'))?.all.requests, 4);
    });

    it('forgets request ids once they are older than the retention window', async () => {
      const path = join(dir, 'retention.duckdb');
      const first = await DuckDbCounterStore.open({ path, now: () => Date.parse('2026-04-01T12:00:00.000Z') });
      await first.record([EVENTS[0]]);
      await first.close();
      const later = await open({ path, now: () => Date.parse('2026-04-04T10:00:01.000Z') });
      await later.record([EVENTS[0]]);
      assert.equal((await later.getUser('alice', '2026-03-31', '2026-03'))?.all.requests, 2);
    });

    it('applies many concurrent record() calls, each counted once', async () => {
      const store = await open();
      const events = Array.from({ length: 300 }, (_, i) =>
        usageEvent(`c${i}`, `2026-04-01T10:00:${String(i % 60).padStart(2, '0')}.000Z`, {
          ...priced(1, 1, 7),
          user_id: `user-${i % 3}`,
        }),
      );
      await Promise.all(events.map((event) => store.record([event])));
      const page = await store.listUsers({ period: 'day', periodKey: '2026-04-01', sort: 'requests', order: 'desc', limit: 10 });
      assert.deepEqual(
        page.users.map((u) => [u.user_id, u.requests, u.cost_nano_usd]),
        [
          ['user-2', 100, 700],
          ['user-1', 100, 700],
          ['user-0', 100, 700],
        ],
      );
    });

    it('rejects every record() of a failed transaction and applies none of it, so a retry counts once', async () => {
      const db = await openDuckDb(join(dir, 'faulty.duckdb'));
      const store = await DuckDbCounterStore.open({ db });
      try {
        // The per-model table goes missing: the transaction fails after the request ids were written.
        await db.run('ALTER TABLE model_totals RENAME TO model_totals_away');
        const results = await Promise.allSettled([store.record([EVENTS[0]]), store.record([EVENTS[1]])]);
        assert.deepEqual(
          results.map((r) => r.status),
          ['rejected', 'rejected'],
        );
        await db.run('ALTER TABLE model_totals_away RENAME TO model_totals');
        assert.equal(await store.getUser('alice', '2026-03-31', '2026-03'), null, 'nothing of the batch was applied');
        await store.record([EVENTS[0], EVENTS[1]]);
        assert.equal((await store.getUser('alice', '2026-03-31', '2026-03'))?.all.requests, 2);
      } finally {
        await store.close();
        await db.close();
      }
    });

    it('rejects an event no total can be built from right away, without failing the others', async () => {
      const store = await open();
      const others = store.record([EVENTS[0]]);
      await assert.rejects(store.record([usageEvent('x', 'yesterday')]), TypeError);
      await assert.rejects(store.record([usageEvent('y', '2026-04-01T00:00:00.000Z', { prompt_tokens: 1.5 })]), TypeError);
      await assert.rejects(
        store.record([usageEvent('z', '2026-04-01T00:00:00.000Z', { cost_nano_usd: Number.MAX_VALUE })]),
        TypeError,
      );
      await others;
      assert.equal((await store.getUser('alice', '2026-03-31', '2026-03'))?.all.requests, 1);
    });
  });

  describe('listUsers', () => {
    let store: DuckDbCounterStore;
    const USERS = 23;
    before(async () => {
      store = await open();
      const events: UsageEvent[] = [];
      for (let u = 0; u < USERS; u++) {
        const user = u === 0 ? null : `user-${String(u).padStart(2, '0')}`;
        // Few distinct values per sort key, so ties (broken by user id) run across page boundaries.
        for (let r = 0; r <= u % 3; r++) {
          events.push(
            usageEvent(`u${u}-r${r}`, `2026-04-0${1 + (u % 4)}T0${u % 2}:00:00.000Z`, {
              ...priced(u % 5, 1, (u % 4) * 100),
              user_id: user,
            }),
          );
        }
      }
      await store.record(events);
    });

    const sortValue = (user: UserTotals, sort: UserSort) =>
      sort === 'cost'
        ? user.cost_nano_usd
        : sort === 'requests'
          ? user.requests
          : sort === 'tokens'
            ? user.total_tokens
            : user.last_active;

    for (const sort of ['cost', 'requests', 'tokens', 'last_active'] as const) {
      for (const order of ['asc', 'desc'] as const) {
        it(`pages through every user exactly once sorted by ${sort} ${order}`, async () => {
          const seen: UserTotals[] = [];
          let cursor: string | undefined;
          let pages = 0;
          do {
            const page = await store.listUsers({ period: 'all', periodKey: '', sort, order, limit: 4, cursor });
            seen.push(...page.users);
            cursor = page.nextCursor ?? undefined;
            assert.ok(++pages <= USERS, 'paging ends');
          } while (cursor !== undefined);

          const ids = seen.map((user) => user.user_id);
          assert.equal(new Set(ids).size, USERS, 'no user twice');
          assert.equal(ids.length, USERS, 'every user');
          assert.equal(pages, Math.ceil(USERS / 4));
          const sign = order === 'asc' ? 1 : -1;
          // Ties are broken by user id in the same direction (the no-user bucket's key sorts before every id).
          const idKey = (user: UserTotals) => user.user_id ?? '\u0000';
          for (let i = 1; i < seen.length; i++) {
            const [a, b] = [sortValue(seen[i - 1], sort), sortValue(seen[i], sort)];
            const [x, y] = [idKey(seen[i - 1]), idKey(seen[i])];
            const inOrder = a === b ? (x < y ? sign > 0 : sign < 0) : a < b ? sign > 0 : sign < 0;
            assert.ok(inOrder, `row ${i} is out of ${sort} ${order} order`);
          }
        });
      }
    }

    it('lists a day’s users only', async () => {
      const page = await store.listUsers({ period: 'day', periodKey: '2026-04-02', sort: 'requests', order: 'desc', limit: 50 });
      assert.ok(page.users.length > 0);
      for (const user of page.users) assert.ok(user.first_active.startsWith('2026-04-02'));
    });

    it('rejects a malformed or foreign cursor with invalid_cursor', async () => {
      const query: ListUsersQuery = { period: 'all', periodKey: '', sort: 'cost', order: 'desc', limit: 4 };
      const first = await store.listUsers(query);
      const other = await store.listUsers({ ...query, sort: 'requests' });
      const forged = Buffer.from(JSON.stringify({ p: 'ALL', s: 'cost', o: 'desc', v: "1' OR 1=1", u: 'x' })).toString(
        'base64url',
      );
      for (const cursor of ['not a cursor!', Buffer.from('{nope').toString('base64url'), other.nextCursor ?? '', forged]) {
        await assert.rejects(
          store.listUsers({ ...query, cursor }),
          (error: unknown) =>
            error instanceof BadRequestError && error.code === 'invalid_cursor' && error.param === 'cursor',
          `cursor ${cursor}`,
        );
      }
      assert.ok(first.nextCursor);
    });
  });

  describe('rebuildFrom', () => {
    /** Every row the store can report for the EVENTS days, months and users. */
    async function snapshot(store: DuckDbCounterStore) {
      const periods: [ListUsersQuery['period'], string][] = [
        ['day', '2026-03-31'],
        ['day', '2026-04-01'],
        ['month', '2026-03'],
        ['month', '2026-04'],
        ['all', ''],
      ];
      const lists = [];
      for (const [period, periodKey] of periods) {
        lists.push(await store.listUsers({ period, periodKey, sort: 'cost', order: 'desc', limit: 100 }));
      }
      const users = [];
      for (const id of ['alice', 'bob', null]) users.push(await store.getUser(id, '2026-04-01', '2026-03'));
      return { lists, users };
    }

    it('recomputes a day range so every total equals recording each logged event once', async () => {
      const expected = await open();
      await expected.record(EVENTS);

      const drifted = await open({ now: () => Date.parse('2026-04-01T12:00:00.000Z') });
      await drifted.record(EVENTS);
      // Drift: a request counted that never reached the log, on the day being rebuilt.
      await drifted.record([usageEvent('ghost', '2026-04-01T05:00:00.000Z', { ...priced(9, 9, 99999), model: 'ghost' })]);
      assert.notDeepEqual(await snapshot(drifted), await snapshot(expected));

      const logOfDay = EVENTS.filter((event) => event.ts.startsWith('2026-04-01'));
      // The log may hold a request twice (at-least-once delivery) and a neighbour day's events.
      await drifted.rebuildFrom(asAsync([...logOfDay, logOfDay[0], EVENTS[0]]), { from: '2026-04-01', to: '2026-04-01' });
      assert.deepEqual(await snapshot(drifted), await snapshot(expected));
      assert.deepEqual(
        (await drifted.getUser('alice', '2026-04-01', '2026-04'))?.byModel.map((m) => m.model),
        ['gpt-4o', 'gpt-4o-mini', 'mystery-model'],
        'the ghost model is gone from the all-time per-model totals',
      );

      // A retried record() of a logged, recent request does not count it a second time.
      await drifted.record([logOfDay[1]]);
      assert.deepEqual(await snapshot(drifted), await snapshot(expected));
    });

    it('builds the whole store from the log alone', async () => {
      const expected = await open();
      await expected.record(EVENTS);
      const rebuilt = await open();
      await rebuilt.rebuildFrom(asAsync([...EVENTS].reverse()), { from: '2026-03-01', to: '2026-04-30' });
      assert.deepEqual(await snapshot(rebuilt), await snapshot(expected));
    });
  });
});
