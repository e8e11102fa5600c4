import { randomUUID } from 'node:crypto';
import { VmsnapError } from '../errors.js';
import { isProcessAlive, processStartTime, sleep } from '../util/process.js';
import type { Catalog } from './catalog.js';

export interface VmLock {
  readonly vmId: string;
  readonly holder: string;
  release(): void;
}

interface LockRow {
  holder: string;
  pid: number;
  pid_start: string;
  purpose: string;
  acquired_at: string;
}

/**
 * Per-VM mutual exclusion across vmsnap processes (CLI, server), kept in the
 * catalog so that it needs no extra files. A row left by a dead process (found
 * by pid and the process's start time) is stale and taken over.
 */
export async function acquireVmLock(
  catalog: Catalog,
  vmId: string,
  vmName: string,
  purpose: string,
  waitMs = Number(process.env.VMSNAP_LOCK_WAIT_MS ?? 3000),
): Promise<VmLock> {
  const holder = randomUUID();
  const pidStart = processStartTime(process.pid) ?? '0';
  const deadline = Date.now() + waitMs;
  for (;;) {
    const taken = catalog.tx(() => {
      const row = catalog.db.prepare('SELECT * FROM locks WHERE vm_id = ?').get(vmId) as LockRow | undefined;
      if (row && isProcessAlive(row.pid, row.pid_start)) return row;
      catalog.db
        .prepare(
          'INSERT OR REPLACE INTO locks (vm_id, holder, pid, pid_start, purpose, acquired_at) VALUES (?, ?, ?, ?, ?, ?)',
        )
        .run(vmId, holder, process.pid, pidStart, purpose, new Date().toISOString());
      return undefined;
    });
    if (!taken) {
      return {
        vmId,
        holder,
        release: () => {
          catalog.db.prepare('DELETE FROM locks WHERE vm_id = ? AND holder = ?').run(vmId, holder);
        },
      };
    }
    if (Date.now() >= deadline) {
      throw new VmsnapError('BUSY', `VM '${vmName}' is busy: ${taken.purpose} (pid ${taken.pid}, since ${taken.acquired_at})`, {
        hint: 'wait for that operation to finish and try again',
        details: { vm: vmName, purpose: taken.purpose, pid: taken.pid, since: taken.acquired_at },
      });
    }
    await sleep(100);
  }
}

/** Run fn while holding the VM's lock. */
export async function withVmLock<T>(
  catalog: Catalog,
  vm: { id: string; name: string },
  purpose: string,
  fn: () => Promise<T>,
): Promise<T> {
  const lock = await acquireVmLock(catalog, vm.id, vm.name, purpose);
  try {
    return await fn();
  } finally {
    lock.release();
  }
}
