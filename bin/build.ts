#!/usr/bin/env node
/**
 * Bundles the Lambda entries exactly as the CDK stack does (lib/bundling.ts) into `dist/` and prints each
 * bundle's minified and gzip size. Fails when the proxy bundle is over its budget: its load time is paid on every
 * cold start.
 *
 * Usage: npx tsx bin/build.ts [outDir]   (default: dist)
 */
import * as path from 'node:path';
import { bundleLambdas, PROJECT_ROOT, PROXY_BUNDLE_BUDGET_BYTES, type BundleReport } from '../lib/bundling';

function kb(bytes: number): string {
  return (bytes / 1024).toFixed(1);
}

/** The size table, one row per bundle. */
export function formatBundleTable(reports: readonly BundleReport[]): string {
  const rows = [
    ['entry', 'bundle', 'minified KB', 'gzip KB'],
    ...reports.map((r) => [r.entry, path.relative(PROJECT_ROOT, r.file), kb(r.bytes), kb(r.gzipBytes)]),
  ];
  const widths = rows[0]!.map((_, col) => Math.max(...rows.map((row) => row[col]!.length)));
  return rows
    .map((row) => row.map((cell, col) => (col >= 2 ? cell.padStart(widths[col]!) : cell.padEnd(widths[col]!))).join('  '))
    .join('\n');
}

/** The source files that weigh most in a bundle, largest first. */
export function formatLargestInputs(bundle: BundleReport, count = 8): string {
  return Object.entries(bundle.inputs)
    .sort(([, a], [, b]) => b - a)
    .slice(0, count)
    .map(([file, bytes]) => `${kb(bytes).padStart(8)} KB  ${file}`)
    .join('\n');
}

async function main(): Promise<void> {
  const outDir = process.argv[2] ?? 'dist';
  const reports = await bundleLambdas(outDir);
  console.log(formatBundleTable(reports));
  const proxy = reports.find((r) => r.name === 'proxy');
  if (proxy) console.log(`\nlargest inputs of the proxy bundle:\n${formatLargestInputs(proxy)}`);
  if (proxy && proxy.bytes > PROXY_BUNDLE_BUDGET_BYTES) {
    console.error(`proxy bundle is ${kb(proxy.bytes)} KB, over its ${kb(PROXY_BUNDLE_BUDGET_BYTES)} KB budget`);
    process.exitCode = 1;
  }
}

if (require.main === module) {
  main().catch((error: unknown) => {
    console.error(error);
    process.exitCode = 1;
  });
}
