import type { Context } from '../context.js';
import type { VmConfig } from '../contract/config.js';
import type { DiffReport, DiskDiff, FileChange, FileChangeAspect, FilesystemDiff, GuestFileType } from '../contract/files.js';
import { VmsnapError } from '../errors.js';
import { type Extent, layersBetween, overlaps, totalLength, writtenExtents } from './extents.js';
import type { FindEntry } from './guestfs.js';
import { joinPath, type NamedFilesystem } from './namespace.js';
import type { PinnedPoint, PinnedReader } from './read-op.js';
import type { FilesOptions } from './copy-out.js';
import type { FilesReader } from './reader.js';

/**
 * What changed between two points of a VM (two snapshots, or a snapshot and
 * the present state):
 *
 * - per disk, the bytes written in between, from the allocation maps of the
 *   layers between the two points (no data read);
 * - per filesystem, the files added, removed and changed. A filesystem whose
 *   partition no write touched is not scanned at all. The others are walked on
 *   both sides (names and lstat); a file whose size differs changed; one whose
 *   size is the same is hashed on both sides when its mtime, ctime or inode
 *   differ (a rewrite in place), and also when its metadata is the same while
 *   such files total no more than HASH_BUDGET per filesystem (filesystems with
 *   one-second timestamps, like ext2, can hide a rewrite within the second),
 *   or always with `exact`.
 */

/** Same-metadata files are hashed too while they total at most this per filesystem. */
export const HASH_BUDGET = 64 * 1024 * 1024;

export interface DiffOptions extends FilesOptions {
  /** Totals only: leave the list of changes out of the report. */
  stat?: boolean;
  /** Hash every file present on both sides with the same size, whatever its metadata. */
  exact?: boolean;
}

const key = (e: FindEntry): string => e.rawPath ?? e.path;
const typeOf = (e: FindEntry): GuestFileType => (e.type ?? 'unknown') as GuestFileType;
const sameTime = (a?: Date, b?: Date, an?: number, bn?: number): boolean => (a?.getTime() ?? -1) === (b?.getTime() ?? -1) && (an ?? 0) === (bn ?? 0);

/** Compare the trees of one filesystem at two points (both already named and mountable). */
async function compareTrees(r: FilesReader, ka: number, a: NamedFilesystem, kb: number, b: NamedFilesystem, exact: boolean): Promise<{ changes: FileChange[]; hashed: number }> {
  const [ea, eb] = await Promise.all([r.walk(ka, a), r.walk(kb, b)]);
  const ma = new Map(ea.map((e) => [key(e), e]));
  const mb = new Map(eb.map((e) => [key(e), e]));
  const name = (e: FindEntry): string => joinPath(b.name, `/${e.path}`);
  const changes: FileChange[] = [];
  const sameSize: { x: FindEntry; y: FindEntry; metaSame: boolean }[] = [];
  const pending = new Map<FindEntry, FileChangeAspect[]>();
  for (const [k, y] of mb) {
    const x = ma.get(k);
    if (!x) {
      changes.push({ path: name(y), change: 'added', type: typeOf(y), size: y.size ?? 0 });
      continue;
    }
    const aspects: FileChangeAspect[] = [];
    if (typeOf(x) !== typeOf(y)) aspects.push('type', 'content');
    else if (typeOf(y) === 'file') {
      if (x.size !== y.size) aspects.push('size', 'content');
      else if (!x.undecodable) {
        const metaSame = sameTime(x.mtime, y.mtime, x.mtimeNsec, y.mtimeNsec) && sameTime(x.ctime, y.ctime, x.ctimeNsec, y.ctimeNsec) && x.ino === y.ino;
        sameSize.push({ x, y, metaSame });
      }
    } else if (typeOf(y) === 'symlink' && x.linkTarget !== y.linkTarget) aspects.push('target');
    if (x.mode !== y.mode) aspects.push('mode');
    if (x.uid !== y.uid || x.gid !== y.gid) aspects.push('owner');
    pending.set(y, aspects);
  }
  for (const [k, x] of ma) if (!mb.has(k)) changes.push({ path: joinPath(a.name, `/${x.path}`), change: 'removed', type: typeOf(x), size: x.size ?? 0 });

  // Which same-size files to hash: every one whose metadata moved, and the rest within the budget (or all when exact).
  const quiet = sameSize.filter((s) => s.metaSame);
  const quietBytes = quiet.reduce((n, s) => n + (s.y.size ?? 0), 0);
  const toHash = sameSize.filter((s) => !s.metaSame || exact || quietBytes <= HASH_BUDGET);
  const [ha, hb] = await Promise.all([r.hash(ka, a, toHash.map((s) => `/${s.x.path}`)), r.hash(kb, b, toHash.map((s) => `/${s.y.path}`))]);
  toHash.forEach((s, i) => {
    if (ha[i] !== hb[i]) pending.get(s.y)!.push('content');
  });
  for (const [y, aspects] of pending) {
    if (aspects.length === 0) continue;
    const x = ma.get(key(y))!;
    changes.push({ path: name(y), change: 'changed', type: typeOf(y), size: y.size ?? 0, sizeBefore: x.size ?? 0, aspects: [...new Set(aspects)] });
  }
  changes.sort((p, q) => (p.path < q.path ? -1 : p.path > q.path ? 1 : 0));
  return { changes, hashed: toHash.length * 2 };
}

function summarize(base: Omit<FilesystemDiff, 'added' | 'removed' | 'changed' | 'bytesAdded' | 'bytesRemoved' | 'hashed'>, changes: FileChange[], hashed: number, stat: boolean): FilesystemDiff {
  const fileBytes = (c: FileChange): number => (c.type === 'file' ? c.size : 0);
  return {
    ...base,
    added: changes.filter((c) => c.change === 'added').length,
    removed: changes.filter((c) => c.change === 'removed').length,
    changed: changes.filter((c) => c.change === 'changed').length,
    bytesAdded: changes.filter((c) => c.change === 'added').reduce((n, c) => n + fileBytes(c), 0),
    bytesRemoved: changes.filter((c) => c.change === 'removed').reduce((n, c) => n + fileBytes(c), 0),
    hashed,
    ...(stat ? {} : { changes }),
  };
}

/** Per disk: what was written between the two points, from the layers' maps. */
async function diskDiffs(ctx: Context, present: VmConfig, a: PinnedPoint, b: PinnedPoint): Promise<{ disks: DiskDiff[]; written: Map<string, Extent[]> }> {
  const disks: DiskDiff[] = [];
  const written = new Map<string, Extent[]>();
  const sizeOf = (p: PinnedPoint, slot: string): number => (p.snapshot?.config ?? present).disks.find((d) => d.slot === slot)?.sizeBytes ?? 0;
  for (const slot of [...new Set([...a.slots, ...b.slots])]) {
    const la = a.layers[slot];
    const lb = b.layers[slot];
    if (!la || !lb) {
      disks.push({ slot, status: la ? 'removed' : 'added', virtualSize: sizeOf(la ? a : b, slot), changedBytes: 0, layers: 0 });
      continue;
    }
    const between = layersBetween(ctx.catalog, la, lb);
    const ext = await writtenExtents(between);
    written.set(slot, ext);
    disks.push({ slot, status: 'compared', virtualSize: sizeOf(b, slot), changedBytes: totalLength(ext), layers: between.length });
  }
  return { disks, written };
}

/**
 * Diff two points of an open reader (snapshots, or the present state read from
 * a frozen point of it: the guest's I/O stalls for the milliseconds of a
 * disk-only snapshot, and nothing is left behind).
 */
export async function diffAt(ctx: Context, pr: PinnedReader, ka: number, kb: number, o: DiffOptions = {}): Promise<DiffReport> {
  const t0 = performance.now();
  const A = pr.points[ka]!;
  const B = pr.points[kb]!;
  const r = pr.reader;
  const { disks, written } = await diskDiffs(ctx, pr.vm.config, A, B);
  const [fa, fb] = await Promise.all([r.filesystems(ka), r.filesystems(kb)]);
  const filesystems: FilesystemDiff[] = [];
  const names = [...new Set([...fa.map((f) => f.name), ...fb.map((f) => f.name)])].sort();
  for (const n of names) {
    const a = fa.find((f) => f.name === n);
    const b = fb.find((f) => f.name === n);
    const base = { name: n, device: (b ?? a)!.device, type: (b ?? a)!.type };
    try {
      if (!a || !b) {
        const only = (b ?? a)!;
        const entries = await r.walk(b ? kb : ka, only);
        const changes: FileChange[] = entries.map((e) => ({ path: joinPath(n, `/${e.path}`), change: b ? 'added' : 'removed', type: typeOf(e), size: e.size ?? 0 }));
        changes.sort((p, q) => (p.path < q.path ? -1 : 1));
        filesystems.push(summarize({ ...base, status: b ? 'added' : 'removed' }, changes, 0, o.stat ?? false));
        continue;
      }
      const ext = a.slot !== null && a.slot === b.slot ? written.get(a.slot) : undefined;
      const extent = b.extent ?? a.extent;
      if (!o.exact && ext && extent && a.extent?.start === b.extent?.start && !overlaps(ext, extent.start, extent.length)) {
        filesystems.push(summarize({ ...base, status: 'unchanged', note: 'no write between the two points touched it (allocation maps): not scanned' }, [], 0, o.stat ?? false));
        continue;
      }
      const { changes, hashed } = await compareTrees(r, ka, a, kb, b, o.exact ?? false);
      filesystems.push(summarize({ ...base, status: 'compared' }, changes, hashed, o.stat ?? false));
    } catch (e) {
      if (!(e instanceof VmsnapError) || e.code === 'INTERRUPTED') throw e;
      filesystems.push(summarize({ ...base, status: 'unreadable', note: e.message }, [], 0, o.stat ?? false));
    }
  }
  const sum = (k: 'added' | 'removed' | 'changed'): number => filesystems.reduce((n, f) => n + f[k], 0);
  return {
    vm: pr.vm.name,
    from: A.label,
    to: B.label,
    disks,
    filesystems,
    totals: { added: sum('added'), removed: sum('removed'), changed: sum('changed'), changedBytes: disks.reduce((n, d) => n + d.changedBytes, 0) },
    ...(pr.present && (A.snapshot === null || B.snapshot === null) ? { present: pr.present } : {}),
    ms: performance.now() - t0,
  };
}
