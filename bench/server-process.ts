/**
 * The benchmark's servers (fake upstream, gateway) as child processes: started, waited for until they print the
 * address they listen on, and always stopped, even when the benchmark fails half-way.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { buildLocalServer } from '../bin/build-local-server';

export const PROJECT_ROOT = path.resolve(__dirname, '..');

export interface ServerProcess {
  readonly name: string;
  readonly child: ChildProcess;
  /** Base URL the server printed, e.g. `http://127.0.0.1:41234`. */
  readonly url: string;
  /** Lines the server printed after it was ready (its logs). */
  readonly laterOutput: string[];
  /** SIGTERM, then SIGKILL if it has not exited after `graceMs`. Resolves once it has exited. */
  stop(graceMs?: number): Promise<void>;
}

export interface ServerProcessOptions {
  readonly name: string;
  /** Node flags placed before the script, e.g. `['--cpu-prof']`. */
  readonly nodeFlags?: readonly string[];
  /** Script path relative to the project root. */
  readonly script: string;
  readonly env: NodeJS.ProcessEnv;
  /** Finds the base URL in one line of the server's stdout. */
  readonly urlFrom: (line: string) => string | undefined;
  /** @default 30000 */
  readonly startTimeoutMs?: number;
}

const running = new Set<ChildProcess>();
/** Servers that exited without being asked to, for the message of a run that fails because of it. */
const unexpectedExits: string[] = [];

/** One line per server that exited on its own (crashed or was killed from outside), e.g. `gateway: signal SIGKILL`. */
export function unexpectedServerExits(): readonly string[] {
  return unexpectedExits;
}

/** Last resort: a synchronous SIGKILL of every child still running, for `process.on('exit')`. */
export function killAllServersNow(): void {
  for (const child of running) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}

let gatewayBundle: Promise<string> | undefined;

/**
 * The gateway as `npm start` runs it: `bin/local-server.ts` bundled into `dist/local-server.cjs` (built once per
 * benchmark run, from the sources as they are), with the node flags `npm start` gives it.
 */
export async function gatewayAsStarted(): Promise<{ readonly script: string; readonly nodeFlags: readonly string[] }> {
  gatewayBundle ??= buildLocalServer();
  return { script: path.relative(PROJECT_ROOT, await gatewayBundle), nodeFlags: ['--enable-source-maps'] };
}

/**
 * Starts `node [--import tsx] --import ./bench/exit-with-parent.cjs <script>` and resolves once it prints its URL.
 * The child's stdin is a pipe held by this process: if this process dies without stopping it, the pipe closes
 * and the child stops itself (see `exit-with-parent.cjs`).
 */
export function startServerProcess(options: ServerProcessOptions): Promise<ServerProcess> {
  const args = [
    ...(options.nodeFlags ?? []),
    // TypeScript runs through tsx; a built JavaScript bundle on plain Node, as `npm start` runs it.
    ...(options.script.endsWith('.ts') ? ['--import', 'tsx'] : []),
    '--import',
    './bench/exit-with-parent.cjs',
    options.script,
  ];
  const child = spawn(process.execPath, args, {
    cwd: PROJECT_ROOT,
    env: options.env,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  running.add(child);
  let stopping = false;
  const exited = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      running.delete(child);
      if (!stopping) unexpectedExits.push(`${options.name}: ${signal !== null ? `signal ${signal}` : `exit code ${code}`}`);
      resolve();
    });
  });

  const laterOutput: string[] = [];
  const earlyOutput: string[] = [];
  let url: string | undefined;

  return new Promise<ServerProcess>((resolve, reject) => {
    const timer = setTimeout(
      () => fail(new Error(`${options.name} did not start within ${options.startTimeoutMs ?? 30_000} ms`)),
      options.startTimeoutMs ?? 30_000,
    );
    const fail = (error: Error) => {
      clearTimeout(timer);
      stopping = true;
      child.kill('SIGKILL');
      const output = earlyOutput.slice(-20).join('\n');
      reject(new Error(`${error.message}${output ? `\n--- ${options.name} output ---\n${output}` : ''}`));
    };
    const onLine = (line: string) => {
      if (url !== undefined) {
        laterOutput.push(line);
        return;
      }
      earlyOutput.push(line);
      const found = options.urlFrom(line);
      if (found === undefined) return;
      url = found;
      clearTimeout(timer);
      resolve({
        name: options.name,
        child,
        url,
        laterOutput,
        async stop(graceMs = 10_000) {
          if (child.exitCode !== null || child.signalCode !== null) return;
          stopping = true;
          child.kill('SIGTERM');
          const killer = setTimeout(() => child.kill('SIGKILL'), graceMs);
          await exited;
          clearTimeout(killer);
        },
      });
    };
    lineReader(child.stdout!, onLine);
    lineReader(child.stderr!, onLine);
    child.once('error', (error) => fail(error));
    child.once('exit', (code, signal) => {
      if (url === undefined) fail(new Error(`${options.name} exited before it was ready (code ${code}, signal ${signal})`));
    });
  });
}

function lineReader(stream: NodeJS.ReadableStream, onLine: (line: string) => void): void {
  let rest = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    rest += chunk;
    let nl: number;
    while ((nl = rest.indexOf('\n')) >= 0) {
      onLine(rest.slice(0, nl));
      rest = rest.slice(nl + 1);
    }
  });
  stream.on('end', () => {
    if (rest !== '') onLine(rest);
  });
}
