/**
 * This gateway next to a peer: the open-source Portkey gateway (`@portkey-ai/gateway`, run by its own Node start
 * script, see `bench/peer-portkey.ts`), both in front of the same fake OpenAI upstream, in one run on this machine.
 *
 * Four processes: the fake upstream (`bench/fake-upstream-child.ts`), this gateway as `npm start` runs it
 * (`dist/local-server.cjs`, fresh DATA_DIR, gateway key required, metering every request), Portkey, and the load
 * generator (this one). Every measurement alternates direct → gateway → Portkey in rounds, so a drift in the
 * machine's speed hits all three alike. Before measuring, one request through each proxy must come back
 * byte-for-byte as the upstream's own answer (the fake's answers are deterministic), which proves the proxy really
 * reached the fake.
 *
 * Measured: non-streaming chat completions to the end of the answer at 1 and 64 closed-loop clients, streaming
 * chat completions to the first body byte at 1 client, the request rate of the 64-client run (a closed loop keeps
 * every server saturated, so that is its maximum here), and each server's CPU time per request. Afterwards the
 * gateway's event files must hold one event per 2xx answer it gave, and its live counters the same.
 *
 * Standalone: `npx tsx bench/peer.ts [--samples N]` prints the table.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { settledEventsAndCounters } from './accounting';
import { processCpuMs } from './cpu-time';
import { closedLoop, HttpTarget, type BenchRequest, type Sample } from './load';
import { ms, percentile, sortedMs } from './percentiles';
import { gatewayAsStarted, killAllServersNow, startServerProcess, type ServerProcess } from './server-process';

export interface PeerBenchOptions {
  /** Requests per target in the 1-client non-streaming run; the other runs scale from it. @default 1000 */
  readonly samples?: number;
  /** Called with a line of progress now and then. */
  readonly progress?: (message: string) => void;
}

type TargetName = 'direct' | 'gateway' | 'portkey';
const TARGET_NAMES: readonly TargetName[] = ['direct', 'gateway', 'portkey'];
const LABELS: Record<TargetName, string> = {
  direct: 'direct to the upstream',
  gateway: 'this gateway (metering on)',
  portkey: 'Portkey gateway 1.15.2',
};

/** Words per answer: the fake upstream's default, so Portkey (which does not forward `x-fake-words`) gets the same. */
const ANSWER_WORDS = 8;
const ROUNDS = 2;
const PROVIDER_KEY = 'sk-bench-not-a-real-key';

interface Run {
  readonly label: string;
  readonly stream: boolean;
  readonly clients: number;
  readonly samples: number;
}

/** What each target is sent: the same body; the headers each proxy needs to reach the fake upstream. */
function requestsFor(upstreamUrl: string, gatewayKey: string): (target: TargetName, userId: string, stream: boolean) => BenchRequest {
  const bodies = [false, true].map((stream) =>
    Buffer.from(
      JSON.stringify({
        model: 'gpt-4o-mini',
        messages: [
          { role: 'system', content: 'You answer briefly.' },
          { role: 'user', content: 'Say hello to the benchmark in a few words.' },
        ],
        ...(stream ? { stream: true } : {}),
      }),
    ),
  );
  const base = { 'content-type': 'application/json', authorization: `Bearer ${PROVIDER_KEY}`, 'x-fake-words': String(ANSWER_WORDS) };
  return (target, userId, stream) => ({
    path: '/v1/chat/completions',
    headers:
      target === 'portkey'
        ? { ...base, 'x-portkey-provider': 'openai', 'x-portkey-custom-host': `${upstreamUrl}/v1` }
        : // Direct carries the gateway's headers too (the upstream ignores them), so both send the same bytes.
          { ...base, 'helicone-auth': `Bearer ${gatewayKey}`, 'helicone-user-id': userId },
    body: bodies[stream ? 1 : 0]!,
  });
}

interface Stats {
  readonly p50: number;
  readonly p99: number;
  readonly rps: number;
  readonly errors: number;
  readonly cpuUsPerRequest: number;
}

interface RunResult {
  readonly run: Run;
  readonly byTarget: Record<TargetName, Stats>;
}

/**
 * Runs the peer comparison and returns it as markdown table lines (header, separator, one row per target).
 *
 * @example
 * const lines = await peerBench({ samples: 500, progress: (s) => console.error(s) });
 * console.log(lines.join('\n'));
 */
export async function peerBench(options: PeerBenchOptions = {}): Promise<string[]> {
  const base = Math.max(50, Math.round(options.samples ?? 1000));
  const progress = options.progress ?? (() => undefined);
  const runs: readonly Run[] = [
    { label: 'non-streaming, 1 client', stream: false, clients: 1, samples: base },
    { label: 'non-streaming, 64 clients', stream: false, clients: 64, samples: base * 3 },
    // Portkey holds back the first chunk of every stream for 25 ms (see the report), so keep this run short.
    { label: 'streaming first byte, 1 client', stream: true, clients: 1, samples: Math.max(50, Math.round(base / 2)) },
  ];

  const gatewayKey = `gwk-peer-${randomBytes(12).toString('hex')}`;
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'gateway-peer-data-'));
  const servers: ServerProcess[] = [];
  const targets: HttpTarget[] = [];
  try {
    progress('starting the fake upstream, this gateway and Portkey');
    const upstream = await startServerProcess({
      name: 'fake upstream',
      script: 'bench/fake-upstream-child.ts',
      env: { ...process.env, NODE_OPTIONS: '' },
      urlFrom: (line) => /^listening (http\S+)/.exec(line)?.[1],
    });
    servers.push(upstream);
    const asStarted = await gatewayAsStarted();
    const [gateway, portkey] = await Promise.all([
      startServerProcess({
        name: 'gateway',
        script: asStarted.script,
        nodeFlags: asStarted.nodeFlags,
        env: {
          ...process.env,
          NODE_OPTIONS: '',
          PORT: '0',
          HOST: '127.0.0.1',
          DATA_DIR: dataDir,
          UPSTREAM_OPENAI_URL: upstream.url,
          GATEWAY_KEYS: gatewayKey,
          METRICS_KEYS: '',
          LOG_LEVEL: 'warn',
        },
        urlFrom: (line) => /OpenAI base URL:\s+(http\S+)\/v1\s*$/.exec(line)?.[1],
      }).then((server) => (servers.push(server), server)),
      startServerProcess({
        name: 'Portkey',
        script: 'bench/peer-portkey.ts',
        // Portkey's defaults as `npx @portkey-ai/gateway` runs them; no Redis, no cache, no config file.
        env: { ...process.env, NODE_OPTIONS: '', NODE_ENV: 'production' },
        urlFrom: (line) => /^listening (http\S+)/.exec(line)?.[1],
        startTimeoutMs: 60_000,
      }).then((server) => (servers.push(server), server)),
    ]);
    progress(`upstream ${upstream.url}, gateway ${gateway.url}, Portkey ${portkey.url}`);

    const request = requestsFor(upstream.url, gatewayKey);
    const urls: Record<TargetName, string> = { direct: upstream.url, gateway: gateway.url, portkey: portkey.url };
    const pids: Record<TargetName, number> = { direct: upstream.child.pid!, gateway: gateway.child.pid!, portkey: portkey.child.pid! };
    await verifyForwarding(urls, request);
    progress('both proxies answer with the upstream\'s own bytes, streaming and not');

    const pool: Record<TargetName, HttpTarget> = {
      direct: new HttpTarget('direct', upstream.url, 64),
      gateway: new HttpTarget('gateway', gateway.url, 64),
      portkey: new HttpTarget('portkey', portkey.url, 64),
    };
    targets.push(...Object.values(pool));
    /** 2xx answers this gateway gave, every run included: each must be one event. */
    let gateway2xx = 2; // the two verification requests
    const send = async (target: TargetName, clients: number, count: number, stream: boolean) => {
      const result = await closedLoop(pool[target], clients, count, (i) => request(target, `peer-${String(i % 64).padStart(2, '0')}`, stream));
      if (target === 'gateway') gateway2xx += result.samples.filter((s) => s.status >= 200 && s.status < 300).length;
      return result;
    };

    progress('warming up');
    for (const target of TARGET_NAMES) {
      await send(target, 16, Math.round(base / 2), false);
      await send(target, 4, Math.round(base / 10), true);
      await send(target, 1, Math.round(base / 10), false);
    }

    const results: RunResult[] = [];
    for (const run of runs) {
      progress(`${run.label}: ${run.samples} requests per target`);
      const collected: Record<TargetName, Sample[]> = { direct: [], gateway: [], portkey: [] };
      const elapsed: Record<TargetName, number> = { direct: 0, gateway: 0, portkey: 0 };
      const cpuMs: Record<TargetName, number> = { direct: 0, gateway: 0, portkey: 0 };
      for (let round = 0; round < ROUNDS; round++) {
        for (const target of TARGET_NAMES) {
          const cpuBefore = processCpuMs(pids[target]);
          const result = await send(target, run.clients, Math.ceil(run.samples / ROUNDS), run.stream);
          cpuMs[target] += processCpuMs(pids[target]) - cpuBefore;
          collected[target].push(...result.samples);
          elapsed[target] += result.elapsedMs;
        }
      }
      const stats = (target: TargetName): Stats => {
        const ok = collected[target].filter((s) => s.status === 200);
        const sorted = sortedMs(ok.map((s) => (run.stream ? s.ttfbMs : s.totalMs)));
        return {
          p50: percentile(sorted, 50),
          p99: percentile(sorted, 99),
          rps: (collected[target].length / elapsed[target]) * 1000,
          errors: collected[target].length - ok.length,
          cpuUsPerRequest: (cpuMs[target] * 1000) / collected[target].length,
        };
      };
      results.push({ run, byTarget: { direct: stats('direct'), gateway: stats('gateway'), portkey: stats('portkey') } });
    }

    progress(`checking the gateway's events and counters (${gateway2xx} 2xx answers)`);
    for (const target of targets) target.close();
    targets.length = 0;
    const settled = await settledEventsAndCounters(dataDir, gateway.url, (u) => u.startsWith('peer-'), gateway2xx);
    let counted = 0;
    for (const n of settled.counters.values()) counted += n;
    const metering = {
      answers: gateway2xx,
      events: settled.events.linesById.size,
      duplicates: settled.events.lines - settled.events.linesById.size,
      counters: counted,
    };
    progress(
      `metering: ${metering.answers} 2xx answers, ${metering.events} events in DATA_DIR/events ` +
        `(${metering.duplicates} duplicate lines), ${metering.counters} requests in the live counters`,
    );
    return renderTable(results, metering);
  } finally {
    for (const target of targets) target.close();
    await Promise.all(servers.map((server) => server.stop(10_000).catch(() => undefined)));
    rmSync(dataDir, { recursive: true, force: true });
  }
}

/**
 * One request through each proxy, streaming and not, must come back exactly as the upstream answers it directly:
 * the fake derives ids from the request body and fixes every timestamp, so equal bytes mean the proxy reached it.
 */
async function verifyForwarding(
  urls: Record<TargetName, string>,
  request: (target: TargetName, userId: string, stream: boolean) => BenchRequest,
): Promise<void> {
  for (const stream of [false, true]) {
    const answer = async (target: TargetName) => {
      const spec = request(target, 'peer-verify', stream);
      const response = await fetch(`${urls[target]}${spec.path}`, { method: 'POST', headers: spec.headers, body: spec.body });
      return { status: response.status, text: await response.text() };
    };
    const direct = await answer('direct');
    if (direct.status !== 200 || !direct.text.includes('fp_f4ce0upstr')) {
      throw new Error(`the fake upstream answered ${direct.status}, not its own chat completion`);
    }
    for (const target of ['gateway', 'portkey'] as const) {
      const got = await answer(target);
      if (got.status !== 200 || got.text !== direct.text) {
        throw new Error(
          `${LABELS[target]} did not pass the upstream's ${stream ? 'stream' : 'answer'} through unchanged ` +
            `(status ${got.status}, ${got.text.length} bytes vs ${direct.text.length}): ${got.text.slice(0, 200)}`,
        );
      }
    }
  }
}

function renderTable(
  results: readonly RunResult[],
  metering: { answers: number; events: number; duplicates: number; counters: number },
): string[] {
  const header = [
    'target',
    ...results.map((r) => `${r.run.label}: p50 / p99 ms`),
    'max req/s (64 clients, closed loop)',
    'server CPU µs/request (64 clients)',
    'errors',
    'requests metered',
  ];
  const at64 = results.find((r) => r.run.clients === 64 && !r.run.stream);
  const rows = TARGET_NAMES.map((target) => {
    const cells = results.map((r) => {
      const s = r.byTarget[target];
      if (target === 'direct') return `${ms(s.p50)} / ${ms(s.p99)}`;
      const d = r.byTarget.direct;
      return `+${ms(s.p50 - d.p50)} / +${ms(s.p99 - d.p99)}`;
    });
    const errors = results.reduce((n, r) => n + r.byTarget[target].errors, 0);
    const metered =
      target === 'gateway'
        ? `${metering.events.toLocaleString('en-US')} events, ${metering.counters.toLocaleString('en-US')} counted, ` +
          `for ${metering.answers.toLocaleString('en-US')} 2xx answers` +
          (metering.events === metering.answers && metering.counters === metering.answers && metering.duplicates === 0 ? '' : ' **mismatch**')
        : target === 'portkey'
          ? 'none (no usage store)'
          : '—';
    return [
      target === 'direct' ? `${LABELS[target]} (absolute)` : `${LABELS[target]} (added vs direct)`,
      ...cells,
      at64 ? Math.round(at64.byTarget[target].rps).toLocaleString('en-US') : 'n/a',
      at64 ? Math.round(at64.byTarget[target].cpuUsPerRequest).toLocaleString('en-US') : 'n/a',
      String(errors),
      metered,
    ];
  });
  return [
    `| ${header.join(' | ')} |`,
    `| ${header.map((_, i) => (i === 0 ? '---' : '---:')).join(' | ')} |`,
    ...rows.map((row) => `| ${row.join(' | ')} |`),
  ];
}

if (require.main === module) {
  const at = process.argv.indexOf('--samples');
  const samples = at >= 0 ? Number(process.argv[at + 1]) : undefined;
  const say = (message: string) => process.stderr.write(`[peer ${new Date().toISOString().slice(11, 19)}] ${message}\n`);
  process.on('exit', killAllServersNow);
  const loadBefore = os.loadavg();
  const started = Date.now();
  peerBench({ ...(samples !== undefined && Number.isFinite(samples) ? { samples } : {}), progress: say }).then(
    (lines) => {
      const load = (l: number[]) => l.map((x) => x.toFixed(2)).join(', ');
      const cpus = os.cpus();
      process.stdout.write(
        `${lines.join('\n')}\n\n` +
          `Node ${process.version} · ${cpus[0]?.model.trim() ?? 'unknown CPU'} × ${cpus.length} · ` +
          `load average (1, 5, 15 min) ${load(loadBefore)} before, ${load(os.loadavg())} after · took ${((Date.now() - started) / 1000).toFixed(0)} s\n`,
      );
      process.exit(0);
    },
    (error: unknown) => {
      process.stderr.write(`peer bench failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
      killAllServersNow();
      process.exit(1);
    },
  );
}
