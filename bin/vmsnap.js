#!/usr/bin/env node
// The CLI runs the JavaScript in dist/; nothing is compiled at start. In a checkout
// (src/ present) dist/ is first checked against src/ (a stat of each source, about a
// millisecond) and rebuilt when a source changed (esbuild: about half a second of CPU), so it
// never runs stale code: see scripts/dist.mjs. An installed package has no src/ and
// runs dist/ as shipped. VMSNAP_USE_DIST=1 runs dist/ as it is, without the check.
import { existsSync } from 'node:fs';
import * as nodeModule from 'node:module';

// Node 22.1+ keeps V8's compiled code of dist/ between runs (a no-op on Node 20).
/** @type {{ enableCompileCache?: () => unknown }} */ (nodeModule).enableCompileCache?.();
// Stack traces (VMSNAP_DEBUG=1 prints them) name the TypeScript sources, not the bundle.
if (process.env.VMSNAP_DEBUG) process.setSourceMapsEnabled(true);

if (!process.env.VMSNAP_USE_DIST && existsSync(new URL('../src/cli/main.ts', import.meta.url))) {
  const { ensureDist } = await import('../scripts/dist.mjs');
  try {
    await ensureDist(process.env.VMSNAP_DEBUG ? { log: (line) => process.stderr.write(`${line}\n`) } : {});
  } catch (e) {
    const stale = existsSync(new URL('../dist/cli/main.js', import.meta.url));
    process.stderr.write(`vmsnap: cannot rebuild dist/ from src/: ${e instanceof Error ? e.message : String(e)}\n`);
    if (!stale) process.exit(70);
    process.stderr.write('vmsnap: warning: running the dist/ built before the latest changes to src/\n');
  }
}
// (Not type-checked against dist/, which may not exist yet when the project is type-checked.)
await import(new URL('../dist/cli/main.js', import.meta.url).href);
