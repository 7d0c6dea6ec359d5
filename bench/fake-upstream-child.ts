/**
 * The fake OpenAI upstream as its own process, so the benchmark's upstream does not share an event loop (or a
 * core's worth of CPU time) with the gateway or the load generator. Prints `listening <url>` once ready and stops
 * on SIGTERM or SIGINT.
 *
 * Usage: node --import tsx --import ./bench/exit-with-parent.cjs bench/fake-upstream-child.ts
 */
import { startFakeUpstream } from '../test/support/fake-upstream';

async function main(): Promise<void> {
  const upstream = await startFakeUpstream({ record: false });
  process.stdout.write(`listening ${upstream.url}\n`);
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    upstream.close().finally(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((error: unknown) => {
  process.stderr.write(`fake upstream failed to start: ${String(error)}\n`);
  process.exit(1);
});
