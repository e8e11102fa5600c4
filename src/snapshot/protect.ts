import type { SnapshotRecord, VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import type { SnapshotView } from '../contract/views.js';
import { VmsnapError } from '../errors.js';
import { resolveSnapshot, showSnapshot } from './views.js';

/**
 * Protect or unprotect a snapshot. A protected snapshot refuses every delete
 * (the CLI, the API, the UI, delete --all, prune, expiry) until unprotected.
 * One catalog row changes in one statement, so it needs no lock and works
 * while the VM is busy, e.g. during a long prune (a delete checks the flag in
 * the same transaction in which it starts).
 */
export function setProtected(ctx: Context, vm: VmRecord, snapName: string, protect: boolean): SnapshotView {
  const snap = resolveSnapshot(ctx, vm, snapName);
  if (!ctx.catalog.setSnapshotProtected(snap.id, protect)) {
    throw new VmsnapError('INVALID_STATE', `snapshot '${snap.name}' of VM '${vm.name}' is being deleted: it can no longer be ${protect ? 'protected' : 'unprotected'}`, {
      details: { vm: vm.name, snapshot: snap.name },
    });
  }
  if (snap.protected !== protect) ctx.events.emitEvent({ type: 'snapshots-changed', vm: vm.name, vmId: vm.id });
  return showSnapshot(ctx, vm, snap.id);
}

/**
 * The one refusal every delete path gives for protected snapshots (delete,
 * delete --all, prune, expiry; CLI, API and UI alike): nothing deletes a
 * protected snapshot until it is unprotected.
 */
export function protectedError(vm: { name: string }, snaps: { name: string }[], all = false): VmsnapError {
  const names = snaps.map((s) => s.name);
  if (names.length === 1 && !all) {
    return new VmsnapError('INVALID_STATE', `snapshot '${names[0]}' of VM '${vm.name}' is protected: nothing deletes it until it is unprotected`, {
      hint: `vmsnap snapshot unprotect ${vm.name} ${names[0]}`,
      details: { vm: vm.name, snapshot: names[0], protected: true },
    });
  }
  const which = names.length === 1 ? `a protected snapshot, '${names[0]}'` : `protected snapshots: ${names.map((n) => `'${n}'`).join(', ')}`;
  return new VmsnapError('INVALID_STATE', `VM '${vm.name}' has ${which}: delete --all deletes nothing while any snapshot is protected`, {
    hint: `unprotect first (vmsnap snapshot unprotect ${vm.name} ${names.length === 1 ? names[0] : 'NAME'}), or delete the others one by one`,
    details: { vm: vm.name, snapshots: names, protected: true },
  });
}

/** Whether an error is the refusal to delete a protected snapshot. */
export function isProtectedRefusal(e: unknown): boolean {
  return e instanceof VmsnapError && e.details.protected === true;
}

/** Refuse, before anything starts, to delete a protected snapshot (the API answers with it at once). */
export function assertDeletable(vm: VmRecord, snap: SnapshotRecord): void {
  if (snap.protected) throw protectedError(vm, [snap]);
}
