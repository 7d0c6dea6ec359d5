import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { generateEvents } from '../../bench/generate-events';
import { usageQuerySql } from '../../lambda/core/history-sql';
import { DuckDbHistoryStore } from '../../lambda/local/duckdb-history-store';
import { listEventFiles, readEvents } from '../../lambda/local/event-files';

describe('generateEvents', () => {
  it('writes one sorted Parquet file a day that the history store reads, duplicates counted once', async () => {
    const out = await mkdtemp(join(tmpdir(), 'synthetic-'));
    try {
      const log = await generateEvents({ events: 2000, days: 2, users: 10, out, lastDay: '2026-05-02', duplicateShare: 0.01 });
      assert.deepEqual([log.firstDay, log.lastDay, log.rows], ['2026-05-01', '2026-05-02', 2020]);
      assert.deepEqual((await listEventFiles(out)).map((f) => [f.dt, f.format]), [
        ['2026-05-01', 'parquet'],
        ['2026-05-02', 'parquet'],
      ]);
      const ids = new Set<string>();
      let rows = 0;
      for await (const event of readEvents(out)) {
        rows++;
        ids.add(event.request_id);
        assert.match(event.user_id ?? '', /^user-000(0[1-9]|10)$/);
        assert.ok(event.ts.startsWith('2026-05-0'));
      }
      assert.deepEqual([rows, ids.size], [2020, 2000]);
      const history = await DuckDbHistoryStore.open({ dataDir: out });
      try {
        const result = await history.execute(
          usageQuerySql({ from: '2026-05-01', to: '2026-05-02', groupBy: 'model', sort: 'requests', order: 'desc', limit: 10 }, 'duckdb', 'events'),
          0,
        );
        assert.equal(result.state === 'done' && result.rows.reduce((n, r) => n + Number(r.requests), 0), 2000);
      } finally {
        await history.close();
      }
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });
});
