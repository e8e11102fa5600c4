import type { Writable } from 'node:stream';
import type { Context } from '../context.js';
import type { CopyOutResult, DiffReport, DirectoryListing, FilesystemsView, GuestFileEntry, RestoreResult, SearchReport } from '../contract/files.js';
import { VmsnapError } from '../errors.js';
import { copyOutAt, type CopyOutOptions, describePoint, type FilesOptions, listAt } from './copy-out.js';
import { diffAt, type DiffOptions } from './diff.js';
import { normalizePath } from './namespace.js';
import { openPinnedReader, type PinnedReader, type PointRequest, type PresentFreeze } from './read-op.js';
import { restoreFromSnapshot, type RestoreOptions } from './restore.js';
import { searchAt } from './search.js';

/**
 * Snapshots (and the present state) of one VM open for reading in one
 * appliance, for as many calls as the caller likes: the CLI opens one per
 * command, the API server keeps one per browsed snapshot, tests share one
 * among many checks. Points are named by snapshot name (or id), or
 * 'present' (frozen when the session opened). Its layers stay pinned (a
 * delete meanwhile leaves them unmerged) until close().
 */
export class FilesSession {
  private constructor(
    private readonly ctx: Context,
    private readonly pr: PinnedReader,
  ) {}

  static async open(ctx: Context, vm: string, points: string[], o: FilesOptions & { purpose?: string } = {}): Promise<FilesSession> {
    if (points.length === 0) throw new VmsnapError('INVALID_ARGUMENT', 'name at least one snapshot to read');
    const requests: PointRequest[] = points.map((p) => (p === 'present' ? 'present' : { snapshot: p }));
    const pr = await openPinnedReader(ctx, vm, requests, { ...o, purpose: o.purpose ?? `read files of ${points.join(', ')}` });
    return new FilesSession(ctx, pr);
  }

  get vm(): string {
    return this.pr.vm.name;
  }

  /** The points, as labels (snapshot names, 'present'). */
  get points(): string[] {
    return this.pr.points.map((p) => p.label);
  }

  /** How the present state was frozen, if it is a point. */
  get present(): PresentFreeze | undefined {
    return this.pr.present;
  }

  private index(point: string): number {
    const k = this.pr.points.findIndex((p) => (point === 'present' ? p.snapshot === null : p.label === point || p.snapshot?.id === point));
    if (k < 0) throw new VmsnapError('NOT_FOUND', `'${point}' is not open in this session (it has ${this.points.join(', ')})`, { details: { point } });
    return k;
  }

  async filesystems(point: string): Promise<FilesystemsView> {
    return describePoint(this.pr.reader, this.index(point), this.vm);
  }

  async list(point: string, path: string): Promise<DirectoryListing> {
    return listAt(this.pr, this.index(point), path);
  }

  async stat(point: string, path: string): Promise<GuestFileEntry> {
    return (await this.pr.reader.stat(this.index(point), normalizePath(path))).entry;
  }

  /** A regular file's content into a stream (ended). */
  async readTo(point: string, path: string, dest: Writable): Promise<void> {
    await this.pr.reader.readTo(this.index(point), normalizePath(path), dest);
  }

  /** A directory as a tar stream (ended). */
  async tarTo(point: string, path: string, dest: Writable): Promise<void> {
    return this.pr.reader.tarTo(this.index(point), normalizePath(path), dest);
  }

  async copyOut(point: string, path: string, dest: string, o: CopyOutOptions = {}): Promise<CopyOutResult> {
    return copyOutAt(this.pr, this.index(point), path, dest, o);
  }

  async diff(from: string, to: string, o: DiffOptions = {}): Promise<DiffReport> {
    return diffAt(this.ctx, this.pr, this.index(from), this.index(to), o);
  }

  /** Search the session's snapshots (not the present state), oldest first. */
  search(glob: string, o: FilesOptions & { closeAsYouGo?: boolean } = {}): Promise<SearchReport> {
    const ks = this.pr.points
      .map((p, k) => ({ p, k }))
      .filter((x) => x.p.snapshot !== null)
      .sort((a, b) => a.p.createdAt.localeCompare(b.p.createdAt))
      .map((x) => x.k);
    return searchAt(this.ctx, this.pr, ks, glob, o);
  }

  /** Restore from a snapshot of this session into the VM (a running VM's restore reads through this appliance). */
  async restore(point: string, path: string, o: RestoreOptions = {}): Promise<RestoreResult> {
    const k = this.index(point);
    const snap = this.pr.points[k]!.snapshot;
    if (!snap) throw new VmsnapError('INVALID_ARGUMENT', 'restore from a snapshot, not from the present state', { details: { point } });
    return restoreFromSnapshot(this.ctx, this.vm, snap.id, path, { ...o, session: { reader: this.pr.reader, point: k } });
  }

  /** Shut the appliance down and release the pins (merging what a delete put off meanwhile). */
  close(): Promise<void> {
    return this.pr.close();
  }
}

/** Run `fn` on a session and close it, whatever happens. */
export async function withSession<T>(ctx: Context, vm: string, points: string[], o: FilesOptions & { purpose?: string }, fn: (s: FilesSession) => Promise<T>): Promise<T> {
  const s = await FilesSession.open(ctx, vm, points, o);
  let result: T;
  try {
    result = await fn(s);
  } catch (e) {
    await s.close().catch(() => undefined);
    throw e;
  }
  await s.close();
  return result;
}
