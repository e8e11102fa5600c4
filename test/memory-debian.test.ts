import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createManifest, validateMemoryState, writeManifest } from '../src/memory/manifest.js';
import { loadDeviceState } from '../src/memory/revert.js';
import { openSplitSink } from '../src/memory/split-files.js';
import { ramImageArgs } from '../src/qemu/launcher.js';
import type { GuestAgentClient } from '../src/qemu/guest-agent.js';
import { sleep } from '../src/util/process.js';
import { debianImagePaths, ensureDebianImage } from '../src/vm/debian-image.js';
import { RawVms, rawAgent, rawSh as sh, waitMigration, type RawVm as Vm } from './raw-qemu.js';

/*
 * The split memory state on the real Debian 12 test guest (systemd, journald, udev,
 * cloud-init, 512 MiB), with QEMU 7.2 under TCG: a background-snapshot saved through the
 * splitter while the guest runs, then two QEMUs started from the one RAM image, mapped
 * privately (a revert and a fork): the guest carries on, systemd and a process started
 * before the save keep running, a tmpfs file has its checksum, and one's writes are not
 * seen by the other. The demo guest's tests (memory-split, lazy-memory) cover the rest.
 */

function imageCache(): string {
  if (process.env.VMSNAP_IMAGE_CACHE) return resolve(process.env.VMSNAP_IMAGE_CACHE);
  return join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'vmsnap', 'images');
}

const MEM_MIB = 512;
const RAM_BYTES = MEM_MIB * 1024 * 1024;

describe('split memory state on the Debian 12 guest (systemd, 512 MiB)', () => {
  let dir: string;
  let base: string;
  const raw = new RawVms(() => dir);
  const figures: Record<string, unknown> = {};

  /** The same devices, in the same order, for the source and every QEMU loading its state. */
  function args(name: string, disk: string, opts: { ramImage?: string; incoming?: boolean } = {}): string[] {
    const d = raw.dirOf(name);
    const backend = opts.ramImage ? ramImageArgs(opts.ramImage, RAM_BYTES) : undefined;
    return [
      ...['-machine', backend ? `pc-q35-7.2,${backend.machineProperty}` : 'pc-q35-7.2', '-accel', 'tcg', '-m', String(MEM_MIB), '-smp', '1'],
      ...['-nodefaults', '-no-user-config', '-display', 'none'],
      ...(backend ? backend.args : []),
      ...['-drive', `if=none,id=disk0,file=${disk},format=qcow2`, '-device', 'virtio-blk-pci,drive=disk0,bootindex=0'],
      ...['-netdev', 'user,id=net0', '-device', 'virtio-net-pci,netdev=net0,romfile='],
      ...['-chardev', `socket,id=qga0,path=${join(d, 'qga.sock')},server=on,wait=off`],
      ...['-device', 'virtio-serial-pci,id=vser0', '-device', 'virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0'],
      ...['-serial', `file:${join(d, 'serial.log')}`, '-qmp', `unix:${join(d, 'qmp.sock')},server=on,wait=off`],
      ...(opts.incoming ? ['-incoming', 'defer'] : []),
    ];
  }

  const start = (name: string, disk: string, opts: { ramImage?: string; incoming?: boolean } = {}): Promise<Vm> => raw.start(name, args(name, disk, opts), 30_000);
  const kill = (vm: Vm): Promise<void> => raw.kill(vm);
  // systemd boots in minutes under TCG on a loaded machine.
  const agentOf = (vm: Vm, boot: boolean): Promise<GuestAgentClient> => rawAgent(vm, boot, 600_000);

  const overlay = (name: string, backing: string): string => {
    const path = join(dir, `${name}.qcow2`);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', backing, '-F', 'qcow2', path]);
    return path;
  };

  beforeAll(async () => {
    await ensureDebianImage(imageCache(), (l) => process.stderr.write(`${l}\n`));
    base = debianImagePaths(imageCache()).bios;
    dir = mkdtempSync(join(tmpdir(), 'vs-mem-debian-'));
  }, 1_800_000);

  afterEach((ctx) => {
    if (ctx.task.result?.state === 'fail') raw.printSerialTails();
  });

  afterAll(async () => {
    await raw.killAll();
    console.log(`memory-debian figures: ${JSON.stringify(figures, null, 2)}`);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('saves the running guest through the splitter, then a revert and a fork map the one RAM image: systemd, a process and a tmpfs file carry on, writes kept apart', async () => {
    const source = await start('source', overlay('source', base));
    const agent = await agentOf(source, true);
    figures.bootToAgentMs = Math.round(performance.now() - source.spawnedAt);
    let md5: string;
    let counterBefore: number;
    let bootId: string;
    try {
      expect((await sh(agent, 'ps -p 1 -o comm=')).trim()).toBe('systemd');
      bootId = (await sh(agent, 'cat /proc/sys/kernel/random/boot_id')).trim();
      md5 = (await sh(agent, 'head -c 33554432 /dev/urandom > /dev/shm/blob && md5sum /dev/shm/blob')).split(' ')[0]!;
      await sh(agent, "setsid /bin/sh -c 'i=0; while :; do i=$((i+1)); echo $i > /dev/shm/counter; sleep 0.2; done' </dev/null >/dev/null 2>&1 &");
      for (;;) {
        if (Number((await sh(agent, 'cat /dev/shm/counter 2>/dev/null || echo 0')).trim()) > 0) break;
        await sleep(100);
      }
      counterBefore = Number((await sh(agent, 'cat /dev/shm/counter')).trim());
    } finally {
      await agent.close();
    }

    // The disk at the instant of the save: switch it to a new overlay, then save the memory at once.
    const frozen = join(dir, 'source.qcow2');
    await source.qmp.execute('blockdev-snapshot-sync', { device: 'disk0', 'snapshot-file': join(dir, 'source-after.qcow2'), format: 'qcow2' });
    const snapshotId = 'snap-debian';
    const sink = await openSplitSink(join(dir, 'save.sock'), join(dir, `${snapshotId}.ram`), join(dir, `${snapshotId}.dev`), { snapshotId });
    const stop = source.qmp.waitForEvent('STOP', { timeoutMs: 120_000 });
    const resume = source.qmp.waitForEvent('RESUME', { timeoutMs: 120_000 });
    const t0 = performance.now();
    await source.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 64 * 1024 ** 3 });
    await source.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'background-snapshot', state: true }] });
    await source.qmp.execute('migrate', { uri: sink.uri });
    const m = await waitMigration(source.qmp);
    expect(m.status, m['error-desc']).toBe('completed');
    const split = await sink.done;
    sink.close();
    const [s, r] = await Promise.all([stop, resume]);
    figures.save = { pauseMs: r.timeMs - s.timeMs, wallMs: Math.round(performance.now() - t0), deviceStateBytes: split.deviceState.bytes, ramDataMiB: Math.round((split.summary.pagesWithData * 4096) / 2 ** 20) };
    expect(split.summary).toMatchObject({ mode: 'background-snapshot', ramBlock: 'pc.ram', ramBlockBytes: RAM_BYTES, pagesNeverSent: 0 });
    expect(split.deviceState.bytes).toBeLessThan(1024 * 1024);
    await kill(source);

    const manifestPath = join(dir, `${snapshotId}.json`);
    await writeManifest(
      manifestPath,
      createManifest({
        snapshotId,
        createdAt: new Date().toISOString(),
        machine: split.summary.machine!,
        memoryMiB: MEM_MIB,
        streamMode: split.summary.mode,
        ramBlock: split.summary.ramBlock,
        ramBytes: split.summary.ramBlockBytes,
        ramImage: { file: basename(split.ramImage.path), bytes: split.ramImage.bytes, sha256: split.ramImage.sha256! },
        deviceState: { file: basename(split.deviceState.path), bytes: split.deviceState.bytes, sha256: split.deviceState.sha256 },
      }),
    );

    // A revert and a fork: two QEMUs on the same RAM image, each on its own overlay of the frozen disk.
    const loaded: { vm: Vm; agent: GuestAgentClient }[] = [];
    try {
      for (const name of ['revert', 'fork']) {
        const v = await validateMemoryState(manifestPath, { expect: { snapshotId, machine: 'pc-q35-7.2', memoryMiB: MEM_MIB } });
        const vm = await start(name, overlay(name, frozen), { ramImage: v.ramImagePath, incoming: true });
        const l = await loadDeviceState(vm.qmp, v.deviceStatePath);
        expect(l.status).toBe('running');
        const runningMs = performance.now() - vm.spawnedAt;
        const a = await agentOf(vm, false);
        await a.ping();
        figures[name] = { spawnToRunningMs: Math.round(runningMs), spawnToAgentMs: Math.round(performance.now() - vm.spawnedAt), rssMiBAtAgent: rssMiB(vm.proc.pid!) };
        loaded.push({ vm, agent: a });
      }
      const vm = (a: GuestAgentClient): string => loaded.find((l) => l.agent === a)!.vm.name;
      for (const { agent: a } of loaded) {
        // The same boot, carried on: not rebooted, systemd and the process still running.
        expect((await sh(a, 'cat /proc/sys/kernel/random/boot_id')).trim()).toBe(bootId);
        expect((await sh(a, 'md5sum /dev/shm/blob')).split(' ')[0]).toBe(md5);
        const c0 = Number((await sh(a, 'cat /dev/shm/counter')).trim());
        expect(c0).toBeGreaterThanOrEqual(counterBefore);
        for (let i = 0; Number((await sh(a, 'cat /dev/shm/counter')).trim()) <= c0; i++) {
          expect(i, 'the guest process counts on').toBeLessThan(300);
          await sleep(100);
        }
        expect((await sh(a, 'systemctl is-active systemd-journald systemd-udevd')).split('\n').filter(Boolean)).toEqual(['active', 'active']);
        // journald takes and serves new entries. (Not systemd-run: the agent answers before
        // D-Bus is up, and the save is taken as soon as it does, so the guest is still booting.)
        const probe = `probe-${vm(a)}-${Date.now()}`;
        await sh(a, `logger -t vmsnap-probe ${probe}`);
        for (let i = 0; !(await sh(a, 'journalctl -t vmsnap-probe -o cat --no-pager')).includes(probe); i++) {
          expect(i, 'the entry reaches the journal').toBeLessThan(100);
          await sleep(200);
        }
      }
      // One's writes are its own.
      const [rv, fk] = loaded as [{ vm: Vm; agent: GuestAgentClient }, { vm: Vm; agent: GuestAgentClient }];
      await sh(rv.agent, 'head -c 8388608 /dev/urandom > /dev/shm/blob && echo mine > /root/revert-only && sync');
      expect((await sh(fk.agent, 'md5sum /dev/shm/blob')).split(' ')[0]).toBe(md5);
      expect((await sh(fk.agent, 'ls /root')).split('\n')).not.toContain('revert-only');
    } finally {
      for (const { vm, agent: a } of loaded) {
        await a.close();
        await kill(vm);
      }
    }
    // QEMU mapped the image privately and never wrote it.
    await validateMemoryState(manifestPath, { verifyRamSha256: true });
  }, 1_200_000);
});

function rssMiB(pid: number): number {
  return Math.round(Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN) / 1024);
}
