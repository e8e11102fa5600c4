import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acquireVmLock } from '../src/catalog/lock.js';
import { EXIT_CODES } from '../src/errors.js';
import type { Vmsnap } from '../src/vmsnap.js';
import { catalogDump, cleanupHome, cli, counter, COUNTER, files, openLib, sh, tempHome, waitFor } from './helpers.js';
import { rejection } from './rejection.js';


describe('live snapshots on the demo guest', () => {
  let home: string;
  let lib: Vmsnap;
  beforeAll(async () => {
    home = tempHome();
    lib = openLib(home);
    await lib.vms.create('vm', { image: 'demo' });
    await lib.vms.start('vm');
  });
  afterAll(() => {
    lib.close();
    cleanupHome(home);
  });

  it('reverts disks and memory: files and a running process come back as they were', async () => {
    await sh(lib, 'vm', `echo A > /data/A && sync && ${COUNTER}`);
    await waitFor(() => counter(lib, 'vm'), { what: 'the guest counter to start' });
    const beforeS1 = await counter(lib, 'vm');
    const s1 = await lib.snapshots.create('vm', 'S1', { description: 'first' });
    expect(s1).toMatchObject({ name: 'S1', hasMemory: true, parent: null, current: true, vmState: 'running' });
    expect(s1.pauseMs).toBeGreaterThan(0);
    expect(s1.stateBytes).toBeGreaterThan(0);
    expect(s1.disks).toEqual([expect.objectContaining({ slot: 'disk0', bytes: expect.any(Number) })]);

    await sh(lib, 'vm', 'echo B > /data/B && sync');
    const s2 = await lib.snapshots.create('vm', 'S2');
    expect(s2.parent).toBe('S1');
    await sh(lib, 'vm', 'echo C > /data/C && sync');
    await waitFor(async () => (await counter(lib, 'vm')) >= beforeS1 + 10, { what: 'the counter to move on 10 ticks since S1' });
    const beforeRevert = await counter(lib, 'vm');

    // Without --force the present state is not thrown away, and nothing changes.
    const dump = catalogDump(home);
    await rejection(lib.snapshots.revert('vm', 'S1'), 'WOULD_LOSE_DATA', /would discard: the running state/);
    expect(catalogDump(home)).toBe(dump);

    const r1 = await lib.snapshots.revert('vm', 'S1', { force: true });
    expect(r1.state).toBe('running');
    expect(await files(lib, 'vm')).toEqual(['A']);
    const afterRevert = await counter(lib, 'vm');
    // The counter carries on from its S1 value: not from 0, not from where it was before the revert.
    expect(afterRevert).toBeGreaterThanOrEqual(beforeS1);
    expect(afterRevert).toBeLessThan(beforeRevert);
    await waitFor(async () => (await counter(lib, 'vm')) > afterRevert, { what: 'the counter to carry on after the revert' });
    expect(await counter(lib, 'vm')).toBeGreaterThan(afterRevert);

    await lib.snapshots.revert('vm', 'S2', { force: true });
    expect(await files(lib, 'vm')).toEqual(['A', 'B']);
  });

  it('branches: a snapshot after a revert starts a new branch, each with its own files', async () => {
    await lib.snapshots.revert('vm', 'S1', { force: true });
    await sh(lib, 'vm', 'echo D > /data/D && sync');
    const s3 = await lib.snapshots.create('vm', 'S3');
    expect(s3.parent).toBe('S1');
    expect(lib.snapshots.show('vm', 'S1').children).toEqual(['S2', 'S3']);
    const tree = lib.snapshots.tree('vm');
    expect(tree).toMatch(/└─ S1[^\n]*\n   ├─ S2[^\n]*\n   └─ S3[^\n]*\n      └─ ● you are here/);

    await lib.snapshots.revert('vm', 'S2', { force: true });
    expect(await files(lib, 'vm')).toEqual(['A', 'B']);
    await lib.snapshots.revert('vm', 'S3', { force: true });
    expect(await files(lib, 'vm')).toEqual(['A', 'D']);
    expect(lib.snapshots.list('vm').find((s) => s.current)?.name).toBe('S3');
  });

  it('shows snapshots through the CLI: table, tree, show and JSON', async () => {
    const list = await cli(home, ['snapshot', 'list', 'vm']);
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout).toMatch(/NAME\s+PARENT\s+TAKEN\s+MEMORY\s+PAUSE\s+DELTA\s+STATE FILE/);
    expect(list.stdout).toMatch(/\*\s+S3\s+S1/);
    const json = JSON.parse((await cli(home, ['snapshot', 'list', 'vm', '--json'])).stdout);
    expect(json[0]).toMatchObject({ id: expect.any(String), name: 'S1', parent: null, createdAt: expect.any(String), hasMemory: true, pauseMs: expect.any(Number), current: false });
    expect(json[0].disks[0]).toMatchObject({ slot: 'disk0', layerId: expect.any(String), bytes: expect.any(Number) });
    const tree = await cli(home, ['snapshot', 'tree', 'vm']);
    expect(tree.stdout).toContain('you are here');
    const show = await cli(home, ['snapshot', 'show', 'vm', 'S1']);
    expect(show.stdout).toMatch(/description first/);
  });

  it('a disk-only snapshot of a running VM reverts to a VM that is off; --start boots it with that disk', async () => {
    await sh(lib, 'vm', 'echo E > /data/E && sync');
    const d = await lib.snapshots.create('vm', 'diskonly', { memory: false });
    expect(d.hasMemory).toBe(false);
    await sh(lib, 'vm', 'echo F > /data/F && sync');
    const r = await lib.snapshots.revert('vm', 'diskonly', { force: true });
    expect(r.state).toBe('stopped');
    expect((await lib.vms.status('vm')).state).toBe('stopped');
    const r2 = await lib.snapshots.revert('vm', 'diskonly', { start: true });
    expect(r2.state).toBe('running');
    expect(await files(lib, 'vm')).toEqual(['A', 'D', 'E']);
  });

  it('reverts the hardware config with the snapshot', async () => {
    await lib.vms.stop('vm', { force: true });
    const off = await lib.snapshots.create('vm', 'off-256');
    expect(off).toMatchObject({ hasMemory: false, vmState: 'off', pauseMs: null });
    await lib.vms.set('vm', { memoryMiB: 384 });
    expect((await lib.vms.info('vm')).config.memoryMiB).toBe(384);
    await rejection(lib.snapshots.revert('vm', 'off-256'), 'WOULD_LOSE_DATA', /hardware config changes/);
    await lib.snapshots.revert('vm', 'off-256', { force: true });
    expect((await lib.vms.info('vm')).config.memoryMiB).toBe(256);
    // A stopped VM with no changes since its snapshot reverts without --force.
    await lib.snapshots.revert('vm', 'off-256');
  });

  it('refuses bad input with clear errors and changes nothing', async () => {
    const dump = catalogDump(home);
    await rejection(lib.snapshots.create('ghost', 'x'), 'NOT_FOUND', /no VM named 'ghost'/);
    await rejection(lib.snapshots.revert('vm', 'nope'), 'NOT_FOUND', /has no snapshot 'nope'/);
    await rejection(lib.snapshots.create('vm', 'S1'), 'ALREADY_EXISTS', /already has a snapshot named 'S1'/);
    await rejection(lib.snapshots.create('vm', 'bad/name'), 'INVALID_ARGUMENT', /invalid snapshot name/);
    const vm = lib.vms.get('vm');
    const lock = await acquireVmLock(lib.ctx.catalog, vm.id, vm.name, 'another operation');
    try {
      const r = await cli(home, ['snapshot', 'create', 'vm', 'busy'], { VMSNAP_LOCK_WAIT_MS: '200' });
      expect(r.code).toBe(EXIT_CODES.BUSY);
      expect(r.stderr).toMatch(/busy: another operation/);
    } finally {
      lock.release();
    }
    const nf = await cli(home, ['snapshot', 'revert', 'vm', 'nope']);
    expect(nf.code).toBe(EXIT_CODES.NOT_FOUND);
    expect(catalogDump(home)).toBe(dump);
  });
});

describe('snapshots of a VM with two disks', () => {
  let home: string;
  let lib: Vmsnap;
  beforeAll(async () => {
    home = tempHome();
    lib = openLib(home);
    await lib.vms.create('two', { image: 'demo', disks: [{ sizeBytes: 256 * 1024 ** 2 }, { sizeBytes: 256 * 1024 ** 2 }] });
    await lib.vms.start('two');
  });
  afterAll(() => {
    lib.close();
    cleanupHome(home);
  });

  it('freezes both disks at one instant: a write to each between two snapshots shows up in both or neither', async () => {
    await sh(lib, 'two', 'echo 0 > /data/seq && echo 0 > /mnt/vdb/seq && sync');
    await lib.snapshots.create('two', 'before', { memory: false });
    await sh(lib, 'two', 'echo 1 > /data/seq && echo 1 > /mnt/vdb/seq && sync');
    await lib.snapshots.create('two', 'after', { memory: false });
    // A writer that keeps both disks in step while a snapshot is taken.
    await sh(lib, 'two', "setsid /bin/sh -c 'i=2; while :; do echo $i > /data/seq; echo $i > /mnt/vdb/seq; sync; i=$((i+1)); done' </dev/null >/dev/null 2>&1 &");
    await waitFor(async () => Number(await sh(lib, 'two', 'cat /data/seq')) > 2, { what: 'the writer to keep both disks in step' });
    await lib.snapshots.create('two', 'during', { memory: false });

    const both = async () => [Number(await sh(lib, 'two', 'cat /data/seq')), Number(await sh(lib, 'two', 'cat /mnt/vdb/seq'))];
    await lib.snapshots.revert('two', 'before', { force: true, start: true });
    expect(await both()).toEqual([0, 0]);
    await lib.snapshots.revert('two', 'after', { force: true, start: true });
    expect(await both()).toEqual([1, 1]);
    await lib.snapshots.revert('two', 'during', { force: true, start: true });
    const [a = -1, b = -1] = await both();
    // disk0 is written first: at any one instant it is equal to disk1 or one ahead.
    expect(a - b === 0 || a - b === 1).toBe(true);
  });
});
