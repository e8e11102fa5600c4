/**
 * Unit tests of the libguestfs client without libguestfs: a fake helper (a Node
 * script speaking the helper's JSON-lines protocol) stands in for
 * guestfs-helper.py, so timeouts, aborts, crashes and error mapping are checked
 * in milliseconds. The tar scanner is checked against GNU tar. The real thing
 * is tested in test/guestfs.test.ts.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, createReadStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { VmsnapError } from '../errors.js';
import { isProcessAlive } from '../util/process.js';
import { findHelper, GuestFs, type GuestFsOpenOptions } from './guestfs.js';
import { scanTar, type TarEntry } from './tar-scan.js';

const dir = mkdtempSync(join(tmpdir(), 'vmsnap-gfs-unit-'));
const fake = join(dir, 'fake-helper.mjs');
const image = join(dir, 'disk.raw');
const pidFile = join(dir, 'fake.pid');

const FAKE = String.raw`
import { writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
const mode = process.env.FAKE_MODE;
writeFileSync(process.env.FAKE_PIDFILE, String(process.pid));
const send = (o) => process.stdout.write(JSON.stringify(o) + '\n');
if (mode === 'missing') {
  send({ event: 'fatal', kind: 'missing-guestfs', message: "No module named 'guestfs'" });
  process.exit(2);
}
send({ event: 'hello', protocol: 1, pid: process.pid });
const rl = createInterface({ input: process.stdin });
rl.on('close', () => process.exit(3));
rl.on('line', (line) => {
  const { id, op } = JSON.parse(line);
  const err = (kind, message, errno = null) => send({ id, ok: false, error: { kind, errno, message } });
  if (op === 'launch') {
    if (mode === 'hang-launch') return;
    return send({ id, ok: true, result: { launchMs: 1, qemuPid: 0, helperPid: process.pid, version: '1.48.6', devices: ['/dev/vda'] } });
  }
  if (op === 'stat') return err('not-found', 'lstatns: /nope: No such file or directory', 'ENOENT');
  if (op === 'list') return err('invalid', '/etc/hostname is not a directory', 'ENOTDIR');
  if (op === 'exists') return err('appliance', 'appliance closed the connection unexpectedly');
  if (op === 'umount') return err('no-space', 'No space left on device', 'ENOSPC');
  if (op === 'find') return; // never answers
  if (op === 'mounts') {
    process.stderr.write('Traceback: something broke\n');
    process.exit(1);
  }
  if (op === 'ping') return send({ id, ok: true, result: { pid: process.pid } });
  if (op === 'close') {
    send({ id, ok: true, result: null });
    process.exit(0);
  }
  err('bad-request', 'unknown op ' + op);
});
`;

beforeAll(() => {
  writeFileSync(fake, FAKE);
  writeFileSync(image, Buffer.alloc(1024));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));
afterEach(() => {
  delete process.env.FAKE_MODE;
});

function openFake(mode: string, opts: GuestFsOpenOptions = {}): Promise<GuestFs> {
  process.env.FAKE_MODE = mode;
  process.env.FAKE_PIDFILE = pidFile;
  return GuestFs.open([{ path: image, format: 'raw', readonly: true }], { python: process.execPath, helper: fake, tmpDir: dir, ...opts });
}

async function failure(p: Promise<unknown>): Promise<VmsnapError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof VmsnapError) return e;
    throw e;
  }
  throw new Error('expected a failure');
}


async function waitDead(pid: number): Promise<boolean> {
  for (let i = 0; i < 50 && isProcessAlive(pid); i++) await new Promise((r) => setTimeout(r, 100));
  return !isProcessAlive(pid);
}

describe('GuestFs client (fake helper)', () => {
  it('refuses bad drives before starting anything', async () => {
    expect((await failure(GuestFs.open([]))).code).toBe('INVALID_ARGUMENT');
    expect((await failure(GuestFs.open([{ path: join(dir, 'none.qcow2'), format: 'qcow2', readonly: true }]))).code).toBe('NOT_FOUND');
    const bad = await failure(GuestFs.open([{ path: image, format: 'vmdk' as 'raw', readonly: true }]));
    expect(bad.code).toBe('INVALID_ARGUMENT');
    const label = await failure(GuestFs.open([{ path: image, format: 'raw', readonly: true, label: 'no spaces' }]));
    expect(label.code).toBe('INVALID_ARGUMENT');
  });

  it('says how to install libguestfs when Python or its binding is missing', async () => {
    const noPython = await failure(GuestFs.open([{ path: image, format: 'raw', readonly: true }], { python: join(dir, 'no-python3') }));
    expect(noPython.code).toBe('QEMU_FAILED');
    expect(noPython.hint).toMatch(/apt-get install .*python3-guestfs.*linux-image-cloud-amd64/);
    const noBinding = await failure(openFake('missing'));
    expect(noBinding.code).toBe('QEMU_FAILED');
    expect(noBinding.message).toMatch(/libguestfs is not installed/);
    expect(noBinding.hint).toMatch(/python3-guestfs/);
  });

  it('maps helper errors to error codes, and the session survives them', async () => {
    const g = await openFake('ok');
    try {
      const nf = await failure(g.stat('/nope'));
      expect(nf.code).toBe('NOT_FOUND');
      expect(nf.details).toMatchObject({ op: 'stat', errno: 'ENOENT' });
      expect((await failure(g.list('/etc/hostname'))).code).toBe('INVALID_ARGUMENT');
      expect((await failure(g.umount('/x'))).code).toBe('NO_SPACE');
      const app = await failure(g.exists('/x'));
      expect(app.code).toBe('QEMU_FAILED');
      expect(app.hint).toBeDefined();
      await g.ping();
    } finally {
      await g.close();
    }
    expect(g.closed).toBe(true);
    expect((await failure(g.ping())).code).toBe('INVALID_STATE');
  });

  it('a launch that never ends times out and the helper is killed', async () => {
    const e = await failure(openFake('hang-launch', { launchTimeoutMs: 300 }));
    expect(e.code).toBe('QEMU_FAILED');
    expect(e.message).toMatch(/did not finish 'launch'/);
    expect(await waitDead(Number(readFileSync(pidFile, 'utf8')))).toBe(true);
  });

  it('a call that never ends times out, fails every later call and stops the helper', async () => {
    const g = await openFake('ok');
    const pid = g.pids.helper ?? 0;
    const finding = g.find('/', { timeoutMs: 200 });
    const queued = g.ping(); // queued behind find: fails with it
    const e = await failure(finding);
    expect(e.code).toBe('QEMU_FAILED');
    expect(e.message).toMatch(/did not finish 'find'/);
    expect((await failure(queued)).code).toBe('QEMU_FAILED');
    expect(await waitDead(pid)).toBe(true);
    await g.close();
  });

  it('an abort signal stops the session at once', async () => {
    const ac = new AbortController();
    const g = await openFake('ok', { signal: ac.signal });
    const pid = g.pids.helper ?? 0;
    const p = g.find('/');
    setTimeout(() => ac.abort(), 50);
    expect((await failure(p)).code).toBe('INTERRUPTED');
    expect(await waitDead(pid)).toBe(true);
    const callAbort = new AbortController();
    const g2 = await openFake('ok');
    const p2 = g2.find('/', { signal: callAbort.signal });
    setTimeout(() => callAbort.abort(), 50);
    expect((await failure(p2)).code).toBe('INTERRUPTED');
    await g2.close();
  });

  it('a helper that dies mid-call fails the call with QEMU_FAILED and its stderr', async () => {
    const g = await openFake('ok');
    const e = await failure(g.mounts());
    expect(e.code).toBe('QEMU_FAILED');
    expect(e.message).toMatch(/exited \(code 1\).*Traceback: something broke/);
    await g.close();
  });

  it('a call written into the pipe of a helper already dead fails with QEMU_FAILED (the EPIPE is no crash)', async () => {
    const g = await openFake('ok');
    const pid = Number(readFileSync(pidFile, 'utf8'));
    process.kill(pid, 'SIGKILL');
    // Synchronously until it is a zombie, so the request below meets a closed pipe before Node has seen the exit.
    while (isProcessAlive(pid)) execFileSync('sleep', ['0.01']);
    const unhandled: unknown[] = [];
    const onUncaught = (e: unknown): void => void unhandled.push(e);
    process.on('uncaughtException', onUncaught);
    try {
      expect((await failure(g.stat('/etc/hostname'))).code).toBe('QEMU_FAILED');
      await new Promise((r) => setTimeout(r, 50));
    } finally {
      process.off('uncaughtException', onUncaught);
    }
    expect(unhandled).toEqual([]);
    await g.close();
  });

  it('removes its session directory on close', async () => {
    const g = await openFake('ok');
    await g.close();
    expect(execFileSync('ls', [dir]).toString()).not.toMatch(/vmsnap-guestfs-/);
  });

  it('finds the helper script next to the module (src/) or in src/files (from dist/)', () => {
    const h = findHelper();
    expect(h.endsWith('src/files/guestfs-helper.py')).toBe(true);
    expect(existsSync(h)).toBe(true);
  });
});

describe('scanTar', () => {
  it('reads GNU and PAX tars: long names, links, modes, mtimes, non-UTF-8 names, content hashes', async () => {
    const src = join(dir, 'tarsrc');
    const longDir = join(src, 'd'.repeat(60), 'e'.repeat(60));
    mkdirSync(longDir, { recursive: true });
    const t = new Date('2020-02-03T04:05:06Z');
    const files: Record<string, Buffer> = {
      'small.txt': Buffer.from('hi\n'),
      'empty': Buffer.alloc(0),
      'block.bin': Buffer.alloc(512, 7),
      'odd.bin': Buffer.alloc(1000, 1),
      [join('d'.repeat(60), 'e'.repeat(60), 'f'.repeat(80) + '.txt')]: Buffer.from('long name\n'),
    };
    for (const [name, data] of Object.entries(files)) {
      writeFileSync(join(src, name), data);
      utimesSync(join(src, name), t, t);
    }
    chmodSync(join(src, 'small.txt'), 0o4751);
    symlinkSync('x'.repeat(150), join(src, 'longlink'));
    execFileSync('ln', [join(src, 'small.txt'), join(src, 'hard')]);
    const latin = Buffer.concat([Buffer.from(src + '/caf'), Buffer.from([0xe9])]);
    writeFileSync(latin, 'latin\n');
    for (const format of ['gnu', 'pax']) {
      const tarFile = join(dir, `t-${format}.tar`);
      execFileSync('tar', [`--format=${format}`, '--numeric-owner', '-C', src, '-cf', tarFile, '.']);
      const got: TarEntry[] = [];
      const n = await scanTar(createReadStream(tarFile, { highWaterMark: 777 }), (e) => got.push(e), { hash: true });
      expect(n).toBe(got.length);
      const by = new Map(got.map((e) => [e.path, e]));
      expect(by.get('')?.type).toBe('dir');
      for (const [name, data] of Object.entries(files)) {
        const e = by.get(name);
        expect(e, `${format} ${name}`).toMatchObject({ type: 'file', size: data.length });
        expect(e?.sha256).toBe(createHash('sha256').update(data).digest('hex'));
        expect(e?.mtime.getTime()).toBe(t.getTime());
      }
      expect(by.get('small.txt')?.mode).toBe(0o4751);
      expect(by.get('longlink')).toMatchObject({ type: 'symlink', linkTarget: 'x'.repeat(150) });
      const hard = by.get('hard') ?? by.get('small.txt');
      const other = hard === by.get('hard') ? by.get('small.txt') : by.get('hard');
      expect([hard?.type, other?.type].sort()).toEqual(['file', 'hardlink']);
      const raw = got.find((e) => e.rawPath !== undefined);
      expect(Buffer.from(raw?.rawPath ?? '', 'base64').equals(Buffer.from([0x63, 0x61, 0x66, 0xe9]))).toBe(true);
    }
  });

  it('refuses what is not a tar', async () => {
    await expect(scanTar(Readable.from([Buffer.alloc(1024, 65)]), () => {})).rejects.toThrow(/not a tar/);
  });
});
