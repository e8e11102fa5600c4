// @ts-check
/**
 * Whether dist/ was built from src/ as it is now: what bin/vmsnap.cjs asks at every start in a
 * checkout. Kept apart from dist.mjs (the build, with esbuild) so that this check loads only
 * node:fs and node:path.
 *
 * The build records in dist/.source-stamp what it was built from: the size and mtime of every
 * source, the mtime of every folder under src/, and the build configuration's files. The check
 * stats each of those again and compares: an edited file changes its mtime; an added, removed
 * or renamed file (or folder) changes its folder's, and then a listing of that folder says
 * whether it was a source or only a test or an editor's swap file; a file put back with an
 * older time differs too. Reading the recorded list instead of walking src/, and comparing
 * numbers instead of hashing a listing, keeps it to one stat per entry (a few ms for ~180).
 */
'use strict';
const { readdirSync, readFileSync, statSync } = require('node:fs');
const { join } = require('node:path');

// CommonJS, like bin/vmsnap.cjs, which requires it at every start: no ES module loader to set up.
const ROOT = join(__dirname, '..');
const SRC = join(ROOT, 'src');
const DIST = join(ROOT, 'dist');
/** @param {string} root */
const stampPath = (root) => join(root, 'dist', '.source-stamp');
const STAMP = stampPath(ROOT);
/** Bump when the build's options change, so every dist/ built before is rebuilt. */
const BUILD_FORMAT = 5;
/** Files beside the sources that change how they are built. */
// This script is part of the build: a change to it (new esbuild options, say) rebuilds too.
// package-lock.json: the CLI bundle contains its dependencies (better-sqlite3's JavaScript among
// them, which must match the native addon npm installed), so an npm install rebuilds it too.
const CONFIG_FILES = ['tsconfig.json', 'tsconfig.build.json', 'scripts/dist.mjs', 'scripts/dist-check.cjs', 'package-lock.json'];

/**
 * What in src/ is not built: tests, and what tools leave there (editors' swap and probe files
 * start with a dot or are named 4913; Python's bytecode cache, when the libguestfs helper ran
 * from src/).
 * @param {string} name
 */
const notBuilt = (name) => name.endsWith('.test.ts') || name.startsWith('.') || name === '4913' || name === '__pycache__';

/**
 * The entries of a folder that go into dist/: its files (not tests) and its folders.
 * @param {string} dir
 * @returns {import('node:fs').Dirent[]}
 */
const builtEntries = (dir) => readdirSync(dir, { withFileTypes: true }).filter((e) => !notBuilt(e.name));

/**
 * What dist/ is built from, as the build records it and the check compares it: paths are
 * relative to the root, `[path, size, mtimeMs]` for a file (size -1: missing), `[path, mtimeMs]`
 * for a folder. The Node version is there because the CLI bundle's code cache is only good for
 * the V8 that made it.
 * @typedef {{ format: number, node: string, declarations: boolean, files: [string, number, number][], dirs: [string, number][] }} SourceStamp
 */

/**
 * The sources as they are now: every file under src/ that goes into dist/ (tests do not),
 * sorted, every folder, and the configuration files.
 * @param {string} [root]
 * @returns {Omit<SourceStamp, 'declarations'>}
 */
function sourceStamp(root = ROOT) {
  /** @type {[string, number, number][]} */
  const files = [];
  /** @type {[string, number][]} */
  const dirs = [];
  /** @param {string} rel */
  const walk = (rel) => {
    const dir = join(root, rel);
    dirs.push([rel, statSync(dir).mtimeMs]);
    for (const e of builtEntries(dir)) {
      if (e.isDirectory()) walk(`${rel}/${e.name}`);
      else {
        const st = statSync(join(dir, e.name));
        files.push([`${rel}/${e.name}`, st.size, st.mtimeMs]);
      }
    }
  };
  walk('src');
  files.sort((a, b) => (a[0] < b[0] ? -1 : 1));
  for (const f of CONFIG_FILES) {
    const st = statSync(join(root, f), { throwIfNoEntry: false });
    files.push([f, st ? st.size : -1, st ? st.mtimeMs : 0]);
  }
  return { format: BUILD_FORMAT, node: `${process.version} ${process.arch}`, files, dirs };
}

/** @param {string} [root] @returns {SourceStamp | undefined} */
function readStamp(root = ROOT) {
  try {
    return JSON.parse(readFileSync(stampPath(root), 'utf8'));
  } catch {
    return undefined;
  }
}

/**
 * Whether dist/ was built from src/ as it is now.
 * @param {{ declarations?: boolean, root?: string }} [opts]
 */
function isFresh(opts = {}) {
  const root = opts.root ?? ROOT;
  const stamp = readStamp(root);
  if (!stamp || stamp.format !== BUILD_FORMAT || stamp.node !== `${process.version} ${process.arch}`) return false;
  if (opts.declarations && !stamp.declarations) return false;
  for (const [rel, mtimeMs] of stamp.dirs) {
    const st = statSync(join(root, rel), { throwIfNoEntry: false });
    if (!st) return false;
    // Something was added, removed or renamed in it: stale unless it was only what is not built
    // (a test, an editor's swap file), which a listing of the folder tells.
    if (st.mtimeMs !== mtimeMs && !sameEntries(root, rel, stamp)) return false;
  }
  for (const [rel, size, mtimeMs] of stamp.files) {
    const st = statSync(join(root, rel), { throwIfNoEntry: false });
    if (st ? st.size !== size || st.mtimeMs !== mtimeMs : size !== -1) return false;
  }
  return true;
}

/**
 * Whether a folder holds what the stamp recorded in it, by name.
 * @param {string} root @param {string} rel @param {SourceStamp} stamp
 */
function sameEntries(root, rel, stamp) {
  const prefix = `${rel}/`;
  const child = (/** @type {string} */ p) => p.startsWith(prefix) && !p.slice(prefix.length).includes('/');
  const recorded = [...stamp.files.map(([p]) => p), ...stamp.dirs.map(([p]) => p)].filter(child).map((p) => p.slice(prefix.length));
  const now = builtEntries(join(root, rel)).map((e) => e.name);
  return now.length === recorded.length && new Set([...now, ...recorded]).size === now.length;
}

module.exports = { ROOT, SRC, DIST, STAMP, sourceStamp, isFresh };
