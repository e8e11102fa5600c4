import { existsSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { VmRecord } from '../catalog/catalog.js';
import type { JournalRecord } from '../catalog/journal.js';
import { recordedFiles } from '../catalog/records.js';
import type { Context } from '../context.js';
import type { RecoveredOperation } from '../contract/views.js';
import { VmsnapError } from '../errors.js';
import { checkImage, repairLeaks } from '../qemu/qemu-img.js';
import { referencedBootFiles, storedBootFiles } from '../store/boot-files.js';
import { probeRuntime } from '../qemu/runtime.js';
import { isProcessAlive } from '../util/process.js';
import type { AnyOperationDef, Recovered } from './define.js';
import { Op, runningHere } from './op.js';

/**
 * Recovery: carry every unfinished operation in the journal to a state where
 * catalog, files and any running QEMU agree. Each operation's definition says
 * how: those that had not reached their point of no return are rolled back
 * (the VM is left as it was), the others rolled forward.
 */

/**
 * An operation still being carried out: by this process (an export that holds
 * the VM's lock only part of the time, the delete --all around a delete), or
 * by another live one (an unlocked create of a new VM, say).
 */
export function inFlight(op: JournalRecord): boolean {
  if (runningHere.has(op.id)) return true;
  return op.status === 'running' && op.pid !== process.pid && isProcessAlive(op.pid);
}

/** The definition of a journaled operation and its plan, parsed; a kind or plan this vmsnap does not know is a clear error. */
export async function definitionOf(ctx: Context, rec: JournalRecord): Promise<{ def: AnyOperationDef; plan: unknown }> {
  const def = (await ctx.registry()).lookup(rec.kind);
  if (!def) {
    throw new VmsnapError('CATALOG_ERROR', `unfinished operation ${rec.id} is of kind '${rec.kind}', which this vmsnap does not know`, {
      hint: 'it was written by a newer vmsnap: finish it with that version (vmsnap recover), then come back',
      details: { operation: rec.id, kind: rec.kind },
    });
  }
  const parsed = def.plan.safeParse(rec.plan);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new VmsnapError('CATALOG_ERROR', `unfinished operation ${rec.id} (${rec.kind}) has a plan this vmsnap cannot read: ${issue?.path.join('.') ?? ''} ${issue?.message ?? ''}`, {
      hint: 'it was written by another version of vmsnap: finish it with that version (vmsnap recover); do not edit the catalog by hand',
      details: { operation: rec.id, kind: rec.kind },
    });
  }
  return { def, plan: parsed.data };
}

/** Inner operations before the ones they run inside of, otherwise in the order they began. */
function innermostFirst(ops: JournalRecord[]): JournalRecord[] {
  const byId = new Map(ops.map((o) => [o.id, o]));
  const depth = (o: JournalRecord): number => {
    let d = 0;
    for (let p = o.parentId; p !== null && byId.has(p) && d < 100; p = byId.get(p)!.parentId) d++;
    return d;
  };
  return [...ops].sort((a, b) => depth(b) - depth(a));
}

async function recoverOne(ctx: Context, rec: JournalRecord): Promise<RecoveredOperation> {
  const { def, plan } = await definitionOf(ctx, rec);
  const vm = rec.vmId ? ctx.catalog.findVm(rec.vmId) : undefined;
  const op = new Op(ctx, rec, def.kind, plan, vm?.name ?? rec.vmId ?? '');
  const r = await def.recover(ctx, op, vm);
  if (!op.finished) throw new VmsnapError('INTERNAL', `recovery of ${def.kind} ${op.id} returned without finishing it`);
  return { id: rec.id, kind: def.kind, vm: vm?.name ?? null, ...r };
}

/** Recover a VM's unfinished operations (or those of a VM being created, by its id). The caller holds its lock, if it exists. */
export async function recoverVmOperations(ctx: Context, vmId: string): Promise<RecoveredOperation[]> {
  const ops = ctx.journal.unfinished().filter((op) => op.vmId === vmId && !inFlight(op));
  const out: RecoveredOperation[] = [];
  for (const rec of innermostFirst(ops)) {
    // A parent's recovery may have finished its children already.
    if (!ctx.journal.unfinished().some((o) => o.id === rec.id)) continue;
    out.push(await recoverOne(ctx, ctx.journal.get(rec.id)));
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

/**
 * Files in the layers and states folders that neither the catalog nor an
 * unfinished operation refers to. Only a quiet data dir is swept: an
 * operation of a live process may be about to record the file it just made,
 * and an operation this vmsnap cannot read may own any file.
 */
export async function findOrphans(ctx: Context): Promise<string[]> {
  const known = ctx.catalog.referencedFiles();
  for (const rec of ctx.journal.unfinished()) {
    const def = (await ctx.registry()).lookup(rec.kind);
    const plan = def?.plan.safeParse(rec.plan);
    if (!def || !plan?.success) return [];
    for (const f of def.files(plan.data)) known.add(f);
  }
  const out: string[] = [];
  for (const dir of [ctx.paths.layers, ctx.paths.states]) {
    if (!existsSync(dir)) continue;
    for (const f of readdirSync(dir)) {
      const p = join(dir, f);
      if (!known.has(p)) out.push(p);
    }
  }
  const boot = referencedBootFiles(ctx.paths, ctx.catalog);
  for (const p of storedBootFiles(ctx.paths)) if (!known.has(p) && !boot.has(p)) out.push(p);
  if (out.length === 0) return out;
  // Never a file a record beside the VMs names: a catalog that lost rows (restored by hand from an old copy) must not cost their files.
  const recorded = recordedFiles(ctx.paths.records);
  return out.filter((f) => !recorded.has(f));
}

/** True while a live process other than this one has an operation under way. */
export function othersAtWork(ctx: Context): boolean {
  return ctx.journal.unfinished().some(inFlight);
}

/** Remove the files an undone operation made, unless the catalog has come to name them. */
export function removeUnreferenced(ctx: Context, files: string[]): void {
  const boot = files.some((f) => dirname(f) === ctx.paths.boot) ? referencedBootFiles(ctx.paths, ctx.catalog) : new Set<string>();
  for (const f of files) if (!ctx.catalog.refersToFile(f) && !boot.has(f)) rmSync(f, { force: true });
}

/** Recovery of an operation that only rolls forward: carry it on while its VM is still there. */
export async function rollForward<P, F extends string>(op: Op<P, F>, vm: VmRecord | undefined, carryOn: (vm: VmRecord) => Promise<unknown>): Promise<Recovered> {
  if (!vm) {
    op.finish('failed', 'VM gone');
    return { outcome: 'rolled_forward', note: 'VM gone' };
  }
  await carryOn(vm);
  if (!op.finished) op.finish('done');
  return { outcome: 'rolled_forward' };
}
