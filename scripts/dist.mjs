// @ts-check
/**
 * dist/ from src/: the JavaScript that the CLI (bin/vmsnap.cjs) and the package run.
 *
 *   node scripts/dist.mjs                  rebuild the JavaScript if src/ changed since the last build
 *   node scripts/dist.mjs --declarations   also type-check and write the .d.ts files with tsc (npm run build)
 *   node scripts/dist.mjs --force          rebuild even if dist/ is up to date
 *   node scripts/dist.mjs --check          exit 0 if dist/ is up to date, 1 if not
 *
 * esbuild transpiles the library file by file (dist/ mirrors src/, so a path relative to a
 * module, like ../../package.json, means the same in both) and bundles the CLI into one file in
 * dist/cli/ (at the same depth, so those paths hold there too: checked at each build), with a
 * V8 code cache made by running it once (bin/cli-loader.cjs). That takes about a second of CPU; tsc only type-checks and writes declarations, for `npm run build`.
 *
 * In a checkout, bin/vmsnap.cjs checks dist/ at every start (dist-check.cjs; ensureDist() when
 * stale): every source's size and mtime and every folder's mtime against what the last build
 * recorded in dist/.source-stamp, so the CLI never runs stale code and never compiles at start
 * unless a source changed. A rebuild writes into a temporary folder beside dist/ and
 * then renames each file into place, so a process loading dist/ meanwhile sees every file
 * either whole-old or whole-new, never half written, and never a missing file. Builders take
 * a lock (a folder: mkdir is atomic), and the second of two CLIs started at once finds the
 * first one's build up to date and uses it. Even without the lock (a builder killed while
 * holding it, taken over) two builds of the same sources write the same bytes.
 */
import { copyFileSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

import { DIST, isFresh, ROOT, SRC, sourceStamp, STAMP } from './dist-check.cjs';

export { isFresh, sourceStamp };

const LOCK = join(DIST, '.build-lock');
/** Builds go to ROOT/.dist-tmp-PID first: beside dist/ (same file system, same depth, so source maps point right). */
const TMP_PREFIX = '.dist-tmp-';
/** src/cli is bundled into one file (see build()); the rest of src/ is transpiled file by file. */
const CLI_DIR = 'cli';
const CLI_BUNDLE = 'vmsnap-cli.cjs';
/** What stands for import.meta.url in the CommonJS bundle. */
const IMPORT_META_URL = '__vmsnapImportMetaUrl';
const URL_RELATIVE_TO_MODULE = new RegExp(`new URL\\(\\s*["'](\\.\\.?/[^"']*)["']\\s*,\\s*(?:import\\.meta\\.url|${IMPORT_META_URL})\\s*\\)`, 'g');
/**
 * Packages the CLI bundle loads from node_modules rather than containing them: none. The one
 * native addon (better-sqlite3's) is found by src/catalog/sqlite.ts and required by path, so
 * better-sqlite3's JavaScript is bundled (and code-cached) like the rest.
 * @type {string[]}
 */
const CLI_EXTERNAL = [];
/** @param {number} pid */
function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return /** @type {NodeJS.ErrnoException} */ (e).code === 'EPERM';
  }
}

/** @param {number} ms */
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Hold dist/'s build lock while fn runs. A lock whose owner is dead, or that is older than
 * `staleMs`, is taken over.
 * @template T
 * @param {() => Promise<T>} fn
 * @param {{ waitMs?: number, staleMs?: number }} [opts]
 * @returns {Promise<T>}
 */
async function withBuildLock(fn, opts = {}) {
  const waitMs = opts.waitMs ?? 300_000;
  const staleMs = opts.staleMs ?? 300_000;
  mkdirSync(DIST, { recursive: true });
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      mkdirSync(LOCK);
      writeFileSync(join(LOCK, 'owner'), String(process.pid));
      break;
    } catch (e) {
      if (/** @type {NodeJS.ErrnoException} */ (e).code !== 'EEXIST') throw e;
    }
    let stale = false;
    try {
      const age = Date.now() - statSync(LOCK).mtimeMs;
      const owner = Number(readFileSync(join(LOCK, 'owner'), 'utf8'));
      stale = age > staleMs || (owner > 0 && !alive(owner));
    } catch {
      // The owner file is written just after the folder: missing for long, the owner died in between.
      try {
        stale = Date.now() - statSync(LOCK).mtimeMs > 5_000;
      } catch {
        /* released meanwhile: try again */
      }
    }
    if (stale) {
      rmSync(LOCK, { recursive: true, force: true });
      continue;
    }
    if (Date.now() > deadline) throw new Error(`another process has been building dist/ for over ${Math.round(waitMs / 1000)} s (lock ${LOCK})`);
    await sleep(20);
  }
  try {
    return await fn();
  } finally {
    rmSync(LOCK, { recursive: true, force: true });
  }
}

/** Every file under a folder, relative to it (dot-entries at its top level excluded). @param {string} dir */
function listTree(dir) {
  /** @type {string[]} */
  const out = [];
  /** @param {string} d */
  const walk = (d) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (d === dir && e.name.startsWith('.')) continue;
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.push(relative(dir, p));
    }
  };
  walk(dir);
  return out;
}

/**
 * Node's built-in modules that cost something to load (crypto, child_process, net, the http
 * server: 1-5 ms each here) and that most commands never call. In the bundle, a module's
 * imports are required when the module is evaluated (commander even requires child_process
 * for a feature vmsnap does not use), so `list` would load every one the library imports.
 * fs, path, url, events, module and buffer are loaded by Node's own start anyway; node:stream
 * is left out because its module is a function (the legacy Stream class), which a stand-in
 * cannot be.
 */
const LAZY_BUILTINS = ['child_process', 'crypto', 'dgram', 'fs/promises', 'http', 'https', 'net', 'os', 'readline', 'readline/promises', 'stream/promises', 'stream/web', 'tty', 'worker_threads', 'zlib'];
/** The stand-in for `require` of those: as long as the word `require`, so the source map's columns hold. */
const LAZY_REQUIRE = '__lzyrq';
/**
 * Defined at the top of the bundle: a stand-in for a built-in module that requires it on first
 * use of any of its members. esbuild reads a named import at its call (`(0, m.createHash)(...)`),
 * so a module that imports crypto but is not asked to hash never loads it.
 */
const LAZY_REQUIRE_DEFINITION = `var ${LAZY_REQUIRE}=(id)=>{let m;const load=()=>m??=require(id);return new Proxy({},{get:(_,k)=>load()[k],set:(_,k,v)=>{load()[k]=v;return true},has:(_,k)=>k in load(),ownKeys:()=>Reflect.ownKeys(load()),getOwnPropertyDescriptor:(_,k)=>{const d=Reflect.getOwnPropertyDescriptor(load(),k);return d&&{...d,configurable:true}}})};`;

/**
 * `x=require("node:crypto")` → `x=__lzyrq("node:crypto")`, where a module's import is bound to
 * a name. Not inside esbuild's __toESM(...) (a default or namespace import, or `await import`),
 * which copies every member at once and so would load the module anyway.
 * @param {string} code
 */
function lazyBuiltinRequires(code) {
  const names = LAZY_BUILTINS.map((m) => m.replace('/', '\\/')).join('|');
  // Only an assignment (`x=`, `{a,b}=`, `[a]=`), never a comparison (`=== require(...)`).
  return code.replace(new RegExp(`(?<=[\\w$\\]}]\\s*=\\s*)require(\\("(?:node:)?(?:${names})"\\))`, 'g'), `${LAZY_REQUIRE}$1`);
}

/**
 * zod's `z` namespace carries `z.locales`: error messages in some 60 languages, 300 KB of the
 * CLI bundle (a fifth of what each start reads and hashes). vmsnap's messages are English, set
 * by zod itself from locales/en.js, which it imports directly; the namespace of all of them
 * becomes an empty one in the bundle.
 * @type {import('esbuild').Plugin}
 */
const noZodLocales = {
  name: 'no-zod-locales',
  setup(b) {
    b.onResolve({ filter: /^\.\.\/locales\/index\.js$/ }, (args) =>
      /[\\/]node_modules[\\/]zod[\\/]/.test(args.importer) ? { path: 'zod-locales', namespace: 'vmsnap-stub' } : undefined,
    );
    b.onLoad({ filter: /.*/, namespace: 'vmsnap-stub' }, () => ({ contents: 'export {};', loader: 'js' }));
  },
};

/**
 * Build dist/ (the caller holds the lock).
 * @param {{ declarations?: boolean, log?: (line: string) => void }} opts
 */
async function build(opts) {
  const log = opts.log ?? (() => {});
  const started = performance.now();
  // The stamp is taken before any source is read: a file edited during the build makes it stale at once.
  const stamp = sourceStamp();
  const files = stamp.files.flatMap(([p]) => (p.startsWith('src/') ? [p.slice('src/'.length)] : []));
  // Temporary folders of builders that died: nobody else builds while we hold the lock.
  for (const e of readdirSync(ROOT)) if (e.startsWith(TMP_PREFIX)) rmSync(join(ROOT, e), { recursive: true, force: true });
  const tmp = join(ROOT, `${TMP_PREFIX}${process.pid}`);
  mkdirSync(tmp);
  let cacheMs = 0;
  try {
    let esbuild;
    try {
      esbuild = await import('esbuild');
    } catch (e) {
      throw new Error(`dist/ is out of date and esbuild is not installed: run 'npm install' in ${ROOT} (${/** @type {Error} */ (e).message})`);
    }
    const ts = files.filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'));
    const common = /** @type {const} */ ({
      format: 'esm',
      platform: 'node',
      target: 'node20',
      sourcemap: 'linked',
      sourcesContent: false,
      tsconfig: join(ROOT, 'tsconfig.build.json'),
      logLevel: 'error',
    });
    await Promise.all([
      // The library, file by file, as `import 'vmsnap'` uses it.
      esbuild.build({ ...common, entryPoints: ts.filter((f) => !f.startsWith(`${CLI_DIR}/`)).map((f) => join(SRC, f)), outdir: tmp, outbase: SRC }),
      // The CLI, bundled with its dependencies (better-sqlite3 aside) into one CommonJS file, which
      // bin/cli-loader.cjs runs with V8's code cache (made below): --help and list then load one
      // file and compile nothing. The commands still import the library only when they run: in
      // the bundle, `await import(...)` defers the evaluation of what it imports.
      esbuild.build({
        ...common,
        entryPoints: [join(SRC, CLI_DIR, 'main.ts')],
        outfile: join(tmp, CLI_DIR, CLI_BUNDLE),
        format: 'cjs',
        bundle: true,
        metafile: true,
        // No comments and no indentation: a smaller file to read and hash, and pure ASCII (esbuild
        // escapes non-ASCII in code; comments carried some), which the loader reads as a one-byte
        // string instead of decoding UTF-8 into a two-byte one. Names are kept (stack traces, and
        // the source map maps back under VMSNAP_DEBUG).
        minifyWhitespace: true,
        charset: 'ascii',
        // A vm.Script (the code-cache loader) has no loader for import(): what stays outside the
        // bundle (node: built-ins, native addons) is required instead.
        supported: { 'dynamic-import': false },
        external: CLI_EXTERNAL,
        // import.meta does not exist in CommonJS: the bundle's own URL stands in (dist/cli/ is at
        // the depth of src/cli/, so paths relative to a module hold: checked below).
        plugins: [noZodLocales],
        define: { 'import.meta.url': IMPORT_META_URL },
        banner: { js: `var ${IMPORT_META_URL} = require('node:url').pathToFileURL(__filename).href;${LAZY_REQUIRE_DEFINITION}` },
      }).then((r) => {
        const out = join(tmp, CLI_DIR, CLI_BUNDLE);
        writeFileSync(out, lazyBuiltinRequires(readFileSync(out, 'latin1')), 'latin1');
        checkRelativeUrls(r.metafile, tmp);
        checkAscii(join(tmp, CLI_DIR, CLI_BUNDLE));
      }),
    ]);
    const cacheStarted = performance.now();
    await makeCodeCache(join(tmp, CLI_DIR, CLI_BUNDLE), tmp);
    cacheMs = performance.now() - cacheStarted;
    for (const f of files) {
      if (ts.includes(f)) continue;
      mkdirSync(dirname(join(tmp, f)), { recursive: true });
      copyFileSync(join(SRC, f), join(tmp, f));
    }
    if (opts.declarations) {
      const { spawnSync } = await import('node:child_process');
      const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
      const r = spawnSync(process.execPath, [tsc, '-p', join(ROOT, 'tsconfig.build.json'), '--emitDeclarationOnly', '--outDir', tmp], { stdio: 'inherit' });
      if (r.status !== 0) throw new Error(`tsc found errors (exit ${r.status ?? r.signal}): dist/ was left as it was`);
    }
    // Into place, one atomic rename per file; then away with what the new build no longer has.
    const built = listTree(tmp);
    const keep = new Set(built);
    for (const f of built) {
      mkdirSync(dirname(join(DIST, f)), { recursive: true });
      renameSync(join(tmp, f), join(DIST, f));
    }
    for (const f of listTree(DIST)) if (!keep.has(f)) rmSync(join(DIST, f), { force: true });
    removeEmptyDirs(DIST);
    writeFileSync(`${STAMP}.${process.pid}`, JSON.stringify({ ...stamp, declarations: opts.declarations ?? false }));
    renameSync(`${STAMP}.${process.pid}`, STAMP);
    // What dist/ recorded before the stamp listed what it checks.
    rmSync(join(DIST, '.source-signature'), { force: true });
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  log(`vmsnap: built dist/ from src/ (${files.length} files${opts.declarations ? ', with declarations' : ''}) in ${Math.round(performance.now() - started)} ms, of which ${Math.round(cacheMs)} ms running it once for the code cache`);
}

/**
 * Run the new CLI bundle once, as users do (--help, and list on an empty home), and save the
 * code V8 compiled for it, for bin/cli-loader.cjs. A failure here fails the build: the bundle
 * does not run.
 * @param {string} bundle
 * @param {string} tmp the build's temporary folder, which becomes dist/
 */
async function makeCodeCache(bundle, tmp) {
  const { spawnSync } = await import('node:child_process');
  const { mkdtempSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const home = mkdtempSync(join(tmpdir(), 'vmsnap-warmup-'));
  try {
    const loader = new URL('../bin/cli-loader.cjs', import.meta.url).href;
    const warmup = `
      const { writeFileSync, renameSync } = await import('node:fs');
      const { loadCli } = await import(${JSON.stringify(loader)});
      const bundle = process.argv[1];
      // Run as the file it becomes in dist/: the code cache remembers the name.
      const cli = loadCli(bundle, { useCache: false, as: process.argv[2] });
      await cli.exports.main(['node', 'vmsnap', '--help']);
      await cli.exports.main(['node', 'vmsnap', 'list', '--json']);
      if (process.exitCode) throw new Error('vmsnap list --json failed: exit ' + process.exitCode);
      writeFileSync(bundle + '.cache.tmp', cli.script.createCachedData());
      renameSync(bundle + '.cache.tmp', bundle + '.cache');
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', warmup, bundle, join(DIST, relative(tmp, bundle))], {
      env: { ...process.env, VMSNAP_HOME: home, VMSNAP_NO_BACKGROUND_FINGERPRINT: '1' },
      stdio: ['ignore', 'ignore', 'pipe'],
      encoding: 'utf8',
    });
    if (r.status !== 0) throw new Error(`the new CLI bundle does not run (exit ${r.status ?? r.signal}):\n${r.stderr}`);
  } finally {
    rmSync(home, { recursive: true, force: true });
  }
}

/**
 * The CLI bundle is read as Latin-1 by bin/cli-loader.cjs: refuse a build that is not pure ASCII.
 * @param {string} file
 */
function checkAscii(file) {
  const bytes = readFileSync(file);
  const at = bytes.findIndex((b) => b > 0x7f);
  if (at >= 0) {
    const line = bytes.subarray(0, at).toString('latin1').split('\n').length;
    throw new Error(`${relative(ROOT, file)} has a non-ASCII byte at line ${line}: bin/cli-loader.cjs reads it as Latin-1 (see charset and minifyWhitespace in build())`);
  }
}

/**
 * A module finds files of the package relative to itself (new URL('../../package.json',
 * import.meta.url)): right from src/X/ and dist/X/, and from the CLI's chunks in dist/cli/,
 * but not from a module deeper down, whose path would leave the package once bundled.
 * @param {{ outputs: Record<string, unknown> } | undefined} metafile
 * @param {string} tmp
 */
function checkRelativeUrls(metafile, tmp) {
  for (const out of Object.keys(metafile?.outputs ?? {})) {
    if (!/\.c?js$/.test(out)) continue;
    const file = join(process.cwd(), out);
    const text = readFileSync(file, 'utf8');
    for (const m of text.matchAll(URL_RELATIVE_TO_MODULE)) {
      const target = join(DIST, relative(tmp, dirname(file)), /** @type {string} */ (m[1]));
      if (relative(ROOT, target).startsWith('..')) {
        throw new Error(`${relative(tmp, file)}: new URL('${m[1]}', import.meta.url) points outside the package once bundled into dist/${CLI_DIR}/; find the file another way`);
      }
    }
  }
}

/** @param {string} dir */
function removeEmptyDirs(dir) {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (!e.isDirectory() || (dir === DIST && e.name.startsWith('.'))) continue;
    const p = join(dir, e.name);
    removeEmptyDirs(p);
    if (readdirSync(p).length === 0) rmSync(p, { recursive: true, force: true });
  }
}

/**
 * Make dist/ match src/, building it if needed; cheap when it already does.
 * @param {{ declarations?: boolean, force?: boolean, log?: (line: string) => void }} [opts]
 */
export async function ensureDist(opts = {}) {
  const want = { declarations: opts.declarations ?? false };
  if (!opts.force && isFresh(want)) return;
  await withBuildLock(async () => {
    // Another process may have built it while this one waited for the lock.
    if (!opts.force && isFresh(want)) return;
    await build({ ...want, ...(opts.log ? { log: opts.log } : {}) });
  });
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const args = process.argv.slice(2);
  if (args.includes('--check')) process.exit(isFresh({ declarations: args.includes('--declarations') }) ? 0 : 1);
  try {
    await ensureDist({
      declarations: args.includes('--declarations'),
      force: args.includes('--force'),
      log: (line) => process.stderr.write(`${line}\n`),
    });
  } catch (e) {
    process.stderr.write(`${/** @type {Error} */ (e).message}\n`);
    process.exit(1);
  }
}
