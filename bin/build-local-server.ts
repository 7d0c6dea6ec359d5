#!/usr/bin/env node
/**
 * Bundles the local server (`bin/local-server.ts`) into one CommonJS file, `dist/local-server.cjs`, which
 * `npm start` runs on plain Node. Running the bundle rather than the TypeScript sources through a loader takes the
 * loader's work off every request (its helpers run each time a function is created) and off start-up.
 *
 * `@duckdb/node-api` stays external: it loads a native library from its package, so the bundle must sit inside
 * the project (under `dist/`), where Node finds `node_modules`.
 *
 * Usage: npx tsx bin/build-local-server.ts [outFile]   (default: dist/local-server.cjs)
 */
import * as path from 'node:path';
import { build } from 'esbuild';

export const PROJECT_ROOT = path.resolve(__dirname, '..');
export const LOCAL_SERVER_ENTRY = path.join(PROJECT_ROOT, 'bin', 'local-server.ts');
export const LOCAL_SERVER_BUNDLE = path.join(PROJECT_ROOT, 'dist', 'local-server.cjs');

/**
 * Writes the bundle (and its linked source map, for `node --enable-source-maps`) and returns its path.
 * @param outFile where to write it; must be inside the project so the external packages resolve
 */
export async function buildLocalServer(outFile: string = LOCAL_SERVER_BUNDLE): Promise<string> {
  const relative = path.relative(PROJECT_ROOT, path.resolve(outFile));
  if (relative.startsWith('..') || path.isAbsolute(relative)) {
    throw new Error(`The local server bundle must be inside ${PROJECT_ROOT} (its native dependency resolves from there), not ${outFile}`);
  }
  await build({
    entryPoints: [LOCAL_SERVER_ENTRY],
    outfile: outFile,
    bundle: true,
    platform: 'node',
    // The oldest Node the package supports (package.json engines); the same output runs on later ones.
    target: 'node20',
    format: 'cjs',
    charset: 'utf8',
    sourcemap: 'linked',
    sourcesContent: false,
    external: ['@duckdb/node-api'],
    logLevel: 'warning',
  });
  return outFile;
}

if (require.main === module) {
  buildLocalServer(process.argv[2]).then(
    (file) => console.log(`local server → ${path.relative(process.cwd(), file)}`),
    (error: unknown) => {
      console.error(error);
      process.exitCode = 1;
    },
  );
}
