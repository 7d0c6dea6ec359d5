/**
 * A local S3 speaking the REST protocol for the calls the gateway and its tools make: PutObject, GetObject,
 * DeleteObject and ListObjectsV2 (prefix, max-keys, continuation token), path-style (`/<bucket>/<key>`), so tests
 * use the real `@aws-sdk/client-s3` client with `forcePathStyle: true` (an IP-address endpoint, as this one is,
 * makes the SDK pick path-style on its own, which lets a child process find it through `AWS_ENDPOINT_URL_S3`).
 * Objects live in memory; buckets exist as soon as something is written to them.
 *
 * @example
 * const s3 = await FakeS3.start();
 * const client = new S3Client({ endpoint: s3.endpoint, forcePathStyle: true, region: 'us-east-1', credentials });
 * s3.failPuts(true);              // every PutObject answers 500 InternalError
 * s3.failDeletes(true);           // every DeleteObject answers 500 InternalError
 * s3.keys('recovery-bucket');     // sorted keys
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createHash, randomUUID } from 'node:crypto';

export interface StoredObject {
  readonly body: Buffer;
  readonly contentType: string | undefined;
  readonly etag: string;
  readonly lastModified: Date;
  /** `x-amz-server-side-encryption` as sent, if any (bucket default encryption leaves it unset). */
  readonly serverSideEncryption: string | undefined;
}

export class FakeS3 {
  private readonly buckets = new Map<string, Map<string, StoredObject>>();
  private failingPuts = false;
  private failingDeletes = false;
  private failingGets: ((key: string) => boolean) | null = null;
  /** Number of PutObject calls received, failed ones included. */
  putCalls = 0;
  /** Number of DeleteObject calls received, failed ones included. */
  deleteCalls = 0;

  private constructor(
    private readonly server: Server,
    readonly endpoint: string,
  ) {}

  static async start(): Promise<FakeS3> {
    let fake: FakeS3 | undefined;
    const server = createServer((req, res) => {
      fake!.handle(req, res).catch((error: unknown) => {
        respondError(res, 500, 'InternalError', error instanceof Error ? error.message : String(error));
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    fake = new FakeS3(server, `http://127.0.0.1:${port}`);
    return fake;
  }

  /** While on, every PutObject answers 500 `InternalError` and stores nothing. */
  failPuts(on: boolean): void {
    this.failingPuts = on;
  }

  /** While on, every DeleteObject answers 500 `InternalError` and deletes nothing. */
  failDeletes(on: boolean): void {
    this.failingDeletes = on;
  }

  /** GetObject of a key the predicate accepts answers 500 `InternalError`; `null` turns it off. */
  failGets(which: ((key: string) => boolean) | null): void {
    this.failingGets = which;
  }

  /** Keys in `bucket`, sorted as S3 lists them. */
  keys(bucket: string): string[] {
    return [...(this.buckets.get(bucket)?.keys() ?? [])].sort();
  }

  object(bucket: string, key: string): StoredObject | undefined {
    return this.buckets.get(bucket)?.get(key);
  }

  /** Stores an object directly, as if another writer had put it. */
  put(bucket: string, key: string, body: string | Buffer, contentType?: string): void {
    this.store(bucket, key, Buffer.from(body), contentType, undefined);
  }

  /** Forgets every object and turns injected faults off. */
  reset(): void {
    this.buckets.clear();
    this.failingPuts = false;
    this.failingDeletes = false;
    this.failingGets = null;
    this.putCalls = 0;
    this.deleteCalls = 0;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve, reject) => this.server.close((e) => (e ? reject(e) : resolve())));
  }

  private store(bucket: string, key: string, body: Buffer, contentType?: string, sse?: string): StoredObject {
    const objects = this.buckets.get(bucket) ?? new Map<string, StoredObject>();
    this.buckets.set(bucket, objects);
    const stored: StoredObject = {
      body,
      contentType,
      etag: `"${createHash('md5').update(body).digest('hex')}"`,
      lastModified: new Date(),
      serverSideEncryption: sse,
    };
    objects.set(key, stored);
    return stored;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const [, bucket = '', ...rest] = url.pathname.split('/');
    const key = decodeURIComponent(rest.join('/'));
    const body = await readBody(req);
    if (bucket === '') return respondError(res, 400, 'InvalidRequest', 'path-style requests only');

    if (req.method === 'PUT' && key !== '') {
      this.putCalls += 1;
      if (this.failingPuts) return respondError(res, 500, 'InternalError', 'We encountered an internal error.');
      const data = isAwsChunked(req) ? decodeAwsChunked(body) : body;
      const sse = req.headers['x-amz-server-side-encryption'];
      const contentType = req.headers['content-type'];
      const stored = this.store(bucket, key, data, contentType, typeof sse === 'string' ? sse : undefined);
      res.writeHead(200, { etag: stored.etag, 'x-amz-request-id': requestId() });
      res.end();
      return;
    }
    if (req.method === 'GET' && key !== '') {
      if (this.failingGets?.(key)) return respondError(res, 500, 'InternalError', 'We encountered an internal error.');
      const found = this.buckets.get(bucket)?.get(key);
      if (!found) return respondError(res, 404, 'NoSuchKey', 'The specified key does not exist.');
      res.writeHead(200, {
        'content-type': found.contentType ?? 'binary/octet-stream',
        'content-length': found.body.length,
        etag: found.etag,
        'last-modified': found.lastModified.toUTCString(),
        'x-amz-request-id': requestId(),
      });
      res.end(found.body);
      return;
    }
    if (req.method === 'DELETE' && key !== '') {
      this.deleteCalls += 1;
      if (this.failingDeletes) return respondError(res, 500, 'InternalError', 'We encountered an internal error.');
      // S3 answers 204 whether or not the key existed (without versioning, which the fake does not model).
      this.buckets.get(bucket)?.delete(key);
      res.writeHead(204, { 'x-amz-request-id': requestId() });
      res.end();
      return;
    }
    if (req.method === 'GET' && url.searchParams.get('list-type') === '2') {
      return this.list(res, bucket, url.searchParams);
    }
    respondError(res, 405, 'MethodNotAllowed', `${req.method} ${url.pathname} is not supported here`);
  }

  private list(res: ServerResponse, bucket: string, params: URLSearchParams): void {
    const prefix = params.get('prefix') ?? '';
    const maxKeys = Math.min(Number(params.get('max-keys') ?? 1000) || 1000, 1000);
    const after = params.get('continuation-token')
      ? Buffer.from(params.get('continuation-token')!, 'base64url').toString('utf8')
      : (params.get('start-after') ?? '');
    const matching = this.keys(bucket).filter((k) => k.startsWith(prefix) && k > after);
    const page = matching.slice(0, maxKeys);
    const truncated = matching.length > page.length;
    const objects = this.buckets.get(bucket);
    const contents = page
      .map((k) => {
        const o = objects!.get(k)!;
        return (
          `<Contents><Key>${xml(k)}</Key><LastModified>${o.lastModified.toISOString()}</LastModified>` +
          `<ETag>${xml(o.etag)}</ETag><Size>${o.body.length}</Size><StorageClass>STANDARD</StorageClass></Contents>`
        );
      })
      .join('');
    const next = truncated
      ? `<NextContinuationToken>${Buffer.from(page[page.length - 1]!).toString('base64url')}</NextContinuationToken>`
      : '';
    const payload =
      '<?xml version="1.0" encoding="UTF-8"?>' +
      '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' +
      `<Name>${xml(bucket)}</Name><Prefix>${xml(prefix)}</Prefix><KeyCount>${page.length}</KeyCount>` +
      `<MaxKeys>${maxKeys}</MaxKeys><IsTruncated>${truncated}</IsTruncated>${contents}${next}</ListBucketResult>`;
    res.writeHead(200, { 'content-type': 'application/xml', 'x-amz-request-id': requestId() });
    res.end(payload);
  }
}

/** Newer SDKs may stream a body as `aws-chunked` with a trailing checksum; the stored object is the payload. */
function isAwsChunked(req: IncomingMessage): boolean {
  return (
    String(req.headers['content-encoding'] ?? '').includes('aws-chunked') ||
    req.headers['x-amz-decoded-content-length'] !== undefined
  );
}

function decodeAwsChunked(body: Buffer): Buffer {
  const parts: Buffer[] = [];
  let offset = 0;
  for (;;) {
    const lineEnd = body.indexOf('\r\n', offset);
    if (lineEnd < 0) break;
    const size = parseInt(body.subarray(offset, lineEnd).toString('latin1').split(';')[0]!, 16);
    if (!Number.isFinite(size) || size === 0) break;
    parts.push(body.subarray(lineEnd + 2, lineEnd + 2 + size));
    offset = lineEnd + 2 + size + 2;
  }
  return Buffer.concat(parts);
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

function requestId(): string {
  return randomUUID().replace(/-/g, '').slice(0, 16).toUpperCase();
}

function xml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function respondError(res: ServerResponse, status: number, code: string, message: string): void {
  if (res.headersSent) return;
  const payload =
    '<?xml version="1.0" encoding="UTF-8"?>' +
    `<Error><Code>${code}</Code><Message>${xml(message)}</Message><RequestId>${requestId()}</RequestId></Error>`;
  res.writeHead(status, { 'content-type': 'application/xml', 'x-amz-request-id': requestId() });
  res.end(payload);
}
