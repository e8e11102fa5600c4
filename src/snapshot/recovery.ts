import { existsSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { OperationRecord } from '../catalog/journal.js';
import type { Context } from '../context.js';
import { checkImage, commitImage, repairLeaks } from '../qemu/qemu-img.js';
import type { QmpClient } from '../qemu/qmp.js';
import { isProcessAlive } from '../util/process.js';
import { connectQmp, probeRuntime } from '../vm/runtime.js';
import { rollDeleteForward, type DeletePlan } from './delete.js';
import { rollDetachForward } from './clone.js';
import { deviceTopNodes, mergeBackOverlays, removeOverlayNodes, type OverlaySwitch } from './live.js';
import { applyRevertToCatalog } from './snapshots.js';
import { formatNode } from '../qemu/launcher.js';
import { sleep } from '../util/process.js';

/**
 * Recovery: carry every unfinished operation in the journal to a state where
 * catalog, files and any running QEMU agree. Operations that had not reached
 * their point of no return are rolled back (the VM is left as it was); the
 * others are rolled forward.
 */
export interface RecoveredOperation {
  id: string;
  kind: string;
  vm: string | null;
  outcome: 'rolled_back' | 'rolled_forward';
  note?: string;
}

export interface RecoveryReport {
  operations: RecoveredOperation[];
  /** Files in the data dir that nothing referred to, removed. */
  orphansRemoved: string[];
}

interface CreatePlan {
  snapshotId: string;
  vmState: string;
  stateFile: string | null;
  switches: OverlaySwitch[];
  createFiles: string[];
}

interface RevertPlan {
  snapshotId: string;
  switches: OverlaySwitch[];
  createFiles: string[];
  removeLayers: string[];
  removeFiles: string[];
}

/** Operations of a VM that are not finished; under the VM's lock none of them can still be in flight. */
export function unfinishedFor(ctx: Context, vmId: string): OperationRecord[] {
  return ctx.journal.unfinished().filter((op) => op.vmId === vmId);
}

function removeUnreferenced(ctx: Context, files: string[]): void {
  const db = ctx.catalog.db;
  for (const f of files) {
    const layer = db.prepare('SELECT 1 FROM layers WHERE path = ?').get(f);
    const state = db.prepare('SELECT 1 FROM snapshots WHERE state_file = ?').get(f);
    if (!layer && !state) rmSync(f, { force: true });
  }
}

async function recoverSnapshotCreate(ctx: Context, op: OperationRecord): Promise<RecoveredOperation> {
  const plan = op.plan as unknown as CreatePlan;
  const vm = op.vmId ? ctx.catalog.findVm(op.vmId) : undefined;
  let note: string | undefined;
  if (vm) {
    const rt = await probeRuntime(ctx.paths.run, vm.id);
    if (rt.state !== 'stopped') {
      // QEMU outlived vmsnap: stop any save under way and move the disks back onto their old layers.
      const qmp: QmpClient = await connectQmp(ctx.paths.run, vm);
      try {
        const mig = await qmp.execute<{ status?: string }>('query-migrate');
        if (mig.status && ['setup', 'active', 'pre-switchover', 'device', 'cancelling'].includes(mig.status)) {
          await qmp.execute('migrate_cancel').catch(() => undefined);
          for (let i = 0; i < 200; i++) {
            const m = await qmp.execute<{ status?: string }>('query-migrate');
            if (m.status !== 'cancelling' && m.status !== 'active' && m.status !== 'pre-switchover') break;
            await sleep(25);
          }
        }
        const tops = await deviceTopNodes(qmp);
        const switched = plan.switches.filter((s) => tops[s.slot] === formatNode(s.newLayerId));
        await mergeBackOverlays(qmp, switched);
        await removeOverlayNodes(
          qmp,
          plan.switches.filter((s) => !switched.includes(s)),
        );
        const st = await qmp.queryStatus();
        if (plan.vmState === 'running' && !st.running) await qmp.execute('cont');
        note = switched.length ? 'merged the writes made since back into the previous layers' : undefined;
      } finally {
        await qmp.close();
      }
    } else {
      // QEMU is gone too: writes it made into a new overlay go back down before the overlay is removed.
      for (const s of plan.switches) {
        if (existsSync(s.newPath)) await commitImage(s.newPath).catch(() => undefined);
      }
    }
  }
  removeUnreferenced(ctx, plan.createFiles);
  ctx.journal.finish(op, 'rolled_back', op.error ?? 'interrupted', () => {
    if (ctx.catalog.findSnapshotById(plan.snapshotId)) ctx.catalog.deleteSnapshot(plan.snapshotId);
  });
  return { id: op.id, kind: op.kind, vm: vm?.name ?? null, outcome: 'rolled_back', ...(note ? { note } : {}) };
}

async function recoverSnapshotRevert(ctx: Context, op: OperationRecord): Promise<RecoveredOperation> {
  const plan = op.plan as unknown as RevertPlan;
  const vm = op.vmId ? ctx.catalog.findVm(op.vmId) : undefined;
  const base = { id: op.id, kind: op.kind, vm: vm?.name ?? null };
  if (!vm) {
    removeUnreferenced(ctx, plan.createFiles);
    ctx.journal.finish(op, 'rolled_back', 'VM gone');
    return { ...base, outcome: 'rolled_back' };
  }
  if (op.step < 2) {
    const rt = await probeRuntime(ctx.paths.run, vm.id);
    const snap = ctx.catalog.findSnapshotById(plan.snapshotId);
    const untouched = op.step < 1 || rt.state !== 'stopped' || !snap;
    if (untouched) {
      // The old QEMU was not killed yet (or never ran): nothing of the present state was lost.
      removeUnreferenced(ctx, plan.createFiles);
      ctx.journal.finish(op, 'rolled_back', op.error ?? 'interrupted');
      return { ...base, outcome: 'rolled_back' };
    }
    ctx.journal.step(op, 2, () => applyRevertToCatalog(ctx.catalog, vm, snap, plan.switches, plan.removeLayers, new Date().toISOString()));
  }
  for (const f of plan.removeFiles) rmSync(f, { force: true });
  ctx.journal.finish(op, 'done', op.step < 3 ? 'interrupted: reverted on disk, VM left off' : undefined);
  return { ...base, outcome: 'rolled_forward', note: 'reverted; the VM is left off' };
}

async function recoverOne(ctx: Context, op: OperationRecord): Promise<RecoveredOperation> {
  const vm = op.vmId ? ctx.catalog.findVm(op.vmId) : undefined;
  const base = { id: op.id, kind: op.kind, vm: vm?.name ?? null };
  switch (op.kind) {
    case 'snapshot-create':
      return recoverSnapshotCreate(ctx, op);
    case 'snapshot-revert':
      return recoverSnapshotRevert(ctx, op);
    case 'snapshot-delete': {
      if (!vm) {
        ctx.journal.finish(op, 'failed', 'VM gone');
        return { ...base, outcome: 'rolled_forward', note: 'VM gone' };
      }
      const typed = op as unknown as OperationRecord<DeletePlan>;
      await rollDeleteForward(ctx, vm, typed);
      return { ...base, outcome: 'rolled_forward' };
    }
    case 'detach-clone': {
      if (vm) await rollDetachForward(ctx, vm, op as unknown as OperationRecord<{ layers: string[] }>);
      else ctx.journal.finish(op, 'failed', 'VM gone');
      return { ...base, outcome: 'rolled_forward' };
    }
    case 'consolidate': {
      if (vm) await rollDeleteForward(ctx, vm, op as unknown as OperationRecord<DeletePlan>);
      else ctx.journal.finish(op, 'failed', 'VM gone');
      return { ...base, outcome: 'rolled_forward' };
    }
    case 'create-vm':
    case 'clone-vm':
    case 'import-vm':
    case 'set-vm': {
      // Their catalog rows are written in the transaction that finishes them: unfinished means uncommitted.
      removeUnreferenced(ctx, (op.plan.createFiles as string[] | undefined) ?? []);
      ctx.journal.finish(op, 'rolled_back', op.error ?? 'interrupted');
      return { ...base, outcome: 'rolled_back' };
    }
    case 'rm-vm': {
      if (op.step < 1) {
        ctx.journal.finish(op, 'rolled_back', 'interrupted');
        return { ...base, outcome: 'rolled_back' };
      }
      for (const f of (op.plan.removeFiles as string[] | undefined) ?? []) rmSync(f, { force: true });
      ctx.journal.finish(op, 'done');
      return { ...base, outcome: 'rolled_forward' };
    }
    default:
      ctx.journal.finish(op, 'failed', `unknown operation kind '${op.kind}'`);
      return { ...base, outcome: 'rolled_back', note: 'unknown kind' };
  }
}

/** Recover a VM's unfinished operations. The caller holds the VM's lock. */
export async function recoverVm(ctx: Context, vmId: string): Promise<RecoveredOperation[]> {
  const out: RecoveredOperation[] = [];
  for (const op of unfinishedFor(ctx, vmId)) {
    if (inFlightElsewhere(op)) continue;
    out.push(await recoverOne(ctx, op));
  }
  if (out.length > 0) await repairLeakedClusters(ctx, vmId);
  return out;
}

/**
 * A QEMU or qemu-img killed while writing can leave clusters allocated but
 * unused in a qcow2 file: no data is at risk, but the space is lost and
 * qemu-img check reports it. Repair them in layers nothing has open.
 */
async function repairLeakedClusters(ctx: Context, vmId: string): Promise<void> {
  const vm = ctx.catalog.findVm(vmId);
  if (!vm || (await probeRuntime(ctx.paths.run, vmId)).state !== 'stopped') return;
  for (const l of ctx.catalog.listLayers(vmId)) {
    if (l.external || l.format !== 'qcow2' || !existsSync(l.path) || ctx.catalog.foreignDependents(l.id).length > 0) continue;
    const check = await checkImage(l.path).catch(() => undefined);
    if (check && check.leaks > 0 && check.corruptions === 0) await repairLeaks(l.path);
  }
}

/** An operation a live process is still carrying out (an unlocked create of a new VM, say). */
function inFlightElsewhere(op: OperationRecord): boolean {
  return op.status === 'running' && op.pid !== process.pid && isProcessAlive(op.pid);
}

/**
 * Files in the layers and states folders that neither the catalog nor an
 * unfinished operation refers to. Only a quiet data dir is swept: an
 * operation of a live process may be about to record the file it just made.
 */
export function findOrphans(ctx: Context): string[] {
  const db = ctx.catalog.db;
  const known = new Set<string>([
    ...(db.prepare('SELECT path FROM layers').all() as { path: string }[]).map((r) => r.path),
    ...(db.prepare('SELECT state_file FROM snapshots WHERE state_file IS NOT NULL').all() as { state_file: string }[]).map((r) => r.state_file),
  ]);
  for (const op of ctx.journal.unfinished()) {
    for (const f of [...((op.plan.createFiles as string[] | undefined) ?? []), ...((op.plan.removeFiles as string[] | undefined) ?? [])]) known.add(f);
  }
  const out: string[] = [];
  for (const dir of [ctx.paths.layers, ctx.paths.states]) {
    if (!existsSync(dir)) continue;
    for (const f of readdirSync(dir)) {
      const p = join(dir, f);
      if (!known.has(p)) out.push(p);
    }
  }
  return out;
}

/** True while a live process other than this one has an operation under way. */
export function othersAtWork(ctx: Context): boolean {
  return ctx.journal.unfinished().some(inFlightElsewhere);
}
