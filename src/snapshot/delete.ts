import { rmSync } from 'node:fs';
import type { SnapshotRecord, VmRecord } from '../catalog/catalog.js';
import { faultPoint, type OperationRecord } from '../catalog/journal.js';
import type { Context } from '../context.js';
import type { QmpClient } from '../qemu/qmp.js';
import { isProcessAlive, processCmdline } from '../util/process.js';
import { fileBytes } from '../vm/machines.js';
import { connectQmp, probeRuntime } from '../vm/runtime.js';
import { applyMergeToCatalog, catalogGraph, nextAction, performMerge, removeFiles, type MergeAction } from './consolidate.js';

export interface DeletePlan {
  snapshotId: string;
  name: string;
  stateFile: string | null;
  /** Layers to look at once the snapshot is gone (its frozen layer per disk). */
  candidates: string[];
  /** The merge under way, so recovery knows what to redo. */
  pending?: MergeAction;
  /** A helper process doing that merge, for recovery to stop if it outlived vmsnap. */
  helperPid?: number;
}

export interface MergeReport {
  kind: MergeAction['kind'];
  layer: string;
  into?: string;
  online: boolean;
  bytes: number;
}

/** Bytes a VM's layers and state files take now (what a delete must never increase). */
export function vmDiskUsage(ctx: Context, vmId: string): number {
  const layers = ctx.catalog.listLayers(vmId).filter((l) => !l.external);
  const states = ctx.catalog.listSnapshots(vmId).flatMap((s) => (s.stateFile ? [s.stateFile] : []));
  return [...layers.map((l) => l.path), ...states].reduce((a, p) => a + fileBytes(p), 0);
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
    const active = (ctx.catalog.db.prepare('SELECT 1 FROM active_layers WHERE layer_id = ?').get(layerId) as unknown) !== undefined;
    const kids = g.children(layerId);
    if (namedElsewhere || active || kids.length !== 1) continue;
    need += Math.min(g.bytes(layerId), g.bytes(kids[0]!.id));
  }
  return need;
}

/** The layers a running VM's QEMU has open: every layer of every disk's chain. */
export function openLayersOf(ctx: Context, vm: VmRecord): Set<string> {
  const out = new Set<string>();
  for (const top of Object.values(ctx.catalog.activeLayers(vm.id))) for (const l of ctx.catalog.chain(top)) out.add(l.id);
  return out;
}

/**
 * Delete a snapshot whose VM lock the caller holds. Journaled: the snapshot is
 * marked 'deleting' (hidden, no longer revertable), then its row goes (its
 * children re-parented to its parent) with its state file, then each layer
 * that no longer needs to stand alone is merged, one journal step per merge.
 * From the first step on, the operation only rolls forward.
 */
export async function deleteSnapshotLocked(
  ctx: Context,
  vm: VmRecord,
  snap: SnapshotRecord,
  onProgress?: (done: number, total: number, what: string) => void,
): Promise<{ merges: MergeReport[]; operationId: string }> {
  const plan: DeletePlan = { snapshotId: snap.id, name: snap.name, stateFile: snap.stateFile, candidates: Object.values(snap.layers) };
  const op = ctx.journal.begin('snapshot-delete', vm.id, plan);
  ctx.events.emitEvent({ type: 'operation', operationId: op.id, vm: vm.name, kind: 'snapshot-delete', status: 'started' });
  try {
    const merges = await rollDeleteForward(ctx, vm, op, onProgress);
    ctx.events.emitEvent({ type: 'operation', operationId: op.id, vm: vm.name, kind: 'snapshot-delete', status: 'done' });
    return { merges, operationId: op.id };
  } catch (e) {
    // Half-merged files are sound (each merge is redone from scratch); recovery finishes the job.
    // If even the journal cannot be written (a full disk), the row stays 'running' and recovery still finds it.
    try {
      ctx.catalog.db.prepare("UPDATE operations SET status = 'interrupted', error = ? WHERE id = ?").run(String((e as Error).message ?? e), op.id);
    } catch {
      /* keep the original error */
    }
    ctx.events.emitEvent({ type: 'operation', operationId: op.id, vm: vm.name, kind: 'snapshot-delete', status: 'failed', error: String(e) });
    throw e;
  }
}

/** Carry a snapshot-delete operation to its end from wherever it stopped. Used by delete and by recovery. */
export async function rollDeleteForward(
  ctx: Context,
  vm: VmRecord,
  op: OperationRecord<DeletePlan>,
  onProgress?: (done: number, total: number, what: string) => void,
): Promise<MergeReport[]> {
  const { catalog, journal } = ctx;
  const plan = op.plan;
  stopOrphanHelper(plan.helperPid);
  const snap = catalog.findSnapshotById(plan.snapshotId);
  if (snap && op.step < 1) journal.step(op, 1, () => catalog.updateSnapshot(snap.id, { status: 'deleting' }));
  if (op.step < 2) {
    journal.step(op, 2, () => {
      const s = catalog.findSnapshotById(plan.snapshotId);
      if (!s) return;
      catalog.db.prepare('UPDATE snapshots SET parent_id = ? WHERE parent_id = ?').run(s.parentId, s.id);
      const current = catalog.findVm(vm.id)?.currentSnapshotId;
      if (current === s.id) catalog.setCurrentSnapshot(vm.id, s.parentId);
      catalog.deleteSnapshot(s.id);
    });
  }
  if (plan.stateFile) rmSync(plan.stateFile, { force: true });

  const rt = await probeRuntime(ctx.paths.run, vm.id);
  let qmp: QmpClient | undefined;
  const merges: MergeReport[] = [];
  try {
    if (rt.state !== 'stopped') qmp = await connectQmp(ctx.paths.run, vm);
    const graph = catalogGraph(catalog);
    const queue = [...(plan.pending ? [plan.pending.kind === 'drop' ? plan.pending.layerId : plan.pending.lowerId] : []), ...plan.candidates];
    let step = Math.max(op.step, 2);
    while (queue.length > 0) {
      const layerId = queue.shift()!;
      // A pending merge is redone as planned; otherwise the catalog says what to do now.
      const action = plan.pending && (plan.pending.kind === 'drop' ? plan.pending.layerId : plan.pending.lowerId) === layerId ? plan.pending : nextAction(graph, layerId);
      if (!action) continue;
      const layer = catalog.getLayer(action.kind === 'drop' ? action.layerId : action.lowerId);
      const openLayers = qmp ? openLayersOf(ctx, vm) : new Set<string>();
      const online = action.kind !== 'drop' && openLayers.has(action.upperId);
      const bytes = action.kind === 'drop' ? fileBytes(layer.path) : action.kind === 'stream' ? fileBytes(layer.path) : fileBytes(catalog.getLayer(action.upperId).path);
      plan.pending = action;
      journal.updatePlan(op, plan);
      faultPoint(op.kind, 'merging');
      const what = action.kind === 'drop' ? `drop layer ${layer.id}` : `${action.kind} ${action.kind === 'stream' ? `${action.lowerId} into ${action.upperId}` : `${action.upperId} into ${action.lowerId}`}`;
      await performMerge(action, {
        catalog,
        ...(qmp ? { qmp } : {}),
        openLayers,
        onHelper: (pid) => {
          plan.helperPid = pid;
          journal.updatePlan(op, plan);
        },
        onProgress: (done, total) => {
          onProgress?.(done, total, what);
          ctx.events.emitEvent({ type: 'progress', operationId: op.id, vm: vm.name, what, done, total });
        },
      });
      let files: string[] = [];
      step++;
      delete plan.pending;
      delete plan.helperPid;
      journal.step(op, step, () => {
        files = applyMergeToCatalog(catalog, action);
        catalog.db.prepare('UPDATE operations SET plan = ? WHERE id = ?').run(JSON.stringify(plan), op.id);
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
  journal.finish(op, 'done');
  return merges;
}

/** A qemu-img or storage daemon left running by a killed vmsnap holds the layers' locks: stop it before redoing its work. */
function stopOrphanHelper(pid: number | undefined): void {
  if (pid === undefined || pid === process.pid || !isProcessAlive(pid)) return;
  const cmd = processCmdline(pid).join(' ');
  if (!/qemu-img|qemu-storage-daemon/.test(cmd)) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return;
  }
  for (let i = 0; i < 200 && isProcessAlive(pid); i++) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
}
