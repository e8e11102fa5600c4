import type { Context } from '../context.js';
import type { PolicyPatch, PolicyRunResult, PolicyView, PruneResult } from '../contract/views.js';
import type { PassOptions } from './pass.js';
import { listPolicyViews, policyView, removePolicy, requirePolicy, setPolicy } from './policies.js';
import type { PruneOptions } from './prune.js';

export type { PassOptions } from './pass.js';
export type { PruneOptions } from './prune.js';
export type { SchedulerOptions } from './loop.js';

/**
 * Snapshot policies as the library offers them: set, show, list, remove, run,
 * prune. A pass and a prune (which take and delete snapshots) are loaded when
 * first used, so reading policies loads only what reading needs.
 */
export class PolicyService {
  constructor(private readonly ctx: Context) {}

  private vm(nameOrId: string) {
    return this.ctx.catalog.getVm(nameOrId);
  }

  /** Set a VM's policy, or change what the patch names of the one it has. */
  set(vmName: string, patch: PolicyPatch): PolicyView {
    return setPolicy(this.ctx, this.vm(vmName), patch);
  }

  show(vmName: string): PolicyView {
    const vm = this.vm(vmName);
    return policyView(this.ctx, vm, requirePolicy(this.ctx, vm));
  }

  /** The VM's policy, or null when it has none. */
  find(vmName: string): PolicyView | null {
    const vm = this.vm(vmName);
    const p = this.ctx.catalog.findPolicy(vm.id);
    return p ? policyView(this.ctx, vm, p) : null;
  }

  list(): PolicyView[] {
    return listPolicyViews(this.ctx);
  }

  /** Remove a VM's policy; the snapshots it took stay (and no policy prunes them any more). */
  remove(vmName: string): { vm: string; snapshotsLeft: number } {
    return removePolicy(this.ctx, this.vm(vmName));
  }

  /** One pass for a VM: take the snapshot due (or one at once with `now`), then prune. */
  async run(vmName: string, opts: PassOptions = {}): Promise<PolicyRunResult> {
    const { runPolicyPass } = await import('./pass.js');
    return runPolicyPass(this.ctx, this.vm(vmName), opts);
  }

  /** One pass for every VM with a policy or an expired snapshot. */
  async runAll(opts: PassOptions = {}): Promise<PolicyRunResult[]> {
    const { runAllPolicies } = await import('./pass.js');
    return runAllPolicies(this.ctx, opts);
  }

  /** What a prune would delete now and why, and about how much it would free. Changes nothing. */
  async prunePlan(vmName: string): Promise<PruneResult> {
    const { prunePlan } = await import('./prune.js');
    return prunePlan(this.ctx, this.vm(vmName));
  }

  /** Delete what the VM's policy no longer keeps and what has expired. */
  async prune(vmName: string, opts: PruneOptions = {}): Promise<PruneResult> {
    const { pruneVm } = await import('./prune.js');
    return pruneVm(this.ctx, this.vm(vmName), opts);
  }
}
