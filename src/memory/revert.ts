import { createReadStream, rmSync } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { VmsnapError } from '../errors.js';
import { connectUnixSocket, type QmpClient } from '../qemu/qmp.js';
import { sleep } from '../util/process.js';

/**
 * The QMP step to run a VM from a split memory state: guest RAM is the RAM image mapped
 * privately (qemu/launcher.ts ramImageArgs: copy on write, faulted in on first touch;
 * QEMU 7.2 never writes the file, though it opens it read-write), and the device-state
 * stream is loaded with `-incoming defer` + `migrate-incoming`.
 */

/** Shell-quote for QEMU's exec: migration URIs (run by /bin/sh -c). */
export function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

interface MigrateInfo {
  status?: string;
  'error-desc'?: string;
}

/**
 * Loads a device-state stream (or any whole migration stream) into a QEMU started with
 * `-incoming defer` (and, for a split state, the RAM image as its memory backend).
 * Resolves when the load is over, with QEMU's run state then. QEMU starts the guest after
 * the load if it was not started with -S and the stream's global state says "running"
 * (migration.c:525 process_incoming_migration_bh): a background-snapshot or live precopy
 * save of a running VM comes up running by itself; a save of a paused VM stays paused
 * until `cont`. Start QEMU with -S to check things before the guest runs.
 *
 * With `socket`, QEMU listens on that unix socket and this process sends the file: no
 * fork and exec inside QEMU (what `exec:cat` costs), which is most of a small load.
 */
export async function loadDeviceState(
  qmp: QmpClient,
  deviceStatePath: string,
  opts: { timeoutMs?: number; socket?: string } = {},
): Promise<{ loadMs: number; status: string; running: boolean }> {
  const t0 = performance.now();
  const timeoutMs = opts.timeoutMs ?? 60_000;
  let sending: Promise<unknown> = Promise.resolve();
  if (opts.socket) {
    rmSync(opts.socket, { force: true });
    await qmp.execute('migrate-incoming', { uri: `unix:${opts.socket}` });
    const conn = await connectUnixSocket(opts.socket, 2000);
    // Settled either way: a send cut short by a failed load is reported as the load's failure.
    sending = pipeline(createReadStream(deviceStatePath, { highWaterMark: 1024 * 1024 }), conn).then(
      () => undefined,
      (e: unknown) => e,
    );
  } else {
    await qmp.execute('migrate-incoming', { uri: `exec:cat ${shellQuote(deviceStatePath)}` });
  }
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
      // QEMU may close the connection once it has read the end-of-state marker, before the
      // description of the sections that follows it: a load that succeeded is not failed by that.
      await sending;
      return { loadMs: performance.now() - t0, status: st.status, running: st.running };
    }
    if (Date.now() > deadline) throw new VmsnapError('QMP_TIMEOUT', `loading the device state took over ${timeoutMs} ms`);
    await sleep(1);
  }
}
