import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { LimitCounter } from '../../lambda/core/ports';
import { openDuckDb } from '../../lambda/local/duckdb';
import { COUNTER_GRACE_MS, DuckDbLimitStore } from '../../lambda/local/duckdb-limit-store';

const T0 = Date.UTC(2026, 10, 22, 10);

function windowOf(segment: string, windowStart = T0): LimitCounter {
  return { kind: 'window', segment, unit: 'request', windowSeconds: 60, windowStart };
}

const budgetOf = (userId: string | null): LimitCounter => ({ kind: 'budget', userId, month: '2026-11' });

let dir: string;
let clock = T0;
const now = () => clock;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'limit-store-'));
});
after(() => rm(dir, { recursive: true, force: true }));

describe('DuckDbLimitStore.charge', () => {
  let store: DuckDbLimitStore;
  before(async () => {
    store = await DuckDbLimitStore.open({ path: ':memory:', now });
  });
  after(() => store.close());

  it('adds while the counter stays within its limit and reports the value after', async () => {
    const counter = windowOf('user:a');
    assert.deepEqual(await store.charge([{ counter, amount: 1, limit: 2 }]), { admitted: true, fits: [true], used: [1] });
    assert.deepEqual(await store.charge([{ counter, amount: 1, limit: 2 }]), { admitted: true, fits: [true], used: [2] });
    assert.deepEqual(await store.charge([{ counter, amount: 1, limit: 2 }]), { admitted: false, fits: [false], used: [2] });
  });

  it('is all or nothing: when one counter is full, none is charged', async () => {
    const window = windowOf('user:b');
    const budget = budgetOf('b');
    const result = await store.charge([
      { counter: window, amount: 1, limit: 10 },
      { counter: budget, amount: 500, limit: 400 },
    ]);
    assert.deepEqual(result, { admitted: false, fits: [true, false], used: [0, 0] });
    assert.deepEqual(await store.read([window, budget]), [0, 0]);
  });

  it('counts without a cap when the limit is null, and allows negative adjustments', async () => {
    const budget = budgetOf(null);
    await store.charge([{ counter: budget, amount: 5_000_000_000_000, limit: null }]);
    await store.adjust([{ counter: budget, amount: -1 }]);
    assert.deepEqual(await store.read([budget]), [4_999_999_999_999]);
  });

  it('never lets concurrent charges pass a limit', async () => {
    const counter = windowOf('user:crowd');
    const results = await Promise.all(Array.from({ length: 200 }, () => store.charge([{ counter, amount: 1, limit: 37 }])));
    assert.equal(results.filter((r) => r.admitted).length, 37);
    assert.deepEqual(await store.read([counter]), [37]);
  });

  it('keeps user limits and forgets them again', async () => {
    await store.putLimits('u1', { monthlyBudgetNanoUsd: 7, updatedAt: 't' });
    assert.deepEqual(await store.getLimits('u1'), { monthlyBudgetNanoUsd: 7, updatedAt: 't' });
    await store.putLimits('u1', null);
    assert.equal(await store.getLimits('u1'), null);
  });
});

describe('DuckDbLimitStore on a database file', () => {
  it('resumes counters and limits after a restart', async () => {
    const path = join(dir, 'resume.duckdb');
    const first = await DuckDbLimitStore.open({ path, now });
    await first.charge([{ counter: windowOf('user:r'), amount: 3, limit: 10 }]);
    await first.adjust([{ counter: budgetOf('r'), amount: 123 }]);
    await first.putLimits('r', { rateLimits: ['5;w=60;u=request;s=user'], blocked: true, updatedAt: 't' });
    await first.close();

    const second = await DuckDbLimitStore.open({ path, now });
    assert.deepEqual(await second.read([windowOf('user:r'), budgetOf('r')]), [3, 123]);
    assert.deepEqual(await second.getLimits('r'), { rateLimits: ['5;w=60;u=request;s=user'], blocked: true, updatedAt: 't' });
    assert.equal((await second.charge([{ counter: windowOf('user:r'), amount: 8, limit: 10 }])).admitted, false);
    await second.close();
  });

  it('writes changed counters behind to the limit_counters table', async () => {
    const path = join(dir, 'behind.duckdb');
    const store = await DuckDbLimitStore.open({ path, now, flushIntervalMs: 60_000 });
    const db = await openDuckDb(path);
    const saved = () => db.all<{ used: number }>('SELECT used FROM limit_counters');
    await store.charge([{ counter: windowOf('user:w'), amount: 1, limit: 5 }]);
    assert.deepEqual(await saved(), []);
    await store.flush();
    assert.deepEqual(await saved(), [{ used: 1 }]);
    await db.close();
    await store.close();
  });

  it('drops counters an hour after their window ends, and does not revive them when settling late', async () => {
    const path = join(dir, 'expiry.duckdb');
    clock = T0;
    const first = await DuckDbLimitStore.open({ path, now });
    await first.charge([{ counter: windowOf('user:x'), amount: 2, limit: 5 }]);
    await first.close();

    // Still there within the grace period: a late settlement must find it.
    clock = T0 + 60_000 + COUNTER_GRACE_MS - 1;
    const second = await DuckDbLimitStore.open({ path, now });
    assert.deepEqual(await second.read([windowOf('user:x')]), [2]);
    await second.close();

    clock = T0 + 60_000 + COUNTER_GRACE_MS;
    const third = await DuckDbLimitStore.open({ path, now });
    assert.deepEqual(await third.read([windowOf('user:x')]), [0]);
    await third.adjust([{ counter: windowOf('user:x'), amount: -2 }]);
    assert.deepEqual(await third.read([windowOf('user:x')]), [0]);
    await third.close();
    clock = T0;
  });

  it('refuses calls once closed', async () => {
    const store = await DuckDbLimitStore.open({ path: ':memory:', now });
    await store.close();
    await assert.rejects(store.charge([{ counter: windowOf('user:z'), amount: 1, limit: 1 }]), /closed/);
  });
});
