import type { Writable } from 'node:stream';
import type { GuestFileEntry, GuestFileType, UnreadableDisk } from '../contract/files.js';
import { VmsnapError } from '../errors.js';
import { type DirEntry, type FileStat, type FindEntry, GuestFs, type GuestFsOpenOptions, type GuestFsProgress } from './guestfs.js';
import { baseName, joinPath, letters, modeText, type NamedFilesystem, nameFilesystems, type PointLayout, resolvePath } from './namespace.js';

/**
 * Guest files of one or more points (a snapshot's frozen layers, the present
 * state frozen for the read, or a stopped VM's active layer under a writable
 * overlay), read in libguestfs appliances: never mounted on the host
 * (invariant 9). Booting an appliance is what costs (10 s idle, up to a
 * minute on a loaded host), so every point goes into one appliance, one drive
 * per disk, and each command makes all its calls on it. Two copies of one
 * LVM volume group cannot both be seen in one appliance (and two of one
 * btrfs filesystem cannot both be mounted): such points get an appliance each.
 */

export interface ReaderDrive {
  slot: string;
  /** The top file of the disk's chain at that point. */
  path: string;
  format: 'qcow2' | 'raw';
  /** Read-only drives are never written (a throw-away overlay takes journal replays). */
  readonly: boolean;
}

export interface ReaderPoint {
  /** The snapshot's name, or 'present'. */
  label: string;
  /** In the guest's disk order. */
  drives: ReaderDrive[];
}

export interface ReaderOptions {
  signal?: AbortSignal;
  /** Bytes moved (downloads, hashing) of a total, by what is being done. */
  onProgress?: (what: string, done: number, total: number) => void;
  /** Phases worth a line: starting the appliance, listing filesystems. */
  onPhase?: (text: string) => void;
  /** Options for the appliances (tests: memory, timeouts). */
  guestfs?: GuestFsOpenOptions;
}

/** A path located on a mounted filesystem of a point. */
export interface Located {
  point: number;
  fs: NamedFilesystem;
  /** The path inside the filesystem ('/' for its root). */
  inner: string;
  /** The path in the namespace. */
  path: string;
  /** Where it is in its appliance. */
  appPath: string;
  session: GuestFs;
}

interface Session {
  points: number[];
  layouts: PointLayout[];
  fs?: GuestFs;
  opening?: Promise<GuestFs>;
  named?: Promise<Map<number, NamedFilesystem[]>>;
  /** session device → where it is mounted in the appliance */
  mounts: Map<string, string>;
  /** Set when the session cannot tell its points' volumes apart: its points move to sessions of their own. */
  split?: boolean;
}

/** Calls whose libguestfs progress events are worth a bar (the appliance's boot sends some too). */
const TRANSFERS: Record<string, string> = { hashFiles: 'hashing', download: 'copying', tarOut: 'copying', upload: 'writing', tarIn: 'writing', copy: 'writing' };

const FILE_TYPES = new Set<GuestFileType>(['file', 'dir', 'symlink', 'chardev', 'blockdev', 'fifo', 'socket', 'hardlink', 'unknown']);
const asType = (t: string | undefined): GuestFileType => (t && FILE_TYPES.has(t as GuestFileType) ? (t as GuestFileType) : 'unknown');

/** A directory entry (or a stat) as the contract shows it. */
export function toEntry(path: string, st: Partial<FileStat> & { rawName?: string }, name = baseName(path)): GuestFileEntry {
  const type = asType(st.type);
  const mode = st.mode ?? 0;
  return {
    name,
    path,
    type,
    size: st.size ?? 0,
    mode,
    modeText: modeText(type, mode),
    mtime: (st.mtime ?? new Date(0)).toISOString(),
    uid: st.uid ?? 0,
    gid: st.gid ?? 0,
    ...(st.linkTarget !== undefined ? { linkTarget: st.linkTarget } : {}),
    ...(st.rawName !== undefined ? { rawName: st.rawName } : {}),
  };
}

export class FilesReader {
  private readonly sessions: Session[] = [];
  /** point → index into sessions */
  private readonly sessionOf: number[];
  private mountCounter = 0;
  private closed = false;

  private constructor(
    readonly points: ReaderPoint[],
    private readonly opts: ReaderOptions,
  ) {
    this.sessionOf = points.map(() => 0);
    this.sessions.push(this.newSession(points.map((_, i) => i)));
  }

  /** Start the appliance (it boots while the caller goes on; the first call waits for it). */
  static open(points: ReaderPoint[], opts: ReaderOptions = {}): FilesReader {
    if (points.length === 0 || points.some((p) => p.drives.length === 0)) throw new VmsnapError('INVALID_ARGUMENT', 'nothing to read: a point without disks');
    const r = new FilesReader(points, opts);
    void r.sessionFor(0).catch(() => undefined); // start booting now; errors surface on first use
    return r;
  }

  private newSession(points: number[]): Session {
    let offset = 0;
    const layouts = points.map((k) => {
      const l = { offset, slots: this.points[k]!.drives.map((d) => d.slot) };
      offset += l.slots.length;
      return l;
    });
    return { points, layouts, mounts: new Map() };
  }

  private async boot(s: Session): Promise<GuestFs> {
    if (this.closed) throw new VmsnapError('INVALID_STATE', 'the file reader is closed');
    const drives = s.points.flatMap((k) =>
      this.points[k]!.drives.map((d) => ({ path: d.path, format: d.format, readonly: d.readonly })),
    );
    const what = s.points.map((k) => this.points[k]!.label).join(', ');
    this.opts.onPhase?.(`starting the file reader for ${what} (a small VM: 10–60 s)`);
    const onProgress = (p: GuestFsProgress): void => {
      const what = p.op ? TRANSFERS[p.op] : undefined;
      if (p.phase === 'transfer' && p.total && what) this.opts.onProgress?.(what, p.position ?? 0, p.total);
    };
    const fs = await GuestFs.open(drives, {
      ...this.opts.guestfs,
      ...(this.opts.signal ? { signal: this.opts.signal } : {}),
      onProgress,
    });
    if (this.closed) {
      await fs.close();
      throw new VmsnapError('INVALID_STATE', 'the file reader is closed');
    }
    return fs;
  }

  private async sessionFor(k: number): Promise<{ s: Session; fs: GuestFs }> {
    const s = this.sessions[this.sessionOf[k]!]!;
    if (!s.fs) {
      s.opening ??= this.boot(s).then((fs) => (s.fs = fs));
      await s.opening;
    }
    return { s, fs: s.fs! };
  }

  /** The named filesystems of every point of a session (once per session). */
  private async namedOf(s: Session, fs: GuestFs): Promise<Map<number, NamedFilesystem[]>> {
    s.named ??= (async () => {
      this.opts.onPhase?.('looking for filesystems');
      const [found, ranges] = await Promise.all([fs.filesystems(), fs.ranges()]);
      const { points, unplaced } = nameFilesystems(found, s.layouts, ranges);
      if (unplaced.length > 0 && s.points.length > 1) s.split = true;
      return new Map(s.points.map((k, i) => [k, points[i]!]));
    })();
    return s.named;
  }

  /** Give a point an appliance of its own (its volumes cannot be told apart from another point's in a shared one). */
  private isolate(k: number): void {
    const from = this.sessions[this.sessionOf[k]!]!;
    if (from.points.length === 1) return;
    this.sessionOf[k] = this.sessions.length;
    this.sessions.push(this.newSession([k]));
  }

  /** The filesystems of point k, named (see namespace.ts). */
  async filesystems(k: number): Promise<NamedFilesystem[]> {
    for (;;) {
      const { s, fs } = await this.sessionFor(k);
      const named = await this.namedOf(s, fs);
      if (!s.split) return named.get(k) ?? [];
      // LVM volumes on several points' disks: each point in its own appliance.
      for (const p of [...s.points]) this.isolate(p);
      await this.releaseSession(s);
    }
  }

  /** Disks of point k on which no filesystem was found (blank, encrypted, unknown). */
  async unreadable(k: number): Promise<UnreadableDisk[]> {
    const fss = await this.filesystems(k);
    const hasVolumes = fss.some((f) => f.slot === null);
    if (hasVolumes) return [];
    return this.points[k]!.drives.flatMap((d, i) =>
      fss.some((f) => f.slot === d.slot) ? [] : [{ slot: d.slot, device: `/dev/vd${letters(i)}`, reason: 'no filesystem found: blank, encrypted, or of a kind the appliance cannot read' }],
    );
  }

  /** The filesystem holding a path of point k, mounted, and the path's place in the appliance. */
  async locate(k: number, path: string): Promise<Located> {
    const fss = await this.filesystems(k);
    const hit = resolvePath(fss, path);
    if (!hit) {
      const unreadable = await this.unreadable(k);
      const names = fss.map((f) => f.name);
      throw new VmsnapError(
        'NOT_FOUND',
        fss.length === 0
          ? `${this.points[k]!.label}: no readable filesystem${unreadable.length ? ` (${unreadable.map((u) => `${u.slot} ${u.device}: ${u.reason}`).join('; ')})` : ''}`
          : `${this.points[k]!.label}: no filesystem holds ${path}; its filesystems are ${names.join(', ')}`,
        {
          hint: fss.length === 0 ? 'there is nothing to read on its disks' : `paths start with a filesystem's name, e.g. ${joinPath(names[0]!, '/')}`,
          details: { path, filesystems: names, unreadable },
        },
      );
    }
    const { mp, fs: mounted } = await this.mount(k, hit.fs);
    const { fs } = await this.sessionFor(k);
    return { point: k, fs: mounted, inner: hit.inner, path, appPath: hit.inner === '/' ? mp : `${mp}${hit.inner}`, session: fs };
  }

  /** Where a filesystem is mounted in its appliance (mounted on first use: read-only unless its drive is writable). */
  async mountPathOf(k: number, f: NamedFilesystem): Promise<string> {
    return (await this.mount(k, f)).mp;
  }

  private async mount(k: number, f: NamedFilesystem): Promise<{ mp: string; fs: NamedFilesystem }> {
    for (let attempt = 0; ; attempt++) {
      const { s, fs } = await this.sessionFor(k);
      const named = (await this.namedOf(s, fs)).get(k) ?? [];
      const mine = named.find((x) => x.name === f.name) ?? f;
      const have = s.mounts.get(mine.sessionDevice);
      if (have) return { mp: have, fs: mine };
      const mp = `/p${k}m${this.mountCounter++}`;
      const writable = mine.slot !== null && this.points[k]!.drives.find((d) => d.slot === mine.slot)?.readonly === false;
      try {
        await fs.mount(mine.sessionDevice, mp, { readonly: !writable });
      } catch (e) {
        // A second copy of one btrfs filesystem cannot be mounted in the same appliance.
        if (attempt === 0 && e instanceof VmsnapError && e.details.kind === 'duplicate' && s.points.length > 1) {
          this.isolate(k);
          continue;
        }
        throw new VmsnapError(e instanceof VmsnapError ? e.code : 'QEMU_FAILED', `${this.points[k]!.label}: cannot read ${mine.name} (${mine.device}, ${mine.type}): ${(e as Error).message}`, {
          hint: 'the filesystem may be damaged, encrypted or of a kind the appliance cannot mount',
          details: { filesystem: mine.name, device: mine.device },
          cause: e,
        });
      }
      s.mounts.set(mine.sessionDevice, mp);
      return { mp, fs: mine };
    }
  }

  /** lstat of a path (symlinks not followed). */
  async stat(k: number, path: string): Promise<{ entry: GuestFileEntry; at: Located; stat: FileStat }> {
    const at = await this.locate(k, path);
    const st = await at.session.stat(at.appPath).catch((e: unknown) => {
      throw notFound(this.points[k]!.label, path, e);
    });
    return { entry: toEntry(path, st), at, stat: st };
  }

  /** A directory's entries, sorted by name. */
  async list(k: number, path: string): Promise<{ filesystem: string; entries: GuestFileEntry[] }> {
    const at = await this.locate(k, path);
    let ents: DirEntry[];
    try {
      ents = await at.session.list(at.appPath);
    } catch (e) {
      if (e instanceof VmsnapError && e.details.errno === 'ENOTDIR') {
        throw new VmsnapError('INVALID_ARGUMENT', `${this.points[k]!.label}: ${path} is not a directory`, { hint: 'copy it out with vmsnap cp', details: { path } });
      }
      throw notFound(this.points[k]!.label, path, e);
    }
    const entries = ents.map((d) => toEntry(joinPath(path, `/${d.name}`), d, d.name)).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return { filesystem: at.fs.name, entries };
  }

  /** Every path under a filesystem's root, with lstat (relative paths, no leading '/'). */
  async walk(k: number, f: NamedFilesystem, o: { stat?: boolean; under?: string } = {}): Promise<FindEntry[]> {
    const mp = await this.mountPathOf(k, f);
    const { fs } = await this.sessionFor(k);
    const dir = o.under && o.under !== '/' ? `${mp}${o.under}` : mp;
    return fs.find(dir, { stat: o.stat ?? true, ...(this.opts.signal ? { signal: this.opts.signal } : {}) });
  }

  /** lstat of many paths inside a filesystem (inner paths). */
  async statMany(k: number, f: NamedFilesystem, inner: string[]): Promise<FileStat[]> {
    if (inner.length === 0) return [];
    const mp = await this.mountPathOf(k, f);
    const { fs } = await this.sessionFor(k);
    return fs.statMany(inner.map((p) => `${mp}${p}`));
  }

  /** SHA-256 of files inside a filesystem (inner paths); null where not a regular file. */
  async hash(k: number, f: NamedFilesystem, inner: string[]): Promise<(string | null)[]> {
    if (inner.length === 0) return [];
    const mp = await this.mountPathOf(k, f);
    const { fs } = await this.sessionFor(k);
    const r = await fs.hashFiles(
      inner.map((p) => `${mp}${p}`),
      this.opts.signal ? { signal: this.opts.signal } : {},
    );
    return r.map((x) => x?.sha256 ?? null);
  }

  /** A regular file's content into a stream (symlinks followed inside the guest's tree). */
  async readTo(k: number, path: string, dest: Writable, o: { end?: boolean } = {}): Promise<FileStat> {
    const at = await this.locate(k, path);
    return at.session.downloadTo(at.appPath, dest, { ...o, ...(this.opts.signal ? { signal: this.opts.signal } : {}) });
  }

  /** A regular file to a host file, with its mode and mtime. */
  async download(k: number, path: string, hostPath: string): Promise<FileStat> {
    const at = await this.locate(k, path);
    return at.session.download(at.appPath, hostPath, this.opts.signal ? { signal: this.opts.signal } : {});
  }

  /** A directory tree as a tar stream (numeric owners, modes, mtimes). */
  async tarTo(k: number, path: string, dest: Writable, o: { end?: boolean } = {}): Promise<void> {
    const at = await this.locate(k, path);
    await at.session.tarOut(at.appPath, dest, { ...o, ...(this.opts.signal ? { signal: this.opts.signal } : {}) });
  }

  /** The appliance of a point (for writes into a writable point). */
  async appliance(k: number): Promise<GuestFs> {
    return (await this.sessionFor(k)).fs;
  }

  private async releaseSession(s: Session): Promise<void> {
    const fs = s.fs ?? (s.opening ? await s.opening.catch(() => undefined) : undefined);
    s.fs = undefined;
    s.opening = undefined;
    s.named = undefined;
    s.mounts.clear();
    await fs?.close();
  }

  /** Close point k's appliance when no other point of it is still wanted (search goes point by point). */
  async donePoint(k: number, stillWanted: (p: number) => boolean): Promise<void> {
    const s = this.sessions[this.sessionOf[k]!]!;
    if (s.points.some((p) => p !== k && stillWanted(p) && this.sessionOf[p] === this.sessionOf[k])) return;
    await this.releaseSession(s);
  }

  /** Shut every appliance down (writable drives are synced first). */
  async close(): Promise<void> {
    this.closed = true;
    const errors: unknown[] = [];
    for (const s of this.sessions) await this.releaseSession(s).catch((e: unknown) => errors.push(e));
    if (errors.length > 0) throw errors[0];
  }
}

function notFound(label: string, path: string, e: unknown): unknown {
  if (e instanceof VmsnapError && e.code === 'NOT_FOUND') {
    return new VmsnapError('NOT_FOUND', `${label}: no such file or directory: ${path}`, { hint: 'list its directory with vmsnap files', details: { path }, cause: e });
  }
  return e;
}
