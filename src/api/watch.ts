import { isVmsnapError } from '../errors.js';
import type { VmSummary } from '../contract/views.js';
import type { Vmsnap } from '../vmsnap.js';
import type { EventHub } from './events.js';

const fingerprint = (s: VmSummary) => JSON.stringify([s.state, s.qemuStatus, s.pid, s.memoryMiB, s.cpus, s.disks]);
// Protection and the policy show as badges in the tree: a change to either (from the CLI too) redraws it.
const treeFingerprint = (s: VmSummary) => JSON.stringify([s.snapshots, s.currentSnapshot, s.protectedSnapshots, s.policy]);

/**
 * Keeps event-stream clients up to date with VM summaries. After each change
 * made through the API it publishes the VM's new summary; while clients are
 * connected it also looks every few seconds, to catch what the API did not do
 * itself: the CLI in another terminal, a guest that powered itself off.
 */
export class VmWatch {
  private readonly known = new Map<string, { name: string; vm: string; tree: string }>();
  private timer: NodeJS.Timeout | undefined;
  private ticking = false;

  constructor(
    private readonly lib: Vmsnap,
    private readonly hub: EventHub,
    private readonly isQuiet: () => boolean,
    private readonly intervalMs = 3000,
  ) {}

  start(): void {
    this.timer ??= setInterval(() => void this.tick(), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private publish(s: VmSummary, forceTree = false): void {
    const before = this.known.get(s.id);
    const vm = fingerprint(s);
    const tree = treeFingerprint(s);
    this.known.set(s.id, { name: s.name, vm, tree });
    if (!before || before.vm !== vm || before.tree !== tree) this.hub.publish({ type: 'vm', data: { vm: s } });
    if (forceTree || (before && before.tree !== tree)) this.hub.publish({ type: 'snapshots', data: { vm: s.name, vmId: s.id } });
  }

  /** Publish a VM's summary after the API changed it (and "its tree changed" when asked). */
  async refresh(vmId: string, opts: { snapshots?: boolean } = {}): Promise<void> {
    try {
      this.publish(await this.lib.vms.status(vmId), opts.snapshots ?? false);
    } catch (e) {
      if (isVmsnapError(e) && e.code === 'NOT_FOUND') this.removed(vmId);
    }
  }

  removed(vmId: string): void {
    const k = this.known.get(vmId);
    this.known.delete(vmId);
    if (k) this.hub.publish({ type: 'vm-removed', data: { vm: k.name, vmId } });
  }

  /** One look at every VM, only while someone listens and the API is not mid-operation (QMP takes one client at a time). */
  async tick(): Promise<void> {
    if (this.ticking || this.hub.subscribers === 0 || !this.isQuiet()) return;
    this.ticking = true;
    try {
      await this.look(() => this.isQuiet());
    } catch {
      // A transient failure (catalog busy): the next tick looks again.
    } finally {
      this.ticking = false;
    }
  }

  /** Publish every VM after the API changed many at once (recover); each VM's tree may have changed. */
  async refreshAll(): Promise<void> {
    await this.look(() => true, true);
  }

  private async look(stillQuiet: () => boolean, trees = false): Promise<void> {
    const list = await this.lib.vms.list();
    if (!stillQuiet()) return;
    const seen = new Set(list.map((s) => s.id));
    for (const s of list) this.publish(s, trees);
    for (const id of [...this.known.keys()]) if (!seen.has(id)) this.removed(id);
  }
}
