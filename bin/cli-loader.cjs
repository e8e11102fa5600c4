// @ts-check
/**
 * Loads the CLI bundle (dist/cli/vmsnap-cli.cjs, one CommonJS file: commander, the commands,
 * the library and its dependencies) with V8's code cache: the build runs the CLI once and
 * saves the machine code V8 compiled for it beside the bundle (vmsnap-cli.cjs.cache), so a
 * run deserializes it instead of parsing and compiling about a megabyte of JavaScript. A
 * cache that does not match (another Node version, V8 flags, a rebuilt bundle) is rejected
 * by V8 and the bundle is compiled as usual. Node 22 can do this for ES modules itself
 * (module.enableCompileCache); on Node 20 only vm.Script can.
 */
'use strict';
const { readFileSync } = require('node:fs');
const { createRequire } = require('node:module');
const { dirname } = require('node:path');
const vm = require('node:vm');

/**
 * @typedef {{ main: (argv: string[]) => Promise<void> }} CliExports
 * @typedef {{ exports: CliExports, script: vm.Script, cache: 'used' | 'rejected' | 'none' }} LoadedCli
 */

/**
 * @param {string} file the bundle
 * @param {{ useCache?: boolean, as?: string }} [opts] `as`: the path the bundle is run as (its
 *   __filename, and the file name in stack traces, which a code cache remembers), when it is
 *   read from elsewhere (the build's temporary folder)
 * @returns {LoadedCli}
 */
function loadCli(file, opts = {}) {
  // Pure ASCII (the build checks it), so read as Latin-1: a one-byte string, which V8 hashes and
  // compiles faster than the two-byte one UTF-8 decoding gives, and no decoding at all.
  const source = readFileSync(file, 'latin1');
  const as = opts.as ?? file;
  /** @type {Buffer | undefined} */
  let cachedData;
  if (opts.useCache !== false) {
    try {
      cachedData = readFileSync(`${file}.cache`);
    } catch {
      cachedData = undefined;
    }
  }
  // The CommonJS wrapper, on the bundle's first line so that its line numbers (and source map) hold.
  const wrapped = `(function (exports, require, module, __filename, __dirname) {${source}\n})`;
  const script = new vm.Script(wrapped, { filename: as, ...(cachedData ? { cachedData } : {}) });
  const module = { exports: /** @type {Record<string, unknown>} */ ({}) };
  const fn = /** @type {(e: unknown, r: NodeJS.Require, m: unknown, f: string, d: string) => void} */ (script.runInThisContext());
  fn(module.exports, createRequire(as), module, as, dirname(as));
  return {
    exports: /** @type {CliExports} */ (/** @type {unknown} */ (module.exports)),
    script,
    cache: cachedData === undefined ? 'none' : script.cachedDataRejected ? 'rejected' : 'used',
  };
}

module.exports = { loadCli };
