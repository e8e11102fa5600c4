import { copyFileSync, createReadStream, existsSync, mkdirSync, renameSync, rmSync, statSync, statfsSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { z } from 'zod';
import type { LayerRecord, SnapshotRecord, VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import { bootFilesOf, NAME_PATTERN, NVRAM_SLOT, validateConfig, validateName } from '../contract/config.js';
import { formatBytes } from '../contract/format.js';
import type { ArchiveSource, CheckArchiveResult, ImportResult } from '../contract/views.js';
import { VmsnapError } from '../errors.js';
import { defineOperation } from '../operations/define.js';
import type { Op } from '../operations/op.js';
import { runOperation } from '../operations/runner.js';
import { splitToFiles } from '../memory/split-files.js';
import { MigrationStreamError } from '../memory/stream-split.js';
import { layerPath, legacyStatePath, memoryStateFiles, memoryStatePaths } from '../paths.js';
import { RAM_BACKEND_ID } from '../qemu/launcher.js';
import { recordSplitState } from '../snapshot/memory-state.js';
import { createImage } from '../qemu/qemu-img.js';
import { fsyncFileAndDir } from '../util/files.js';
import { newId, newLayerId } from '../util/ids.js';
import { newIdentity, rollBackNewFiles } from '../vm/define.js';
import { bootFilePath } from '../store/boot-files.js';
import { pump, scratchDir, sha256Of } from './io.js';
import {
  ARCHIVE_FORMAT,
  ARCHIVE_VERSION,
  BOOT_ENTRY,
  bootEntry,
  CONFIG_ENTRY,
  diskEntry,
  ENTRY_NAME,
  HEAD_ENTRY,
  HeadSchema,
  MANIFEST_ENTRY,
  MANIFEST_SUM_ENTRY,
  ManifestSchema,
  STATE_ENTRY,
  type ArchiveHead,
  type ArchiveManifest,
} from '../contract/archive.js';
import { embeddedQcow2, inspectDisk } from './qemu.js';
import { listEntries, TarFormatError, type TarEntry } from './tar.js';

export interface ImportOptions {
  /** Name of the new VM; default the exported VM's name. */
  name?: string;
  /** Bytes of the archive read so far of its size. */
  onProgress?: (done: number, total: number, what: string) => void;
  /** Abort while reading: nothing is created and INTERRUPTED thrown. */
  signal?: AbortSignal;
  /** What messages call the archive (default: the path given); the HTTP API names an upload by its client's file name. */
  label?: string;
}

/** Small entries are read into memory; anything bigger than this where JSON is expected is refused. */
const SMALL_LIMIT = 1024 * 1024;

const damaged = (file: string, what: string, details: Record<string, unknown> = {}): VmsnapError =>
  new VmsnapError('INVALID_ARGUMENT', `'${file}' is damaged: ${what}; nothing was imported`, {
    hint: 'export the snapshot again, or use another copy of the archive',
    details: { field: 'file', path: file, ...details },
  });

const notAnArchive = (file: string, why: string): VmsnapError =>
  new VmsnapError('INVALID_ARGUMENT', `'${file}' is not a vmsnap archive (${why})`, {
    hint: "give a file written by 'vmsnap export'",
    details: { field: 'file', path: file },
  });

interface OpenArchive {
  file: string;
  /** What messages call it. */
  label: string;
  fh: FileHandle;
  size: number;
  entries: TarEntry[];
  complete: boolean;
  head: ArchiveHead;
}

async function readSmall(a: { fh: FileHandle; label: string }, e: TarEntry): Promise<Buffer> {
  if (e.size > SMALL_LIMIT) throw damaged(a.label, `${e.name} is ${formatBytes(e.size)}, far too large`);
  const buf = Buffer.alloc(e.size);
  const { bytesRead } = await a.fh.read(buf, 0, e.size, e.offset);
  if (bytesRead !== e.size) throw damaged(a.label, `the archive is truncated inside ${e.name}`);
  return buf;
}

function parseJson(a: { label: string }, name: string, buf: Buffer): unknown {
  try {
    return JSON.parse(buf.toString('utf8'));
  } catch {
    throw damaged(a.label, `${name} is not valid JSON`);
  }
}

/**
 * Open an archive and read what it says it is, from its headers and its first
 * entry only: enough to refuse a foreign file, a newer format or a taken
 * name before anything is extracted.
 */
async function openArchive(file: string, label = file): Promise<OpenArchive> {
  if (file.trim() === '') throw new VmsnapError('INVALID_ARGUMENT', 'file: give the path of a vmsnap archive', { details: { field: 'file' } });
  const path = resolve(file);
  let st;
  try {
    st = statSync(path);
  } catch {
    throw new VmsnapError('NOT_FOUND', `no such file '${label}'`, { details: { field: 'file', path } });
  }
  if (!st.isFile()) throw new VmsnapError('INVALID_ARGUMENT', `'${label}' is not a regular file`, { details: { field: 'file', path } });
  const fh = await open(path, 'r');
  try {
    let listed;
    try {
      listed = await listEntries(fh, st.size);
    } catch (e) {
      if (!(e instanceof TarFormatError)) throw e;
      throw /at byte 0$/.test(e.message) ? notAnArchive(label, 'it is not a tar file') : damaged(label, e.message);
    }
    const first = listed.entries[0];
    if (!first) throw listed.complete ? notAnArchive(label, 'it is an empty tar file') : notAnArchive(label, 'it is not a tar file');
    if (first.name !== HEAD_ENTRY) throw notAnArchive(label, `a tar file whose first entry is '${first.name}', not ${HEAD_ENTRY}`);
    const parsed = HeadSchema.safeParse(parseJson({ label }, HEAD_ENTRY, await readSmall({ fh, label }, first)));
    if (!parsed.success || parsed.data.format !== ARCHIVE_FORMAT) throw notAnArchive(label, `${HEAD_ENTRY} does not name the ${ARCHIVE_FORMAT} format`);
    const head = parsed.data;
    if (head.version > ARCHIVE_VERSION || head.version < 1) {
      throw new VmsnapError('INVALID_ARGUMENT', `'${label}' is a vmsnap archive of format version ${head.version}; this vmsnap (${ARCHIVE_VERSION}) cannot read it`, {
        hint: head.version > ARCHIVE_VERSION ? `it was written by vmsnap ${head.vmsnapVersion ?? '(newer)'}: import it with that version or newer` : undefined,
        details: { field: 'file', path, version: head.version },
      });
    }
    return { file: path, label, fh, size: st.size, entries: listed.entries, complete: listed.complete, head };
  } catch (e) {
    await fh.close();
    throw e;
  }
}

interface Verified {
  manifest: ArchiveManifest;
  /** Entry name -> extracted file, when extracting. */
  extracted: Map<string, string>;
}

interface Layout {
  manifest: ArchiveManifest;
  byName: Map<string, TarEntry>;
  /** The manifest's file list by entry name. */
  listed: Map<string, ArchiveManifest['files'][number]>;
}

/**
 * Check an opened archive's layout from its headers and its manifest only
 * (cheap: no entry's content is read): every entry is there, whole, listed
 * with its length, and the manifest is sound and matches manifest.sha256.
 */
async function checkLayout(a: OpenArchive): Promise<Layout> {
  const { label: file, entries } = a;
  const byName = new Map<string, TarEntry>();
  for (const e of entries) {
    if (!ENTRY_NAME.test(e.name)) throw damaged(file, `it holds an unexpected entry '${e.name}'`);
    if (byName.has(e.name)) throw damaged(file, `it holds '${e.name}' twice`);
    if (e.offset + e.size > a.size) {
      throw damaged(file, `the archive is truncated: ${e.name} should be ${e.size} bytes but the file ends after ${Math.max(0, a.size - e.offset)}`, { entry: e.name });
    }
    byName.set(e.name, e);
  }
  const manifestEntry = byName.get(MANIFEST_ENTRY);
  const sumEntry = byName.get(MANIFEST_SUM_ENTRY);
  if (!manifestEntry || !sumEntry || !a.complete) {
    throw damaged(file, `the archive is truncated: it ends after '${entries[entries.length - 1]?.name}' ${!manifestEntry ? 'without its manifest' : !sumEntry ? 'without manifest.sha256' : 'without the end-of-archive marker'}`);
  }
  const manifestBuf = await readSmall(a, manifestEntry);
  const sumLine = (await readSmall(a, sumEntry)).toString('utf8');
  const m = /^([0-9a-f]{64}) [ *]manifest\.json\n?$/.exec(sumLine);
  if (!m) throw damaged(file, `${MANIFEST_SUM_ENTRY} is not a sha256 line for manifest.json`);
  if (sha256Of(manifestBuf) !== m[1]) throw damaged(file, `${MANIFEST_ENTRY} does not match ${MANIFEST_SUM_ENTRY}`, { entry: MANIFEST_ENTRY });
  const raw = parseJson(a, MANIFEST_ENTRY, manifestBuf) as { format?: unknown; version?: unknown };
  if (raw?.format !== ARCHIVE_FORMAT || raw.version !== ARCHIVE_VERSION) {
    throw damaged(file, `${MANIFEST_ENTRY} is of format ${String(raw?.format)} version ${String(raw?.version)}, not ${ARCHIVE_FORMAT} ${ARCHIVE_VERSION} as ${HEAD_ENTRY} says`);
  }
  const parsed = ManifestSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw damaged(file, `${MANIFEST_ENTRY}: ${issue.path.join('.') || 'manifest'}: ${issue.message}`);
  }
  const manifest = parsed.data;
  for (const [what, name] of [['VM', manifest.vm.name], ['snapshot', manifest.snapshot.name]] as const) {
    if (!NAME_PATTERN.test(name)) throw damaged(file, `${MANIFEST_ENTRY} names the ${what} '${name}', which is not a valid name`);
  }

  // The manifest names every entry but itself and its sum, with the same lengths.
  const listed = new Map(manifest.files.map((f) => [f.name, f]));
  for (const e of entries) {
    if (e.name === MANIFEST_ENTRY || e.name === MANIFEST_SUM_ENTRY) continue;
    const f = listed.get(e.name);
    if (!f) throw damaged(file, `${e.name} is not listed in the manifest`);
    if (f.bytes !== e.size) throw damaged(file, `${e.name} is ${e.size} bytes but the manifest says ${f.bytes}`, { entry: e.name });
  }
  for (const f of manifest.files) if (!byName.has(f.name)) throw damaged(file, `${f.name} is missing`, { entry: f.name });
  const slots = [...manifest.config.disks.map((d) => d.slot), ...(manifest.config.firmware?.type === 'uefi' ? [NVRAM_SLOT] : [])];
  if (manifest.disks.length !== slots.length || manifest.disks.some((d) => !slots.includes(d.slot))) {
    throw damaged(file, `the manifest's disks (${manifest.disks.map((d) => d.slot).join(', ')}) are not the config's (${slots.join(', ')})`);
  }
  for (const d of manifest.disks) {
    const f = listed.get(d.file);
    if (d.file !== diskEntry(d.slot) || !f || f.sha256 !== d.sha256 || f.bytes !== d.bytes) throw damaged(file, `the manifest's entry for ${d.slot} does not match its file list`);
  }
  // Boot files are named by their content, and every one the config names is there.
  for (const f of manifest.files) {
    const m = BOOT_ENTRY.exec(f.name);
    if (m && m[1] !== f.sha256) throw damaged(file, `${f.name} is not named by its sha256`, { entry: f.name });
  }
  for (const sha of bootFilesOf(manifest.config)) {
    if (!listed.has(bootEntry(sha))) throw damaged(file, `the config names the boot file ${sha}, which the archive does not hold`, { entry: bootEntry(sha) });
  }
  if (manifest.snapshot.hasMemory !== (manifest.state !== null) || (manifest.state && manifest.snapshot.vmState === 'off')) {
    throw damaged(file, 'the manifest contradicts itself about the memory state');
  }
  if (manifest.state) {
    const f = listed.get(STATE_ENTRY);
    if (!f || f.sha256 !== manifest.state.sha256 || f.bytes !== manifest.state.bytes) throw damaged(file, 'the manifest entry for the memory state does not match its file list');
  }
  return { manifest, byName, listed };
}

/**
 * Check an opened archive completely: its layout, every entry's length and
 * sha256 against the manifest (and the manifest against manifest.sha256), the
 * config, and each disk image (a standalone, sound qcow2 of the size the
 * manifest says). With `extractTo`, the large entries are written there as
 * they are hashed (fsynced), so the archive is read once.
 */
async function verifyArchive(
  a: OpenArchive,
  opts: { extractTo?: string; onProgress?: ImportOptions['onProgress']; signal?: AbortSignal },
): Promise<Verified> {
  const { label: file, entries } = a;
  const { manifest, byName, listed } = await checkLayout(a);

  // Every entry's content against its sha256, in archive order (one sequential read).
  const extracted = new Map<string, string>();
  const total = entries.reduce((n, e) => n + e.size, 0);
  let done = 0;
  const onBytes = (n: number): void => {
    done += n;
    opts.onProgress?.(done, total, 'reading and checking');
  };
  const smalls = new Map<string, Buffer>();
  for (const e of entries) {
    if (e.name === MANIFEST_ENTRY || e.name === MANIFEST_SUM_ENTRY) continue;
    const expected = listed.get(e.name)!;
    let sha: string;
    if (e.name.endsWith('.json')) {
      const buf = await readSmall(a, e);
      smalls.set(e.name, buf);
      sha = sha256Of(buf);
      onBytes(e.size);
    } else {
      let out: FileHandle | undefined;
      const dest = opts.extractTo ? join(opts.extractTo, e.name.replaceAll('/', '_')) : undefined;
      try {
        if (dest) out = await open(dest, 'wx', 0o600);
        const r = await pump(a.fh, e.offset, e.size, { onBytes, ...(out ? { to: { fh: out, offset: 0 } } : {}), ...(opts.signal ? { signal: opts.signal } : {}) });
        if (r.bytes !== e.size) throw damaged(file, `the archive is truncated inside ${e.name}`, { entry: e.name });
        sha = r.sha256;
        // The data must be on disk before the catalog names the file it becomes.
        await out?.datasync();
      } finally {
        await out?.close();
      }
      if (dest) extracted.set(e.name, dest);
    }
    if (sha !== expected.sha256) throw damaged(file, `${e.name} does not match its checksum`, { entry: e.name, expected: expected.sha256, actual: sha });
  }

  // The head and config.json agree with the manifest.
  const head = a.head;
  if (head.vm !== manifest.vm.name || head.snapshot !== manifest.snapshot.name) throw damaged(file, `${HEAD_ENTRY} and ${MANIFEST_ENTRY} disagree`);
  const configBuf = smalls.get(CONFIG_ENTRY);
  if (!configBuf) throw damaged(file, `${CONFIG_ENTRY} is missing`);
  const config = validateConfig(parseJson(a, CONFIG_ENTRY, configBuf));
  if (JSON.stringify(config) !== JSON.stringify(manifest.config)) throw damaged(file, `${CONFIG_ENTRY} and ${MANIFEST_ENTRY} disagree`);

  // The disks are what an export writes: standalone qcow2 images of the manifest's sizes.
  for (const d of manifest.disks) {
    const e = byName.get(d.file)!;
    const dest = extracted.get(d.file);
    const got = await inspectDisk(dest ? { path: dest } : { imageOpts: embeddedQcow2(a.file, e.offset, e.size) });
    if (got.problem) {
      throw new VmsnapError('INVALID_ARGUMENT', `'${file}': ${d.file} cannot be used: ${got.problem}; nothing was imported`, {
        hint: "vmsnap imports only archives written by 'vmsnap export'",
        details: { field: 'file', path: file, entry: d.file },
      });
    }
    if (got.virtualSize !== d.virtualSize) throw damaged(file, `${d.file} is a disk of ${got.virtualSize} bytes, the manifest says ${d.virtualSize}`);
  }
  return { manifest, extracted };
}

const sourceOf = (m: ArchiveManifest): ArchiveSource => ({
  vm: m.vm.name,
  snapshot: m.snapshot.name,
  exportedAt: m.exportedAt,
  vmsnapVersion: m.vmsnapVersion,
});

/** Verify an archive completely without importing it (nothing is written). */
export async function checkArchive(file: string, opts: Omit<ImportOptions, 'name'> = {}): Promise<CheckArchiveResult> {
  const t0 = performance.now();
  const a = await openArchive(file, opts.label);
  try {
    const { manifest } = await verifyArchive(a, opts);
    return {
      file: a.file,
      bytes: a.size,
      source: sourceOf(manifest),
      hasMemory: manifest.state !== null,
      disks: manifest.disks.map((d) => ({ slot: d.slot, virtualSize: d.virtualSize, bytes: d.bytes })),
      manifest,
      ms: performance.now() - t0,
    };
  } finally {
    await a.fh.close();
  }
}

function refuseTaken(ctx: Context, name: string): void {
  if (ctx.catalog.findVm(name)) {
    throw new VmsnapError('ALREADY_EXISTS', `a VM named '${name}' already exists`, {
      hint: 'give the imported VM another name: vmsnap import FILE NAME',
      details: { vm: name },
    });
  }
}

function moveFile(from: string, to: string): void {
  try {
    renameSync(from, to);
  } catch (e) {
    // $VMSNAP_HOME/tmp on another file system than layers/ or states/.
    if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e;
    copyFileSync(from, to);
    rmSync(from, { force: true });
  }
  fsyncFileAndDir(to);
}

/**
 * Make a new VM from an archive. Everything is checked first — format and
 * version, every checksum, the config, the disk images — while the archive is
 * read once into a scratch folder in $VMSNAP_HOME/tmp; a damaged archive is
 * refused and nothing is created. Then, under the journal like `create`, the
 * disks become frozen base layers with an empty overlay on top each, and the
 * snapshot is recreated as the VM's one, current snapshot (with its memory
 * state, if any), so a revert to it resumes the guest and `start` boots it.
 */
/**
 * Import: the archive is read and checked into a scratch dir first (nothing
 * the catalog knows is touched), then its files move into the data dir
 * (step 1) and the VM's rows commit in the transaction that finishes the
 * operation. Unfinished means uncommitted: undone by removing the files.
 */
export const importArchiveOp = defineOperation({
  kind: 'import',
  aliases: ['import-vm'],
  plan: z.object({ source: z.string(), scratch: z.string(), createFiles: z.array(z.string()) }),
  steps: 1,
  faults: [],
  onFailure: 'rollback',
  files: (p) => p.createFiles,
  async recover(ctx, op) {
    rmSync(op.plan.scratch, { recursive: true, force: true });
    return rollBackNewFiles(ctx, op);
  },
});

/** What an archive holds, from its headers, its head and its manifest only. */
export interface ArchiveProbe {
  bytes: number;
  /** The exported VM and snapshot: the VM's name is the import's default. */
  source: ArchiveSource;
  hasMemory: boolean;
}

/**
 * The checks of import that read no entry's content: a foreign, newer,
 * truncated or inconsistent archive is refused as import refuses it. For a
 * caller that must answer at once before the import itself runs (the HTTP
 * API, after an upload); import and check repeat them.
 */
export async function probeArchive(file: string, opts: Pick<ImportOptions, 'label'> = {}): Promise<ArchiveProbe> {
  const a = await openArchive(file, opts.label);
  try {
    const { manifest } = await checkLayout(a);
    return { bytes: a.size, source: sourceOf(manifest), hasMemory: manifest.state !== null };
  } finally {
    await a.fh.close();
  }
}

export async function importArchive(ctx: Context, file: string, opts: ImportOptions = {}): Promise<ImportResult> {
  const t0 = performance.now();
  if (opts.name !== undefined) {
    validateName(opts.name, 'VM');
    refuseTaken(ctx, opts.name);
  }
  const a = await openArchive(file, opts.label);
  try {
    const name = opts.name ?? a.head.vm;
    if (name === undefined) throw damaged(a.label, `${HEAD_ENTRY} names no VM`);
    validateName(name, 'VM');
    refuseTaken(ctx, name);
    const fs = statfsSync(ctx.paths.layers);
    const free = fs.bavail * fs.bsize;
    if (a.size > free) {
      throw new VmsnapError('NO_SPACE', `importing '${a.label}' needs up to ${formatBytes(a.size)} but only ${formatBytes(free)} is free in ${ctx.paths.home}`, {
        hint: 'free disk space first; nothing was imported',
        details: { needBytes: a.size, freeBytes: free },
      });
    }
    const scratch = await scratchDir(ctx.paths.home, 'import');
    const vmId = newId();
    return await runOperation(ctx, importArchiveOp, { vm: { id: vmId, name }, plan: { source: a.file, scratch, createFiles: [] } }, async (op) => {
      try {
        const { manifest, extracted } = await verifyArchive(a, {
          extractTo: scratch,
          onProgress: (done, total, what) => {
            opts.onProgress?.(done, total, what);
            op.progress(what, done, total);
          },
          ...(opts.signal ? { signal: opts.signal } : {}),
        });
        if (opts.signal?.aborted) throw new VmsnapError('INTERRUPTED', 'stopped on request', { cause: opts.signal.reason });
        const warnings: string[] = [];
        for (const [field, path] of [['kernel', manifest.config.boot.kernel], ['initrd', manifest.config.boot.initrd]] as const) {
          if (path !== undefined && !existsSync(path)) {
            warnings.push(`the VM boots with the ${field} ${path}, which does not exist on this host: put it there before starting or reverting the VM`);
          }
        }
        const vm = await createImported(ctx, op, vmId, name, manifest, extracted, a.label);
        return {
          vm: vm.name,
          id: vm.id,
          snapshot: manifest.snapshot.name,
          hasMemory: manifest.state !== null,
          vmState: manifest.snapshot.vmState,
          mac: vm.config.nics[0]?.mac ?? '',
          bytes: a.size,
          source: sourceOf(manifest),
          warnings,
          ms: performance.now() - t0,
        };
      } finally {
        rmSync(scratch, { recursive: true, force: true });
      }
    });
  } finally {
    await a.fh.close();
  }
}

async function createImported(
  ctx: Context,
  op: Op<{ source: string; scratch: string; createFiles: string[] }, string>,
  vmId: string,
  name: string,
  manifest: ArchiveManifest,
  extracted: Map<string, string>,
  file: string,
): Promise<VmRecord> {
  const { catalog, paths } = ctx;
  const now = new Date().toISOString();
  // A machine of its own: fresh MACs, cloud-init instance and host ports.
  const config = newIdentity(manifest.config);
  const vm: VmRecord = { id: vmId, name, config, createdAt: now, currentSnapshotId: null };
  const snapshotId = newId();
  const bases: LayerRecord[] = [];
  const overlays: LayerRecord[] = [];
  for (const d of manifest.disks) {
    const baseId = newLayerId();
    const topId = newLayerId();
    bases.push({ id: baseId, vmId: vm.id, slot: d.slot, path: layerPath(paths, baseId), format: 'qcow2', backingId: null, frozen: true, external: false, createdAt: now });
    overlays.push({ id: topId, vmId: vm.id, slot: d.slot, path: layerPath(paths, topId), format: 'qcow2', backingId: baseId, frozen: false, external: false, createdAt: now });
  }
  const memFiles = manifest.state ? memoryStatePaths(paths, snapshotId) : null;
  const legacyFile = legacyStatePath(paths, snapshotId);
  // What the source recorded of its own memory state files does not describe the ones made here.
  const { stateSha256: _s, manifestChecksum: _m, ramIdentity: _i, ramSha256: _r, ramNewBytes: _n, ...meta } = manifest.snapshot.meta;
  const snapshot: SnapshotRecord = {
    id: snapshotId,
    vmId: vm.id,
    name: manifest.snapshot.name,
    description: manifest.snapshot.description,
    parentId: null,
    createdAt: manifest.snapshot.createdAt,
    config,
    stateFile: memFiles?.manifest ?? null,
    vmState: manifest.snapshot.vmState,
    pauseMs: manifest.snapshot.pauseMs,
    status: 'ready',
    meta: {
      ...meta,
      imported: { archive: basename(file), exportedAt: manifest.exportedAt, vm: manifest.vm.name, snapshotId: manifest.snapshot.id },
    },
    layers: Object.fromEntries(bases.map((b) => [b.slot, b.id])),
    // A new VM's snapshot: no policy of its own took it, and it starts unprotected, without expiry.
    protected: false,
    expiresAt: null,
    policyId: null,
    policySlot: null,
  };
  // Boot files the store does not have yet move in from the archive.
  const boot = bootFilesOf(config).filter((sha) => !existsSync(bootFilePath(paths, sha)));
  op.plan.createFiles = [...bases, ...overlays]
    .map((l) => l.path)
    .concat(memFiles ? [...memoryStateFiles(memFiles.manifest), legacyFile] : [], boot.map((sha) => bootFilePath(paths, sha)));
  op.savePlan();
  try {
    if (boot.length > 0) mkdirSync(paths.boot, { recursive: true, mode: 0o700 });
    for (const sha of boot) moveFile(extracted.get(bootEntry(sha))!, bootFilePath(paths, sha));
    for (const [i, base] of bases.entries()) {
      moveFile(extracted.get(manifest.disks[i]!.file)!, base.path);
      const top = overlays[i]!;
      // Relative backing pointer, like every layer: the data dir can move.
      await createImage(top.path, { format: 'qcow2', backing: basename(base.path), backingFormat: 'qcow2' });
      fsyncFileAndDir(top.path);
    }
    if (memFiles && manifest.state) {
      // The archive's one stream becomes a RAM image and a device state, as a snapshot taken here.
      const stream = extracted.get(STATE_ENTRY)!;
      try {
        const split = await splitToFiles(createReadStream(stream, { highWaterMark: 1024 * 1024 }), memFiles.ram, memFiles.dev, { snapshotId, ramBlock: RAM_BACKEND_ID });
        Object.assign(snapshot.meta, await recordSplitState(memFiles.manifest, split, { id: snapshotId, memoryMiB: config.memoryMiB }), { ramSha256: split.ramImage.sha256 });
        rmSync(stream, { force: true });
      } catch (e) {
        if (!(e instanceof MigrationStreamError)) throw e;
        // A stream this vmsnap cannot split (saved otherwise than it saves) is kept whole and loaded whole.
        moveFile(stream, legacyFile);
        snapshot.stateFile = legacyFile;
        snapshot.meta.stateSha256 = manifest.state.sha256;
      }
    }
    op.done(1);
    refuseTaken(ctx, name);
    op.finish('done', undefined, () => {
      catalog.insertVm(vm);
      for (const l of [...bases, ...overlays]) catalog.insertLayer(l);
      for (const l of overlays) catalog.setActiveLayer(vm.id, l.slot, l.id);
      catalog.insertSnapshot(snapshot);
      catalog.setCurrentSnapshot(vm.id, snapshotId);
    });
    return { ...vm, currentSnapshotId: snapshotId };
  } catch (e) {
    if ((e as { code?: string }).code === 'SQLITE_CONSTRAINT_UNIQUE') {
      throw new VmsnapError('ALREADY_EXISTS', `a VM named '${name}' was created meanwhile`, { hint: 'import again under another name', cause: e });
    }
    throw e;
  }
}
