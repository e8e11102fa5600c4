import { rmSync } from 'node:fs';
import { withVmLock } from './catalog/lock.js';
import type { RepairMode } from './catalog-repair.js';
import { openCatalogParts, openContext, type Context, type VmsnapEvent } from './context.js';
import type { CatalogRepairReport, RecoveryReport, VerifyReport } from './contract/views.js';
import { FilesService } from './files/service.js';
import { HealthService } from './health/index.js';
import { defaultHome, pathsFor } from './paths.js';
import { PolicyService } from './scheduler/service.js';
import { SnapshotService } from './snapshot/service.js';
import { TransferService } from './transfer/index.js';
import { VmService } from './vm/service.js';

/** The registry imports every verb: load it only when there is an operation to recover. */
const loadRegistry = async () => (await import('./registry.js')).registry;
// Recovery, catalog repair and verify (with the memory-state code they read) are loaded when
// called: opening a home and listing it, what most CLI commands do, needs none of them.
const catalogRepair = () => import('./catalog-repair.js');
const recovery = () => import('./operations/recovery.js');
const verifying = () => import('./snapshot/verify.js');

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
  /** Snapshot policies: schedules, retention, expiry; a pass, a prune. */
  readonly policies: PolicyService;
  /** Guest files of snapshots: browse, copy out, restore, diff, search (libguestfs, never mounted on the host). */
  readonly files: FilesService;

  private constructor(ctx: Context) {
    this.ctx = ctx;
    this.vms = new VmService(ctx);
    this.snapshots = new SnapshotService(ctx);
    this.health = new HealthService(ctx);
    this.transfer = new TransferService(ctx);
    this.policies = new PolicyService(ctx);
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
   * A new catalog for a home whose catalog is lost or damaged, without opening
   * the old one: `rebuild` from the records beside the VMs and the layer files,
   * `from-backup` from the newest sound backup reconciled with those records
   * (see catalog-repair.ts). The old catalog is kept aside; then recovery
   * finishes the operations the records carried. `dryRun` only reports.
   */
  static async repairCatalog(opts: OpenOptions & { mode: RepairMode; dryRun?: boolean }): Promise<CatalogRepairReport> {
    const home = opts.home ?? defaultHome();
    const { repairCatalogFiles } = await catalogRepair();
    const report = await repairCatalogFiles(pathsFor(home, opts.imageCache), await loadRegistry(), opts);
    if (report.dryRun) return report;
    const lib = Vmsnap.open({ home, ...(opts.imageCache ? { imageCache: opts.imageCache } : {}) });
    try {
      await lib.afterRepair(report);
    } finally {
      lib.close();
    }
    return report;
  }

  /**
   * repairCatalog() for the catalog this instance has open (the API server's,
   * which stays up through a damaged catalog): its connection is closed, the
   * files repaired, and a new connection opened on the new catalog. The caller
   * makes sure nothing else runs meanwhile.
   */
  async repairOwnCatalog(opts: { mode: RepairMode; dryRun?: boolean }): Promise<CatalogRepairReport> {
    const registry = await this.ctx.registry();
    const { repairCatalogFiles } = await catalogRepair();
    if (opts.dryRun) return repairCatalogFiles(this.ctx.paths, registry, opts);
    // A backup owed now would copy the damage; the repair makes its own choice of backup.
    this.ctx.backups.close();
    this.ctx.catalog.close();
    let report: CatalogRepairReport;
    try {
      report = await repairCatalogFiles(this.ctx.paths, registry, opts);
    } finally {
      // The new catalog when it worked, the old one again when it did not (still damaged: the error says so).
      Object.assign(this.ctx, openCatalogParts(this.ctx.paths));
    }
    await this.afterRepair(report);
    return report;
  }

  /** A repaired catalog's records written from it, then the recovery of what its records carried. */
  private async afterRepair(report: CatalogRepairReport): Promise<void> {
    this.ctx.catalog.records.rewriteAll();
    report.recovery = await this.recover();
    await this.settle();
  }

  /**
   * Finish every interrupted operation (rolled forward or back, each VM under
   * its lock), bring the records beside the VMs up to date, then remove files
   * nothing refers to.
   */
  async recover(): Promise<RecoveryReport> {
    // Loaded first, so that no await comes between the catalog's check and reading what is unfinished.
    const { findOrphans, othersAtWork, recoverVmOperations } = await recovery();
    this.ctx.catalog.assertSound();
    const report: RecoveryReport = { operations: [], orphansRemoved: [] };
    const vmIds = new Set(this.ctx.journal.unfinished().map((op) => op.vmId));
    for (const vmId of vmIds) {
      if (vmId === null) continue;
      const vm = this.ctx.catalog.findVm(vmId);
      // A VM that never got into the catalog (an unfinished create) has no lock to take.
      const run = () => recoverVmOperations(this.ctx, vmId);
      report.operations.push(...(vm ? await withVmLock(this.ctx.catalog, vm, 'recover', run) : await run()));
    }
    // Strict: records that cannot be written are an error here, not a retry for later.
    const rewritten = this.ctx.catalog.records.repair();
    if (rewritten > 0) report.recordsRewritten = rewritten;
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
    this.ctx.catalog.assertSound();
    const { verifyVm } = await verifying();
    return verifyVm(this.ctx, this.vms.get(vmName), opts);
  }

  /** verify() for every VM. */
  async verifyAll(opts: { deep?: boolean } = {}): Promise<VerifyReport[]> {
    this.ctx.catalog.assertSound();
    const { verifyVm } = await verifying();
    const out: VerifyReport[] = [];
    for (const vm of this.ctx.catalog.listVms()) out.push(await verifyVm(this.ctx, vm, opts));
    return out;
  }

  /** Fingerprint the snapshots of a VM that have none yet (normally done in the background after each snapshot). */
  async fingerprint(vmName: string): Promise<number> {
    const { recordFingerprints } = await verifying();
    return recordFingerprints(this.ctx, this.vms.get(vmName));
  }

  /** Take the catalog backup still owed for changes made through this instance (call before close; the CLI does after each command). Never throws. */
  async settle(): Promise<void> {
    await this.ctx.backups.settle();
  }

  close(): void {
    this.ctx.backups.close();
    this.ctx.catalog.close();
  }
}
