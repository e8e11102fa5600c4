import { createHash } from 'node:crypto';
import { existsSync, readFileSync, renameSync, rmSync, statSync, statfsSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { z } from 'zod';
import type { LayerRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import { formatBytes } from '../contract/format.js';
import type { ExportedDisk, ExportResult } from '../contract/views.js';
import { VmsnapError } from '../errors.js';
import { defineOperation } from '../operations/define.js';
import { runOperation, withVm } from '../operations/runner.js';
import { validateMemoryState } from '../memory/manifest.js';
import { joinStream, type JoinResult } from '../memory/stream-join.js';
import { isSplitState, memoryStateFiles } from '../paths.js';
import { RAM_BACKEND_ID } from '../qemu/launcher.js';
import { resolveSnapshot } from '../snapshot/views.js';
import { bootFilesOf } from '../contract/config.js';
import { requireBootFile } from '../store/boot-files.js';
import { fileBytes, fsyncPath } from '../util/files.js';
import { vmsnapVersion } from '../util/version.js';
import { pump, scratchDir, sha256Of, writeAll } from './io.js';
import {
  ARCHIVE_FORMAT,
  ARCHIVE_VERSION,
  bootEntry,
  CONFIG_ENTRY,
  diskEntry,
  HEAD_ENTRY,
  MANIFEST_ENTRY,
  MANIFEST_SUM_ENTRY,
  STATE_ENTRY,
  type ArchiveHead,
  type ArchiveManifest,
  type FileSum,
} from '../contract/archive.js';
import { convertInto, createQcow2, measureQcow2, virtualSize } from './qemu.js';
import { BLOCK, END_OF_ARCHIVE, fileHeader, padTo512 } from './tar.js';

export interface ExportOptions {
  /** Replace FILE if it exists. */
  force?: boolean;
  /** Bytes done of total, per phase (`what`): flattening the disks, then writing and checksumming. */
  onProgress?: (done: number, total: number, what: string) => void;
  /** Abort the export: the partial file is removed and INTERRUPTED thrown. */
  signal?: AbortSignal;
}

/**
 * Export: the archive is written to FILE.partial (step 1: complete and
 * fsynced), then renamed to FILE. Killed before the rename, recovery removes
 * the partial file and the scratch dir: no archive ever appears under its
 * name half written. The VM's lock is held only while the disks are read.
 */
export const exportSnapshotOp = defineOperation({
  kind: 'export',
  plan: z.object({ snapshotId: z.string(), file: z.string(), partial: z.string(), scratch: z.string() }),
  steps: 1,
  faults: [],
  onFailure: 'rollback',
  files: () => [],
  async recover(_ctx, op) {
    rmSync(op.plan.scratch, { recursive: true, force: true });
    if (op.step >= 1 && !existsSync(op.plan.partial) && existsSync(op.plan.file)) {
      op.finish('done');
      return { outcome: 'rolled_forward' };
    }
    rmSync(op.plan.partial, { force: true });
    op.finish('rolled_back');
    return { outcome: 'rolled_back' };
  },
});

/** Refuse a target that cannot or should not be written, before anything is. */
function checkTarget(ctx: Context, file: string, force: boolean): string {
  if (file.trim() === '') throw new VmsnapError('INVALID_ARGUMENT', 'file: give the path of the archive to write', { details: { field: 'file' } });
  const target = resolve(file);
  const dir = dirname(target);
  if (!existsSync(dir) || !statSync(dir).isDirectory()) {
    throw new VmsnapError('NOT_FOUND', `file: no such directory '${dir}'`, { hint: 'create the directory first, or write the archive elsewhere', details: { field: 'file', path: target } });
  }
  if (dir === ctx.paths.layers || dir === ctx.paths.states) {
    throw new VmsnapError('INVALID_ARGUMENT', `file: '${dir}' belongs to vmsnap's data; write the archive elsewhere`, { details: { field: 'file', path: target } });
  }
  if (existsSync(target)) {
    if (statSync(target).isDirectory()) {
      throw new VmsnapError('INVALID_ARGUMENT', `file: '${target}' is a directory`, { hint: `give a file name, e.g. ${join(target, 'backup.vmsnap')}`, details: { field: 'file', path: target } });
    }
    if (!force) {
      throw new VmsnapError('ALREADY_EXISTS', `file: '${target}' already exists`, { hint: 'pass --force to replace it, or choose another name', details: { field: 'file', path: target } });
    }
  }
  return target;
}

interface PlacedDisk {
  slot: string;
  layer: LayerRecord;
  virtualSize: number;
  /** Where its data starts in the archive, and its length once written. */
  offset: number;
  bytes: number;
}

/**
 * Write one snapshot of a VM as a self-contained archive (see manifest.ts for
 * the layout). The guest is never paused: only frozen layers and the state
 * file are read. The VM's lock is held while qemu-img flattens the disks
 * straight into the archive — so no merge can rewrite a layer it is reading
 * and the snapshot cannot be deleted under it — and released before the
 * slower part: checksumming the written disks (which overlaps the fsync of
 * their data) and copying the memory state, whose file is held open (a delete
 * meanwhile may unlink it; the open handle still reads it whole).
 * The archive is written to FILE.partial, fsynced, then renamed to FILE.
 */
export async function exportSnapshot(ctx: Context, vmName: string, snapName: string, file: string, opts: ExportOptions = {}): Promise<ExportResult> {
  const t0 = performance.now();
  const vm = ctx.catalog.getVm(vmName);
  const snap0 = resolveSnapshot(ctx, vm, snapName);
  const target = checkTarget(ctx, file, opts.force ?? false);
  const partial = `${target}.partial`;
  // An export killed earlier left its partial file for recovery to remove: finish that first,
  // before this one writes the same file (the lock is taken again only for reading the disks).
  await withVm(ctx, vm, `export of snapshot '${snap0.name}'`, async () => undefined);
  const scratch = await scratchDir(ctx.paths.home, 'export');
  return runOperation(ctx, exportSnapshotOp, { vm, plan: { snapshotId: snap0.id, file: target, partial, scratch } }, async (op) => {
  const progress = (done: number, total: number, what: string): void => {
    opts.onProgress?.(done, total, what);
    op.progress(what, done, total);
  };
  let fh: FileHandle | undefined;
  let stateFh: FileHandle | undefined;
  /** A split memory state: its RAM image and device state, held open. */
  let split: { ram: FileHandle; dev: FileHandle; estimate: number } | undefined;
  try {
    // Mode 0600: the archive holds the guest's disks and memory.
    fh = await open(partial, 'w+', 0o600).catch((e: NodeJS.ErrnoException) => {
      throw new VmsnapError('INVALID_ARGUMENT', `file: cannot write '${partial}': ${e.code === 'EACCES' || e.code === 'EPERM' ? 'permission denied' : e.code === 'EROFS' ? 'read-only file system' : e.message}`, {
        hint: 'write the archive where you may create files',
        details: { field: 'file', path: target },
      });
    });
    const out = fh;
    const mtime = Date.now();
    const exportedAt = new Date(mtime).toISOString();
    const files: FileSum[] = [];
    let pos = 0;
    const putSmall = async (name: string, data: Buffer, listed = true): Promise<void> => {
      await writeAll(out, fileHeader(name, data.length, mtime), pos);
      await writeAll(out, data, pos + BLOCK);
      pos += BLOCK + padTo512(data.length);
      if (listed) files.push({ name, bytes: data.length, sha256: sha256Of(data) });
    };
    const head: ArchiveHead = { format: ARCHIVE_FORMAT, version: ARCHIVE_VERSION, vmsnapVersion: vmsnapVersion(), vm: vm.name, snapshot: snap0.name, exportedAt };
    await putSmall(HEAD_ENTRY, Buffer.from(`${JSON.stringify(head, null, 2)}\n`));

    let snap = snap0;
    const placed: PlacedDisk[] = [];
    const lockT0 = performance.now();
    await withVm(ctx, vm, `export of snapshot '${snap0.name}'`, async () => {
      snap = resolveSnapshot(ctx, vm, snap0.id);
      const slots = snap.config.disks.map((d) => d.slot).filter((s) => snap.layers[s] !== undefined);
      for (const s of Object.keys(snap.layers)) if (!slots.includes(s)) slots.push(s);
      const layers = slots.map((slot) => {
        const layer = ctx.catalog.getLayer(snap.layers[slot]!);
        if (!existsSync(layer.path)) {
          throw new VmsnapError('NOT_FOUND', `snapshot '${snap.name}': the layer of ${slot} is missing (${layer.path})`, { hint: `run 'vmsnap verify ${vm.name}'` });
        }
        return { slot, layer };
      });
      const sizes = await Promise.all(
        layers.map(async ({ layer }) => {
          const [required, virtual] = await Promise.all([measureQcow2(layer.path, layer.format), virtualSize(layer.path, layer.format)]);
          return { required, virtual };
        }),
      );
      const stateFiles = memoryStateFiles(snap.stateFile);
      for (const f of stateFiles) {
        if (fileSize(f) < 0) throw new VmsnapError('NOT_FOUND', `snapshot '${snap.name}': its memory state file is missing (${f})`, { hint: `run 'vmsnap verify ${vm.name}'` });
      }
      // A split state leaves as one stream of about its data: the RAM image's allocated bytes and the device state.
      const stateBytes = stateFiles.reduce((a, f) => a + fileBytes(f), 0);
      const need = sizes.reduce((a, s) => a + s.required, 0) + stateBytes;
      const fs = statfsSync(dirname(target));
      const free = fs.bavail * fs.bsize;
      if (need > free) {
        throw new VmsnapError('NO_SPACE', `the archive needs about ${formatBytes(need)} but only ${formatBytes(free)} is free in ${dirname(target)}`, {
          hint: 'free space there, or write the archive elsewhere; nothing was written',
          details: { needBytes: need, freeBytes: free },
        });
      }
      const total = sizes.reduce((a, s) => a + s.required, 0);
      let before = 0;
      for (const [i, { slot, layer }] of layers.entries()) {
        const { required, virtual } = sizes[i]!;
        const headerAt = pos;
        const offset = pos + BLOCK;
        // An empty qcow2 of the disk's size, which qemu-img then fills in place.
        const template = join(scratch, `${slot}.qcow2`);
        await createQcow2(template, virtual);
        await writeAll(out, fileHeader(diskEntry(slot), 0, mtime), headerAt);
        await writeAll(out, readFileSync(template), offset);
        rmSync(template, { force: true });
        progress(before, total, 'flattening disks');
        await convertInto(layer.path, layer.format, partial, offset, {
          onFraction: (f) => progress(before + Math.round(f * required), total, 'flattening disks'),
          ...(opts.signal ? { signal: opts.signal } : {}),
        });
        before += required;
        const bytes = (await out.stat()).size - offset;
        await writeAll(out, fileHeader(diskEntry(slot), bytes, mtime), headerAt);
        placed.push({ slot, layer, virtualSize: virtual, offset, bytes });
        pos = offset + padTo512(bytes);
      }
      progress(total, total, 'flattening disks');
      const openState = (f: string): Promise<FileHandle> =>
        open(f, 'r').catch(() => {
          throw new VmsnapError('NOT_FOUND', `snapshot '${snap.name}': its memory state file is missing (${f})`, { hint: `run 'vmsnap verify ${vm.name}'` });
        });
      if (snap.stateFile && isSplitState(snap.stateFile)) {
        // Checked as a load checks it (manifest, pairing, device state), then held open.
        const v = await validateMemoryState(snap.stateFile, { expect: { snapshotId: snap.id, ramBlock: RAM_BACKEND_ID } });
        split = { ram: await openState(v.ramImagePath), dev: await openState(v.deviceStatePath), estimate: stateBytes };
      } else if (snap.stateFile) {
        stateFh = await openState(snap.stateFile);
      }
    });
    const lockedMs = performance.now() - lockT0;

    // The disks' data goes to stable storage while it is read back and hashed (from the page cache).
    const flushing = out.datasync();
    flushing.catch(() => undefined);
    const stateSize = stateFh ? (await stateFh.stat()).size : (split?.estimate ?? 0);
    let total = placed.reduce((a, d) => a + d.bytes, 0) + stateSize;
    let done = 0;
    const onBytes = (n: number): void => {
      done += n;
      progress(done, total, 'writing and checksumming');
    };
    const sig = opts.signal ? { signal: opts.signal } : {};
    const disks: ExportedDisk[] = [];
    for (const d of placed) {
      const r = await pump(out, d.offset, d.bytes, { onBytes, ...sig });
      if (r.bytes !== d.bytes) throw new VmsnapError('INTERNAL', `${d.slot}: read back ${r.bytes} of ${d.bytes} bytes from the archive`);
      disks.push({ slot: d.slot, virtualSize: d.virtualSize, bytes: d.bytes, sha256: r.sha256 });
      files.push({ name: diskEntry(d.slot), bytes: d.bytes, sha256: r.sha256 });
    }
    let state: ExportResult['state'] = null;
    if (stateFh) {
      await writeAll(out, fileHeader(STATE_ENTRY, stateSize, mtime), pos);
      const r = await pump(stateFh, 0, stateSize, { to: { fh: out, offset: pos + BLOCK }, onBytes, ...sig });
      const expected = snap.meta.stateSha256;
      if (r.bytes !== stateSize || (expected !== undefined && r.sha256 !== expected)) {
        throw new VmsnapError('CATALOG_ERROR', `snapshot '${snap.name}': its memory state file is damaged (it does not match the checksum taken when it was saved); not exporting it`, {
          hint: `'vmsnap verify ${vm.name} --deep' checks every snapshot; a disk-only copy can be made by a clone or another snapshot`,
          details: { expected, actual: r.sha256 },
        });
      }
      pos += BLOCK + padTo512(stateSize);
      state = { bytes: stateSize, sha256: r.sha256 };
      files.push({ name: STATE_ENTRY, bytes: stateSize, sha256: r.sha256 });
    } else if (split) {
      // One whole stream again (stream-join.ts), written as it is made; its header once its length is known.
      const joined: Partial<JoinResult> = {};
      const hash = createHash('sha256');
      let bytes = 0;
      for await (const chunk of joinStream(split.dev, split.ram, joined, sig)) {
        hash.update(chunk);
        await writeAll(out, chunk, pos + BLOCK + bytes);
        bytes += chunk.length;
        onBytes(chunk.length);
      }
      const expected = snap.meta.ramSha256;
      if (expected !== undefined && joined.ramImageSha256 !== expected) {
        throw new VmsnapError('CATALOG_ERROR', `snapshot '${snap.name}': its RAM image is damaged (it does not match the sha256 recorded after it was saved); not exporting it`, {
          hint: `'vmsnap verify ${vm.name} --deep' checks every snapshot; a disk-only copy can be made by a clone or another snapshot`,
          details: { expected, actual: joined.ramImageSha256 },
        });
      }
      await writeAll(out, fileHeader(STATE_ENTRY, bytes, mtime), pos);
      pos += BLOCK + padTo512(bytes);
      // The stream's length was an estimate until now.
      total = done;
      progress(done, total, 'writing and checksumming');
      const sha256 = hash.digest('hex');
      state = { bytes, sha256 };
      files.push({ name: STATE_ENTRY, bytes, sha256 });
    }
    // Boot files the config names from the store travel with it (the importing host may not have them).
    for (const sha of bootFilesOf(snap.config)) await putSmall(bootEntry(sha), readFileSync(requireBootFile(ctx.paths, sha, 'boot file')));
    await putSmall(CONFIG_ENTRY, Buffer.from(`${JSON.stringify(snap.config, null, 2)}\n`));
    const manifest: ArchiveManifest = {
      format: ARCHIVE_FORMAT,
      version: ARCHIVE_VERSION,
      vmsnapVersion: vmsnapVersion(),
      exportedAt,
      vm: { name: vm.name, id: vm.id },
      snapshot: {
        name: snap.name,
        id: snap.id,
        description: snap.description,
        createdAt: snap.createdAt,
        vmState: snap.vmState,
        hasMemory: state !== null,
        pauseMs: snap.pauseMs,
        meta: snap.meta,
      },
      config: snap.config,
      disks: disks.map((d) => ({ slot: d.slot, file: diskEntry(d.slot), format: 'qcow2' as const, virtualSize: d.virtualSize, bytes: d.bytes, sha256: d.sha256 })),
      state: state ? { file: STATE_ENTRY, ...state } : null,
      files,
    };
    const manifestBuf = Buffer.from(`${JSON.stringify(manifest, null, 2)}\n`);
    await putSmall(MANIFEST_ENTRY, manifestBuf, false);
    await putSmall(MANIFEST_SUM_ENTRY, Buffer.from(`${sha256Of(manifestBuf)}  ${MANIFEST_ENTRY}\n`), false);
    await writeAll(out, END_OF_ARCHIVE, pos);
    pos += END_OF_ARCHIVE.length;
    await out.truncate(pos);
    await flushing;
    await out.sync();
    await out.close();
    fh = undefined;
    op.done(1);
    if (opts.signal?.aborted) throw new VmsnapError('INTERRUPTED', 'stopped on request', { cause: opts.signal.reason });
    if (!opts.force && existsSync(target)) {
      throw new VmsnapError('ALREADY_EXISTS', `file: '${target}' was created by someone else during the export`, { hint: 'pass --force to replace it, or choose another name' });
    }
    renameSync(partial, target);
    fsyncPath(dirname(target));
    const result: ExportResult = {
      file: target,
      bytes: pos,
      vm: vm.name,
      snapshot: snap.name,
      hasMemory: state !== null,
      disks,
      state,
      ms: performance.now() - t0,
      lockedMs,
      manifest,
    };
    return result;
  } catch (e0) {
    // The partial file and the scratch dir go with the operation's rollback.
    await fh?.close().catch(() => undefined);
    throw (e0 as NodeJS.ErrnoException).code === 'ENOSPC'
      ? new VmsnapError('NO_SPACE', `no space left in ${dirname(target)} for the archive`, { hint: 'free space there, or write the archive elsewhere', cause: e0 })
      : e0;
  } finally {
    await (stateFh as FileHandle | undefined)?.close().catch(() => undefined);
    const held = split as { ram: FileHandle; dev: FileHandle } | undefined;
    await held?.ram.close().catch(() => undefined);
    await held?.dev.close().catch(() => undefined);
    rmSync(scratch, { recursive: true, force: true });
  }
  });
}

/** Size of a file, or -1 when it is missing. */
function fileSize(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return -1;
  }
}
