/**
 * Runs the real esbuild once, the way bin/build.ts and the stack's NodejsFunction bundling do, on the Lambda
 * entries as they are in the repository.
 */
import assert from 'node:assert/strict';
import { execSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  bundleLambdas,
  PROJECT_ROOT,
  PROXY_BUNDLE_BUDGET_BYTES,
  tokenizerBundleCommand,
  type BundleReport,
} from '../../lib/bundling';
import { formatBundleTable } from '../../bin/build';

let outDir: string;
let reports: BundleReport[];

before(async () => {
  outDir = mkdtempSync(path.join(tmpdir(), 'gateway-bundles-'));
  reports = await bundleLambdas(outDir);
});

after(() => {
  rmSync(outDir, { recursive: true, force: true });
});

function report(name: BundleReport['name']): BundleReport {
  const found = reports.find((r) => r.name === name);
  assert.ok(found, `no ${name} bundle`);
  return found;
}

describe('bundleLambdas', () => {
  it('writes the Lambda asset layout: proxy with tokenizer beside it, and metrics', () => {
    assert.equal(report('proxy').file, path.join(outDir, 'proxy', 'index.js'));
    assert.equal(report('tokenizer').file, path.join(outDir, 'proxy', 'tokenizer.js'));
    assert.equal(report('metrics').file, path.join(outDir, 'metrics', 'index.js'));
    for (const r of reports) {
      assert.ok(existsSync(r.file), r.file);
      assert.equal(readFileSync(r.file).length, r.bytes);
      assert.ok(r.gzipBytes > 0 && r.gzipBytes <= r.bytes);
    }
  });

  it('produces CommonJS bundles that export handler', () => {
    for (const name of ['proxy', 'metrics'] as const) {
      const source = readFileSync(report(name).file, 'utf8');
      assert.match(source, /module\.exports/, name);
      assert.match(source, /handler/, name);
    }
  });

  it('keeps the proxy bundle within its budget', () => {
    assert.ok(report('proxy').bytes <= PROXY_BUNDLE_BUDGET_BYTES, `${report('proxy').bytes} bytes`);
  });

  it('leaves the tokenizer and the AWS SDK out of the proxy bundle', () => {
    const inputs = Object.keys(report('proxy').inputs);
    assert.ok(inputs.some((file) => file.startsWith('lambda/aws/proxy-entry.ts')), inputs.join(', '));
    for (const heavy of ['node_modules/gpt-tokenizer/', 'node_modules/@aws-sdk/', 'node_modules/@smithy/', 'lambda/aws/tokenizer-entry.ts']) {
      assert.ok(!inputs.some((file) => file.includes(heavy)), `${heavy} is inside the proxy bundle`);
    }
  });

  it('bundles the tokenizer through the CDK afterBundling command to the same bytes', () => {
    const hookOut = mkdtempSync(path.join(tmpdir(), 'gateway-hook-'));
    try {
      execSync(tokenizerBundleCommand(PROJECT_ROOT, hookOut), { cwd: PROJECT_ROOT, stdio: 'pipe' });
      assert.deepEqual(readFileSync(path.join(hookOut, 'tokenizer.js')), readFileSync(report('tokenizer').file));
    } finally {
      rmSync(hookOut, { recursive: true, force: true });
    }
  });
});

describe('formatBundleTable', () => {
  it('prints entry, minified and gzip size in KB for every bundle', () => {
    const lines = formatBundleTable(reports).split('\n');
    assert.match(lines[0]!, /^entry\s+bundle\s+minified KB\s+gzip KB$/);
    assert.equal(lines.length, 1 + reports.length);
    const proxyLine = lines.find((l) => l.startsWith('lambda/aws/proxy-entry.ts'));
    assert.ok(proxyLine?.includes((report('proxy').bytes / 1024).toFixed(1)), proxyLine);
  });
});
