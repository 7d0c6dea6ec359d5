/**
 * dynalite (in-memory) in a child process, with the counter table created from `counterTableDefinition`: the same
 * {@link LocalDynamoDb} as `startDynalite()`, for load tests where the engine's own CPU time must not compete with
 * the code under test for one event loop. Every request still crosses loopback HTTP, as with the in-process one.
 *
 * The child watches its stdin, a pipe held by this process: if this process dies without closing it, the child
 * exits on its own instead of lingering.
 *
 * @example
 * const db = await startDynaliteProcess();
 * after(() => db.close());
 * const store = new DynamoDbCounterStore({ client: db.client, tableName: db.tableName });
 */
import { spawn } from 'node:child_process';
import { CreateTableCommand, DescribeTableCommand, DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { counterTableDefinition } from '../../lambda/aws/table-design';
import { FAKE_CREDENTIALS, TEST_REGION, type LocalDynamoDb } from './dynalite';

/**
 * Runs in the child: listen on a free loopback port and print it, answer each `cpu` line on stdin with the CPU time
 * used so far, exit when stdin ends (the parent is gone or done).
 */
const CHILD_SCRIPT = `
const dynalite = require(${JSON.stringify(require.resolve('dynalite'))});
const server = dynalite({ createTableMs: 0, deleteTableMs: 0, updateTableMs: 0 });
server.listen(0, '127.0.0.1', () => process.stdout.write('listening http://127.0.0.1:' + server.address().port + '\\n'));
process.stdin.setEncoding('utf8');
process.stdin.on('data', (text) => {
  for (const line of text.split('\\n')) {
    if (line !== 'cpu') continue;
    const cpu = process.cpuUsage();
    process.stdout.write('cpu_ms ' + Math.round((cpu.user + cpu.system) / 1000) + '\\n');
  }
});
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
`;

export interface DynaliteProcess extends LocalDynamoDb {
  /** The child's process id. */
  readonly pid: number;
  /** CPU time (user + system, milliseconds) the child has used so far. */
  cpuMs(): Promise<number>;
}

const START_TIMEOUT_MS = 20_000;

export async function startDynaliteProcess(options: { readonly tableName?: string } = {}): Promise<DynaliteProcess> {
  const tableName = options.tableName ?? 'usage';
  const child = spawn(process.execPath, ['-e', CHILD_SCRIPT], { stdio: ['pipe', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk: string) => (output += chunk));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));

  const endpoint = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error(`dynalite did not start within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
    const fail = (error: Error) => {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`${error.message}${output ? `\n${output.slice(-2000)}` : ''}`));
    };
    const onData = (chunk: string) => {
      output += chunk;
      const match = /listening (http:\/\/\S+)/.exec(output);
      if (match === null) return;
      clearTimeout(timer);
      child.stdout.off('data', onData);
      resolve(match[1]!);
    };
    child.stdout.on('data', onData);
    child.once('error', fail);
    child.once('exit', (code, signal) => fail(new Error(`dynalite exited before it was ready (code ${code}, signal ${signal})`)));
  });
  // Answers to `cpu` requests, in order.
  const cpuWaiters: ((ms: number) => void)[] = [];
  let rest = '';
  child.stdout.on('data', (chunk: string) => {
    rest += chunk;
    for (let nl = rest.indexOf('\n'); nl >= 0; nl = rest.indexOf('\n')) {
      const match = /^cpu_ms (\d+)$/.exec(rest.slice(0, nl));
      rest = rest.slice(nl + 1);
      if (match) cpuWaiters.shift()?.(Number(match[1]));
    }
  });

  const clients: DynamoDBClient[] = [];
  const newClient = (config: ConstructorParameters<typeof DynamoDBClient>[0] = {}) => {
    const client = new DynamoDBClient({ region: TEST_REGION, endpoint, credentials: FAKE_CREDENTIALS, maxAttempts: 1, ...config });
    clients.push(client);
    return client;
  };
  const client = newClient();

  const stop = async (): Promise<void> => {
    for (const c of clients) c.destroy();
    if (child.exitCode === null && child.signalCode === null) child.stdin.end();
    const killer = setTimeout(() => child.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(killer);
  };

  try {
    await client.send(new CreateTableCommand({ TableName: tableName, ...counterTableDefinition }));
    // Even with createTableMs 0 the table turns ACTIVE on a later tick.
    for (;;) {
      const { Table } = await client.send(new DescribeTableCommand({ TableName: tableName }));
      if (Table?.TableStatus === 'ACTIVE') break;
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  } catch (error) {
    await stop();
    throw error;
  }

  return {
    endpoint,
    client,
    tableName,
    pid: child.pid!,
    newClient,
    cpuMs() {
      return new Promise<number>((resolve, reject) => {
        if (child.exitCode !== null || child.signalCode !== null) return reject(new Error('dynalite is not running'));
        cpuWaiters.push(resolve);
        child.stdin.write('cpu\n');
      });
    },
    close: stop,
  };
}
