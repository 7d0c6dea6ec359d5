/**
 * History queries answered by DuckDB straight from the local event files: the NDJSON segments the
 * {@link FileEventSink} writes and, when a compaction step has produced them, Parquet files in the same `dt=`
 * directories. The SQL is the same builder Athena runs ({@link usageQuerySql}), so both answer alike.
 */
import { NotFoundError } from '../core/errors';
import { usageQuerySql } from '../core/history-sql';
import type { HistoryResult, HistoryStore, UsageGroupRow, UsageQuery } from '../core/ports';
import { openDuckDb, sqlStringLiteral, type DuckDb, type DuckDbSession } from './duckdb';
import { listEventFiles, type EventFile } from './event-files';

export interface DuckDbHistoryStoreOptions {
  /** Root data directory; events are read from `${dataDir}/events/dt=*`. */
  readonly dataDir: string;
  /** A database to share (the store only creates a temp view on its own session); default: a private in-memory one. */
  readonly db?: DuckDb;
}

/** The event columns with the types they are read as, identical for NDJSON and Parquet files. */
const EVENT_SCHEMA: readonly (readonly [column: string, type: string])[] = [
  ['v', 'INTEGER'],
  ['request_id', 'VARCHAR'],
  ['ts', 'VARCHAR'],
  ['user_id', 'VARCHAR'],
  ['properties', 'MAP(VARCHAR, VARCHAR)'],
  ['provider', 'VARCHAR'],
  ['model', 'VARCHAR'],
  ['path', 'VARCHAR'],
  ['method', 'VARCHAR'],
  ['status', 'INTEGER'],
  ['stream', 'BOOLEAN'],
  ['latency_ms', 'DOUBLE'],
  ['ttft_ms', 'DOUBLE'],
  ['prompt_tokens', 'BIGINT'],
  ['completion_tokens', 'BIGINT'],
  ['cached_prompt_tokens', 'BIGINT'],
  ['reasoning_tokens', 'BIGINT'],
  ['total_tokens', 'BIGINT'],
  ['cost_usd', 'DOUBLE'],
  ['cost_nano_usd', 'BIGINT'],
  ['cost_source', 'VARCHAR'],
  ['usage_source', 'VARCHAR'],
  ['error', 'VARCHAR'],
  ['key_id', 'VARCHAR'],
];

const SELECT_COLUMNS = [...EVENT_SCHEMA.map(([column]) => column), 'dt'].join(', ');
const HIVE_OPTIONS = "hive_partitioning = true, hive_types = {'dt': 'VARCHAR'}";

/**
 * @example
 * const history = await DuckDbHistoryStore.open({ dataDir });
 * const result = await history.usage({ from: '2026-11-01', to: '2026-11-30', groupBy: 'user', sort: 'cost',
 *   order: 'desc', limit: 20 }, 0);   // always { state: 'done', rows }
 */
export class DuckDbHistoryStore implements HistoryStore {
  private constructor(
    private readonly dataDir: string,
    private readonly session: DuckDbSession,
    private readonly ownedDb: DuckDb | null,
  ) {}

  static async open(options: DuckDbHistoryStoreOptions): Promise<DuckDbHistoryStore> {
    const ownedDb = options.db ? null : await openDuckDb(':memory:');
    try {
      const session = await (options.db ?? (ownedDb as DuckDb)).session();
      return new DuckDbHistoryStore(options.dataDir, session, ownedDb);
    } catch (error) {
      await ownedDb?.close();
      throw error;
    }
  }

  /** Answers right away: local files are small enough that `waitMs` never matters. */
  async usage(query: UsageQuery, _waitMs: number): Promise<HistoryResult<UsageGroupRow>> {
    const statement = usageQuerySql(query, 'duckdb', 'events');
    const files = await listEventFiles(this.dataDir, { from: query.from, to: query.to });
    if (files.length === 0) return { state: 'done', rows: [] };
    // The view names the files of this query's days only; it is rebuilt per query (new segments appear all the
    // time), under the session's lock so concurrent queries never see each other's view.
    const rows = await this.session.exclusive(async (db) => {
      await db.run(`CREATE OR REPLACE TEMP VIEW events AS ${eventsRelationSql(files)}`);
      return db.all<UsageGroupRow>(statement.sql, [...statement.params]);
    });
    return { state: 'done', rows: rows.map(toGroupRow) };
  }

  /** Local queries never keep running, so there is no query id to look up. */
  async queryResult(queryId: string): Promise<HistoryResult<UsageGroupRow>> {
    throw new NotFoundError('query_not_found', `No history query ${JSON.stringify(queryId)} is running.`, {
      param: 'query_id',
    });
  }

  async close(): Promise<void> {
    await this.session.close();
    await this.ownedDb?.close();
  }
}

/**
 * The events of the given files as one relation. NDJSON segments are read with an explicit schema and
 * `ignore_errors`, which turns a torn last line into a row of NULLs; those rows are dropped by the `request_id`
 * filter. Paths are spliced as quoted literals because table functions in a view take no parameters; they come
 * from our own directory listing, not from a request.
 */
export function eventsRelationSql(files: readonly EventFile[]): string {
  const list = (format: EventFile['format']) =>
    `[${files
      .filter((file) => file.format === format)
      .map((file) => sqlStringLiteral(file.path))
      .join(', ')}]`;
  const parts: string[] = [];
  if (files.some((file) => file.format === 'ndjson')) {
    const columns = EVENT_SCHEMA.map(([column, type]) => `${column}: '${type}'`).join(', ');
    parts.push(
      `SELECT ${SELECT_COLUMNS} FROM read_json(${list('ndjson')}, format = 'newline_delimited', ` +
        `ignore_errors = true, ${HIVE_OPTIONS}, columns = {${columns}}) WHERE request_id IS NOT NULL`,
    );
  }
  if (files.some((file) => file.format === 'parquet')) {
    const columns = EVENT_SCHEMA.map(([column, type]) => `CAST(${column} AS ${type}) AS ${column}`).join(', ');
    parts.push(
      `SELECT ${columns}, dt FROM read_parquet(${list('parquet')}, ${HIVE_OPTIONS}, union_by_name = true) ` +
        'WHERE request_id IS NOT NULL',
    );
  }
  return parts.join(' UNION ALL ');
}

function toGroupRow(row: UsageGroupRow): UsageGroupRow {
  return {
    group: row.group,
    requests: row.requests,
    errors: row.errors,
    users: row.users,
    prompt_tokens: row.prompt_tokens,
    completion_tokens: row.completion_tokens,
    total_tokens: row.total_tokens,
    cost_nano_usd: row.cost_nano_usd,
    unpriced_requests: row.unpriced_requests,
  };
}
