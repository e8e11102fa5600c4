#!/usr/bin/env node
// @ts-check
// The CLI runs the JavaScript in dist/; nothing is compiled at start. In a checkout (src/
// present) dist/ is first checked against src/ (a stat of each source and folder, a few ms:
// scripts/dist-check.cjs) and rebuilt when a source changed (esbuild, and one run for the
// code cache: about a second), so it never runs stale code: see scripts/dist.mjs. An
// installed package has no src/ and runs dist/ as shipped. VMSNAP_USE_DIST=1 runs dist/ as
// it is, without the check. CommonJS, not an ES module: Node sets up no module loader for it
// (about 10 ms of a start that `vmsnap --help` and `list` want near `node -e 0`).
'use strict';
// bin/vmsnap (the installed command) started Node without NODE_EXTRA_CA_CERTS, whose
// certificates cost Node's start a lot and which vmsnap has no use for: what vmsnap runs
// gets it back.
if (process.env.VMSNAP_NODE_EXTRA_CA_CERTS !== undefined) {
  process.env.NODE_EXTRA_CA_CERTS = process.env.VMSNAP_NODE_EXTRA_CA_CERTS;
  delete process.env.VMSNAP_NODE_EXTRA_CA_CERTS;
}
const { existsSync } = require('node:fs');
const { join } = require('node:path');

// Stack traces (VMSNAP_DEBUG=1 prints them) name the TypeScript sources, not the bundle.
if (process.env.VMSNAP_DEBUG) process.setSourceMapsEnabled(true);

const bundle = join(__dirname, '..', 'dist', 'cli', 'vmsnap-cli.cjs');

async function run() {
  if (!process.env.VMSNAP_USE_DIST && existsSync(join(__dirname, '..', 'src', 'cli', 'main.ts')) && !require('../scripts/dist-check.cjs').isFresh()) {
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
  // One file with V8's code cache beside it: see cli-loader.cjs. With VMSNAP_DEBUG it is loaded by
  // Node's own require instead, which maps stack traces through the source map.
  /** @type {{ main: (argv: string[]) => Promise<void> }} */
  const cli = process.env.VMSNAP_DEBUG ? require(bundle) : require('./cli-loader.cjs').loadCli(bundle).exports;
  await cli.main(process.argv);
}

run().catch((e) => {
  // main() reports what it knows (with its exit code); this is only what escaped it.
  process.stderr.write(`vmsnap: ${e instanceof Error && e.stack ? e.stack : String(e)}\n`);
  process.exit(70);
});
