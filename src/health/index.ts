import type { Context } from '../context.js';
import type { VmService } from '../vm/machines.js';
import { doctor, healthSettings, vmWarnings, type HealthReport, type HealthSettings, type HealthWarning } from './doctor.js';
import { dataDirUsage, vmUsage, type DataDirUsage, type VmUsage } from './storage.js';

export interface DfReport {
  dataDir: DataDirUsage;
  vms: VmUsage[];
}

/** Storage accounting and health checks of one vmsnap home. */
export class HealthService {
  constructor(
    private readonly ctx: Context,
    private readonly vms: VmService,
  ) {}

  /** Bytes per snapshot (delta, state, reclaimable), per VM (total, chain depth), and the data dir against free space. */
  async df(vmName?: string): Promise<DfReport> {
    const vms = vmName === undefined ? this.ctx.catalog.listVms() : [this.vms.get(vmName)];
    const out: VmUsage[] = [];
    for (const vm of vms) out.push(await vmUsage(this.ctx, vm));
    return { dataDir: dataDirUsage(this.ctx), vms: out };
  }

  /** Warnings about old snapshots, deep chains, large snapshots, low free space and what verify flags. */
  async doctor(overrides: Partial<HealthSettings> = {}, opts: { verify?: boolean } = {}): Promise<HealthReport> {
    return doctor(this.ctx, overrides, opts);
  }

  /** The cheap warnings about one VM (shown after taking a snapshot). */
  warningsFor(vmName: string): HealthWarning[] {
    const settings = healthSettings(this.ctx);
    return vmWarnings(this.ctx, this.vms.get(vmName), settings, dataDirUsage(this.ctx).freeBytes);
  }
}

export type { DataDirUsage, VmUsage, SnapshotUsage } from './storage.js';
export type { HealthReport, HealthSettings, HealthWarning } from './doctor.js';
