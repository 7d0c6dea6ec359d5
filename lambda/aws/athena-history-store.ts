/**
 * History queries on AWS: the usage SQL runs in Athena over the Parquet event log that Firehose writes.
 */
import {
  GetQueryExecutionCommand,
  GetQueryResultsCommand,
  StartQueryExecutionCommand,
  type AthenaClient,
  type QueryExecution,
  type Row,
} from '@aws-sdk/client-athena';
import { BadRequestError, GatewayError, NotFoundError, UpstreamError } from '../core/errors';
import { usageQuerySql } from '../core/history-sql';
import { describeError, type Logger } from '../core/log';
import type { HistoryResult, HistoryStore, UsageGroupRow, UsageQuery } from '../core/ports';

export interface AthenaHistoryStoreOptions {
  readonly athena: AthenaClient;
  /** Work group the queries run in; it holds the result location and the scan limits. */
  readonly workGroup: string;
  /** Glue database and table of the event log. */
  readonly database: string;
  readonly table: string;
  readonly log: Logger;
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
const NUMERIC_COLUMNS = [
  'requests',
  'errors',
  'users',
  'prompt_tokens',
  'completion_tokens',
  'total_tokens',
  'cost_nano_usd',
  'unpriced_requests',
] as const;

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
 * `usage` starts the query with its values as execution parameters (never spliced into the SQL), lets Athena reuse
 * a result of the same query from the last five minutes, and polls with exponential backoff until the query ends or
 * `waitMs` is spent; then it answers `running` with the query id, which `queryResult` picks up later.
 *
 * @example
 * const history = new AthenaHistoryStore({ athena: new AthenaClient({}), workGroup, database, table, log });
 * const result = await history.usage({ from: '2026-03-01', to: '2026-03-31', groupBy: 'user', sort: 'cost',
 *   order: 'desc', limit: 50 }, 20_000);
 */
export class AthenaHistoryStore implements HistoryStore {
  private readonly athena: AthenaClient;
  private readonly workGroup: string;
  private readonly database: string;
  private readonly source: string;
  private readonly log: Logger;
  private readonly pollInitialMs: number;
  private readonly pollMaxMs: number;
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly now: () => number;

  constructor(options: AthenaHistoryStoreOptions) {
    for (const [name, value] of [
      ['database', options.database],
      ['table', options.table],
    ] as const) {
      if (!GLUE_NAME.test(value)) throw new TypeError(`Athena ${name} name "${value}" is not a valid Glue name`);
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
  }

  async usage(query: UsageQuery, waitMs: number): Promise<HistoryResult<UsageGroupRow>> {
    const deadline = this.now() + Math.max(0, waitMs);
    const { sql, params } = usageQuerySql(query, 'athena', this.source);
    const executionParameters = params.map(toExecutionParameter);

    const started = await this.call('StartQueryExecution', () =>
      this.athena.send(
        new StartQueryExecutionCommand({
          QueryString: sql,
          ...(executionParameters.length > 0 ? { ExecutionParameters: executionParameters } : {}),
          WorkGroup: this.workGroup,
          QueryExecutionContext: { Database: this.database },
          ResultReuseConfiguration: {
            ResultReuseByAgeConfiguration: { Enabled: true, MaxAgeInMinutes: RESULT_REUSE_MINUTES },
          },
        }),
      ),
    );
    const queryId = started.QueryExecutionId;
    if (queryId === undefined) {
      throw new UpstreamError('history_unavailable', 'Athena started the query without returning its id.');
    }

    // A query that was just started is never done within milliseconds, so each poll comes after a wait.
    let delay = this.pollInitialMs;
    for (;;) {
      const remaining = deadline - this.now();
      if (remaining <= 0) return { state: 'running', queryId };
      await this.sleep(Math.min(Math.round(delay), remaining));
      delay = Math.min(delay * POLL_GROWTH, this.pollMaxMs);
      const execution = await this.execution(queryId);
      const result = await this.settle(queryId, execution);
      if (result !== null) return result;
    }
  }

  async queryResult(queryId: string): Promise<HistoryResult<UsageGroupRow>> {
    if (!QUERY_ID.test(queryId)) {
      throw new BadRequestError('invalid_parameter', 'query_id must be an id returned by a usage query.', {
        param: 'query_id',
      });
    }
    const notFound = () => new NotFoundError('unknown_query', `No usage query ${queryId}.`, { param: 'query_id' });
    const execution = await this.execution(queryId, notFound);
    // Only this store's work group: the id must not open other Athena queries of the account to metrics callers.
    if (execution.WorkGroup !== undefined && execution.WorkGroup !== this.workGroup) throw notFound();
    return (await this.settle(queryId, execution)) ?? { state: 'running', queryId };
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

  /** The final answer of a query that has ended, or null while it runs. */
  private async settle(queryId: string, execution: QueryExecution): Promise<HistoryResult<UsageGroupRow> | null> {
    const state = execution.Status?.State;
    if (state === 'SUCCEEDED') return { state: 'done', rows: await this.rows(queryId) };
    if (state === 'FAILED' || state === 'CANCELLED') {
      const status = execution.Status;
      const reason = status?.StateChangeReason ?? status?.AthenaError?.ErrorMessage ?? 'no reason given';
      this.log.warn('history_query_failed', { query_id: queryId, state, reason });
      throw new UpstreamError('history_query_failed', `The Athena query ${state.toLowerCase()}: ${reason}`);
    }
    return null;
  }

  /** Reads every page of a finished query's result; Athena's first row of the first page names the columns. */
  private async rows(queryId: string): Promise<UsageGroupRow[]> {
    const rows: UsageGroupRow[] = [];
    let columns: string[] | undefined;
    let nextToken: string | undefined;
    let firstPage = true;
    do {
      const page = await this.call('GetQueryResults', () =>
        this.athena.send(
          new GetQueryResultsCommand({ QueryExecutionId: queryId, MaxResults: 1000, NextToken: nextToken }),
        ),
      );
      columns ??= page.ResultSet?.ResultSetMetadata?.ColumnInfo?.map((c) => c.Name ?? '');
      let data = page.ResultSet?.Rows ?? [];
      if (firstPage) {
        columns ??= data[0]?.Data?.map((d) => d.VarCharValue ?? '') ?? [];
        if (data.length > 0 && isHeaderRow(data[0]!, columns)) data = data.slice(1);
        firstPage = false;
      }
      for (const row of data) rows.push(toUsageGroupRow(row, columns ?? []));
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
}

function isUnknownQuery(error: unknown): boolean {
  const name = (error as { name?: unknown } | null)?.name;
  return name === 'InvalidRequestException' || name === 'ResourceNotFoundException';
}

function isHeaderRow(row: Row, columns: readonly string[]): boolean {
  const cells = row.Data ?? [];
  return cells.length === columns.length && cells.every((d, i) => d.VarCharValue === columns[i]);
}

function toUsageGroupRow(row: Row, columns: readonly string[]): UsageGroupRow {
  const cells = new Map<string, string | undefined>();
  (row.Data ?? []).forEach((d, i) => cells.set(columns[i] ?? '', d.VarCharValue));
  const missing = ['group', ...NUMERIC_COLUMNS].filter((c) => !columns.includes(c));
  if (missing.length > 0) {
    throw new UpstreamError('history_result_invalid', `The Athena result lacks the columns ${missing.join(', ')}.`);
  }
  const number = (name: (typeof NUMERIC_COLUMNS)[number]): number => {
    const raw = cells.get(name);
    // A SUM over nothing but NULLs is NULL in SQL; for a count or a total that means 0.
    if (raw === undefined || raw === '') return 0;
    const value = Number(raw);
    if (!Number.isFinite(value)) {
      throw new UpstreamError('history_result_invalid', `The Athena result has a non-numeric ${name}.`);
    }
    return value;
  };
  return {
    group: cells.get('group') ?? null,
    requests: number('requests'),
    errors: number('errors'),
    users: number('users'),
    prompt_tokens: number('prompt_tokens'),
    completion_tokens: number('completion_tokens'),
    total_tokens: number('total_tokens'),
    cost_nano_usd: number('cost_nano_usd'),
    unpriced_requests: number('unpriced_requests'),
  };
}
