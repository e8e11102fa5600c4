import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { QmpCommandError } from '../src/errors.js';
import { createManifest, MemoryStateError, validateMemoryState, writeManifest, type MemoryManifest } from '../src/memory/manifest.js';
import { loadDeviceState } from '../src/memory/revert.js';
import { ramImageArgs } from '../src/qemu/launcher.js';
import { openSplitSink, type SplitFilesResult } from '../src/memory/split-files.js';
import type { GuestAgentClient } from '../src/qemu/guest-agent.js';
import { sleep } from '../src/util/process.js';
import { RawVms, rawAgent, rawSh, waitMigration, type RawVm as Vm } from './raw-qemu.js';

/*
 * End to end, with real QEMU 7.2 under TCG and the demo guest: save a VM's memory with
 * background-snapshot and with precopy through the stream splitter (RAM image + device
 * state), then start new QEMUs whose RAM is the RAM image mapped privately and load the
 * device state, and check that the guest's tmpfs holds what it held at the save.
 */

function imageCache(): string {
  if (process.env.VMSNAP_IMAGE_CACHE) return resolve(process.env.VMSNAP_IMAGE_CACHE);
  return join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'vmsnap', 'images');
}
const IMG = join(imageCache(), 'demo');
const imageExists = existsSync(join(IMG, 'vmlinuz')) && existsSync(join(IMG, 'initrd.img'));

/** A test that boots or loads TCG guests and saves their memory: minutes on a loaded host. */
const BOOTS = 600_000;
const MEM_MIB = 256;
const RAM_BYTES = MEM_MIB * 1024 * 1024;
const BLOB_MIB = 32;

interface Saved {
  result: SplitFilesResult;
  manifestPath: string;
  manifest: MemoryManifest;
  md5: string;
  pauseMs?: number;
  totalMs: number;
}

function rss(pid: number): { rssKiB: number; anonKiB: number; fileKiB: number } {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string): number => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(s)?.[1] ?? NaN);
  return { rssKiB: kb('VmRSS'), anonKiB: kb('RssAnon'), fileKiB: kb('RssFile') };
}

/** Guest-physical 640 KiB–1 MiB: VGA and BIOS windows, where a physical dump does not show pc.ram. */
const LEGACY_HOLE: [number, number] = [0xa0000, 0x100000];

/** Compares the first `length` bytes of two files in 16 MiB steps, skipping byte ranges; returns the first differing offset or -1. */
async function firstDifference(a: string, b: string, length: number, skip: [number, number][] = []): Promise<number> {
  const { open } = await import('node:fs/promises');
  const [fa, fb] = await Promise.all([open(a, 'r'), open(b, 'r')]);
  try {
    const step = 16 * 1024 * 1024;
    const ba = Buffer.alloc(step);
    const bb = Buffer.alloc(step);
    for (let pos = 0; pos < length; pos += step) {
      const n = Math.min(step, length - pos);
      const [ra, rb] = await Promise.all([fa.read(ba, 0, n, pos), fb.read(bb, 0, n, pos)]);
      if (ra.bytesRead !== n || rb.bytesRead !== n) return pos;
      if (ba.subarray(0, n).equals(bb.subarray(0, n))) continue;
      for (let i = 0; i < n; i++) {
        const off = pos + i;
        if (ba[i] !== bb[i] && !skip.some(([s, e]) => off >= s && off < e)) return off;
      }
    }
    return -1;
  } finally {
    await Promise.all([fa.close(), fb.close()]);
  }
}

describe.skipIf(!imageExists)('split memory state with real QEMU (background-snapshot and precopy)', () => {
  let dir: string;
  const raw = new RawVms(() => dir);
  const saved: Record<string, Saved> = {};
  const hostFile = randomBytes(64 * 1024);
  const figures: Record<string, unknown> = {};

  function args(name: string, opts: { ramImage?: string; incoming?: boolean; paused?: boolean } = {}): string[] {
    const d = join(dir, name);
    const backend = opts.ramImage ? ramImageArgs(opts.ramImage, RAM_BYTES) : undefined;
    return [
      ...['-machine', backend ? `q35,${backend.machineProperty}` : 'q35', '-accel', 'tcg', '-m', String(MEM_MIB), '-smp', '1'],
      ...['-nodefaults', '-no-user-config', '-display', 'none'],
      ...(backend ? backend.args : []),
      ...['-kernel', join(IMG, 'vmlinuz'), '-initrd', join(IMG, 'initrd.img'), '-append', 'console=ttyS0 quiet'],
      ...['-chardev', `socket,id=qga0,path=${join(d, 'qga.sock')},server=on,wait=off`],
      ...['-device', 'virtio-serial-pci,id=vser0', '-device', 'virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0'],
      ...['-serial', `file:${join(d, 'serial.log')}`, '-qmp', `unix:${join(d, 'qmp.sock')},server=on,wait=off`],
      ...(opts.incoming ? ['-incoming', 'defer'] : []),
      ...(opts.paused ? ['-S'] : []),
    ];
  }

  const start = (name: string, opts: { ramImage?: string; incoming?: boolean; paused?: boolean } = {}): Promise<Vm> => raw.start(name, args(name, opts));
  const kill = (vm: Vm): Promise<void> => raw.kill(vm);
  const agentOf = (vm: Vm, boot: boolean): Promise<GuestAgentClient> => rawAgent(vm, boot);
  const sh = rawSh;

  /** A dump of guest-physical memory 0..RAM (all of pc.ram for a q35 guest of under 2 GiB). */
  async function dumpMemory(vm: Vm, file: string): Promise<string> {
    const path = join(dir, file);
    await vm.qmp.execute('pmemsave', { val: 0, size: RAM_BYTES, filename: path });
    return path;
  }

  const blobMd5 = async (agent: GuestAgentClient): Promise<string> => (await sh(agent, 'md5sum /tmp/blob')).split(' ')[0]!;

  /** Saves `vm`'s memory through the splitter as snapshot `snap-KEY`; background-snapshot unless key starts with "pre". */
  async function saveSplit(vm: Vm, key: string, md5: string): Promise<Saved> {
    const background = !key.startsWith('pre');
    const snapshotId = `snap-${key}`;
    const ramFile = `${snapshotId}.ram`;
    const devFile = `${snapshotId}.dev`;
    const sink = await openSplitSink(join(dir, `${key}.sock`), join(dir, ramFile), join(dir, devFile), { snapshotId });
    const t0 = performance.now();
    const stop = vm.qmp.waitForEvent('STOP', { timeoutMs: 60_000 });
    const resume = vm.qmp.waitForEvent('RESUME', { timeoutMs: 60_000 });
    await vm.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 64 * 1024 ** 3, 'downtime-limit': 50 });
    await vm.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'background-snapshot', state: background }] });
    await vm.qmp.execute('migrate', { uri: sink.uri });
    const info = await waitMigration(vm.qmp);
    expect(info.status, info['error-desc']).toBe('completed');
    const result = await sink.done;
    sink.close();
    const totalMs = performance.now() - t0;
    let pauseMs: number | undefined;
    if (background) {
      const [s, r] = await Promise.all([stop, resume]);
      pauseMs = r.timeMs - s.timeMs;
    }
    return saveManifest(snapshotId, key, result, vm.qmp.qemuVersion, md5, totalMs, pauseMs);
  }

  async function saveManifest(snapshotId: string, key: string, result: SplitFilesResult, qemuVersion: string, md5: string, totalMs = 0, pauseMs?: number): Promise<Saved> {
    const manifest = createManifest({
      snapshotId,
      createdAt: new Date().toISOString(),
      machine: result.summary.machine!,
      memoryMiB: MEM_MIB,
      streamMode: result.summary.mode,
      qemuVersion,
      ramBlock: result.summary.ramBlock,
      ramBytes: result.summary.ramBlockBytes,
      ramImage: { file: basename(result.ramImage.path), bytes: result.ramImage.bytes, sha256: result.ramImage.sha256! },
      deviceState: { file: basename(result.deviceState.path), bytes: result.deviceState.bytes, sha256: result.deviceState.sha256 },
    });
    const manifestPath = join(dir, `${snapshotId}.json`);
    await writeManifest(manifestPath, manifest);
    saved[key] = { result, manifestPath, manifest, md5, totalMs, ...(pauseMs !== undefined ? { pauseMs } : {}) };
    return saved[key];
  }

  /** Starts a QEMU on the RAM image, loads the device state; returns the VM and spawn-to-loaded ms. */
  /** `paused`: start QEMU with -S, so the guest does not run after the load until `cont` (as vmsnap's revert does). */
  async function revert(key: string, name: string, ramImage?: string, paused = false): Promise<{ vm: Vm; loadedMs: number; status: string }> {
    const s = saved[key]!;
    const v = await validateMemoryState(s.manifestPath, { expect: { snapshotId: `snap-${key}`, machine: 'pc-q35-7.2', memoryMiB: MEM_MIB } });
    figures[`validateMs-${name}`] = Math.round(v.ms * 10) / 10;
    const vm = await start(name, { ramImage: ramImage ?? v.ramImagePath, incoming: true, paused });
    const loaded = await loadDeviceState(vm.qmp, v.deviceStatePath);
    return { vm, loadedMs: performance.now() - vm.spawnedAt, status: loaded.status };
  }

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'vs-mem-'));
  });

  afterEach((ctx) => {
    if (ctx.task.result?.state === 'fail') raw.printSerialTails();
  });

  afterAll(async () => {
    await raw.killAll();
    console.log(`memory-split figures: ${JSON.stringify(figures, null, 2)}`);
    rmSync(dir, { recursive: true, force: true });
  });

  it('saves a running guest with background-snapshot and a paused one with precopy, through the splitter', async () => {
    const vm = await start('source');
    const agent = await agentOf(vm, true);
    try {
      await agent.writeFile('/tmp/host-file', hostFile);
      const md5A = (await sh(agent, `head -c ${BLOB_MIB * 1024 * 1024} /dev/urandom > /tmp/blob && md5sum /tmp/blob`)).split(' ')[0]!;

      const savedBg = await saveSplit(vm, 'bg', md5A);
      const bg = savedBg.result;
      expect(bg.summary).toMatchObject({ mode: 'background-snapshot', machine: 'pc-q35-7.2', ramBlock: 'pc.ram', ramBlockBytes: RAM_BYTES, pagesNeverSent: 0 });
      // The 32 MiB blob alone is 8192 pages of random data.
      expect(bg.summary.pagesWithData).toBeGreaterThan(8192);
      expect(bg.deviceState.bytes).toBeLessThan(1024 * 1024);
      expect((await vm.qmp.queryStatus()).running).toBe(true);
      figures.bgSave = { pauseMs: savedBg.pauseMs, totalMs: Math.round(savedBg.totalMs), ...bg.timings, summary: bg.summary };

      // The guest changes the blob after the snapshot: a revert must bring back md5A.
      const md5B = (await sh(agent, `head -c ${BLOB_MIB * 1024 * 1024} /dev/urandom > /tmp/blob && md5sum /tmp/blob`)).split(' ')[0]!;
      expect(md5B).not.toBe(md5A);

      await vm.qmp.execute('stop');
      const savedPre = await saveSplit(vm, 'pre', md5B);
      // The source stays paused: its memory is the snapshot's, byte for byte.
      const dump = await dumpMemory(vm, 'source-pre.mem');
      expect(await firstDifference(dump, join(dir, 'snap-pre.ram'), RAM_BYTES, [LEGACY_HOLE])).toBe(-1);
      const pre = savedPre.result;
      expect(pre.summary).toMatchObject({ mode: 'precopy', ramBlockBytes: RAM_BYTES, pagesNeverSent: 0 });
      expect(pre.summary.ramSections).toBeGreaterThanOrEqual(3); // START, PART(s), END
      figures.precopySave = { totalMs: Math.round(savedPre.totalMs), ...pre.timings, summary: pre.summary };
    } finally {
      await agent.close();
      await kill(vm);
    }
  }, BOOTS);

  it('reverts from the background-snapshot state: running at once, RAM from the image, same data', async () => {
    const { vm, loadedMs, status } = await revert('bg', 'revert-bg');
    expect(status).toBe('running'); // a background-snapshot of a running VM resumes by itself
    const rssAtRunning = rss(vm.proc.pid!);
    const agent = await agentOf(vm, false);
    try {
      expect(await blobMd5(agent)).toBe(saved.bg!.md5);
      expect((await agent.readFile('/tmp/host-file')).equals(hostFile)).toBe(true);
      // The guest goes on writing (copy on write into anonymous memory).
      expect(await sh(agent, 'echo after-revert > /tmp/new && cat /tmp/new')).toBe('after-revert\n');
      const rssAfterRead = rss(vm.proc.pid!);
      figures.bgRevert = { spawnToRunningMs: Math.round(loadedMs), rssAtRunning, rssAfterReadingBlob: rssAfterRead };
      // Lazy: at "running" the guest's 256 MiB are not resident.
      expect(rssAtRunning.rssKiB).toBeLessThan(RAM_BYTES / 1024);
    } finally {
      await agent.close();
      await kill(vm);
    }
    // QEMU opened the image read-write but never wrote it: it still matches its hash.
    await validateMemoryState(saved.bg!.manifestPath, { verifyRamSha256: true });
  }, BOOTS);

  it('reverts from the precopy state: paused until cont, same data', async () => {
    const { vm, loadedMs, status } = await revert('pre', 'revert-pre');
    expect(status).toBe('paused'); // saved from a paused VM
    const rssAfterLoad = rss(vm.proc.pid!);
    // Guest memory after the load equals the source's at the save, all of it.
    expect(await firstDifference(await dumpMemory(vm, 'revert-pre.mem'), join(dir, 'source-pre.mem'), RAM_BYTES)).toBe(-1);
    const tc = performance.now();
    await vm.qmp.execute('cont');
    expect((await vm.qmp.queryStatus()).running).toBe(true);
    figures.precopyRevert = { spawnToLoadedMs: Math.round(loadedMs), contMs: Math.round(performance.now() - tc), rssAfterLoad, rssAfterFullDump: rss(vm.proc.pid!) };
    const agent = await agentOf(vm, false);
    try {
      expect(await blobMd5(agent)).toBe(saved.pre!.md5);
      expect((await agent.readFile('/tmp/host-file')).equals(hostFile)).toBe(true);
    } finally {
      await agent.close();
      await kill(vm);
    }
    await validateMemoryState(saved.pre!.manifestPath, { verifyRamSha256: true });
  }, BOOTS);

  it('live precopy while the guest dirties memory (pages re-sent): the reverted memory equals the source at switch-over', async () => {
    const vm = await start('source-live');
    const agent = await agentOf(vm, true);
    try {
      // Rewrite 16 MiB of tmpfs over and over while RAM is copied, so pages go out more than once.
      await sh(agent, 'head -c 16777216 /dev/urandom > /tmp/churn; (while :; do head -c 16777216 /dev/urandom | dd of=/tmp/churn conv=notrunc bs=1M 2>/dev/null; done) >/dev/null 2>&1 &');
      const snapshotId = 'snap-pre-live';
      const sink = await openSplitSink(join(dir, 'live.sock'), join(dir, `${snapshotId}.ram`), join(dir, `${snapshotId}.dev`), { snapshotId });
      // As vmsnap's fallback does: pre-copy while the guest runs, pause before switch-over,
      // downtime limit 0 (one pass over RAM: under TCG, QEMU 7.2 misses writes at later dirty syncs).
      await vm.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 64 * 1024 ** 3, 'downtime-limit': 0 });
      await vm.qmp.execute('migrate-set-capabilities', {
        capabilities: [
          { capability: 'background-snapshot', state: false },
          { capability: 'pause-before-switchover', state: true },
        ],
      });
      await vm.qmp.execute('migrate', { uri: sink.uri });
      for (;;) {
        const st = await vm.qmp.execute<{ status: string }>('query-migrate');
        if (st.status === 'pre-switchover') break;
        expect(['setup', 'active']).toContain(st.status);
        await sleep(10);
      }
      await vm.qmp.execute('migrate-continue', { state: 'pre-switchover' });
      expect((await waitMigration(vm.qmp)).status).toBe('completed');
      const result = await sink.done;
      sink.close();
      expect(result.summary.mode).toBe('precopy');
      expect(result.summary.pagesRewritten).toBeGreaterThan(0);
      figures.livePrecopySave = { ...result.timings, summary: { ...result.summary, blocks: undefined } };
      const dump = await dumpMemory(vm, 'source-live.mem');
      expect(await firstDifference(dump, result.ramImage.path, RAM_BYTES, [LEGACY_HOLE])).toBe(-1);
      await saveManifest(snapshotId, 'pre-live', result, vm.qmp.qemuVersion, '');
    } finally {
      await agent.close();
      await kill(vm);
    }
    // The source was running when the save began, so its state says "running": -S keeps the guest paused for the dump.
    const { vm: back, status } = await revert('pre-live', 'revert-live', undefined, true);
    try {
      expect(status).toBe('paused');
      expect(await firstDifference(await dumpMemory(back, 'revert-live.mem'), join(dir, 'source-live.mem'), RAM_BYTES)).toBe(-1);
      await back.qmp.execute('cont');
      const agent2 = await agentOf(back, false);
      expect((await sh(agent2, 'echo alive')).trim()).toBe('alive');
      await agent2.close();
    } finally {
      await kill(back);
    }
  }, BOOTS);

  it('background-snapshot of a VM that runs from a private RAM image mapping (uffd-wp on a private file mapping)', async () => {
    // On a regular filesystem (ext4 here) userfaultfd write-protect cannot register a
    // private file mapping, so QEMU refuses the capability; on tmpfs (shmem) it works.
    const fsType = execFileSync('stat', ['-f', '-c', '%T', dir]).toString().trim();
    const { vm } = await revert('bg', 'bg-of-reverted');
    try {
      const err = await vm.qmp
        .execute('migrate-set-capabilities', { capabilities: [{ capability: 'background-snapshot', state: true }] })
        .then(() => undefined, (e: unknown) => e);
      figures.bgOfRevertedOnDiskFs = { fsType, error: err instanceof QmpCommandError ? err.description : err === undefined ? null : String(err) };
      if (fsType !== 'tmpfs') {
        expect(err).toBeInstanceOf(QmpCommandError);
        expect((err as QmpCommandError).description).toMatch(/Background-snapshot is not compatible with guest memory configuration/);
      }
    } finally {
      await kill(vm);
    }

    // The same RAM image on tmpfs (/dev/shm): the capability is accepted and the save works.
    if (!existsSync('/dev/shm')) return;
    const shmDir = mkdtempSync('/dev/shm/vs-mem-');
    try {
      const shmImage = join(shmDir, 'snap-bg.ram');
      copyFileSync(join(dir, 'snap-bg.ram'), shmImage);
      const { vm: vm2 } = await revert('bg', 'bg-of-reverted-shm', shmImage);
      let md5: string;
      try {
        await vm2.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'background-snapshot', state: true }] });
        const agent = await agentOf(vm2, false);
        md5 = await blobMd5(agent);
        await agent.close();
        const again = await saveSplit(vm2, 'bg-of-reverted', md5);
        figures.bgOfRevertedOnTmpfs = { pauseMs: again.pauseMs, totalMs: Math.round(again.totalMs), pagesWithData: again.result.summary.pagesWithData };
        expect(again.result.summary.mode).toBe('background-snapshot');
      } finally {
        await kill(vm2);
      }
      // The image on tmpfs was not written either.
      expect(execFileSync('sha256sum', [shmImage]).toString().split(' ')[0]).toBe(saved.bg!.manifest.ramImage.sha256);
      // That snapshot of a lazily reverted VM reverts in turn.
      const { vm: vm3, status } = await revert('bg-of-reverted', 'revert-of-reverted');
      try {
        expect(status).toBe('running');
        const agent = await agentOf(vm3, false);
        expect(await blobMd5(agent)).toBe(md5);
        await agent.close();
      } finally {
        await kill(vm3);
      }
    } finally {
      rmSync(shmDir, { recursive: true, force: true });
    }
  }, BOOTS);

  it('a RAM image paired with the wrong device state is caught before a load', async () => {
    const bg = saved.bg!;
    // Put the precopy RAM image (same size) where the background one was.
    renameSync(join(dir, 'snap-bg.ram'), join(dir, 'snap-bg.ram.orig'));
    copyFileSync(join(dir, 'snap-pre.ram'), join(dir, 'snap-bg.ram'));
    const e = await validateMemoryState(bg.manifestPath).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(e).toBeInstanceOf(MemoryStateError);
    expect((e as MemoryStateError).details.check).toBe('ram-image-pairing');
    expect((e as MemoryStateError).message).toMatch(/snapshot snap-pre, not snap-bg/);
    renameSync(join(dir, 'snap-bg.ram.orig'), join(dir, 'snap-bg.ram'));
  });
});
