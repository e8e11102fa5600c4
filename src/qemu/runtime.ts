import { existsSync, readFileSync, rmSync } from 'node:fs';
import { basename, join } from 'node:path';
import { VmsnapError } from '../errors.js';
import type { PowerState } from '../contract/views.js';
import { runtimeFiles, STAGING_SUFFIX, type RuntimeFiles } from './launcher.js';
import { QmpClient } from './qmp.js';
import { isProcessAlive, isProcessExiting, processCmdline, sleep } from '../util/process.js';

export type { PowerState } from '../contract/views.js';

/** What a VM is doing, as found on the machine (never trusted from the catalog). */
export interface RuntimeStatus {
  state: PowerState;
  pid?: number;
  /** QEMU's own run state (running, paused, inmigrate, postmigrate, …). */
  qemuStatus?: string;
  /** Set when a dead QEMU's pid file and sockets were found and removed. */
  staleCleaned?: boolean;
  detail?: string;
}

/** The pid of the VM's QEMU, if that process is alive and really is ours. */
export function livePid(files: RuntimeFiles): number | undefined {
  if (!existsSync(files.pidFile)) return undefined;
  const pid = Number(readFileSync(files.pidFile, 'utf8').trim());
  if (!Number.isInteger(pid) || pid <= 0 || !isProcessAlive(pid)) return undefined;
  // A reused pid belongs to another program: ours has our pid file on its command line
  // (or, for a QEMU started in a revert's staging folder and promoted, that folder's).
  const cmd = processCmdline(pid);
  return cmd.includes(files.pidFile) || cmd.includes(join(`${files.dir}${STAGING_SUFFIX}`, basename(files.pidFile))) ? pid : undefined;
}

export function cleanRuntime(files: RuntimeFiles): void {
  rmSync(files.dir, { recursive: true, force: true });
}

const PAUSED_STATES = new Set(['paused', 'prelaunch', 'inmigrate', 'postmigrate', 'finish-migrate', 'suspended', 'save-vm', 'restore-vm', 'debug', 'io-error', 'watchdog', 'guest-panicked', 'colo', 'internal-error', 'shutdown']);

/** Find out the truth: dead pid → clean up and say stopped; live → ask QEMU. */
export async function probeRuntime(runDir: string, vmId: string): Promise<RuntimeStatus> {
  const files = runtimeFiles(runDir, vmId);
  const pid = livePid(files);
  if (pid === undefined) {
    const stale = existsSync(files.dir);
    if (stale) cleanRuntime(files);
    return { state: 'stopped', ...(stale ? { staleCleaned: true } : {}) };
  }
  let qmp: QmpClient | undefined;
  try {
    // The status monitor, not the one an operation in progress may be holding.
    const socket = existsSync(files.statusSocket) ? files.statusSocket : files.qmpSocket;
    qmp = await QmpClient.connect(socket, { timeoutMs: 5000, retryUntilMs: 3000 });
    const s = await qmp.execute<{ status: string; running: boolean }>('query-status');
    const state: PowerState = s.running ? 'running' : PAUSED_STATES.has(s.status) ? 'paused' : 'unknown';
    return { state, pid, qemuStatus: s.status };
  } catch (e) {
    return { state: 'unknown', pid, detail: `QEMU (pid ${pid}) does not answer on QMP: ${(e as Error).message}` };
  } finally {
    await qmp?.close();
  }
}

/** Open a QMP session to a running VM, or say clearly that it is not running. */
export async function connectQmp(runDir: string, vm: { id: string; name: string }, timeoutMs = 10_000): Promise<QmpClient> {
  const files = runtimeFiles(runDir, vm.id);
  if (livePid(files) === undefined) {
    throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' is not running`, { hint: `start it with 'vmsnap start ${vm.name}'` });
  }
  return QmpClient.connect(files.qmpSocket, { timeoutMs, retryUntilMs: 5000 });
}

/**
 * Wait for a QEMU process (not our child: it daemonized) to be gone. Polled every
 * millisecond for the first 200 ms, then every 25: a revert's down time runs from the
 * kill of the old QEMU to the resume of the new one, and a 25 ms poll put up to 25 ms of
 * waiting into it (the exit of a QEMU with GiBs resident takes a poll or two longer).
 */
export async function waitForExit(pid: number, timeoutMs: number): Promise<boolean> {
  const start = Date.now();
  const deadline = start + timeoutMs;
  while (isProcessAlive(pid)) {
    if (Date.now() >= deadline) return false;
    await sleep(Date.now() - start < 200 ? 1 : 25);
  }
  return true;
}

/**
 * Kill a VM's QEMU at once (its present state is being discarded or it hangs).
 * `untilExiting`: return as soon as none of its threads can run again (a revert resumes
 * the new QEMU then), not once the kernel has freed its memory (about 25 ms more for a
 * QEMU with 2 GiB resident here, which made the down time grow with the old guest's RAM).
 * Its file descriptors (a forward's listening socket, image locks) may still be open then:
 * without it, the wait lasts until its last thread is gone and they are closed (isProcessAlive).
 */
export async function killQemu(files: RuntimeFiles, opts: { untilExiting?: boolean } = {}): Promise<void> {
  const pid = livePid(files);
  if (pid !== undefined) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
    if (opts.untilExiting) {
      const deadline = Date.now() + 10_000;
      while (!isProcessExiting(pid) && Date.now() < deadline) await sleep(1);
    } else await waitForExit(pid, 10_000);
  }
  cleanRuntime(files);
}
