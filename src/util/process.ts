import { readdirSync, readFileSync } from 'node:fs';

/** The kernel's start time of a process (clock ticks since boot), to tell a live pid from a reused one. */
export function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 2 (comm) may contain spaces and parentheses: parse after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return rest[19]; // field 22 overall
  } catch {
    return undefined;
  }
}

export function isProcessAlive(pid: number, startTime?: string): boolean {
  const now = processStartTime(pid);
  if (now === undefined) return false;
  // A zombie is dead for our purposes, once its last thread is gone: a killed QEMU's main thread
  // turns zombie while its other threads still tear down guest RAM, and the file descriptors they
  // share (a forward's listening socket, an image's lock) are closed only when the last one exits.
  try {
    const state = readFileSync(`/proc/${pid}/stat`, 'utf8');
    if (state.slice(state.lastIndexOf(')') + 2).startsWith('Z') && readdirSync(`/proc/${pid}/task`).length <= 1) return false;
  } catch {
    return false;
  }
  return startTime === undefined || startTime === now;
}

/** The kernel's PF_EXITING task flag (include/linux/sched.h): set at the start of do_exit, before the memory teardown. */
const PF_EXITING = 0x4;

/**
 * True once no thread of a process can run its own code again: every thread is in the
 * kernel's exit path (PF_EXITING, set before the process's memory is torn down, which
 * for a QEMU with GiBs resident takes tens of ms), or the process is a zombie or gone.
 */
export function isProcessExiting(pid: number): boolean {
  let tasks: string[];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return true;
  }
  for (const tid of tasks) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (rest[0] === 'Z' || rest[0] === 'X') continue;
      if ((Number(rest[6]) & PF_EXITING) === 0) return false; // field 9: flags
    } catch {
      /* that thread is gone */
    }
  }
  return true;
}

export function processCmdline(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  } catch {
    return [];
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface KillAndWaitOptions {
  /** The signal to send (default SIGKILL). */
  signal?: NodeJS.Signals;
  /** How long to wait for the process to be gone (default 2000 ms). */
  timeoutMs?: number;
  /** The process's start time (processStartTime), so that a reused pid is never signalled. */
  startTime?: string;
}

/**
 * Signal a process and wait, without blocking the event loop, until it is gone (exited, or a
 * zombie). Resolves true when it is gone (or already was), false when it still runs after
 * `timeoutMs` or may not be signalled (EPERM). Never throws. For a child of this process,
 * its 'exit' event is the better wait; this is for processes we did not start (a helper
 * left by a killed vmsnap, a daemonized QEMU).
 */
export async function killAndWait(pid: number, opts: KillAndWaitOptions = {}): Promise<boolean> {
  if (!isProcessAlive(pid, opts.startTime)) return true;
  try {
    process.kill(pid, opts.signal ?? 'SIGKILL');
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ESRCH';
  }
  const deadline = Date.now() + (opts.timeoutMs ?? 2000);
  // Poll quickly at first (a SIGKILLed process is usually gone within a few ms), then less often.
  for (let delay = 2; isProcessAlive(pid, opts.startTime); delay = Math.min(delay * 2, 50)) {
    const left = deadline - Date.now();
    if (left <= 0) return false;
    await sleep(Math.min(delay, left));
  }
  return true;
}

/**
 * Stop a helper process (qemu-img, a storage daemon) that a killed vmsnap left
 * running: it holds the layers' locks, so its work cannot be redone while it
 * lives. Only a process whose command line matches is killed (a reused pid is
 * someone else's).
 */
export async function killOrphanHelper(pid: number | undefined, commandPattern: RegExp, timeoutMs = 5000): Promise<void> {
  if (pid === undefined || pid === process.pid || !isProcessAlive(pid)) return;
  if (!commandPattern.test(processCmdline(pid).join(' '))) return;
  await killAndWait(pid, { timeoutMs });
}

/**
 * The environment for a Node process of vmsnap's own (the split sink, a background
 * fingerprint): without NODE_EXTRA_CA_CERTS, which makes Node read its whole certificate store
 * before it runs anything (80-90 ms on a slow machine) and which vmsnap, making no TLS
 * connection, has no use for. bin/vmsnap starts the CLI the same way.
 */
export function ownNodeEnv(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  if (env.NODE_EXTRA_CA_CERTS === undefined) return env;
  const { NODE_EXTRA_CA_CERTS: _unused, ...rest } = env;
  return rest;
}
