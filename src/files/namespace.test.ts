/**
 * The pure logic of guest-file reading: how paths and filesystems are named,
 * globs, what a restore would overwrite, extents of written data, and the
 * unpacking of a tree that must not trust its names.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { VmsnapError } from '../errors.js';
import { overlaps, totalLength, unionExtents } from './extents.js';
import { extractTar } from './extract.js';
import type { Filesystem } from './guestfs.js';
import { compileGlob, letters, modeText, nameFilesystems, normalizePath, resolvePath, shiftDevice } from './namespace.js';
import { overwritesOf, parseMounts } from './restore.js';

const code = (fn: () => unknown): string => {
  try {
    fn();
  } catch (e) {
    return e instanceof VmsnapError ? e.code : String(e);
  }
  return 'ok';
};

describe('names', () => {
  it('letters and device shifts follow Linux disk names', () => {
    expect([0, 1, 25, 26, 27].map(letters)).toEqual(['a', 'b', 'z', 'aa', 'ab']);
    expect(shiftDevice('/dev/vdc2', -2)).toBe('/dev/vda2');
    expect(shiftDevice('btrfsvol:/dev/vdb1/home', -1)).toBe('btrfsvol:/dev/vda1/home');
    expect(shiftDevice('/dev/vg0/data', -1)).toBe('/dev/vg0/data');
  });

  it('names filesystems by fstab mount point, else by device, per point of a shared appliance', () => {
    const fs = (device: string, drive: number | undefined, more: Partial<Filesystem> = {}): Filesystem => ({ device, type: 'ext4', ...(drive !== undefined ? { drive } : {}), ...more }) as Filesystem;
    const found = [fs('/dev/vda1', 0, { mountpoint: '/' }), fs('/dev/vda2', 0, { type: 'swap' }), fs('/dev/vdb', 1), fs('/dev/vdc1', 2, { mountpoint: '/' }), fs('/dev/vdd', 3)];
    const { points, unplaced } = nameFilesystems(
      found,
      [
        { offset: 0, slots: ['disk0', 'disk1'] },
        { offset: 2, slots: ['disk0', 'disk1'] },
      ],
      [{ device: '/dev/vda1', start: 1048576, size: 1e9 }],
    );
    expect(unplaced).toEqual([]);
    expect(points[0]!.map((f) => [f.name, f.device, f.slot])).toEqual([
      ['/', '/dev/vda1', 'disk0'],
      ['/dev/vdb', '/dev/vdb', 'disk1'],
    ]);
    expect(points[0]![0]!.extent).toEqual({ start: 1048576, length: 1e9 });
    expect(points[1]!.map((f) => [f.name, f.device, f.sessionDevice])).toEqual([
      ['/', '/dev/vda1', '/dev/vdc1'],
      ['/dev/vdb', '/dev/vdb', '/dev/vdd'],
    ]);
  });

  it('resolves a path to its filesystem, devices before mount points, the longest name first', () => {
    const fss = [{ name: '/' }, { name: '/boot' }, { name: '/dev/vdb' }];
    expect(resolvePath(fss, '/etc/hostname')).toEqual({ fs: { name: '/' }, inner: '/etc/hostname' });
    expect(resolvePath(fss, '/boot')).toEqual({ fs: { name: '/boot' }, inner: '/' });
    expect(resolvePath(fss, '/bootx')?.fs.name).toBe('/');
    expect(resolvePath(fss, '/dev/vdb/notes.txt')).toEqual({ fs: { name: '/dev/vdb' }, inner: '/notes.txt' });
    expect(resolvePath([{ name: '/dev/vda' }], '/etc')).toBeUndefined();
  });

  it('refuses paths that are relative, empty, hold NUL or a . or .. part', () => {
    expect(normalizePath('/etc//hosts/')).toBe('/etc/hosts');
    expect(normalizePath('/')).toBe('/');
    for (const bad of ['', 'etc', '/etc/../x', '/./x', '/a\0b']) expect(code(() => normalizePath(bad)), bad).toBe('INVALID_ARGUMENT');
  });

  it('writes ls modes', () => {
    expect(modeText('file', 0o644)).toBe('-rw-r--r--');
    expect(modeText('dir', 0o1777)).toBe('drwxrwxrwt');
    expect(modeText('file', 0o4755)).toBe('-rwsr-xr-x');
    expect(modeText('symlink', 0o777)).toBe('lrwxrwxrwx');
  });
});

describe('globs', () => {
  it('match a name anywhere, a relative path at any depth, an anchored one from the top', () => {
    const name = compileGlob('*.conf');
    expect(['/etc/a.conf', '/dev/vda/x/b.conf'].every(name.test)).toBe(true);
    expect(name.test('/etc/a.conf/x')).toBe(false);
    expect(name.base).toBe('/');
    const rel = compileGlob('nginx/*.conf');
    expect(rel.test('/etc/nginx/site.conf')).toBe(true);
    expect(rel.test('/etc/nginx/sub/site.conf')).toBe(false);
    const anchored = compileGlob('/etc/**/hosts');
    expect(['/etc/hosts', '/etc/a/b/hosts'].every(anchored.test)).toBe(true);
    expect(anchored.test('/srv/etc/hosts')).toBe(false);
    expect(anchored.base).toBe('/etc');
    expect(compileGlob('/var/log/sys?og.[0-9]').test('/var/log/syslog.1')).toBe(true);
    expect(compileGlob('a.b').test('/x/aXb')).toBe(false);
    for (const bad of ['', '/etc/../x']) expect(code(() => compileGlob(bad)), bad).toBe('INVALID_ARGUMENT');
  });
});

describe('what a restore would overwrite', () => {
  it('nothing onto a free path; the target itself over a file; a whole directory when a file replaces it', () => {
    expect(overwritesOf('/a', 'file', [], { type: 'none', parentIsDir: true, entries: [] })).toEqual([]);
    expect(overwritesOf('/a', 'file', [], { type: 'file', parentIsDir: true, entries: [] })).toEqual(['/a']);
    expect(overwritesOf('/d', 'file', [], { type: 'dir', parentIsDir: true, entries: [] })).toEqual(['/d/ (a directory, with everything in it)']);
  });

  it('a tree merged into a directory: only the members it replaces', () => {
    const tree = [
      { path: 'x', dir: false },
      { path: 'sub', dir: true },
      { path: 'sub/y', dir: false },
      { path: 'z', dir: false },
    ];
    const present = {
      type: 'dir' as const,
      parentIsDir: true,
      entries: [
        { path: 'x', dir: false },
        { path: 'sub', dir: true },
        { path: 'z', dir: true },
        { path: 'kept', dir: false },
      ],
    };
    expect(overwritesOf('/d', 'dir', tree, present)).toEqual(['/d/x', '/d/z/ (a directory, with everything in it)']);
  });

  it("reads a guest's /proc/mounts with escaped names", () => {
    expect(parseMounts('/dev/vda /data ext2 rw 0 0\n/dev/vdb /mnt/my\\040disk ext4 rw 0 0\n')).toEqual([
      { device: '/dev/vda', mountpoint: '/data' },
      { device: '/dev/vdb', mountpoint: '/mnt/my disk' },
    ]);
  });
});

describe('extents', () => {
  it('merges, totals and tests overlap', () => {
    const u = unionExtents([
      { start: 100, length: 50 },
      { start: 0, length: 10 },
      { start: 140, length: 20 },
      { start: 10, length: 0 },
    ]);
    expect(u).toEqual([
      { start: 0, length: 10 },
      { start: 100, length: 60 },
    ]);
    expect(totalLength(u)).toBe(70);
    expect(overlaps(u, 10, 90)).toBe(false);
    expect(overlaps(u, 150, 1)).toBe(true);
  });
});

describe('unpacking a tree copied out of a guest', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vmsnap-extract-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('keeps content, modes and mtimes; links come last and never carry a write outside', async () => {
    const src = join(dir, 'src');
    mkdirSync(join(src, 'sub'), { recursive: true });
    writeFileSync(join(src, 'sub', 'f'), 'hello');
    execFileSync('chmod', ['640', join(src, 'sub', 'f')]);
    execFileSync('touch', ['-d', '2021-03-04T05:06:07Z', join(src, 'sub', 'f')]);
    execFileSync('ln', ['-s', '/etc/passwd', join(src, 'escape')]);
    // A tar whose later member would write through the symlink made earlier, and one named with '..'.
    const tar = join(dir, 't.tar');
    execFileSync('tar', ['-cf', tar, '-C', src, '.']);
    const evil = join(dir, 'evil');
    mkdirSync(evil);
    writeFileSync(join(evil, 'x'), 'pwned');
    execFileSync('tar', ['-rf', tar, '-C', evil, '--transform', 's,^x$,escape/x,', 'x']);
    execFileSync('tar', ['-rf', tar, '-C', evil, '--transform', 's,^x$,../outside,', 'x']);
    const out = join(dir, 'out');
    mkdirSync(out);
    const r = await extractTar(Readable.from([readFileSync(tar)]), out);
    expect(readFileSync(join(out, 'sub', 'f'), 'utf8')).toBe('hello');
    expect(lstatSync(join(out, 'sub', 'f')).mode & 0o777).toBe(0o640);
    expect(lstatSync(join(out, 'sub', 'f')).mtime.toISOString()).toBe('2021-03-04T05:06:07.000Z');
    expect(r.skipped.map((s) => s.path)).toContain('escape');
    expect(existsSync(join(dir, 'outside'))).toBe(false);
    expect(readFileSync('/etc/passwd', 'utf8')).not.toContain('pwned');
    expect(r.skipped.map((s) => s.reason)).toContain('its name leaves the directory');
  });
});
