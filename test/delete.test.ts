import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { vmDiskUsage } from '../src/vm/info.js';
import { findOrphans } from '../src/operations/recovery.js';
import type { Vmsnap } from '../src/vmsnap.js';
import { cleanupHome, cli, files, openLib, sh, tempHome, write } from './helpers.js';


/**
 * Every remaining snapshot still reverts to exactly its own files, the deep
 * verify (content fingerprints) passes, no file is orphaned, and the delete did
 * not grow disk usage.
 */
async function checkAll(lib: Vmsnap, vm: string, expected: Record<string, string[]>, usageBefore: number): Promise<void> {
  expect(vmDiskUsage(lib.ctx, lib.vms.get(vm).id)).toBeLessThanOrEqual(usageBefore);
  const report = await lib.verify(vm, { deep: true });
  expect(report.problems).toEqual([]);
  expect(report.ok).toBe(true);
  expect(report.fingerprintsVerified).toBe(Object.keys(expected).length);
  expect(await findOrphans(lib.ctx)).toEqual([]);
  expect(lib.snapshots.list(vm).map((s) => s.name).sort()).toEqual(Object.keys(expected).sort());
  for (const [snap, want] of Object.entries(expected)) {
    await lib.snapshots.revert(vm, snap, { force: true });
    expect(await files(lib, vm), `files of ${snap}`).toEqual(want);
  }
}

describe('deleting snapshots with online and offline consolidation', () => {
  let home: string;
  let lib: Vmsnap;
  beforeAll(async () => {
    home = tempHome();
    lib = openLib(home);
    await lib.vms.create('del', { image: 'demo', disks: [{ sizeBytes: 256 * 1024 ** 2 }] });
    await lib.vms.start('del');
  });
  afterAll(() => {
    lib.close();
    cleanupHome(home);
  });

  it('deletes a branch point, a leaf, the parent of the present state, the root, an intermediate one, online and offline', async () => {
    // S1 ─┬─ S2 ─┬─ S3
    //     │      └─ S4 ── S5
    //     └─ S6 (current)
    await write(lib, 'del', 'a');
    await sh(lib, 'del', 'dd if=/dev/urandom of=/data/big bs=1M count=4 2>/dev/null && sync');
    await lib.snapshots.create('del', 'S1');
    await write(lib, 'del', 'b');
    await lib.snapshots.create('del', 'S2');
    await write(lib, 'del', 'c');
    await lib.snapshots.create('del', 'S3');
    await lib.snapshots.revert('del', 'S2', { force: true });
    await write(lib, 'del', 'd');
    await lib.snapshots.create('del', 'S4');
    await write(lib, 'del', 'e');
    await lib.snapshots.create('del', 'S5');
    await lib.snapshots.revert('del', 'S1', { force: true });
    await write(lib, 'del', 'f');
    await lib.snapshots.create('del', 'S6');
    expect(await lib.fingerprint('del')).toBe(6);

    const expected: Record<string, string[]> = {
      S1: ['a', 'big'],
      S2: ['a', 'b', 'big'],
      S3: ['a', 'b', 'big', 'c'],
      S4: ['a', 'b', 'big', 'd'],
      S5: ['a', 'b', 'big', 'd', 'e'],
      S6: ['a', 'big', 'f'],
    };
    const del = async (name: string) => {
      const usage = vmDiskUsage(lib.ctx, lib.vms.get('del').id);
      const r = await lib.snapshots.delete('del', name);
      expect(r.deleted).toEqual([name]);
      expect(r.reclaimedBytes).toBeGreaterThanOrEqual(0);
      delete expected[name];
      return { r, usage };
    };

    // A branch point: its layer stays as an internal layer (two others depend on it).
    let { r, usage } = await del('S2');
    expect(r.merges).toEqual([]);
    expect(lib.snapshots.show('del', 'S3').parent).toBe('S1');
    await checkAll(lib, 'del', expected, usage);

    // A leaf: its layer is dropped, and the internal layer above it now has one child: merged.
    ({ r, usage } = await del('S3'));
    expect(r.merges.map((m) => m.kind)).toContain('drop');
    expect(r.merges.some((m) => m.kind === 'stream' || m.kind === 'commit')).toBe(true);
    await checkAll(lib, 'del', expected, usage);

    // The parent of the present state, while the VM runs: merged online with the active layer.
    await lib.snapshots.revert('del', 'S6', { force: true });
    await write(lib, 'del', 'g');
    ({ r, usage } = await del('S6'));
    expect(r.merges).toEqual([expect.objectContaining({ online: true })]);
    expect(await files(lib, 'del')).toEqual(['a', 'big', 'f', 'g']);
    expect(lib.vms.get('del').currentSnapshotId).toBe(lib.snapshots.show('del', 'S1').id);
    await checkAll(lib, 'del', expected, usage);

    // The root, online: its layer still has two dependents, so it stays internal.
    ({ r, usage } = await del('S1'));
    await checkAll(lib, 'del', expected, usage);

    // Offline: an intermediate snapshot, then the last leaf.
    await lib.vms.stop('del', { force: true });
    ({ r, usage } = await del('S4'));
    expect(r.merges.every((m) => !m.online)).toBe(true);
    await lib.vms.stop('del', { force: true }).catch(() => undefined);
    expect(vmDiskUsage(lib.ctx, lib.vms.get('del').id)).toBeLessThanOrEqual(usage);
    await checkAll(lib, 'del', expected, usage);

    await lib.vms.stop('del', { force: true });
    ({ r, usage } = await del('S5'));
    expect(lib.snapshots.list('del')).toEqual([]);
    const info = await lib.vms.info('del');
    expect(info.diskChains[0]!.chain).toHaveLength(1);
    expect(await findOrphans(lib.ctx)).toEqual([]);
    expect((await lib.verify('del', { deep: true })).ok).toBe(true);
    await lib.vms.start('del');
    expect(await files(lib, 'del')).toEqual(['a', 'b', 'big', 'd', 'e']);
    // One scenario of six snapshots, five deletes and a revert per check: about 60 s on an idle
    // machine, past the default 120 s when other QEMUs share the two cores.
  }, 360_000);

  it('deletes all snapshots of a branched tree while the VM runs: the guest keeps running and its data; one layer is left', async () => {
    await lib.snapshots.create('del', 'A');
    await write(lib, 'del', 'x1');
    await lib.snapshots.create('del', 'B');
    await lib.snapshots.revert('del', 'A', { force: true });
    await write(lib, 'del', 'x2');
    await lib.snapshots.create('del', 'C');
    await write(lib, 'del', 'x3');
    const pid = (await lib.vms.status('del')).pid;

    const r = await cli(home, ['snapshot', 'delete', 'del', '--all', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).deleted.sort()).toEqual(['A', 'B', 'C']);

    const status = await lib.vms.status('del');
    expect(status).toMatchObject({ state: 'running', pid });
    expect(await files(lib, 'del')).toEqual(['a', 'b', 'big', 'd', 'e', 'x2', 'x3']);
    expect((await lib.vms.info('del')).diskChains[0]!.chain).toHaveLength(1);
    expect(await findOrphans(lib.ctx)).toEqual([]);
    expect((await lib.verify('del')).ok).toBe(true);
  });

  it('refuses bad input: unknown snapshot, deleting during another operation', async () => {
    await lib.snapshots.create('del', 'keep');
    const r = await cli(home, ['snapshot', 'delete', 'del', 'nope']);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/has no snapshot 'nope'/);
    const both = await cli(home, ['snapshot', 'delete', 'del']);
    expect(both.code).toBe(2);
    const { acquireVmLock } = await import('../src/catalog/lock.js');
    const vm = lib.vms.get('del');
    const lock = await acquireVmLock(lib.ctx.catalog, vm.id, vm.name, 'snapshot create other');
    try {
      const busy = await cli(home, ['snapshot', 'delete', 'del', 'keep'], { VMSNAP_LOCK_WAIT_MS: '200' });
      expect(busy.code).toBe(6);
      expect(busy.stderr).toMatch(/busy: snapshot create other/);
    } finally {
      lock.release();
    }
    expect(lib.snapshots.list('del').map((s) => s.name)).toEqual(['keep']);
  });
});
