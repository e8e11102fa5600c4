// @ts-check
/**
 * Whether dist/ was built from src/ as it is now: what bin/vmsnap.cjs asks at every start in a
 * checkout. Kept apart from dist.mjs (the build, with esbuild) so that this check loads only
 * node:fs and node:path: about a millisecond when dist/ is up to date.
 */
'use strict';
const { readdirSync, readFileSync, statSync } = require('node:fs');
const { join } = require('node:path');

// CommonJS, like bin/vmsnap.cjs, which requires it at every start: no ES module loader to set up.
const ROOT = join(__dirname, '..');
const SRC = join(ROOT, 'src');
const DIST = join(ROOT, 'dist');
const STAMP = join(DIST, '.source-signature');
/** Bump when the build's options change, so every dist/ built before is rebuilt. */
const BUILD_FORMAT = 4;
/** Files beside the sources that change how they are built. */
// This script is part of the build: a change to it (new esbuild options, say) rebuilds too.
// package-lock.json: the CLI bundle contains its dependencies (better-sqlite3's JavaScript among
// them, which must match the native addon npm installed), so an npm install rebuilds it too.
const CONFIG_FILES = ['tsconfig.json', 'tsconfig.build.json', 'scripts/dist.mjs', 'scripts/dist-check.cjs', 'package-lock.json'];

/** @param {string} name */
const isTest = (name) => name.endsWith('.test.ts');

/** Every file under src/ that goes into dist/ (tests do not), relative to src/, sorted. */
function sourceFiles() {
  /** @type {string[]} */
  const out = [];
  /** @param {string} dir @param {string} rel */
  const walk = (dir, rel) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(dir, e.name), `${rel}${e.name}/`);
      else if (!isTest(e.name)) out.push(`${rel}${e.name}`);
    }
  };
  walk(SRC, '');
  return out.sort();
}

/**
 * What the build depends on, as one short string: each source's path, size and mtime
 * (so an edit, an added, removed or renamed file, or a file put back with an older time
 * all change it), the build configuration and this script's format.
 * @param {string[]} [files]
 */
function sourceSignature(files = sourceFiles()) {
  // FNV-1a over the listing: cheap, and a collision would need a crafted file tree.
  let h = 0x811c9dc5;
  let n = 0;
  /** @param {string} s */
  const add = (s) => {
    for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  };
  for (const f of files) {
    const st = statSync(join(SRC, f));
    add(`${f}\0${st.size}\0${st.mtimeMs}\n`);
    n++;
  }
  for (const f of CONFIG_FILES) {
    try {
      const st = statSync(join(ROOT, f));
      add(`${f}\0${st.size}\0${st.mtimeMs}\n`);
    } catch {
      add(`${f}\0-\n`);
    }
  }
  // The code cache beside the CLI bundle is only good for the Node (V8) that made it.
  add(`${process.version}\0${process.arch}\n`);
  return `v${BUILD_FORMAT}-${n}-${(h >>> 0).toString(16)}`;
}

/** @returns {{ signature: string, declarations: boolean } | undefined} */
function readStamp() {
  try {
    const [signature = '', flags = ''] = readFileSync(STAMP, 'utf8').split('\n');
    return { signature, declarations: flags.includes('declarations') };
  } catch {
    return undefined;
  }
}

/**
 * Whether dist/ was built from src/ as it is now.
 * @param {{ declarations?: boolean, signature?: string }} [opts]
 */
function isFresh(opts = {}) {
  const stamp = readStamp();
  if (!stamp) return false;
  if (opts.declarations && !stamp.declarations) return false;
  return stamp.signature === (opts.signature ?? sourceSignature());
}

module.exports = { ROOT, SRC, DIST, STAMP, sourceFiles, sourceSignature, isFresh };
