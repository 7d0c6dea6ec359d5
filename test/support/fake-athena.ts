/**
 * A local Athena speaking the service's AWS JSON 1.1 wire protocol (`X-Amz-Target: AmazonAthena.<Operation>`) for
 * StartQueryExecution, GetQueryExecution, GetQueryResults and StopQueryExecution, so tests drive the real
 * `@aws-sdk/client-athena` client against it.
 *
 * Each started query follows a scripted outcome: it is QUEUED on the first poll, RUNNING after, and reaches its
 * final state after a set number of polls, or never until the test finishes it. Results page like Athena's:
 * the first row of the first page is the header row of column names, pages hold at most `MaxResults` rows and
 * `NextToken` leads to the next, and a NULL is a datum without `VarCharValue`.
 *
 * Results come from the outcome, or from {@link FakeAthena.answer}, which receives the SQL and the decoded
 * execution parameters, so a test can run the very query the gateway sent on DuckDB and hand back the rows.
 * An answer that throws makes the query FAILED with the error's message as `StateChangeReason`, as a bad query does.
 *
 * The fake is stricter than Athena in one way: every execution parameter must be a single SQL literal (a quoted
 * string or a number), and their count must match the `?` placeholders, so a quoting bug fails loudly here.
 *
 * @example
 * const athena = await FakeAthena.start();
 * athena.nextOutcome({ state: 'SUCCEEDED', afterPolls: 2, result: { columns: ['group'], rows: [['alice']] } });
 * athena.answer = async (sql, params) => runOnDuckDb(sql, params);
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';

/** Rows as a table (column names, then one array of values per row) or as one object per row. */
export type FakeAthenaTable =
  | { readonly columns: readonly string[]; readonly rows: readonly (readonly unknown[])[] }
  | readonly Readonly<Record<string, unknown>>[];

export type FakeAthenaOutcome =
  /** Succeeds after `afterPolls` non-final polls, with `result` or else what {@link FakeAthena.answer} gives. */
  | { readonly state: 'SUCCEEDED'; readonly afterPolls?: number; readonly result?: FakeAthenaTable }
  | { readonly state: 'FAILED'; readonly afterPolls?: number; readonly reason: string }
  | { readonly state: 'CANCELLED'; readonly afterPolls?: number }
  /** Runs until the test calls {@link FakeAthena.finish} or a client stops it. */
  | { readonly state: 'RUNNING' };

export type ExecutionParameterValue = string | number;

export type FakeAthenaAnswer = (
  sql: string,
  params: readonly ExecutionParameterValue[],
) => FakeAthenaTable | Promise<FakeAthenaTable>;

export interface StartedQuery {
  readonly id: string;
  readonly queryString: string;
  /** Parameters exactly as sent: SQL literals. */
  readonly executionParameters: readonly string[];
  /** The same, decoded to the values they stand for. */
  readonly params: readonly ExecutionParameterValue[];
  readonly workGroup: string | undefined;
  readonly database: string | undefined;
  readonly resultReuse: unknown;
}

interface QueryState {
  readonly started: StartedQuery;
  readonly submittedAt: number;
  outcome: FakeAthenaOutcome;
  polls: number;
  state: 'QUEUED' | 'RUNNING' | 'SUCCEEDED' | 'FAILED' | 'CANCELLED';
  reason?: string;
  completedAt?: number;
  table?: { columns: string[]; types: string[]; rows: (string | null)[][] };
}

type Handler = (input: Record<string, unknown>) => Promise<unknown>;

class AthenaFault extends Error {
  constructor(
    readonly status: number,
    readonly type: string,
    message: string,
    readonly extra: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

export class FakeAthena {
  /** Every started query, in order. */
  readonly queries: StartedQuery[] = [];
  /** Calls received per operation. */
  readonly calls: Record<string, number> = {};
  /** Computes the rows of a SUCCEEDED query whose outcome names none. */
  answer: FakeAthenaAnswer | undefined;
  /** Outcome of a query when none was queued with {@link nextOutcome}. */
  defaultOutcome: FakeAthenaOutcome = { state: 'SUCCEEDED', afterPolls: 0 };
  private readonly outcomes: FakeAthenaOutcome[] = [];
  private readonly states = new Map<string, QueryState>();
  private readonly tokens = new Map<string, string>();
  private throttleBudget = 0;

  private constructor(
    private readonly server: Server,
    readonly endpoint: string,
  ) {}

  static async start(): Promise<FakeAthena> {
    let fake: FakeAthena | undefined;
    const server = createServer((req, res) => {
      fake!.handle(req, res).catch((error: unknown) => {
        respond(res, 500, { __type: 'InternalServerException', Message: String(error) });
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    fake = new FakeAthena(server, `http://127.0.0.1:${port}`);
    return fake;
  }

  /** Queues the outcome of the next started query (outcomes are used in the order queued). */
  nextOutcome(outcome: FakeAthenaOutcome): void {
    this.outcomes.push(outcome);
  }

  /** Moves a query to a final state at its next poll. */
  finish(queryId: string, outcome: FakeAthenaOutcome = { state: 'SUCCEEDED' }): void {
    const query = this.states.get(queryId);
    if (!query) throw new Error(`unknown query ${queryId}`);
    query.outcome = outcome.state === 'RUNNING' ? outcome : { ...outcome, afterPolls: 0 };
    query.polls = 0;
  }

  /** The next `n` calls of any operation fail with `TooManyRequestsException`. */
  throttleNext(n: number): void {
    this.throttleBudget = n;
  }

  query(queryId: string): StartedQuery | undefined {
    return this.states.get(queryId)?.started;
  }

  /** The current state of a query as GetQueryExecution last reported it. */
  stateOf(queryId: string): string | undefined {
    return this.states.get(queryId)?.state;
  }

  reset(): void {
    this.queries.length = 0;
    this.outcomes.length = 0;
    this.states.clear();
    this.tokens.clear();
    this.throttleBudget = 0;
    this.answer = undefined;
    this.defaultOutcome = { state: 'SUCCEEDED', afterPolls: 0 };
    for (const key of Object.keys(this.calls)) delete this.calls[key];
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve, reject) => this.server.close((e) => (e ? reject(e) : resolve())));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const target = String(req.headers['x-amz-target'] ?? '');
    const operation = target.startsWith('AmazonAthena.') ? target.slice('AmazonAthena.'.length) : '';
    const handlers: Record<string, Handler> = {
      StartQueryExecution: (input) => this.startQueryExecution(input),
      GetQueryExecution: (input) => this.getQueryExecution(input),
      GetQueryResults: (input) => this.getQueryResults(input),
      StopQueryExecution: (input) => this.stopQueryExecution(input),
    };
    const handler = handlers[operation];
    if (req.method !== 'POST' || handler === undefined) {
      return respond(res, 400, { __type: 'UnknownOperationException', message: `unsupported target ${target}` });
    }
    if (!String(req.headers['content-type'] ?? '').startsWith('application/x-amz-json-1.1')) {
      return respond(res, 400, { __type: 'SerializationException', message: 'expected application/x-amz-json-1.1' });
    }
    this.calls[operation] = (this.calls[operation] ?? 0) + 1;
    try {
      if (this.throttleBudget > 0) {
        this.throttleBudget -= 1;
        throw new AthenaFault(400, 'TooManyRequestsException', 'Rate exceeded', {
          Reason: 'CONCURRENT_QUERY_LIMIT_EXCEEDED',
        });
      }
      const input = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}') as Record<string, unknown>;
      respond(res, 200, await handler(input));
    } catch (error) {
      if (!(error instanceof AthenaFault)) throw error;
      respond(res, error.status, { __type: error.type, Message: error.message, ...error.extra });
    }
  }

  private async startQueryExecution(input: Record<string, unknown>): Promise<unknown> {
    const queryString = input.QueryString;
    if (typeof queryString !== 'string' || queryString.length === 0 || queryString.length > 262_144) {
      throw invalid('QueryString must be 1 to 262144 characters');
    }
    const token = typeof input.ClientRequestToken === 'string' ? input.ClientRequestToken : undefined;
    const known = token === undefined ? undefined : this.tokens.get(token);
    if (known !== undefined) return { QueryExecutionId: known };

    const executionParameters = (input.ExecutionParameters ?? []) as string[];
    const placeholders = countPlaceholders(queryString);
    if (placeholders !== executionParameters.length) {
      throw invalid(
        `Incorrect number of parameters: ${placeholders} placeholders, ${executionParameters.length} values`,
      );
    }
    const params = executionParameters.map((literal, i) => {
      if (typeof literal !== 'string' || literal.length < 1 || literal.length > 1024) {
        throw invalid(`ExecutionParameters[${i}] must be 1 to 1024 characters`);
      }
      try {
        return parseExecutionParameter(literal);
      } catch (error) {
        throw invalid(`ExecutionParameters[${i}]: ${(error as Error).message}`);
      }
    });
    const context = (input.QueryExecutionContext ?? {}) as { Database?: string };
    const id = randomUUID();
    const started: StartedQuery = {
      id,
      queryString,
      executionParameters,
      params,
      workGroup: typeof input.WorkGroup === 'string' ? input.WorkGroup : undefined,
      database: context.Database,
      resultReuse: input.ResultReuseConfiguration,
    };
    this.queries.push(started);
    if (token !== undefined) this.tokens.set(token, id);
    const outcome = this.outcomes.shift() ?? this.defaultOutcome;
    this.states.set(id, { started, submittedAt: Date.now(), outcome, polls: 0, state: 'QUEUED' });
    return { QueryExecutionId: id };
  }

  private async getQueryExecution(input: Record<string, unknown>): Promise<unknown> {
    const query = this.find(input.QueryExecutionId);
    if (!isFinal(query.state)) await this.advance(query);
    const { started } = query;
    return {
      QueryExecution: {
        QueryExecutionId: started.id,
        Query: started.queryString,
        StatementType: 'DML',
        ResultConfiguration: { OutputLocation: `s3://athena-results/${started.id}.csv` },
        QueryExecutionContext: { Database: started.database, Catalog: 'awsdatacatalog' },
        Status: {
          State: query.state,
          ...(query.reason === undefined ? {} : { StateChangeReason: query.reason }),
          SubmissionDateTime: query.submittedAt / 1000,
          ...(query.completedAt === undefined ? {} : { CompletionDateTime: query.completedAt / 1000 }),
          ...(query.state === 'FAILED'
            ? { AthenaError: { ErrorCategory: 2, ErrorType: 1100, Retryable: false, ErrorMessage: query.reason } }
            : {}),
        },
        Statistics: { EngineExecutionTimeInMillis: 1, DataScannedInBytes: 0, TotalExecutionTimeInMillis: 1 },
        WorkGroup: started.workGroup ?? 'primary',
        EngineVersion: { SelectedEngineVersion: 'AUTO', EffectiveEngineVersion: 'Athena engine version 3' },
        ...(started.executionParameters.length > 0 ? { ExecutionParameters: started.executionParameters } : {}),
      },
    };
  }

  private async getQueryResults(input: Record<string, unknown>): Promise<unknown> {
    const query = this.find(input.QueryExecutionId);
    if (query.state !== 'SUCCEEDED' || query.table === undefined) {
      throw invalid(
        query.state === 'FAILED'
          ? (query.reason ?? 'Query failed')
          : `Query has not yet finished. Current state: ${query.state}`,
      );
    }
    const maxResults = input.MaxResults === undefined ? 1000 : Number(input.MaxResults);
    if (!Number.isInteger(maxResults) || maxResults < 1 || maxResults > 1000) {
      throw invalid('MaxResults must be between 1 and 1000');
    }
    let offset = 0;
    if (input.NextToken !== undefined) {
      const [tokenId, tokenOffset] = Buffer.from(String(input.NextToken), 'base64url').toString('utf8').split(':');
      if (tokenId !== query.started.id || !/^\d+$/.test(tokenOffset ?? '')) throw invalid('NextToken is not valid');
      offset = Number(tokenOffset);
    }
    const { columns, types, rows } = query.table;
    const all: (string | null)[][] = [columns, ...rows];
    const page = all.slice(offset, offset + maxResults);
    const next = offset + page.length < all.length;
    return {
      UpdateCount: 0,
      ResultSet: {
        Rows: page.map((row) => ({ Data: row.map((v) => (v === null ? {} : { VarCharValue: v })) })),
        ResultSetMetadata: {
          ColumnInfo: columns.map((name, i) => ({
            CatalogName: 'hive',
            SchemaName: '',
            TableName: '',
            Name: name,
            Label: name,
            Type: types[i],
            Precision: types[i] === 'varchar' ? 2147483647 : 19,
            Scale: 0,
            Nullable: 'UNKNOWN',
            CaseSensitive: types[i] === 'varchar',
          })),
        },
      },
      ...(next
        ? { NextToken: Buffer.from(`${query.started.id}:${offset + page.length}`).toString('base64url') }
        : {}),
    };
  }

  private async stopQueryExecution(input: Record<string, unknown>): Promise<unknown> {
    const query = this.find(input.QueryExecutionId);
    if (!isFinal(query.state)) {
      query.state = 'CANCELLED';
      query.reason = 'Query cancelled by user';
      query.completedAt = Date.now();
    }
    return {};
  }

  private find(id: unknown): QueryState {
    const query = typeof id === 'string' ? this.states.get(id) : undefined;
    if (!query) throw invalid(`QueryExecution ${String(id)} was not found`);
    return query;
  }

  /** One poll's worth of progress: QUEUED, RUNNING…, then the scripted final state. */
  private async advance(query: QueryState): Promise<void> {
    query.polls += 1;
    const { outcome } = query;
    if (outcome.state === 'RUNNING' || query.polls <= (outcome.afterPolls ?? 0)) {
      query.state = query.polls <= 1 && query.state === 'QUEUED' ? 'QUEUED' : 'RUNNING';
      return;
    }
    query.completedAt = Date.now();
    if (outcome.state === 'FAILED') {
      query.state = 'FAILED';
      query.reason = outcome.reason;
      return;
    }
    if (outcome.state === 'CANCELLED') {
      query.state = 'CANCELLED';
      query.reason = 'Query cancelled by user';
      return;
    }
    try {
      const result = outcome.result ?? (await this.answer?.(query.started.queryString, query.started.params));
      query.table = toTable(result ?? { columns: [], rows: [] });
      query.state = 'SUCCEEDED';
    } catch (error) {
      query.state = 'FAILED';
      query.reason = error instanceof Error ? error.message : String(error);
    }
  }
}

/**
 * Decodes an Athena execution parameter that is a single SQL literal: `'text'` (a quote inside doubled) or a
 * number. Anything else, such as an expression or an unbalanced quote, is refused.
 * @example parseExecutionParameter("'O''Brien'") // "O'Brien"
 */
export function parseExecutionParameter(literal: string): ExecutionParameterValue {
  if (/^-?\d+(\.\d+)?([eE][+-]?\d+)?$/.test(literal)) return Number(literal);
  const match = /^'((?:[^']|'')*)'$/s.exec(literal);
  if (match === null) throw new Error(`not a single SQL literal: ${literal}`);
  return match[1]!.replace(/''/g, "'");
}

/** Counts `?` placeholders outside string literals, quoted identifiers and comments. */
export function countPlaceholders(sql: string): number {
  let count = 0;
  for (let i = 0; i < sql.length; i++) {
    const c = sql[i];
    if (c === "'" || c === '"') {
      const close = sql.indexOf(c, i + 1);
      i = close < 0 ? sql.length : close; // a doubled quote re-opens on the next turn, which skips it the same way
    } else if (c === '-' && sql[i + 1] === '-') {
      const end = sql.indexOf('\n', i);
      i = end < 0 ? sql.length : end;
    } else if (c === '/' && sql[i + 1] === '*') {
      const end = sql.indexOf('*/', i + 2);
      i = end < 0 ? sql.length : end + 1;
    } else if (c === '?') {
      count += 1;
    }
  }
  return count;
}

function toTable(result: FakeAthenaTable): { columns: string[]; types: string[]; rows: (string | null)[][] } {
  const { columns, rows } = Array.isArray(result)
    ? {
        columns: Object.keys((result as Record<string, unknown>[])[0] ?? {}),
        rows: (result as Record<string, unknown>[]).map((r) => Object.values(r)),
      }
    : (result as { columns: readonly string[]; rows: readonly (readonly unknown[])[] });
  const types = columns.map((_, i) => typeOf(rows.map((r) => r[i]).find((v) => v !== null && v !== undefined)));
  return {
    columns: [...columns],
    types,
    rows: rows.map((r) => columns.map((_, i) => (r[i] === null || r[i] === undefined ? null : String(r[i])))),
  };
}

function typeOf(sample: unknown): string {
  if (typeof sample === 'bigint' || (typeof sample === 'number' && Number.isInteger(sample))) return 'bigint';
  if (typeof sample === 'number') return 'double';
  if (typeof sample === 'boolean') return 'boolean';
  return 'varchar';
}

function isFinal(state: QueryState['state']): boolean {
  return state === 'SUCCEEDED' || state === 'FAILED' || state === 'CANCELLED';
}

function invalid(message: string): AthenaFault {
  return new AthenaFault(400, 'InvalidRequestException', message, { AthenaErrorCode: 'INVALID_INPUT' });
}

function respond(res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) return;
  const payload = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/x-amz-json-1.1',
    'content-length': Buffer.byteLength(payload),
    'x-amzn-requestid': randomUUID(),
  });
  res.end(payload);
}
