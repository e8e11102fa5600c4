import { NVRAM_SLOT } from '../contract/config.js';
import { VmsnapError, QmpCommandError } from '../errors.js';
import { sha256File } from '../memory/ram-image.js';
import { loadDeviceState } from '../memory/revert.js';
import type { SplitFilesResult, SplitSink } from '../memory/split-files.js';
import { spawnSplitSink } from '../memory/split-sink-process.js';
import { runBlockJob } from '../qemu/block-jobs.js';
import { fileNode, formatNode, RAM_BACKEND_ID } from '../qemu/launcher.js';
import type { QmpClient, QmpEvent } from '../qemu/qmp.js';
import { sleep } from '../util/process.js';

export { shellQuote } from '../memory/revert.js';

/**
 * The QMP steps of a live snapshot and a live revert. Everything here talks to
 * one running QEMU; the catalog and the journal are the caller's business.
 */

export interface OverlaySwitch {
  slot: string;
  /** The layer QEMU writes now (becomes frozen). */
  oldLayerId: string;
  /** The new, empty overlay file that takes the writes from now on. */
  newLayerId: string;
  newPath: string;
}

/** Open the new overlay files in QEMU, not yet attached to anything. */
export async function addOverlayNodes(qmp: QmpClient, switches: OverlaySwitch[]): Promise<void> {
  for (const s of switches) {
    await qmp.execute('blockdev-add', {
      driver: 'file',
      filename: s.newPath,
      'node-name': fileNode(s.newLayerId),
      'auto-read-only': true,
      discard: 'unmap',
    });
    await qmp.execute('blockdev-add', {
      driver: 'qcow2',
      file: fileNode(s.newLayerId),
      'node-name': formatNode(s.newLayerId),
      backing: null,
    });
  }
}

/** Close overlay nodes that were added but never attached (rollback of addOverlayNodes). */
export async function removeOverlayNodes(qmp: QmpClient, switches: OverlaySwitch[]): Promise<void> {
  for (const s of switches) {
    await qmp.execute('blockdev-del', { 'node-name': formatNode(s.newLayerId) }).catch(() => undefined);
    await qmp.execute('blockdev-del', { 'node-name': fileNode(s.newLayerId) }).catch(() => undefined);
  }
}

/** Freeze every disk at one instant: one transaction moves each device onto its new overlay. */
export async function switchToOverlays(qmp: QmpClient, switches: OverlaySwitch[]): Promise<void> {
  if (switches.length === 0) return;
  await qmp.execute('transaction', {
    actions: switches.map((s) => ({
      type: 'blockdev-snapshot',
      data: { node: formatNode(s.oldLayerId), overlay: formatNode(s.newLayerId) },
    })),
  });
}

/**
 * Undo switchToOverlays on a running QEMU: merge each new overlay (the writes
 * made since) back into the old layer with an active commit, pivot the device
 * back onto the old layer, and close the overlay, so the VM runs on its previous
 * layer again and no write is lost.
 */
export async function mergeBackOverlays(qmp: QmpClient, switches: OverlaySwitch[]): Promise<void> {
  for (const s of switches) {
    const jobId = `rollback-${s.newLayerId}`;
    await runBlockJob(qmp, {
      jobId,
      complete: true,
      timeoutMs: 600_000,
      start: () =>
        qmp.execute('block-commit', {
          'job-id': jobId,
          device: formatNode(s.newLayerId),
          'top-node': formatNode(s.newLayerId),
          'base-node': formatNode(s.oldLayerId),
          'auto-dismiss': false,
        }),
    });
    await removeOverlayNodes(qmp, [s]);
  }
}

/** Which node each disk device writes to now (the top of its chain). */
export async function deviceTopNodes(qmp: QmpClient): Promise<Record<string, string>> {
  const blocks = await qmp.execute<{ qdev?: string; device: string; inserted?: { 'node-name': string } }[]>('query-block');
  const out: Record<string, string> = {};
  for (const b of blocks) {
    const dev = b.qdev ?? b.device;
    // qdev paths look like /machine/peripheral/disk0/virtio-backend; the UEFI NVRAM is the machine's flash 1.
    const slot = /system\.flash1$/.test(dev) ? NVRAM_SLOT : (/peripheral\/([^/]+)/.exec(dev)?.[1] ?? dev);
    if (b.inserted) out[slot] = b.inserted['node-name'];
  }
  return out;
}

export type MemorySaveMode = 'background' | 'precopy';

export interface MemorySaveResult {
  mode: MemorySaveMode;
  /** Guest-visible pause in ms, from QEMU's STOP and RESUME event timestamps (0 if the VM was paused already). */
  pauseMs: number;
  stopEvent?: QmpEvent;
  resumeEvent?: QmpEvent;
  /** QEMU's own downtime figure for the migration. */
  qemuDowntimeMs?: number;
  totalMs: number;
  /** Why background-snapshot was not used, if it was not. */
  fallbackReason?: string;
  /** Pre-copy: the downtime limit QEMU switched over with (0: one pass over RAM, see PRECOPY_DOWNTIME_MS). */
  downtimeLimitMs?: number;
}

interface MigrateInfo {
  status?: string;
  downtime?: number;
  'error-desc'?: string;
  ram?: { 'dirty-sync-count'?: number };
}

async function waitForMigration(qmp: QmpClient, until: (status: string) => boolean, timeoutMs: number): Promise<MigrateInfo> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = await qmp.execute<MigrateInfo>('query-migrate');
    const status = info.status ?? 'none';
    if (status === 'failed' || status === 'cancelled') {
      throw new VmsnapError('QEMU_FAILED', `saving memory state failed: ${info['error-desc'] ?? status}`, {
        details: { step: 'save-memory', status },
      });
    }
    if (until(status)) return info;
    if (Date.now() > deadline) {
      await qmp.execute('migrate_cancel').catch(() => undefined);
      throw new VmsnapError('QMP_TIMEOUT', `saving memory state did not finish in ${timeoutMs} ms (status ${status})`);
    }
    await sleep(10);
  }
}

/**
 * The pre-copy save's downtime limit: 0, so that QEMU makes exactly one pass over guest
 * RAM while the guest runs, then stops it and sends in the pause what it wrote during that
 * pass. Not a small limit and several passes: under TCG, QEMU 7.2 loses guest writes at
 * every dirty-bitmap sync after the first. The sync clears the migration dirty bits but
 * not the vCPU TLB entries that already write without marking pages dirty, so writes
 * through them go unseen until the next TLB flush, and the saved RAM misses them (a
 * guest reverted from such a snapshot crashes: slab corruption seen here). Fixed upstream
 * in QEMU 9.0 (03bfc2188f "physmem: Fix migration dirty bitmap coherency with TCG memory
 * access"), not in Debian's 7.2. With a limit of 0 the threshold is 0: ram_save_pending
 * (ram.c:3455) never syncs, the migration completes once every page has been sent once
 * (migration.c:3766), and the only sync while the guest runs is the setup one, after which
 * the full pass sends every page anyway; the final sync runs with the guest stopped.
 */
const PRECOPY_DOWNTIME_MS = 0;
/** Dirty-bitmap syncs of a save that lost no write: the setup one and the final one (guest stopped). */
const PRECOPY_SAFE_SYNCS = 2;

/** Migration settings that make a save to a local file as fast as the disk allows. */
export async function tuneMigration(qmp: QmpClient, downtimeLimitMs = 50): Promise<void> {
  // QEMU's default bandwidth cap (128 MiB/s) is for networks, not a local file.
  await qmp.execute('migrate-set-parameters', { 'max-bandwidth': 64 * 1024 ** 3, 'downtime-limit': downtimeLimitMs });
}

async function setCapability(qmp: QmpClient, capability: string, state: boolean): Promise<void> {
  await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability, state }] });
}

/**
 * Take a disk + memory snapshot of a running or paused VM so that both show
 * the same instant.
 *
 * Running VM, background mode: stop the vCPUs, switch every disk to its overlay
 * in one transaction, and start a background-snapshot migration to the state
 * file: it saves the device state while the VM is still stopped, then resumes
 * it at once and copies RAM as the guest writes to it (userfaultfd
 * write-protect). So the pause is stop → transaction → device state → resume.
 *
 * Where background-snapshot is unavailable: a live pre-copy save that pauses
 * before switch-over; the disks switch inside that pause (longer, but still
 * consistent).
 *
 * Paused VM: the disks switch and a plain migration saves the state; the VM
 * stays paused (QEMU's postmigrate state; `cont` resumes it later).
 */
export async function snapshotWithMemory(
  qmp: QmpClient,
  switches: OverlaySwitch[],
  sink: SplitSink,
  opts: SaveOptions,
): Promise<MemorySaveResult & { split: SplitFilesResult }> {
  try {
    const r = await saveToUri(qmp, switches, sink.uri, opts);
    return { ...r, split: await sink.done };
  } catch (e) {
    // The save failed: the sink removes its files once QEMU's stream breaks off (the
    // caller's rollback removes them anyway, should that take longer).
    sink.close();
    await Promise.race([sink.done.catch(() => undefined), sleep(5000)]);
    throw e;
  } finally {
    sink.close();
  }
}

/**
 * Where a memory save's stream goes: split as it arrives, guest RAM into a sparse RAM
 * image, the rest into a small device-state stream (src/memory). The RAM image is hashed
 * later, in the background: reading it back here would add seconds per GiB to every
 * snapshot. The split runs in a process of its own that reads the stream to its end even
 * if this one is killed: a background snapshot whose reader vanishes can hang the guest
 * for good. Its start (a Node process, ~0.1–0.3 s) overlaps the overlays' creation.
 */
export function openMemorySink(
  files: { ram: string; dev: string },
  opts: { sinkSocket: string; snapshotId: string; onSplitStarted?: () => void; baseImage?: string },
): Promise<SplitSink> {
  return spawnSplitSink(opts.sinkSocket, files.ram, files.dev, {
    snapshotId: opts.snapshotId,
    ramBlock: RAM_BACKEND_ID,
    hashRamImage: false,
    ...(opts.onSplitStarted ? { onStarted: opts.onSplitStarted } : {}),
    ...(opts.baseImage ? { baseImage: opts.baseImage } : {}),
  });
}

interface SaveOptions {
  running: boolean;
  timeoutMs?: number;
  onDisksSwitched?: () => void;
  forcePrecopy?: boolean;
}

/** The QMP side of snapshotWithMemory: `uri` is where QEMU sends the stream (exported for live.test.ts). */
export async function saveToUri(qmp: QmpClient, switches: OverlaySwitch[], uri: string, opts: SaveOptions): Promise<MemorySaveResult> {
  const t0 = performance.now();
  const timeoutMs = opts.timeoutMs ?? 600_000;
  await tuneMigration(qmp);

  if (!opts.running) {
    await setCapability(qmp, 'background-snapshot', false);
    await switchToOverlays(qmp, switches);
    opts.onDisksSwitched?.();
    await qmp.execute('migrate', { uri });
    const info = await waitForMigration(qmp, (s) => s === 'completed', timeoutMs);
    return { mode: 'precopy', pauseMs: 0, ...(info.downtime !== undefined ? { qemuDowntimeMs: info.downtime } : {}), totalMs: performance.now() - t0 };
  }

  let fallbackReason: string | undefined = opts.forcePrecopy ? 'precopy requested' : undefined;
  if (!fallbackReason) {
    try {
      await setCapability(qmp, 'pause-before-switchover', false);
      await setCapability(qmp, 'background-snapshot', true);
    } catch (e) {
      if (!(e instanceof QmpCommandError)) throw e;
      fallbackReason = `background-snapshot unavailable: ${e.description}`;
    }
  }

  if (fallbackReason) return precopyLive(qmp, switches, uri, timeoutMs, fallbackReason, t0, opts.onDisksSwitched);

  // Waiters are set up before the commands that cause the events.
  const stopped = qmp.waitForEvent('STOP', { timeoutMs });
  const resumed = qmp.waitForEvent('RESUME', { timeoutMs });
  // Pipelined: QEMU runs a monitor's commands in order, so sending all three at
  // once keeps the client's round trips out of the guest's pause. If the
  // transaction fails, the migration that follows it is cancelled and the state
  // file discarded by the caller's rollback.
  const stop = qmp.execute('stop');
  const transaction = switchToOverlays(qmp, switches);
  const migrate = qmp.execute('migrate', { uri });
  const [stopR, txR, migR] = await Promise.allSettled([stop, transaction, migrate]);
  if (txR.status === 'fulfilled') opts.onDisksSwitched?.();
  const failed = [stopR, txR, migR].find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    await qmp.execute('migrate_cancel').catch(() => undefined);
    await waitForMigration(qmp, (st) => st !== 'active' && st !== 'setup' && st !== 'cancelling', 30_000).catch(() => undefined);
    const st = await qmp.queryStatus().catch(() => undefined);
    if (st && !st.running) await qmp.execute('cont').catch(() => undefined);
    throw failed.reason;
  }
  const [stopEv, resumeEv] = await Promise.all([stopped, resumed]);
  const info = await waitForMigration(qmp, (s) => s === 'completed', timeoutMs);
  return {
    mode: 'background',
    pauseMs: resumeEv.timeMs - stopEv.timeMs,
    stopEvent: stopEv,
    resumeEvent: resumeEv,
    ...(info.downtime !== undefined ? { qemuDowntimeMs: info.downtime } : {}),
    totalMs: performance.now() - t0,
  };
}

/**
 * `cont` as soon as QEMU allows it after a migration: the "completed" event comes from
 * the migration thread a moment before it leaves the finish-migrate run state, and until
 * then QEMU refuses `cont` ("Migration is not finalized yet").
 */
async function contAfterMigration(qmp: QmpClient, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await qmp.execute('cont');
      return;
    } catch (e) {
      if (!(e instanceof QmpCommandError && /not finalized/i.test(e.description)) || Date.now() > deadline) throw e;
      await sleep(1);
    }
  }
}

/**
 * Pre-copy while the guest runs; QEMU stops it before the switch-over and waits for us
 * (pause-before-switchover): the disks switch in that pause, pipelined with the
 * migrate-continue, and `cont` follows QEMU's "completed" event. One pass over RAM with
 * the guest running (see PRECOPY_DOWNTIME_MS): the pause is what the guest wrote during
 * that pass, the device state and two event round trips — a few ms for an idle guest,
 * more for a guest that writes a lot. A save whose dirty bitmap was synced while the guest
 * ran (the limit changed by someone else) may have lost writes under TCG: it is refused.
 */
async function precopyLive(
  qmp: QmpClient,
  switches: OverlaySwitch[],
  uri: string,
  timeoutMs: number,
  fallbackReason: string,
  t0: number,
  onDisksSwitched?: () => void,
): Promise<MemorySaveResult> {
  await tuneMigration(qmp, PRECOPY_DOWNTIME_MS);
  await setCapability(qmp, 'background-snapshot', false).catch(() => undefined);
  await setCapability(qmp, 'events', true);
  await setCapability(qmp, 'pause-before-switchover', true);
  const stopped = qmp.waitForEvent('STOP', { timeoutMs });
  const resumed = qmp.waitForEvent('RESUME', { timeoutMs });
  const status = (e: QmpEvent): string => String(e.data.status);
  const ended = (st: string): boolean => st === 'failed' || st === 'cancelled';
  const atSwitchover = qmp.waitForEvent('MIGRATION', { timeoutMs, predicate: (e) => status(e) === 'pre-switchover' || ended(status(e)) });
  const completed = qmp.waitForEvent('MIGRATION', { timeoutMs, predicate: (e) => status(e) === 'completed' || ended(status(e)) });
  // QEMU sends MIGRATION_PASS after each dirty-bitmap sync, before the status event that follows it.
  let passes = 0;
  const stopCounting = qmp.onEvent((e) => {
    if (e.event === 'MIGRATION_PASS') passes = Math.max(passes, Number(e.data.pass));
  });
  const lostWrites = (syncs: number): VmsnapError =>
    new VmsnapError('QEMU_FAILED', `saving memory state: QEMU synced its dirty bitmap ${syncs} times, so under TCG it may have missed guest writes; the save was abandoned`, {
      hint: "another client changed the migration's downtime-limit: leave QEMU's migration parameters to vmsnap and take the snapshot again",
      details: { step: 'save-memory', syncs },
    });
  const failure = async (): Promise<never> => {
    const info = await qmp.execute<MigrateInfo>('query-migrate').catch(() => ({}) as MigrateInfo);
    throw new VmsnapError('QEMU_FAILED', `saving memory state failed: ${info['error-desc'] ?? info.status ?? 'unknown error'}`, {
      details: { step: 'save-memory', status: info.status },
    });
  };
  try {
    await qmp.execute('migrate', { uri });
    if (ended(status(await atSwitchover))) await failure();
    // The guest is stopped and the final sync is still to come: one sync so far (setup) or writes may be lost.
    if (passes > PRECOPY_SAFE_SYNCS - 1) throw lostWrites(passes + 1);
    // Pipelined: QEMU runs a monitor's commands in order, one round trip for both.
    const [tx, go] = await Promise.allSettled([switchToOverlays(qmp, switches), qmp.execute('migrate-continue', { state: 'pre-switchover' })]);
    if (tx.status === 'fulfilled') onDisksSwitched?.();
    if (ended(status(await completed))) await failure();
    await contAfterMigration(qmp);
    for (const r of [tx, go]) if (r.status === 'rejected') throw r.reason;
    const [stopEv, resumeEv] = await Promise.all([stopped, resumed]);
    const info = await qmp.execute<MigrateInfo>('query-migrate');
    const syncs = info.ram?.['dirty-sync-count'];
    if (syncs !== undefined && syncs > PRECOPY_SAFE_SYNCS) throw lostWrites(syncs);
    return {
      mode: 'precopy',
      pauseMs: resumeEv.timeMs - stopEv.timeMs,
      stopEvent: stopEv,
      resumeEvent: resumeEv,
      ...(info.downtime !== undefined ? { qemuDowntimeMs: info.downtime } : {}),
      totalMs: performance.now() - t0,
      fallbackReason,
      downtimeLimitMs: PRECOPY_DOWNTIME_MS,
    };
  } catch (e) {
    await qmp.execute('migrate_cancel').catch(() => undefined);
    const st = await qmp.queryStatus().catch(() => undefined);
    if (st && !st.running) await qmp.execute('cont').catch(() => undefined);
    throw e;
  } finally {
    stopCounting();
    await setCapability(qmp, 'pause-before-switchover', false).catch(() => undefined);
  }
}

/**
 * Load a legacy memory state (one migration stream, the format before split states) into
 * a QEMU started with `-incoming defer -S`, hashing the file at the same time (it is in
 * the page cache either way), and check it against the sha256 taken when it was saved;
 * the caller resumes the guest only if this returns.
 */
export async function loadLegacyMemory(
  qmp: QmpClient,
  snap: { name: string; stateFile: string | null; meta: { stateSha256?: string | undefined } },
  socket: string,
): Promise<{ loadMs: number }> {
  if (!snap.stateFile) throw new VmsnapError('INTERNAL', `snapshot '${snap.name}' has no memory state to load`);
  const hashing = sha256File(snap.stateFile);
  hashing.catch(() => undefined);
  const { loadMs } = await loadDeviceState(qmp, snap.stateFile, { timeoutMs: 120_000, socket });
  const sha256 = await hashing;
  const expected = snap.meta.stateSha256;
  if (expected !== undefined && sha256 !== expected) {
    throw new VmsnapError('CATALOG_ERROR', `snapshot '${snap.name}': its memory state file is damaged (checksum mismatch); the guest was not resumed from it`, {
      hint: "revert to another snapshot, or delete this one ('vmsnap verify VM --deep' checks them all)",
      details: { step: 'load-memory', expected, actual: sha256 },
    });
  }
  return { loadMs };
}
