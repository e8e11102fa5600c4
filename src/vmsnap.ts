import { rmSync } from 'node:fs';
import { withVmLock } from './catalog/lock.js';
import { openContext, type Context, type VmsnapEvent } from './context.js';
import type { RecoveryReport, VerifyReport } from './contract/views.js';
import { FilesService } from './files/service.js';
import { HealthService } from './health/index.js';
import { findOrphans, othersAtWork, recoverVmOperations } from './operations/recovery.js';
import { defaultHome } from './paths.js';
import { SnapshotService } from './snapshot/service.js';
import { recordFingerprints, verifyVm } from './snapshot/verify.js';
import { TransferService } from './transfer/index.js';
import { VmService } from './vm/service.js';

/** The registry imports every verb: load it only when there is an operation to recover. */
const loadRegistry = async () => (await import('./registry.js')).registry;

export interface OpenOptions {
  /** The data dir; default $VMSNAP_HOME or the XDG data dir. */
  home?: string;
  /** Where built guest images are cached; default $VMSNAP_IMAGE_CACHE or the XDG cache dir. */
  imageCache?: string;
}

/**
 * The library's entry point: one open vmsnap home. The CLI, the HTTP API and
 * the web UI are thin layers over this.
 */
export class Vmsnap {
  readonly ctx: Context;
  readonly vms: VmService;
  readonly snapshots: SnapshotService;
  readonly health: HealthService;
  /** Export a snapshot as a self-contained archive; import one as a new VM. */
  readonly transfer: TransferService;
  /** Guest files of snapshots: browse, copy out, restore, diff, search (libguestfs, never mounted on the host). */
  readonly files: FilesService;

  private constructor(ctx: Context) {
    this.ctx = ctx;
    this.vms = new VmService(ctx);
    this.snapshots = new SnapshotService(ctx);
    this.health = new HealthService(ctx);
    this.transfer = new TransferService(ctx);
    this.files = new FilesService(ctx);
  }

  static open(opts: OpenOptions = {}): Vmsnap {
    return new Vmsnap(openContext(opts.home ?? defaultHome(), loadRegistry, opts.imageCache));
  }

  get home(): string {
    return this.ctx.paths.home;
  }

  /** Subscribe to progress and state events; returns the unsubscribe function. */
  onEvent(listener: (e: VmsnapEvent) => void): () => void {
    this.ctx.events.on('event', listener);
    return () => this.ctx.events.off('event', listener);
  }

  /**
   * Finish every interrupted operation (rolled forward or back, each VM under
   * its lock), then remove files nothing refers to.
   */
  async recover(): Promise<RecoveryReport> {
    const report: RecoveryReport = { operations: [], orphansRemoved: [] };
    const vmIds = new Set(this.ctx.journal.unfinished().map((op) => op.vmId));
    for (const vmId of vmIds) {
      if (vmId === null) continue;
      const vm = this.ctx.catalog.findVm(vmId);
      // A VM that never got into the catalog (an unfinished create) has no lock to take.
      const run = () => recoverVmOperations(this.ctx, vmId);
      report.operations.push(...(vm ? await withVmLock(this.ctx.catalog, vm, 'recover', run) : await run()));
    }
    if (!othersAtWork(this.ctx)) {
      for (const f of await findOrphans(this.ctx)) {
        rmSync(f, { force: true });
        report.orphansRemoved.push(f);
      }
    }
    return report;
  }

  /** Check that a VM's catalog rows, files and chains agree; `deep` also re-hashes every snapshot's content. */
  async verify(vmName: string, opts: { deep?: boolean } = {}): Promise<VerifyReport> {
    return verifyVm(this.ctx, this.vms.get(vmName), opts);
  }

  /** verify() for every VM. */
  async verifyAll(opts: { deep?: boolean } = {}): Promise<VerifyReport[]> {
    const out: VerifyReport[] = [];
    for (const vm of this.ctx.catalog.listVms()) out.push(await verifyVm(this.ctx, vm, opts));
    return out;
  }

  /** Fingerprint the snapshots of a VM that have none yet (normally done in the background after each snapshot). */
  async fingerprint(vmName: string): Promise<number> {
    return recordFingerprints(this.ctx, this.vms.get(vmName));
  }

  close(): void {
    this.ctx.catalog.close();
  }
}
