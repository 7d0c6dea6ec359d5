/**
 * An in-process DynamoDB (dynalite, in-memory) with the counter table already created from
 * `counterTableDefinition`, for tests of the DynamoDB adapters.
 *
 * @example
 * const db = await startDynalite();
 * after(() => db.close());
 * const store = new DynamoDbCounterStore({ client: db.client, tableName: db.tableName });
 */
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { CreateTableCommand, DescribeTableCommand, DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { counterTableDefinition } from '../../lambda/aws/table-design';

// dynalite ships no type declarations.
const dynalite = require('dynalite') as (options: Record<string, unknown>) => Server;

/** Static fake credentials: dynalite checks that requests are signed, not by whom. */
export const FAKE_CREDENTIALS = { accessKeyId: 'AKIDFAKEFAKEFAKE', secretAccessKey: 'fake-secret' } as const;
export const TEST_REGION = 'us-east-1';

export interface LocalDynamoDb {
  /** `http://127.0.0.1:<port>` */
  readonly endpoint: string;
  /** A client without SDK retries (what the counter store requires). */
  readonly client: DynamoDBClient;
  readonly tableName: string;
  /** A new client for the same endpoint (e.g. with other settings); closed with the server. */
  newClient(config?: ConstructorParameters<typeof DynamoDBClient>[0]): DynamoDBClient;
  close(): Promise<void>;
}

export async function startDynalite(options: { readonly tableName?: string } = {}): Promise<LocalDynamoDb> {
  const tableName = options.tableName ?? 'usage';
  const server = dynalite({ createTableMs: 0, deleteTableMs: 0, updateTableMs: 0 });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const clients: DynamoDBClient[] = [];
  const newClient = (config: ConstructorParameters<typeof DynamoDBClient>[0] = {}) => {
    const client = new DynamoDBClient({
      region: TEST_REGION,
      endpoint,
      credentials: FAKE_CREDENTIALS,
      maxAttempts: 1,
      ...config,
    });
    clients.push(client);
    return client;
  };
  const client = newClient();

  await client.send(new CreateTableCommand({ TableName: tableName, ...counterTableDefinition }));
  // Even with createTableMs 0 the table turns ACTIVE on a later tick.
  for (;;) {
    const { Table } = await client.send(new DescribeTableCommand({ TableName: tableName }));
    if (Table?.TableStatus === 'ACTIVE') break;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }

  return {
    endpoint,
    client,
    tableName,
    newClient,
    async close() {
      for (const c of clients) c.destroy();
      (server as Server & { closeAllConnections?: () => void }).closeAllConnections?.();
      await new Promise<void>((resolve, reject) => server.close((err) => (err ? reject(err) : resolve())));
    },
  };
}
