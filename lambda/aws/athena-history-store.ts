/**
 * History queries on AWS: statements built in core (`core/history-sql.ts`) run in Athena over the Parquet event
 * log that Firehose writes. Exports are written by Athena to the results bucket and handed out as pre-signed S3
 * links: CSV is the query's own result file; NDJSON is an `UNLOAD … WITH (format = 'JSON')` into a fresh prefix.
 */
import { randomUUID } from 'node:crypto';
import {
  GetQueryExecutionCommand,
  GetQueryResultsCommand,
  StartQueryExecutionCommand,
  type AthenaClient,
  type ColumnInfo,
  type QueryExecution,
  type Row,
} from '@aws-sdk/client-athena';
import { GetObjectCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { BadRequestError, GatewayError, NotFoundError, UpstreamError } from '../core/errors';
import { exportSql } from '../core/history-sql';
import { describeError, type Logger } from '../core/log';
import type {
  EventExport,
  EventExportQuery,
  ExportFile,
  HistoryResult,
  HistoryRow,
  HistoryStatement,
  HistoryStore,
  HistoryValue,
} from '../core/ports';

export interface AthenaHistoryStoreOptions {
  readonly athena: AthenaClient;
  /** Work group the queries run in; it holds the result location and the scan limits. */
  readonly workGroup: string;
  /** Glue database and table of the event log. */
  readonly database: string;
  readonly table: string;
  readonly log: Logger;
  /** S3 client for exports: lists the files an export wrote and pre-signs links to them. */
  readonly s3?: S3Client;
  /** Bucket of the work group's query results (exports are written under `results/exports/` there). */
  readonly resultsBucket?: string;
  /** How long export links stay valid, in seconds. @default 900 */
  readonly linkExpirySeconds?: number;
  /** First wait between status polls. @default 100 */
  readonly pollInitialMs?: number;
  /** Longest wait between status polls; each wait is 1.6 times the last. @default 2000 */
  readonly pollMaxMs?: number;
  /** @default setTimeout-based sleep */
  readonly sleep?: (ms: number) => Promise<void>;
  /** @default Date.now */
  readonly now?: () => number;
}

/** Athena accepts at most 1,024 characters per execution parameter. */
export const MAX_EXECUTION_PARAMETER_LENGTH = 1024;
/** Identical queries within this many minutes reuse the earlier result instead of scanning again. */
const RESULT_REUSE_MINUTES = 5;
const POLL_GROWTH = 1.6;
/** Athena query execution ids are UUIDs. */
const QUERY_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** Database and table names the usage SQL takes as a quoted identifier: letters, digits and underscores. */
const GLUE_NAME = /^[A-Za-z0-9_]{1,255}$/;
/** Athena column types read back as numbers; everything else stays text. */
const NUMERIC_TYPES = new Set(['tinyint', 'smallint', 'integer', 'int', 'bigint', 'real', 'float', 'double', 'decimal']);
/** Key prefix of NDJSON exports in the results bucket: inside `results/`, which the work group may write. */
export const EXPORT_PREFIX = 'results/exports/';
/** An UNLOAD statement this store wrote, and the prefix it wrote to. */
const UNLOAD_TARGET = /\) TO 's3:\/\/([a-z0-9.-]{3,63})\/(results\/exports\/[0-9a-f-]{36}\/)' WITH \(format = 'JSON', compression = 'GZIP'\)$/;
/** How every export statement starts (see `exportSql`); a query id whose SQL does not is not an export. */
const EXPORT_SELECT = /^(?:UNLOAD \(\n)?SELECT e\.v, e\.request_id, e\.ts, /;

/**
 * Turns a query value into an Athena execution parameter. Athena reads each parameter as SQL, not as a value, so
 * it must be exactly one literal: a string is wrapped in single quotes with every single quote inside doubled
 * (Trino has no backslash escapes, so nothing else needs escaping), a number is written as digits.
 * @example toExecutionParameter("O'Brien") // "'O''Brien'"
 * @example toExecutionParameter(50)        // "50"
 */
export function toExecutionParameter(value: string | number): string {
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new RangeError(`query parameter must be a finite number, got ${value}`);
    return String(value);
  }
  if (typeof value !== 'string') throw new TypeError(`query parameter must be a string or a number`);
  const literal = `'${value.replace(/'/g, "''")}'`;
  if (literal.length > MAX_EXECUTION_PARAMETER_LENGTH) {
    throw new BadRequestError('invalid_parameter', 'A query value is longer than Athena accepts.');
  }
  return literal;
}

/**
 * A {@link HistoryStore} on Athena.
 *
 * `execute` starts the statement with its values as execution parameters (never spliced into the SQL), lets
 * Athena reuse a result of the same statement from the last five minutes, and polls with exponential backoff until
 * the query ends or `waitMs` is spent; then it answers `running` with the query id, which `queryResult` picks up
 * later. Rows come back typed by Athena's column metadata: numeric columns as numbers, the rest as text, NULL as
 * null.
 *
 * @example
 * const history = new AthenaHistoryStore({ athena: new AthenaClient({}), workGroup, database, table, log });
 * const result = await history.execute(usageQuerySql(query, history.dialect, history.source), 20_000);
 */
export class AthenaHistoryStore implements HistoryStore {
  readonly dialect = 'athena' as const;
  readonly source: string;
  private readonly athena: AthenaClient;
  private readonly workGroup: string;
  private readonly database: string;
  private readonly log: Logger;
  private readonly pollInitialMs: number;
  private readonly pollMaxMs: number;
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly now: () => number;
  private readonly s3: S3Client | undefined;
  private readonly resultsBucket: string | undefined;
  private readonly linkExpirySeconds: number;

  constructor(options: AthenaHistoryStoreOptions) {
    for (const [name, value] of [
      ['database', options.database],
      ['table', options.table],
    ] as const) {
      if (!GLUE_NAME.test(value)) throw new TypeError(`Athena ${name} name "${value}" is not a valid Glue name`);
    }
    if (options.resultsBucket !== undefined && !/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(options.resultsBucket)) {
      throw new TypeError(`"${options.resultsBucket}" is not a valid S3 bucket name`);
    }
    this.athena = options.athena;
    this.workGroup = options.workGroup;
    this.database = options.database;
    this.source = `"${options.database}"."${options.table}"`;
    this.log = options.log;
    this.pollInitialMs = Math.max(1, options.pollInitialMs ?? 100);
    this.pollMaxMs = Math.max(this.pollInitialMs, options.pollMaxMs ?? 2_000);
    this.sleep = options.sleep ?? ((ms) => new Promise((resolve) => setTimeout(resolve, ms)));
    this.now = options.now ?? Date.now;
    this.s3 = options.s3;
    this.resultsBucket = options.resultsBucket;
    this.linkExpirySeconds = Math.min(7 * 24 * 3600, Math.max(60, options.linkExpirySeconds ?? 900));
  }

  async execute(statement: HistoryStatement, waitMs: number): Promise<HistoryResult<HistoryRow>> {
    const deadline = this.now() + Math.max(0, waitMs);
    const queryId = await this.start(statement.sql, statement.params, true);
    const execution = await this.waitFor(queryId, deadline);
    if (execution === null) return { state: 'running', queryId };
    return { state: 'done', rows: await this.rows(queryId) };
  }

  async queryResult(queryId: string): Promise<HistoryResult<HistoryRow>> {
    const execution = await this.ownExecution(queryId);
    if (!(await this.ended(queryId, execution))) return { state: 'running', queryId };
    return { state: 'done', rows: await this.rows(queryId) };
  }

  /**
   * CSV: the export query's own result file (Athena writes every SELECT result as CSV with a header row, every
   * value quoted; `properties` as JSON text). NDJSON: an UNLOAD in JSON format, gzip-compressed, into a new prefix
   * under `results/exports/`, possibly as several files. Either way the answer is pre-signed links.
   */
  async exportEvents(query: EventExportQuery, waitMs: number): Promise<EventExport> {
    const deadline = this.now() + Math.max(0, waitMs);
    const { bucket } = this.exportTarget();
    let sql: string;
    const statement = exportSql(query, this.dialect, this.source, { propertiesAsJson: query.format === 'csv' });
    if (query.format === 'csv') {
      sql = statement.sql;
    } else {
      // The target is ours: the results bucket of the configuration and a fresh UUID, never a caller's value.
      sql = `UNLOAD (\n${statement.sql}\n) TO 's3://${bucket}/${EXPORT_PREFIX}${randomUUID()}/' WITH (format = 'JSON', compression = 'GZIP')`;
    }
    const queryId = await this.start(sql, statement.params, query.format === 'csv');
    const execution = await this.waitFor(queryId, deadline);
    if (execution === null) return { state: 'running', queryId };
    return this.exportFiles(queryId, execution);
  }

  async exportResult(queryId: string): Promise<EventExport> {
    this.exportTarget();
    const execution = await this.ownExecution(queryId);
    if (!EXPORT_SELECT.test(execution.Query ?? '')) {
      throw new NotFoundError('unknown_query', `No export ${queryId}.`, { param: 'query_id' });
    }
    if (!(await this.ended(queryId, execution))) return { state: 'running', queryId };
    return this.exportFiles(queryId, execution);
  }

  private exportTarget(): { s3: S3Client; bucket: string } {
    if (this.s3 === undefined || this.resultsBucket === undefined) {
      throw new NotFoundError('not_available', 'Exports need the results bucket, which is not configured.');
    }
    return { s3: this.s3, bucket: this.resultsBucket };
  }

  private async exportFiles(queryId: string, execution: QueryExecution): Promise<EventExport> {
    const { s3, bucket } = this.exportTarget();
    const expiresAt = new Date(this.now() + this.linkExpirySeconds * 1000).toISOString();
    const unload = UNLOAD_TARGET.exec(execution.Query ?? '');
    let objects: { key: string; bytes: number | null }[];
    if (unload !== null) {
      if (unload[1] !== bucket) throw new NotFoundError('unknown_query', `No export ${queryId}.`, { param: 'query_id' });
      objects = [];
      let token: string | undefined;
      do {
        const page = await this.callS3('ListObjectsV2', () =>
          s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: unload[2], ContinuationToken: token })),
        );
        for (const object of page.Contents ?? []) {
          if (object.Key !== undefined && (object.Size ?? 1) > 0) objects.push({ key: object.Key, bytes: object.Size ?? null });
        }
        token = page.IsTruncated ? page.NextContinuationToken : undefined;
      } while (token !== undefined);
    } else {
      const location = execution.ResultConfiguration?.OutputLocation ?? '';
      const prefix = `s3://${bucket}/`;
      if (!location.startsWith(prefix)) {
        throw new UpstreamError('history_result_invalid', 'The export result is not in the results bucket.');
      }
      objects = [{ key: location.slice(prefix.length), bytes: null }];
    }
    const files: ExportFile[] = [];
    for (const object of objects.sort((a, b) => (a.key < b.key ? -1 : 1))) {
      const url = await getSignedUrl(s3, new GetObjectCommand({ Bucket: bucket, Key: object.key }), {
        expiresIn: this.linkExpirySeconds,
      });
      files.push({ url, key: object.key, bytes: object.bytes });
    }
    return {
      state: 'done',
      format: unload !== null ? 'ndjson' : 'csv',
      compression: unload !== null ? 'gzip' : 'none',
      files,
      expiresAt,
    };
  }

  private async start(sql: string, params: readonly (string | number)[], reuse: boolean): Promise<string> {
    const executionParameters = params.map(toExecutionParameter);
    const started = await this.call('StartQueryExecution', () =>
      this.athena.send(
        new StartQueryExecutionCommand({
          QueryString: sql,
          ...(executionParameters.length > 0 ? { ExecutionParameters: executionParameters } : {}),
          WorkGroup: this.workGroup,
          QueryExecutionContext: { Database: this.database },
          ...(reuse
            ? { ResultReuseConfiguration: { ResultReuseByAgeConfiguration: { Enabled: true, MaxAgeInMinutes: RESULT_REUSE_MINUTES } } }
            : {}),
        }),
      ),
    );
    const queryId = started.QueryExecutionId;
    if (queryId === undefined) {
      throw new UpstreamError('history_unavailable', 'Athena started the query without returning its id.');
    }
    return queryId;
  }

  /** Polls until the query has succeeded (its execution) or the deadline passed (null); a failure throws. */
  private async waitFor(queryId: string, deadline: number): Promise<QueryExecution | null> {
    // A query that was just started is never done within milliseconds, so each poll comes after a wait.
    let delay = this.pollInitialMs;
    for (;;) {
      const remaining = deadline - this.now();
      if (remaining <= 0) return null;
      await this.sleep(Math.min(Math.round(delay), remaining));
      delay = Math.min(delay * POLL_GROWTH, this.pollMaxMs);
      const execution = await this.execution(queryId);
      if (await this.ended(queryId, execution)) return execution;
    }
  }

  /** The execution of a query id a caller brought back, which must be one of this store's work group. */
  private async ownExecution(queryId: string): Promise<QueryExecution> {
    if (!QUERY_ID.test(queryId)) {
      throw new BadRequestError('invalid_parameter', 'query_id must be an id returned by a history query.', {
        param: 'query_id',
      });
    }
    const notFound = () => new NotFoundError('unknown_query', `No history query ${queryId}.`, { param: 'query_id' });
    const execution = await this.execution(queryId, notFound);
    // Only this store's work group: the id must not open other Athena queries of the account to metrics callers.
    if (execution.WorkGroup !== undefined && execution.WorkGroup !== this.workGroup) throw notFound();
    return execution;
  }

  /** `ifUnknown` builds the error for an id Athena does not know (it answers InvalidRequestException). */
  private async execution(queryId: string, ifUnknown?: () => GatewayError): Promise<QueryExecution> {
    const answer = await this.call(
      'GetQueryExecution',
      () => this.athena.send(new GetQueryExecutionCommand({ QueryExecutionId: queryId })),
      ifUnknown,
    );
    return answer.QueryExecution ?? {};
  }

  /** True once the query succeeded, false while it runs; a failed or cancelled query throws. */
  private async ended(queryId: string, execution: QueryExecution): Promise<boolean> {
    const state = execution.Status?.State;
    if (state === 'SUCCEEDED') return true;
    if (state === 'FAILED' || state === 'CANCELLED') {
      const status = execution.Status;
      const reason = status?.StateChangeReason ?? status?.AthenaError?.ErrorMessage ?? 'no reason given';
      this.log.warn('history_query_failed', { query_id: queryId, state, reason });
      throw new UpstreamError('history_query_failed', `The Athena query ${state.toLowerCase()}: ${reason}`);
    }
    return false;
  }

  /** Reads every page of a finished query's result; Athena's first row of the first page names the columns. */
  private async rows(queryId: string): Promise<HistoryRow[]> {
    const rows: HistoryRow[] = [];
    let columns: readonly ColumnInfo[] | undefined;
    let nextToken: string | undefined;
    let firstPage = true;
    do {
      const page = await this.call('GetQueryResults', () =>
        this.athena.send(
          new GetQueryResultsCommand({ QueryExecutionId: queryId, MaxResults: 1000, NextToken: nextToken }),
        ),
      );
      columns ??= page.ResultSet?.ResultSetMetadata?.ColumnInfo;
      let data = page.ResultSet?.Rows ?? [];
      if (firstPage) {
        columns ??= (data[0]?.Data ?? []).map((d) => ({ Name: d.VarCharValue ?? '', Type: 'varchar' }));
        if (data.length > 0 && isHeaderRow(data[0]!, columns)) data = data.slice(1);
        firstPage = false;
      }
      for (const row of data) rows.push(toHistoryRow(row, columns ?? []));
      nextToken = page.NextToken;
    } while (nextToken !== undefined);
    return rows;
  }

  /** Runs one Athena call; anything it throws becomes an UpstreamError (502) that keeps the SDK error as cause. */
  private async call<T>(operation: string, send: () => Promise<T>, ifUnknown?: () => GatewayError): Promise<T> {
    try {
      return await send();
    } catch (error) {
      if (error instanceof GatewayError) throw error;
      if (ifUnknown !== undefined && isUnknownQuery(error)) throw ifUnknown();
      this.log.error('history_call_failed', { operation, error: describeError(error) });
      const name = error instanceof Error ? error.name : 'Error';
      throw new UpstreamError('history_unavailable', `Athena ${operation} failed (${name}).`, { cause: error });
    }
  }

  private async callS3<T>(operation: string, send: () => Promise<T>): Promise<T> {
    try {
      return await send();
    } catch (error) {
      this.log.error('export_call_failed', { operation, error: describeError(error) });
      const name = error instanceof Error ? error.name : 'Error';
      throw new UpstreamError('history_unavailable', `S3 ${operation} failed (${name}).`, { cause: error });
    }
  }
}

function isUnknownQuery(error: unknown): boolean {
  const name = (error as { name?: unknown } | null)?.name;
  return name === 'InvalidRequestException' || name === 'ResourceNotFoundException';
}

function isHeaderRow(row: Row, columns: readonly ColumnInfo[]): boolean {
  const cells = row.Data ?? [];
  return cells.length === columns.length && cells.every((d, i) => d.VarCharValue === columns[i]?.Name);
}

/** One result row, typed by the column metadata: numbers for numeric types, text otherwise, null for NULL. */
function toHistoryRow(row: Row, columns: readonly ColumnInfo[]): HistoryRow {
  const out: Record<string, HistoryValue> = {};
  (row.Data ?? []).forEach((datum, i) => {
    const column = columns[i];
    const name = column?.Name ?? String(i);
    const raw = datum.VarCharValue;
    if (raw === undefined) out[name] = null;
    else if (NUMERIC_TYPES.has((column?.Type ?? '').toLowerCase())) {
      const value = Number(raw);
      if (!Number.isFinite(value)) throw new UpstreamError('history_result_invalid', `The Athena result has a non-numeric ${name}.`);
      out[name] = value;
    } else out[name] = raw;
  });
  return out;
}
