import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { GuestAgentClient } from '../src/qemu/guest-agent.js';
import { QmpClient } from '../src/qemu/qmp.js';
import { sleep } from '../src/util/process.js';

/**
 * QEMUs started by a test itself, without vmsnap (the memory-state tests drive QEMU's
 * migration directly): each in its own folder with `qmp.sock`, `qga.sock` and `serial.log`.
 */
export interface RawVm {
  name: string;
  dir: string;
  proc: ChildProcess;
  qmp: QmpClient;
  /** performance.now() at spawn (spawn-to-running is measured from it). */
  spawnedAt: number;
}

export class RawVms {
  readonly vms: RawVm[] = [];
  constructor(private readonly root: () => string) {}

  /** The folder of a VM's sockets and logs (made by start). */
  dirOf(name: string): string {
    return join(this.root(), name);
  }

  /** Spawns QEMU with `argv` and connects to its QMP socket (polled tightly: spawn-to-running is measured). */
  async start(name: string, argv: string[], socketWaitMs = 20_000): Promise<RawVm> {
    const dir = this.dirOf(name);
    mkdirSync(dir, { recursive: true });
    const spawnedAt = performance.now();
    const proc = spawn('qemu-system-x86_64', argv, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    proc.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    const sock = join(dir, 'qmp.sock');
    while (!existsSync(sock)) {
      if (proc.exitCode !== null) throw new Error(`QEMU exited: ${stderr}`);
      if (performance.now() - spawnedAt > socketWaitMs) throw new Error(`no QMP socket after ${socketWaitMs / 1000} s: ${stderr}`);
      await sleep(1);
    }
    const qmp = await QmpClient.connect(sock, { retryUntilMs: 10_000 });
    const vm = { name, dir, proc, qmp, spawnedAt };
    this.vms.push(vm);
    return vm;
  }

  async kill(vm: RawVm): Promise<void> {
    await vm.qmp.close().catch(() => undefined);
    const i = this.vms.indexOf(vm);
    if (i >= 0) this.vms.splice(i, 1);
    if (vm.proc.exitCode === null && vm.proc.signalCode === null) {
      const exited = new Promise((r) => vm.proc.once('exit', r));
      vm.proc.kill('SIGKILL');
      await exited;
    }
  }

  async killAll(): Promise<void> {
    for (const vm of [...this.vms]) await this.kill(vm);
  }

  /** For a failed test: the last lines of every live VM's serial console. */
  printSerialTails(): void {
    for (const vm of this.vms) {
      const log = join(vm.dir, 'serial.log');
      if (existsSync(log)) console.error(`--- ${vm.name} serial log (tail) ---\n${readFileSync(log, 'utf8').split('\n').slice(-30).join('\n')}`);
    }
  }
}

/** The guest agent of a raw VM: waited for through a boot, or connected to at once (after a load). */
export function rawAgent(vm: RawVm, boot: boolean, bootTimeoutMs = 180_000): Promise<GuestAgentClient> {
  const sock = join(vm.dir, 'qga.sock');
  return boot ? GuestAgentClient.waitUntilReady(sock, { timeoutMs: bootTimeoutMs }) : GuestAgentClient.connect(sock, { timeoutMs: 20_000 });
}

/** A shell script in the guest; its stdout, or an error with its exit code and stderr. */
export async function rawSh(agent: GuestAgentClient, script: string): Promise<string> {
  const r = await agent.exec('/bin/sh', ['-c', script], { timeoutMs: 120_000 });
  if (r.exitCode !== 0) throw new Error(`guest: ${script} → ${r.exitCode}: ${r.stderr}`);
  return r.stdout;
}

/** Until a migration is over: its final query-migrate answer. */
export async function waitMigration(qmp: QmpClient): Promise<{ status: string; downtime?: number; 'error-desc'?: string }> {
  for (;;) {
    const info = await qmp.execute<{ status: string; downtime?: number; 'error-desc'?: string }>('query-migrate');
    if (['completed', 'failed', 'cancelled'].includes(info.status)) return info;
    await sleep(10);
  }
}
