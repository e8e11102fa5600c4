import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { BIN, COMMAND } from './helpers.js';

describe('the CLI bundle', () => {
  it('has no dynamic import left: the code-cache loader (a vm.Script) cannot run one', () => {
    execFileSync(process.execPath, [BIN, '--version']); // builds dist/ if src/ changed
    const bundle = readFileSync(fileURLToPath(new URL('../dist/cli/vmsnap-cli.cjs', import.meta.url)), 'utf8');
    // JSDoc types of bundled packages (`@param {import('./x.js').default}`) are comments, not code.
    const code = bundle.split('\n').filter((line) => !/^\s*(\*|\/\/)/.test(line));
    expect(code.flatMap((line) => line.match(/\bimport\(\s*["'`][^"'`]+["'`]\s*\)/g) ?? [])).toEqual([]);
  });

  it('prints --help and list --json whole to a pipe, and exits 0 when the reader closes it early (EPIPE)', async () => {
    const home = mkdtempSync(join(tmpdir(), 'vs-pipe-'));
    try {
      const env = { ...process.env, VMSNAP_HOME: home };
      const help = execFileSync(process.execPath, [BIN, '--help'], { env, encoding: 'utf8' });
      expect(help).toMatch(/^Usage: vmsnap \[options\] \[command\]/);
      expect(help).toMatch(/Exit codes: 0 ok/);
      expect(JSON.parse(execFileSync(process.execPath, [BIN, 'list', '--json'], { env, encoding: 'utf8' }))).toEqual([]);
      // `vmsnap --help | true`: the pipe is closed before the CLI writes.
      for (const args of [['--help'], ['list', '--json']]) {
        const child = spawn(process.execPath, [BIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
        child.stdout.destroy();
        let stderr = '';
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
        expect({ args, code, stderr }).toEqual({ args, code: 0, stderr: '' });
      }
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });

  it('runs as installed (bin/vmsnap through a symlink): Node starts without NODE_EXTRA_CA_CERTS, and what vmsnap runs gets it back', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vs-installed-'));
    try {
      // npm's layout: the command is a symlink to the package's bin/vmsnap.
      symlinkSync(fileURLToPath(new URL('../bin/vmsnap', import.meta.url)), join(dir, 'vmsnap'));
      // A qemu-img that notes the variable it was given, then does the work.
      mkdirSync(join(dir, 'path'));
      const real = execFileSync('sh', ['-c', 'command -v qemu-img'], { encoding: 'utf8' }).trim();
      writeFileSync(join(dir, 'path', 'qemu-img'), `#!/bin/sh\necho "$NODE_EXTRA_CA_CERTS" >> ${join(dir, 'seen')}\nexec ${real} "$@"\n`);
      chmodSync(join(dir, 'path', 'qemu-img'), 0o755);
      // A file that does not exist: a Node started with it warns ("Ignoring extra certs").
      const env = { ...process.env, VMSNAP_HOME: join(dir, 'home'), NODE_EXTRA_CA_CERTS: join(dir, 'no-such-ca.pem'), PATH: `${join(dir, 'path')}:${process.env.PATH ?? ''}` };
      const r = spawnSync(join(dir, 'vmsnap'), ['create', 'ca', '--disk', '16M'], { env, encoding: 'utf8' });
      expect({ code: r.status, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
      expect(readFileSync(join(dir, 'seen'), 'utf8').trim().split('\n')).toContain(env.NODE_EXTRA_CA_CERTS);
      // The same Node, started directly with the variable, pays for it (and says so).
      expect(spawnSync(process.execPath, [BIN, '--version'], { env, encoding: 'utf8' }).stderr).toMatch(/Ignoring extra certs/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("sees dist/ as stale after any change to what it is built from, and only then (scripts/dist-check.cjs)", () => {
    const check = createRequire(import.meta.url)('../scripts/dist-check.cjs') as {
      sourceStamp: (root: string) => object;
      isFresh: (o: { root: string; declarations?: boolean }) => boolean;
    };
    const root = mkdtempSync(join(tmpdir(), 'vs-stamp-'));
    const put = (rel: string, text: string) => {
      mkdirSync(join(root, rel, '..'), { recursive: true });
      writeFileSync(join(root, rel), text);
    };
    const stamp = () => put('dist/.source-stamp', JSON.stringify({ ...check.sourceStamp(root), declarations: false }));
    const fresh = () => check.isFresh({ root });
    try {
      put('src/a.ts', 'export const a = 1;\n');
      put('src/sub/b.ts', 'export const b = 2;\n');
      put('src/sub/b.test.ts', 'test\n');
      put('tsconfig.json', '{}');
      stamp();
      expect(fresh()).toBe(true);
      expect(check.isFresh({ root, declarations: true })).toBe(false); // built without them
      put('src/sub/b.test.ts', 'a test edited in place\n');
      expect(fresh()).toBe(true); // tests are not built
      // Nor what tools leave in src/: a new test, an editor's swap file, Python's cache.
      put('src/sub/c.test.ts', '');
      put('src/.a.ts.swp', '');
      mkdirSync(join(root, 'src/sub/__pycache__'));
      expect(fresh()).toBe(true);
      const changes: [string, () => void][] = [
        ['a source edited in place', () => put('src/a.ts', 'export const a = 10;\n')],
        ['a source touched', () => utimesSync(join(root, 'src/sub/b.ts'), new Date(), new Date(Date.now() + 5000))],
        ['a source put back with an older time', () => utimesSync(join(root, 'src/a.ts'), new Date(0), new Date(0))],
        ['a file added in a folder', () => put('src/sub/c.ts', '')],
        ['a folder added', () => mkdirSync(join(root, 'src/new'))],
        ['a source removed', () => rmSync(join(root, 'src/a.ts'))],
        ['a configuration file changed', () => put('tsconfig.json', '{"x":1}')],
        ['a configuration file that was missing added', () => put('tsconfig.build.json', '{}')],
      ];
      for (const [what, change] of changes) {
        change();
        expect({ what, fresh: fresh() }).toEqual({ what, fresh: false });
        stamp();
        expect({ what, restamped: fresh() }).toEqual({ what, restamped: true });
      }
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('serves from the bundle (vmsnap serve): the API, its OpenAPI document, the web UI, the event stream; an operation runs', async () => {
    // The tests of the API start its server in-process from src/; this is the CLI's bundle,
    // with its built-in modules loaded on first use (http, crypto, net).
    const home = mkdtempSync(join(tmpdir(), 'vs-serve-'));
    const child = spawn(COMMAND, ['serve', '--port', '0', '--no-policies'], { env: { ...process.env, VMSNAP_HOME: home }, stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      const base = await new Promise<string>((resolve, reject) => {
        const t = setInterval(() => {
          const m = /the API at (http:\/\/127\.0\.0\.1:\d+)\/api/.exec(out);
          if (m) {
            clearInterval(t);
            resolve(m[1]!);
          }
        }, 50);
        child.once('exit', (code) => reject(new Error(`vmsnap serve exited ${code}: ${out}`)));
      });
      expect(await (await fetch(`${base}/api/vms`)).json()).toEqual([]);
      expect(((await (await fetch(`${base}/openapi.json`)).json()) as { openapi: string }).openapi).toMatch(/^3\./);
      const page = await fetch(`${base}/`);
      expect({ status: page.status, html: /<div id="root">/.test(await page.text()) }).toEqual({ status: 200, html: true });
      const events = await fetch(`${base}/api/events`);
      const reader = events.body!.getReader();
      expect(new TextDecoder().decode((await reader.read()).value)).toMatch(/^event: hello/);
      await reader.cancel();
      const created = await fetch(`${base}/api/vms`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'served', disks: [{ sizeBytes: 16 * 1024 ** 2 }] }) });
      expect({ status: created.status, name: ((await created.json()) as { name: string }).name }).toEqual({ status: 201, name: 'served' });
      expect(((await (await fetch(`${base}/api/vms`)).json()) as { name: string }[]).map((v) => v.name)).toEqual(['served']);
    } finally {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('close', r));
      rmSync(home, { recursive: true, force: true });
    }
  });
});
