import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultImageCache } from '../src/paths.js';
import { ensureDebianImage, type DebianImage } from '../src/vm/debian-image.js';
import type { Vmsnap } from '../src/vmsnap.js';
import { cleanupHome, cli, openLib, tempHome, testAccel, waitFor } from './helpers.js';
import { freePort, guestSsh, newSshKey, type GuestSsh } from './ssh.js';

/**
 * A real Debian 12 guest (guest/debian/build.sh: systemd, ext4 root on a GPT
 * disk, qemu-guest-agent) booted from its own disk, once by SeaBIOS and once
 * by OVMF; one booted VM of each is shared by every test of this file. The
 * NVRAM of the UEFI VM is VM state: snapshots capture it, reverts restore it,
 * clones and archives carry it.
 */

const GUID = '3b2d9f5e-8c1a-4e6b-9f2d-5a6c7e8f9a0b';
const VAR = `/sys/firmware/efi/efivars/VmsnapTest-${GUID}`;
const BOOT_TIMEOUT = 20 * 60_000;
/** A guest-agent round trip takes seconds on a loaded 2-core machine under TCG. */
const STEP_TIMEOUT = 10 * 60_000;

let home: string;
let lib: Vmsnap;
let img: DebianImage;
const bootSeconds: Record<string, number> = {};
/** Each VM's SSH forward (host port), and the key its cloud-init seed gave the default user. */
const sshPort: Record<string, number> = {};
let keyDir: string;
let g: GuestSsh;

async function bash(vm: string, script: string): Promise<string> {
  const r = await lib.vms.exec(vm, ['/bin/bash', '-c', script], { timeoutMs: 120_000 });
  if (r.exitCode !== 0) throw new Error(`guest command failed (${r.exitCode}): ${script}\n${r.stderr}`);
  return r.stdout;
}

/** Write the test variable in the guest (efivarfs: 4 bytes of attributes, then the data; new variables are immutable files). */
const setVar = (vm: string, value: string): Promise<string> =>
  bash(vm, `chattr -i ${VAR} 2>/dev/null; printf '\\x07\\x00\\x00\\x00${value}' > ${VAR}`);
const guestVar = async (vm: string): Promise<string> => (await bash(vm, `cat ${VAR} | tail -c +5`)).trim();

/**
 * The test variable's value as the NVRAM holds it on the host: the flattened
 * chain of the VM's active NVRAM layer, read as an EDK2 variable store (a
 * deleted variable stays in the store until it is reclaimed; only State 0x3F
 * is the live one).
 */
async function hostVar(vm: string): Promise<string | undefined> {
  const info = await lib.vms.info(vm);
  const top = info.nvramChain?.[0];
  if (!top) throw new Error(`${vm} has no NVRAM`);
  const raw = join(home, `nvram-${vm}.raw`);
  execFileSync('qemu-img', ['convert', '-U', '-O', 'raw', top.path, raw]);
  const buf = readFileSync(raw);
  rmSync(raw);
  const name = Buffer.from('VmsnapTest\0', 'utf16le');
  let live: string | undefined;
  for (let o = 0; o + 60 < buf.length; o += 4) {
    if (buf[o] !== 0xaa || buf[o + 1] !== 0x55) continue;
    const state = buf[o + 2];
    const nameSize = buf.readUInt32LE(o + 36);
    const dataSize = buf.readUInt32LE(o + 40);
    if (nameSize !== name.length || o + 60 + nameSize + dataSize > buf.length) continue;
    if (!buf.subarray(o + 60, o + 60 + nameSize).equals(name)) continue;
    if (state === 0x3f) live = buf.subarray(o + 60 + nameSize, o + 60 + nameSize + dataSize).toString('latin1');
  }
  return live;
}

async function bootToAgent(vm: string): Promise<void> {
  const t0 = Date.now();
  await waitFor(async () => (await lib.vms.exec(vm, ['/bin/true'], { timeoutMs: 10_000, agentWaitMs: 5_000 })).exitCode === 0, {
    what: `the guest agent of ${vm}`,
    timeoutMs: BOOT_TIMEOUT,
    intervalMs: 2000,
  });
  bootSeconds[vm] = Math.round((Date.now() - t0) / 100) / 10;
}

describe(`a real Debian guest booted from its disk by BIOS and by UEFI (${testAccel().toUpperCase()})`, () => {
  beforeAll(async () => {
    img = await ensureDebianImage(defaultImageCache(), (l) => process.stderr.write(`[debian image] ${l}\n`));
    home = tempHome();
    lib = openLib(home);
    const { dir, key } = newSshKey();
    keyDir = dir;
    g = guestSsh(key);
    const sshKeys = [readFileSync(`${key}.pub`, 'utf8').trim()];
    for (const firmware of ['uefi', 'bios'] as const) {
      sshPort[firmware] = await freePort();
      const forwards = [{ proto: 'tcp' as const, hostAddr: '127.0.0.1', hostPort: sshPort[firmware], guestPort: 22 }];
      await lib.vms.create(firmware, { disks: [{ importPath: firmware === 'uefi' ? img.uefi : img.bios }], firmware, memoryMiB: 512, forwards, sshKeys });
    }
    await lib.vms.start('uefi');
    await lib.vms.start('bios');
    await Promise.all([bootToAgent('uefi'), bootToAgent('bios')]);
    // The agent answers before cloud-init has made the user's login: wait for SSH too.
    for (const vm of ['uefi', 'bios']) {
      await waitFor(() => g.run(sshPort[vm]!, 'true').then(() => true), { what: `SSH into ${vm} through its forward`, timeoutMs: BOOT_TIMEOUT, intervalMs: 3000 });
    }
    process.stderr.write(`[firmware] booted to the guest agent under ${testAccel().toUpperCase()}: uefi ${bootSeconds.uefi} s, bios ${bootSeconds.bios} s (both at once)\n`);
  }, BOOT_TIMEOUT + 120_000);

  afterAll(() => {
    lib?.close();
    if (home) cleanupHome(home);
    if (keyDir) rmSync(keyDir, { recursive: true, force: true });
  }, STEP_TIMEOUT);

  it('boots each from its own disk: OVMF with its NVRAM, SeaBIOS without', async () => {
    expect((await bash('uefi', 'test -d /sys/firmware/efi && echo efi')).trim()).toBe('efi');
    expect((await bash('bios', 'test -d /sys/firmware/efi && echo efi || echo none')).trim()).toBe('none');
    const u = await lib.vms.info('uefi');
    expect(u.config.firmware).toMatchObject({ type: 'uefi' });
    expect(u.nvramChain).toHaveLength(1);
    expect(u.config.boot.kernel).toBeUndefined();
    const b = await lib.vms.info('bios');
    expect(b.config.firmware).toEqual({ type: 'bios' });
    expect(b.nvramChain).toBeUndefined();
    const r = await cli(home, ['info', 'uefi']);
    expect(r.stdout).toMatch(/firmware: uefi \(OVMF/);
    expect(r.stdout).toMatch(/nvram: chain of 1/);
  }, STEP_TIMEOUT);

  it('under each firmware: SSH in through a forward; a memory snapshot taken while the SSH session runs a counter; revert: the counter carries on', async () => {
    for (const vm of ['uefi', 'bios']) {
      const port = sshPort[vm]!;
      const session = g.startCounter(port);
      try {
        const atStart = await waitFor(async () => g.counter(port), { what: 'the counter', timeoutMs: 120_000, intervalMs: 500 });
        await lib.snapshots.create(vm, 'counting');
        const atSnap = await g.counter(port);
        const later = await waitFor(async () => {
          const n = await g.counter(port);
          return n > atSnap + 20 ? n : 0;
        }, { what: 'the counter to move on', timeoutMs: 120_000, intervalMs: 500 });
        const r = await lib.snapshots.revert(vm, 'counting', { force: true });
        expect(r.state).toBe('running');
        // Back near the snapshot's instant (not at the later value, not restarted from 1), and counting on: the session lives in the guest.
        const after = await waitFor(() => g.counter(port), { what: `SSH into ${vm} after the revert`, timeoutMs: 120_000, intervalMs: 1000 });
        expect(after).toBeGreaterThanOrEqual(atStart);
        expect(after).toBeLessThan(later);
        await waitFor(async () => (await g.counter(port)) > after, { what: 'the counter to carry on', timeoutMs: 60_000, intervalMs: 500 });
      } finally {
        session.kill('SIGKILL');
      }
    }
  }, STEP_TIMEOUT);

  it('a UEFI variable written in the guest is back after a revert to a memory snapshot', async () => {
    await setVar('uefi', 'before-mem');
    expect(await guestVar('uefi')).toBe('before-mem');
    await lib.snapshots.create('uefi', 'var-mem');
    await setVar('uefi', 'after-mem');
    expect(await guestVar('uefi')).toBe('after-mem');
    await lib.snapshots.revert('uefi', 'var-mem', { force: true });
    expect(await guestVar('uefi')).toBe('before-mem');
    expect(await hostVar('uefi')).toBe('before-mem');
  }, STEP_TIMEOUT);

  it('clones and an exported archive carry the NVRAM; df and verify count it', async () => {
    await setVar('uefi', 'disk-only');
    const snap = await lib.snapshots.create('uefi', 'var-disk', { memory: false });
    expect(snap.disks.map((d) => d.slot).sort()).toEqual(['disk0', 'nvram']);
    await setVar('uefi', 'after-disk');
    await lib.snapshots.clone('uefi', 'var-disk', 'linked', { mode: 'linked' });
    await lib.snapshots.clone('uefi', 'var-disk', 'full', { mode: 'full' });
    const file = join(home, 'uefi.vmsnap');
    const ex = await lib.transfer.export('uefi', 'var-disk', file);
    expect(ex.disks.map((d) => d.slot).sort()).toEqual(['disk0', 'nvram']);
    expect(ex.manifest.files.filter((f) => f.name.startsWith('boot/'))).toHaveLength(2);
    await lib.transfer.import(file, { name: 'imported' });
    for (const vm of ['linked', 'full', 'imported']) {
      expect((await lib.vms.info(vm)).config.firmware?.type).toBe('uefi');
      expect(await hostVar(vm)).toBe('disk-only');
    }
    const df = await lib.health.df('uefi');
    expect(df.vms[0]!.disks.map((d) => d.slot)).toContain('nvram');
    expect(df.vms[0]!.snapshots.find((s) => s.name === 'var-disk')!.deltaBytes).toBeGreaterThan(0);
    expect(df.dataDir.bootFilesBytes).toBeGreaterThan(3_000_000);
    // Not --deep: fingerprinting four 4 GiB Debian disks takes many minutes on a loaded machine;
    // the NVRAM's content is checked above, variable by variable.
    for (const vm of ['uefi', 'linked', 'full', 'imported']) {
      const v = await lib.verify(vm);
      expect(v.problems).toEqual([]);
    }
  }, STEP_TIMEOUT);

  it('a revert to a disk-only snapshot puts the NVRAM back too', async () => {
    expect(await guestVar('uefi')).toBe('after-disk');
    const r = await lib.snapshots.revert('uefi', 'var-disk', { force: true });
    expect(r.state).toBe('stopped');
    expect(await hostVar('uefi')).toBe('disk-only');
  }, STEP_TIMEOUT);

  it("guest files of the Debian guest (ext4 root in a partition, named / by its fstab): diff, cp, restore-file into the running guest, search", async () => {
    await bash('bios', 'echo one > /root/vs-a && echo gone > /etc/vs-b && sync');
    await lib.snapshots.create('bios', 'F0', { memory: false });
    await bash('bios', 'echo two > /root/vs-a && rm /etc/vs-b && echo new > /root/vs-c && sync');
    await lib.snapshots.create('bios', 'F1', { memory: false });
    // One appliance reads both snapshots for all of it.
    const s = await lib.files.open('bios', ['F0', 'F1']);
    const out = mkdtempSync(join(tmpdir(), 'vs-fw-files-'));
    try {
      const root = (await s.filesystems('F0')).filesystems.find((f) => f.mountpoint === '/');
      expect(root).toMatchObject({ name: '/', type: 'ext4', slot: 'disk0', device: expect.stringMatching(/^\/dev\/vda[0-9]+$/) });
      const d = await s.diff('F0', 'F1');
      const changes = d.filesystems.find((f) => f.name === '/')!.changes!.filter((c) => c.type !== 'dir' && /\/vs-[abc]$/.test(c.path));
      expect(changes.map((c) => [c.path, c.change])).toEqual([
        ['/etc/vs-b', 'removed'],
        ['/root/vs-a', 'changed'],
        ['/root/vs-c', 'added'],
      ]);
      await s.copyOut('F0', '/root/vs-a', join(out, 'vs-a'));
      expect(readFileSync(join(out, 'vs-a'), 'utf8')).toBe('one\n');
      const r = await s.restore('F0', '/etc/vs-b');
      expect(r).toMatchObject({ via: 'guest-agent', guestPath: '/etc/vs-b', files: 1 });
      expect(await bash('bios', 'cat /etc/vs-b')).toBe('gone\n');
      const found = await s.search('vs-a');
      expect(found.matches.map((m) => [m.path, m.distinct])).toEqual([['/root/vs-a', 2]]);
    } finally {
      await s.close();
      rmSync(out, { recursive: true, force: true });
    }
  }, STEP_TIMEOUT);

  it('set --firmware changes a stopped VM only; a first switch to UEFI makes its NVRAM', async () => {
    const running = await cli(home, ['set', 'bios', '--firmware', 'uefi']);
    expect(running.code).toBe(5);
    expect(running.stderr).toMatch(/stopped/);
    await lib.vms.stop('bios', { force: true });
    const r = await cli(home, ['set', 'bios', '--firmware', 'uefi']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const i = await lib.vms.info('bios');
    expect(i.config.firmware?.type).toBe('uefi');
    expect(i.nvramChain).toHaveLength(1);
    // Back to BIOS keeps the NVRAM (a later switch to UEFI finds its variables).
    await lib.vms.set('bios', { firmware: 'bios' });
    const back = await lib.vms.info('bios');
    expect(back.config.firmware).toEqual({ type: 'bios' });
    expect((await lib.verify('bios')).problems).toEqual([]);
    expect(existsSync(join(home, 'boot'))).toBe(true);
  }, STEP_TIMEOUT);
});
