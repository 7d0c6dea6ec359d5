/**
 * How long `require()` of the proxy's Lambda bundle takes: the part of every cold start the code controls.
 * Measured as a fresh `node -e "require(bundle)"` minus a fresh `node -e ""`, median of several alternating runs.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync, readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { gzipSync } from 'node:zlib';
import { PROJECT_ROOT } from './server-process';

/** Where `npm run build` leaves the proxy bundle, newest layout first. */
const BUILT_BUNDLES = ['dist/proxy-entry.js', 'dist/proxy/index.js'];

/** The Lambda runtime's globals the streaming entry touches at load, reduced to what loading needs. */
const AWSLAMBDA_STUB = 'globalThis.awslambda={streamifyResponse:f=>f,HttpResponseStream:{from:s=>s}};';

/**
 * The environment the stack gives the proxy function: the entry reads its configuration at load and refuses to
 * start without it. Names only; loading makes no AWS call.
 */
const PROXY_FUNCTION_ENV = {
  AWS_REGION: 'us-east-1',
  EVENTS_STREAM_NAME: 'llm-usage-events',
  COUNTERS_TABLE_NAME: 'llm-usage-counters',
  RECOVERY_BUCKET_NAME: 'llm-usage-recovery',
  LOG_LEVEL: 'warn',
};

export type BundleLoad =
  | {
      readonly state: 'measured';
      /** The bundle file, relative to the project when inside it. */
      readonly file: string;
      /** Why this file: built by `npm run build`, or bundled afresh because dist/ was missing or stale. */
      readonly origin: string;
      readonly bytes: number;
      readonly gzipBytes: number;
      readonly loadMs: number;
      /** Fastest load minus fastest bare start: the least that other work on the machine can have added. */
      readonly minLoadMs: number;
      readonly baselineMs: number;
      /** Packages the bundle leaves external (the SDK clients the Lambda runtime ships), and their share of the load. */
      readonly externals: readonly string[];
      readonly externalsMs: number;
      readonly runs: number;
    }
  | { readonly state: 'not built'; readonly reason: string };

function newestSourceTime(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) newest = Math.max(newest, newestSourceTime(full));
    else if (entry.name.endsWith('.ts')) newest = Math.max(newest, statSync(full).mtimeMs);
  }
  return newest;
}

function timeNode(script: string, env: NodeJS.ProcessEnv): number {
  const started = performance.now();
  const result = spawnSync(process.execPath, ['-e', script], { cwd: PROJECT_ROOT, env, stdio: ['ignore', 'ignore', 'pipe'] });
  const elapsed = performance.now() - started;
  if (result.status !== 0) throw new Error(`node -e failed (${result.status}): ${result.stderr.toString().slice(0, 500)}`);
  return elapsed;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/**
 * Finds the proxy bundle (building a fresh one into a temporary directory when dist/ has none, or one older than
 * the sources) and times loading it.
 */
export function measureBundleLoad(runs = 5): BundleLoad {
  let file: string | undefined;
  let origin = '';
  let cleanup: string | undefined;
  const built = BUILT_BUNDLES.map((f) => path.join(PROJECT_ROOT, f)).find((f) => existsSync(f));
  const sourcesChanged = newestSourceTime(path.join(PROJECT_ROOT, 'lambda'));
  if (built !== undefined && statSync(built).mtimeMs >= sourcesChanged) {
    file = built;
    origin = 'from npm run build';
  } else if (existsSync(path.join(PROJECT_ROOT, 'bin/build.ts'))) {
    // Bundle with the build's own settings into a scratch directory: dist/ is the build's output, not ours to
    // overwrite, and `npm run build` also typechecks the whole project, which is not what is being timed here.
    const outDir = mkdtempSync(path.join(os.tmpdir(), 'gateway-bundle-'));
    cleanup = outDir;
    const result = spawnSync(process.execPath, ['--import', 'tsx', 'bin/build.ts', outDir], {
      cwd: PROJECT_ROOT,
      encoding: 'utf8',
    });
    const candidate = path.join(outDir, 'proxy', 'index.js');
    if (!existsSync(candidate)) {
      rmSync(outDir, { recursive: true, force: true });
      const why = (result.stderr || result.stdout || '').trim().split('\n').slice(-3).join(' ');
      return { state: 'not built', reason: `bin/build.ts failed: ${why.slice(0, 300)}` };
    }
    file = candidate;
    origin = built === undefined ? 'bundled by the bench: dist/ has none' : 'bundled by the bench: dist/ is older than lambda/';
  } else {
    return { state: 'not built', reason: 'no dist/ bundle and no bin/build.ts' };
  }

  try {
    const bytes = readFileSync(file);
    // The SDK clients are external to the bundle (the Lambda runtime ships them); resolve them from the project
    // wherever the bundle sits. The same env for the baseline keeps the subtraction fair.
    const env = { ...process.env, ...PROXY_FUNCTION_ENV, NODE_PATH: path.join(PROJECT_ROOT, 'node_modules'), NODE_OPTIONS: '' };
    const load = `${AWSLAMBDA_STUB}require(${JSON.stringify(file)})`;
    const externals = [...new Set([...bytes.toString('utf8').matchAll(/require\("([^"]+)"\)/g)].map((m) => m[1]!))]
      .filter((name) => !name.startsWith('node:') && !name.startsWith('.'))
      .sort();
    const loadExternals = externals.map((name) => `require(${JSON.stringify(name)});`).join('');
    timeNode('', env); // warm the file cache for node itself
    timeNode(load, env); // and for the bundle and its externals
    const baseline: number[] = [];
    const loaded: number[] = [];
    const externalsOnly: number[] = [];
    for (let i = 0; i < runs; i++) {
      baseline.push(timeNode('', env));
      loaded.push(timeNode(load, env));
      externalsOnly.push(timeNode(loadExternals, env));
    }
    const baselineMs = median(baseline);
    return {
      state: 'measured',
      file: cleanup === undefined ? path.relative(PROJECT_ROOT, file) : path.relative(cleanup, file),
      origin,
      bytes: bytes.length,
      gzipBytes: gzipSync(bytes).length,
      loadMs: median(loaded) - baselineMs,
      minLoadMs: Math.min(...loaded) - Math.min(...baseline),
      baselineMs,
      externals,
      externalsMs: median(externalsOnly) - baselineMs,
      runs,
    };
  } catch (error) {
    return { state: 'not built', reason: `loading ${path.basename(file)} failed: ${(error as Error).message.slice(0, 300)}` };
  } finally {
    if (cleanup !== undefined) rmSync(cleanup, { recursive: true, force: true });
  }
}
