import { randomBytes } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, renameSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { PassThrough, type Writable } from 'node:stream';
import type { CopyOutResult, DirectoryListing, FilesystemsView, GuestFilesystemView } from '../contract/files.js';
import { VmsnapError } from '../errors.js';
import { extractTar } from './extract.js';
import { baseName, normalizePath, type NamedFilesystem } from './namespace.js';
import type { PinnedReader } from './read-op.js';
import type { FilesReader, ReaderOptions } from './reader.js';

/** Browsing a snapshot's files and copying them out to the host (on an open reader: see session.ts). */

export type FilesOptions = Omit<ReaderOptions, 'onPhase'> & { onPhase?: (text: string) => void };

export function filesystemView(f: NamedFilesystem): GuestFilesystemView {
  const { sessionDevice: _s, point: _p, extent: _e, ...view } = f;
  return view;
}

/** A point's filesystems and its unreadable disks, as the contract shows them. */
export async function describePoint(r: FilesReader, k: number, vm: string): Promise<FilesystemsView> {
  const [fss, unreadable] = await Promise.all([r.filesystems(k), r.unreadable(k)]);
  return { vm, snapshot: r.points[k]!.label, filesystems: fss.map(filesystemView), unreadable };
}

/** A directory of point k, sorted by name. */
export async function listAt(pr: PinnedReader, k: number, path: string): Promise<DirectoryListing> {
  const p = normalizePath(path);
  const { filesystem, entries } = await pr.reader.list(k, p);
  return { vm: pr.vm.name, snapshot: pr.points[k]!.label, path: p, filesystem, entries };
}

export interface CopyOutOptions extends FilesOptions {
  /** Replace an existing file at DEST (a directory is only ever copied to a new path). */
  force?: boolean;
  /** For dest '-': where the content goes (default process.stdout). */
  stdout?: Writable;
}

/** A destination on the host must be '-' or a path in a directory that exists. */
export function checkDest(dest: string): void {
  if (dest === '') throw new VmsnapError('INVALID_ARGUMENT', 'dest: give a host path, or - for stdout', { details: { field: 'dest' } });
  if (dest === '-') return;
  const dir = existsSync(dest) && statSync(dest).isDirectory() ? resolve(dest) : dirname(resolve(dest));
  if (!existsSync(dir) || !statSync(dir).isDirectory()) {
    throw new VmsnapError('NOT_FOUND', `dest: no such directory '${dir}'`, { hint: 'create it first', details: { field: 'dest', path: dir } });
  }
}

const partialName = (target: string): string => join(dirname(target), `.${basename(target)}.vmsnap-partial-${randomBytes(4).toString('hex')}`);

/**
 * Copy a file or a directory tree out of a snapshot to the host, with modes and
 * mtimes (owners too when run as root); symlinks are copied as symlinks. DEST
 * '-' writes a file's content (or a directory as a tar) to stdout. A file is
 * written beside its target and renamed into place; an existing file is only
 * replaced with `force`; a directory goes only to a path that does not exist.
 */
export async function copyOutAt(pr: PinnedReader, k: number, path: string, dest: string, o: CopyOutOptions = {}): Promise<CopyOutResult> {
  const t0 = performance.now();
  const src = normalizePath(path);
  checkDest(dest);
  const toStdout = dest === '-';
  const r = pr.reader;
  const { entry } = await r.stat(k, src);
  const base: Omit<CopyOutResult, 'type' | 'files' | 'bytes' | 'skipped' | 'ms'> = { vm: pr.vm.name, snapshot: pr.points[k]!.label, source: src, dest };
  const done = (x: Pick<CopyOutResult, 'type' | 'files' | 'bytes' | 'skipped'> & { dest?: string }): CopyOutResult => ({ ...base, ...x, ms: performance.now() - t0 });
  if (toStdout) {
    const out = o.stdout ?? process.stdout;
    if (entry.type === 'dir') {
      const counter = new PassThrough();
      let bytes = 0;
      counter.on('data', (c: Buffer) => (bytes += c.length));
      counter.pipe(out, { end: false });
      await r.tarTo(k, src, counter);
      return done({ type: 'dir', files: 0, bytes, skipped: [] });
    }
    const st = await r.readTo(k, src, out, { end: false });
    return done({ type: 'file', files: 1, bytes: st.size, skipped: [] });
  }
  const abs = resolve(dest);
  const target = existsSync(abs) && statSync(abs).isDirectory() ? join(abs, baseName(src) || 'root') : abs;
  const exists = lstatExists(target);
  if (entry.type === 'dir') {
    if (exists) {
      throw new VmsnapError('ALREADY_EXISTS', `dest: '${target}' exists: a directory is copied only to a new path`, {
        hint: 'give a path that does not exist yet',
        details: { field: 'dest', path: target },
      });
    }
    const partial = partialName(target);
    mkdirSync(partial, { mode: 0o700 });
    try {
      // The total first (names and sizes), so that the copy can show progress.
      const loc = await r.locate(k, src);
      const all = await r.walk(k, loc.fs, { under: loc.inner });
      const total = all.reduce((a, e) => a + (e.type === 'file' ? (e.size ?? 0) : 0), 0);
      let moved = 0;
      const pipe = new PassThrough({ highWaterMark: 1 << 20 });
      const [res] = await Promise.all([
        extractTar(pipe, partial, {
          onBytes: (n) => {
            moved += n;
            o.onProgress?.('copying', moved, total);
          },
        }),
        r.tarTo(k, src, pipe),
      ]);
      renameSync(partial, target);
      return done({ type: 'dir', dest: target, files: res.files, bytes: res.bytes, skipped: res.skipped });
    } catch (e) {
      rmSync(partial, { recursive: true, force: true });
      throw e;
    }
  }
  if (exists && !o.force) {
    throw new VmsnapError('ALREADY_EXISTS', `dest: '${target}' already exists`, { hint: 'pass --force to replace it', details: { field: 'dest', path: target } });
  }
  if (exists && lstatSync(target).isDirectory()) {
    throw new VmsnapError('INVALID_ARGUMENT', `dest: '${target}' is a directory`, { details: { field: 'dest', path: target } });
  }
  const partial = partialName(target);
  try {
    if (entry.type === 'symlink') {
      symlinkSync(entry.linkTarget ?? '', partial);
      renameSync(partial, target);
      return done({ type: 'file', dest: target, files: 1, bytes: 0, skipped: [] });
    }
    if (entry.type !== 'file') {
      throw new VmsnapError('INVALID_ARGUMENT', `${src} is a ${entry.type}, not a file or directory: it cannot be copied`, { details: { path: src, type: entry.type } });
    }
    const st = await r.download(k, src, partial);
    renameSync(partial, target);
    return done({ type: 'file', dest: target, files: 1, bytes: st.size, skipped: [] });
  } catch (e) {
    rmSync(partial, { force: true });
    throw e;
  }
}

function lstatExists(p: string): boolean {
  try {
    lstatSync(p);
    return true;
  } catch {
    return false;
  }
}

