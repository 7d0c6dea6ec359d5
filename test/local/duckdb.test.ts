import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openDuckDb, toSafeNumber, type DuckDb } from '../../lambda/local/duckdb';

describe('openDuckDb', () => {
  let dir: string;
  let db: DuckDb;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'duckdb-'));
    db = await openDuckDb(':memory:');
    await db.run('CREATE TABLE totals (user_id VARCHAR PRIMARY KEY, cost BIGINT)');
  });
  after(async () => {
    await db.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('binds positional parameters as values, never as SQL', async () => {
    const hostile = "bob'); DROP TABLE totals; --";
    await db.run('INSERT INTO totals VALUES (?, ?), (?, ?)', ['alice', 5, hostile, 7]);
    const rows = await db.all<{ user_id: string; cost: number }>('SELECT * FROM totals WHERE user_id = ?', [hostile]);
    assert.deepEqual(rows, [{ user_id: hostile, cost: 7 }]);
    assert.equal((await db.all('SELECT * FROM totals')).length, 2, 'the table is still there');
  });

  it('returns BIGINT and HUGEINT results as JS numbers', async () => {
    const [row] = await db.all<Record<string, unknown>>(
      'SELECT count(*) AS n, sum(cost) AS total, CAST(? AS BIGINT) AS big FROM totals',
      [2 ** 40],
    );
    assert.deepEqual(row, { n: 2, total: 12, big: 2 ** 40 });
  });

  it('refuses a total a JS number cannot hold exactly', async () => {
    await assert.rejects(db.all('SELECT CAST(9007199254740993 AS HUGEINT) AS too_big'), RangeError);
    assert.throws(() => toSafeNumber(-(2n ** 60n)), RangeError);
    assert.equal(toSafeNumber(2n ** 53n - 1n), Number.MAX_SAFE_INTEGER);
  });

  it('runs exactly one statement per call', async () => {
    await assert.rejects(db.run("SELECT 1; DELETE FROM totals WHERE user_id = 'alice'"), /multiple statements/);
    assert.equal((await db.all('SELECT * FROM totals WHERE user_id = ?', ['alice'])).length, 1);
  });

  it('rolls a transaction back when its function throws', async () => {
    await assert.rejects(
      db.transaction(async (tx) => {
        await tx.run('UPDATE totals SET cost = cost + 100 WHERE user_id = ?', ['alice']);
        throw new Error('boom');
      }),
      /boom/,
    );
    const [row] = await db.all<{ cost: number }>('SELECT cost FROM totals WHERE user_id = ?', ['alice']);
    assert.equal(row.cost, 5);
    // The session is usable again afterwards.
    await db.transaction((tx) => tx.run('UPDATE totals SET cost = cost + 1 WHERE user_id = ?', ['alice']));
    const [after] = await db.all<{ cost: number }>('SELECT cost FROM totals WHERE user_id = ?', ['alice']);
    assert.equal(after.cost, 6);
  });

  it('keeps a transaction free of statements issued meanwhile on the same session', async () => {
    const order: string[] = [];
    const tx = db.transaction(async (t) => {
      await t.run('UPDATE totals SET cost = 0 WHERE user_id = ?', ['alice']);
      order.push('tx-body');
      throw new Error('undo');
    });
    const read = db.all<{ cost: number }>('SELECT cost FROM totals WHERE user_id = ?', ['alice']).then((rows) => {
      order.push('read');
      return rows;
    });
    await assert.rejects(tx, /undo/);
    assert.deepEqual(await read, [{ cost: 6 }], 'the read saw neither the uncommitted nor the rolled back update');
    assert.deepEqual(order, ['tx-body', 'read']);
  });

  it('shares one instance between handles on the same file, open until the last one closes', async () => {
    const path = join(dir, 'shared.duckdb');
    const first = await openDuckDb(path);
    const second = await openDuckDb(path);
    await first.run('CREATE TABLE t (n INTEGER)');
    await first.run('INSERT INTO t VALUES (?)', [1]);
    assert.deepEqual(await second.all('SELECT n FROM t'), [{ n: 1 }]);
    await first.close();
    assert.deepEqual(await second.all('SELECT n FROM t'), [{ n: 1 }]);
    const session = await second.session();
    assert.deepEqual(await session.all('SELECT count(*) AS c FROM t'), [{ c: 1 }]);
    await second.close();
    await assert.rejects(session.all('SELECT 1'), /closed/);

    const reopened = await openDuckDb(path);
    assert.deepEqual(await reopened.all('SELECT n FROM t'), [{ n: 1 }], 'the data was persisted');
    await reopened.close();
  });
});
