import type { VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import type { ExecResult, VmInfo, VmSummary } from '../contract/views.js';
import type { GuestAgentClient } from '../qemu/guest-agent.js';
import { createVm, removeVm, setVm, type CreateVmOptions, type SetVmOptions } from './define.js';
import { execInGuest, guestAgent, serialConsole } from './guest.js';
import { listVms, vmInfo, vmStatus } from './info.js';
import { setRunning, startLocked, startVm, stopLocked, stopVm, type StartOptions, type StopOptions } from './power.js';

export type { CreateVmOptions, DiskSpec, SetVmOptions } from './define.js';
export type { StartOptions, StopOptions } from './power.js';

/** VM lifecycle as the library offers it: a thin face over define, power, guest and info. */
export class VmService {
  constructor(private readonly ctx: Context) {}

  get(nameOrId: string): VmRecord {
    return this.ctx.catalog.getVm(nameOrId);
  }

  async create(name: string, opts: CreateVmOptions = {}): Promise<VmInfo> {
    return vmInfo(this.ctx, await createVm(this.ctx, name, opts));
  }

  /** Change the hardware config of a stopped VM. */
  async set(nameOrId: string, opts: SetVmOptions): Promise<VmInfo> {
    await setVm(this.ctx, this.get(nameOrId), opts);
    return this.info(nameOrId);
  }

  /** Remove a stopped VM with its snapshots, layers and state files (imported images are left alone). */
  async remove(nameOrId: string): Promise<void> {
    await removeVm(this.ctx, this.get(nameOrId));
  }

  async start(nameOrId: string, opts: StartOptions = {}): Promise<VmSummary> {
    const vm = this.get(nameOrId);
    await startVm(this.ctx, vm, opts);
    return this.status(vm.id);
  }

  /** Start QEMU for a VM whose lock the caller holds. */
  async startLocked(vm: VmRecord, opts: StartOptions & { incomingDefer?: boolean } = {}): Promise<number> {
    return startLocked(this.ctx, vm, opts);
  }

  /** ACPI power-down, then force after the timeout (60 s); `force` at once. */
  async stop(nameOrId: string, opts: StopOptions = {}): Promise<VmSummary> {
    const vm = this.get(nameOrId);
    await stopVm(this.ctx, vm, opts);
    return this.status(vm.id);
  }

  async stopLocked(vm: VmRecord, opts: StopOptions = {}): Promise<void> {
    return stopLocked(this.ctx, vm, opts);
  }

  async pause(nameOrId: string): Promise<VmSummary> {
    await setRunning(this.ctx, this.get(nameOrId), false);
    return this.status(nameOrId);
  }

  async resume(nameOrId: string): Promise<VmSummary> {
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
    return execInGuest(this.ctx, this.get(nameOrId), argv, opts);
  }

  /** A connected guest-agent client for a running VM. The caller closes it. */
  async agent(vm: VmRecord, waitMs?: number): Promise<GuestAgentClient> {
    return guestAgent(this.ctx, vm, waitMs);
  }

  /** The serial console's socket and log, for `vmsnap console`. */
  console(nameOrId: string): { socket: string; log: string } {
    return serialConsole(this.ctx, this.get(nameOrId));
  }
}
