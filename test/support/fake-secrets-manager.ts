/**
 * A tiny Secrets Manager speaking the service's JSON 1.1 protocol (`POST /`, `X-Amz-Target:
 * secretsmanager.GetSecretValue`, `application/x-amz-json-1.1`), enough for the SDK client to read secrets.
 *
 * @example
 * const sm = await startFakeSecretsManager({ 'metrics-key': '{"key":"s3cret"}' });
 * const client = new SecretsManagerClient({ endpoint: sm.endpoint, region: 'us-east-1', credentials });
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface FakeSecretsManager {
  readonly endpoint: string;
  /** GetSecretValue calls answered so far, per secret id. */
  readonly reads: Map<string, number>;
  /** Changes (or creates) a secret, as a rotation would. */
  setSecret(id: string, value: string): void;
  /** Makes the next `count` calls fail with a 500. */
  failNext(count: number): void;
  close(): Promise<void>;
}

export async function startFakeSecretsManager(initial: Readonly<Record<string, string>>): Promise<FakeSecretsManager> {
  const secrets = new Map(Object.entries(initial));
  const versions = new Map<string, number>();
  const reads = new Map<string, number>();
  let failures = 0;

  const answer = (res: ServerResponse, status: number, body: unknown, errorType?: string) => {
    res.writeHead(status, {
      'content-type': 'application/x-amz-json-1.1',
      ...(errorType && { 'x-amzn-errortype': errorType }),
    });
    res.end(JSON.stringify(body));
  };
  const fail = (res: ServerResponse, status: number, type: string, message: string) =>
    answer(res, status, { __type: type, message }, type);

  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.method !== 'POST' || !String(req.headers['content-type']).startsWith('application/x-amz-json-1.1')) {
        return fail(res, 400, 'SerializationException', 'Expected a POST of application/x-amz-json-1.1.');
      }
      if (!String(req.headers['authorization'] ?? '').startsWith('AWS4-HMAC-SHA256 ')) {
        return fail(res, 400, 'MissingAuthenticationTokenException', 'Request is missing Authentication Token');
      }
      if (req.headers['x-amz-target'] !== 'secretsmanager.GetSecretValue') {
        return fail(res, 400, 'UnknownOperationException', `Unsupported target ${String(req.headers['x-amz-target'])}`);
      }
      if (failures > 0) {
        failures--;
        return fail(res, 500, 'InternalServiceError', 'Injected failure.');
      }
      let input: { SecretId?: unknown };
      try {
        input = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { SecretId?: unknown };
      } catch {
        return fail(res, 400, 'SerializationException', 'Body is not JSON.');
      }
      const id = typeof input.SecretId === 'string' ? input.SecretId : '';
      const value = secrets.get(id);
      if (value === undefined) {
        return fail(res, 400, 'ResourceNotFoundException', "Secrets Manager can't find the specified secret.");
      }
      reads.set(id, (reads.get(id) ?? 0) + 1);
      answer(res, 200, {
        ARN: `arn:aws:secretsmanager:us-east-1:123456789012:secret:${id}-AbCdEf`,
        Name: id,
        SecretString: value,
        VersionId: `00000000-0000-4000-8000-${String(versions.get(id) ?? 0).padStart(12, '0')}`,
        VersionStages: ['AWSCURRENT'],
        CreatedDate: 1_767_225_600,
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));

  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    reads,
    setSecret(id, value) {
      secrets.set(id, value);
      versions.set(id, (versions.get(id) ?? 0) + 1);
    },
    failNext(count) {
      failures = count;
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve, reject) => server.close((err) => (err ? reject(err) : resolve())));
    },
  };
}
