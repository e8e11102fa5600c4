import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { pathsFor, type VmsnapPaths } from '../paths.js';
import { CatalogBackups, checkCatalogFile, listBackups } from './backups.js';
import { Catalog, type LayerRecord, type SnapshotRecord, type VmRecord } from './catalog.js';
import { Journal } from './journal.js';
import { loadRecords, readRecord, RECORD_VERSION, recordText, snapshotRecordPath, SNAPSHOT_RECORD, SnapshotRecordBody, VM_RECORD, VmRecordBody, vmRecordPath } from './records.js';
import { emptyRows, readRows, TABLES, writeRows } from './rows.js';

const config = { memoryMiB: 256, cpus: 1, machine: 'q35' as const, boot: {}, disks: [{ slot: 'disk0', sizeBytes: 1024 }], nics: [] };
const now = '2026-01-01T00:00:00.000Z';

function vmRow(id: string, name: string): VmRecord {
  return { id, name, config, createdAt: now, currentSnapshotId: null };
}
function layer(id: string, vmId: string, paths: VmsnapPaths, backingId: string | null = null): LayerRecord {
  return { id, vmId, slot: 'disk0', path: join(paths.layers, `${id}.qcow2`), format: 'qcow2', backingId, frozen: backingId === null, external: false, createdAt: now };
}
function snapshot(id: string, vmId: string, name: string, layerId: string, parentId: string | null = null): SnapshotRecord {
  return {
    id,
    vmId,
    name,
    description: '',
    parentId,
    createdAt: now,
    config,
    stateFile: null,
    vmState: 'off',
    pauseMs: 1.5,
    status: 'ready',
    meta: { fingerprints: { disk0: 'abc' } },
    layers: { disk0: layerId },
    protected: false,
    expiresAt: null,
    policyId: null,
    policySlot: null,
  };
}

describe('records beside the VMs', () => {
  let home: string;
  let paths: VmsnapPaths;
  let catalog: Catalog;

  const open = () => {
    for (const d of [paths.layers, paths.states, paths.records]) mkdirSync(d, { recursive: true });
    return Catalog.open(paths);
  };
  /** A VM with two layers and one snapshot, written as one operation would. */
  const makeVm = (id = 'vm-1', name = 'one') => {
    catalog.tx(() => {
      catalog.insertVm(vmRow(id, name));
      catalog.insertLayer(layer(`${id}-base`, id, paths));
      catalog.insertLayer(layer(`${id}-top`, id, paths, `${id}-base`));
      catalog.setActiveLayer(id, 'disk0', `${id}-top`);
      catalog.insertSnapshot(snapshot(`${id}-s1`, id, 'S1', `${id}-base`));
      catalog.setCurrentSnapshot(id, `${id}-s1`);
    });
  };

  beforeEach(() => {
    home = mkdtempSync(join(tmpdir(), 'vs-rec-'));
    paths = pathsFor(home);
    catalog = open();
  });
  afterEach(() => {
    catalog.close();
    rmSync(home, { recursive: true, force: true });
  });

  /** Tables that are the catalog's own bookkeeping, not a VM's data, and why a rebuild needs none of their rows. */
  const BOOKKEEPING: Record<string, string> = {
    locks: "who holds a VM now: a rebuild starts with no holder, and a dead holder's lock is taken over anyway",
    stale_records: 'which VMs have records to rewrite: a rebuild rewrites them all',
    policy_slots:
      "which schedule slots a scheduler claimed: a rebuilt catalog starts with none; the snapshots a policy took keep their slot (policy_slot), and a pass takes at most one catch-up slot",
  };

  it("counts a VM's snapshots and names its current one without reading their configs (list)", () => {
    makeVm();
    expect(catalog.snapshotSummary('vm-1', 'vm-1-s1')).toEqual({ count: 1, protectedCount: 0, currentName: 'S1' });
    catalog.tx(() => catalog.insertSnapshot({ ...snapshot('vm-1-s2', 'vm-1', 'S2', 'vm-1-base', 'vm-1-s1'), protected: true }));
    expect(catalog.snapshotSummary('vm-1', 'vm-1-s2')).toEqual({ count: 2, protectedCount: 1, currentName: 'S2' });
    makeVm('vm-2', 'two');
    // Another VM's snapshot is never this one's current.
    expect(catalog.snapshotSummary('vm-1', 'vm-2-s1')).toEqual({ count: 2, protectedCount: 1, currentName: null });
    expect(catalog.snapshotSummary('vm-2', null)).toEqual({ count: 1, protectedCount: 0, currentName: null });
    expect(catalog.snapshotSummary('nobody', null)).toEqual({ count: 0, protectedCount: 0, currentName: null });
  });

  it('lists VMs as a listing shows them (memory, vCPUs, disk count read in SQL), the same as their parsed configs; a config without them is a clear CATALOG_ERROR', () => {
    makeVm('vm-2', 'two');
    makeVm('vm-1', 'one');
    expect(catalog.listVmBriefs()).toEqual(
      catalog.listVms().map((v) => ({ id: v.id, name: v.name, memoryMiB: v.config.memoryMiB, cpus: v.config.cpus, disks: v.config.disks.length, createdAt: v.createdAt, currentSnapshotId: v.currentSnapshotId })),
    );
    expect(catalog.listVmBriefs().map((v) => v.name)).toEqual(['one', 'two']);
    // Without the fields a listing shows, it fails as a parse of the config would: the schema's own message.
    for (const [damage, says] of [
      ['{"cpus": 1}', /config of VM 'two' is not what this vmsnap expects: memoryMiB/],
      ['not json', /config of VM 'two' is not valid JSON/],
    ] as const) {
      catalog.db.prepare('UPDATE vms SET config = ? WHERE id = ?').run(damage, 'vm-2');
      expect(() => catalog.listVmBriefs()).toThrow(expect.objectContaining({ code: 'CATALOG_ERROR', message: expect.stringMatching(says) }));
    }
  });

  it('carries every table of the catalog, or says why a table is bookkeeping; a carried table marks its VM stale on every change', () => {
    const tables = (catalog.db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name").all() as { name: string }[]).map(
      (r) => r.name,
    );
    const carried = Object.values(TABLES) as string[];
    expect(
      tables.filter((t) => !carried.includes(t) && !(t in BOOKKEEPING)),
      "tables neither in the records (recordsOf in records.ts, TABLES and CatalogRows in rows.ts, staleTriggers in the migration) nor listed in BOOKKEEPING with why",
    ).toEqual([]);
    const triggers = new Set((catalog.db.prepare("SELECT name FROM sqlite_master WHERE type = 'trigger'").all() as { name: string }[]).map((r) => r.name));
    const untriggered = carried.flatMap((t) => ['ins', 'upd', 'del'].map((k) => `${t}_${k}_stale`)).filter((n) => !triggers.has(n));
    expect(untriggered, 'carried tables without staleTriggers in their migration').toEqual([]);
  });

  it('writes a VM record and a record per snapshot after the commit that changed them, and agrees with the catalog', () => {
    makeVm();
    expect(catalog.records.pending()).toEqual([]);
    const vm = readRecord(vmRecordPath(paths.records, 'vm-1'), VM_RECORD, VmRecordBody);
    expect(vm.ok && vm.body.vm?.name).toBe('one');
    expect(vm.ok && vm.body.layers.map((l) => [l.id, l.backing_id, l.path])).toEqual([
      ['vm-1-base', null, join(paths.layers, 'vm-1-base.qcow2')],
      ['vm-1-top', 'vm-1-base', join(paths.layers, 'vm-1-top.qcow2')],
    ]);
    const snap = readRecord(snapshotRecordPath(paths.records, 'vm-1', 'vm-1-s1'), SNAPSHOT_RECORD, SnapshotRecordBody);
    // Every column, JSON columns as JSON: config, meta (fingerprints), pause, parent.
    expect(snap.ok && snap.body.snapshot).toMatchObject({ name: 'S1', pause_ms: 1.5, parent_id: null, meta: { fingerprints: { disk0: 'abc' } }, config: { memoryMiB: 256 } });
    expect(catalog.records.check()).toEqual([]);
  });

  it('follows every kind of change: an upsert, a change through a snapshot layer, a delete, a VM removed', () => {
    makeVm();
    catalog.insertLayer(layer('vm-1-new', 'vm-1', paths, 'vm-1-top'));
    catalog.setActiveLayer('vm-1', 'disk0', 'vm-1-new'); // an upsert: its conflict clause must not break the trigger
    catalog.setSnapshotLayer('vm-1-s1', 'disk0', 'vm-1-top');
    catalog.updateSnapshot('vm-1-s1', { meta: { fingerprints: { disk0: 'def' } } });
    expect(catalog.records.check()).toEqual([]);
    catalog.tx(() => {
      catalog.clearActiveLayers('vm-1');
      catalog.deleteSnapshot('vm-1-s1');
      for (const id of ['vm-1-new', 'vm-1-top', 'vm-1-base']) {
        catalog.setLayerBacking(id, null);
        catalog.deleteLayer(id);
      }
      catalog.deleteVm('vm-1');
    });
    expect(existsSync(join(paths.records, 'vm-1'))).toBe(false);
  });

  it('carries the unfinished operations of a VM, and only while they are unfinished', () => {
    const journal = new Journal(catalog);
    const op = journal.begin('vm-create', 'vm-new', { createFiles: ['/x'] });
    const rec = readRecord(vmRecordPath(paths.records, 'vm-new'), VM_RECORD, VmRecordBody);
    expect(rec.ok && rec.body.vm).toBe(null);
    expect(rec.ok && rec.body.operations.map((o) => [o.id, o.kind, o.plan])).toEqual([[op.id, 'vm-create', { createFiles: ['/x'] }]]);
    journal.step(op.id, 1);
    expect(catalog.records.check()).toEqual([]);
    journal.finish(op.id, 'rolled_back');
    expect(existsSync(join(paths.records, 'vm-new'))).toBe(false);
  });

  it('keeps the mark when a record cannot be written, and the next writer (or recover) writes it', () => {
    makeVm();
    rmSync(paths.records, { recursive: true });
    writeFileSync(paths.records, 'not a folder'); // every write under it fails
    catalog.updateVmConfig('vm-1', { ...config, cpus: 2 });
    expect(catalog.records.pending()).toEqual(['vm-1']);
    expect(catalog.records.lastError?.message).toMatch(/ENOTDIR|EEXIST/);
    expect(() => catalog.records.flush({ strict: true })).toThrow();
    rmSync(paths.records);
    mkdirSync(paths.records);
    expect(catalog.records.check().map((i) => i.message)).toEqual([expect.stringMatching(/waiting to be written/)]);
    expect(catalog.records.repair()).toBe(1);
    expect(catalog.records.check()).toEqual([]);
    const vm = readRecord(vmRecordPath(paths.records, 'vm-1'), VM_RECORD, VmRecordBody);
    expect(vm.ok && (vm.body.vm?.config as { cpus: number }).cpus).toBe(2);
  });

  it('refuses a record with a wrong checksum, from a newer vmsnap, of a newer schema, or of another format, saying which', () => {
    makeVm();
    const p = vmRecordPath(paths.records, 'vm-1');
    const good = readFileSync(p, 'utf8');
    writeFileSync(p, good.replace('"one"', '"two"'));
    expect(readRecord(p, VM_RECORD, VmRecordBody)).toEqual({ ok: false, problem: expect.stringMatching(/checksum/) });
    const body = (JSON.parse(good) as { body: unknown }).body;
    writeFileSync(p, recordText(VM_RECORD, body).replace(`"version": ${RECORD_VERSION}`, '"version": 99'));
    expect(readRecord(p, VM_RECORD, VmRecordBody)).toEqual({ ok: false, problem: expect.stringMatching(/newer vmsnap \(record version 99/) });
    writeFileSync(p, recordText(VM_RECORD, { ...(body as object), schema: 999 }));
    expect(readRecord(p, VM_RECORD, VmRecordBody)).toEqual({ ok: false, problem: expect.stringMatching(/newer catalog schema \(999/) });
    writeFileSync(p, recordText(SNAPSHOT_RECORD, body));
    expect(readRecord(p, VM_RECORD, VmRecordBody)).toEqual({ ok: false, problem: expect.stringMatching(/not a vmsnap-vm-record/) });
    expect(loadRecords(paths.records)).toMatchObject({ vms: [], problems: [{ path: p }] });
    expect(catalog.records.check().map((i) => i.message)).toEqual([expect.stringMatching(/record of VM 'one' is not a vmsnap-vm-record file/)]);
  });

  it('rows read from a catalog and written into a new one come back the same; a broken reference is refused', () => {
    makeVm('vm-1', 'one');
    makeVm('vm-2', 'two');
    const rows = readRows(catalog.db);
    const other = pathsFor(mkdtempSync(join(tmpdir(), 'vs-rec2-')));
    for (const d of [other.layers, other.states, other.records]) mkdirSync(d, { recursive: true });
    const copy = Catalog.open(other);
    try {
      writeRows(copy.db, rows);
      expect(readRows(copy.db)).toEqual(rows);
      const broken = { ...emptyRows(), layers: [{ ...rows.layers[1]!, backing_id: 'nope' }] };
      expect(() => writeRows(copy.db, broken)).toThrow(/references/);
      expect(readRows(copy.db)).toEqual(rows);
    } finally {
      copy.close();
      rmSync(other.home, { recursive: true, force: true });
    }
  });
});

describe('catalog backups', () => {
  let home: string;
  let paths: VmsnapPaths;
  let catalog: Catalog;
  beforeEach(() => {
    home = mkdtempSync(join(tmpdir(), 'vs-bak-'));
    paths = pathsFor(home);
    for (const d of [paths.layers, paths.states, paths.records]) mkdirSync(d, { recursive: true });
    catalog = Catalog.open(paths);
  });
  afterEach(() => {
    catalog.close();
    rmSync(home, { recursive: true, force: true });
  });

  it('takes a sound, self-contained copy, keeps the newest few, and throttles while settle takes what is owed', async () => {
    const backups = new CatalogBackups(catalog.db, paths.backups, () => ({ intervalMs: 3_600_000, keep: 2 }));
    catalog.onChange = () => backups.noteChange();
    await backups.maybe();
    expect(backups.list()).toEqual([]); // nothing changed yet
    catalog.insertVm(vmRow('vm-1', 'one'));
    await backups.maybe();
    expect(backups.list()).toHaveLength(1);
    catalog.insertVm(vmRow('vm-2', 'two'));
    await backups.maybe(); // the last is younger than the interval: owed, not taken
    expect(backups.list()).toHaveLength(1);
    await backups.settle();
    expect(backups.list()).toHaveLength(2);
    catalog.insertVm(vmRow('vm-3', 'three'));
    await backups.settle();
    const kept = listBackups(paths.backups);
    expect(kept).toHaveLength(2);
    expect(readdirSync(paths.backups).sort()).toEqual(kept.map((b) => b.path.split('/').pop()).sort()); // no -wal, -shm or temp files
    expect(checkCatalogFile(kept[0]!.path)).toBeUndefined();
    backups.close();
  });

  it('says why a file is no sound catalog', () => {
    const bad = join(home, 'bad.sqlite');
    writeFileSync(bad, Buffer.alloc(8192, 7));
    expect(checkCatalogFile(bad)).toMatch(/not a database/);
  });
});
