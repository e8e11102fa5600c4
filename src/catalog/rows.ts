import { existsSync, renameSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { VmsnapError } from '../errors.js';
import { fsyncPath } from '../util/files.js';
import type { Db } from './db.js';
import { importRow, type Row } from './records.js';

/**
 * The catalog's VM data as plain rows, table by table (the shape records
 * hold): read from a catalog, or assembled from records, and written into a
 * catalog as a whole. Used by `vmsnap recover --rebuild-catalog` and
 * `--from-backup`; rows are copied column by column as the table has them, so
 * a later migration's columns come along.
 */
export interface CatalogRows {
  vms: Row[];
  layers: Row[];
  activeLayers: Row[];
  snapshots: Row[];
  snapshotLayers: Row[];
  /** Unfinished operations only: the journal's history stays as the base catalog has it. */
  operations: Row[];
  /** A VM's snapshot policy; the slots its schedulers claimed are bookkeeping and start empty. */
  policies: Row[];
}

/** The catalog table of each kind of row: every table whose rows are a VM's data (records.test.ts holds new tables to this). */
export const TABLES = {
  vms: 'vms',
  layers: 'layers',
  activeLayers: 'active_layers',
  snapshots: 'snapshots',
  snapshotLayers: 'snapshot_layers',
  operations: 'operations',
  policies: 'policies',
} as const satisfies Record<keyof CatalogRows, string>;

export const emptyRows = (): CatalogRows => ({ vms: [], layers: [], activeLayers: [], snapshots: [], snapshotLayers: [], operations: [], policies: [] });

/** Every VM row of a catalog (the unfinished operations among the journal's). */
export function readRows(db: Db): CatalogRows {
  const all = (sql: string) => db.prepare(sql).all() as Row[];
  return {
    vms: all('SELECT * FROM vms ORDER BY rowid'),
    layers: all('SELECT * FROM layers ORDER BY created_at, rowid'),
    activeLayers: all('SELECT * FROM active_layers ORDER BY vm_id, slot'),
    snapshots: all('SELECT * FROM snapshots ORDER BY created_at, rowid'),
    snapshotLayers: all('SELECT * FROM snapshot_layers ORDER BY snapshot_id, slot'),
    operations: all("SELECT * FROM operations WHERE status IN ('running', 'interrupted') ORDER BY started_at, rowid"),
    policies: all('SELECT * FROM policies ORDER BY id'),
  };
}

function columns(db: Db, table: string): Set<string> {
  return new Set((db.prepare(`SELECT name FROM pragma_table_info('${table}')`).all() as { name: string }[]).map((r) => r.name));
}

/**
 * Replace a catalog's VM data with these rows, in one transaction: the VM
 * tables are emptied, the unfinished operations and the locks dropped, and the
 * rows inserted (JSON columns back to text). Foreign keys are checked at the
 * end; a violation is a bug in whoever assembled the rows, and nothing is written.
 */
export function writeRows(db: Db, rows: CatalogRows): void {
  db.pragma('foreign_keys = OFF');
  try {
    db.transaction(() => {
      db.exec(`DELETE FROM snapshot_layers; DELETE FROM active_layers; DELETE FROM snapshots; DELETE FROM layers; DELETE FROM vms;
               DELETE FROM operations WHERE status IN ('running', 'interrupted'); DELETE FROM locks;
               DELETE FROM policies; DELETE FROM policy_slots;`);
      for (const key of Object.keys(TABLES) as (keyof CatalogRows)[]) {
        const table = TABLES[key];
        const cols = columns(db, table);
        for (const r of rows[key]) {
          const row = importRow(table, r);
          const names = Object.keys(row).filter((c) => cols.has(c));
          db.prepare(`INSERT INTO ${table} (${names.join(', ')}) VALUES (${names.map((c) => `@${c}`).join(', ')})`).run(
            Object.fromEntries(names.map((c) => [c, row[c] as unknown])),
          );
        }
      }
      const broken = db.prepare('SELECT * FROM pragma_foreign_key_check').all() as Row[];
      if (broken.length > 0) throw new VmsnapError('INTERNAL', `rebuilt catalog rows break ${broken.length} references, e.g. ${JSON.stringify(broken[0])}`);
    });
  } finally {
    db.pragma('foreign_keys = ON');
  }
}

/** SQLite's companion files of a database: its write-ahead log and shared-memory index. */
const companions = (path: string): string[] => [path, `${path}-wal`, `${path}-shm`];

/**
 * Put a new catalog file in place of the old one, keeping the old one (with
 * its write-ahead log) beside it under a timestamped name, never deleting it.
 * Returns where the old one went, or null when there was none.
 */
export function replaceCatalogFile(catalogPath: string, newPath: string, stamp: string): string | null {
  const dir = dirname(catalogPath);
  let aside: string | null = null;
  if (existsSync(catalogPath) || existsSync(`${catalogPath}-wal`)) {
    aside = join(dir, `${basename(catalogPath, '.sqlite')}-replaced-${stamp}.sqlite`);
    const [from, to] = [companions(catalogPath), companions(aside)];
    from.forEach((f, i) => existsSync(f) && renameSync(f, to[i]!));
    fsyncPath(dir);
  }
  renameSync(newPath, catalogPath);
  fsyncPath(dir);
  return aside;
}
