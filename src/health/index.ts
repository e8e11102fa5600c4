import type { Context } from '../context.js';
import type { DfReport, HealthReport, HealthSettings, HealthWarning, VmUsage } from '../contract/views.js';
import { healthSettings } from '../settings.js';

/** Storage accounting and health checks of one vmsnap home (loaded when first used). */
export class HealthService {
  constructor(private readonly ctx: Context) {}

  /** Bytes per snapshot (delta, state, reclaimable), per VM (total, chain depth), and the data dir against free space. */
  async df(vmName?: string): Promise<DfReport> {
    const vms = vmName === undefined ? this.ctx.catalog.listVms() : [this.ctx.catalog.getVm(vmName)];
    const { dataDirUsage, vmUsage } = await import('./storage.js');
    const out: VmUsage[] = [];
    for (const vm of vms) out.push(await vmUsage(this.ctx, vm));
    return { dataDir: dataDirUsage(this.ctx), vms: out };
  }

  /** Warnings about old snapshots, deep chains, large snapshots, low free space and what verify flags. */
  async doctor(overrides: Partial<HealthSettings> = {}, opts: { verify?: boolean } = {}): Promise<HealthReport> {
    const { doctor } = await import('./doctor.js');
    return doctor(this.ctx, overrides, opts);
  }

  /** The cheap warnings about one VM (shown after taking a snapshot). */
  async warningsFor(vmName: string): Promise<HealthWarning[]> {
    const [{ vmWarnings }, { dataDirUsage }] = await Promise.all([import('./doctor.js'), import('./storage.js')]);
    const settings = healthSettings(this.ctx.paths.home);
    return vmWarnings(this.ctx, this.ctx.catalog.getVm(vmName), settings, dataDirUsage(this.ctx).freeBytes);
  }
}

export type { DataDirUsage, DfReport, HealthReport, HealthSettings, HealthWarning, SnapshotUsage, VmUsage } from '../contract/views.js';
