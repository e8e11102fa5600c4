import { copyFileSync, existsSync, mkdirSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { checkCatalogFile, listBackups } from './catalog/backups.js';
import { openCatalog, type Db } from './catalog/db.js';
import { loadRecords, type LoadedVm } from './catalog/records.js';
import { emptyRows, readRows, replaceCatalogFile, writeRows, type CatalogRows } from './catalog/rows.js';
import type { CatalogRepairReport } from './contract/views.js';
import { VmsnapError } from './errors.js';
import type { OperationRegistry } from './operations/define.js';
import { memoryStateFiles, type VmsnapPaths } from './paths.js';
import { imageInfo } from './qemu/qemu-img.js';
import { fsyncPath } from './util/files.js';

/**
 * A new catalog from what is on disk, for when the catalog is lost or damaged:
 * `rebuild` from the records beside the VMs alone, `from-backup` from the
 * newest backup that passes SQLite's integrity check, reconciled with the
 * records (a VM's records are at least as new as any backup, so they win;
 * the backup fills in what they cannot: a VM or snapshot whose record is
 * damaged, and the journal's history). Every row is checked against the files:
 * a layer whose file is missing is left out with what needs it, never
 * invented; each layer's own backing pointer (qemu-img info) is compared with
 * its record; files nothing names are moved to lost+found, never deleted.
 * The old catalog is kept beside the new one under a timestamped name.
 * Vmsnap.repairCatalog then opens the result and runs recovery, which
 * finishes the operations the records carried.
 */

export type RepairMode = CatalogRepairReport['mode'];

const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);

/** The rows to start from: none (rebuild), or the newest good backup's, copied to `tmp` (from-backup). */
function baseRows(paths: VmsnapPaths, mode: RepairMode, tmp: string): { rows: CatalogRows; backup: CatalogRepairReport['backup']; db: Db | undefined } {
  if (mode === 'rebuild') return { rows: emptyRows(), backup: null, db: undefined };
  const backups = listBackups(paths.backups);
  const rejected: string[] = [];
  for (const b of backups) {
    const bad = checkCatalogFile(b.path);
    if (bad) {
      rejected.push(`${basename(b.path)}: ${bad}`);
      continue;
    }
    copyFileSync(b.path, tmp);
    const db = openCatalog(tmp);
    return { rows: readRows(db), backup: { path: b.path, takenAt: b.takenAt }, db };
  }
  throw new VmsnapError('CATALOG_ERROR', backups.length === 0 ? `there is no catalog backup in ${paths.backups}` : `no catalog backup in ${paths.backups} is sound: ${rejected.join('; ')}`, {
    hint: "rebuild the catalog from the records beside the VMs instead: 'vmsnap recover --rebuild-catalog'",
    details: { backups: paths.backups },
  });
}

interface Assembly {
  rows: CatalogRows;
  source: Map<string, 'records' | 'backup'>;
  report: Pick<CatalogRepairReport, 'badRecords' | 'leftOut' | 'missingFiles'>;
}

/** The rows of the new catalog: each VM from its records, or from the base where its records cannot be used. */
function assemble(loaded: { vms: LoadedVm[]; problems: { path: string; problem: string }[] }, base: CatalogRows, paths: VmsnapPaths): Assembly {
  const rows = emptyRows();
  const source = new Map<string, 'records' | 'backup'>();
  const report: Assembly['report'] = { badRecords: loaded.problems, leftOut: [], missingFiles: [] };
  const names = new Set<string>();
  const takeName = (vmId: string, name: string): boolean => {
    if (!names.has(name)) return names.add(name), true;
    report.leftOut.push({ vm: name, what: `VM ${vmId}`, reason: `another VM is named '${name}' too: its files are kept in lost+found` });
    return false;
  };
  const baseSnapshotsById = new Map(base.snapshots.map((s) => [s.id, s]));

  for (const v of loaded.vms) {
    const body = v.vm;
    if (body.vm && !takeName(body.vmId, String(body.vm.name))) continue;
    if (body.vm) rows.vms.push(body.vm);
    rows.layers.push(...body.layers);
    rows.activeLayers.push(...body.activeLayers);
    rows.operations.push(...body.operations);
    rows.policies.push(...body.policies);
    const byId = new Map(v.snapshots.map((s) => [s.snapshot.id, s]));
    for (const snapId of body.snapshots) {
      const rec = byId.get(snapId);
      const fromBase = baseSnapshotsById.get(snapId);
      if (rec) {
        rows.snapshots.push(rec.snapshot);
        rows.snapshotLayers.push(...rec.layers);
      } else if (fromBase) {
        rows.snapshots.push(fromBase);
        rows.snapshotLayers.push(...base.snapshotLayers.filter((l) => l.snapshot_id === snapId));
      } else {
        report.leftOut.push({ vm: String(body.vm?.name ?? body.vmId), what: `snapshot ${snapId}`, reason: 'its record is missing or damaged' });
      }
    }
    source.set(body.vmId, 'records');
  }

  // From the backup: VMs whose records are missing or damaged.
  const damaged = new Set(loaded.problems.map((p) => relative(paths.records, p.path).split('/')[0]!));
  for (const vm of base.vms) {
    const id = String(vm.id);
    if (source.has(id)) continue;
    const layers = base.layers.filter((l) => l.vm_id === id);
    if (!damaged.has(id) && !layers.some((l) => existsSync(String(l.path)))) {
      report.leftOut.push({ vm: String(vm.name), what: 'VM', reason: 'it has no records and none of its files: it was removed after the backup' });
      continue;
    }
    if (!takeName(id, String(vm.name))) continue;
    rows.vms.push(vm);
    rows.layers.push(...layers);
    rows.activeLayers.push(...base.activeLayers.filter((a) => a.vm_id === id));
    const snaps = base.snapshots.filter((s) => s.vm_id === id);
    rows.snapshots.push(...snaps);
    const snapIds = new Set(snaps.map((s) => s.id));
    rows.snapshotLayers.push(...base.snapshotLayers.filter((l) => snapIds.has(l.snapshot_id)));
    rows.operations.push(...base.operations.filter((o) => o.vm_id === id));
    rows.policies.push(...base.policies.filter((p) => p.vm_id === id));
    source.set(id, 'backup');
  }
  return { rows, source, report };
}

/**
 * Check the rows against the files, changing them only by leaving out what
 * cannot stand: a layer without its file (and the layers, active disks and
 * snapshots that need it). A snapshot whose parent went gets its nearest kept
 * ancestor; so does a VM whose current snapshot went.
 */
function checkFiles(a: Assembly, owned: Set<string>): void {
  const { rows, report } = a;
  const vmName = new Map(rows.vms.map((v) => [v.id, String(v.name)]));
  const nameOf = (vmId: unknown) => vmName.get(vmId) ?? String(vmId);
  const layers = new Map(rows.layers.map((l) => [l.id, l]));
  for (const l of rows.layers) {
    // A file an unfinished operation makes or removes may be missing: its recovery knows.
    if (existsSync(String(l.path)) || owned.has(String(l.path))) continue;
    report.missingFiles.push({ vm: nameOf(l.vm_id), what: `layer ${String(l.id)} (${String(l.slot)})`, path: String(l.path) });
    layers.delete(l.id);
  }
  for (let changed = true; changed; ) {
    changed = false;
    for (const l of layers.values()) {
      if (l.backing_id === null || l.backing_id === undefined || layers.has(l.backing_id)) continue;
      report.leftOut.push({ vm: nameOf(l.vm_id), what: `layer ${String(l.id)}`, reason: `it builds on layer ${String(l.backing_id)}, which is missing` });
      layers.delete(l.id);
      changed = true;
    }
  }
  rows.layers = rows.layers.filter((l) => layers.has(l.id));
  rows.activeLayers = rows.activeLayers.filter((al) => {
    if (layers.has(al.layer_id)) return true;
    report.leftOut.push({ vm: nameOf(al.vm_id), what: `the active layer of disk ${String(al.slot)}`, reason: 'its layer is missing: revert to a snapshot to use the disk again' });
    return false;
  });
  const parentOf = new Map(rows.snapshots.map((s) => [s.id, s.parent_id]));
  const dropped = new Set<unknown>();
  for (const s of rows.snapshots) {
    const missing = rows.snapshotLayers.filter((sl) => sl.snapshot_id === s.id && !layers.has(sl.layer_id));
    if (missing.length === 0) continue;
    dropped.add(s.id);
    report.leftOut.push({ vm: nameOf(s.vm_id), what: `snapshot '${String(s.name)}'`, reason: `its layer ${String(missing[0]!.layer_id)} is missing` });
  }
  rows.snapshots = rows.snapshots.filter((s) => !dropped.has(s.id));
  rows.snapshotLayers = rows.snapshotLayers.filter((sl) => !dropped.has(sl.snapshot_id));
  const kept = new Set(rows.snapshots.map((s) => s.id));
  /** The nearest kept ancestor of a snapshot id (through the parents of snapshots left out), or null. */
  const nearest = (id: unknown): unknown => {
    for (let p = id, n = 0; p !== null && p !== undefined && n < 10_000; p = parentOf.get(p), n++) if (kept.has(p)) return p;
    return null;
  };
  for (const s of rows.snapshots) {
    if (s.parent_id === null || s.parent_id === undefined || kept.has(s.parent_id)) continue;
    const p = nearest(s.parent_id);
    report.leftOut.push({ vm: nameOf(s.vm_id), what: `the parent of snapshot '${String(s.name)}'`, reason: `snapshot ${String(s.parent_id)} is missing: its parent is now ${p === null ? 'none' : String(p)}` });
    s.parent_id = p;
  }
  for (const v of rows.vms) {
    if (v.current_snapshot_id === null || v.current_snapshot_id === undefined || kept.has(v.current_snapshot_id)) continue;
    const p = nearest(v.current_snapshot_id);
    report.leftOut.push({ vm: String(v.name), what: 'its current snapshot', reason: `snapshot ${String(v.current_snapshot_id)} is missing: current is now ${p === null ? 'none' : String(p)}` });
    v.current_snapshot_id = p;
  }
  for (const s of rows.snapshots) {
    // A split memory state is three files (manifest, RAM image, device state): each must be there.
    for (const f of memoryStateFiles(str(s.state_file))) {
      if (!existsSync(f) && !owned.has(f)) report.missingFiles.push({ vm: nameOf(s.vm_id), what: `memory state of snapshot '${String(s.name)}' (kept as recorded)`, path: f });
    }
  }
}

async function backingOf(path: string): Promise<string | null> {
  const info = await imageInfo(path, { forceShare: true });
  return info.backingFilename ? resolve(dirname(path), info.backingFilename) : null;
}

/** Each layer's own backing pointer against its row (the rows are left as they are: verify shows a mismatch). */
async function checkBacking(rows: CatalogRows): Promise<CatalogRepairReport['backingMismatches']> {
  const byId = new Map(rows.layers.map((l) => [l.id, l]));
  const out: CatalogRepairReport['backingMismatches'] = [];
  for (const l of rows.layers) {
    const path = String(l.path);
    if (l.format !== 'qcow2' || !existsSync(path)) continue;
    const recorded = l.backing_id === null || l.backing_id === undefined ? null : str(byId.get(l.backing_id)?.path);
    const file = await backingOf(path).catch(() => undefined);
    if (file === undefined) out.push({ layer: String(l.id), path, recorded, file: null });
    else if (file !== recorded) out.push({ layer: String(l.id), path, recorded, file });
  }
  return out;
}

/** The files the unfinished operations make or remove (their plans say); undefined when one is of a kind or plan this vmsnap cannot read. */
function ownedByOperations(rows: CatalogRows, registry: OperationRegistry): Set<string> | undefined {
  const owned = new Set<string>();
  for (const op of rows.operations) {
    const def = registry.lookup(String(op.kind));
    const plan = def?.plan.safeParse(typeof op.plan === 'string' ? JSON.parse(op.plan) : op.plan);
    if (!def || !plan?.success) return undefined;
    for (const f of def.files(plan.data)) owned.add(f);
  }
  return owned;
}

/** Files in layers/ and states/ that no row and no unfinished operation names; undefined when an operation this vmsnap cannot read may own any file. */
function unrecorded(paths: VmsnapPaths, rows: CatalogRows, owned: Set<string> | undefined): string[] | undefined {
  if (!owned) return undefined;
  const named = new Set<string>([...owned, ...rows.layers.map((l) => String(l.path)), ...rows.snapshots.flatMap((s) => memoryStateFiles(str(s.state_file)))]);
  const out: string[] = [];
  for (const dir of [paths.layers, paths.states]) {
    for (const f of existsSync(dir) ? readdirSync(dir).sort() : []) if (!named.has(join(dir, f))) out.push(join(dir, f));
  }
  return out;
}

/** Move a file or folder into lost+found, keeping its path below the home. */
function setAside(paths: VmsnapPaths, into: string, path: string): string {
  const to = join(into, relative(paths.home, path));
  mkdirSync(dirname(to), { recursive: true, mode: 0o700 });
  renameSync(path, to);
  return to;
}

/**
 * Build the new catalog and put it in place (or, with dryRun, only say what
 * would be done). The caller then opens it, rewrites every record and runs
 * recovery; see Vmsnap.repairCatalog.
 */
export async function repairCatalogFiles(paths: VmsnapPaths, registry: OperationRegistry, opts: { mode: RepairMode; dryRun?: boolean }): Promise<CatalogRepairReport> {
  const dryRun = opts.dryRun ?? false;
  const stamp = new Date().toISOString().replace(/[-:.]/g, '');
  const tmp = `${paths.catalog}.repair-${process.pid}`;
  for (const f of [tmp, `${tmp}-wal`, `${tmp}-shm`]) rmSync(f, { force: true });
  const base = baseRows(paths, opts.mode, tmp);
  try {
    const loaded = loadRecords(paths.records);
    const a = assemble(loaded, base.rows, paths);
    const owned = ownedByOperations(a.rows, registry);
    checkFiles(a, owned ?? new Set());
    const backingMismatches = await checkBacking(a.rows);
    const stray = unrecorded(paths, a.rows, owned);
    const unrecordedFiles: CatalogRepairReport['unrecordedFiles'] = [];
    for (const p of stray ?? []) unrecordedFiles.push({ path: p, backing: p.endsWith('.qcow2') ? await backingOf(p).catch(() => null) : null, movedTo: null });
    const names = new Map(a.rows.snapshots.map((s) => [s.id, String(s.name)]));
    const report: CatalogRepairReport = {
      mode: opts.mode,
      dryRun,
      backup: base.backup,
      oldCatalog: null,
      vms: a.rows.vms.map((v) => ({
        name: String(v.name),
        id: String(v.id),
        source: a.source.get(String(v.id)) ?? 'records',
        snapshots: a.rows.snapshots.filter((s) => s.vm_id === v.id).map((s) => String(s.name)),
        current: v.current_snapshot_id ? (names.get(v.current_snapshot_id) ?? null) : null,
        layers: a.rows.layers.filter((l) => l.vm_id === v.id).length,
        unfinishedOperations: a.rows.operations.filter((o) => o.vm_id === v.id).length,
      })).sort((x, y) => (x.name < y.name ? -1 : 1)),
      ...a.report,
      backingMismatches,
      unrecordedFiles,
      lostFound: null,
      recovery: null,
    };
    if (stray === undefined) {
      report.leftOut.push({ vm: '', what: 'files without a record', reason: 'an unfinished operation this vmsnap cannot read may own them: they were left where they are' });
    }
    if (dryRun) return report;

    const db = base.db ?? openCatalog(tmp);
    base.db = db;
    writeRows(db, a.rows);
    db.close();
    base.db = undefined;
    report.oldCatalog = replaceCatalogFile(paths.catalog, tmp, stamp);

    // Kept, out of the way of the orphan sweep: files no record names, and the records that failed their checks.
    const into = join(paths.lostFound, stamp);
    const found: { from: string; to: string; why: string; backing?: string | null }[] = [];
    for (const u of unrecordedFiles) {
      u.movedTo = setAside(paths, into, u.path);
      found.push({ from: u.path, to: u.movedTo, why: 'no record names it', backing: u.backing });
    }
    for (const b of report.badRecords) {
      if (!existsSync(b.path)) continue;
      // A VM's own record failed: its whole folder goes; a snapshot's: that file.
      const target = basename(b.path) === 'vm.json' ? dirname(b.path) : b.path;
      if (existsSync(target)) found.push({ from: target, to: setAside(paths, into, target), why: b.problem });
    }
    if (found.length > 0) {
      writeFileSync(join(into, 'found.json'), `${JSON.stringify({ repairedAt: new Date().toISOString(), mode: opts.mode, found }, null, 2)}\n`);
      fsyncPath(into);
      report.lostFound = into;
    }
    return report;
  } finally {
    base.db?.close();
    if (existsSync(tmp)) for (const f of [tmp, `${tmp}-wal`, `${tmp}-shm`]) rmSync(f, { force: true });
  }
}
