import type { VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import type { ExecResult, VmInfo, VmSummary } from '../contract/views.js';
import type { GuestAgentClient } from '../qemu/guest-agent.js';
import type { CreateVmOptions, SetVmOptions } from './define.js';
import type { LibvirtImportResult } from '../contract/views.js';
import type { ImportLibvirtOptions } from './libvirt-import.js';
import { listVms, vmInfo, vmStatus } from './info.js';
import type { StartOptions, StopOptions } from './power.js';

export type { CreateVmOptions, DiskSpec, SetVmOptions } from './define.js';
export type { StartOptions, StopOptions } from './power.js';
export type { ImportLibvirtOptions } from './libvirt-import.js';

/**
 * VM lifecycle as the library offers it: a thin face over define, power,
 * guest and info. The verbs are loaded when first used, so a read such as
 * `vmsnap list` loads only what reading needs.
 */
export class VmService {
  constructor(private readonly ctx: Context) {}

  get(nameOrId: string): VmRecord {
    return this.ctx.catalog.getVm(nameOrId);
  }

  async create(name: string, opts: CreateVmOptions = {}): Promise<VmInfo> {
    const { createVm } = await import('./define.js');
    return vmInfo(this.ctx, await createVm(this.ctx, name, opts));
  }

  /**
   * Make a VM of a libvirt domain (its XML as `virsh dumpxml` writes it): its
   * disk images and their backing chains are adopted read-only as base layers.
   * Refused while anything cannot be carried over, unless `ignoreUnsupported`.
   */
  async importLibvirt(xml: string, opts: ImportLibvirtOptions = {}): Promise<LibvirtImportResult> {
    const { importLibvirtDomain } = await import('./libvirt-import.js');
    const r = await importLibvirtDomain(this.ctx, xml, opts);
    return { ...r, vm: await vmInfo(this.ctx, r.vm) };
  }

  /** Change the hardware config of a stopped VM. */
  async set(nameOrId: string, opts: SetVmOptions): Promise<VmInfo> {
    const { setVm } = await import('./define.js');
    await setVm(this.ctx, this.get(nameOrId), opts);
    return this.info(nameOrId);
  }

  /** Remove a stopped VM with its snapshots, layers and state files (imported images are left alone). */
  async remove(nameOrId: string): Promise<void> {
    const { removeVm } = await import('./define.js');
    await removeVm(this.ctx, this.get(nameOrId));
  }

  async start(nameOrId: string, opts: StartOptions = {}): Promise<VmSummary> {
    const { startVm } = await import('./power.js');
    const vm = this.get(nameOrId);
    await startVm(this.ctx, vm, opts);
    return this.status(vm.id);
  }

  /** ACPI power-down, then force after the timeout (60 s); `force` at once. */
  async stop(nameOrId: string, opts: StopOptions = {}): Promise<VmSummary> {
    const { stopVm } = await import('./power.js');
    const vm = this.get(nameOrId);
    await stopVm(this.ctx, vm, opts);
    return this.status(vm.id);
  }

  async pause(nameOrId: string): Promise<VmSummary> {
    const { setRunning } = await import('./power.js');
    await setRunning(this.ctx, this.get(nameOrId), false);
    return this.status(nameOrId);
  }

  async resume(nameOrId: string): Promise<VmSummary> {
    const { setRunning } = await import('./power.js');
    await setRunning(this.ctx, this.get(nameOrId), true);
    return this.status(nameOrId);
  }

  async status(nameOrId: string): Promise<VmSummary> {
    return vmStatus(this.ctx, this.get(nameOrId));
  }

  async list(): Promise<VmSummary[]> {
    return listVms(this.ctx);
  }

  async info(nameOrId: string): Promise<VmInfo> {
    return vmInfo(this.ctx, this.get(nameOrId));
  }

  /** Run a command in the guest through the guest agent (waits for the agent to come up). */
  async exec(nameOrId: string, argv: string[], opts: { timeoutMs?: number; input?: string; agentWaitMs?: number } = {}): Promise<ExecResult> {
    const { execInGuest } = await import('./guest.js');
    return execInGuest(this.ctx, this.get(nameOrId), argv, opts);
  }

  /** A connected guest-agent client for a running VM. The caller closes it. */
  async agent(vm: VmRecord, waitMs?: number): Promise<GuestAgentClient> {
    const { guestAgent } = await import('./guest.js');
    return guestAgent(this.ctx, vm, waitMs);
  }

  /** The serial console's socket and log, for `vmsnap console`. */
  async console(nameOrId: string): Promise<{ socket: string; log: string }> {
    const { serialConsole } = await import('./guest.js');
    return serialConsole(this.ctx, this.get(nameOrId));
  }
}
