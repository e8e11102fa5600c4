import type { VmRecord } from '../catalog/catalog.js';
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
