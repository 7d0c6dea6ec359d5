/**
 * Load generation over node:http with keep-alive connections: closed loop (N clients, each sending its next request
 * when the previous answer has fully arrived) and open loop (requests started on a fixed schedule whatever the
 * answers do, latency measured from the scheduled start so a stalled server cannot hide its queue).
 */
import { Agent, request as httpRequest } from 'node:http';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';

export interface BenchRequest {
  readonly path: string;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Buffer;
}

export interface Sample {
  /** HTTP status, or 0 when the request failed without an answer. */
  readonly status: number;
  /** Milliseconds from start to the first body byte (the whole body for an empty one). */
  readonly ttfbMs: number;
  /** Milliseconds from start to the end of the body. */
  readonly totalMs: number;
  /** The `Helicone-Id` the gateway answered with, if any. */
  readonly gatewayId: string | undefined;
  readonly error: string | undefined;
}

const REQUEST_TIMEOUT_MS = 60_000;

/** One server reached through its own pool of keep-alive connections. */
export class HttpTarget {
  readonly agent: Agent;
  private readonly host: string;
  private readonly port: number;

  constructor(
    readonly name: string,
    baseUrl: string,
    maxSockets: number,
  ) {
    const url = new URL(baseUrl);
    this.host = url.hostname;
    this.port = Number(url.port);
    this.agent = new Agent({ keepAlive: true, maxSockets, maxFreeSockets: maxSockets, scheduling: 'lifo' });
  }

  /**
   * Sends one request and reads the whole answer. `startedAt` (a `performance.now()` time) is when the request
   * was meant to start; by default, now.
   */
  send(spec: BenchRequest, startedAt = performance.now()): Promise<Sample> {
    return new Promise<Sample>((resolve) => {
      let settled = false;
      const done = (sample: Sample) => {
        if (settled) return;
        settled = true;
        resolve(sample);
      };
      const failed = (error: Error, status = 0) => {
        const now = performance.now() - startedAt;
        done({ status, ttfbMs: now, totalMs: now, gatewayId: undefined, error: error.message || String(error) });
      };
      const req = httpRequest(
        {
          agent: this.agent,
          host: this.host,
          port: this.port,
          method: 'POST',
          path: spec.path,
          headers: { ...spec.headers, 'content-length': String(spec.body.length) },
        },
        (res) => {
          let firstByte = -1;
          res.on('data', () => {
            if (firstByte < 0) firstByte = performance.now();
          });
          res.on('end', () => {
            const end = performance.now();
            const id = res.headers['helicone-id'];
            done({
              status: res.statusCode ?? 0,
              ttfbMs: (firstByte < 0 ? end : firstByte) - startedAt,
              totalMs: end - startedAt,
              gatewayId: typeof id === 'string' ? id : undefined,
              error: undefined,
            });
          });
          res.on('error', (error) => failed(error, res.statusCode ?? 0));
          res.on('aborted', () => failed(new Error('response aborted'), res.statusCode ?? 0));
        },
      );
      req.setTimeout(REQUEST_TIMEOUT_MS, () => req.destroy(new Error(`no answer within ${REQUEST_TIMEOUT_MS} ms`)));
      req.on('error', (error) => failed(error));
      req.end(spec.body);
    });
  }

  close(): void {
    this.agent.destroy();
  }
}

/**
 * `clients` concurrent loops, each sending `requestFor(i)` as soon as its previous answer is complete, until
 * `count` requests have been answered.
 */
export async function closedLoop(
  target: HttpTarget,
  clients: number,
  count: number,
  requestFor: (i: number) => BenchRequest,
): Promise<{ samples: Sample[]; elapsedMs: number }> {
  const samples: Sample[] = new Array(count);
  let next = 0;
  const started = performance.now();
  const client = async () => {
    for (;;) {
      const i = next++;
      if (i >= count) return;
      samples[i] = await target.send(requestFor(i));
    }
  };
  await Promise.all(Array.from({ length: clients }, client));
  return { samples, elapsedMs: performance.now() - started };
}

export interface OpenLoopResult {
  readonly samples: Sample[];
  readonly requests: readonly BenchRequest[];
  /** From the first scheduled start to the last answer. */
  readonly elapsedMs: number;
  /** Largest delay between a request's scheduled start and the moment the generator issued it. */
  readonly maxIssueLagMs: number;
}

/**
 * Starts `rate` requests per second for `durationMs`, on schedule, whatever the answers do. A request's latency
 * counts from its scheduled start, so time spent queued behind a slow server (or in the client's connection pool)
 * is included rather than silently omitted.
 */
export async function openLoop(
  target: HttpTarget,
  rate: number,
  durationMs: number,
  requestFor: (i: number) => BenchRequest,
): Promise<OpenLoopResult> {
  const total = Math.round((rate * durationMs) / 1000);
  const intervalMs = 1000 / rate;
  const requests = Array.from({ length: total }, (_, i) => requestFor(i));
  const pending: Promise<Sample>[] = [];
  let maxIssueLagMs = 0;
  const t0 = performance.now() + 5;
  let issued = 0;
  while (issued < total) {
    const now = performance.now();
    // Issue every request whose scheduled time has come; timers fire at ~1 ms granularity, so several may be due.
    while (issued < total && t0 + issued * intervalMs <= now) {
      const scheduled = t0 + issued * intervalMs;
      maxIssueLagMs = Math.max(maxIssueLagMs, now - scheduled);
      pending.push(target.send(requests[issued]!, scheduled));
      issued++;
    }
    if (issued < total) await sleep(Math.max(0, t0 + issued * intervalMs - performance.now()));
  }
  const samples = await Promise.all(pending);
  let lastEnd = t0;
  for (let i = 0; i < samples.length; i++) lastEnd = Math.max(lastEnd, t0 + i * intervalMs + samples[i]!.totalMs);
  return { samples, requests, elapsedMs: lastEnd - t0, maxIssueLagMs };
}
