import { VmsnapError } from '../errors.js';
import type { QmpClient } from '../qemu/qmp.js';
import { sleep } from '../util/process.js';

/**
 * QEMU arguments and QMP steps to run a VM from a split memory state: guest RAM is the RAM
 * image mapped privately (copy on write, faulted in on first touch; QEMU 7.2 never writes
 * the file, though it opens it read-write), and the device-state stream is loaded with
 * `-incoming defer` + `migrate-incoming`.
 */

/** Escapes a value for QEMU's key=value option syntax (a comma is doubled). */
export function qemuOptValue(s: string): string {
  return s.replace(/,/g, ',,');
}

export interface RamBackendOptions {
  ramImagePath: string;
  ramBytes: number;
  /** Must be the RAM block name in the stream ("pc.ram" for pc/q35), so that block names match. */
  id?: string;
}

/**
 * `-object memory-backend-file,...` for the RAM image, and the `memory-backend=` machine
 * property to add to `-machine` (the machine's `-m` must be the same size).
 */
export function ramBackendArgs(o: RamBackendOptions): { args: string[]; machineProperty: string } {
  const id = o.id ?? 'pc.ram';
  if (o.ramBytes <= 0 || o.ramBytes % 4096 !== 0) throw new VmsnapError('INVALID_ARGUMENT', `RAM size ${o.ramBytes} is not a whole number of pages`);
  return {
    args: [
      '-object',
      `memory-backend-file,id=${qemuOptValue(id)},size=${o.ramBytes},mem-path=${qemuOptValue(o.ramImagePath)},share=off,prealloc=off`,
    ],
    machineProperty: `memory-backend=${qemuOptValue(id)}`,
  };
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

interface MigrateInfo {
  status?: string;
  'error-desc'?: string;
}

/**
 * Loads a device-state stream into a QEMU started with `-incoming defer` (and the RAM
 * backend above). Resolves when the load is over, with QEMU's run state then. QEMU starts
 * the guest after the load if it was not started with -S and the stream's global state
 * says "running" (migration.c:525 process_incoming_migration_bh): a background-snapshot
 * or live precopy save of a running VM comes up running by itself; a save of a paused VM
 * stays paused until `cont`. Start QEMU with -S to check things before the guest runs.
 */
export async function loadDeviceState(qmp: QmpClient, deviceStatePath: string, timeoutMs = 60_000): Promise<{ loadMs: number; status: string; running: boolean }> {
  const t0 = performance.now();
  await qmp.execute('migrate-incoming', { uri: `exec:cat ${shellQuote(deviceStatePath)}` });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let st: { status: string; running: boolean };
    try {
      st = await qmp.queryStatus();
    } catch (e) {
      // QEMU 7.2 exits when an incoming migration fails ("load of migration failed").
      if (e instanceof VmsnapError && e.code === 'QMP_DISCONNECTED') {
        throw new VmsnapError('QEMU_FAILED', 'QEMU exited while loading the device state (see its log: a stream that does not fit this VM is refused)', {
          details: { step: 'load-device-state' },
          cause: e,
        });
      }
      throw e;
    }
    if (st.status !== 'inmigrate') {
      const info = await qmp.execute<MigrateInfo>('query-migrate');
      if (info.status === 'failed') {
        throw new VmsnapError('QEMU_FAILED', `loading the device state failed: ${info['error-desc'] ?? 'see the QEMU log'}`, { details: { step: 'load-device-state' } });
      }
      return { loadMs: performance.now() - t0, status: st.status, running: st.running };
    }
    if (Date.now() > deadline) throw new VmsnapError('QMP_TIMEOUT', `loading the device state took over ${timeoutMs} ms`);
    await sleep(1);
  }
}
