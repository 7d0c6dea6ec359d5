/**
 * Summarises a V8 `.cpuprofile` (from `node --cpu-prof`): where the busy time went, by area of code and by
 * function, self and inclusive.
 */
import { readFileSync } from 'node:fs';

interface ProfileNode {
  readonly id: number;
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number };
  readonly children?: readonly number[];
}

interface CpuProfile {
  readonly nodes: readonly ProfileNode[];
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
}

export interface ProfileRow {
  readonly name: string;
  readonly ms: number;
  /** Share of the busy (non-idle) time, in percent. */
  readonly percent: number;
}

export interface ProfileSummary {
  readonly busyMs: number;
  readonly idleMs: number;
  readonly byArea: readonly ProfileRow[];
  readonly topSelf: readonly ProfileRow[];
  readonly topInclusive: readonly ProfileRow[];
}

/** Which part of the system a frame belongs to, e.g. `fetch (undici)`, `node:http server`, `lambda/core/proxy.ts`. */
export function areaOf(url: string, functionName: string): string {
  if (url === '') {
    if (functionName === '(garbage collector)') return 'garbage collection';
    if (functionName === '(program)') return 'V8/native (program)';
    if (functionName === '(idle)') return 'idle';
    return 'native/builtins';
  }
  if (url.startsWith('node:internal/deps/undici')) return 'fetch to upstream (undici)';
  if (url.startsWith('node:internal/webstreams')) return 'web streams';
  if (/^node:(_http_|http|internal\/http)/.test(url)) return 'node:http server';
  if (/^node:(net|internal\/net|internal\/stream_base|internal\/streams|stream|_stream)/.test(url)) return 'node net/streams';
  if (url.startsWith('node:internal/url') || url.startsWith('node:url')) return 'URL parsing';
  if (url.startsWith('node:internal/crypto') || url.startsWith('node:crypto')) return 'node:crypto';
  if (/^node:(internal\/fs|fs)/.test(url)) return 'node:fs';
  if (url.startsWith('node:internal/process/task_queues') || url.startsWith('node:internal/timers')) return 'node timers/microtasks';
  if (url.startsWith('node:')) return 'node other';
  const modules = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (modules) return modules[1]!;
  const project = /\/((?:lambda|bin|lib|bench|test)\/.+?)(?:\?.*)?$/.exec(url);
  if (project) return project[1]!;
  return url;
}

function frameKey(node: ProfileNode): string {
  const { functionName, url, lineNumber } = node.callFrame;
  const name = functionName || '(anonymous)';
  if (url === '') return name;
  const project = /\/((?:lambda|bin|lib|bench|test)\/[^?]+)/.exec(url);
  // Project files are transpiled on the fly by tsx, so their line numbers point into generated code: name the file.
  if (project && !url.includes('/node_modules/')) return `${name} ${project[1]}`;
  return `${name} ${url.replace(/^file:\/\/.*?\/node_modules\//, '')}:${lineNumber + 1}`;
}

function rows(map: Map<string, number>, busyMs: number, limit: number): ProfileRow[] {
  return [...map.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, limit)
    .map(([name, us]) => ({ name, ms: us / 1000, percent: busyMs > 0 ? (us / 1000 / busyMs) * 100 : 0 }));
}

/** Reads and summarises one profile. */
export function summariseCpuProfile(file: string, limit = 25): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const node of profile.nodes) {
    byId.set(node.id, node);
    for (const child of node.children ?? []) parent.set(child, node.id);
  }
  const selfUs = new Map<number, number>();
  for (let i = 0; i < profile.samples.length; i++) {
    const id = profile.samples[i]!;
    selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0));
  }

  let idleUs = 0;
  let busyUs = 0;
  const byArea = new Map<string, number>();
  const self = new Map<string, number>();
  const inclusive = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const node = byId.get(id)!;
    if (node.callFrame.functionName === '(idle)') {
      idleUs += us;
      continue;
    }
    busyUs += us;
    const area = areaOf(node.callFrame.url, node.callFrame.functionName);
    byArea.set(area, (byArea.get(area) ?? 0) + us);
    const key = frameKey(node);
    self.set(key, (self.get(key) ?? 0) + us);
    // Inclusive time of the gateway's own functions: each sample counts once per function on its stack.
    const seen = new Set<string>();
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
      const frame = byId.get(at)!;
      if (!/\/(lambda|bin)\//.test(frame.callFrame.url)) continue;
      const frameName = frameKey(frame);
      if (seen.has(frameName)) continue;
      seen.add(frameName);
      inclusive.set(frameName, (inclusive.get(frameName) ?? 0) + us);
    }
  }
  const busyMs = busyUs / 1000;
  return {
    busyMs,
    idleMs: idleUs / 1000,
    byArea: rows(byArea, busyMs, limit),
    topSelf: rows(self, busyMs, limit),
    topInclusive: rows(inclusive, busyMs, limit),
  };
}
