/**
 * Guest files of snapshots end to end (files, cp, restore-file, diff, search)
 * on the demo guest (its disk is ext2 on the whole of /dev/vda, mounted on
 * /data; no fstab, so the filesystem is named /dev/vda), read in real libguestfs
 * appliances under TCG. One appliance (a library session holding the five
 * snapshots) serves the reading checks; the API's reader and the CLI checks
 * boot one each, so they are few: the API's open/list/download, a cp, a diff
 * against the running and writing present state, an offline restore and a
 * blank disk.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serve } from '../src/api/server.js';
import type { DiffReport, DirectoryListing, FilesystemsView } from '../src/contract/files.js';
import { VmsnapError } from '../src/errors.js';
import type { FilesSession } from '../src/files/service.js';
import { findOrphans } from '../src/operations/recovery.js';
import type { Vmsnap } from '../src/vmsnap.js';
import { catalogDump, cleanupHome, cli, expectRefused, openLib, sh, tempHome } from './helpers.js';
import { apiClient, expectError } from './http.js';

const APPLIANCE = 1_500_000; // an appliance boot is 10 s idle, minutes on a loaded 2-core host
process.env.VMSNAP_GUESTFS_LAUNCH_TIMEOUT ??= '900'; // the library's and the CLI's (cli() passes the environment on)
const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return e instanceof VmsnapError ? `${e.code}: ${e.message}` : `not a VmsnapError: ${String(e)}`;
  }
  return 'resolved';
}

let home: string;
let lib: Vmsnap;
let s: FilesSession;
let out: string;
const versions: string[] = [];

describe('guest files of snapshots', () => {
  beforeAll(async () => {
    home = tempHome();
    out = mkdtempSync(join(tmpdir(), 'vs-files-out-'));
    lib = openLib(home);
    await lib.vms.create('d', { image: 'demo', disks: [{ sizeBytes: 64 * 1024 ** 2 }] });
    await lib.vms.start('d');
    // S0: a, dir/x, mode 0640 on a; S1: a changed, b added, dir/x removed; S2..S4: only v changes.
    await sh(lib, 'd', 'echo one > /data/a && chmod 640 /data/a && mkdir /data/dir && echo x > /data/dir/x && echo v0 > /data/v && head -c 300000 /dev/urandom > /data/big && sync');
    await lib.snapshots.create('d', 'S0', { memory: false });
    await sh(lib, 'd', 'echo changed-a > /data/a && echo two > /data/b && rm /data/dir/x && echo v1 > /data/v && sync');
    await lib.snapshots.create('d', 'S1', { memory: false });
    for (const i of [2, 3, 4]) {
      await sh(lib, 'd', `echo v${i} > /data/v && sync`);
      await lib.snapshots.create('d', `S${i}`, { memory: false });
    }
    for (let i = 0; i < 5; i++) versions.push(sha(`v${i}\n`));
    s = await lib.files.open('d', ['S0', 'S1', 'S2', 'S3', 'S4']);
  }, APPLIANCE);

  afterAll(async () => {
    await s?.close().catch(() => undefined);
    lib?.close();
    cleanupHome(home);
    rmSync(out, { recursive: true, force: true });
  });

  it('names the filesystem by its device (no fstab) and lists a directory with type, size, mode, mtime', async () => {
    const v = await s.filesystems('S1');
    expect(v.filesystems.map((f) => [f.name, f.device, f.slot, f.type])).toEqual([['/dev/vda', '/dev/vda', 'disk0', 'ext2']]);
    expect(v.unreadable).toEqual([]);
    const l = await s.list('S1', '/dev/vda');
    expect(l.entries.map((e) => e.name)).toEqual(['a', 'b', 'big', 'dir', 'lost+found', 'v']);
    const a = l.entries.find((e) => e.name === 'a')!;
    expect(a).toMatchObject({ type: 'file', size: 10, mode: 0o640, modeText: '-rw-r-----', path: '/dev/vda/a' });
    expect(Date.parse(a.mtime)).toBeGreaterThan(Date.now() - 3_600_000);
    expect(l.entries.find((e) => e.name === 'dir')!.type).toBe('dir');
    expect((await s.list('S0', '/dev/vda/dir')).entries.map((e) => e.name)).toEqual(['x']);
  }, APPLIANCE);

  it('copies a file and a tree out byte-identical with mode and mtime, and a file to a stream', async () => {
    const guestBig = (await sh(lib, 'd', 'sha256sum /data/big')).split(' ')[0];
    const r = await s.copyOut('S0', '/dev/vda/big', join(out, 'big'));
    expect(r).toMatchObject({ type: 'file', files: 1, bytes: 300000 });
    expect(sha(readFileSync(join(out, 'big')))).toBe(guestBig);
    const a = await s.copyOut('S0', '/dev/vda/a', out);
    expect(a.dest).toBe(join(out, 'a'));
    expect(readFileSync(join(out, 'a'), 'utf8')).toBe('one\n');
    expect(statSync(join(out, 'a')).mode & 0o7777).toBe(0o640);
    const st = await s.stat('S0', '/dev/vda/a');
    expect(Math.floor(statSync(join(out, 'a')).mtimeMs / 1000)).toBe(Math.floor(Date.parse(st.mtime) / 1000));
    const t = await s.copyOut('S0', '/dev/vda/dir', join(out, 'tree'));
    expect(t).toMatchObject({ type: 'dir', files: 1 });
    expect(readFileSync(join(out, 'tree', 'x'), 'utf8')).toBe('x\n');
    const pipe = new PassThrough();
    const chunks: Buffer[] = [];
    pipe.on('data', (c: Buffer) => chunks.push(c));
    await s.readTo('S1', '/dev/vda/b', pipe);
    expect(Buffer.concat(chunks).toString()).toBe('two\n');
    // An existing file is replaced only with force; a directory goes only to a new path.
    expect(await codeOf(s.copyOut('S1', '/dev/vda/a', join(out, 'a')))).toMatch(/^ALREADY_EXISTS: .*already exists/);
    expect(readFileSync(join(out, 'a'), 'utf8')).toBe('one\n');
    await s.copyOut('S1', '/dev/vda/a', join(out, 'a'), { force: true });
    expect(readFileSync(join(out, 'a'), 'utf8')).toBe('changed-a\n');
    // Into an existing directory, as cp does; a second time the name is taken.
    const into = await s.copyOut('S0', '/dev/vda/dir', join(out, 'tree'));
    expect(into.dest).toBe(join(out, 'tree', 'dir'));
    expect(await codeOf(s.copyOut('S0', '/dev/vda/dir', join(out, 'tree')))).toMatch(/^ALREADY_EXISTS: dest: .*tree\/dir' exists/);
  }, APPLIANCE);

  it('diff of two snapshots: exactly the files added, removed and changed, and the bytes written per disk', async () => {
    const d = await s.diff('S0', 'S1');
    expect(d.disks).toEqual([expect.objectContaining({ slot: 'disk0', status: 'compared', layers: 1 })]);
    expect(d.disks[0]!.changedBytes).toBeGreaterThan(0);
    const fs = d.filesystems[0]!;
    expect(fs.status).toBe('compared');
    const files = (fs.changes ?? []).filter((c) => c.type !== 'dir');
    expect(files.map((c) => [c.path, c.change])).toEqual([
      ['/dev/vda/a', 'changed'],
      ['/dev/vda/b', 'added'],
      ['/dev/vda/dir/x', 'removed'],
      ['/dev/vda/v', 'changed'],
    ]);
    expect(files[0]!.aspects).toEqual(expect.arrayContaining(['size', 'content']));
    expect(files[3]!.aspects).toEqual(['content']); // same size, other bytes
    expect(d.totals).toMatchObject({ added: 1, removed: 1 });
    const same = await s.diff('S2', 'S2');
    expect(same.totals).toMatchObject({ added: 0, removed: 0, changed: 0, changedBytes: 0 });
    expect(same.filesystems[0]!.status).toBe('unchanged');
    const stat = await s.diff('S0', 'S1', { stat: true });
    expect(stat.filesystems[0]!.changes).toBeUndefined();
    expect(stat.totals).toEqual(d.totals);
  }, APPLIANCE);

  it('search finds the five versions of a file with their distinct hashes', async () => {
    const r = await s.search('v');
    expect(r.snapshots).toEqual(['S0', 'S1', 'S2', 'S3', 'S4']);
    expect(r.matches.map((m) => m.path)).toEqual(['/dev/vda/v']);
    const m = r.matches[0]!;
    expect(m.versions.map((v) => [v.snapshot, v.sha256, v.size])).toEqual(versions.map((h, i) => [`S${i}`, h, 3]));
    expect(m.distinct).toBe(5);
    const b = await s.search('b');
    expect(b.matches.map((x) => [x.path, x.versions.length, x.missingIn])).toEqual([['/dev/vda/b', 4, ['S0']]]);
  }, APPLIANCE);

  it('bad input: a missing path, a file listed as a directory, a path outside every filesystem, a relative path', async () => {
    expect(await codeOf(s.list('S1', '/dev/vda/nope'))).toMatch(/^NOT_FOUND: S1: no such file or directory: \/dev\/vda\/nope/);
    expect(await codeOf(s.list('S1', '/dev/vda/a'))).toMatch(/^INVALID_ARGUMENT: .*not a directory/);
    expect(await codeOf(s.list('S1', '/etc'))).toMatch(/^NOT_FOUND: S1: no filesystem holds \/etc; its filesystems are \/dev\/vda/);
    expect(await codeOf(s.copyOut('S0', '/dev/vda/dir/x2', join(out, 'x2')))).toMatch(/^NOT_FOUND/);
    expect(await codeOf(s.list('S1', 'etc'))).toMatch(/^INVALID_ARGUMENT: path: 'etc' is not absolute/);
    expect(await codeOf(s.list('S1', '/dev/vda/../x'))).toMatch(/^INVALID_ARGUMENT: .*'\.\.'/);
    expect(await codeOf(s.list('nope', '/'))).toMatch(/^NOT_FOUND: 'nope' is not open/);
  }, APPLIANCE);

  it('restore-file while the VM runs: through the guest agent, refused onto a directory without --force', async () => {
    await sh(lib, 'd', 'rm /data/b && sync');
    const dry = await s.restore('S1', '/dev/vda/b', { dryRun: true });
    expect(dry).toMatchObject({ via: 'guest-agent', overwrites: [], files: 1 });
    expect(await sh(lib, 'd', 'ls /data')).not.toMatch(/^b$/m);
    const r = await s.restore('S1', '/dev/vda/b');
    expect(r).toMatchObject({ via: 'guest-agent', guestPath: '/data/b', overwrites: [], files: 1, bytes: 4 });
    expect(await sh(lib, 'd', 'cat /data/b')).toBe('two\n');
    // Onto a directory: refused, nothing written.
    const before = await sh(lib, 'd', 'ls -la /data/dir; cat /data/a');
    expect(await codeOf(s.restore('S0', '/dev/vda/a', { to: '/dev/vda/dir' }))).toMatch(/^WOULD_LOSE_DATA: .*would overwrite: \/dev\/vda\/dir\/ \(a directory/);
    expect(await sh(lib, 'd', 'ls -la /data/dir; cat /data/a')).toBe(before);
    // A file over a file: said, refused, then done with force.
    expect(await codeOf(s.restore('S0', '/dev/vda/a'))).toMatch(/^WOULD_LOSE_DATA: .*\/dev\/vda\/a/);
    const f = await s.restore('S0', '/dev/vda/a', { force: true });
    expect(f.overwrites).toEqual(['/dev/vda/a']);
    expect(await sh(lib, 'd', 'cat /data/a; stat -c %a /data/a')).toBe('one\n640\n');
    expect(await codeOf(s.restore('S0', '/dev/vda/nope'))).toMatch(/^NOT_FOUND/);
    expect(lib.ctx.journal.unfinished().filter((o) => o.kind === 'restore-file')).toEqual([]);
  }, APPLIANCE);

  it('the session changed nothing frozen; closing it leaves no operation, file or pin behind', async () => {
    await s.close();
    expect(lib.ctx.journal.unfinished()).toEqual([]);
    expect(await findOrphans(lib.ctx)).toEqual([]);
    const v = await cli(home, ['verify', 'd', '--deep', '--json']);
    expect(JSON.parse(v.stdout).problems, v.stdout).toEqual([]);
  }, APPLIANCE);

  it('API: a snapshot opened (202) serves its listing and downloads from one reader; a restore dry run says what it would overwrite; bad input refused', async () => {
    const server = await serve({ lib, host: '127.0.0.1', port: 0 });
    const api = apiClient(() => server.url);
    try {
      const opened = await api.succeed(await api.call('POST', '/api/vms/d/snapshots/S1/files/open'), APPLIANCE);
      expect(opened.kind).toBe('files-read');
      expect((opened.result as FilesystemsView).filesystems.map((f) => f.name)).toEqual(['/dev/vda']);
      const list = await api.call('GET', '/api/vms/d/snapshots/S1/files/list?path=/dev/vda');
      expect(list.status, JSON.stringify(list.json)).toBe(200);
      expect((list.json as DirectoryListing).entries.map((e) => e.name)).toEqual(['a', 'b', 'big', 'dir', 'lost+found', 'v']);
      const a = await fetch(`${server.url}/api/vms/d/snapshots/S1/files/content?path=/dev/vda/a`);
      expect(a.status).toBe(200);
      expect(await a.text()).toBe('changed-a\n');
      expectError(await api.call('GET', '/api/vms/d/snapshots/S1/files/content?path=/dev/vda/nope'), 404, 'NOT_FOUND');
      await api.refused('GET', '/api/vms/d/snapshots/S1/files/list?path=relative', undefined, 400, 'INVALID_ARGUMENT', 'path');
      // Through the open reader and the guest agent: nothing written.
      const dry = await api.succeed(await api.call('POST', '/api/vms/d/snapshots/S1/files/restore', { path: '/dev/vda/a', dryRun: true }), APPLIANCE);
      expect(dry.result).toMatchObject({ via: 'guest-agent', overwrites: ['/dev/vda/a'], files: 1 });
      expect(await sh(lib, 'd', 'cat /data/a')).toBe('one\n');
      await api.refused('POST', '/api/vms/d/diff', {}, 400, 'INVALID_ARGUMENT', 'from');
      expectError(await api.call('POST', '/api/vms/d/diff', { from: 'nosuch' }), 404, 'NOT_FOUND');
      await api.refused('POST', '/api/vms/d/search', { glob: '' }, 400, 'INVALID_ARGUMENT', 'glob');
    } finally {
      await server.close();
    }
    // Closing the server shut the reader and released its pins.
    expect(lib.ctx.journal.unfinished()).toEqual([]);
  }, APPLIANCE);

  it('CLI: cp a file out; bad input refused before an appliance boots', async () => {
    const r = await cli(home, ['cp', 'd', 'S1:/dev/vda/b', join(out, 'b-cli'), '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ source: '/dev/vda/b', type: 'file', bytes: 4 });
    expect(readFileSync(join(out, 'b-cli'), 'utf8')).toBe('two\n');
    await expectRefused(home, ['cp', 'd', 'S1/dev/vda/b', out], 2, /not SNAPSHOT:PATH/);
    await expectRefused(home, ['cp', 'd', 'nosuch:/dev/vda/b', out], 3, /nosuch/);
    await expectRefused(home, ['files', 'd', 'S1', 'relative'], 2, /not absolute/);
    await expectRefused(home, ['cp', 'd', 'S1:/dev/vda/b', join(out, 'no', 'such', 'dir', 'b')], 3, /no such directory/);
    await expectRefused(home, ['search', 'd', ''], 2, /glob/);
    await expectRefused(home, ['diff', 'd', 'S0', 'nosuch'], 3, /nosuch/);
  }, APPLIANCE);

  it('CLI: diff against the present state while the guest runs and writes: it keeps running, pauses for milliseconds, nothing frozen changes', async () => {
    await sh(lib, 'd', "setsid /bin/sh -c 'i=0; while :; do i=$((i+1)); echo $i > /data/counter; sleep 0.2; done' </dev/null >/dev/null 2>&1 &");
    await sh(lib, 'd', 'echo new > /data/new && sync');
    const layersBefore = lib.ctx.catalog.listLayers(lib.vms.get('d').id).length;
    const r = await cli(home, ['diff', 'd', 'S4', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const d = JSON.parse(r.stdout) as DiffReport;
    expect(d.to).toBe('present');
    expect(d.present!.pauseMs).toBeLessThan(1000);
    const paths = (d.filesystems[0]!.changes ?? []).map((c) => [c.path, c.change]);
    expect(paths).toEqual(expect.arrayContaining([['/dev/vda/new', 'added'], ['/dev/vda/counter', 'added'], ['/dev/vda/a', 'changed']]));
    expect((await lib.vms.status('d')).state).toBe('running');
    const c1 = Number(await sh(lib, 'd', 'cat /data/counter'));
    const c2 = Number(await sh(lib, 'd', 'sleep 1; cat /data/counter'));
    expect(c2).toBeGreaterThan(c1);
    // The frozen point was merged back: as many layers as before, nothing unfinished.
    expect(lib.ctx.catalog.listLayers(lib.vms.get('d').id).length).toBe(layersBefore);
    expect(lib.ctx.journal.unfinished()).toEqual([]);
    const v = await cli(home, ['verify', 'd', '--deep', '--json']);
    expect(JSON.parse(v.stdout).problems, v.stdout).toEqual([]);
  }, APPLIANCE);

  it('CLI: restore-file into a stopped VM (its disk, offline), then the guest has it back', async () => {
    await sh(lib, 'd', 'pkill -f /data/counter || true; rm -rf /data/dir && sync');
    await lib.vms.stop('d');
    const r = await cli(home, ['restore-file', 'd', 'S0', '/dev/vda/dir', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ via: 'offline', type: 'dir', files: 1, overwrites: [] });
    expect(lib.ctx.journal.unfinished().filter((o) => o.kind === 'restore-file')).toEqual([]);
    expect(await findOrphans(lib.ctx)).toEqual([]);
    await lib.vms.start('d');
    expect(await sh(lib, 'd', 'cat /data/dir/x; cat /data/b')).toBe('x\ntwo\n');
  }, APPLIANCE);

  it('CLI: a snapshot of a blank disk has no readable filesystem: a clear error, nothing written (a UEFI VM: its NVRAM is no disk)', async () => {
    await lib.vms.create('blank', { disks: [{ sizeBytes: 16 * 1024 ** 2 }], firmware: 'uefi' });
    await lib.snapshots.create('blank', 'B1');
    expect(Object.keys(lib.ctx.catalog.findSnapshot(lib.vms.get('blank').id, 'B1')!.layers), 'the snapshot holds the NVRAM layer').toContain('nvram');
    const before = catalogDump(home);
    const r = await cli(home, ['files', 'blank', 'B1', '/']);
    // Only the disk was opened: the firmware variables are not offered as a filesystem to look for.
    expect(r.stderr).toMatch(/B1: no readable filesystem \(disk0 \/dev\/vda: no filesystem found[^;]*\)/);
    expect(r.stderr).not.toMatch(/nvram/);
    expect(r.code).toBe(3);
    expect(catalogDump(home)).toBe(before);
  }, APPLIANCE);
});
