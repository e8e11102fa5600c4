import { NVRAM_SLOT } from '../contract/config.js';
import { VmsnapError, QmpCommandError } from '../errors.js';
import { runBlockJob } from '../qemu/block-jobs.js';
import { fileNode, formatNode } from '../qemu/launcher.js';
import type { QmpClient, QmpEvent } from '../qemu/qmp.js';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { sleep } from '../util/process.js';
import { openStateSink } from './state-sink.js';

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

/** Shell-quote for QEMU's exec: migration URIs (run by /bin/sh -c). */
export function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
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
}

interface MigrateInfo {
  status?: string;
  downtime?: number;
  'error-desc'?: string;
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

/** Migration settings that make a save to a local file as fast as the disk allows. */
export async function tuneMigration(qmp: QmpClient): Promise<void> {
  // QEMU's default bandwidth cap (128 MiB/s) is for networks, not a local file.
  await qmp.execute('migrate-set-parameters', { 'max-bandwidth': 64 * 1024 ** 3, 'downtime-limit': 50 });
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
  statePath: string,
  opts: SaveOptions & { sinkSocket: string },
): Promise<MemorySaveResult & { stateBytes: number; stateSha256: string }> {
  const sink = await openStateSink(opts.sinkSocket, statePath);
  try {
    const r = await saveToUri(qmp, switches, sink.uri, opts);
    const file = await sink.done;
    return { ...r, stateBytes: file.bytes, stateSha256: file.sha256 };
  } finally {
    sink.close();
  }
}

interface SaveOptions {
  running: boolean;
  timeoutMs?: number;
  onDisksSwitched?: () => void;
  forcePrecopy?: boolean;
}

async function saveToUri(qmp: QmpClient, switches: OverlaySwitch[], uri: string, opts: SaveOptions): Promise<MemorySaveResult> {
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

  // Waiters are set up before the commands that cause the events.
  const stopped = qmp.waitForEvent('STOP', { timeoutMs });
  const resumed = qmp.waitForEvent('RESUME', { timeoutMs });

  if (!fallbackReason) {
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

  // Fallback: pre-copy while the guest runs; QEMU stops it before switch-over and waits for us.
  await setCapability(qmp, 'background-snapshot', false).catch(() => undefined);
  await setCapability(qmp, 'pause-before-switchover', true);
  try {
    await qmp.execute('migrate', { uri });
    await waitForMigration(qmp, (s) => s === 'pre-switchover', timeoutMs);
    await switchToOverlays(qmp, switches);
    opts.onDisksSwitched?.();
    await qmp.execute('migrate-continue', { state: 'pre-switchover' });
    const info = await waitForMigration(qmp, (s) => s === 'completed', timeoutMs);
    await qmp.execute('cont');
    const [stopEv, resumeEv] = await Promise.all([stopped, resumed]);
    return {
      mode: 'precopy',
      pauseMs: resumeEv.timeMs - stopEv.timeMs,
      stopEvent: stopEv,
      resumeEvent: resumeEv,
      ...(info.downtime !== undefined ? { qemuDowntimeMs: info.downtime } : {}),
      totalMs: performance.now() - t0,
      fallbackReason,
    };
  } catch (e) {
    await qmp.execute('migrate_cancel').catch(() => undefined);
    const st = await qmp.queryStatus().catch(() => undefined);
    if (st && !st.running) await qmp.execute('cont').catch(() => undefined);
    throw e;
  } finally {
    await setCapability(qmp, 'pause-before-switchover', false).catch(() => undefined);
  }
}

/**
 * Load a saved memory state into a QEMU started with `-incoming defer -S`,
 * hashing the file at the same time (it is in the page cache either way). The
 * guest does not run until the caller resumes it, which it does only if the
 * hash matched the one taken when the state was saved.
 */
export async function loadMemory(qmp: QmpClient, statePath: string, timeoutMs = 120_000): Promise<{ loadMs: number; sha256: string }> {
  const t0 = performance.now();
  const hashing = sha256File(statePath);
  hashing.catch(() => undefined);
  await qmp.execute('migrate-incoming', { uri: `exec:cat ${shellQuote(statePath)}` });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const st = await qmp.queryStatus();
    if (st.status !== 'inmigrate') break;
    if (Date.now() > deadline) throw new VmsnapError('QMP_TIMEOUT', `loading memory state took over ${timeoutMs} ms`);
    await sleep(2);
  }
  const info = await qmp.execute<MigrateInfo>('query-migrate');
  if (info.status === 'failed') {
    throw new VmsnapError('QEMU_FAILED', `loading memory state failed: ${info['error-desc'] ?? 'unknown error'}`, {
      details: { step: 'load-memory' },
    });
  }
  return { loadMs: performance.now() - t0, sha256: await hashing };
}

/**
 * Load a snapshot's memory state and check it against the sha256 taken when it
 * was saved; the caller resumes the guest only if this returns.
 */
export async function loadSnapshotMemory(qmp: QmpClient, snap: { name: string; stateFile: string | null; meta: { stateSha256?: string | undefined } }): Promise<{ loadMs: number }> {
  if (!snap.stateFile) throw new VmsnapError('INTERNAL', `snapshot '${snap.name}' has no memory state to load`);
  const loaded = await loadMemory(qmp, snap.stateFile);
  const expected = snap.meta.stateSha256;
  if (expected !== undefined && loaded.sha256 !== expected) {
    throw new VmsnapError('CATALOG_ERROR', `snapshot '${snap.name}': its memory state file is damaged (checksum mismatch); the guest was not resumed from it`, {
      hint: "revert to another snapshot, or delete this one ('vmsnap verify VM --deep' checks them all)",
      details: { step: 'load-memory', expected, actual: loaded.sha256 },
    });
  }
  return { loadMs: loaded.loadMs };
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 4 * 1024 * 1024 })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}
