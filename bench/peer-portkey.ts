/**
 * The open-source Portkey gateway (`@portkey-ai/gateway`, a dev-only dependency) as the benchmark's peer, run by
 * its own Node start script exactly as `npx @portkey-ai/gateway --headless` would run it. That script takes its
 * port only as `--port=<n>` and prints `http://localhost:<n>`, so this wrapper picks a free loopback port, hands
 * it over through argv, and prints `listening <url>` once the script has finished starting.
 *
 * Portkey listens on every interface (its start script passes no host); nothing here can change that.
 *
 * Usage: node --import tsx --import ./bench/exit-with-parent.cjs bench/peer-portkey.ts
 */
import { createServer } from 'node:net';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';

/** A port the kernel just handed out and released; the start script binds it a moment later. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      probe.close(() => resolve(port));
    });
  });
}

async function main(): Promise<void> {
  const port = await freePort();
  process.argv.push(`--port=${port}`, '--headless');
  const script = path.resolve(__dirname, '..', 'node_modules', '@portkey-ai', 'gateway', 'build', 'start-server.js');
  // An ES module with top-level await: it resolves once Portkey has printed "Ready for connections!".
  await import(pathToFileURL(script).href);
  process.stdout.write(`\nlistening http://127.0.0.1:${port}\n`);
  // Portkey installs no signal handlers: stop the same way on SIGTERM (from the benchmark or exit-with-parent).
  process.on('SIGTERM', () => process.exit(0));
  process.on('SIGINT', () => process.exit(0));
}

main().catch((error: unknown) => {
  process.stderr.write(`Portkey failed to start: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
