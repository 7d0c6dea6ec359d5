/**
 * `npm run replay:recovery -- --bucket <LogBucketName> --stream <EventsStreamName> [--from YYYY-MM-DD] [--to YYYY-MM-DD]
 *  [--dry-run] [--firehose-errors | --log-file <path>]`: sends the usage events the proxy parked in the recovery bucket
 * (because Firehose refused them) back into the Firehose stream, and deletes each object once all its events were
 * accepted. Uses the AWS credentials and region of the environment (`--region` overrides the region; the standard
 * `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL_FIREHOSE` variables point it elsewhere).
 *
 * Each flag falls back to the proxy function's variable: RECOVERY_BUCKET_NAME, EVENTS_STREAM_NAME, RECOVERY_PREFIX.
 * Exit codes: 0 everything was replayed, 1 something was left over (kept objects, refused or malformed events) or an
 * AWS call failed, 2 wrong usage.
 */
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { S3Client } from '@aws-sdk/client-s3';
import { createFirehoseClient } from '../lambda/aws/firehose-event-sink';
import {
  DEFAULT_FIREHOSE_ERROR_PREFIX,
  DEFAULT_RECOVERY_PREFIX,
  ReplayInputError,
  parseDay,
  replayRecovery,
  replayUndeliveredLog,
  type ReplayReport,
} from '../lambda/aws/recovery-replay';
import { createLogger, describeError } from '../lambda/core/log';

export const EXIT_OK = 0;
export const EXIT_INCOMPLETE = 1;
export const EXIT_USAGE = 2;

/** Firehose calls per record before the replay gives up on it (the proxy uses 4; an operator can wait longer). */
const DEFAULT_MAX_ATTEMPTS = 6;

const USAGE = `Usage: npm run replay:recovery -- [options]

Sends usage events that the proxy parked in the recovery bucket back into the Firehose stream, then deletes each
object whose events were all accepted. Objects Firehose still refuses, or that hold malformed lines, are kept.

Options:
  --bucket <name>       Event log bucket (stack output LogBucketName). Default: $RECOVERY_BUCKET_NAME
  --stream <name>       Firehose delivery stream (stack output EventsStreamName). Default: $EVENTS_STREAM_NAME
  --prefix <prefix>     Key prefix to replay. Default: $RECOVERY_PREFIX or ${DEFAULT_RECOVERY_PREFIX}
                        (${DEFAULT_FIREHOSE_ERROR_PREFIX} with --firehose-errors)
  --from YYYY-MM-DD     Only objects whose key holds dt= on or after this day
  --to YYYY-MM-DD       Only objects whose key holds dt= on or before this day
  --dry-run             List what would be replayed; send and delete nothing
  --firehose-errors     Replay the records Firehose itself set aside under its error prefix (rawData)
                        instead of the recovery objects; dt= there is the day Firehose failed them
  --log-file <path>     Replay the usage_event_undelivered entries of a CloudWatch Logs export instead
                        (JSON lines, text lines ending in JSON, or aws logs filter-log-events output)
  --max-attempts <n>    Firehose calls per record before giving up on it. Default: ${DEFAULT_MAX_ATTEMPTS}
  --region <region>     AWS region. Default: the environment's
  -h, --help            Show this help

Exit codes: 0 everything replayed, 1 something left over or an AWS call failed, 2 wrong usage.`;

const SHORT_USAGE =
  'Usage: npm run replay:recovery -- --bucket <name> --stream <name> [--from YYYY-MM-DD] [--to YYYY-MM-DD] ' +
  '[--dry-run] [--firehose-errors | --log-file <path>]  (--help for every option)';

export interface CliIo {
  readonly out: (text: string) => void;
  readonly err: (text: string) => void;
}

class UsageError extends Error {}

interface Invocation {
  readonly bucket: string | undefined;
  readonly stream: string | undefined;
  readonly prefix: string | undefined;
  readonly from: string | undefined;
  readonly to: string | undefined;
  readonly dryRun: boolean;
  readonly firehoseErrors: boolean;
  readonly logFile: string | undefined;
  readonly maxAttempts: number;
  readonly region: string | undefined;
}

const nonEmpty = (value: string | undefined): string | undefined =>
  value === undefined || value.trim() === '' ? undefined : value.trim();

function parse(argv: readonly string[], env: NodeJS.ProcessEnv): Invocation | 'help' {
  let values;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      allowPositionals: false,
      strict: true,
      options: {
        bucket: { type: 'string' },
        stream: { type: 'string' },
        prefix: { type: 'string' },
        from: { type: 'string' },
        to: { type: 'string' },
        'dry-run': { type: 'boolean', default: false },
        'firehose-errors': { type: 'boolean', default: false },
        'log-file': { type: 'string' },
        'max-attempts': { type: 'string' },
        region: { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    }));
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  if (values.help) return 'help';

  const logFile = values['log-file'];
  const firehoseErrors = values['firehose-errors'] ?? false;
  const dryRun = values['dry-run'] ?? false;
  if (logFile !== undefined) {
    if (logFile.trim() === '') throw new UsageError('--log-file needs a path.');
    if (firehoseErrors) throw new UsageError('--log-file and --firehose-errors replay different sources; pick one.');
    for (const flag of ['from', 'to', 'prefix', 'bucket'] as const) {
      if (values[flag] !== undefined) throw new UsageError(`--${flag} applies to bucket objects, not to --log-file.`);
    }
  }

  let from: string | undefined;
  let to: string | undefined;
  try {
    from = values.from === undefined ? undefined : parseDay(values.from, '--from');
    to = values.to === undefined ? undefined : parseDay(values.to, '--to');
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  if (from !== undefined && to !== undefined && from > to) {
    throw new UsageError(`--from ${from} is after --to ${to}.`);
  }

  let maxAttempts = DEFAULT_MAX_ATTEMPTS;
  if (values['max-attempts'] !== undefined) {
    maxAttempts = Number(values['max-attempts']);
    if (!/^\d+$/.test(values['max-attempts']) || maxAttempts < 1 || maxAttempts > 20) {
      throw new UsageError(`--max-attempts must be a whole number from 1 to 20, got "${values['max-attempts']}".`);
    }
  }

  const bucket = nonEmpty(values.bucket) ?? (logFile === undefined ? nonEmpty(env.RECOVERY_BUCKET_NAME) : undefined);
  const stream = nonEmpty(values.stream) ?? nonEmpty(env.EVENTS_STREAM_NAME);
  if (logFile === undefined && bucket === undefined) {
    throw new UsageError('--bucket <name> (or RECOVERY_BUCKET_NAME) is required: the LogBucketName stack output.');
  }
  if (!dryRun && stream === undefined) {
    throw new UsageError('--stream <name> (or EVENTS_STREAM_NAME) is required, except with --dry-run: the EventsStreamName stack output.');
  }
  if (values.prefix !== undefined && values.prefix.trim() === '') throw new UsageError('--prefix must not be empty.');
  // The proxy's variable names the recovery prefix; it says nothing about Firehose's error prefix.
  const prefix = nonEmpty(values.prefix) ?? (firehoseErrors ? undefined : nonEmpty(env.RECOVERY_PREFIX));
  return {
    bucket,
    stream,
    prefix,
    from,
    to,
    dryRun,
    firehoseErrors,
    logFile,
    maxAttempts,
    region: nonEmpty(values.region),
  };
}

/**
 * The report as the command prints it: what was kept or malformed, then one summary line.
 * @example formatReplayReport(report) // '…Summary: objects 3, events 25, replayed 25, kept 0, failed 0, malformed lines 0…'
 */
export function formatReplayReport(report: ReplayReport): string {
  const lines: string[] = [];
  for (const kept of report.keptObjects) {
    lines.push(
      kept.reason === 'dry_run'
        ? `Would replay ${kept.key} (${kept.events} events)`
        : `Kept ${kept.key} (${kept.events} events): ${KEPT_REASONS[kept.reason]}`,
    );
  }
  for (const m of report.malformed) lines.push(`Malformed line: ${m.source} line ${m.line}: ${m.reason}`);
  if (report.dryRun && report.source === 'log-file') lines.push(`Would replay ${report.events} events`);
  const counts =
    `objects ${report.objects}, events ${report.events}, replayed ${report.replayed}, ` +
    `kept ${report.kept}, failed ${report.failed}, malformed lines ${report.malformed.length}`;
  lines.push(report.dryRun ? `Summary (dry run, nothing sent or deleted): ${counts}` : `Summary: ${counts}`);
  if (!report.dryRun) {
    lines.push(
      report.complete
        ? 'Everything was replayed.'
        : 'Not everything was replayed: run again once Firehose accepts events, or fix the malformed lines.',
    );
  }
  return lines.join('\n') + '\n';
}

const KEPT_REASONS: Record<ReplayReport['keptObjects'][number]['reason'], string> = {
  malformed_lines: 'it holds malformed lines (its valid events were sent)',
  undelivered: 'Firehose did not accept all of its events',
  read_failed: 'it could not be read',
  delete_failed: 'its events were sent but deleting it failed',
  dry_run: 'dry run',
};

/**
 * Runs the command and resolves to its exit code.
 * @example process.exitCode = await runReplayRecoveryCli(process.argv.slice(2));
 */
export async function runReplayRecoveryCli(
  argv: readonly string[],
  io: CliIo = { out: (t) => process.stdout.write(t), err: (t) => process.stderr.write(t) },
  env: NodeJS.ProcessEnv = process.env,
): Promise<number> {
  let invocation: Invocation | 'help';
  try {
    invocation = parse(argv, env);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    io.err(`replay:recovery: ${error.message}\n${SHORT_USAGE}\n`);
    return EXIT_USAGE;
  }
  if (invocation === 'help') {
    io.out(`${USAGE}\n`);
    return EXIT_OK;
  }

  const { region, stream, maxAttempts, dryRun } = invocation;
  const log = createLogger('warn', (line) => io.err(line + '\n'));
  const firehose = createFirehoseClient(region, {
    // An operator's network may be slower than a Lambda's; the SDK's own retries stay off (see createFirehoseClient).
    requestHandler: { connectionTimeout: 5_000, requestTimeout: 30_000, throwOnRequestTimeout: true },
  });
  const delivery = { firehose, streamName: stream ?? '', log, maxAttempts, baseDelayMs: 200 };
  const s3 = new S3Client(region === undefined ? {} : { region });
  const into = dryRun ? ' (dry run)' : ` into Firehose stream ${stream}`;
  try {
    let report: ReplayReport;
    if (invocation.logFile !== undefined) {
      let text: string;
      try {
        text = await readFile(invocation.logFile, 'utf8');
      } catch (error) {
        io.err(`replay:recovery: cannot read --log-file ${invocation.logFile}: ${describeError(error).message}\n`);
        return EXIT_USAGE;
      }
      io.out(`Replaying usage_event_undelivered entries of ${invocation.logFile}${into}.\n`);
      report = await replayUndeliveredLog(text, { ...delivery, sourceName: invocation.logFile, dryRun });
    } else {
      const source = invocation.firehoseErrors ? 'firehose-errors' : 'recovery';
      const prefix =
        invocation.prefix ?? (invocation.firehoseErrors ? DEFAULT_FIREHOSE_ERROR_PREFIX : DEFAULT_RECOVERY_PREFIX);
      const days =
        invocation.from === undefined && invocation.to === undefined
          ? 'every day'
          : `${invocation.from ?? '…'}..${invocation.to ?? '…'}`;
      io.out(`Replaying s3://${invocation.bucket}/${prefix} (${days})${into}.\n`);
      report = await replayRecovery({
        ...delivery,
        s3,
        bucket: invocation.bucket!,
        source,
        prefix,
        dryRun,
        ...(invocation.from === undefined ? {} : { from: invocation.from }),
        ...(invocation.to === undefined ? {} : { to: invocation.to }),
      });
    }
    io.out(formatReplayReport(report));
    return report.complete ? EXIT_OK : EXIT_INCOMPLETE;
  } catch (error) {
    if (error instanceof ReplayInputError) {
      io.err(`replay:recovery: ${error.message}\n`);
      return EXIT_USAGE;
    }
    io.err(`replay:recovery: failed: ${describeError(error).message}\n`);
    return EXIT_INCOMPLETE;
  } finally {
    firehose.destroy();
    s3.destroy();
  }
}

if (require.main === module) {
  void runReplayRecoveryCli(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
