import type Database from 'better-sqlite3';
import { openSqlite, type SqliteDatabase } from './sqlite.js';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { VmsnapError } from '../errors.js';
import { MIGRATIONS } from './migrations.js';

/** What a damaged catalog's error tells the user to do: the two ways back. */
export const CATALOG_REPAIR_HINT =
  "restore the newest good backup (reconciled with the records beside the VMs): 'vmsnap recover --from-backup', " +
  "or rebuild it from those records and the layer files: 'vmsnap recover --rebuild-catalog' (add --dry-run to see what either would do first)";

/** SQLite's result codes for a file that is not a sound database (extended codes included, e.g. SQLITE_CORRUPT_INDEX). */
export function isDamage(e: unknown): boolean {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^SQLITE_(CORRUPT|NOTADB)/.test(code);
}

/** The one error a damaged catalog gives, wherever SQLite notices it: at open or at any statement. */
export function damagedCatalog(path: string, e: unknown): VmsnapError {
  const why = e instanceof Error ? e.message : String(e);
  return new VmsnapError('CATALOG_ERROR', `the catalog ${path} is damaged: ${why}`, {
    hint: CATALOG_REPAIR_HINT,
    details: { catalog: path, sqlite: (e as { code?: unknown }).code ?? null },
    cause: e,
  });
}

export interface Statement {
  run(...params: unknown[]): Database.RunResult;
  get(...params: unknown[]): unknown;
  all(...params: unknown[]): unknown[];
}

type RawParams = Parameters<Database.Statement['run']>;

/**
 * The catalog's connection. A thin layer over better-sqlite3 that does two
 * things for every statement in one place: it turns SQLite's "this file is
 * damaged" errors into a CATALOG_ERROR naming the file and the ways back, and
 * it calls `afterCommit` once each change has committed (a statement outside a
 * transaction, or the outermost transaction), which keeps the records beside
 * the VMs in step with the catalog (see records.ts).
 */
export class CatalogDb {
  /** Called after each committed change; its own errors are its business. */
  afterCommit: (() => void) | undefined;

  constructor(
    private readonly raw: SqliteDatabase,
    readonly path: string,
  ) {}

  private guard<T>(fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      throw isDamage(e) ? damagedCatalog(this.path, e) : e;
    }
  }

  private committed(): void {
    if (!this.raw.inTransaction) this.afterCommit?.();
  }

  prepare(sql: string): Statement {
    const st = this.guard(() => this.raw.prepare(sql));
    return {
      run: (...p) => {
        const r = this.guard(() => st.run(...(p as RawParams)));
        this.committed();
        return r;
      },
      get: (...p) => this.guard(() => st.get(...(p as RawParams))),
      all: (...p) => this.guard(() => st.all(...(p as RawParams))),
    };
  }

  exec(sql: string): void {
    this.guard(() => this.raw.exec(sql));
  }

  pragma(source: string, opts?: { simple?: boolean }): unknown {
    return this.guard(() => this.raw.pragma(source, opts));
  }

  get inTransaction(): boolean {
    return this.raw.inTransaction;
  }

  /** fn in one IMMEDIATE transaction (a savepoint when nested). */
  transaction<T>(fn: () => T): T {
    const r = this.guard(() => this.raw.transaction(fn).immediate());
    this.committed();
    return r;
  }

  /** A consistent copy of the whole catalog, made with SQLite's online backup API while others keep using it. */
  async backup(destination: string): Promise<void> {
    try {
      await this.raw.backup(destination);
    } catch (e) {
      throw isDamage(e) ? damagedCatalog(this.path, e) : e;
    }
  }

  close(): void {
    this.raw.close();
  }
}

export type Db = CatalogDb;

/** Folders that hold a home's data: a catalog that is missing or empty while they are not has been lost, not never made. */
export interface CatalogGuard {
  /** Folders whose content means "this home has VMs". */
  dataDirs: string[];
}

function hasContent(dir: string): boolean {
  try {
    return readdirSync(dir).length > 0;
  } catch {
    return false;
  }
}

function lostCatalog(path: string, why: string): VmsnapError {
  return new VmsnapError('CATALOG_ERROR', `the catalog ${path} ${why}, but this home holds VM records and layers`, {
    hint: CATALOG_REPAIR_HINT,
    details: { catalog: path },
  });
}

/**
 * Open (creating if needed) the catalog and bring its schema up to date.
 * WAL + synchronous=FULL: a committed journal step survives power loss.
 * A catalog that is missing (or empty) in a home that has layers or records
 * is refused: starting afresh there would make every file look orphaned.
 */
export function openCatalog(path: string, guard?: CatalogGuard): Db {
  mkdirSync(dirname(path), { recursive: true });
  const populated = () => guard?.dataDirs.some(hasContent) ?? false;
  if (!existsSync(path) && populated()) throw lostCatalog(path, 'is missing');
  let raw: SqliteDatabase;
  try {
    raw = openSqlite(path);
  } catch (e) {
    if (isDamage(e)) throw damagedCatalog(path, e);
    throw new VmsnapError('CATALOG_ERROR', `cannot open the catalog at ${path}: ${(e as Error).message}`, { cause: e });
  }
  const db = new CatalogDb(raw, path);
  try {
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = FULL');
    db.pragma('foreign_keys = ON');
    db.pragma('busy_timeout = 10000');
    if (schemaVersion(db) === 0 && tableCount(db) === 0 && populated()) {
      throw lostCatalog(path, 'is empty');
    }
    migrate(db, path);
  } catch (e) {
    raw.close();
    throw e;
  }
  return db;
}

function tableCount(db: Db): number {
  return (db.prepare("SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table'").get() as { n: number }).n;
}

export function schemaVersion(db: Db): number {
  return db.pragma('user_version', { simple: true }) as number;
}

function migrate(db: Db, path: string): void {
  const current = schemaVersion(db);
  if (current > MIGRATIONS.length) {
    throw new VmsnapError(
      'CATALOG_ERROR',
      `the catalog at ${path} has schema version ${current}, newer than this vmsnap knows (${MIGRATIONS.length})`,
      { hint: 'upgrade vmsnap; do not edit the catalog by hand' },
    );
  }
  for (let v = current; v < MIGRATIONS.length; v++) {
    // IMMEDIATE: two processes opening a fresh catalog at once must not both migrate.
    db.transaction(() => {
      if (schemaVersion(db) > v) return;
      db.exec(MIGRATIONS[v]!);
      db.pragma(`user_version = ${v + 1}`);
    });
  }
}
