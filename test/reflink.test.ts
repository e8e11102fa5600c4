import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RAM_TRAILER_BYTES, sha256File } from '../src/memory/ram-image.js';
import { splitToFiles } from '../src/memory/split-files.js';
import { PAGE, StreamBuilder, pageOf, q35Blocks, type PageRecord } from '../src/memory/stream-builder.js';
import { memoryStateFiles } from '../src/paths.js';
import { fileExtents, supportsReflinks, uniqueBytes } from '../src/util/extents.js';
import type { Vmsnap } from '../src/vmsnap.js';
import { cleanupHome, cli, COUNTER, counter, openLib, sh, waitFor } from './helpers.js';

/*
 * Memory states that cost what changed: on a file system with reflinks, a snapshot's RAM
 * image starts as a reflink copy of its parent's and only the pages that differ are
 * written. XFS made here on a loop device (vmsnap's own file system: no guest's).
 */

const RAM = 16 * 1024 * 1024;

function stream(pages: Map<number, Buffer | 'zero'>): Buffer {
  const recs: PageRecord[] = [];
  for (let p = 0; p < RAM / PAGE; p++) {
    const v = pages.get(p) ?? 'zero';
    recs.push(v === 'zero' ? { block: 'pc.ram', offset: p * PAGE, zero: true } : { block: 'pc.ram', offset: p * PAGE, data: v });
  }
  return new StreamBuilder({ blocks: q35Blocks(RAM) }).header().ramStart().ramSection('part', recs).devices([{ idstr: 'timer', payload: Buffer.alloc(64, 1) }]).build().stream;
}

describe('memory states on XFS with reflinks', () => {
  let img: string;
  let mnt: string;
  let home: string;
  let lib: Vmsnap | undefined;
  beforeAll(() => {
    const dir = mkdtempSync(join(tmpdir(), 'vs-xfs-'));
    img = join(dir, 'xfs.img');
    mnt = join(dir, 'mnt');
    mkdirSync(mnt);
    execFileSync('truncate', ['-s', '2G', img]);
    try {
      execFileSync('mkfs.xfs', ['-q', '-f', '-m', 'reflink=1', img]);
      execFileSync('mount', ['-o', 'loop', img, mnt]);
    } catch (e) {
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`this test makes an XFS file system on a loop device: run it as root with xfsprogs installed (apt-get install xfsprogs): ${String(e)}`);
    }
    home = join(mnt, 'home');
  });
  afterAll(async () => {
    lib?.close();
    cleanupHome(home);
    // The QEMUs cleanupHome killed keep the mount busy until they have exited.
    await waitFor(
      () => {
        try {
          execFileSync('umount', [mnt], { stdio: 'pipe' });
          return true;
        } catch {
          return false;
        }
      },
      { what: `${mnt} to unmount once its QEMUs exited`, timeoutMs: 30_000 },
    );
    rmSync(join(img, '..'), { recursive: true, force: true });
  });

  it('a RAM image started as a reflink copy of its parent gets only the pages that differ; the parent is untouched', async () => {
    expect(supportsReflinks(mnt)).toBe(true);
    const dir = join(mnt, 'unit');
    mkdirSync(dir);
    const a = new Map<number, Buffer | 'zero'>();
    for (let p = 0; p < 2048; p++) a.set(p, pageOf(p)); // 8 MiB of data
    await splitToFiles(Readable.from([stream(a)]), join(dir, 'a.ram'), join(dir, 'a.dev'), { snapshotId: 'a' });
    const aSha = await sha256File(join(dir, 'a.ram'));

    // b: 10 pages changed, 5 zeroed, 1 new, the rest as in a.
    const b = new Map(a);
    for (let p = 100; p < 110; p++) b.set(p, pageOf(100_000 + p));
    for (let p = 500; p < 505; p++) b.set(p, 'zero');
    b.set(3000, pageOf(3000));
    const r = await splitToFiles(Readable.from([stream(b)]), join(dir, 'b.ram'), join(dir, 'b.dev'), { snapshotId: 'b', baseImage: join(dir, 'a.ram') });
    expect(r.ramImage.baseImage).toBe(join(dir, 'a.ram'));
    expect(r.ramImage.writtenBytes).toBe(16 * PAGE + RAM_TRAILER_BYTES);
    const expected = Buffer.alloc(RAM);
    for (const [p, v] of b) if (v !== 'zero') v.copy(expected, p * PAGE);
    expect(readFileSync(join(dir, 'b.ram')).subarray(0, RAM).equals(expected)).toBe(true);
    expect(await sha256File(join(dir, 'a.ram'))).toBe(aSha);
    execFileSync('sync');
    // b owns only what it wrote (data pages and the trailer, a block each); the rest is a's.
    const ext = (await fileExtents(join(dir, 'b.ram')))!;
    expect(uniqueBytes(ext)).toBeLessThanOrEqual(16 * PAGE + RAM_TRAILER_BYTES);
    expect(ext.filter((e) => e.shared).reduce((x, e) => x + e.length, 0)).toBeGreaterThan(7 * 1024 * 1024);

    // Where reflinks are not supported (tmpfs), the image is made whole, as without a base.
    const plain = mkdtempSync('/dev/shm/vs-noreflink-');
    try {
      const r2 = await splitToFiles(Readable.from([stream(b)]), join(plain, 'b.ram'), join(plain, 'b.dev'), { snapshotId: 'b', baseImage: join(dir, 'a.ram') });
      expect(r2.ramImage.baseImage).toBeUndefined();
      expect(readFileSync(join(plain, 'b.ram')).subarray(0, RAM).equals(expected)).toBe(true);
    } finally {
      rmSync(plain, { recursive: true, force: true });
    }
  });

  it('snapshots of a running VM share the pages they did not change with their parent; df counts them once; deleting the parent keeps the child whole', async () => {
    lib = openLib(home);
    await lib.vms.create('x', { image: 'demo', memoryMiB: 256, disks: [{ sizeBytes: 64 * 1024 ** 2 }] });
    await lib.vms.start('x');
    await sh(lib, 'x', `head -c 33554432 /dev/urandom > /tmp/blob && ${COUNTER}`);
    const blob = (await sh(lib, 'x', 'md5sum /tmp/blob')).split(' ')[0];
    await lib.snapshots.create('x', 'S1');
    // Lazily reverted, changed a little, snapshotted again: S2's image starts as S1's.
    await lib.snapshots.revert('x', 'S1', { force: true });
    await sh(lib, 'x', 'head -c 1048576 /dev/urandom > /tmp/small');
    const small = (await sh(lib, 'x', 'md5sum /tmp/small')).split(' ')[0];
    await lib.snapshots.create('x', 'S2');
    const vm = lib.vms.get('x');
    const s2 = lib.ctx.catalog.findSnapshot(vm.id, 'S2')!;
    expect(s2.meta.ramNewBytes, JSON.stringify(s2.meta)).toBeDefined();
    // Written: what the guest changed since S1 (the 1 MiB file, page cache, kernel data): a fraction of its RAM in use.
    expect(s2.meta.ramNewBytes!).toBeLessThan(s2.meta.ramDataBytes! / 3);

    execFileSync('sync');
    const df = await lib.health.df('x');
    expect(df.dataDir.reflinks).toBe(true);
    const u2 = df.vms[0]!.snapshots.find((s) => s.name === 'S2')!;
    expect(u2.stateSharedBytes).toBeGreaterThan(s2.meta.ramDataBytes! / 2);
    const states = lib.ctx.catalog.stateFiles();
    const allocated = states.reduce((a, f) => a + statSync(f).blocks * 512, 0);
    const layers = lib.ctx.catalog.listLayers(vm.id).reduce((a, l) => a + statSync(l.path).blocks * 512, 0);
    // The shared pages are counted once in what vmsnap uses.
    expect(df.dataDir.usedBytes).toBeLessThan(layers + allocated - u2.stateSharedBytes! / 2);
    const out = await cli(home, ['df', 'x']);
    expect(out.stdout).toMatch(/share the pages a snapshot did not change/);
    expect(out.stdout).toMatch(/S2 .* shared\)/);

    // Deleting the parent leaves the child's image whole: its shared extents are simply its own now.
    await lib.snapshots.delete('x', 'S1');
    await lib.snapshots.revert('x', 'S2', { force: true });
    expect((await sh(lib, 'x', 'md5sum /tmp/blob /tmp/small')).split('\n').map((l) => l.split(' ')[0]).filter(Boolean)).toEqual([blob, small]);
    const c = await counter(lib, 'x');
    await waitFor(async () => (await counter(lib!, 'x')) > c, { what: 'the guest counter to move on' });
    const v = await lib.verify('x', { deep: true });
    expect(v.problems).toEqual([]);
    expect(memoryStateFiles(lib.ctx.catalog.findSnapshot(vm.id, 'S2')!.stateFile).every((f) => statSync(f).size > 0)).toBe(true);
  }, 300_000); // a TCG guest booted, snapshotted three times and reverted: minutes on a loaded host
});
