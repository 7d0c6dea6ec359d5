/**
 * History queries answered by DuckDB straight from the local event files: the NDJSON segments the
 * {@link FileEventSink} writes and the Parquet files compaction makes of them (`event-compaction.ts`), in the same
 * `dt=` directories. The statements come from the one builder in `core/history-sql.ts`, which Athena runs too.
 */
import { NotFoundError } from '../core/errors';
import { exportSql, type ExportCursor } from '../core/history-sql';
import type {
  EventExport,
  EventExportQuery,
  HistoryResult,
  HistoryRow,
  HistoryStatement,
  HistoryStore,
  HistoryValue,
} from '../core/ports';
import type { UsageEvent } from '../core/usage-event';
import { openDuckDb, sqlStringLiteral, type DuckDb, type DuckDbSession } from './duckdb';
import { listEventFiles, type EventFile } from './event-files';

export interface DuckDbHistoryStoreOptions {
  /** Root data directory; events are read from `${dataDir}/events/dt=*`. */
  readonly dataDir: string;
  /** A database to share (the store only creates a temp view on its own session); default: a private in-memory one. */
  readonly db?: DuckDb;
  /** Events per page of a streamed export. @default 5000 */
  readonly exportPageSize?: number;
}

/** The event columns with the types they are read as, identical for NDJSON and Parquet files. */
export const EVENT_SCHEMA: readonly (readonly [column: string, type: string])[] = [
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
 * const result = await history.execute(userSeriesSql(query, history.dialect, history.source), 0); // always done
 */
export class DuckDbHistoryStore implements HistoryStore {
  readonly dialect = 'duckdb' as const;
  /** The temp view each statement reads, rebuilt per statement over the files of its days. */
  readonly source = 'events';

  private constructor(
    private readonly dataDir: string,
    private readonly session: DuckDbSession,
    private readonly ownedDb: DuckDb | null,
    private readonly exportPageSize: number,
  ) {}

  static async open(options: DuckDbHistoryStoreOptions): Promise<DuckDbHistoryStore> {
    const ownedDb = options.db ? null : await openDuckDb(':memory:');
    try {
      const session = await (options.db ?? (ownedDb as DuckDb)).session({ longRunning: true });
      return new DuckDbHistoryStore(options.dataDir, session, ownedDb, Math.max(1, options.exportPageSize ?? 5000));
    } catch (error) {
      await ownedDb?.close();
      throw error;
    }
  }

  /** Answers right away: local files are read in-process, so `waitMs` never matters. */
  async execute(statement: HistoryStatement, _waitMs: number): Promise<HistoryResult<HistoryRow>> {
    const rows = await this.query(statement.days, statement);
    return {
      state: 'done',
      rows: rows.map((row) => Object.fromEntries(Object.entries(row).map(([column, value]) => [column, toHistoryValue(value)]))),
    };
  }

  /** Local queries never keep running, so there is no query id to look up. */
  async queryResult(queryId: string): Promise<HistoryResult<HistoryRow>> {
    throw notRunning(queryId);
  }

  async exportResult(queryId: string): Promise<EventExport> {
    throw notRunning(queryId);
  }

  /**
   * Streams the events day by day and, within a day, in pages of `exportPageSize` that resume after the last
   * event of the previous page: memory stays flat however long the range. A request's copies share their day, so
   * deduplicating within a day is complete.
   */
  async exportEvents(query: EventExportQuery, _waitMs: number): Promise<EventExport> {
    // Validates the query now, so a bad one is a 400 before the stream starts.
    const days = exportSql(query, this.dialect, this.source).days;
    return { state: 'streaming', events: this.exportPages(query, days) };
  }

  private async *exportPages(query: EventExportQuery, days: HistoryStatement['days']): AsyncGenerator<UsageEvent> {
    for (let day = days.from; day <= days.to; day = nextDay(day)) {
      let after: ExportCursor | null = null;
      for (;;) {
        const page = exportSql(query, this.dialect, this.source, { page: { after, limit: this.exportPageSize } });
        const rows = await this.query({ from: day, to: day }, page);
        for (const row of rows) yield toUsageEvent(row);
        if (rows.length < this.exportPageSize) break;
        const last = rows[rows.length - 1]!;
        after = { ts: String(last.ts), requestId: String(last.request_id) };
      }
    }
  }

  async close(): Promise<void> {
    await this.session.close();
    await this.ownedDb?.close();
  }

  /**
   * Runs a statement over the files of `days`. The view is rebuilt per statement (new segments appear all the
   * time), under the session's lock so concurrent statements never see each other's view. A file that compaction
   * removed between the listing and the read fails the read; the listing is then taken again, once.
   */
  private async query(days: HistoryStatement['days'], statement: HistoryStatement): Promise<Record<string, unknown>[]> {
    for (let attempt = 1; ; attempt++) {
      const files = await listEventFiles(this.dataDir, days);
      // No files, no view to build: the result is empty (an aggregate's one row of zeros is the caller's default).
      if (files.length === 0) return [];
      try {
        return await this.session.exclusive(async (db) => {
          await db.run(`CREATE OR REPLACE TEMP VIEW events AS ${eventsRelationSql(files)}`);
          return db.all(statement.sql, [...statement.params]);
        });
      } catch (error) {
        if (attempt >= 2 || !/no such file|not found|does not exist/i.test(String((error as Error).message))) throw error;
      }
    }
  }
}

function notRunning(queryId: string): NotFoundError {
  return new NotFoundError('query_not_found', `No history query ${JSON.stringify(queryId.slice(0, 100))} is running.`, {
    param: 'query_id',
  });
}

function nextDay(day: string): string {
  return new Date(Date.parse(`${day}T00:00:00Z`) + 86_400_000).toISOString().slice(0, 10);
}

/** A row of the export statement (or of an event file) as the UsageEvent it stores. */
export function toUsageEvent(row: Record<string, unknown>): UsageEvent {
  const properties: Record<string, string> = {};
  const map = row.properties;
  if (Array.isArray(map)) {
    for (const entry of map as { key: unknown; value: unknown }[]) {
      if (typeof entry?.key === 'string' && typeof entry.value === 'string') properties[entry.key] = entry.value;
    }
  }
  const n = (column: string) => Number(row[column] ?? 0);
  const nullableNumber = (column: string) => (row[column] === null || row[column] === undefined ? null : Number(row[column]));
  const s = (column: string) => (row[column] === null || row[column] === undefined ? null : String(row[column]));
  return {
    v: n('v'),
    request_id: String(row.request_id),
    ts: String(row.ts),
    user_id: s('user_id'),
    properties,
    provider: String(row.provider ?? ''),
    model: s('model'),
    path: String(row.path ?? ''),
    method: String(row.method ?? ''),
    status: n('status'),
    stream: row.stream === true,
    latency_ms: n('latency_ms'),
    ttft_ms: nullableNumber('ttft_ms'),
    prompt_tokens: n('prompt_tokens'),
    completion_tokens: n('completion_tokens'),
    cached_prompt_tokens: n('cached_prompt_tokens'),
    reasoning_tokens: n('reasoning_tokens'),
    total_tokens: n('total_tokens'),
    cost_usd: nullableNumber('cost_usd'),
    cost_nano_usd: nullableNumber('cost_nano_usd'),
    cost_source: String(row.cost_source) as UsageEvent['cost_source'],
    usage_source: String(row.usage_source) as UsageEvent['usage_source'],
    error: s('error'),
    key_id: s('key_id'),
  };
}

/** Events per page when reading a Parquet event file. */
const PARQUET_PAGE_ROWS = 10_000;

/**
 * Reads the events of one Parquet event file in pages of rows (by their position in the file), so memory stays
 * flat however large the file.
 * @example for await (const event of readParquetEvents(path)) …
 */
export async function* readParquetEvents(path: string): AsyncGenerator<UsageEvent> {
  const db = await openDuckDb(':memory:');
  try {
    const columns = EVENT_SCHEMA.map(([column, type]) => `CAST(${column} AS ${type}) AS ${column}`).join(', ');
    // The path is our own directory listing, quoted as a literal: table functions take no parameters in DuckDB.
    const relation = `read_parquet(${sqlStringLiteral(path)}, file_row_number = true)`;
    for (let start = 0; ; start += PARQUET_PAGE_ROWS) {
      const rows = await db.all(
        `SELECT ${columns} FROM ${relation} WHERE file_row_number >= ? AND file_row_number < ? ORDER BY file_row_number`,
        [start, start + PARQUET_PAGE_ROWS],
      );
      for (const row of rows) if (row.request_id !== null) yield toUsageEvent(row);
      if (rows.length < PARQUET_PAGE_ROWS) return;
    }
  } finally {
    await db.close();
  }
}

/** Narrows a DuckDB value to what a history row holds. */
export function toHistoryValue(value: unknown): HistoryValue {
  if (value === null || value === undefined) return null;
  if (typeof value === 'number' || typeof value === 'string') return value;
  return String(value);
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
