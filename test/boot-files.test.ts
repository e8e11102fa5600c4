import { copyFileSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultImageCache } from '../src/paths.js';
import { DEMO_APPEND, ensureDemoImage } from '../src/vm/demo-image.js';
import type { Vmsnap } from '../src/vmsnap.js';
import { cleanupHome, cli, counter, COUNTER, expectRefused, openLib, sh, tempHome, testAccel, waitFor } from './helpers.js';

/**
 * Boot files live in the store: a kernel and initrd given at create are copied
 * into $VMSNAP_HOME/boot by content, so the VM and its snapshots boot after the
 * host's files are gone; shared by VMs, counted by df, removed with the last VM
 * that names them. And the bad inputs of firmware and disks are refused, with
 * nothing written.
 */

let home: string;
let lib: Vmsnap;
let src: string;

const bootDir = (): string[] => (existsSync(join(home, 'boot')) ? readdirSync(join(home, 'boot')).sort() : []);

describe(`boot files in the store, and bad input (${testAccel().toUpperCase()})`, () => {
  beforeAll(async () => {
    const demo = await ensureDemoImage(defaultImageCache());
    home = tempHome();
    lib = openLib(home);
    // The user's own kernel and initrd, in a folder they will delete.
    src = mkdtempSync(join(tmpdir(), 'vs-kernel-'));
    copyFileSync(demo.kernel, join(src, 'vmlinuz'));
    copyFileSync(demo.initrd, join(src, 'initrd.img'));
    writeFileSync(join(src, 'notes.txt'), 'my VM\nkernel: vmlinuz\n'.repeat(100));
    writeFileSync(join(src, 'empty.img'), '');
  });

  afterAll(() => {
    lib?.close();
    if (home) cleanupHome(home);
    rmSync(src, { recursive: true, force: true });
  });

  it('refuses a text file or an empty file given to --disk, naming it', async () => {
    const r = await expectRefused(home, ['create', 'bad', '--disk', join(src, 'notes.txt')], 2, /disk: '.*notes\.txt' is a text file, not a disk image/);
    expect(r.stderr).toMatch(/qemu-img info/);
    await expectRefused(home, ['create', 'bad', '--disk', join(src, 'empty.img')], 2, /is empty, not a disk image/);
    expect(bootDir()).toEqual([]);
  });

  it('refuses an unknown firmware and a missing OVMF, storing nothing', async () => {
    await expectRefused(home, ['create', 'bad', '--disk', '1G', '--firmware', 'coreboot'], 2, /firmware: 'coreboot' is not a firmware/);
    const missing = { VMSNAP_OVMF_DIR: join(src, 'no-ovmf') };
    const r = await expectRefused(home, ['create', 'bad', '--disk', '1G', '--firmware', 'uefi', '--kernel', join(src, 'vmlinuz')], 3, /UEFI firmware \(OVMF\) is not installed/, missing);
    expect(r.stderr).toMatch(/apt-get install ovmf/);
    expect(bootDir()).toEqual([]);
    await lib.vms.create('plain', { disks: [{ sizeBytes: 64 * 1024 * 1024 }] });
    await expectRefused(home, ['set', 'plain', '--firmware', 'uefi'], 3, /OVMF.*not installed/, missing);
    expect(bootDir()).toEqual([]);
  });

  it('copies kernel and initrd into the store: the VM boots and reverts after the originals are gone', async () => {
    const k = join(src, 'vmlinuz');
    const i = join(src, 'initrd.img');
    await lib.vms.create('k1', { kernel: k, initrd: i, append: DEMO_APPEND, disks: [{ sizeBytes: 256 * 1024 * 1024 }] });
    await lib.vms.create('k2', { kernel: k, initrd: i, append: DEMO_APPEND, disks: [{ sizeBytes: 256 * 1024 * 1024 }] });
    // Shared by content: two files for two VMs.
    expect(bootDir()).toHaveLength(2);
    const info = await lib.vms.info('k1');
    expect(info.config.boot.kernelFile).toMatch(/^[0-9a-f]{64}$/);
    expect(info.config.boot.kernel).toBeUndefined();
    rmSync(k);
    rmSync(i);
    await lib.vms.start('k1');
    await waitFor(async () => (await lib.vms.exec('k1', ['/bin/true'], { agentWaitMs: 5000 })).exitCode === 0, { what: 'the agent of k1', timeoutMs: 300_000, intervalMs: 1000 });
    await sh(lib, 'k1', COUNTER);
    await waitFor(() => counter(lib, 'k1'), { what: 'the counter', timeoutMs: 30_000 });
    await lib.snapshots.create('k1', 'running');
    const at = await counter(lib, 'k1');
    await waitFor(async () => (await counter(lib, 'k1')) > at + 10, { what: 'the counter to move on', timeoutMs: 60_000, intervalMs: 300 });
    await lib.snapshots.revert('k1', 'running', { force: true });
    expect(await counter(lib, 'k1')).toBeLessThanOrEqual(at + 5);
    const df = await cli(home, ['df']);
    expect(df.stdout).toMatch(/boot files \d/);
    expect((await lib.verify('k1')).problems).toEqual([]);
  });

  it('removes a stored file with the last VM that names it; a missing one is an error verify names', async () => {
    await lib.vms.stop('k1', { force: true });
    await lib.vms.remove('k2');
    expect(bootDir()).toHaveLength(2);
    await lib.vms.remove('k1');
    expect(bootDir()).toEqual([]);
    await lib.vms.create('k3', { kernel: join(process.env.VMSNAP_IMAGE_CACHE ?? defaultImageCache(), 'demo', 'vmlinuz'), disks: [] });
    const [file] = bootDir();
    rmSync(join(home, 'boot', file!));
    const v = await lib.verify('k3');
    expect(v.problems.map((p) => p.message).join('\n')).toMatch(/boot file [0-9a-f]{64} is missing from the store/);
    const start = await cli(home, ['start', 'k3']);
    expect(start.code).toBe(3);
    expect(start.stderr).toMatch(/kernel is missing from the store/);
  });
});
