/**
 * A synthetic usage event log, written straight to Parquet in the local layout
 * (`<dataDir>/events/dt=YYYY-MM-DD/part-synthetic.parquet`, one file per day, sorted by user and time, as
 * compaction writes them), for benchmarks and scan-size estimates.
 *
 * The events are generated inside DuckDB from hashes of the event number, so the same options always give the same
 * log; ten million events take about three minutes on two cores, most of it sorting and compressing. The shape
 * mimics real traffic: a few users make most requests (the user is picked with a squared uniform draw), four
 * models, a `plan` and a `feature` property, streamed and non-streamed answers, provider and gateway errors, an
 * unpriced model, and a share of requests logged twice (Firehose's at-least-once delivery) that every query must
 * count once.
 *
 * @example
 * npx tsx bench/generate-events.ts --events 10000000 --days 90 --users 5000 --out /tmp/history-bench
 */
import { mkdir, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { openDuckDb, sqlStringLiteral } from '../lambda/local/duckdb';
import { COMPACTED_ROW_GROUP_SIZE } from '../lambda/local/event-compaction';
import { partitionDir } from '../lambda/local/event-files';

export interface GenerateEventsOptions {
  /** Distinct requests to generate (duplicates come on top). */
  readonly events: number;
  readonly days: number;
  readonly users: number;
  /** Data directory to write `events/` into; existing synthetic files of the same days are replaced. */
  readonly out: string;
  /** Last day generated, `YYYY-MM-DD`. @default yesterday (UTC) */
  readonly lastDay?: string;
  /** Share of requests that appear twice in the log. @default 0.005 */
  readonly duplicateShare?: number;
  /** Changes every random draw. @default 1 */
  readonly seed?: number;
}

export interface GeneratedLog {
  readonly firstDay: string;
  readonly lastDay: string;
  /** Rows written, duplicates included. */
  readonly rows: number;
  readonly files: number;
  readonly bytes: number;
  /** Users in the log, e.g. `user-00042`. */
  readonly userIds: (index: number) => string;
}

/** The users' ids: `user-` and a zero-padded number from 1. */
export function syntheticUserId(index: number, users: number): string {
  return `user-${String(index).padStart(Math.max(5, String(users).length), '0')}`;
}

/**
 * Writes the synthetic log and returns what it wrote.
 * @example const log = await generateEvents({ events: 1_000_000, days: 30, users: 1000, out: dataDir });
 */
export async function generateEvents(options: GenerateEventsOptions): Promise<GeneratedLog> {
  const { events, days, users } = options;
  for (const [name, value] of [
    ['events', events],
    ['days', days],
    ['users', users],
  ] as const) {
    if (!Number.isSafeInteger(value) || value < 1) throw new RangeError(`${name} must be a positive integer`);
  }
  const lastDay = options.lastDay ?? new Date(Date.now() - 86_400_000).toISOString().slice(0, 10);
  const firstDay = new Date(Date.parse(`${lastDay}T00:00:00Z`) - (days - 1) * 86_400_000).toISOString().slice(0, 10);
  const duplicateEvery = Math.max(1, Math.round(1 / Math.max(1e-9, options.duplicateShare ?? 0.005)));
  const seed = Math.trunc(options.seed ?? 1);
  const pad = Math.max(5, String(users).length);
  const db = await openDuckDb(':memory:');
  let rows = 0;
  let bytes = 0;
  try {
    const perDay = Math.ceil(events / days);
    for (let d = 0; d < days; d++) {
      const first = d * perDay;
      const last = Math.min(events, first + perDay);
      if (first >= last) break;
      const dt = new Date(Date.parse(`${firstDay}T00:00:00Z`) + d * 86_400_000).toISOString().slice(0, 10);
      const dir = partitionDir(resolve(options.out), dt);
      await mkdir(dir, { recursive: true });
      const file = join(dir, 'part-synthetic.parquet');
      await rm(file, { force: true });
      // u(i, k): a uniform draw in [0, 1) from the event number, the seed and a salt per attribute.
      const u = (salt: string) => `((hash(i, ${seed}, '${salt}') % 1000000) / 1000000.0)`;
      const user = `CAST(floor(pow(${u('user')}, 2) * ${users}) AS BIGINT) + 1`;
      const sql = `
        WITH base AS (
          SELECT i,
            md5(CAST(i AS VARCHAR) || '-${seed}') AS h,
            ${user} AS user_index,
            CAST(floor(${u('ts')} * 86400000) AS BIGINT) AS ms,
            CAST(floor(${u('model')} * 100) AS INTEGER) AS model_draw,
            CAST(floor(${u('status')} * 1000) AS INTEGER) AS status_draw,
            50 + CAST(floor(pow(${u('prompt')}, 3) * 4000) AS BIGINT) AS prompt_tokens,
            10 + CAST(floor(pow(${u('completion')}, 2) * 1000) AS BIGINT) AS completion_tokens,
            150 + CAST(floor(pow(${u('latency')}, 2) * 6000) AS BIGINT) AS latency_ms,
            ${u('stream')} < 0.5 AS stream
          FROM range(${first}, ${last}) t(i)
        ), shaped AS (
          SELECT b.*,
            CASE WHEN b.model_draw < 55 THEN 'gpt-4o-mini' WHEN b.model_draw < 85 THEN 'gpt-4o'
                 WHEN b.model_draw < 99 THEN 'o3-mini' ELSE 'in-house-model' END AS model,
            CASE WHEN b.status_draw < 3 THEN 429 WHEN b.status_draw < 8 THEN 500 WHEN b.status_draw < 28 THEN 429 ELSE 200 END AS status,
            CASE WHEN b.status_draw < 3 THEN 'rate_limited' WHEN b.status_draw < 8 THEN 'upstream_500'
                 WHEN b.status_draw < 28 THEN 'upstream_rate_limited' ELSE NULL END AS error
          FROM base b
        ), events AS (
          SELECT
            1 AS v,
            concat_ws('-', substr(h, 1, 8), substr(h, 9, 4), substr(h, 13, 4), substr(h, 17, 4), substr(h, 21, 12)) AS request_id,
            strftime(TIMESTAMP '${dt} 00:00:00' + to_milliseconds(ms), '%Y-%m-%dT%H:%M:%S.%g') || 'Z' AS ts,
            'user-' || lpad(CAST(user_index AS VARCHAR), ${pad}, '0') AS user_id,
            MAP(['plan', 'feature'], [
              CASE WHEN hash(user_index, ${seed}, 'plan') % 10 < 6 THEN 'free' WHEN hash(user_index, ${seed}, 'plan') % 10 < 9 THEN 'pro' ELSE 'enterprise' END,
              CASE WHEN model_draw % 3 = 0 THEN 'search' ELSE 'chat' END]) AS properties,
            'openai' AS provider,
            model,
            '/v1/chat/completions' AS path,
            'POST' AS method,
            CAST(status AS INTEGER) AS status,
            stream,
            CAST(CASE WHEN status = 200 THEN latency_ms ELSE latency_ms / 10 END AS DOUBLE) AS latency_ms,
            CAST(CASE WHEN status = 200 THEN latency_ms / 4 ELSE NULL END AS DOUBLE) AS ttft_ms,
            CASE WHEN status = 200 THEN prompt_tokens ELSE 0 END AS prompt_tokens,
            CASE WHEN status = 200 THEN completion_tokens ELSE 0 END AS completion_tokens,
            CAST(0 AS BIGINT) AS cached_prompt_tokens,
            CASE WHEN status = 200 AND model = 'o3-mini' THEN completion_tokens / 2 ELSE 0 END AS reasoning_tokens,
            CASE WHEN status = 200 THEN prompt_tokens + completion_tokens ELSE 0 END AS total_tokens,
            error
          FROM shaped
        ), priced AS (
          SELECT e.*,
            CASE WHEN e.status <> 200 THEN CAST(0 AS BIGINT)
                 WHEN e.model = 'in-house-model' THEN CAST(NULL AS BIGINT)
                 WHEN e.model = 'gpt-4o' THEN e.prompt_tokens * 2500 + e.completion_tokens * 10000
                 WHEN e.model = 'o3-mini' THEN e.prompt_tokens * 1100 + e.completion_tokens * 4400
                 ELSE e.prompt_tokens * 150 + e.completion_tokens * 600 END AS cost_nano_usd
          FROM events e
        )
        SELECT v, request_id, ts, user_id, properties, provider, model, path, method, status, stream, latency_ms, ttft_ms,
          prompt_tokens, completion_tokens, cached_prompt_tokens, reasoning_tokens, total_tokens,
          CAST(cost_nano_usd AS DOUBLE) / 1e9 AS cost_usd, cost_nano_usd,
          CASE WHEN cost_nano_usd IS NULL THEN 'unknown_model' WHEN status <> 200 THEN 'no_usage' ELSE 'genai-prices' END AS cost_source,
          CASE WHEN status = 200 THEN 'provider' ELSE 'none' END AS usage_source,
          error,
          'a1b2c3d4e5f6' AS key_id
        FROM priced`;
      // Every duplicateEvery-th request is in the log twice, as Firehose may deliver it.
      await db.run(
        `COPY (SELECT * FROM (${sql}) UNION ALL SELECT * FROM (${sql.replace(`range(${first}, ${last})`, `range(${first}, ${last}, ${duplicateEvery})`)}) ` +
          `ORDER BY user_id, ts) TO ${sqlStringLiteral(file)} ` +
          `(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE ${COMPACTED_ROW_GROUP_SIZE})`,
      );
      rows += last - first + Math.ceil((last - first) / duplicateEvery);
      bytes += (await stat(file)).size;
    }
  } finally {
    await db.close();
  }
  return { firstDay, lastDay, rows, files: days, bytes, userIds: (index) => syntheticUserId(index, users) };
}

function argValue(args: readonly string[], name: string): string | undefined {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const out = argValue(args, 'out');
  if (out === undefined) {
    process.stderr.write('usage: tsx bench/generate-events.ts --out <dataDir> [--events 10000000] [--days 90] [--users 5000] [--last-day YYYY-MM-DD] [--seed 1]\n');
    process.exitCode = 2;
    return;
  }
  const started = performance.now();
  const lastDay = argValue(args, 'last-day');
  const log = await generateEvents({
    events: Number(argValue(args, 'events') ?? 10_000_000),
    days: Number(argValue(args, 'days') ?? 90),
    users: Number(argValue(args, 'users') ?? 5000),
    out,
    seed: Number(argValue(args, 'seed') ?? 1),
    ...(lastDay === undefined ? {} : { lastDay }),
  });
  process.stdout.write(
    `${log.rows} rows in ${log.files} Parquet files (${(log.bytes / 1e6).toFixed(1)} MB), ${log.firstDay}..${log.lastDay}, ` +
      `in ${((performance.now() - started) / 1000).toFixed(1)} s\n`,
  );
}

if (require.main === module) {
  main().catch((error: unknown) => {
    process.stderr.write(`${error instanceof Error ? error.stack : String(error)}\n`);
    process.exitCode = 1;
  });
}
