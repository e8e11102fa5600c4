import { readFileSync } from 'node:fs';

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
  // A zombie is dead for our purposes.
  try {
    const state = readFileSync(`/proc/${pid}/stat`, 'utf8');
    if (state.slice(state.lastIndexOf(')') + 2).startsWith('Z')) return false;
  } catch {
    return false;
  }
  return startTime === undefined || startTime === now;
}

export function processCmdline(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  } catch {
    return [];
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Stop a helper process (qemu-img, a storage daemon) that a killed vmsnap left
 * running: it holds the layers' locks, so its work cannot be redone while it
 * lives. Only a process whose command line matches is killed (a reused pid is
 * someone else's); waits for it without blocking the event loop.
 */
export async function killOrphanHelper(pid: number | undefined, commandPattern: RegExp, timeoutMs = 5000): Promise<void> {
  if (pid === undefined || pid === process.pid || !isProcessAlive(pid)) return;
  if (!commandPattern.test(processCmdline(pid).join(' '))) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return;
  }
  const deadline = Date.now() + timeoutMs;
  while (isProcessAlive(pid) && Date.now() < deadline) await sleep(10);
}
