import { existsSync, readFileSync, statSync } from 'node:fs';
import { basename } from 'node:path';
import type { SnapshotMeta, SnapshotRecord, VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import type { VmConfig } from '../contract/config.js';
import type { VerifyProblem } from '../contract/views.js';
import { VmsnapError } from '../errors.js';
import { createManifest, MemoryStateError, validateMemoryState, writeManifest, type MemoryManifest } from '../memory/manifest.js';
import { sha256File } from '../memory/ram-image.js';
import { loadDeviceState } from '../memory/revert.js';
import type { SplitFilesResult } from '../memory/split-files.js';
import { TARGET_PAGE_SIZE } from '../memory/stream-split.js';
import { isSplitState, memoryStateFiles } from '../paths.js';
import { RAM_BACKEND_ID, type RuntimeFiles } from '../qemu/launcher.js';
import type { QmpClient } from '../qemu/qmp.js';
import { loadLegacyMemory } from './live.js';

/**
 * A snapshot's memory state on disk, and the checks that come before a guest runs from it.
 *
 * Split state (this vmsnap): `states/ID.json` (the manifest, what the catalog's state_file
 * names), `ID.ram` (the RAM image: guest RAM as a sparse file + a trailer page binding it
 * to its device state) and `ID.dev` (the device-state stream). A revert or a fork maps the
 * RAM image privately instead of loading it (src/memory/README.md).
 * Legacy state (vmsnap before split states): `states/ID.state`, one migration stream,
 * loaded whole as before.
 *
 * What is checked before every load, in milliseconds: the manifest (schema, version, its
 * own checksum, and that it is the one the catalog recorded at save), what it is for
 * (snapshot, machine family, memory size, RAM block), both files' sizes, the RAM image's
 * trailer (it names the snapshot and the device state's sha256: a RAM image and a device
 * state that do not belong together are refused), the device state's sha256, and the RAM
 * image's identity (inode, size, modification time): unchanged since the save, the image
 * is the one that was written. Only when its identity changed (a copy restored from a
 * backup, say) is the whole image re-hashed before the load, against the sha256 the
 * background pass recorded (seconds per GiB). `verify --deep` hashes every image.
 */

/** `ino:size:mtime-ns` of a file: changes when the file is written, truncated or replaced. */
export function fileIdentity(path: string): string {
  const st = statSync(path, { bigint: true });
  return `${st.ino}:${st.size}:${st.mtimeNs}`;
}

const machineFamily: Record<VmConfig['machine'], RegExp> = { q35: /^pc-q35-/, pc: /^pc-i440fx-/ };

/**
 * After a split save: write the manifest that binds the RAM image and the device state,
 * and return what the snapshot's details record of them.
 */
export async function recordSplitState(
  manifestPath: string,
  split: SplitFilesResult,
  snap: { id: string; memoryMiB: number },
  qemuVersion?: string,
): Promise<Partial<SnapshotMeta>> {
  const { summary } = split;
  if (summary.machine === undefined) throw new VmsnapError('QEMU_FAILED', 'the memory state stream names no machine type (send-configuration is off)');
  const manifest = createManifest({
    snapshotId: snap.id,
    createdAt: new Date().toISOString(),
    machine: summary.machine,
    memoryMiB: snap.memoryMiB,
    streamMode: summary.mode,
    ...(qemuVersion !== undefined ? { qemuVersion } : {}),
    ramBlock: summary.ramBlock,
    ramBytes: summary.ramBlockBytes,
    ramImage: { file: basename(split.ramImage.path), bytes: split.ramImage.bytes },
    deviceState: { file: basename(split.deviceState.path), bytes: split.deviceState.bytes, sha256: split.deviceState.sha256 },
  });
  await writeManifest(manifestPath, manifest);
  return {
    manifestChecksum: manifest.checksum,
    ramIdentity: fileIdentity(split.ramImage.path),
    ramDataBytes: summary.pagesWithData * TARGET_PAGE_SIZE,
    ...(split.ramImage.baseImage !== undefined ? { ramNewBytes: split.ramImage.writtenBytes } : {}),
  };
}

/**
 * The RAM image a new snapshot's image may start as a reflink copy of: its parent's
 * (where the VM's memory came from, so most pages are the same), if that is a split
 * state of the same memory size whose image is still there.
 */
export function parentRamImage(ctx: Context, vm: VmRecord): string | undefined {
  const parent = vm.currentSnapshotId ? ctx.catalog.findSnapshotById(vm.currentSnapshotId) : undefined;
  if (!parent?.stateFile || !isSplitState(parent.stateFile) || parent.config.memoryMiB !== vm.config.memoryMiB) return undefined;
  const ram = memoryStateFiles(parent.stateFile)[1]!;
  return existsSync(ram) ? ram : undefined;
}

/** A memory state checked and ready to load: how to start QEMU for it. */
export type CheckedMemory =
  | { kind: 'legacy'; stateFile: string }
  | { kind: 'split'; manifest: MemoryManifest; ramImage: string; deviceState: string; ramIno: string; checks: string[]; ms: number };

function refused(snap: SnapshotRecord, e: unknown): VmsnapError {
  if (!(e instanceof VmsnapError)) return new VmsnapError('INTERNAL', `snapshot '${snap.name}': checking its memory state failed: ${String(e)}`, { cause: e });
  return new VmsnapError(e.code, `snapshot '${snap.name}': ${e.message}; the guest was not started from it`, {
    hint: e.hint ?? "revert to another snapshot ('vmsnap verify VM --deep' checks them all)",
    details: { ...e.details, snapshot: snap.name },
    cause: e,
  });
}

/**
 * Check a snapshot's memory state before anything is changed for a load (a revert, a
 * fork): what fails here is refused with nothing touched. See the header for what.
 */
export async function checkMemoryState(ctx: Context, snap: SnapshotRecord): Promise<CheckedMemory> {
  const stateFile = snap.stateFile;
  if (!stateFile) throw new VmsnapError('INTERNAL', `snapshot '${snap.name}' has no memory state`);
  if (!isSplitState(stateFile)) {
    if (!existsSync(stateFile)) {
      throw new VmsnapError('NOT_FOUND', `snapshot '${snap.name}': its memory state file is missing (${stateFile})`, { hint: "run 'vmsnap verify'" });
    }
    return { kind: 'legacy', stateFile };
  }
  try {
    const v = await validateMemoryState(stateFile, { expect: { snapshotId: snap.id, memoryMiB: snap.config.memoryMiB, ramBlock: RAM_BACKEND_ID } });
    const m = v.manifest;
    if (!machineFamily[snap.config.machine].test(m.machine)) {
      throw new MemoryStateError('expected-machine', `its memory state was saved from a ${m.machine} machine, not a ${snap.config.machine} one`);
    }
    if (snap.meta.manifestChecksum !== m.checksum) {
      throw new MemoryStateError('manifest-catalog', 'its memory state manifest is not the one recorded when the snapshot was taken (replaced)', {
        recorded: snap.meta.manifestChecksum ?? null,
        found: m.checksum,
      });
    }
    const identity = fileIdentity(v.ramImagePath);
    if (identity !== snap.meta.ramIdentity) {
      // Written, replaced or copied since the save: only its content's hash can say it is still the same.
      const expected = snap.meta.ramSha256;
      if (expected === undefined) {
        throw new MemoryStateError('ram-image-changed', `its RAM image ${v.ramImagePath} was changed since it was saved (and no sha256 of it was recorded yet to prove it intact)`, {
          path: v.ramImagePath,
        });
      }
      await validateMemoryState(stateFile, { ramSha256: expected, verifyDeviceSha256: false });
      v.checks.push('ram-image-sha256');
      ctx.catalog.updateSnapshot(snap.id, { meta: { ...snap.meta, ramIdentity: identity } });
    } else {
      v.checks.push('ram-image-identity');
    }
    return {
      kind: 'split',
      manifest: m,
      ramImage: v.ramImagePath,
      deviceState: v.deviceStatePath,
      ramIno: identity.split(':')[0]!,
      checks: v.checks,
      ms: v.ms,
    };
  } catch (e) {
    throw refused(snap, e);
  }
}

/** How to start QEMU for a checked memory state: stopped (-S), waiting for the stream, on the RAM image. */
export function launchFor(mem: CheckedMemory): { incomingDefer: true; paused: true; ramImage?: string; machineType?: string } {
  return mem.kind === 'split' ? { incomingDefer: true, paused: true, ramImage: mem.ramImage, machineType: mem.manifest.machine } : { incomingDefer: true, paused: true };
}

/** The inode of the file a process maps at `path` (from /proc/PID/maps), if it maps it. */
export function mappedInode(pid: number, path: string): string | undefined {
  for (const line of readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
    // address perms offset dev inode pathname
    const m = /^\S+\s+\S+\s+\S+\s+\S+\s+(\d+)\s+(.*)$/.exec(line);
    if (m && m[2] === path) return m[1];
  }
  return undefined;
}

/**
 * Load a checked memory state into a QEMU started with launchFor(): the device state
 * (split) or the whole stream (legacy, hashed as it loads). Before the guest may run, the
 * RAM image QEMU mapped must be the very file that was checked. The guest stays stopped:
 * the caller resumes it.
 */
export async function loadMemoryState(qmp: QmpClient, qemu: { pid: number; files: RuntimeFiles }, snap: SnapshotRecord, mem: CheckedMemory): Promise<{ loadMs: number }> {
  const socket = qemu.files.incomingSocket;
  if (mem.kind === 'legacy') return loadLegacyMemory(qmp, snap, socket);
  const pid = qemu.pid;
  const mapped = mappedInode(pid, mem.ramImage);
  if (mapped !== mem.ramIno) {
    throw refused(snap, new MemoryStateError('ram-image-mapped', `QEMU mapped ${mapped === undefined ? 'no' : `another (inode ${mapped})`} RAM image at ${mem.ramImage}, not the one checked (inode ${mem.ramIno})`));
  }
  try {
    const { loadMs } = await loadDeviceState(qmp, mem.deviceState, { socket });
    return { loadMs };
  } catch (e) {
    throw refused(snap, e);
  }
}

/** Every file of a snapshot's memory state that is missing. */
export function missingStateFiles(snap: SnapshotRecord): string[] {
  return memoryStateFiles(snap.stateFile).filter((f) => !existsSync(f));
}

/**
 * Hash the RAM images that have no recorded sha256 yet (the background pass after a
 * snapshot, and verify --deep). Safe without the VM lock: an image is never written after
 * its save, and a hash is recorded only if the file kept its identity while it was read.
 */
export async function recordRamHashes(ctx: Context, vm: VmRecord): Promise<Set<string>> {
  const done = new Set<string>();
  for (const s of ctx.catalog.listSnapshots(vm.id)) {
    if (s.status !== 'ready' || !s.stateFile || !isSplitState(s.stateFile) || s.meta.ramSha256 !== undefined) continue;
    const ram = memoryStateFiles(s.stateFile)[1]!;
    let sha256: string;
    try {
      const before = fileIdentity(ram);
      if (before !== s.meta.ramIdentity) continue; // changed since the save: not ours to vouch for
      sha256 = await sha256File(ram);
      if (fileIdentity(ram) !== before) continue;
    } catch {
      continue; // deleted meanwhile
    }
    const fresh = ctx.catalog.findSnapshotById(s.id);
    if (!fresh) continue;
    ctx.catalog.updateSnapshot(s.id, { meta: { ...fresh.meta, ramSha256: sha256 } });
    done.add(s.id);
  }
  return done;
}

/**
 * What verify says of a snapshot's memory state: every file there; the checks a load
 * makes (manifest, pairing, device state sha256); with `deep`, the whole content against
 * the sha256 taken at save (legacy) or recorded by the background pass (split; one
 * recorded just now, from this very read, is not read again).
 */
export async function verifyMemoryState(snap: SnapshotRecord, deep: boolean, hashedNow: ReadonlySet<string>): Promise<VerifyProblem[]> {
  const missing = missingStateFiles(snap);
  const problem = (kind: VerifyProblem['kind'], message: string, path?: string): VerifyProblem => ({
    severity: 'error',
    kind,
    message: `snapshot '${snap.name}': ${message}`,
    snapshot: snap.name,
    ...(path ? { path } : {}),
  });
  if (missing.length > 0) return missing.map((f) => problem('missing-state-file', `its memory state file ${f} is missing`, f));
  const stateFile = snap.stateFile!;
  if (!isSplitState(stateFile)) {
    const expected = snap.meta.stateSha256;
    if (deep && expected && (await sha256File(stateFile)) !== expected) {
      return [problem('state-checksum-mismatch', 'its memory state file does not match the checksum taken when it was saved', stateFile)];
    }
    return [];
  }
  const ramSha256 = deep && !hashedNow.has(snap.id) ? snap.meta.ramSha256 : undefined;
  try {
    const v = await validateMemoryState(stateFile, {
      expect: { snapshotId: snap.id, memoryMiB: snap.config.memoryMiB, ramBlock: RAM_BACKEND_ID },
      ...(ramSha256 ? { ramSha256 } : {}),
    });
    if (v.manifest.checksum !== snap.meta.manifestChecksum) return [problem('state-invalid', 'its memory state manifest is not the one recorded when it was taken', stateFile)];
    if (deep && !snap.meta.ramSha256) return [problem('state-checksum-mismatch', 'its RAM image changed since it was saved, before its sha256 was recorded', v.ramImagePath)];
    return [];
  } catch (e) {
    if (!(e instanceof MemoryStateError)) throw e;
    const check = String(e.details.check);
    return [problem(check.endsWith('sha256') ? 'state-checksum-mismatch' : 'state-invalid', e.message, typeof e.details.path === 'string' ? e.details.path : stateFile)];
  }
}
