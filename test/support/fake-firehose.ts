/**
 * A local Firehose that speaks the service's AWS JSON 1.1 wire protocol, so tests drive the real
 * `@aws-sdk/client-firehose` client against it (endpoint override, any credentials).
 *
 * Error shapes follow the service model: Firehose has no throttling error of its own; a throttled or unhealthy
 * call fails whole with `ServiceUnavailableException` (HTTP 503), and a partly accepted `PutRecordBatch` answers
 * 200 with `FailedPutCount` and, at the same index as each rejected record, `ErrorCode`/`ErrorMessage`.
 * Request limits are enforced like the service does (500 records, 4 MiB, 1,000 KiB per record) so a client that
 * forgets to split a batch fails here as it would on AWS.
 *
 * @example
 * const firehose = await FakeFirehose.start();
 * const client = new FirehoseClient({ endpoint: firehose.endpoint, region: 'us-east-1', credentials });
 * firehose.failRecords(2);            // the next two records received are rejected once each
 * firehose.records('usage-events');   // decoded data, in the order accepted
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';

export const MAX_BATCH_RECORDS = 500;
export const MAX_BATCH_BYTES = 4 * 1024 * 1024;
export const MAX_RECORD_BYTES = 1_000 * 1024;

/** Decides, per record, whether the fake rejects it; `data` is the decoded record. */
export type RecordFailurePredicate = (data: string, index: number) => boolean;

export interface FakeFirehoseOptions {
  /** Clock used by {@link FakeFirehose.outage}; defaults to `Date.now`. */
  readonly now?: () => number;
}

export interface FirehoseCall {
  readonly operation: 'PutRecord' | 'PutRecordBatch';
  readonly stream: string;
  /** Records sent in the call, decoded. */
  readonly records: readonly string[];
  /** What the fake answered: 'ok', 'partial', or the name of the error. */
  readonly outcome: string;
  /** Whether the call carried a SigV4 `Authorization` header (only its presence is kept). */
  readonly signed: boolean;
}

type OutageMode = 'unavailable' | 'reset';

/** The per-record error codes PutRecordBatch answers with. */
export type RecordErrorCode = 'ServiceUnavailableException' | 'InternalFailure';

const RECORD_ERROR_MESSAGES: Record<RecordErrorCode, string> = {
  ServiceUnavailableException: 'Slow down.',
  InternalFailure: 'An internal failure occurred.',
};

export class FakeFirehose {
  /** Every call received, in order, including the failed ones. */
  readonly calls: FirehoseCall[] = [];
  private readonly accepted = new Map<string, string[]>();
  private throttleBudget = 0;
  private failCount = 0;
  private failPredicate: RecordFailurePredicate | null = null;
  private recordErrorCode: RecordErrorCode = 'ServiceUnavailableException';
  private outageUntil = -Infinity;
  private outageMode: OutageMode = 'unavailable';
  private readonly now: () => number;

  private constructor(
    private readonly server: Server,
    readonly endpoint: string,
    options: FakeFirehoseOptions,
  ) {
    this.now = options.now ?? Date.now;
  }

  static async start(options: FakeFirehoseOptions = {}): Promise<FakeFirehose> {
    let fake: FakeFirehose | undefined;
    const server = createServer((req, res) => {
      fake!.handle(req, res).catch((error: unknown) => {
        respondError(res, 500, 'InternalFailure', error instanceof Error ? error.message : String(error));
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    fake = new FakeFirehose(server, `http://127.0.0.1:${port}`, options);
    return fake;
  }

  /** Decoded records accepted for `stream`, in the order they were accepted. */
  records(stream: string): readonly string[] {
    return this.accepted.get(stream) ?? [];
  }

  /** Number of calls received (accepted or not). */
  get callCount(): number {
    return this.calls.length;
  }

  /** The next `n` calls fail whole with `ServiceUnavailableException` (503), as throttling does on Firehose. */
  throttleNext(n: number): void {
    this.throttleBudget = n;
  }

  /**
   * Rejects records inside otherwise successful calls (`FailedPutCount` > 0).
   * A number rejects the next `n` records received, once each; a predicate is asked about every record until
   * it is replaced (`failRecords(0)` turns rejection off). `errorCode` is what the answer carries at the rejected
   * record's index: Firehose uses `ServiceUnavailableException` (throttled) and `InternalFailure`.
   */
  failRecords(
    which: number | RecordFailurePredicate,
    errorCode: RecordErrorCode = 'ServiceUnavailableException',
  ): void {
    this.recordErrorCode = errorCode;
    if (typeof which === 'number') {
      this.failCount = which;
      this.failPredicate = null;
    } else {
      this.failCount = 0;
      this.failPredicate = which;
    }
  }

  /**
   * Every call fails until the fake's clock reaches `untilMs` (`Infinity` for good). `unavailable` answers 503
   * `ServiceUnavailableException`; `reset` drops the connection without an answer, as a network fault does.
   */
  outage(untilMs: number, mode: OutageMode = 'unavailable'): void {
    this.outageUntil = untilMs;
    this.outageMode = mode;
  }

  /** Clears every injected fault and forgets what was received. */
  reset(): void {
    this.calls.length = 0;
    this.accepted.clear();
    this.throttleBudget = 0;
    this.failCount = 0;
    this.failPredicate = null;
    this.recordErrorCode = 'ServiceUnavailableException';
    this.outageUntil = -Infinity;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve, reject) => this.server.close((e) => (e ? reject(e) : resolve())));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readBody(req);
    const target = String(req.headers['x-amz-target'] ?? '');
    const signed = String(req.headers.authorization ?? '').startsWith('AWS4-HMAC-SHA256 ');
    if (req.method !== 'POST' || !target.startsWith('Firehose_20150804.')) {
      return respondError(res, 400, 'UnknownOperationException', `unsupported target ${target}`);
    }
    if (!String(req.headers['content-type'] ?? '').startsWith('application/x-amz-json-1.1')) {
      return respondError(res, 400, 'SerializationException', 'expected application/x-amz-json-1.1');
    }
    const operation = target.slice('Firehose_20150804.'.length);
    if (operation !== 'PutRecord' && operation !== 'PutRecordBatch') {
      return respondError(res, 400, 'UnknownOperationException', `unsupported operation ${operation}`);
    }

    const input = JSON.parse(body.toString('utf8')) as {
      DeliveryStreamName?: string;
      Record?: { Data?: string };
      Records?: { Data?: string }[];
    };
    const stream = input.DeliveryStreamName ?? '';
    const raw = operation === 'PutRecord' ? [input.Record ?? {}] : (input.Records ?? []);
    const data = raw.map((r) => Buffer.from(r.Data ?? '', 'base64'));
    const decoded = data.map((d) => d.toString('utf8'));
    const record = (outcome: string) => this.calls.push({ operation, stream, records: decoded, outcome, signed });

    if (this.now() < this.outageUntil) {
      record(this.outageMode === 'reset' ? 'ConnectionReset' : 'ServiceUnavailableException');
      if (this.outageMode === 'reset') {
        req.socket.destroy();
        return;
      }
      return respondError(res, 503, 'ServiceUnavailableException', 'Firehose is unavailable.');
    }
    if (this.throttleBudget > 0) {
      this.throttleBudget -= 1;
      record('ServiceUnavailableException');
      return respondError(res, 503, 'ServiceUnavailableException', 'Slow down.');
    }
    const invalid = validate(stream, data);
    if (invalid !== null) {
      record('InvalidArgumentException');
      return respondError(res, 400, 'InvalidArgumentException', invalid);
    }

    const failed = decoded.map((d, i) => this.shouldFail(d, i));
    const accepted = this.accepted.get(stream) ?? [];
    this.accepted.set(stream, accepted);
    decoded.forEach((d, i) => {
      if (!failed[i]) accepted.push(d);
    });

    if (operation === 'PutRecord') {
      if (failed[0]) {
        record('ServiceUnavailableException');
        return respondError(res, 503, 'ServiceUnavailableException', 'Slow down.');
      }
      record('ok');
      return respondJson(res, { RecordId: recordId(), Encrypted: false });
    }
    const failedCount = failed.filter(Boolean).length;
    record(failedCount > 0 ? 'partial' : 'ok');
    respondJson(res, {
      FailedPutCount: failedCount,
      Encrypted: false,
      RequestResponses: failed.map((f) =>
        f
          ? { ErrorCode: this.recordErrorCode, ErrorMessage: RECORD_ERROR_MESSAGES[this.recordErrorCode] }
          : { RecordId: recordId() },
      ),
    });
  }

  private shouldFail(data: string, index: number): boolean {
    if (this.failCount > 0) {
      this.failCount -= 1;
      return true;
    }
    return this.failPredicate !== null && this.failPredicate(data, index);
  }
}

function validate(stream: string, data: readonly Buffer[]): string | null {
  if (!/^[a-zA-Z0-9_.-]{1,64}$/.test(stream)) return `invalid DeliveryStreamName "${stream}"`;
  if (data.length === 0) return 'Records must have at least 1 item';
  if (data.length > MAX_BATCH_RECORDS) return `Records has ${data.length} items, more than ${MAX_BATCH_RECORDS}`;
  const total = data.reduce((sum, d) => sum + d.length, 0);
  if (total > MAX_BATCH_BYTES) return `request data is ${total} bytes, more than ${MAX_BATCH_BYTES}`;
  const big = data.findIndex((d) => d.length > MAX_RECORD_BYTES);
  if (big >= 0) return `record ${big} is ${data[big]!.length} bytes, more than ${MAX_RECORD_BYTES}`;
  return null;
}

/** Record ids on Firehose are long opaque strings; their content never matters to a client. */
function recordId(): string {
  return randomUUID().replace(/-/g, '').repeat(2);
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

function respondJson(res: ServerResponse, body: unknown): void {
  const payload = JSON.stringify(body);
  res.writeHead(200, {
    'content-type': 'application/x-amz-json-1.1',
    'content-length': Buffer.byteLength(payload),
    'x-amzn-requestid': randomUUID(),
  });
  res.end(payload);
}

function respondError(res: ServerResponse, status: number, type: string, message: string): void {
  if (res.headersSent) return;
  const payload = JSON.stringify({ __type: type, message });
  res.writeHead(status, {
    'content-type': 'application/x-amz-json-1.1',
    'content-length': Buffer.byteLength(payload),
    'x-amzn-requestid': randomUUID(),
    'x-amzn-errortype': type,
  });
  res.end(payload);
}
