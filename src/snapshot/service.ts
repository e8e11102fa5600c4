import type { Context } from '../context.js';
import type { CloneResult, DeleteResult, PresentStateChanges, RevertResult, SnapshotView } from '../contract/views.js';
import type { CloneOptions } from './clone.js';
import type { TakeSnapshotOptions } from './create.js';
import type { DeleteOptions } from './delete.js';
import type { RevertOptions } from './revert.js';
import { assertDeletable, setProtected } from './protect.js';
import { drawTree, listSnapshotViews, presentStateChanges, resolveSnapshot, showSnapshot } from './views.js';

export type { TakeSnapshotOptions } from './create.js';
export type { RevertOptions } from './revert.js';
export type { DeleteOptions } from './delete.js';
export type { CloneOptions } from './clone.js';

/**
 * Snapshots as the library offers them: a thin face over create, revert,
 * delete, clone and the views. The verbs are loaded when first used, so
 * listing snapshots loads only what reading needs.
 */
export class SnapshotService {
  constructor(private readonly ctx: Context) {}

  private vm(nameOrId: string) {
    return this.ctx.catalog.getVm(nameOrId);
  }

  list(vmName: string): SnapshotView[] {
    return listSnapshotViews(this.ctx, this.vm(vmName));
  }

  show(vmName: string, snapName: string): SnapshotView {
    return showSnapshot(this.ctx, this.vm(vmName), snapName);
  }

  /** The tree drawn for a terminal, with "you are here" under the current snapshot. */
  tree(vmName: string): string {
    return drawTree(this.ctx, this.vm(vmName));
  }

  /**
   * Take a snapshot: every disk frozen at one instant under a new empty
   * overlay; with memory, the RAM and device state of that same instant.
   */
  async create(vmName: string, name: string, opts: TakeSnapshotOptions = {}): Promise<SnapshotView> {
    const { takeSnapshot } = await import('./create.js');
    const vm = this.vm(vmName);
    const s = await takeSnapshot(this.ctx, vm, name, opts);
    return showSnapshot(this.ctx, this.vm(vm.id), s.id);
  }

  /** What reverting now would discard: the running state, disk writes since the current snapshot, config changes. */
  async presentStateChanges(vmName: string): Promise<PresentStateChanges> {
    return presentStateChanges(this.ctx, this.vm(vmName));
  }

  /** Go back to any snapshot of the tree; with memory the guest resumes exactly where it was. */
  async revert(vmName: string, snapName: string, opts: RevertOptions = {}): Promise<RevertResult> {
    const { revertToSnapshot } = await import('./revert.js');
    return revertToSnapshot(this.ctx, this.vm(vmName), snapName, opts);
  }

  /** Delete any snapshot, merging its delta into what depends on it (online while the VM runs). */
  async delete(vmName: string, snapName: string, opts: DeleteOptions = {}): Promise<DeleteResult> {
    const { deleteSnapshot } = await import('./delete.js');
    return deleteSnapshot(this.ctx, this.vm(vmName), snapName, opts);
  }

  /** Delete every snapshot of a VM: all deltas merge into the present disks (VMware's "Delete All"). */
  async deleteAll(vmName: string, opts: DeleteOptions = {}): Promise<DeleteResult> {
    const { deleteAllSnapshots } = await import('./delete.js');
    return deleteAllSnapshots(this.ctx, this.vm(vmName), opts);
  }

  /** Refuse at once what a delete would refuse because the snapshot is protected (the API answers before it accepts a job). */
  assertDeletable(vmName: string, snapName: string): void {
    const vm = this.vm(vmName);
    assertDeletable(vm, resolveSnapshot(this.ctx, vm, snapName));
  }

  /** Nothing deletes a protected snapshot (delete, delete --all, prune, expiry) until it is unprotected. */
  protect(vmName: string, snapName: string): SnapshotView {
    return setProtected(this.ctx, this.vm(vmName), snapName, true);
  }

  unprotect(vmName: string, snapName: string): SnapshotView {
    return setProtected(this.ctx, this.vm(vmName), snapName, false);
  }

  /** Clone new VMs from any snapshot: linked or full; `start` forks them from its memory. */
  async clone(vmName: string, snapName: string, newName: string, opts: CloneOptions = {}): Promise<CloneResult> {
    const { cloneSnapshot } = await import('./clone.js');
    return cloneSnapshot(this.ctx, this.vm(vmName), snapName, newName, opts);
  }
}
