/**
 * `npm run reconcile -- --from YYYY-MM-DD --to YYYY-MM-DD [--data-dir DIR]`: rebuilds the local live totals of
 * those UTC days from the event log. Stop the gateway first: it holds the database while it runs.
 */
import { parseArgs } from 'node:util';
import { createLogger, describeError } from '../lambda/core/log';
import { DataDirInUseError, reconcileLocalCounters, type ReconcileReport } from '../lambda/local/counter-reconcile';

const USAGE = 'Usage: npm run reconcile -- --from YYYY-MM-DD --to YYYY-MM-DD [--data-dir DIR]';

/** The report as lines of text for the terminal. */
export function formatReconcileReport(report: ReconcileReport): string {
  const lines = [
    `Reconciled ${report.from}..${report.to} from the event log.`,
    `  users with totals:  ${report.users_before} before, ${report.users_after} after`,
    `  requests counted:   ${report.requests_before} before, ${report.requests_after} after`,
    `  users changed:      ${report.changed.length}`,
  ];
  for (const user of report.changed.slice(0, 50)) {
    lines.push(
      `    ${user.user_id === null ? '(no user)' : JSON.stringify(user.user_id)}: requests ${user.requests_before} -> ${user.requests_after}, ` +
        `cost ${user.cost_nano_usd_before / 1e9} -> ${user.cost_nano_usd_after / 1e9} USD`,
    );
  }
  if (report.changed.length > 50) lines.push(`    … and ${report.changed.length - 50} more`);
  return lines.join('\n') + '\n';
}

async function main(): Promise<void> {
  let values;
  try {
    ({ values } = parseArgs({
      options: { from: { type: 'string' }, to: { type: 'string' }, 'data-dir': { type: 'string' } },
      strict: true,
    }));
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\n${USAGE}\n`);
    process.exit(2);
  }
  if (values.from === undefined || values.to === undefined) {
    process.stderr.write(`${USAGE}\n`);
    process.exit(2);
  }
  const dataDir = values['data-dir'] ?? process.env.DATA_DIR ?? './.data';
  // Progress and warnings (skipped torn lines) go to stderr; the report is the only output on stdout.
  const log = createLogger('warn', (line) => process.stderr.write(line + '\n'));
  try {
    const report = await reconcileLocalCounters({ dataDir, from: values.from, to: values.to, log });
    process.stdout.write(formatReconcileReport(report));
  } catch (error) {
    process.stderr.write(`${error instanceof DataDirInUseError ? error.message : `Reconcile failed: ${describeError(error).message}`}\n`);
    process.exit(error instanceof DataDirInUseError ? 3 : 1);
  }
}

if (require.main === module) void main();
