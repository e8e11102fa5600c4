import { openSqlite, type SqliteDatabase } from './sqlite.js';
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fsyncPath } from '../util/files.js';
import { damagedCatalog, type Db } from './db.js';
import { MIGRATIONS } from './migrations.js';

export interface BackupSettings {
  /** At most one backup per this many milliseconds while a process keeps changing the catalog. */
  intervalMs: number;
  /** How many backups to keep (the newest). */
  keep: number;
}

export interface CatalogBackup {
  path: string;
  /** When it was taken (from its name). */
  takenAt: string;
  bytes: number;
}

const NAME = /^catalog-(\d{8}T\d{6}\d{3}Z)\.sqlite$/;

/** 2026-01-02T03:04:05.678Z → 20260102T030405678Z: sortable, and a valid file name. */
const stamp = (d: Date): string => d.toISOString().replace(/[-:.]/g, '');
const unstamp = (s: string): string => `${s.slice(0, 4)}-${s.slice(4, 6)}-${s.slice(6, 8)}T${s.slice(9, 11)}:${s.slice(11, 13)}:${s.slice(13, 15)}.${s.slice(15, 18)}Z`;

/** The backups in a folder, newest first. */
export function listBackups(dir: string): CatalogBackup[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .flatMap((f) => {
      const m = NAME.exec(f);
      if (!m) return [];
      const path = join(dir, f);
      return [{ path, takenAt: unstamp(m[1]!), bytes: statSync(path).size }];
    })
    .sort((a, b) => (a.takenAt < b.takenAt ? 1 : -1));
}

/** Why a catalog file cannot be used (SQLite's integrity check, or a schema newer than this vmsnap), or undefined when it is sound. */
export function checkCatalogFile(path: string, opts: { quick?: boolean } = {}): string | undefined {
  let db: SqliteDatabase | undefined;
  try {
    db = openSqlite(path, { readonly: true, fileMustExist: true });
    const rows = db.pragma(opts.quick ? 'quick_check' : 'integrity_check') as Record<string, string>[];
    const result = rows.map((r) => Object.values(r)[0]).join('; ');
    if (result !== 'ok') return result;
    const version = db.pragma('user_version', { simple: true }) as number;
    if (version > MIGRATIONS.length) return `schema version ${version} is newer than this vmsnap knows (${MIGRATIONS.length})`;
    if (version === 0) return 'it is empty';
    return undefined;
  } catch (e) {
    return (e as Error).message;
  } finally {
    db?.close();
  }
}

/**
 * Backups of the catalog, made with SQLite's online backup API (a consistent
 * copy while the catalog stays in use), integrity-checked before they count,
 * in `backups/` of the home; the newest `keep` are kept. A change marks a
 * backup owed; `maybe` (after each operation) takes it when the newest is
 * older than the interval, or leaves a timer for when it will be, and
 * `settle` (as a process closes) takes any still owed. A damaged catalog
 * never makes a backup, so it never pushes a good one out.
 */
export class CatalogBackups {
  private owed = false;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<CatalogBackup | undefined> | undefined;
  private closed = false;
  /** Why the last backup failed, if it did. */
  lastError: Error | undefined;

  constructor(
    private readonly db: Db,
    readonly dir: string,
    private readonly settings: () => BackupSettings,
    /** True while this process is in the middle of an operation: a timer then waits for its end. */
    private readonly busy: () => boolean = () => false,
  ) {}

  list(): CatalogBackup[] {
    return listBackups(this.dir);
  }

  /** The catalog changed (called after each commit that changed rows). */
  noteChange(): void {
    this.owed = true;
  }

  /** Take a backup now: copy, check, fsync, rename into place, prune the oldest. */
  async take(): Promise<CatalogBackup> {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const takenAt = new Date();
    const path = join(this.dir, `catalog-${stamp(takenAt)}.sqlite`);
    const tmp = `${path}.tmp-${process.pid}`;
    this.owed = false;
    try {
      await this.db.backup(tmp);
      // The copy is in WAL mode like its source: make it one self-contained file.
      const copy = openSqlite(tmp);
      try {
        copy.pragma('journal_mode = DELETE');
      } finally {
        copy.close();
      }
      const bad = checkCatalogFile(tmp);
      if (bad) throw damagedCatalog(this.db.path, new Error(`its backup copy fails the integrity check: ${bad}`));
      fsyncPath(tmp);
      renameSync(tmp, path);
      fsyncPath(this.dir);
    } catch (e) {
      for (const f of [tmp, `${tmp}-wal`, `${tmp}-shm`]) rmSync(f, { force: true });
      this.owed = true;
      throw e;
    }
    for (const old of this.list().slice(Math.max(1, this.settings().keep))) rmSync(old.path, { force: true });
    return { path, takenAt: takenAt.toISOString(), bytes: statSync(path).size };
  }

  private takeQuietly(): Promise<CatalogBackup | undefined> {
    this.running ??= this.take()
      .then(
        (b) => {
          this.lastError = undefined;
          return b;
        },
        (e: unknown) => {
          this.lastError = e instanceof Error ? e : new Error(String(e));
          return undefined;
        },
      )
      .finally(() => (this.running = undefined));
    return this.running;
  }

  /** After an operation: a backup if one is owed and the newest is older than the interval; otherwise a timer for then. Never throws. */
  async maybe(): Promise<void> {
    if (!this.owed || this.closed) return;
    const newest = this.list()[0];
    const age = newest ? Date.now() - Date.parse(newest.takenAt) : Infinity;
    // A backup stamped in the future (a clock set back) must not put the next one off.
    const wait = age < 0 ? 0 : this.settings().intervalMs - age;
    if (wait <= 0) {
      await this.takeQuietly();
      return;
    }
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (this.closed) return;
      // Mid-operation: the operation's end calls maybe() again.
      if (!this.busy()) void this.maybe();
    }, wait);
    this.timer.unref();
  }

  /** Take the backup still owed, if any (as the process closes). Never throws; see lastError. */
  async settle(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
    if (this.owed && !this.closed) await this.takeQuietly();
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
