/**
 * CPU time from /proc: per process (all its threads, so DuckDB's and libuv's workers count for the gateway) and for
 * the whole machine. CPU time per request is far steadier than latency on a machine other work is also using,
 * and the machine's total shows how much of it other work took during the run.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

let ticksPerSecond: number | undefined;

function clockTicks(): number {
  if (ticksPerSecond === undefined) {
    try {
      ticksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      ticksPerSecond = 100;
    }
  }
  return ticksPerSecond;
}

/** User + system CPU milliseconds a process has used so far, or NaN when /proc cannot tell (not Linux, exited). */
export function processCpuMs(pid: number | 'self'): number {
  return cpuMsFrom(`/proc/${pid}/stat`);
}

/** The same for a process's main thread alone (its JavaScript), without its worker threads. */
export function mainThreadCpuMs(pid: number): number {
  return cpuMsFrom(`/proc/${pid}/task/${pid}/stat`);
}

function cpuMsFrom(statFile: string): number {
  try {
    const stat = readFileSync(statFile, 'utf8');
    // The command name (field 2) may contain spaces and parentheses: count fields from the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const utime = Number(fields[11]);
    const stime = Number(fields[12]);
    return ((utime + stime) / clockTicks()) * 1000;
  } catch {
    return NaN;
  }
}

export interface MachineCpu {
  /** CPU milliseconds spent busy, summed over every core. */
  readonly busyMs: number;
  /** CPU milliseconds in total (busy + idle), summed over every core. */
  readonly totalMs: number;
}

/** The machine's CPU time so far, from the first line of /proc/stat. */
export function machineCpu(): MachineCpu {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!;
    const [, ...values] = line.trim().split(/\s+/);
    const [user, nice, system, idle, iowait, irq, softirq, steal] = values.map(Number) as number[];
    const busy = user! + nice! + system! + irq! + softirq! + steal!;
    const total = busy + idle! + iowait!;
    const toMs = 1000 / clockTicks();
    return { busyMs: busy * toMs, totalMs: total * toMs };
  } catch {
    return { busyMs: NaN, totalMs: NaN };
  }
}

/** CPU time of the benchmark's processes and of the machine, read at one moment. */
export interface CpuReading {
  readonly gatewayMs: number;
  readonly gatewayMainThreadMs: number;
  readonly upstreamMs: number;
  readonly benchMs: number;
  readonly machine: MachineCpu;
}

export function readCpu(gatewayPid: number, upstreamPid: number): CpuReading {
  return {
    gatewayMs: processCpuMs(gatewayPid),
    gatewayMainThreadMs: mainThreadCpuMs(gatewayPid),
    upstreamMs: processCpuMs(upstreamPid),
    benchMs: processCpuMs('self'),
    machine: machineCpu(),
  };
}

export interface CpuSpent {
  readonly gatewayMs: number;
  /** Of `gatewayMs`, the main thread's: JavaScript, HTTP parsing, the event loop. The rest is worker threads. */
  readonly gatewayMainThreadMs: number;
  readonly upstreamMs: number;
  readonly benchMs: number;
  /** Busy CPU time of everything else on the machine. */
  readonly otherMs: number;
  /** Total CPU time available over the interval (wall time × cores). */
  readonly availableMs: number;
}

export function cpuBetween(from: CpuReading, to: CpuReading): CpuSpent {
  const gatewayMs = to.gatewayMs - from.gatewayMs;
  const upstreamMs = to.upstreamMs - from.upstreamMs;
  const benchMs = to.benchMs - from.benchMs;
  const busy = to.machine.busyMs - from.machine.busyMs;
  return {
    gatewayMs,
    gatewayMainThreadMs: to.gatewayMainThreadMs - from.gatewayMainThreadMs,
    upstreamMs,
    benchMs,
    otherMs: Math.max(0, busy - gatewayMs - upstreamMs - benchMs),
    availableMs: to.machine.totalMs - from.machine.totalMs,
  };
}
