/**
 * Administers gateway keys in the deployed table, with the default AWS credential chain.
 *
 *   tsx bin/keys.ts add    --table <name> [--label <text>] [--region <r>] [--endpoint <url>] [--json]
 *   tsx bin/keys.ts list   --table <name> [--region <r>] [--endpoint <url>] [--json]
 *   tsx bin/keys.ts revoke --table <name> <key_id> [--region <r>] [--endpoint <url>] [--json]
 *
 * `add` prints the new key once; only its hash is stored, so it cannot be shown again.
 * Exit codes: 0 done, 1 the AWS call failed, 2 wrong usage, 3 no key with that id.
 */
import { parseArgs } from 'node:util';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import {
  InvalidGatewayKeyInputError,
  createGatewayKey,
  listGatewayKeys,
  revokeGatewayKey,
  type GatewayKeyInfo,
} from '../lambda/aws/dynamodb-key-store';

export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;
export const EXIT_NOT_FOUND = 3;

const USAGE = `Usage:
  keys add    --table <name> [--label <text>] [--region <region>] [--endpoint <url>] [--json]
  keys list   --table <name> [--region <region>] [--endpoint <url>] [--json]
  keys revoke --table <name> <key_id> [--region <region>] [--endpoint <url>] [--json]`;

export interface CliIo {
  readonly out: (text: string) => void;
  readonly err: (text: string) => void;
}

class UsageError extends Error {}

interface Invocation {
  readonly command: 'add' | 'list' | 'revoke';
  readonly table: string;
  readonly label: string | undefined;
  readonly keyId: string | undefined;
  readonly region: string | undefined;
  readonly endpoint: string | undefined;
  readonly json: boolean;
}

function parse(argv: readonly string[]): Invocation {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      allowPositionals: true,
      strict: true,
      options: {
        table: { type: 'string' },
        label: { type: 'string' },
        region: { type: 'string' },
        endpoint: { type: 'string' },
        json: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const { values, positionals } = parsed;
  const [command, ...rest] = positionals;
  if (values.help) throw new UsageError('');
  if (command !== 'add' && command !== 'list' && command !== 'revoke') {
    throw new UsageError(command === undefined ? 'Missing command.' : `Unknown command "${command}".`);
  }
  if (!values.table) throw new UsageError('--table <name> is required.');
  if (values.label !== undefined && command !== 'add') throw new UsageError('--label only applies to add.');
  const expected = command === 'revoke' ? 1 : 0;
  if (rest.length !== expected) {
    throw new UsageError(
      command === 'revoke' ? 'revoke takes exactly one <key_id>.' : `${command} takes no arguments.`,
    );
  }
  if (command === 'revoke' && !/^[0-9a-f]{12}$/.test(rest[0]!)) {
    throw new UsageError(`"${rest[0]}" is not a key id: key ids are 12 lowercase hexadecimal characters.`);
  }
  if (values.endpoint !== undefined && !URL.canParse(values.endpoint)) {
    throw new UsageError(`--endpoint "${values.endpoint}" is not a URL.`);
  }
  return {
    command,
    table: values.table,
    label: values.label,
    keyId: rest[0],
    region: values.region,
    endpoint: values.endpoint,
    json: values.json ?? false,
  };
}

function describeKey(key: GatewayKeyInfo): string {
  const revoked = key.revoked_at ? `revoked ${key.revoked_at}` : 'active';
  return `${key.key_id}  created ${key.created_at}  ${revoked}${key.label ? `  ${key.label}` : ''}`;
}

/**
 * Runs the CLI and resolves to its exit code.
 * @example process.exitCode = await runKeysCli(process.argv.slice(2));
 */
export async function runKeysCli(
  argv: readonly string[],
  io: CliIo = { out: (t) => process.stdout.write(t + '\n'), err: (t) => process.stderr.write(t + '\n') },
): Promise<number> {
  let invocation: Invocation;
  try {
    invocation = parse(argv);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    if (!error.message) {
      io.out(USAGE);
      return EXIT_OK;
    }
    io.err(`keys: ${error.message}`);
    io.err(USAGE);
    return EXIT_USAGE;
  }
  const { command, table, json } = invocation;
  const client = new DynamoDBClient({
    ...(invocation.region !== undefined && { region: invocation.region }),
    ...(invocation.endpoint !== undefined && { endpoint: invocation.endpoint }),
  });
  try {
    if (command === 'add') {
      const created = await createGatewayKey(client, table, invocation.label);
      if (json) {
        io.out(JSON.stringify(created));
      } else {
        io.out(`Created gateway key ${created.key_id}${created.label ? ` (${created.label})` : ''}.`);
        io.out('It is shown only now; store it safely:');
        io.out(created.key);
      }
      return EXIT_OK;
    }
    if (command === 'list') {
      const keys = await listGatewayKeys(client, table);
      if (json) io.out(JSON.stringify(keys));
      else if (keys.length === 0) io.out('No gateway keys.');
      else for (const key of keys) io.out(describeKey(key));
      return EXIT_OK;
    }
    const revoked = await revokeGatewayKey(client, table, invocation.keyId!);
    if (!revoked) {
      io.err(`keys: no gateway key with id ${invocation.keyId} in table ${table}.`);
      return EXIT_NOT_FOUND;
    }
    if (json) io.out(JSON.stringify(revoked));
    else io.out(`Revoked ${describeKey(revoked)}`);
    return EXIT_OK;
  } catch (error) {
    if (error instanceof InvalidGatewayKeyInputError) {
      io.err(`keys: ${error.message}`);
      io.err(USAGE);
      return EXIT_USAGE;
    }
    const e = error as Error;
    io.err(`keys: ${command} failed: ${e.name}: ${e.message}`);
    return EXIT_FAILED;
  } finally {
    client.destroy();
  }
}

if (require.main === module) {
  runKeysCli(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (error: unknown) => {
      process.stderr.write(`keys: ${(error as Error).message}\n`);
      process.exitCode = EXIT_FAILED;
    },
  );
}
