import { briefOf, type VmBrief, type VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import { NVRAM_SLOT } from '../contract/config.js';
import type { LayerInfo, VmInfo, VmSummary } from '../contract/views.js';
import { runtimeFiles } from '../qemu/launcher.js';
import { probeRuntime, type RuntimeStatus } from '../qemu/runtime.js';
import { memoryStateFiles } from '../paths.js';
import { fileBytes } from '../util/files.js';
import { readEndpoints } from './network.js';

/** How the CLI, the API and the UI see VMs: summaries, and the full picture of one. */

export function summarize(ctx: Context, vm: VmBrief, rt: RuntimeStatus): VmSummary {
  const snaps = ctx.catalog.snapshotSummary(vm.id, vm.currentSnapshotId);
  return {
    id: vm.id,
    name: vm.name,
    state: rt.state,
    ...(rt.pid !== undefined ? { pid: rt.pid } : {}),
    ...(rt.qemuStatus !== undefined ? { qemuStatus: rt.qemuStatus } : {}),
    memoryMiB: vm.memoryMiB,
    cpus: vm.cpus,
    disks: vm.disks,
    snapshots: snaps.count,
    currentSnapshot: snaps.currentName,
    createdAt: vm.createdAt,
    ...(rt.staleCleaned ? { staleCleaned: true } : {}),
    policy: ctx.catalog.findPolicy(vm.id)?.spec.schedule ?? null,
    protectedSnapshots: snaps.protectedCount,
  };
}

export async function vmStatus(ctx: Context, vm: VmRecord): Promise<VmSummary> {
  return summarize(ctx, briefOf(vm), await probeRuntime(ctx.paths.run, vm.id));
}

/** Every VM's summary: configs are not parsed whole (see VmBrief); the runtimes are probed side by side. */
export async function listVms(ctx: Context): Promise<VmSummary[]> {
  return Promise.all(ctx.catalog.listVmBriefs().map(async (vm) => summarize(ctx, vm, await probeRuntime(ctx.paths.run, vm.id))));
}

/** Bytes a VM's own layers and state files take now (imported images not counted): what a delete must never increase. */
export function vmDiskUsage(ctx: Context, vmId: string): number {
  const layers = ctx.catalog.listLayers(vmId).filter((l) => !l.external);
  const states = ctx.catalog.listSnapshots(vmId).flatMap((s) => memoryStateFiles(s.stateFile));
  return [...layers.map((l) => l.path), ...states].reduce((a, p) => a + fileBytes(p), 0);
}

export async function vmInfo(ctx: Context, vm: VmRecord): Promise<VmInfo> {
  const summary = await vmStatus(ctx, vm);
  const active = ctx.catalog.activeLayers(vm.id);
  const chainOf = (slot: string): LayerInfo[] =>
    active[slot]
      ? ctx.catalog.chain(active[slot]!).map((l) => ({
          id: l.id,
          path: l.path,
          format: l.format,
          frozen: l.frozen,
          external: l.external,
          bytes: fileBytes(l.path),
        }))
      : [];
  const diskChains = vm.config.disks.map((d) => ({ slot: d.slot, sizeBytes: d.sizeBytes, chain: chainOf(d.slot) }));
  const files = runtimeFiles(ctx.paths.run, vm.id);
  const endpoints = summary.state !== 'stopped' ? readEndpoints(files) : undefined;
  return {
    ...summary,
    config: vm.config,
    ...(endpoints ? { endpoints } : {}),
    diskUsageBytes: vmDiskUsage(ctx, vm.id),
    diskChains,
    ...(vm.config.firmware?.type === 'uefi' ? { nvramChain: chainOf(NVRAM_SLOT) } : {}),
    runtimeDir: files.dir,
  };
}
