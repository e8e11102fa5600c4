import { rmSync, statfsSync } from 'node:fs';
import { z } from 'zod';
import type { SnapshotRecord, VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import { formatBytes } from '../contract/format.js';
import type { DeleteResult, MergeReport } from '../contract/views.js';
import { VmsnapError } from '../errors.js';
import { mergeCandidates, MergePlanFields } from '../layers/consolidate.js';
import { catalogGraph } from '../layers/merge.js';
import { defineOperation } from '../operations/define.js';
import type { Op } from '../operations/op.js';
import { rollForward } from '../operations/recovery.js';
import { runOperation, withVm } from '../operations/runner.js';
import { memoryStateFiles } from '../paths.js';
import { vmDiskUsage } from '../vm/info.js';
import { detachClone, directClones } from './clone-detach.js';
import { assertDeletable, isProtectedRefusal, protectedError } from './protect.js';
import { resolveSnapshot } from './views.js';

export interface DeleteOptions {
  /** Bytes copied so far of the merge under way. */
  onProgress?: (done: number, total: number, what: string) => void;
  /**
   * A snapshot that linked clones build on is pinned: by default deleting it is
   * refused, naming the clones; 'detach' first copies its data into each clone
   * (they no longer depend on this VM), then deletes it.
   */
  clones?: 'refuse' | 'detach';
}

const DeletePlan = z.object({
  snapshotId: z.string(),
  name: z.string(),
  stateFile: z.string().nullable(),
  ...MergePlanFields,
});
type DeletePlan = z.infer<typeof DeletePlan>;

/**
 * Delete a snapshot. Step 1: it is marked 'deleting' (hidden, no longer
 * revertable); step 2: its row goes (its children re-parented to its parent)
 * and then its state file; then each layer that no longer needs to stand
 * alone is merged, one step per merge. From step 1 on it only rolls forward,
 * and a failure (a full disk mid-merge) leaves it for recovery to finish.
 */
export const snapshotDelete = defineOperation({
  kind: 'snapshot-delete',
  plan: DeletePlan,
  steps: 2,
  faults: ['merging'],
  onFailure: 'leave',
  files: (p) => memoryStateFiles(p.stateFile),
  async recover(ctx, op, vm) {
    try {
      return await rollForward(op, vm, (v) => rollDeleteForward(ctx, v, op));
    } catch (e) {
      // Protected before its first step: nothing was touched, and nothing is.
      if (op.status === 'rolled_back') return { outcome: 'rolled_back', note: 'the snapshot was protected before its delete began' };
      throw e;
    }
  },
});

/** Carry a snapshot delete to its end from wherever it stopped: the delete itself and its recovery. */
async function rollDeleteForward(
  ctx: Context,
  vm: VmRecord,
  op: Op<DeletePlan, string>,
  onProgress?: (done: number, total: number, what: string) => void,
): Promise<MergeReport[]> {
  const { catalog } = ctx;
  const plan = op.plan;
  const snap = catalog.findSnapshotById(plan.snapshotId);
  if (snap && op.step < 1) {
    try {
      // Checked in the transaction that marks it 'deleting': a protect from another process cannot slip in between.
      op.done(1, () => {
        const s = catalog.findSnapshotById(snap.id);
        if (s?.protected) throw protectedError(vm, [s]);
        catalog.updateSnapshot(snap.id, { status: 'deleting' });
      });
    } catch (e) {
      if (isProtectedRefusal(e)) op.finish('rolled_back', e);
      throw e;
    }
  }
  if (op.step < 2) {
    op.done(2, () => {
      const s = catalog.findSnapshotById(plan.snapshotId);
      if (!s) return;
      catalog.reparentChildren(s.id, s.parentId);
      if (catalog.findVm(vm.id)?.currentSnapshotId === s.id) catalog.setCurrentSnapshot(vm.id, s.parentId);
      catalog.deleteSnapshot(s.id);
    });
  }
  // Unlinking a RAM image that a running VM maps (after a revert or a fork) is safe: the
  // VM keeps its pages, and the space comes back when the last such QEMU exits.
  for (const f of memoryStateFiles(plan.stateFile)) rmSync(f, { force: true });
  const merges = await mergeCandidates(ctx, catalog.getVm(vm.id), op, onProgress);
  op.finish('done');
  return merges;
}

/**
 * Bytes the merges that follow deleting this snapshot will copy (an estimate:
 * allocated file sizes), for a free-space check before anything is touched.
 */
export function estimateMergeBytes(ctx: Context, snap: SnapshotRecord): number {
  const g = catalogGraph(ctx.catalog);
  let need = 0;
  for (const layerId of Object.values(snap.layers)) {
    const namedElsewhere = ctx.catalog.snapshotsUsingLayer(layerId).some((u) => u.snapshotId !== snap.id);
    const kids = g.children(layerId);
    if (namedElsewhere || ctx.catalog.isActiveLayer(layerId) || kids.length !== 1) continue;
    need += Math.min(g.bytes(layerId), g.bytes(kids[0]!.id));
  }
  return need;
}

/** Refuse a delete whose merge cannot fit, before anything is touched (a merge that runs out of space midway is still recoverable). */
export function checkSpaceForMerge(ctx: Context, snap: SnapshotRecord): void {
  const need = estimateMergeBytes(ctx, snap);
  const fs = statfsSync(ctx.paths.layers);
  const free = fs.bavail * fs.bsize;
  if (need > free) {
    throw new VmsnapError('NO_SPACE', `deleting '${snap.name}' must merge about ${formatBytes(need)} but only ${formatBytes(free)} is free in ${ctx.paths.layers}`, {
      hint: 'free disk space first; nothing was changed',
      details: { needBytes: need, freeBytes: free },
    });
  }
}

/** Delete one snapshot whose VM lock the caller holds (inside a delete --all or a prune, `parent` is that operation). */
export async function deleteLocked(ctx: Context, vm: VmRecord, snap: SnapshotRecord, opts: DeleteOptions, parent?: { id: string }): Promise<MergeReport[]> {
  assertDeletable(vm, snap);
  const plan: DeletePlan = { snapshotId: snap.id, name: snap.name, stateFile: snap.stateFile, candidates: Object.values(snap.layers) };
  return runOperation(ctx, snapshotDelete, { vm, plan, ...(parent ? { parent } : {}) }, (op) => rollDeleteForward(ctx, vm, op, opts.onProgress));
}

/** Linked clones of these snapshots: refused unless they are to be detached first (each in its own operation). */
async function handleClones(ctx: Context, vm: VmRecord, snaps: SnapshotRecord[], opts: DeleteOptions): Promise<void> {
  const pinned = snaps.flatMap((s) => directClones(ctx, s).map((c) => ({ clone: c, snap: s })));
  if (pinned.length > 0 && opts.clones !== 'detach') {
    const names = pinned.map((p) => (snaps.length === 1 ? p.clone.name : `${p.clone.name} (on '${p.snap.name}')`));
    throw new VmsnapError(
      'INVALID_STATE',
      snaps.length === 1 ? `snapshot '${snaps[0]!.name}' is pinned by its linked clones: ${names.join(', ')}` : `VM '${vm.name}' has linked clones built on its snapshots: ${names.join(', ')}`,
      {
        hint: 'pass --detach-clones to copy their data into them first (they keep all their data), or remove the clones',
        details: { vm: vm.name, ...(snaps.length === 1 ? { snapshot: snaps[0]!.name } : {}), clones: names },
      },
    );
  }
  for (const { clone } of pinned) await withVm(ctx, clone, `detach from ${vm.name}`, () => detachClone(ctx, clone));
}

/**
 * Delete any snapshot — a leaf, an inner one, a branch point, the root, the
 * current one — while the VM runs or is off. Its delta is merged into what
 * depends on it; its memory state file goes with it.
 */
export async function deleteSnapshot(ctx: Context, vm: VmRecord, snapName: string, opts: DeleteOptions = {}): Promise<DeleteResult> {
  const snap = resolveSnapshot(ctx, vm, snapName);
  return withVm(ctx, vm, `snapshot delete ${snap.name}`, async () => {
    const target = resolveSnapshot(ctx, vm, snap.id);
    assertDeletable(vm, target);
    await handleClones(ctx, vm, [target], opts);
    checkSpaceForMerge(ctx, target);
    const before = vmDiskUsage(ctx, vm.id);
    const merges = await deleteLocked(ctx, ctx.catalog.getVm(vm.id), target, opts);
    return { deleted: [target.name], reclaimedBytes: Math.max(0, before - vmDiskUsage(ctx, vm.id)), merges };
  });
}

/**
 * Delete every snapshot (VMware's "Delete All"): one operation holding one
 * snapshot delete per snapshot, newest first (each then mostly drops leaves
 * and merges small deltas). Killed half way, recovery finishes the delete
 * under way and then the rest: it only rolls forward.
 */
export const snapshotDeleteAll = defineOperation({
  kind: 'snapshot-delete-all',
  plan: z.object({ snapshotIds: z.array(z.string()) }),
  steps: 0,
  faults: [],
  onFailure: 'leave',
  files: () => [],
  recover: (ctx, op, vm) => rollForward(op, vm, (v) => deleteRemaining(ctx, v, op, {})),
});

async function deleteRemaining(ctx: Context, vm: VmRecord, op: Op<{ snapshotIds: string[] }, string>, opts: DeleteOptions): Promise<{ deleted: string[]; merges: MergeReport[] }> {
  const deleted: string[] = [];
  const merges: MergeReport[] = [];
  for (const id of op.plan.snapshotIds) {
    const s = ctx.catalog.findSnapshotById(id);
    // One protected after the delete --all began is left alone.
    if (!s || s.status !== 'ready' || s.protected) continue;
    try {
      merges.push(...(await deleteLocked(ctx, ctx.catalog.getVm(vm.id), s, opts, op)));
    } catch (e) {
      if (isProtectedRefusal(e)) continue;
      throw e;
    }
    deleted.push(s.name);
  }
  return { deleted, merges };
}

export async function deleteAllSnapshots(ctx: Context, vm: VmRecord, opts: DeleteOptions = {}): Promise<DeleteResult> {
  return withVm(ctx, vm, 'snapshot delete --all', async () => {
    const all = ctx.catalog.listSnapshots(vm.id).filter((s) => s.status === 'ready');
    // All or nothing: a delete --all that would have to skip protected snapshots deletes none.
    const guarded = all.filter((s) => s.protected);
    if (guarded.length > 0) throw protectedError(vm, guarded, true);
    await handleClones(ctx, vm, all, opts);
    const before = vmDiskUsage(ctx, vm.id);
    const snapshotIds = ctx.catalog
      .listSnapshots(vm.id)
      .filter((s) => s.status === 'ready')
      .reverse()
      .map((s) => s.id);
    const { deleted, merges } = await runOperation(ctx, snapshotDeleteAll, { vm, plan: { snapshotIds } }, (op) => deleteRemaining(ctx, vm, op, opts));
    return { deleted, reclaimedBytes: Math.max(0, before - vmDiskUsage(ctx, vm.id)), merges };
  });
}
