import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runtimeFiles } from '../src/qemu/launcher.js';
import { QmpClient } from '../src/qemu/qmp.js';
import { findOrphans } from '../src/operations/recovery.js';
import { isProcessAlive } from '../src/util/process.js';
import type { Vmsnap } from '../src/vmsnap.js';
import { COMMAND, cleanupHome, cli, files, mountTmpfs, openLib, sh, skipBecause, tempHome, TMPFS_NEEDS_ROOT, waitFor } from './helpers.js';


/** After recovery: nothing unfinished, no orphan, every fingerprint holds, and each snapshot reverts to its own files. */
async function expectSound(home: string, lib: Vmsnap, vm: string, expected: Record<string, string[]>): Promise<void> {
  const rec = await cli(home, ['recover', '--json']);
  expect(rec.code, rec.stderr).toBe(0);
  const verify = await cli(home, ['verify', vm, '--deep', '--json']);
  expect(JSON.parse(verify.stdout).problems, verify.stdout).toEqual([]);
  expect(verify.code).toBe(0);
  expect(await findOrphans(lib.ctx)).toEqual([]);
  expect(lib.ctx.journal.unfinished()).toEqual([]);
  expect(lib.snapshots.list(vm).map((s) => s.name).sort()).toEqual(Object.keys(expected).sort());
  for (const [snap, want] of Object.entries(expected)) {
    await lib.snapshots.revert(vm, snap, { force: true });
    expect(await files(lib, vm), `files of ${snap}`).toEqual(want);
  }
}

// kill -9 at every fault point of every operation: test/operations.contract.test.ts.
describe('helpers and QEMU dying mid-merge, then recover', () => {
  let home: string;
  let lib: Vmsnap;
  const expected: Record<string, string[]> = { S0: ['a'], S1: ['a', 'b'] };
  beforeAll(async () => {
    home = tempHome();
    lib = openLib(home);
    await lib.vms.create('f', { image: 'demo', disks: [{ sizeBytes: 128 * 1024 ** 2 }] });
    await lib.vms.start('f');
    await sh(lib, 'f', 'echo a > /data/a && sync');
    await lib.snapshots.create('f', 'S0');
    await sh(lib, 'f', 'echo b > /data/b && sync');
    await lib.snapshots.create('f', 'S1');
    await lib.fingerprint('f');
  });
  afterAll(() => {
    lib.close();
    cleanupHome(home);
  });


  it('vmsnap killed during an offline merge: recovery stops the orphaned storage daemon and finishes', async () => {
    await lib.snapshots.revert('f', 'S1', { force: true });
    await sh(lib, 'f', 'dd if=/dev/urandom of=/data/m1 bs=1M count=16 2>/dev/null && sync');
    await lib.snapshots.create('f', 'M', { memory: false });
    await sh(lib, 'f', 'dd if=/dev/urandom of=/data/m2 bs=1M count=16 2>/dev/null && sync');
    await lib.vms.stop('f', { force: true });
    const child = spawn(COMMAND, ['snapshot', 'delete', 'f', 'M'], {
      env: { ...process.env, VMSNAP_HOME: home, VMSNAP_TEST_JOB_SPEED: String(2 * 1024 ** 2) },
      stdio: 'ignore',
    });
    // Wait until the merge's helper process is journaled, then kill vmsnap like kill -9 would.
    const helper = await waitFor(() => (lib.ctx.journal.unfinished()[0]?.plan as { helperPid?: number } | undefined)?.helperPid, { what: "the merge's helper process to be journaled", timeoutMs: 10_000 });
    expect(helper).toBeDefined();
    child.kill('SIGKILL');
    await new Promise((r) => child.on('close', r));
    expect(isProcessAlive(helper!)).toBe(true); // the daemon outlived vmsnap
    const rec = JSON.parse((await cli(home, ['recover', '--json'])).stdout);
    expect(rec.operations).toEqual([expect.objectContaining({ kind: 'snapshot-delete', outcome: 'rolled_forward' })]);
    expect(isProcessAlive(helper!)).toBe(false);
    await lib.vms.start('f');
    expect(await files(lib, 'f')).toEqual(['a', 'b', 'm1', 'm2']);
    await expectSound(home, lib, 'f', expected);
  });

  it('QEMU killed during a block job: the delete stops with a clear error; recover finishes it offline', async () => {
    await lib.snapshots.revert('f', 'S1', { force: true });
    await sh(lib, 'f', 'dd if=/dev/urandom of=/data/big bs=1M count=24 2>/dev/null && sync');
    await lib.snapshots.create('f', 'BIG', { memory: false });
    await sh(lib, 'f', 'dd if=/dev/urandom of=/data/big2 bs=1M count=32 2>/dev/null && sync');
    const vm = lib.vms.get('f');
    const files0 = runtimeFiles(lib.ctx.paths.run, vm.id);
    const pid = (await lib.vms.status('f')).pid!;
    const deleting = cli(home, ['snapshot', 'delete', 'f', 'BIG'], { VMSNAP_TEST_JOB_SPEED: String(4 * 1024 ** 2) });
    // Watch for the job on the second monitor (the first is the deleting process's).
    const watcher = await QmpClient.connect(files0.eventsSocket, { retryUntilMs: 2000 });
    try {
      await waitFor(async () => (await watcher.execute<{ id: string }[]>('query-jobs')).length > 0, { what: 'the block job to start', timeoutMs: 10_000 });
    } finally {
      await watcher.close().catch(() => undefined);
    }
    process.kill(pid, 'SIGKILL');
    const r = await deleting;
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/QMP|QEMU|closed|disconnected/i);
    expect(lib.snapshots.list('f').map((s) => s.name)).not.toContain('BIG');
    await expectSound(home, lib, 'f', expected);
  });
});

describe('out of disk space during a merge', () => {
  const mnt = join('/tmp', `vs-full-${process.pid}`);
  let lib: Vmsnap;
  let tmpfs: ReturnType<typeof mountTmpfs>;
  beforeAll(() => {
    tmpfs = mountTmpfs(mnt, '160m');
  });
  afterAll(() => {
    lib?.close();
    tmpfs?.unmount();
  });

  it('refuses a delete whose merge cannot fit; one that runs out midway fails with NO_SPACE, loses nothing, and completes once space is freed', async (ctx) => {
    if (!tmpfs) return skipBecause(ctx, TMPFS_NEEDS_ROOT);
    const home = join(mnt, 'home');
    mkdirSync(home, { recursive: true });
    // This data dir is tiny on purpose: keep the free-space reserve out of the way.
    writeFileSync(join(home, 'config.json'), JSON.stringify({ health: { reserveBytes: 0 } }));
    lib = openLib(home);
    await lib.vms.create('full', { image: 'demo', memoryMiB: 128, disks: [{ sizeBytes: 128 * 1024 ** 2 }] });
    await lib.vms.start('full');
    await sh(lib, 'full', 'echo keep > /data/keep && sync');
    await lib.snapshots.create('full', 'B', { memory: false });
    await sh(lib, 'full', 'dd if=/dev/urandom of=/data/x bs=1M count=40 2>/dev/null && sync');
    await lib.snapshots.create('full', 'T', { memory: false });
    await sh(lib, 'full', 'dd if=/dev/urandom of=/data/y bs=1M count=30 2>/dev/null && sync');
    await lib.fingerprint('full');
    const filler = join(mnt, 'filler');
    const fill = (leaveBytes: number) => {
      const free = Number(execFileSync('df', ['--output=avail', '-B1', mnt]).toString().split('\n')[1]);
      try {
        writeFileSync(filler, Buffer.alloc(Math.max(0, free - leaveBytes)));
      } catch (e) {
        // The merge raced us for the last bytes: the disk is full either way.
        if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
      }
    };

    // Too little space for the merge (about 30 MiB): refused before anything is touched.
    fill(8 * 1024 ** 2);
    const before = lib.snapshots.list('full').map((s) => s.name);
    const refused = await cli(home, ['snapshot', 'delete', 'full', 'T']);
    expect(refused.code, refused.stderr).toBe(16);
    expect(refused.stderr).toMatch(/must merge about .* but only .* is free[\s\S]*nothing was changed/);
    expect(lib.snapshots.list('full').map((s) => s.name)).toEqual(before);
    rmSync(filler);

    // Space runs out while the (throttled) online merge runs.
    const vm = lib.vms.get('full');
    const deleting = cli(home, ['snapshot', 'delete', 'full', 'T'], { VMSNAP_TEST_JOB_SPEED: String(8 * 1024 ** 2) });
    const watcher = await QmpClient.connect(runtimeFiles(lib.ctx.paths.run, vm.id).eventsSocket, { retryUntilMs: 2000 });
    try {
      await waitFor(async () => (await watcher.execute<unknown[]>('query-jobs')).length > 0, { what: 'the merge job to start', timeoutMs: 60_000 });
    } finally {
      await watcher.close();
    }
    fill(0);
    const r = await deleting;
    expect(r.code, r.stderr).toBe(16);
    expect(r.stderr).toMatch(/No space left on device|full/);
    rmSync(filler);

    const rec = await cli(home, ['recover', '--json']);
    expect(JSON.parse(rec.stdout).operations).toEqual([expect.objectContaining({ kind: 'snapshot-delete', outcome: 'rolled_forward' })]);
    const verify = JSON.parse((await cli(home, ['verify', 'full', '--deep', '--json'])).stdout);
    expect(verify.problems).toEqual([]);
    const ls = async () => (await sh(lib, 'full', 'ls /data')).split('\n').filter((f) => f && f !== 'lost+found').sort();
    const status = await lib.vms.status('full');
    if (status.state === 'paused') await lib.vms.resume('full');
    expect(await ls()).toEqual(['keep', 'x', 'y']);
    await lib.snapshots.revert('full', 'B', { force: true, start: true });
    expect(await ls()).toEqual(['keep']);
    // A boot, three CLI runs and a throttled merge: past 120 s when the two cores are shared.
  }, 300_000);
});
