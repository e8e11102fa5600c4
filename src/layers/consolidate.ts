import { z } from 'zod';
import type { VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import type { MergeReport } from '../contract/views.js';
import { defineOperation } from '../operations/define.js';
import type { Op } from '../operations/op.js';
import { rollForward } from '../operations/recovery.js';
import { runOperation, withVm } from '../operations/runner.js';
import type { QmpClient } from '../qemu/qmp.js';
import { connectQmp, probeRuntime } from '../qemu/runtime.js';
import { fileBytes, removeFiles } from '../util/files.js';
import { killOrphanHelper } from '../util/process.js';
import { applyMergeToCatalog, catalogGraph, nextAction, performMerge, type MergeAction } from './merge.js';

export const MergeActionSchema: z.ZodType<MergeAction> = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('drop'), layerId: z.string() }),
  z.object({ kind: z.literal('stream'), lowerId: z.string(), upperId: z.string() }),
  z.object({ kind: z.literal('commit'), lowerId: z.string(), upperId: z.string() }),
]);

/** What an operation that merges layers keeps in its plan, so a crash mid-merge is redone from scratch. */
export const MergePlanFields = {
  /** Layers to look at: each is dropped, merged with the one above it, or left (see merge.ts). */
  candidates: z.array(z.string()),
  /** The merge under way, so recovery knows what to redo. */
  pending: MergeActionSchema.optional(),
  /** A helper process doing that merge, for recovery to stop if it outlived vmsnap. */
  helperPid: z.number().int().optional(),
};
export interface MergePlan {
  candidates: string[];
  pending?: MergeAction | undefined;
  helperPid?: number | undefined;
}

/** The layers a running VM's QEMU has open: every layer of every disk's chain. */
export function openLayersOf(ctx: Context, vm: VmRecord): Set<string> {
  const out = new Set<string>();
  for (const top of Object.values(ctx.catalog.activeLayers(vm.id))) for (const l of ctx.catalog.chain(top)) out.add(l.id);
  return out;
}

const subject = (a: MergeAction): string => (a.kind === 'drop' ? a.layerId : a.lowerId);

/**
 * Merge every candidate layer that no longer needs to stand alone, one journal
 * step per merge (online with block jobs while the VM runs, offline in a
 * storage daemon). Each merge is idempotent and redone from scratch after a
 * crash; the catalog follows only once the files are merged, and files go
 * only after the catalog stopped naming them.
 */
export async function mergeCandidates<P extends MergePlan>(
  ctx: Context,
  vm: VmRecord,
  op: Op<P, string>,
  onProgress?: (done: number, total: number, what: string) => void,
): Promise<MergeReport[]> {
  const { catalog } = ctx;
  const plan = op.plan;
  await killOrphanHelper(plan.helperPid, /qemu-img|qemu-storage-daemon/);
  const rt = await probeRuntime(ctx.paths.run, vm.id);
  let qmp: QmpClient | undefined;
  const merges: MergeReport[] = [];
  try {
    if (rt.state !== 'stopped') qmp = await connectQmp(ctx.paths.run, vm);
    const graph = catalogGraph(catalog);
    const queue = [...(plan.pending ? [subject(plan.pending)] : []), ...plan.candidates];
    while (queue.length > 0) {
      const layerId = queue.shift()!;
      // A pending merge is redone as planned; otherwise the catalog says what to do now.
      const action = plan.pending && subject(plan.pending) === layerId ? plan.pending : nextAction(graph, layerId);
      if (!action) continue;
      const layer = catalog.getLayer(subject(action));
      const openLayers = qmp ? openLayersOf(ctx, vm) : new Set<string>();
      const online = action.kind !== 'drop' && openLayers.has(action.upperId);
      const bytes = action.kind === 'commit' ? fileBytes(catalog.getLayer(action.upperId).path) : fileBytes(layer.path);
      plan.pending = action;
      op.savePlan();
      op.fault('merging');
      const what =
        action.kind === 'drop' ? `drop layer ${layer.id}` : action.kind === 'stream' ? `stream ${action.lowerId} into ${action.upperId}` : `commit ${action.upperId} into ${action.lowerId}`;
      await performMerge(action, {
        catalog,
        ...(qmp ? { qmp } : {}),
        openLayers,
        onHelper: (pid) => {
          plan.helperPid = pid;
          op.savePlan();
        },
        onProgress: (done, total) => {
          onProgress?.(done, total, what);
          op.progress(what, done, total);
        },
      });
      let files: string[] = [];
      delete plan.pending;
      delete plan.helperPid;
      op.done(op.step + 1, () => {
        files = applyMergeToCatalog(catalog, action);
        op.savePlan();
      });
      removeFiles(files);
      // Report the layer that went away, and where its data went.
      merges.push(
        action.kind === 'drop'
          ? { kind: 'drop', layer: action.layerId, online, bytes }
          : action.kind === 'stream'
            ? { kind: 'stream', layer: action.lowerId, into: action.upperId, online, bytes }
            : { kind: 'commit', layer: action.upperId, into: action.lowerId, online, bytes },
      );
      // Dropping a layer may leave the one below it unneeded in turn.
      if (action.kind === 'drop' && layer.backingId) queue.unshift(layer.backingId);
    }
  } finally {
    await qmp?.close();
  }
  return merges;
}

/**
 * Consolidate: merge layers of a VM that another VM no longer needs (a linked
 * clone was removed). Always carried forward.
 */
export const consolidate = defineOperation({
  kind: 'consolidate',
  plan: z.object(MergePlanFields),
  steps: 0,
  // 'merging' (in mergeCandidates) is reached only when a released layer can be merged; the contract test kills it at 0.
  faults: [],
  onFailure: 'leave',
  files: () => [],
  recover: (ctx, op, vm) => rollForward(op, vm, (v) => mergeCandidates(ctx, v, op)),
});

/** Merge what a removed linked clone held onto in its source VM. */
export async function consolidateReleased(ctx: Context, ownerVmId: string, layerIds: string[]): Promise<MergeReport[]> {
  const owner = ctx.catalog.findVm(ownerVmId);
  if (!owner) return [];
  return withVm(ctx, owner, 'consolidate', () =>
    runOperation(ctx, consolidate, { vm: owner, plan: { candidates: layerIds } }, (op) => mergeCandidates(ctx, owner, op)),
  );
}
