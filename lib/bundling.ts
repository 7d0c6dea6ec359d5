/**
 * How the Lambda code is bundled: one set of esbuild settings shared by the CDK stack (`NodejsFunction` local
 * bundling) and by `bin/build.ts` (which prints the bundle sizes), so the sizes the build reports are the sizes
 * that get deployed.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { gzipSync } from 'node:zlib';
import type { BuildOptions } from 'esbuild';
import { Charset, LogLevel, OutputFormat, type BundlingOptions } from 'aws-cdk-lib/aws-lambda-nodejs';

/** Root of the project: every entry path below is relative to it. */
export const PROJECT_ROOT = path.resolve(__dirname, '..');

/** Lambda entry points, relative to {@link PROJECT_ROOT}. */
export const LAMBDA_ENTRIES = {
  /** The streaming OpenAI-compatible proxy (`awslambda.streamifyResponse` handler). */
  proxy: 'lambda/aws/proxy-entry.ts',
  /** The buffered metrics API (API Gateway proxy handler). */
  metrics: 'lambda/aws/metrics-entry.ts',
  /** The BPE tokenizer, shipped next to the proxy bundle and loaded only when a response carries no usage. */
  tokenizer: 'lambda/aws/tokenizer-entry.ts',
} as const;

/**
 * File name of the tokenizer bundle inside the proxy's asset. The proxy loads it with
 * `await import('./tokenizer.js')`; it is external to the main bundle so the BPE table (megabytes of text) is
 * parsed only on the rare request that needs an estimate, not on every cold start.
 */
export const TOKENIZER_BUNDLE_FILE = 'tokenizer.js';

/** Largest acceptable minified proxy bundle; its load time is paid on every cold start. */
export const PROXY_BUNDLE_BUDGET_BYTES = 800 * 1024;

/**
 * esbuild settings for every Lambda bundle.
 *
 * - `target: node22`: the oldest Lambda runtime the code supports; the same output runs on Node 24.
 * - `format: cjs`: bundled CommonJS dependencies that `require()` Node built-ins keep working without a
 *   `createRequire` banner, and a CommonJS `index.js` needs no `package.json` marker; dynamic `import()` of the
 *   tokenizer bundle still works from CommonJS.
 * - `@aws-sdk/*` and `@smithy/*` are external: the Lambda Node runtimes ship SDK v3, and leaving it out keeps the
 *   proxy bundle small (three SDK clients would more than double it).
 * - `charset: utf8`: the tokenizer's BPE table is mostly non-ASCII; escaping it would inflate the bundle.
 */
export const LAMBDA_BUNDLE_SETTINGS = {
  target: 'node22',
  format: 'cjs',
  platform: 'node',
  minify: true,
  charset: 'utf8',
  external: ['@aws-sdk/*', '@smithy/*'],
} as const;

export interface LambdaBundlingChoices {
  /**
   * Emit a linked source map next to each bundle (and the function then needs `NODE_OPTIONS=--enable-source-maps`).
   * Off by default: maps double the asset and `--enable-source-maps` slows every stack trace and cold start.
   * @default false
   */
  readonly sourceMap?: boolean;
}

/**
 * `NodejsFunction` bundling options for an entry: local esbuild only (no Docker), the shared settings above.
 *
 * @example
 * new NodejsFunction(this, 'Fn', { entry: LAMBDA_ENTRIES.metrics, bundling: nodejsBundling() });
 */
export function nodejsBundling(choices: LambdaBundlingChoices = {}): BundlingOptions {
  const s = LAMBDA_BUNDLE_SETTINGS;
  return {
    forceDockerBundling: false,
    target: s.target,
    format: OutputFormat.CJS,
    minify: s.minify,
    charset: Charset.UTF8,
    sourceMap: choices.sourceMap ?? false,
    sourcesContent: false,
    externalModules: [...s.external],
    bundleAwsSDK: false,
    logLevel: LogLevel.WARNING,
  };
}

/**
 * `NodejsFunction` bundling options for the proxy: {@link nodejsBundling} plus an `afterBundling` hook that
 * bundles the tokenizer entry into `${outputDir}/tokenizer.js` with the same local esbuild and settings.
 */
export function proxyBundling(choices: LambdaBundlingChoices = {}): BundlingOptions {
  const base = nodejsBundling(choices);
  return {
    ...base,
    // The main bundle must not inline the tokenizer: it imports `./tokenizer.js` at run time.
    externalModules: [...(base.externalModules ?? []), `./${TOKENIZER_BUNDLE_FILE}`],
    commandHooks: {
      beforeBundling: () => [],
      beforeInstall: () => [],
      afterBundling: (inputDir: string, outputDir: string) => [tokenizerBundleCommand(inputDir, outputDir, choices)],
    },
  };
}

/**
 * The shell command that bundles the tokenizer entry with the project's own esbuild binary.
 * `inputDir` is the project root as CDK passes it to command hooks; `outputDir` is the asset's staging folder.
 */
export function tokenizerBundleCommand(inputDir: string, outputDir: string, choices: LambdaBundlingChoices = {}): string {
  const esbuildBin = path.join(inputDir, 'node_modules', '.bin', 'esbuild');
  const entry = path.join(inputDir, LAMBDA_ENTRIES.tokenizer);
  const outfile = path.join(outputDir, TOKENIZER_BUNDLE_FILE);
  return [shellQuote(esbuildBin), '--bundle', shellQuote(entry), ...esbuildCliArgs(choices), `--outfile=${shellQuote(outfile)}`].join(' ');
}

/** The shared settings as esbuild CLI flags. */
export function esbuildCliArgs(choices: LambdaBundlingChoices = {}): string[] {
  const s = LAMBDA_BUNDLE_SETTINGS;
  return [
    `--platform=${s.platform}`,
    `--target=${s.target}`,
    `--format=${s.format}`,
    ...(s.minify ? ['--minify'] : []),
    `--charset=${s.charset}`,
    ...(choices.sourceMap ? ['--sourcemap', '--sources-content=false'] : []),
    ...s.external.map((e) => `--external:${e}`),
    '--log-level=warning',
  ];
}

/** The shared settings as esbuild JS API options, for one entry written to `outfile`. */
export function esbuildBuildOptions(
  entry: string,
  outfile: string,
  options: LambdaBundlingChoices & { readonly external?: readonly string[] } = {},
): BuildOptions {
  const s = LAMBDA_BUNDLE_SETTINGS;
  return {
    entryPoints: [path.resolve(PROJECT_ROOT, entry)],
    outfile,
    bundle: true,
    platform: s.platform,
    target: s.target,
    format: s.format,
    minify: s.minify,
    charset: s.charset,
    sourcemap: options.sourceMap ? 'linked' : false,
    sourcesContent: false,
    external: [...s.external, ...(options.external ?? [])],
    logLevel: 'warning',
    absWorkingDir: PROJECT_ROOT,
  };
}

/** One bundle written by {@link bundleLambdas}. */
export interface BundleReport {
  /** Which entry, e.g. `proxy`. */
  readonly name: keyof typeof LAMBDA_ENTRIES;
  readonly entry: string;
  /** Absolute path of the written bundle. */
  readonly file: string;
  readonly bytes: number;
  readonly gzipBytes: number;
  /** Bytes each bundled source file contributes to the output, keyed by path relative to the project root. */
  readonly inputs: Readonly<Record<string, number>>;
}

/**
 * Bundles every Lambda entry the way the stack does, into the asset layout Lambda receives:
 * `<outDir>/proxy/index.js` + `<outDir>/proxy/tokenizer.js`, `<outDir>/metrics/index.js`.
 *
 * @example
 * const reports = await bundleLambdas('dist');
 */
export async function bundleLambdas(outDir: string, choices: LambdaBundlingChoices = {}): Promise<BundleReport[]> {
  const { build } = await import('esbuild');
  const root = path.resolve(PROJECT_ROOT, outDir);
  const plan: Array<{ name: keyof typeof LAMBDA_ENTRIES; file: string; external?: string[] }> = [
    { name: 'proxy', file: path.join(root, 'proxy', 'index.js'), external: [`./${TOKENIZER_BUNDLE_FILE}`] },
    { name: 'tokenizer', file: path.join(root, 'proxy', TOKENIZER_BUNDLE_FILE) },
    { name: 'metrics', file: path.join(root, 'metrics', 'index.js') },
  ];
  const reports: BundleReport[] = [];
  for (const item of plan) {
    const entry = LAMBDA_ENTRIES[item.name];
    const result = await build({ ...esbuildBuildOptions(entry, item.file, { ...choices, external: item.external }), metafile: true });
    const content = await fs.readFile(item.file);
    const output = Object.values(result.metafile.outputs).find((o) => o.entryPoint !== undefined);
    const inputs = Object.fromEntries(Object.entries(output?.inputs ?? {}).map(([file, i]) => [file, i.bytesInOutput]));
    reports.push({ name: item.name, entry, file: item.file, bytes: content.length, gzipBytes: gzipSync(content).length, inputs });
  }
  return reports;
}

function shellQuote(value: string): string {
  return /^[\w@%+=:,./-]+$/.test(value) ? value : `'${value.replace(/'/g, `'\\''`)}'`;
}
