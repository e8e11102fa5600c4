import type { Context } from '../context.js';
import type { PolicyRunResult } from '../contract/views.js';
import { toVmsnapError } from '../errors.js';
import { passDue, runPolicyPass } from './pass.js';
import { policyClock } from './policies.js';

export interface SchedulerOptions {
  /** How often to look for due slots and expired snapshots (default 30 s). */
  intervalMs?: number;
  log?: (line: string) => void;
  /**
   * How a pass for a VM is run: the server runs it as one of its tracked jobs,
   * so the UI shows it and the API refuses other work on that VM meanwhile.
   * May throw BUSY at once when the VM is busy.
   */
  run?: (vm: { id: string; name: string }, title: string, pass: () => Promise<PolicyRunResult>) => Promise<PolicyRunResult>;
}

/**
 * The policies at work inside `vmsnap serve`: every ~30 s, a pass for each VM
 * that has a slot due or an expired snapshot, one VM after the other. A busy
 * VM is tried again on the next look; a failure is logged (the pass recorded
 * it and sent it as an event). stop() waits for the pass under way.
 */
export class PolicyScheduler {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;
  private readonly intervalMs: number;
  private readonly log: (line: string) => void;

  constructor(
    private readonly ctx: Context,
    private readonly opts: SchedulerOptions = {},
  ) {
    this.intervalMs = opts.intervalMs ?? 30_000;
    this.log = opts.log ?? (() => {});
  }

  start(): void {
    this.stopped = false;
    this.schedule(Math.min(1000, this.intervalMs));
  }

  private schedule(delay: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      // A tick that cannot even list the VMs (a damaged catalog, which the server stays up through) is logged, never an unhandled rejection.
      const failed = (e: unknown): void => {
        const err = toVmsnapError(e);
        this.log(`policy pass: failed: ${err.code} ${err.message}`);
      };
      this.running = this.tick()
        .catch(failed)
        .finally(() => {
          this.running = undefined;
          this.schedule(this.intervalMs);
        });
    }, delay);
    this.timer.unref();
  }

  /** Stop looking; resolves once the pass under way (if any) has finished. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
  }

  /** One look at every VM. */
  async tick(): Promise<void> {
    for (const vm of this.ctx.catalog.listVms()) {
      if (this.stopped) return;
      try {
        if (!passDue(this.ctx, vm, policyClock())) continue;
        const pass = () => runPolicyPass(this.ctx, vm);
        const r = this.opts.run ? await this.opts.run(vm, `policy pass of ${vm.name}`, pass) : await pass();
        if (r.status === 'busy') this.log(`policy ${vm.name}: busy, tried again on the next pass`);
        else if (r.snapshot !== null || (r.prune?.deleted.length ?? 0) > 0) {
          const deleted = r.prune?.deleted.map((d) => d.name) ?? [];
          this.log(
            `policy ${vm.name}: ${r.snapshot ? `took '${r.snapshot}'${r.slot ? ` for ${r.slot}` : ''}${r.missed ? ` (${r.missed} missed slot${r.missed === 1 ? '' : 's'} caught up once)` : ''}` : 'took nothing'}` +
              `${deleted.length ? `, pruned ${deleted.join(', ')}` : ''}`,
          );
        }
      } catch (e) {
        const err = toVmsnapError(e);
        this.log(err.code === 'BUSY' ? `policy ${vm.name}: busy, tried again on the next pass` : `policy ${vm.name}: failed: ${err.code} ${err.message}`);
      }
    }
  }
}
