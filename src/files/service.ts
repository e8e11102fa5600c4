import type { Context } from '../context.js';
import type { CopyOutResult, DiffReport, DirectoryListing, FilesystemsView, RestoreResult, SearchReport } from '../contract/files.js';
import type { CopyOutOptions, FilesOptions } from './copy-out.js';
import type { DiffOptions } from './diff.js';
import { compileGlob, normalizePath } from './namespace.js';
import type { RestoreOptions } from './restore.js';
import type { FilesSession } from './session.js';

export type { FilesOptions, CopyOutOptions } from './copy-out.js';
export type { DiffOptions } from './diff.js';
export type { RestoreOptions } from './restore.js';
export type { FilesSession } from './session.js';

/**
 * Guest files of snapshots, read in a libguestfs appliance (never mounted on
 * the host): browse, copy out, restore into the VM, diff two points, search
 * every snapshot. Each call boots one appliance for all it reads; open() keeps
 * one for many calls. The readers are loaded on first use, so commands that
 * read no guest file load none of this.
 */
export class FilesService {
  constructor(private readonly ctx: Context) {}

  /** Snapshots (and 'present') of a VM open in one appliance for many calls; close it. */
  async open(vm: string, points: string[], o: FilesOptions = {}): Promise<FilesSession> {
    const { FilesSession } = await import('./session.js');
    return FilesSession.open(this.ctx, vm, points, o);
  }

  private async session<T>(vm: string, points: string[], o: FilesOptions & { purpose: string }, fn: (s: FilesSession) => Promise<T>): Promise<T> {
    const { withSession } = await import('./session.js');
    return withSession(this.ctx, vm, points, o, fn);
  }

  /** A snapshot's filesystems (named by fstab mount point or device) and its unreadable disks. */
  filesystems(vm: string, snapshot: string, o: FilesOptions = {}): Promise<FilesystemsView> {
    return this.session(vm, [snapshot], { ...o, purpose: `files of snapshot '${snapshot}'` }, (s) => s.filesystems(snapshot));
  }

  /** A directory of a snapshot: name, type, size, mode, mtime of each entry. */
  list(vm: string, snapshot: string, path: string, o: FilesOptions = {}): Promise<DirectoryListing> {
    normalizePath(path); // refused before an appliance boots
    return this.session(vm, [snapshot], { ...o, purpose: `files of snapshot '${snapshot}'` }, (s) => s.list(snapshot, path));
  }

  /** Copy a file or a tree out of a snapshot to the host (dest '-': stdout). */
  async copyOut(vm: string, snapshot: string, path: string, dest: string, o: CopyOutOptions = {}): Promise<CopyOutResult> {
    normalizePath(path);
    const { checkDest } = await import('./copy-out.js');
    checkDest(dest);
    return this.session(vm, [snapshot], { ...o, purpose: `cp from snapshot '${snapshot}'` }, (s) => s.copyOut(snapshot, path, dest, o));
  }

  /** Put a file or a tree from a snapshot back into the present VM (refused without force when it would overwrite). */
  async restore(vm: string, snapshot: string, path: string, o: RestoreOptions = {}): Promise<RestoreResult> {
    const { restoreFromSnapshot } = await import('./restore.js');
    return restoreFromSnapshot(this.ctx, vm, snapshot, path, o);
  }

  /** What changed between two snapshots, or between one and the present state (`to` undefined). */
  diff(vm: string, from: string, to?: string, o: DiffOptions = {}): Promise<DiffReport> {
    const b = to ?? 'present';
    return this.session(vm, [from, b], { ...o, purpose: `diff ${from} ${b}` }, (s) => s.diff(from, b, o));
  }

  /** Every snapshot holding a path matching the glob, with each version's size, mtime and hash. */
  async search(vm: string, glob: string, o: FilesOptions = {}): Promise<SearchReport> {
    compileGlob(glob);
    const v = this.ctx.catalog.getVm(vm);
    const snaps = this.ctx.catalog.listSnapshots(v.id).filter((s) => s.status === 'ready');
    if (snaps.length === 0) return { vm: v.name, glob, snapshots: [], matches: [], unreadable: [], ms: 0 };
    return this.session(vm, snaps.map((s) => s.id), { ...o, purpose: `search ${glob}` }, (s) => s.search(glob, { ...o, closeAsYouGo: true }));
  }
}
