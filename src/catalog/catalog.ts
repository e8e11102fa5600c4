import { z } from 'zod';
import { VmConfigSchema, type VmConfig } from '../contract/config.js';
import type { VmRunState } from '../contract/views.js';
import { VmsnapError } from '../errors.js';
import type { Db } from './db.js';
import { openCatalog } from './db.js';

export type { VmRunState } from '../contract/views.js';

export interface VmRecord {
  id: string;
  name: string;
  config: VmConfig;
  createdAt: string;
  currentSnapshotId: string | null;
}

export interface LayerRecord {
  id: string;
  vmId: string;
  slot: string;
  path: string;
  format: 'qcow2' | 'raw';
  backingId: string | null;
  frozen: boolean;
  external: boolean;
  createdAt: string;
}

export type SnapshotStatus = 'prepare' | 'ready' | 'deleting';

/** Measurements and details recorded with a snapshot. Known fields are checked; others are kept as they are. */
export const SnapshotMetaSchema = z.looseObject({
  memoryMode: z.enum(['background', 'precopy']).optional(),
  stateSha256: z.string().optional(),
  saveMs: z.number().optional(),
  qemuDowntimeMs: z.number().optional(),
  fallbackReason: z.string().optional(),
  quiesced: z.boolean().optional(),
  pauseSource: z.string().optional(),
  quiesceMs: z.number().optional(),
  /** slot → content fingerprint of the snapshot's disk (see snapshot/fingerprint.ts). */
  fingerprints: z.record(z.string(), z.string()).optional(),
});
export type SnapshotMeta = z.infer<typeof SnapshotMetaSchema>;

export interface SnapshotRecord {
  id: string;
  vmId: string;
  name: string;
  description: string;
  parentId: string | null;
  createdAt: string;
  config: VmConfig;
  stateFile: string | null;
  vmState: VmRunState;
  pauseMs: number | null;
  status: SnapshotStatus;
  meta: SnapshotMeta;
  /** slot -> frozen layer id */
  layers: Record<string, string>;
}

interface VmRow {
  id: string;
  name: string;
  config: string;
  created_at: string;
  current_snapshot_id: string | null;
}
interface LayerRow {
  id: string;
  vm_id: string;
  slot: string;
  path: string;
  format: 'qcow2' | 'raw';
  backing_id: string | null;
  frozen: number;
  external: number;
  created_at: string;
}
interface SnapshotRow {
  id: string;
  vm_id: string;
  name: string;
  description: string;
  parent_id: string | null;
  created_at: string;
  config: string;
  state_file: string | null;
  vm_state: VmRunState;
  pause_ms: number | null;
  status: SnapshotStatus;
  meta: string;
}

/**
 * A JSON column read back: parsed with its schema, so a row the code cannot
 * trust is a clear CATALOG_ERROR naming the row, never a value used on faith.
 */
export function parseJsonColumn<T>(schema: z.ZodType<T>, text: string, where: string): T {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new VmsnapError('CATALOG_ERROR', `the catalog's ${where} is not valid JSON: ${(e as Error).message}`, {
      hint: "run 'vmsnap verify'; do not edit the catalog by hand",
      details: { where },
    });
  }
  const r = schema.safeParse(raw);
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  throw new VmsnapError('CATALOG_ERROR', `the catalog's ${where} is not what this vmsnap expects: ${issue.path.join('.') || 'value'}: ${issue.message}`, {
    hint: 'it may have been written by a newer vmsnap: upgrade; do not edit the catalog by hand',
    details: { where },
  });
}

const toVm = (r: VmRow): VmRecord => ({
  id: r.id,
  name: r.name,
  config: parseJsonColumn(VmConfigSchema, r.config, `config of VM '${r.name}'`),
  createdAt: r.created_at,
  currentSnapshotId: r.current_snapshot_id,
});

const toLayer = (r: LayerRow): LayerRecord => ({
  id: r.id,
  vmId: r.vm_id,
  slot: r.slot,
  path: r.path,
  format: r.format,
  backingId: r.backing_id,
  frozen: r.frozen === 1,
  external: r.external === 1,
  createdAt: r.created_at,
});

/** Typed access to the catalog tables: all of vmsnap's SQL lives in this folder. Multi-row changes go through `tx`. */
export class Catalog {
  readonly db: Db;

  constructor(db: Db) {
    this.db = db;
  }

  static open(path: string): Catalog {
    return new Catalog(openCatalog(path));
  }

  close(): void {
    this.db.close();
  }

  /** Run fn in one IMMEDIATE transaction (writers queue up instead of failing midway). */
  tx<T>(fn: () => T): T {
    return this.db.transaction(fn).immediate();
  }

  // ---- VMs ----
  listVms(): VmRecord[] {
    return (this.db.prepare('SELECT * FROM vms ORDER BY name').all() as VmRow[]).map(toVm);
  }

  findVm(nameOrId: string): VmRecord | undefined {
    const r = this.db.prepare('SELECT * FROM vms WHERE name = ? OR id = ?').get(nameOrId, nameOrId) as VmRow | undefined;
    return r && toVm(r);
  }

  getVm(nameOrId: string): VmRecord {
    const vm = this.findVm(nameOrId);
    if (!vm) {
      throw new VmsnapError('NOT_FOUND', `no VM named '${nameOrId}'`, {
        hint: "see 'vmsnap list' for the VMs there are",
        details: { vm: nameOrId },
      });
    }
    return vm;
  }

  insertVm(vm: VmRecord): void {
    this.db
      .prepare('INSERT INTO vms (id, name, config, created_at, current_snapshot_id) VALUES (?, ?, ?, ?, ?)')
      .run(vm.id, vm.name, JSON.stringify(vm.config), vm.createdAt, vm.currentSnapshotId);
  }

  updateVmConfig(vmId: string, config: VmConfig): void {
    this.db.prepare('UPDATE vms SET config = ? WHERE id = ?').run(JSON.stringify(config), vmId);
  }

  setCurrentSnapshot(vmId: string, snapshotId: string | null): void {
    this.db.prepare('UPDATE vms SET current_snapshot_id = ? WHERE id = ?').run(snapshotId, vmId);
  }

  deleteVm(vmId: string): void {
    this.db.prepare('DELETE FROM vms WHERE id = ?').run(vmId);
  }

  // ---- layers ----
  insertLayer(l: LayerRecord): void {
    this.db
      .prepare(
        'INSERT INTO layers (id, vm_id, slot, path, format, backing_id, frozen, external, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
      )
      .run(l.id, l.vmId, l.slot, l.path, l.format, l.backingId, l.frozen ? 1 : 0, l.external ? 1 : 0, l.createdAt);
  }

  getLayer(id: string): LayerRecord {
    const r = this.db.prepare('SELECT * FROM layers WHERE id = ?').get(id) as LayerRow | undefined;
    if (!r) throw new VmsnapError('CATALOG_ERROR', `layer ${id} is missing from the catalog`, { hint: "run 'vmsnap verify'" });
    return toLayer(r);
  }

  findLayer(id: string): LayerRecord | undefined {
    const r = this.db.prepare('SELECT * FROM layers WHERE id = ?').get(id) as LayerRow | undefined;
    return r && toLayer(r);
  }

  listLayers(vmId?: string): LayerRecord[] {
    const rows = (
      vmId === undefined
        ? this.db.prepare('SELECT * FROM layers ORDER BY created_at').all()
        : this.db.prepare('SELECT * FROM layers WHERE vm_id = ? ORDER BY created_at').all(vmId)
    ) as LayerRow[];
    return rows.map(toLayer);
  }

  setLayerFrozen(id: string, frozen = true): void {
    this.db.prepare('UPDATE layers SET frozen = ? WHERE id = ?').run(frozen ? 1 : 0, id);
  }

  setLayerBacking(id: string, backingId: string | null): void {
    this.db.prepare('UPDATE layers SET backing_id = ? WHERE id = ?').run(backingId, id);
  }

  deleteLayer(id: string): void {
    this.db.prepare('DELETE FROM layers WHERE id = ?').run(id);
  }

  /** Layers whose backing is this one. */
  childrenOfLayer(id: string): LayerRecord[] {
    return (this.db.prepare('SELECT * FROM layers WHERE backing_id = ?').all(id) as LayerRow[]).map(toLayer);
  }

  /**
   * A commit merged `upperId`'s data down into `lowerId`: the lower layer takes
   * the upper's place everywhere (its frozen state, the snapshots and VMs that
   * name it, the layers built on it), and the upper's row goes.
   */
  replaceLayer(upperId: string, lowerId: string): void {
    const upper = this.getLayer(upperId);
    this.setLayerFrozen(lowerId, upper.frozen);
    this.db.prepare('UPDATE snapshot_layers SET layer_id = ? WHERE layer_id = ?').run(lowerId, upperId);
    this.db.prepare('UPDATE active_layers SET layer_id = ? WHERE layer_id = ?').run(lowerId, upperId);
    this.db.prepare('UPDATE layers SET backing_id = ? WHERE backing_id = ?').run(lowerId, upperId);
    this.deleteLayer(upperId);
  }

  /**
   * VMs other than the layer's owner with a layer built on it (directly or
   * further up): linked clones. Their QEMU may have this layer open, so it
   * must not be merged or written while they do.
   */
  foreignDependents(layerId: string): string[] {
    const rows = this.db
      .prepare(
        `WITH RECURSIVE d(id) AS (
           SELECT id FROM layers WHERE backing_id = ?
           UNION SELECT l.id FROM layers l JOIN d ON l.backing_id = d.id)
         SELECT DISTINCT l.vm_id FROM layers l WHERE l.id IN (SELECT id FROM d)
           AND l.vm_id != (SELECT vm_id FROM layers WHERE id = ?)`,
      )
      .all(layerId, layerId) as { vm_id: string }[];
    return rows.map((r) => r.vm_id);
  }

  /** The chain of a layer, top first, down to its base. */
  chain(layerId: string): LayerRecord[] {
    const out: LayerRecord[] = [];
    let id: string | null = layerId;
    while (id !== null) {
      if (out.length > 10_000) throw new VmsnapError('CATALOG_ERROR', `backing cycle at layer ${id}`);
      const l = this.getLayer(id);
      out.push(l);
      id = l.backingId;
    }
    return out;
  }

  activeLayers(vmId: string): Record<string, string> {
    const rows = this.db.prepare('SELECT slot, layer_id FROM active_layers WHERE vm_id = ? ORDER BY slot').all(vmId) as {
      slot: string;
      layer_id: string;
    }[];
    return Object.fromEntries(rows.map((r) => [r.slot, r.layer_id]));
  }

  /** Whether some VM writes to this layer now. */
  isActiveLayer(layerId: string): boolean {
    return this.db.prepare('SELECT 1 FROM active_layers WHERE layer_id = ?').get(layerId) !== undefined;
  }

  setActiveLayer(vmId: string, slot: string, layerId: string): void {
    this.db
      .prepare(
        'INSERT INTO active_layers (vm_id, slot, layer_id) VALUES (?, ?, ?) ON CONFLICT (vm_id, slot) DO UPDATE SET layer_id = excluded.layer_id',
      )
      .run(vmId, slot, layerId);
  }

  clearActiveLayers(vmId: string): void {
    this.db.prepare('DELETE FROM active_layers WHERE vm_id = ?').run(vmId);
  }

  // ---- snapshots ----
  private toSnapshot(r: SnapshotRow): SnapshotRecord {
    const layers = this.db.prepare('SELECT slot, layer_id FROM snapshot_layers WHERE snapshot_id = ? ORDER BY slot').all(r.id) as {
      slot: string;
      layer_id: string;
    }[];
    return {
      id: r.id,
      vmId: r.vm_id,
      name: r.name,
      description: r.description,
      parentId: r.parent_id,
      createdAt: r.created_at,
      config: parseJsonColumn(VmConfigSchema, r.config, `config of snapshot '${r.name}'`),
      stateFile: r.state_file,
      vmState: r.vm_state,
      pauseMs: r.pause_ms,
      status: r.status,
      meta: parseJsonColumn(SnapshotMetaSchema, r.meta, `details of snapshot '${r.name}'`),
      layers: Object.fromEntries(layers.map((l) => [l.slot, l.layer_id])),
    };
  }

  listSnapshots(vmId: string): SnapshotRecord[] {
    const rows = this.db.prepare('SELECT * FROM snapshots WHERE vm_id = ? ORDER BY created_at, rowid').all(vmId) as SnapshotRow[];
    return rows.map((r) => this.toSnapshot(r));
  }

  findSnapshot(vmId: string, nameOrId: string): SnapshotRecord | undefined {
    const r = this.db
      .prepare('SELECT * FROM snapshots WHERE vm_id = ? AND (name = ? OR id = ?)')
      .get(vmId, nameOrId, nameOrId) as SnapshotRow | undefined;
    return r && this.toSnapshot(r);
  }

  findSnapshotById(id: string): SnapshotRecord | undefined {
    const r = this.db.prepare('SELECT * FROM snapshots WHERE id = ?').get(id) as SnapshotRow | undefined;
    return r && this.toSnapshot(r);
  }

  insertSnapshot(s: SnapshotRecord): void {
    this.db
      .prepare(
        `INSERT INTO snapshots (id, vm_id, name, description, parent_id, created_at, config, state_file, vm_state, pause_ms, status, meta)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(
        s.id,
        s.vmId,
        s.name,
        s.description,
        s.parentId,
        s.createdAt,
        JSON.stringify(s.config),
        s.stateFile,
        s.vmState,
        s.pauseMs,
        s.status,
        JSON.stringify(s.meta),
      );
    const ins = this.db.prepare('INSERT INTO snapshot_layers (snapshot_id, slot, layer_id) VALUES (?, ?, ?)');
    for (const [slot, layerId] of Object.entries(s.layers)) ins.run(s.id, slot, layerId);
  }

  updateSnapshot(
    id: string,
    patch: Partial<Pick<SnapshotRecord, 'status' | 'pauseMs' | 'stateFile' | 'meta' | 'parentId' | 'vmState'>>,
  ): void {
    const cols: Record<string, unknown> = {};
    if (patch.status !== undefined) cols.status = patch.status;
    if (patch.pauseMs !== undefined) cols.pause_ms = patch.pauseMs;
    if (patch.stateFile !== undefined) cols.state_file = patch.stateFile;
    if (patch.meta !== undefined) cols.meta = JSON.stringify(patch.meta);
    if (patch.parentId !== undefined) cols.parent_id = patch.parentId;
    if (patch.vmState !== undefined) cols.vm_state = patch.vmState;
    const keys = Object.keys(cols);
    if (keys.length === 0) return;
    this.db.prepare(`UPDATE snapshots SET ${keys.map((k) => `${k} = @${k}`).join(', ')} WHERE id = @id`).run({ ...cols, id });
  }

  /** Give the children of a snapshot another parent (its own, when it is deleted). */
  reparentChildren(snapshotId: string, newParentId: string | null): void {
    this.db.prepare('UPDATE snapshots SET parent_id = ? WHERE parent_id = ?').run(newParentId, snapshotId);
  }

  setSnapshotLayer(snapshotId: string, slot: string, layerId: string): void {
    this.db.prepare('UPDATE snapshot_layers SET layer_id = ? WHERE snapshot_id = ? AND slot = ?').run(layerId, snapshotId, slot);
  }

  deleteSnapshot(id: string): void {
    this.db.prepare('DELETE FROM snapshots WHERE id = ?').run(id);
  }

  /** Snapshots (of any VM) whose frozen layer for some slot is this layer. */
  snapshotsUsingLayer(layerId: string): { snapshotId: string; slot: string }[] {
    return (
      this.db.prepare('SELECT snapshot_id, slot FROM snapshot_layers WHERE layer_id = ?').all(layerId) as {
        snapshot_id: string;
        slot: string;
      }[]
    ).map((r) => ({ snapshotId: r.snapshot_id, slot: r.slot }));
  }

  /**
   * Whether an unfinished read of guest files (a 'files-read' operation) pins
   * this layer: it is being read, so no merge may rewrite, drop or remove it
   * until the read ends (its release merges what was put off).
   */
  isReadPinned(layerId: string): boolean {
    return (
      this.db
        .prepare(
          `SELECT 1 FROM operations o, json_each(o.plan, '$.pins') p
           WHERE o.kind = 'files-read' AND o.status IN ('running', 'interrupted') AND p.value = ? LIMIT 1`,
        )
        .get(layerId) !== undefined
    );
  }

  // ---- files ----

  /** Every memory state file a snapshot names. */
  stateFiles(): string[] {
    return (this.db.prepare('SELECT state_file FROM snapshots WHERE state_file IS NOT NULL').all() as { state_file: string }[]).map((r) => r.state_file);
  }

  /** Whether a layer or a snapshot's state names this file. */
  refersToFile(path: string): boolean {
    return (
      this.db.prepare('SELECT 1 FROM layers WHERE path = ?').get(path) !== undefined ||
      this.db.prepare('SELECT 1 FROM snapshots WHERE state_file = ?').get(path) !== undefined
    );
  }

  /** Every file the catalog names: layers (imported images too) and state files. */
  referencedFiles(): Set<string> {
    return new Set([...(this.db.prepare('SELECT path FROM layers').all() as { path: string }[]).map((r) => r.path), ...this.stateFiles()]);
  }
}
