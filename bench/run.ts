/**
 * `npm run bench`: the gateway's overhead and capacity on this machine, in one run on loopback.
 *
 * Three processes, kept apart so none steals the other's event loop: the fake OpenAI upstream
 * (`bench/fake-upstream-child.ts`) and the gateway as `npm start` runs it (`bin/local-server.ts` bundled into
 * `dist/local-server.cjs`, fresh temporary DATA_DIR, LOG_LEVEL=warn, a gateway key required) each in a child
 * process; the load generator in this one.
 *
 * 1. Added latency: the same requests sent straight to the upstream and through the gateway, closed loop at 1 and
 *    64 clients over keep-alive connections, after a warm-up. Non-streaming chat completions are timed to the end
 *    of the answer, streaming ones to the first body byte. Added = gateway percentile − direct percentile.
 * 2. Sustained rate with metering on: open loop at fixed rates (direct too, to show what the upstream and the load
 *    generator manage by themselves), then 1000 req/s for 10 s over 100 users with an exact accounting check: each
 *    request carries its own id, every answer has exactly one event in the event files with the status the client
 *    got, and the live counters (metrics API) hold exactly those events, in total and per user.
 * 3. Proxy bundle load time: `require()` of the Lambda proxy bundle, minus bare `node` start-up.
 *
 * Prints a markdown report and writes it to bench/results.md; exits 1 when the accounting check fails.
 *
 * Flags: `--quick` (fewer samples, shorter runs: a smoke test, results.md untouched), `--profile` (the gateway runs
 * under `--cpu-prof`; prints where its CPU time went; results.md untouched, since profiling slows it down),
 * `--keep-data` (leave the gateway's DATA_DIR in place), `--no-wait` (start at once even if other work is keeping
 * the cores busy; by default the bench waits up to a minute for a quiet moment).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  checkAccounting,
  settledCounters,
  settledEventsAndCounters,
  type AccountingReport,
  type SentRequest,
} from './accounting';
import { measureBundleLoad, type BundleLoad } from './bundle-load';
import { HISTORY_BENCH_HEADER, historyBench } from './history';
import { limitCheckRows } from './limits';
import { peerBench } from './peer';
import { summariseCpuProfile, type ProfileSummary } from './cpu-profile';
import { cpuBetween, machineCpu, readCpu, type CpuReading } from './cpu-time';
import { closedLoop, HttpTarget, openLoop, type BenchRequest, type Sample } from './load';
import { ms, percentile, sortedMs } from './percentiles';
import { gatewayAsStarted, killAllServersNow, PROJECT_ROOT, startServerProcess, unexpectedServerExits, type ServerProcess } from './server-process';

const argv = new Set(process.argv.slice(2));
const QUICK = argv.has('--quick');
const PROFILE = argv.has('--profile');
const KEEP_DATA = argv.has('--keep-data');
const WAIT_FOR_QUIET = !argv.has('--no-wait');

/** What the gateway should achieve; shown next to the results, never used to pick what is reported. */
const TARGETS = { addedP50Ms: 1, addedP99Ms: 5, headlineRate: 1000, headlineSeconds: 10 };

/** A rate "holds" when every request is answered 2xx, nearly all on time, with no growing queue. */
const HOLDS = { minAchievedShare: 0.98, maxP99Ms: 100 };

interface LatencyCell {
  readonly label: string;
  readonly stream: boolean;
  readonly clients: number;
  readonly samples: number;
}

const LATENCY_CELLS: readonly LatencyCell[] = [
  { label: 'chat, non-streaming: full answer', stream: false, clients: 1, samples: QUICK ? 400 : 2000 },
  { label: 'chat, non-streaming: full answer', stream: false, clients: 64, samples: QUICK ? 1000 : 4000 },
  { label: 'chat, streaming: first byte', stream: true, clients: 1, samples: QUICK ? 300 : 2000 },
  { label: 'chat, streaming: first byte', stream: true, clients: 64, samples: QUICK ? 500 : 3000 },
];
/** Each cell alternates direct and gateway in this many rounds, so a drift in the machine's speed hits both. */
const ROUNDS = 2;
const RATES = QUICK ? [250, 1000] : [250, 500, 1000, 1500, 2000];
const RATE_SECONDS = QUICK ? 2 : 5;
const DIRECT_RATE_SECONDS = QUICK ? 1 : 3;
const HEADLINE = { rate: TARGETS.headlineRate, seconds: QUICK ? 3 : TARGETS.headlineSeconds, users: 100 };
/** Words per answer; the fake upstream sends one SSE event per word and waits for each write to reach the socket. */
const ANSWER_WORDS = 8;

const PROVIDER_KEY = 'sk-bench-not-a-real-key';
const GATEWAY_KEY = `gwk-bench-${randomBytes(12).toString('hex')}`;

function chatRequest(userId: string, stream: boolean, requestId?: string): BenchRequest {
  const body = {
    model: 'gpt-4o-mini',
    messages: [
      { role: 'system', content: 'You answer briefly.' },
      { role: 'user', content: 'Say hello to the benchmark in a few words.' },
    ],
    ...(stream ? { stream: true } : {}),
  };
  return {
    path: '/v1/chat/completions',
    headers: {
      'content-type': 'application/json',
      authorization: `Bearer ${PROVIDER_KEY}`,
      // Sent to the upstream too (it ignores them), so both paths carry the same bytes.
      'helicone-auth': `Bearer ${GATEWAY_KEY}`,
      'helicone-user-id': userId,
      ...(requestId === undefined ? {} : { 'helicone-request-id': requestId }),
      'x-fake-words': String(ANSWER_WORDS),
    },
    body: Buffer.from(JSON.stringify(body)),
  };
}

const pad = (n: number, width = 3) => String(n).padStart(width, '0');

/** Every request sent through the gateway, per user, for the whole-run check. */
class GatewayLedger {
  readonly answeredByUser = new Map<string, number>();
  transportFailures = 0;

  add(requests: readonly BenchRequest[], samples: readonly Sample[]): void {
    for (let i = 0; i < samples.length; i++) {
      const user = requests[i]!.headers['helicone-user-id']!;
      if (samples[i]!.status === 0) this.transportFailures++;
      else this.answeredByUser.set(user, (this.answeredByUser.get(user) ?? 0) + 1);
    }
  }
}

async function closedLoopRecorded(
  target: HttpTarget,
  clients: number,
  count: number,
  requestFor: (i: number) => BenchRequest,
  ledger: GatewayLedger | undefined,
): Promise<{ samples: Sample[]; elapsedMs: number }> {
  const requests: BenchRequest[] = new Array(count);
  const result = await closedLoop(target, clients, count, (i) => (requests[i] = requestFor(i)));
  ledger?.add(requests, result.samples);
  return result;
}

// ─── Measurements ──────────────────────────────────────────────────────────────────────────────────────────────

interface LatencyResult {
  readonly cell: LatencyCell;
  readonly direct: { p50: number; p99: number; rps: number; errors: number };
  readonly gateway: { p50: number; p99: number; rps: number; errors: number };
  /** Gateway process CPU time (all threads) per request through it, in microseconds. */
  readonly gatewayCpuUsPerRequest: number;
  readonly gatewayMainThreadCpuUsPerRequest: number;
  /** Share of the machine's CPU time other processes used while this row ran. */
  readonly otherCpuShare: number;
}

async function measureLatency(
  cell: LatencyCell,
  direct: HttpTarget,
  gateway: HttpTarget,
  ledger: GatewayLedger,
  cpu: () => CpuReading,
): Promise<LatencyResult> {
  const metric = (s: Sample) => (cell.stream ? s.ttfbMs : s.totalMs);
  const collected = { direct: [] as Sample[], gateway: [] as Sample[] };
  const elapsed = { direct: 0, gateway: 0 };
  let gatewayCpuMs = 0;
  let gatewayMainThreadMs = 0;
  let otherMs = 0;
  let availableMs = 0;
  const perRound = Math.ceil(cell.samples / ROUNDS);
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, target] of [
      ['direct', direct],
      ['gateway', gateway],
    ] as const) {
      const before = cpu();
      const run = await closedLoopRecorded(
        target,
        cell.clients,
        perRound,
        (i) => chatRequest(`bench-lat-${pad(i % 64, 2)}`, cell.stream),
        name === 'gateway' ? ledger : undefined,
      );
      const spent = cpuBetween(before, cpu());
      if (name === 'gateway') {
        gatewayCpuMs += spent.gatewayMs;
        gatewayMainThreadMs += spent.gatewayMainThreadMs;
      }
      otherMs += spent.otherMs;
      availableMs += spent.availableMs;
      collected[name].push(...run.samples);
      elapsed[name] += run.elapsedMs;
    }
  }
  const stats = (name: 'direct' | 'gateway') => {
    const ok = collected[name].filter((s) => s.status === 200);
    const sorted = sortedMs(ok.map(metric));
    return {
      p50: percentile(sorted, 50),
      p99: percentile(sorted, 99),
      rps: (collected[name].length / elapsed[name]) * 1000,
      errors: collected[name].length - ok.length,
    };
  };
  return {
    cell,
    direct: stats('direct'),
    gateway: stats('gateway'),
    gatewayCpuUsPerRequest: (gatewayCpuMs * 1000) / collected.gateway.length,
    gatewayMainThreadCpuUsPerRequest: (gatewayMainThreadMs * 1000) / collected.gateway.length,
    otherCpuShare: otherMs / availableMs,
  };
}

interface RateResult {
  readonly target: 'direct' | 'gateway';
  readonly offered: number;
  readonly seconds: number;
  readonly sent: number;
  readonly achieved: number;
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
  readonly errors: number;
  readonly maxIssueLagMs: number;
  readonly holds: boolean;
  readonly headline: boolean;
  /** CPU time of the server under test (all threads) per request, in microseconds. */
  readonly serverCpuUsPerRequest: number;
  /** Of that, the main thread's (the gateway only; the rest is libuv, DuckDB and GC worker threads). */
  readonly mainThreadCpuUsPerRequest: number;
  /** The server's CPU time as a share of one core over the run. */
  readonly serverCores: number;
  readonly otherCpuShare: number;
}

async function measureRate(
  name: 'direct' | 'gateway',
  target: HttpTarget,
  rate: number,
  seconds: number,
  requestFor: (i: number) => BenchRequest,
  ledger: GatewayLedger | undefined,
  cpu: () => CpuReading,
  headline = false,
): Promise<{ result: RateResult; requests: readonly BenchRequest[]; samples: readonly Sample[] }> {
  const before = cpu();
  const run = await openLoop(target, rate, seconds * 1000, requestFor);
  const spent = cpuBetween(before, cpu());
  const serverMs = name === 'gateway' ? spent.gatewayMs : spent.upstreamMs;
  ledger?.add(run.requests, run.samples);
  const ok = run.samples.filter((s) => s.status >= 200 && s.status < 300);
  const sorted = sortedMs(run.samples.map((s) => s.totalMs));
  const achieved = (ok.length / run.elapsedMs) * 1000;
  const errors = run.samples.length - ok.length;
  const p99 = percentile(sorted, 99);
  return {
    result: {
      target: name,
      offered: rate,
      seconds,
      sent: run.samples.length,
      achieved,
      p50: percentile(sorted, 50),
      p99,
      max: sorted.length > 0 ? sorted[sorted.length - 1]! : NaN,
      errors,
      maxIssueLagMs: run.maxIssueLagMs,
      holds: errors === 0 && achieved >= rate * HOLDS.minAchievedShare && p99 <= HOLDS.maxP99Ms,
      headline,
      serverCpuUsPerRequest: (serverMs * 1000) / run.samples.length,
      mainThreadCpuUsPerRequest: name === 'gateway' ? (spent.gatewayMainThreadMs * 1000) / run.samples.length : NaN,
      serverCores: serverMs / run.elapsedMs,
      otherCpuShare: spent.otherMs / spent.availableMs,
    },
    requests: run.requests,
    samples: run.samples,
  };
}

interface WholeRunCheck {
  readonly answered: number;
  readonly transportFailures: number;
  readonly events: number;
  readonly duplicates: number;
  readonly counters: number;
  readonly usersDisagreeing: number;
}

async function checkWholeRun(gatewayUrl: string, dataDir: string, ledger: GatewayLedger): Promise<WholeRunCheck> {
  const wanted = (user: string) => user.startsWith('bench-');
  let answered = 0;
  for (const n of ledger.answeredByUser.values()) answered += n;
  const { events, counters } = await settledEventsAndCounters(dataDir, gatewayUrl, wanted, answered);
  let counterSum = 0;
  for (const n of counters.values()) counterSum += n;
  const users = new Set([...events.byUser.keys(), ...counters.keys()]);
  let usersDisagreeing = 0;
  for (const user of users) if ((events.byUser.get(user) ?? 0) !== (counters.get(user) ?? 0)) usersDisagreeing++;
  return {
    answered,
    transportFailures: ledger.transportFailures,
    events: events.linesById.size,
    duplicates: events.lines - events.linesById.size,
    counters: counterSum,
    usersDisagreeing,
  };
}

// ─── Report ────────────────────────────────────────────────────────────────────────────────────────────────────

function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  return [
    `| ${header.join(' | ')} |`,
    `| ${header.map((_, i) => (i === 0 ? '---' : '---:')).join(' | ')} |`,
    ...rows.map((row) => `| ${row.join(' | ')} |`),
  ].join('\n');
}

const met = (ok: boolean) => (ok ? 'met' : '**not met**');
const int = (n: number) => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : 'n/a');
const pct = (share: number) => (Number.isFinite(share) ? `${(share * 100).toFixed(0)}%` : 'n/a');

interface Report {
  readonly startedAt: Date;
  readonly durationS: number;
  readonly machine: { readonly loadAtStart: number; readonly loadAtEnd: number; readonly otherCpuShare: number };
  readonly latency: readonly LatencyResult[];
  readonly rates: readonly RateResult[];
  readonly accounting: AccountingReport;
  readonly wholeRun: WholeRunCheck;
  readonly bundle: BundleLoad;
  readonly gatewayLogs: ReadonlyMap<string, number>;
  readonly profile: ProfileSummary | undefined;
}

function renderReport(r: Report): string {
  const cpus = os.cpus();
  const cpu = `${cpus[0]?.model.trim() ?? 'unknown CPU'} × ${cpus.length}`;
  const lines: string[] = [];
  lines.push('# Gateway benchmark', '');
  lines.push(
    `${r.startedAt.toISOString().slice(0, 16).replace('T', ' ')} UTC · Node ${process.version} · ${cpu} · ` +
      `${(os.totalmem() / 2 ** 30).toFixed(0)} GiB · ${os.platform()} ${os.release()} · bench took ${r.durationS.toFixed(0)} s` +
      (QUICK ? ' · **--quick run**' : '') +
      (PROFILE ? ' · **gateway under --cpu-prof (slower than normal)**' : ''),
    '',
  );
  lines.push(
    'Rerun: `npm run bench` (about 2 minutes; rewrites this file). One run on loopback: the fake OpenAI upstream and the ' +
      'gateway (`bin/local-server.ts` as `npm start` runs it: bundled into `dist/local-server.cjs`, on plain Node; ' +
      'local storage: event files + DuckDB counters, fresh DATA_DIR, gateway key required, LOG_LEVEL=warn) each in a child process, the load generator (node:http, keep-alive) in the bench ' +
      'process: all three share the machine\'s cores.',
    '',
  );
  lines.push(
    `Machine load: 1-minute load average ${r.machine.loadAtStart.toFixed(1)} at the start, ${r.machine.loadAtEnd.toFixed(1)} at the end ` +
      `(${os.cpus().length} cores); processes other than the bench's three used ${pct(r.machine.otherCpuShare)} of the machine's CPU ` +
      'time during the run.' +
      (r.machine.otherCpuShare > 0.2
        ? ' **Other work was competing for the cores: latencies and rates below are worse than on an idle machine; ' +
          'the CPU-per-request columns are the steadier measure.**'
        : ''),
    '',
  );

  lines.push('## Added latency', '');
  lines.push(
    `Closed loop, keep-alive, after a warm-up; gpt-4o-mini chat completion, ${ANSWER_WORDS}-word answer; direct and gateway ` +
      `alternate in ${ROUNDS} rounds per row. Milliseconds. Added = gateway percentile − direct percentile. ` +
      `Target: added p50 ≤ ${TARGETS.addedP50Ms} ms, added p99 ≤ ${TARGETS.addedP99Ms} ms.`,
    '',
  );
  lines.push(
    table(
      [
        'request',
        'clients',
        'samples',
        'direct p50',
        'direct p99',
        'gateway p50',
        'gateway p99',
        'added p50',
        'added p99',
        'req/s direct / gateway',
        'gateway CPU µs/req (main thread)',
        'other load',
        'target',
      ],
      r.latency.map(({ cell, direct, gateway, gatewayCpuUsPerRequest, gatewayMainThreadCpuUsPerRequest, otherCpuShare }) => {
        const addedP50 = gateway.p50 - direct.p50;
        const addedP99 = gateway.p99 - direct.p99;
        const errors = direct.errors + gateway.errors;
        return [
          cell.label + (errors > 0 ? ` (**${errors} errors**)` : ''),
          String(cell.clients),
          int(cell.samples),
          ms(direct.p50),
          ms(direct.p99),
          ms(gateway.p50),
          ms(gateway.p99),
          `**${ms(addedP50)}**`,
          `**${ms(addedP99)}**`,
          `${int(direct.rps)} / ${int(gateway.rps)}`,
          `${int(gatewayCpuUsPerRequest)} (${int(gatewayMainThreadCpuUsPerRequest)})`,
          pct(otherCpuShare),
          `p50 ${met(addedP50 <= TARGETS.addedP50Ms)}, p99 ${met(addedP99 <= TARGETS.addedP99Ms)}`,
        ];
      }),
    ),
    '',
  );
  const streams = r.latency.find((l) => l.cell.stream && l.cell.clients > 1);
  if (streams) {
    const upstreamBound = streams.gateway.rps >= 0.9 * streams.direct.rps;
    lines.push(
      `The fake upstream waits for each SSE write to reach the socket before the next; at ${streams.cell.clients} clients ` +
        `it serves ~${int(streams.direct.rps)} ${ANSWER_WORDS}-word streams/s by itself, the gateway ~${int(streams.gateway.rps)}: ` +
        (upstreamBound
          ? 'the upstream is the bottleneck of that row, and its time to first byte is mostly the upstream\'s queue.'
          : 'the upstream is not what limits the gateway in that row.'),
      '',
    );
  }

  lines.push('## Sustained rate with metering on', '');
  lines.push(
    'Open loop: requests start on a fixed schedule whatever the answers do; latency counts from the scheduled start ' +
      '(so queueing is included). Non-streaming chat completions, 100 users. Achieved = 2xx answers / (last answer − first start). ' +
      `A rate holds when every request is answered 2xx, achieved ≥ ${HOLDS.minAchievedShare * 100}% of offered and p99 ≤ ${HOLDS.maxP99Ms} ms. ` +
      'The direct rows show what the upstream and the load generator manage without the gateway. ' +
      'Server CPU: CPU time of the server process (every thread) per request sent; for the gateway, its main thread ' +
      '(JavaScript, HTTP, the event loop) in parentheses, the rest being worker threads (event-file writes and fsyncs, ' +
      'DuckDB counter transactions, garbage collection). Server cores busy: that CPU time over the run\'s duration.',
    '',
  );
  lines.push(
    table(
      [
        'target',
        'offered req/s',
        'seconds',
        'sent',
        'achieved req/s',
        'p50 ms',
        'p99 ms',
        'max ms',
        'errors',
        'holds',
        'server CPU µs/req (main thread)',
        'server cores busy',
        'other load',
      ],
      r.rates.map((x) => [
        x.headline ? `**gateway (accounting run)**` : x.target,
        int(x.offered),
        String(x.seconds),
        int(x.sent),
        int(x.achieved),
        ms(x.p50),
        ms(x.p99),
        ms(x.max),
        String(x.errors),
        x.holds ? 'yes' : '**no**',
        `${int(x.serverCpuUsPerRequest)}${x.target === 'gateway' ? ` (${int(x.mainThreadCpuUsPerRequest)})` : ''}`,
        x.serverCores.toFixed(2),
        pct(x.otherCpuShare),
      ]),
    ),
    '',
  );
  const heldGateway = r.rates.filter((x) => x.target === 'gateway' && x.holds).map((x) => x.offered);
  const heldDirect = r.rates.filter((x) => x.target === 'direct' && x.holds).map((x) => x.offered);
  lines.push(
    `Highest rate held: gateway ${heldGateway.length > 0 ? `${int(Math.max(...heldGateway))} req/s` : 'none of those tried'}, ` +
      `direct ${heldDirect.length > 0 ? `${int(Math.max(...heldDirect))} req/s` : 'none of those tried'} ` +
      `(ladder: ${RATES.map(int).join(', ')} req/s, each stopping at the first rate it does not hold).`,
    '',
  );

  const a = r.accounting;
  const h = r.rates.find((x) => x.headline);
  const held = h !== undefined && h.holds;
  lines.push(`## ${HEADLINE.rate} req/s for ${HEADLINE.seconds} s over ${HEADLINE.users} users: accounting ${a.pass ? 'PASS' : '**FAIL**'}, rate ${held ? 'held' : '**not held**'}`, '');
  lines.push(
    'Each request carries its own `Helicone-Request-Id`. Events are read back from `DATA_DIR/events/dt=*/*.ndjson`, ' +
      'live counters from `GET /metrics/users?period=all` (every page). Accounting passes when every answered request ' +
      'has exactly one event with the status the client got, no event is duplicated or foreign, and the counters hold ' +
      'exactly the events, in total and per user. The rate is held when, on top of that, every request was answered 2xx ' +
      `with achieved ≥ ${HOLDS.minAchievedShare * 100}% of offered and p99 ≤ ${HOLDS.maxP99Ms} ms (see the rate table). ` +
      `Target: ${TARGETS.headlineRate.toLocaleString('en-US')} req/s for ${TARGETS.headlineSeconds} s with every event and counter accounted for.`,
    '',
  );
  lines.push(
    table(
      ['check', 'value'],
      [
        ['requests sent', int(a.sent)],
        ['answered 2xx / other status / no answer', `${int(a.answered2xx)} / ${int(a.answeredOther)} / ${int(a.unanswered)}`],
        ['achieved rate, p50 / p99 latency', h ? `${int(h.achieved)} req/s, ${ms(h.p50)} / ${ms(h.p99)} ms` : 'n/a'],
        ['event lines for these users', int(a.eventLines)],
        ['distinct request_id in events', int(a.distinctEvents)],
        ['duplicate event lines', int(a.duplicateEvents)],
        ['answered requests without an event', int(a.missingEvents)],
        ['events with another status than the answer', int(a.statusMismatches)],
        ['events for request ids never sent', int(a.unexpectedEvents)],
        ['unanswered requests the gateway still recorded', int(a.unansweredWithEvent)],
        ['Helicone-Id ≠ request id sent', int(a.idMismatches)],
        ['requests in live counters (sum)', int(a.counterRequests)],
        ['users where events = counters', `${int(a.users - a.usersDisagreeing)} of ${int(a.users)}`],
        ['counters complete after the last answer', `${int(a.countersSettledMs)} ms`],
        ['accounting', a.pass ? 'PASS' : `**FAIL**: ${a.failures.join('; ')}`],
        ['rate', held ? 'held' : '**not held**'],
      ],
    ),
    '',
  );
  const w = r.wholeRun;
  const wholeOk = w.events === w.counters && w.duplicates === 0 && w.usersDisagreeing === 0 && w.answered <= w.events;
  lines.push(
    `Whole run (warm-up, latency and rate runs included): ${int(w.answered)} answers through the gateway, ` +
      `${int(w.transportFailures)} requests without an answer, ${int(w.events)} distinct events (${int(w.duplicates)} duplicate lines), ` +
      `${int(w.counters)} requests in the counters, ${int(w.usersDisagreeing)} users whose events and counters differ: ` +
      `${wholeOk ? 'events and counters agree' : '**events and counters disagree**'}.`,
    '',
  );

  lines.push('## Proxy bundle load time', '');
  const b = r.bundle;
  if (b.state === 'measured') {
    lines.push(
      table(
        ['bundle', 'size KB', 'gzip KB', `load ms (median of ${b.runs})`, 'fastest load ms', 'of which external SDK clients ms', 'bare node ms'],
        [
          [
            `\`${b.file}\` (${b.origin})`,
            (b.bytes / 1024).toFixed(1),
            (b.gzipBytes / 1024).toFixed(1),
            `**${ms(b.loadMs)}**`,
            ms(b.minLoadMs),
            ms(b.externalsMs),
            ms(b.baselineMs),
          ],
        ],
      ),
      '',
      'Load = `node -e "require(bundle)"` − `node -e ""`, with a stub `awslambda` global and the environment the stack ' +
        'sets (the entry reads its configuration at load), alternating runs after one warm-up each. The external SDK ' +
        `clients (${b.externals.map((e) => `\`${e}\``).join(', ') || 'none'}) ship with the Lambda runtime and are loaded ` +
        'from node_modules here; their column is `require()` of those alone, minus bare node.' +
        (b.bytes < 4096 ? ' **The bundle is under 4 KB: the proxy entry looks like a placeholder, so this number says little yet.**' : ''),
      '',
    );
  } else {
    lines.push(`not built (${b.state === 'not built' ? b.reason : ''})`, '');
  }

  if (r.gatewayLogs.size > 0) {
    lines.push('## Gateway warnings during the run', '');
    lines.push(table(['level: message', 'count'], [...r.gatewayLogs.entries()].map(([k, v]) => [k, int(v)])), '');
  }

  if (r.profile) {
    const p = r.profile;
    lines.push('## Where the gateway\'s CPU time goes (--cpu-prof, whole run)', '');
    lines.push(`Busy ${int(p.busyMs)} ms, idle ${int(p.idleMs)} ms on the gateway's main thread.`, '');
    lines.push('By area (self time):', '');
    lines.push(table(['area', 'ms', '% of busy'], p.byArea.slice(0, 20).map((x) => [x.name, int(x.ms), x.percent.toFixed(1)])), '');
    lines.push('Top functions by self time:', '');
    lines.push(table(['function', 'ms', '% of busy'], p.topSelf.map((x) => [`\`${x.name}\``, int(x.ms), x.percent.toFixed(1)])), '');
    lines.push('Gateway functions by inclusive time (synchronous stacks only: time after an `await` counts elsewhere):', '');
    lines.push(table(['function', 'ms', '% of busy'], p.topInclusive.map((x) => [`\`${x.name}\``, int(x.ms), x.percent.toFixed(1)])), '');
  }
  return lines.join('\n');
}

// ─── Main ──────────────────────────────────────────────────────────────────────────────────────────────────────

function progress(message: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${message}\n`);
}

/**
 * Waits (up to `maxMs`) until the machine's cores are mostly idle over a 2-second window, so that other work does
 * not decide the numbers. Returns the busy share of the last window.
 */
async function waitForQuietMachine(maxMs: number, quietShare = 0.15): Promise<number> {
  const until = performance.now() + maxMs;
  for (;;) {
    const before = machineCpu();
    await sleep(2000);
    const after = machineCpu();
    const busy = (after.busyMs - before.busyMs) / (after.totalMs - before.totalMs);
    if (!(busy > quietShare) || performance.now() >= until) return busy;
    progress(`the machine is ${(busy * 100).toFixed(0)}% busy with other work; waiting for a quieter moment`);
  }
}

async function main(): Promise<number> {
  if (WAIT_FOR_QUIET) await waitForQuietMachine(60_000);
  const startedAt = new Date();
  const started = performance.now();
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'gateway-bench-data-'));
  const profileDir = PROFILE ? mkdtempSync(path.join(os.tmpdir(), 'gateway-bench-prof-')) : undefined;
  const servers: ServerProcess[] = [];
  const targets: HttpTarget[] = [];
  let keepData = KEEP_DATA;
  try {
    progress('starting the fake upstream and the gateway');
    const upstream = await startServerProcess({
      name: 'fake upstream',
      script: 'bench/fake-upstream-child.ts',
      env: { ...process.env, NODE_OPTIONS: '' },
      urlFrom: (line) => /^listening (http\S+)/.exec(line)?.[1],
    });
    servers.push(upstream);
    const gatewayEnv: NodeJS.ProcessEnv = {
      ...process.env,
      NODE_OPTIONS: '',
      PORT: '0',
      HOST: '127.0.0.1',
      DATA_DIR: dataDir,
      UPSTREAM_OPENAI_URL: upstream.url,
      GATEWAY_KEYS: GATEWAY_KEY,
      METRICS_KEYS: '',
      LOG_LEVEL: 'warn',
    };
    const asStarted = await gatewayAsStarted();
    const gateway = await startServerProcess({
      name: 'gateway',
      script: asStarted.script,
      nodeFlags: [...asStarted.nodeFlags, ...(profileDir ? ['--cpu-prof', '--cpu-prof-dir', profileDir] : [])],
      env: gatewayEnv,
      urlFrom: (line) => /OpenAI base URL:\s+(http\S+)\/v1\s*$/.exec(line)?.[1],
    });
    servers.push(gateway);
    progress(`upstream ${upstream.url}, gateway ${gateway.url}, data ${dataDir}`);
    const cpu = () => readCpu(gateway.child.pid!, upstream.child.pid!);
    const cpuAtStart = cpu();
    const loadAtStart = os.loadavg()[0]!;

    const ledger = new GatewayLedger();
    const direct = new HttpTarget('direct', upstream.url, 64);
    const viaGateway = new HttpTarget('gateway', gateway.url, 64);
    targets.push(direct, viaGateway);

    progress('warming up');
    for (const target of [direct, viaGateway]) {
      const l = target === viaGateway ? ledger : undefined;
      await closedLoopRecorded(target, 16, QUICK ? 300 : 1500, (i) => chatRequest(`bench-warm-${pad(i % 16, 2)}`, false), l);
      await closedLoopRecorded(target, 16, QUICK ? 100 : 400, (i) => chatRequest(`bench-warm-${pad(i % 16, 2)}`, true), l);
      await closedLoopRecorded(target, 1, QUICK ? 50 : 200, (i) => chatRequest('bench-warm-00', i % 2 === 1), l);
    }

    const latency: LatencyResult[] = [];
    for (const cell of LATENCY_CELLS) {
      progress(`latency: ${cell.label}, ${cell.clients} clients, ${cell.samples} samples each`);
      latency.push(await measureLatency(cell, direct, viaGateway, ledger, cpu));
    }

    // Open-loop runs get their own, larger pools: an overloaded run may need many connections at once.
    const directPool = new HttpTarget('direct', upstream.url, 256);
    const gatewayPool = new HttpTarget('gateway', gateway.url, 256);
    targets.push(directPool, gatewayPool);
    const rates: RateResult[] = [];
    // Each ladder stops at the first rate it does not hold: past that, a higher rate only grows the queue.
    for (const rate of RATES) {
      progress(`open loop direct ${rate} req/s × ${DIRECT_RATE_SECONDS} s`);
      const run = await measureRate('direct', directPool, rate, DIRECT_RATE_SECONDS, (i) => chatRequest(`bench-rate-${pad(i % 100)}`, false), undefined, cpu);
      rates.push(run.result);
      await sleep(500);
      if (!run.result.holds) break;
    }
    for (const rate of RATES) {
      progress(`open loop gateway ${rate} req/s × ${RATE_SECONDS} s`);
      const run = await measureRate('gateway', gatewayPool, rate, RATE_SECONDS, (i) => chatRequest(`bench-rate-${pad(i % 100)}`, false), ledger, cpu);
      rates.push(run.result);
      // Let the counters' write-behind queue drain so one run's backlog does not land in the next.
      await settledCounters(gateway.url, (u) => u.startsWith('bench-'), undefined, { quietMs: 1000, timeoutMs: 20_000 });
      if (!run.result.holds) break;
    }

    progress(`accounting run: gateway ${HEADLINE.rate} req/s × ${HEADLINE.seconds} s, ${HEADLINE.users} users`);
    const sentIds: string[] = [];
    const headlineUser = (i: number) => `bench-acct-${pad(i % HEADLINE.users)}`;
    const headline = await measureRate(
      'gateway',
      gatewayPool,
      HEADLINE.rate,
      HEADLINE.seconds,
      (i) => {
        const id = randomUUID();
        sentIds[i] = id;
        return chatRequest(headlineUser(i), false, id);
      },
      ledger,
      cpu,
      true,
    );
    rates.push(headline.result);
    const sent: SentRequest[] = headline.samples.map((sample, i) => ({
      requestId: sentIds[i]!,
      userId: headlineUser(i),
      status: sample.status,
      gatewayId: sample.gatewayId,
    }));
    const isHeadlineUser = (u: string) => u.startsWith('bench-acct-');
    const answered = sent.filter((s) => s.status !== 0).length;
    const lastAnswerAt = performance.now();
    const settled = await settledEventsAndCounters(dataDir, gateway.url, isHeadlineUser, answered);
    const accounting = checkAccounting(sent, settled.events, settled.counters, settled.countersSettledAt - lastAnswerAt);
    progress(`accounting: ${accounting.pass ? 'PASS' : `FAIL (${accounting.failures.join('; ')})`}`);

    progress('whole-run check');
    const wholeRun = await checkWholeRun(gateway.url, dataDir, ledger);

    const machine = {
      loadAtStart,
      loadAtEnd: os.loadavg()[0]!,
      otherCpuShare: ((spent) => spent.otherMs / spent.availableMs)(cpuBetween(cpuAtStart, cpu())),
    };
    for (const target of targets) target.close();
    targets.length = 0;
    progress('stopping the servers');
    await gateway.stop(30_000);
    await upstream.stop();
    const gatewayLogs = new Map<string, number>();
    for (const line of gateway.laterOutput) {
      if (line.startsWith('  ')) continue; // the rest of the start-up banner
      try {
        const entry = JSON.parse(line) as { level?: string; message?: string };
        const key = `${entry.level}: ${entry.message}`;
        gatewayLogs.set(key, (gatewayLogs.get(key) ?? 0) + 1);
      } catch {
        gatewayLogs.set(`(text) ${line.slice(0, 120)}`, (gatewayLogs.get(`(text) ${line.slice(0, 120)}`) ?? 0) + 1);
      }
    }

    let profile: ProfileSummary | undefined;
    if (profileDir) {
      // One profile per thread (tsx's module-hooks thread has its own): the main thread's is the largest.
      const file = readdirSync(profileDir)
        .filter((f) => f.endsWith('.cpuprofile'))
        .map((f) => path.join(profileDir, f))
        .sort((a, b) => statSync(b).size - statSync(a).size)[0];
      if (file) profile = summariseCpuProfile(file);
      else progress('no CPU profile was written');
    }

    progress('timing the proxy bundle load');
    const bundle = measureBundleLoad(5);

    const report = renderReport({
      startedAt,
      durationS: (performance.now() - started) / 1000,
      machine,
      latency,
      rates,
      accounting,
      wholeRun,
      bundle,
      gatewayLogs,
      profile,
    });
    const extras = QUICK || PROFILE ? '' : await extraSections();
    process.stdout.write(report + extras + '\n');
    if (!QUICK && !PROFILE) {
      writeFileSync(path.join(PROJECT_ROOT, 'bench', 'results.md'), report + extras + '\n');
      progress('wrote bench/results.md');
    }
    if (!accounting.pass) {
      keepData = true;
      progress(`accounting FAILED; the gateway's data is kept in ${dataDir}`);
      return 1;
    }
    return 0;
  } finally {
    for (const target of targets) target.close();
    await Promise.all(servers.map((server) => server.stop(5_000).catch(() => undefined)));
    killAllServersNow();
    if (!keepData) rmSync(dataDir, { recursive: true, force: true });
    else progress(`data kept in ${dataDir}`);
    if (profileDir) rmSync(profileDir, { recursive: true, force: true });
  }
}

/** The peer comparison, the limit check's cost and the history queries at scale, each measured on its own. */
async function extraSections(): Promise<string> {
  const lines: string[] = [];
  progress('peer benchmark: direct vs this gateway vs Portkey');
  lines.push('## Against a peer gateway (Portkey, same run, same upstream)', '', ...(await peerBench({ progress })), '');
  progress('limit check cost');
  lines.push('## Cost of the rate-limit and budget check', '', ...(await limitCheckRows()), '');
  progress('history queries on 10 million events (generated once, then cached)');
  const rows = await historyBench({ progress });
  lines.push(
    '## History queries at scale (local, DuckDB, 10 million events)',
    '',
    `| ${HISTORY_BENCH_HEADER.join(' | ')} |`,
    '| --- | ---: | --- |',
    ...rows,
    '',
  );
  return '\n' + lines.join('\n');
}

process.on('exit', killAllServersNow);
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    killAllServersNow();
    process.exit(130);
  });
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`bench failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    for (const exit of unexpectedServerExits()) process.stderr.write(`  a server stopped during the run: ${exit}\n`);
    killAllServersNow();
    process.exit(1);
  },
);
