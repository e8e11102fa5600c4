import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VmsnapEvent } from '../src/context.js';
import { EXIT_CODES } from '../src/errors.js';
import { runtimeFiles } from '../src/qemu/launcher.js';
import { QmpClient } from '../src/qemu/qmp.js';
import type { Vmsnap } from '../src/vmsnap.js';
import { catalogDump, cleanupHome, cli, counter, COUNTER, dataFiles, expectRefused, files, openLib, sh, tempHome, waitFor, write } from './helpers.js';
import { rejection } from './rejection.js';



/** Where an entry's data starts in a tar file (headers are 512 bytes; our names are short). */
function entryOffset(file: string, name: string): { offset: number; size: number } {
  const buf = readFileSync(file);
  for (let pos = 0; pos + 512 <= buf.length; ) {
    const h = buf.subarray(pos, pos + 512);
    if (h.every((b) => b === 0)) break;
    const n = h.subarray(0, 100).toString('utf8').replace(/\0.*$/s, '');
    const size = parseInt(h.subarray(124, 136).toString('latin1').replace(/\0.*$/s, ''), 8);
    if (n === name) return { offset: pos + 512, size };
    pos += 512 + Math.ceil(size / 512) * 512;
  }
  throw new Error(`no entry ${name} in ${file}`);
}

function flipByte(file: string, at: number): void {
  const buf = readFileSync(file);
  buf[at] = buf[at]! ^ 0xff;
  writeFileSync(file, buf);
}

describe('export and import as a real backup', () => {
  let home: string;
  let home2: string;
  let out: string;
  let lib: Vmsnap;
  let lib2: Vmsnap;
  let diskArchive: string;

  beforeAll(async () => {
    home = tempHome();
    home2 = tempHome();
    out = join(home, 'out');
    mkdirSync(out);
    lib = openLib(home);
    lib2 = openLib(home2);
    await lib.vms.create('src', { image: 'demo' });
    await lib.vms.start('src');
  });
  afterAll(() => {
    lib.close();
    lib2.close();
    cleanupHome(home);
    cleanupHome(home2);
  });

  it('exports a memory snapshot of a running VM without pausing it; the import resumes with its files and processes', async () => {
    await write(lib, 'src', 'A');
    await sh(lib, 'src', COUNTER);
    await waitFor(() => counter(lib, 'src'), { what: 'the guest counter to start' });
    const beforeSnap = await counter(lib, 'src');
    await lib.snapshots.create('src', 'mem', { description: 'with memory' });
    await lib.fingerprint('src');
    await write(lib, 'src', 'B');

    const vm = lib.vms.get('src');
    const watcher = await QmpClient.connect(runtimeFiles(lib.ctx.paths.run, vm.id).eventsSocket, { retryUntilMs: 2000 });
    const stops: string[] = [];
    watcher.onEvent((e) => {
      if (e.event === 'STOP') stops.push(e.event);
    });
    const events: VmsnapEvent[] = [];
    const off = lib.onEvent((e) => events.push(e));
    const calls: [number, number, string][] = [];
    const file = join(out, 'mem.vmsnap');
    let r;
    try {
      r = await lib.transfer.export('src', 'mem', file, { onProgress: (d, t, w) => calls.push([d, t, w]) });
      // The guest ran throughout: no STOP event, and its counter kept going. A round trip on the
      // watcher's monitor first: QEMU sends a monitor its events in order, so any STOP is in by its reply.
      await watcher.execute('query-status');
      expect(stops).toEqual([]);
    } finally {
      off();
      await watcher.close();
    }
    expect((await lib.vms.status('src')).state).toBe('running');
    expect(await counter(lib, 'src')).toBeGreaterThan(beforeSnap);
    expect(r).toMatchObject({ file, vm: 'src', snapshot: 'mem', hasMemory: true, disks: [{ slot: 'disk0' }] });
    expect(r.bytes).toBe(statSync(file).size);
    // The RAM image went out as one stream again (its sha256, recorded in the background, checked on the way).
    expect(lib.snapshots.show('src', 'mem').meta.ramSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(r.state?.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(r.manifest.state).toEqual({ file: 'memory.state', ...r.state });
    expect(existsSync(`${file}.partial`)).toBe(false);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(readdirSync(join(home, 'tmp'))).toEqual([]);
    // Progress: both phases reach their totals, as callbacks and as library events.
    for (const phase of ['flattening disks', 'writing and checksumming']) {
      const last = calls.filter((c) => c[2] === phase).pop();
      expect(last, phase).toBeDefined();
      expect(last![0]).toBe(last![1]);
    }
    expect(events.filter((e) => e.type === 'progress').length).toBe(calls.length);
    expect(events.filter((e) => e.type === 'operation').map((e) => (e.type === 'operation' ? e.status : ''))).toEqual(['started', 'done']);

    // Import in another home, under a new name, through the CLI.
    const imp = await cli(home2, ['import', file, 'copy', '--json']);
    expect(imp.code, imp.stderr).toBe(0);
    const result = JSON.parse(imp.stdout);
    expect(result).toMatchObject({ vm: 'copy', snapshot: 'mem', hasMemory: true, vmState: 'running', source: { vm: 'src', snapshot: 'mem' }, warnings: [] });
    expect(result.mac).not.toBe(vm.config.nics[0]!.mac);
    expect(readdirSync(join(home2, 'tmp'))).toEqual([]);
    // Imported as a RAM image, a device state and a manifest, like a snapshot taken here.
    expect(lib2.ctx.catalog.findSnapshot(lib2.vms.get('copy').id, 'mem')!.stateFile).toMatch(/\.json$/);
    const snap = lib2.snapshots.show('copy', 'mem');
    expect(snap).toMatchObject({ description: 'with memory', hasMemory: true, current: true, parent: null, vmState: 'running' });
    expect(snap.config.nics[0]!.mac).toBe(result.mac);
    expect(lib2.snapshots.list('copy')).toHaveLength(1);

    // Revert resumes the guest from the exported memory: the snapshot's files, the counter carrying on.
    const rev = await cli(home2, ['snapshot', 'revert', 'copy', 'mem', '--force']);
    expect(rev.code, rev.stderr).toBe(0);
    expect((await lib2.vms.status('copy')).state).toBe('running');
    expect(await files(lib2, 'copy')).toEqual(['A']);
    const resumed = await counter(lib2, 'copy');
    expect(resumed).toBeGreaterThanOrEqual(beforeSnap);
    expect(resumed).toBeLessThan(beforeSnap + 50);
    await waitFor(async () => (await counter(lib2, 'copy')) > resumed, { what: 'the imported guest counter to carry on' });
    expect(await counter(lib2, 'copy')).toBeGreaterThan(resumed);
    // The disk content is the snapshot's, proven by the fingerprint taken at the source.
    const v = await lib2.verify('copy', { deep: true });
    expect(v.problems).toEqual([]);
    expect(v.fingerprintsVerified).toBe(1);
    await lib2.vms.stop('copy', { force: true });
  }, 300_000); // a memory snapshot, an export and an import that resumes a TCG guest: minutes on a loaded host

  it('exports a disk-only snapshot through the CLI; the import boots with its files', async () => {
    await write(lib, 'src', 'C');
    await lib.snapshots.create('src', 'disk', { memory: false });
    await write(lib, 'src', 'D');
    diskArchive = join(out, 'disk.vmsnap');
    const t0 = performance.now();
    const ex = await cli(home, ['export', 'src', 'disk', diskArchive]);
    expect(ex.code, ex.stderr).toBe(0);
    expect(ex.stdout).toMatch(/exported snapshot 'disk' of VM 'src' to .*disk\.vmsnap: .* \(1 disk, disk only\)/);
    process.stderr.write(`[transfer] disk-only export via the CLI: ${Math.round(performance.now() - t0)} ms, ${statSync(diskArchive).size} bytes\n`);

    const chk = await cli(home2, ['import', diskArchive, '--check']);
    expect(chk.code, chk.stderr).toBe(0);
    expect(chk.stdout).toMatch(/ok — snapshot 'disk' of VM 'src'/);

    const r = await lib2.transfer.import(diskArchive, { name: 'booted' });
    expect(r).toMatchObject({ vm: 'booted', snapshot: 'disk', hasMemory: false });
    const rev = await cli(home2, ['snapshot', 'revert', 'booted', 'disk', '--start']);
    expect(rev.code, rev.stderr).toBe(0);
    expect(await files(lib2, 'booted')).toEqual(['A', 'B', 'C']);
    await lib2.vms.stop('booted', { force: true });
    // The default name is the exported VM's.
    const again = await lib2.transfer.import(diskArchive);
    expect(again.vm).toBe('src');
    expect((await lib2.verify('src')).ok).toBe(true);
  });

  it('refuses a corrupted or truncated archive and creates nothing', async () => {
    const before = catalogDump(home2);
    const bad = join(out, 'bad.vmsnap');
    const size = statSync(diskArchive).size;

    copyFileSync(diskArchive, bad);
    flipByte(bad, Math.floor(size / 2));
    await rejection(lib2.transfer.import(bad, { name: 'x1' }), 'INVALID_ARGUMENT', /is damaged: disks\/disk0\.qcow2 does not match its checksum; nothing was imported/);
    await rejection(lib2.transfer.check(bad), 'INVALID_ARGUMENT', /does not match its checksum/);

    copyFileSync(diskArchive, bad);
    const m = entryOffset(bad, 'manifest.json');
    flipByte(bad, m.offset + Math.floor(m.size / 2));
    await rejection(lib2.transfer.import(bad, { name: 'x2' }), 'INVALID_ARGUMENT', /manifest\.json does not match manifest\.sha256/);

    copyFileSync(diskArchive, bad);
    truncateSync(bad, Math.floor(size / 2));
    const cut = await expectRefused(home2, ['import', bad, 'x3'], EXIT_CODES.INVALID_ARGUMENT, /is damaged: the archive is truncated: disks\/disk0\.qcow2/);
    expect(cut.stderr).toMatch(/nothing was imported/);
    copyFileSync(diskArchive, bad);
    truncateSync(bad, size - 1024);
    await rejection(lib2.transfer.import(bad, { name: 'x4' }), 'INVALID_ARGUMENT', /truncated.*end-of-archive/);
    copyFileSync(diskArchive, bad);
    truncateSync(bad, entryOffset(bad, 'manifest.json').offset);
    await rejection(lib2.transfer.import(bad, { name: 'x5' }), 'INVALID_ARGUMENT', /truncated/);

    expect(catalogDump(home2)).toBe(before);
    expect(readdirSync(join(home2, 'tmp'))).toEqual([]);
  });

  it('refuses bad input with clear errors and writes nothing', async () => {
    const dump1 = catalogDump(home);
    const dump2 = catalogDump(home2);
    const target = join(out, 'new.vmsnap');
    await rejection(lib.transfer.export('ghost', 'disk', target), 'NOT_FOUND', /no VM named 'ghost'/);
    await rejection(lib.transfer.export('src', 'nope', target), 'NOT_FOUND', /VM 'src' has no snapshot 'nope'/);
    await rejection(lib.transfer.export('src', 'disk', join(out, 'no', 'such', 'dir.vmsnap')), 'NOT_FOUND', /no such directory/);
    await rejection(lib.transfer.export('src', 'disk', out), 'INVALID_ARGUMENT', /is a directory/);
    const stopped = new AbortController();
    stopped.abort();
    await rejection(lib.transfer.export('src', 'disk', target, { signal: stopped.signal }), 'INTERRUPTED', /stopped on request/);
    await rejection(lib2.transfer.import(diskArchive, { name: 'x', signal: stopped.signal }), 'INTERRUPTED', /stopped on request/);
    await expectRefused(home, ['export', 'src', 'disk', diskArchive], EXIT_CODES.ALREADY_EXISTS, /already exists\n  hint: pass --force to replace it/);
    expect(readdirSync(out).sort()).toEqual(['bad.vmsnap', 'disk.vmsnap', 'mem.vmsnap']);

    await rejection(lib2.transfer.import(diskArchive, { name: 'booted' }), 'ALREADY_EXISTS', /a VM named 'booted' already exists/);
    // Without a name, the archive's VM name is taken: imported in an earlier test.
    await rejection(lib2.transfer.import(diskArchive), 'ALREADY_EXISTS', /a VM named 'src' already exists/);
    await rejection(lib2.transfer.import(diskArchive, { name: 'bad/name' }), 'INVALID_ARGUMENT', /invalid VM name/);
    await rejection(lib2.transfer.import(join(out, 'missing.vmsnap'), { name: 'x' }), 'NOT_FOUND', /no such file/);
    await rejection(lib2.transfer.import(out, { name: 'x' }), 'INVALID_ARGUMENT', /is not a regular file/);
    await expectRefused(home2, ['import', '/etc/hostname', 'x'], EXIT_CODES.INVALID_ARGUMENT, /is not a vmsnap archive \(it is not a tar file\)/);
    expect(catalogDump(home)).toBe(dump1);
    expect(catalogDump(home2)).toBe(dump2);
    expect(readdirSync(join(home2, 'tmp'))).toEqual([]);
  });

  it('a delete of the snapshot during its export does not harm the archive', async () => {
    await write(lib, 'src', 'E');
    await lib.snapshots.create('src', 'gone');
    const stateFile = lib.ctx.catalog.findSnapshot(lib.vms.get('src').id, 'gone')!.stateFile!;
    const file = join(out, 'gone.vmsnap');
    let deleting: Promise<unknown> | undefined;
    let goneWhileCopying = false;
    // Once the disks are flattened the VM's lock is released: the delete goes ahead while the export writes the memory state.
    const r = await lib.transfer.export('src', 'gone', file, {
      onProgress: (done, total, what) => {
        if (what !== 'writing and checksumming') return;
        deleting ??= lib.snapshots.delete('src', 'gone');
        if (done < total && !existsSync(stateFile)) goneWhileCopying = true;
      },
    });
    await deleting;
    // The delete unlinked the state file while the export was still copying it from its open handle.
    expect(goneWhileCopying).toBe(true);
    expect(lib.snapshots.list('src').map((s) => s.name)).not.toContain('gone');
    const c = await lib2.transfer.check(file);
    expect(c).toMatchObject({ hasMemory: true, source: { snapshot: 'gone' } });
    expect(c.manifest.state?.sha256).toBe(r.state?.sha256);
    expect((await lib.verify('src')).ok).toBe(true);
  });

  it('a killed export leaves no archive under its name; a killed import is undone by recover', async () => {
    const file = join(out, 'killed.vmsnap');
    const k = await cli(home, ['export', 'src', 'disk', file], { VMSNAP_FAULT: 'export:1' });
    expect(k.code).not.toBe(0);
    expect(existsSync(file)).toBe(false);
    expect(existsSync(`${file}.partial`)).toBe(true);
    const ok = await cli(home, ['export', 'src', 'disk', file]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(existsSync(`${file}.partial`)).toBe(false);

    const dump = catalogDump(home2);
    const files2 = dataFiles(home2);
    const ki = await cli(home2, ['import', file, 'half'], { VMSNAP_FAULT: 'import:1' });
    expect(ki.code).not.toBe(0);
    expect(dataFiles(home2).length).toBeGreaterThan(files2.length);
    const rec = await cli(home2, ['recover', '--json']);
    expect(rec.code, rec.stderr).toBe(0);
    expect(JSON.parse(rec.stdout).operations).toEqual([expect.objectContaining({ kind: 'import', outcome: 'rolled_back' })]);
    expect(catalogDump(home2)).toBe(dump);
    expect(dataFiles(home2)).toEqual(files2);
  });
});
