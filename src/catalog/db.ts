import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { VmsnapError } from '../errors.js';
import { MIGRATIONS } from './migrations.js';

export type Db = Database.Database;

/**
 * Open (creating if needed) the catalog and bring its schema up to date.
 * WAL + synchronous=FULL: a committed journal step survives power loss.
 */
export function openCatalog(path: string): Db {
  mkdirSync(dirname(path), { recursive: true });
  let db: Db;
  try {
    db = new Database(path);
  } catch (e) {
    throw new VmsnapError('CATALOG_ERROR', `cannot open the catalog at ${path}: ${(e as Error).message}`, { cause: e });
  }
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 10000');
  migrate(db, path);
  return db;
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
    }).immediate();
  }
}
