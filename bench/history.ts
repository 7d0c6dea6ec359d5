/**
 * History analysis benchmark: the local engine (DuckDB over the compacted Parquet event log) on a synthetic log of
 * ten million events, 90 days, 5,000 users (`generate-events.ts`). The headline is the per-user 30-day daily
 * series, which should answer in under a second; the other history queries are timed alongside.
 *
 * The log is generated once into a cache directory under the OS temp dir and reused while its parameters are the
 * same (generating it takes a few minutes).
 *
 * @example
 * const rows = await historyBench();          // markdown table rows: | query | median (p95) | target |
 * npx tsx bench/history.ts                    // prints the table
 */
import { access, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  anomaliesSql,
  distributionSql,
  userSeriesSql,
  userSummarySql,
  usageQuerySql,
} from '../lambda/core/history-sql';
import type { HistoryStatement } from '../lambda/core/ports';
import { DuckDbHistoryStore } from '../lambda/local/duckdb-history-store';
import { generateEvents, syntheticUserId } from './generate-events';

export interface HistoryBenchOptions {
  /** @default 10000000 */
  readonly events?: number;
  /** @default 90 */
  readonly days?: number;
  /** @default 5000 */
  readonly users?: number;
  /** Where the synthetic log lives. @default a cache directory under the OS temp dir */
  readonly dataDir?: string;
  /** Timed runs per query (after one warm-up). @default 9 */
  readonly runs?: number;
  /** Progress messages. @default none */
  readonly progress?: (message: string) => void;
}

/** The table header the rows fit. */
export const HISTORY_BENCH_HEADER = ['history query (local, DuckDB)', 'median (p95)', 'target'] as const;

/** The last day of the synthetic log: fixed, so the cache stays valid from one day to the next. */
const LAST_DAY = '2026-11-20';
/** What a per-user 30-day series must beat. */
const SERIES_TARGET_MS = 1000;

/**
 * Runs the benchmark and returns markdown table rows (`| … | … | … |`) under {@link HISTORY_BENCH_HEADER}.
 */
export async function historyBench(options: HistoryBenchOptions = {}): Promise<string[]> {
  const events = options.events ?? 10_000_000;
  const days = options.days ?? 90;
  const users = options.users ?? 5000;
  const runs = Math.max(1, options.runs ?? 9);
  const progress = options.progress ?? (() => undefined);
  const dataDir = options.dataDir ?? join(tmpdir(), `llm-usage-gateway-history-${events}-${days}-${users}`);

  const marker = join(dataDir, 'synthetic.json');
  const wanted = JSON.stringify({ events, days, users, lastDay: LAST_DAY, version: 1 });
  const cached = await readFile(marker, 'utf8').catch(() => null);
  if (cached !== wanted) {
    progress(`generating ${events.toLocaleString('en-US')} synthetic events into ${dataDir}…`);
    await rm(join(dataDir, 'events'), { recursive: true, force: true });
    await generateEvents({ events, days, users, out: dataDir, lastDay: LAST_DAY });
    await writeFile(marker, wanted);
  }
  await access(join(dataDir, 'events'));

  const history = await DuckDbHistoryStore.open({ dataDir });
  const from30 = new Date(Date.parse(`${LAST_DAY}T00:00:00Z`) - 29 * 86_400_000).toISOString().slice(0, 10);
  const window = { from: from30, to: LAST_DAY, tzOffsetMinutes: 0 };
  // Users across the activity range: the busiest, typical ones and the quietest.
  const sample = [1, 2, 10, 50, 200, 1000, Math.floor(users / 2), users - 1, users].map((i) => syntheticUserId(i, users));
  const rows: string[] = [];
  try {
    const measure = async (label: string, statements: readonly HistoryStatement[], target?: (p95: number) => string) => {
      progress(`history: ${label}`);
      await history.execute(statements[0]!, 0); // warm-up: file metadata and the OS page cache
      const times: number[] = [];
      for (let i = 0; i < runs; i++) {
        const statement = statements[i % statements.length]!;
        const started = performance.now();
        await history.execute(statement, 0);
        times.push(performance.now() - started);
      }
      times.sort((a, b) => a - b);
      const at = (p: number) => times[Math.min(times.length - 1, Math.ceil(p * times.length) - 1)]!;
      rows.push(`| ${label} | ${seconds(at(0.5))} (${seconds(at(0.95))}) | ${target?.(at(0.95)) ?? ''} |`);
    };
    const scale = `${(events / 1e6).toLocaleString('en-US')}M events, ${days} days, ${users.toLocaleString('en-US')} users`;
    await measure(
      `30-day daily series of one user (${scale})`,
      sample.map((userId) => userSeriesSql({ ...window, userId, interval: 'day' }, 'duckdb', history.source)),
      (p95) => `< 1 s: ${p95 < SERIES_TARGET_MS ? 'met' : 'MISSED'}`,
    );
    await measure(
      '30-day hourly series of one user, by model, in +05:30',
      sample.map((userId) => userSeriesSql({ ...window, tzOffsetMinutes: 330, userId, interval: 'hour', groupBy: 'model' }, 'duckdb', history.source)),
    );
    await measure('30-day summary of one user', sample.map((userId) => userSummarySql({ ...window, userId }, 'duckdb', history.source)));
    await measure('30-day totals per user, top 100 by cost', [
      usageQuerySql({ from: window.from, to: window.to, groupBy: 'user', sort: 'cost', order: 'desc', limit: 100 }, 'duckdb', history.source),
    ]);
    await measure('30-day totals per plan (property)', [
      usageQuerySql({ from: window.from, to: window.to, groupBy: { property: 'plan' }, sort: 'cost', order: 'desc', limit: 100 }, 'duckdb', history.source),
    ]);
    await measure('30-day cost distribution across users', [distributionSql({ ...window, metric: 'cost' }, 'duckdb', history.source)]);
    await measure('anomalies of one day (14-day baselines, plan cohorts)', [
      anomaliesSql({ date: LAST_DAY, tzOffsetMinutes: 0, factor: 3, minRequests: 100, minCostNanoUsd: 1e9, cohortProperty: 'plan' }, 'duckdb', history.source),
    ]);
  } finally {
    await history.close();
  }
  return rows;
}

function seconds(ms: number): string {
  return ms < 1000 ? `${ms.toFixed(0)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

if (require.main === module) {
  historyBench({ progress: (message) => process.stderr.write(`${message}\n`) })
    .then((rows) => {
      process.stdout.write(`| ${HISTORY_BENCH_HEADER.join(' | ')} |\n| --- | ---: | --- |\n${rows.join('\n')}\n`);
    })
    .catch((error: unknown) => {
      process.stderr.write(`${error instanceof Error ? error.stack : String(error)}\n`);
      process.exitCode = 1;
    });
}
