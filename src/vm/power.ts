import { existsSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import type { VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import { VmsnapError } from '../errors.js';
import { defineOperation } from '../operations/define.js';
import { runOperation, withVm } from '../operations/runner.js';
import { resolveAccelerator, type Accelerator } from '../qemu/accel.js';
import { NVRAM_SLOT, type VmConfig } from '../contract/config.js';
import { launchQemu, runtimeFiles, stagingFiles, type LaunchDisk, type LaunchSpec, type RuntimeFiles } from '../qemu/launcher.js';
import { requireBootFile } from '../store/boot-files.js';
import { isUefi } from './firmware.js';
import { cleanRuntime, connectQmp, killQemu, livePid, probeRuntime, waitForExit } from '../qemu/runtime.js';
import { ensureDemoImage } from './demo-image.js';
import { checkNetwork, recordEndpoints, resolvePorts } from './network.js';
import { renderSeed } from './seed.js';

export interface StartOptions {
  accel?: Accelerator;
  paused?: boolean;
  log?: (line: string) => void;
}

export interface StopOptions {
  force?: boolean;
  timeoutMs?: number;
}

/** Power on. Nothing to undo: after a crash QEMU either runs (as after) or does not (as before). */
export const vmStart = defineOperation({
  kind: 'vm-start',
  plan: z.object({ paused: z.boolean() }),
  steps: 0,
  faults: [],
  onFailure: 'rollback',
  files: () => [],
  async recover(ctx, op, vm) {
    const running = vm !== undefined && (await probeRuntime(ctx.paths.run, vm.id)).state !== 'stopped';
    op.finish(running ? 'done' : 'rolled_back');
    return { outcome: running ? 'rolled_forward' : 'rolled_back' };
  },
});

/** Power off. After a crash the VM is found either still running (as before) or stopped (as after). */
export const vmStop = defineOperation({
  kind: 'vm-stop',
  plan: z.object({ force: z.boolean() }),
  steps: 0,
  faults: [],
  onFailure: 'rollback',
  files: () => [],
  async recover(ctx, op, vm) {
    const stopped = vm === undefined || (await probeRuntime(ctx.paths.run, vm.id)).state === 'stopped';
    op.finish(stopped ? 'done' : 'rolled_back');
    return { outcome: stopped ? 'rolled_forward' : 'rolled_back' };
  },
});

function emitState(ctx: Context, vm: VmRecord, state: string): void {
  ctx.events.emitEvent({ type: 'vm-state', vm: vm.name, vmId: vm.id, state });
}

/** The disks as QEMU opens them: each slot's chain from its active layer down. */
export function launchDisks(ctx: Context, vm: VmRecord): LaunchDisk[] {
  return vm.config.disks.map((d) => launchChain(ctx, vm, d.slot));
}

/** One slot's chain (a disk, or the NVRAM), every file checked. */
function launchChain(ctx: Context, vm: VmRecord, slot: string): LaunchDisk {
  const top = ctx.catalog.activeLayers(vm.id)[slot];
  if (!top) throw new VmsnapError('CATALOG_ERROR', `VM '${vm.name}' has no active layer for ${slot}`, { hint: "run 'vmsnap verify'" });
  const chain = ctx.catalog.chain(top);
  for (const l of chain) {
    if (!existsSync(l.path)) {
      throw new VmsnapError('NOT_FOUND', `layer file of ${slot} is missing: ${l.path}`, {
        hint: "run 'vmsnap verify' and 'vmsnap recover'",
      });
    }
  }
  return { slot, chain: chain.map((l) => ({ id: l.id, path: l.path, format: l.format })) };
}

/**
 * What the launcher needs to boot a config: stored kernel/initrd and firmware resolved to
 * files in the store, the NVRAM's chain from `chainOf` (the VM's active one, or a revert's
 * new overlay).
 */
function launchBoot(ctx: Context, config: VmConfig, chainOf: (slot: string) => LaunchDisk): Pick<LaunchSpec, 'kernel' | 'initrd' | 'firmware'> {
  const { boot } = config;
  const out: Pick<LaunchSpec, 'kernel' | 'initrd' | 'firmware'> = {};
  const kernel = boot.kernelFile ? requireBootFile(ctx.paths, boot.kernelFile, 'kernel') : boot.kernel;
  const initrd = boot.initrdFile ? requireBootFile(ctx.paths, boot.initrdFile, 'initrd') : boot.initrd;
  if (kernel) out.kernel = kernel;
  if (initrd) out.initrd = initrd;
  if (isUefi(config)) {
    out.firmware = { code: requireBootFile(ctx.paths, config.firmware.code, 'UEFI firmware code'), nvram: chainOf(NVRAM_SLOT) };
  }
  return out;
}

async function assertStopped(ctx: Context, vm: VmRecord): Promise<void> {
  const rt = await probeRuntime(ctx.paths.run, vm.id);
  if (rt.state !== 'stopped') {
    throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' is already ${rt.state === 'unknown' ? 'started' : rt.state}`, {
      hint: rt.state === 'paused' ? `resume it with 'vmsnap resume ${vm.name}'` : `stop it first with 'vmsnap stop ${vm.name}'`,
      details: { vm: vm.name, state: rt.state },
    });
  }
}

type LaunchOptions = StartOptions & { incomingDefer?: boolean; ramImage?: string; machineType?: string };

/** Start QEMU for a VM whose lock the caller holds (start, revert, a fork of a clone). Returns its pid. */
export async function startLocked(ctx: Context, vm: VmRecord, opts: LaunchOptions = {}): Promise<number> {
  await assertStopped(ctx, vm);
  const pid = await launch(ctx, vm, vm.config, (slot) => launchChain(ctx, vm, slot), runtimeFiles(ctx.paths.run, vm.id), opts);
  emitState(ctx, vm, opts.incomingDefer ? 'restoring' : opts.paused ? 'paused' : 'running');
  return pid;
}

/**
 * Start the QEMU a VM is about to have (a revert's: the snapshot's config, the new
 * overlays of its disks and NVRAM in `chains`) beside the one it has now, in a staging
 * runtime folder, so that its start overlaps the rest of the revert; promoteStaged() makes
 * it the VM's once the present one is gone. Frozen layers may be open in both (read-only);
 * the writable layers differ.
 */
export async function startStaged(ctx: Context, vm: VmRecord, config: VmConfig, chains: LaunchDisk[], opts: LaunchOptions = {}): Promise<{ pid: number; files: RuntimeFiles }> {
  const files = stagingFiles(ctx.paths.run, vm.id);
  await killQemu(files); // one left by a killed vmsnap
  const chainOf = (slot: string): LaunchDisk => {
    const c = chains.find((x) => x.slot === slot);
    if (!c) throw new VmsnapError('INTERNAL', `no layers for ${slot} of VM '${vm.name}'`);
    return c;
  };
  return { pid: await launch(ctx, vm, config, chainOf, files, opts), files };
}

/** The staged QEMU becomes the VM's (its sockets move with its folder); the present one must be gone. */
export function promoteStaged(ctx: Context, vm: VmRecord): void {
  const files = runtimeFiles(ctx.paths.run, vm.id);
  if (livePid(files) !== undefined) throw new VmsnapError('INTERNAL', `VM '${vm.name}' still has a QEMU: the staged one cannot take its place`);
  cleanRuntime(files);
  renameSync(stagingFiles(ctx.paths.run, vm.id).dir, files.dir);
}

/** QEMU for `config` on the chains `chainOf` gives (disks in the config's order, the NVRAM of a UEFI VM), in `files`. */
async function launch(ctx: Context, vm: VmRecord, config: VmConfig, chainOf: (slot: string) => LaunchDisk, files: RuntimeFiles, opts: LaunchOptions): Promise<number> {
  const boot = config.boot;
  const bootFiles = launchBoot(ctx, config, chainOf);
  let kernel = bootFiles.kernel;
  let initrd = bootFiles.initrd;
  if (boot.image === 'demo') {
    const img = await ensureDemoImage(ctx.paths.imageCache, opts.log);
    kernel = img.kernel;
    initrd = img.initrd;
  }
  const { accel } = await resolveAccelerator(opts.accel ?? 'auto', {
    imageCache: ctx.paths.imageCache,
    cacheFile: join(ctx.paths.home, 'kvm-probe.json'),
  });
  // Forwards and bridges are checked here, before QEMU, for every way a VM starts (start, revert, clone --start).
  await checkNetwork(ctx, vm, config, 'INVALID_STATE');
  const launched = await resolvePorts(config);
  const seed = config.cloudInit ? await renderSeed(ctx.paths, vm.id, vm.name, config.cloudInit) : undefined;
  const { pid } = await launchQemu({
    vmId: vm.id,
    vmName: vm.name,
    config: launched,
    ...(seed ? { seed } : {}),
    ...(kernel ? { kernel } : {}),
    ...(initrd ? { initrd } : {}),
    disks: config.disks.map((d) => chainOf(d.slot)),
    ...(bootFiles.firmware ? { firmware: bootFiles.firmware } : {}),
    accel,
    files,
    paused: opts.paused ?? false,
    incomingDefer: opts.incomingDefer ?? false,
    ...(opts.ramImage ? { ramImage: opts.ramImage } : {}),
    ...(opts.machineType ? { machineType: opts.machineType } : {}),
  });
  await recordEndpoints(files, launched);
  return pid;
}

export async function startVm(ctx: Context, vm: VmRecord, opts: StartOptions = {}): Promise<void> {
  await withVm(ctx, vm, 'start', async () => {
    // Refused before anything is journaled.
    await assertStopped(ctx, vm);
    await checkNetwork(ctx, vm, ctx.catalog.getVm(vm.id).config, 'INVALID_STATE');
    await runOperation(ctx, vmStart, { vm, plan: { paused: opts.paused ?? false } }, async () => {
      await startLocked(ctx, ctx.catalog.getVm(vm.id), opts);
    });
  });
}

/**
 * Power off: ACPI power button, wait up to timeoutMs for the guest to shut
 * down, then quit QEMU. `force` quits at once (like pulling the plug, but
 * QEMU still flushes its caches to the layer files).
 */
export async function stopLocked(ctx: Context, vm: VmRecord, opts: StopOptions = {}): Promise<void> {
  const files = runtimeFiles(ctx.paths.run, vm.id);
  const pid = livePid(files);
  if (pid === undefined) {
    cleanRuntime(files);
    throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' is not running`, { details: { vm: vm.name, state: 'stopped' } });
  }
  const qmp = await connectQmp(ctx.paths.run, vm).catch(() => undefined);
  try {
    if (qmp && !opts.force) {
      const s = await qmp.execute<{ running: boolean; status: string }>('query-status');
      // A paused guest cannot hear the power button: let it run to shut down cleanly.
      if (!s.running && s.status === 'paused') await qmp.execute('cont');
      await qmp.execute('system_powerdown');
      if (await waitForExit(pid, opts.timeoutMs ?? 60_000)) return;
    }
    if (qmp && !qmp.closed) await qmp.execute('quit', {}, { timeoutMs: 5000 }).catch(() => undefined);
    if (!(await waitForExit(pid, 10_000))) await killQemu(files);
  } finally {
    await qmp?.close().catch(() => undefined);
    cleanRuntime(files);
    emitState(ctx, vm, 'stopped');
  }
}

export async function stopVm(ctx: Context, vm: VmRecord, opts: StopOptions = {}): Promise<void> {
  await withVm(ctx, vm, 'stop', async () => {
    // Refused before anything is journaled: a stopped VM has nothing to stop.
    if (livePid(runtimeFiles(ctx.paths.run, vm.id)) === undefined) return stopLocked(ctx, vm, opts);
    return runOperation(ctx, vmStop, { vm, plan: { force: opts.force ?? false } }, () => stopLocked(ctx, vm, opts));
  });
}

/** Stop or continue the vCPUs. */
export async function setRunning(ctx: Context, vm: VmRecord, run: boolean): Promise<void> {
  await withVm(ctx, vm, run ? 'resume' : 'pause', async () => {
    const qmp = await connectQmp(ctx.paths.run, vm);
    try {
      const s = await qmp.execute<{ running: boolean; status: string }>('query-status');
      if (s.running === run) {
        throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' is already ${run ? 'running' : 'paused'}`, {
          details: { vm: vm.name, state: s.status },
        });
      }
      if (run && s.status !== 'paused') {
        throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' cannot be resumed from QEMU state '${s.status}'`);
      }
      await qmp.execute(run ? 'cont' : 'stop');
    } finally {
      await qmp.close();
    }
    emitState(ctx, vm, run ? 'running' : 'paused');
  });
}
