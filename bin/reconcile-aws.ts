/**
 * `npm run reconcile:aws -- --from YYYY-MM-DD --to YYYY-MM-DD --table <CountersTableName> --work-group <AthenaWorkGroupName>
 *  --database <Glue database> --events-table <Glue table>`: rebuilds the DynamoDB live totals of those UTC days from
 * the event log in S3, with one Athena query. Uses the AWS credentials and region of the environment.
 * Each flag falls back to the proxy/metrics functions' variable: COUNTERS_TABLE_NAME, ATHENA_WORKGROUP,
 * ATHENA_DATABASE, ATHENA_TABLE (the metrics function's environment holds all four).
 */
import { parseArgs } from 'node:util';
import { AthenaClient } from '@aws-sdk/client-athena';
import { AthenaHistoryStore } from '../lambda/aws/athena-history-store';
import { createCounterStoreClient } from '../lambda/aws/dynamodb-counter-store';
import { reconcileDynamoDbCounters, type DynamoDbReconcileReport } from '../lambda/aws/counter-reconcile';
import { createLogger, describeError } from '../lambda/core/log';

const USAGE =
  'Usage: npm run reconcile:aws -- --from YYYY-MM-DD --to YYYY-MM-DD --table <CountersTableName> ' +
  '--work-group <AthenaWorkGroupName> --database <Glue database> --events-table <Glue table>';

export function formatDynamoDbReconcileReport(report: DynamoDbReconcileReport): string {
  const lines = [
    `Reconciled ${report.from}..${report.to} from the event log${report.query_id ? ` (Athena query ${report.query_id})` : ''}.`,
    `  users with totals:  ${report.users_before} before, ${report.users_after} after`,
    `  requests counted:   ${report.requests_before} before, ${report.requests_after} after`,
    `  user-days changed:  ${report.changed.length}`,
  ];
  for (const day of report.changed.slice(0, 50)) {
    lines.push(
      `    ${day.day} ${day.user_id === null ? '(no user)' : JSON.stringify(day.user_id)}: requests ${day.requests_before} -> ${day.requests_after}, ` +
        `cost ${day.cost_nano_usd_before / 1e9} -> ${day.cost_nano_usd_after / 1e9} USD`,
    );
  }
  if (report.changed.length > 50) lines.push(`    … and ${report.changed.length - 50} more`);
  return lines.join('\n') + '\n';
}

async function main(): Promise<void> {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        from: { type: 'string' },
        to: { type: 'string' },
        table: { type: 'string' },
        'work-group': { type: 'string' },
        database: { type: 'string' },
        'events-table': { type: 'string' },
      },
      strict: true,
    }));
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\n${USAGE}\n`);
    process.exit(2);
  }
  const table = values.table ?? process.env.COUNTERS_TABLE_NAME;
  const workGroup = values['work-group'] ?? process.env.ATHENA_WORKGROUP;
  const database = values.database ?? process.env.ATHENA_DATABASE;
  const eventsTable = values['events-table'] ?? process.env.ATHENA_TABLE;
  if (values.from === undefined || values.to === undefined || !table || !workGroup || !database || !eventsTable) {
    process.stderr.write(`${USAGE}\n`);
    process.exit(2);
  }
  const log = createLogger('warn', (line) => process.stderr.write(line + '\n'));
  try {
    const history = new AthenaHistoryStore({
      athena: new AthenaClient({}),
      workGroup,
      database,
      table: eventsTable,
      log,
    });
    const report = await reconcileDynamoDbCounters({ history, client: createCounterStoreClient(), tableName: table, from: values.from, to: values.to, log });
    process.stdout.write(formatDynamoDbReconcileReport(report));
  } catch (error) {
    process.stderr.write(`Reconcile failed: ${describeError(error).message}\n`);
    process.exit(1);
  }
}

if (require.main === module) void main();
