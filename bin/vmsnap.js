#!/usr/bin/env node
// The CLI runs the JavaScript in dist/; nothing is compiled at start. In a checkout (src/
// present) dist/ is first checked against src/ (a stat of each source, about a millisecond)
// and rebuilt when a source changed (esbuild, and one run for the code cache: about a
// second), so it never runs stale code: see scripts/dist.mjs. An installed package has no
// src/ and runs dist/ as shipped. VMSNAP_USE_DIST=1 runs dist/ as it is, without the check.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

// Stack traces (VMSNAP_DEBUG=1 prints them) name the TypeScript sources, not the bundle.
if (process.env.VMSNAP_DEBUG) process.setSourceMapsEnabled(true);

const bundle = fileURLToPath(new URL('../dist/cli/vmsnap-cli.cjs', import.meta.url));
if (!process.env.VMSNAP_USE_DIST && existsSync(new URL('../src/cli/main.ts', import.meta.url)) && !(await import('../scripts/dist-check.mjs')).isFresh()) {
  // The build (esbuild) is loaded only when it has something to do.
  const { ensureDist } = await import('../scripts/dist.mjs');
  try {
    await ensureDist(process.env.VMSNAP_DEBUG ? { log: (line) => process.stderr.write(`${line}\n`) } : {});
  } catch (e) {
    process.stderr.write(`vmsnap: cannot rebuild dist/ from src/: ${e instanceof Error ? e.message : String(e)}\n`);
    if (!existsSync(bundle)) process.exit(70);
    process.stderr.write('vmsnap: warning: running the dist/ built before the latest changes to src/\n');
  }
}
// One file with V8's code cache beside it: see cli-loader.js. With VMSNAP_DEBUG it is loaded by
// Node's own require instead, which maps stack traces through the source map.
/** @type {{ main: (argv: string[]) => Promise<void> }} */
const cli = process.env.VMSNAP_DEBUG
  ? (await import('node:module')).createRequire(import.meta.url)(bundle)
  : (await import('./cli-loader.js')).loadCli(bundle).exports;
await cli.main(process.argv);
