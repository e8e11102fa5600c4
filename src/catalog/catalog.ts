import { z } from 'zod';
import { VmConfigSchema, type VmConfig } from '../contract/config.js';
import type { PolicyRunRecord, PolicySpec, VmRunState } from '../contract/views.js';
import { ERROR_CODES, VmsnapError } from '../errors.js';
import { memoryStateFiles, stateFileOwners, type VmsnapPaths } from '../paths.js';
import { isProcessAlive, processStartTime } from '../util/process.js';
import type { Db } from './db.js';
import { damagedCatalog, openCatalog } from './db.js';
import { Records } from './records.js';

export type { VmRunState } from '../contract/views.js';

export interface VmRecord {
  id: string;
  name: string;
  config: VmConfig;
  createdAt: string;
  currentSnapshotId: string | null;
}

/**
 * What a VM's line in a listing shows: its config's memory, vCPUs and disk count read in SQL,
 * without parsing the whole config with its schema (which `info` and every operation do).
 */
export interface VmBrief {
  id: string;
  name: string;
  memoryMiB: number;
  cpus: number;
  disks: number;
  createdAt: string;
  currentSnapshotId: string | null;
}

/** A VM's brief from its parsed record. */
export const briefOf = (vm: VmRecord): VmBrief => ({
  id: vm.id,
  name: vm.name,
  memoryMiB: vm.config.memoryMiB,
  cpus: vm.config.cpus,
  disks: vm.config.disks.length,
  createdAt: vm.createdAt,
  currentSnapshotId: vm.currentSnapshotId,
});

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
  /** Legacy memory state (one stream): its sha256, taken as it was saved. */
  stateSha256: z.string().optional(),
  /** Split memory state: the manifest's own checksum as written at save (a replaced manifest is refused). */
  manifestChecksum: z.string().optional(),
  /** Split memory state: the RAM image's `ino:size:mtime-ns` when saved (or last proven by its sha256). */
  ramIdentity: z.string().optional(),
  /** Split memory state: sha256 of the RAM image file, recorded by the background pass after the save. */
  ramSha256: z.string().optional(),
  /** Split memory state: bytes of guest RAM that held data (non-zero pages) at the snapshot. */
  ramDataBytes: z.number().optional(),
  /** Split memory state: bytes the RAM image did not share with its parent's when saved (reflinked data dirs). */
  ramNewBytes: z.number().optional(),
  downtimeLimitMs: z.number().optional(),
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
  /** Nothing deletes it until unprotected. */
  protected: boolean;
  /** When a prune deletes it; null: never. */
  expiresAt: string | null;
  /** The policy that took it (null: taken by hand) and the slot it was taken for (null for `policy run --now`). */
  policyId: string | null;
  policySlot: string | null;
}

/** The schedule and rules of a VM's policy, as kept in the catalog (checked on read). */
export const PolicySpecSchema = z.object({
  schedule: z.string(),
  timeZone: z.string().nullable(),
  memory: z.boolean().nullable(),
  namePattern: z.string(),
  rules: z.object({
    keepLast: z.number().int().positive().nullable(),
    keepHourly: z.number().int().positive().nullable(),
    keepDaily: z.number().int().positive().nullable(),
    keepWeekly: z.number().int().positive().nullable(),
    keepMonthly: z.number().int().positive().nullable(),
    keepYearly: z.number().int().positive().nullable(),
    maxBytes: z.number().int().positive().nullable(),
  }),
}) satisfies z.ZodType<PolicySpec>;

export const PolicyRunRecordSchema = z.object({
  at: z.string(),
  trigger: z.enum(['schedule', 'now', 'recovery']),
  status: z.enum(['ok', 'failed']),
  slot: z.string().nullable(),
  missed: z.number().int().nonnegative(),
  snapshot: z.string().nullable(),
  deleted: z.array(z.string()),
  error: z.object({ code: z.enum(ERROR_CODES), message: z.string(), hint: z.string().optional() }).nullable(),
}) satisfies z.ZodType<PolicyRunRecord>;

export interface PolicyRecord {
  id: string;
  vmId: string;
  spec: PolicySpec;
  /** When its schedule was set: no slot before it is taken. */
  since: string;
  lastSlot: string | null;
  lastRun: PolicyRunRecord | null;
  createdAt: string;
  updatedAt: string;
}

/** A schedule slot claimed before its snapshot is taken. */
export interface SlotClaim {
  vmId: string;
  slot: string;
  policyId: string;
  state: 'claimed' | 'taken' | 'failed';
  holder: string;
  pid: number;
  claimedAt: string;
  snapshotId: string | null;
  error: string | null;
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
  protected: number;
  expires_at: string | null;
  policy_id: string | null;
  policy_slot: string | null;
}
interface PolicyRow {
  id: string;
  vm_id: string;
  spec: string;
  since: string;
  last_slot: string | null;
  last_run: string | null;
  created_at: string;
  updated_at: string;
}
interface SlotRow {
  vm_id: string;
  slot: string;
  policy_id: string;
  state: SlotClaim['state'];
  holder: string;
  pid: number;
  pid_start: string;
  claimed_at: string;
  snapshot_id: string | null;
  error: string | null;
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
  /** The records beside the VMs, rewritten after each commit that changed a VM's rows. */
  readonly records: Records;
  /** Called after a commit that changed rows (the backups count it). */
  onChange: (() => void) | undefined;

  constructor(db: Db, recordsDir: string) {
    this.db = db;
    this.records = new Records(db, recordsDir);
    db.afterCommit = () => {
      if (this.records.flush() > 0) this.onChange?.();
    };
  }

  /** Open a home's catalog; one that is missing or empty while the home has layers or records is refused (see openCatalog). */
  static open(paths: Pick<VmsnapPaths, 'catalog' | 'records' | 'layers' | 'states'>): Catalog {
    return new Catalog(openCatalog(paths.catalog, { dataDirs: [paths.records, paths.layers, paths.states] }), paths.records);
  }

  close(): void {
    this.db.afterCommit = undefined;
    this.db.close();
  }

  /** Run fn in one IMMEDIATE transaction (writers queue up instead of failing midway). */
  tx<T>(fn: () => T): T {
    return this.db.transaction(fn);
  }

  /** SQLite's integrity check of the catalog (`quick`: without index contents, O(size)): 'ok', or what is wrong. */
  integrityCheck(opts: { quick?: boolean } = {}): string {
    try {
      const rows = this.db.pragma(opts.quick ? 'quick_check' : 'integrity_check') as Record<string, string>[];
      return rows.map((r) => Object.values(r)[0]).join('; ');
    } catch (e) {
      // Damage bad enough stops the check itself.
      if (e instanceof VmsnapError && e.code === 'CATALOG_ERROR' && e.cause instanceof Error) return e.cause.message;
      throw e;
    }
  }

  /**
   * The damaged-catalog error unless SQLite's check passes: recover and verify
   * look at the whole catalog first (the quick check), doctor with the full one.
   */
  assertSound(opts: { full?: boolean } = {}): void {
    const r = this.integrityCheck({ quick: !opts.full });
    if (r !== 'ok') throw damagedCatalog(this.db.path, new Error(r));
  }

  // ---- VMs ----
  listVms(): VmRecord[] {
    return (this.db.prepare('SELECT * FROM vms ORDER BY name').all() as VmRow[]).map(toVm);
  }

  /**
   * Every VM as a listing shows it (see VmBrief), by name. Only the fields shown are read: a
   * config that has them is listed even if another of its fields would fail the schema (`info`
   * and every operation on that VM parse it whole, and `verify` reports it). One without them
   * fails as a parse would, with the schema's own message.
   */
  listVmBriefs(): VmBrief[] {
    const rows = this.db
      .prepare(
        `SELECT id, name, created_at, current_snapshot_id, config,
           CASE WHEN json_valid(config) THEN json_extract(config, '$.memoryMiB') END AS memory_mib,
           CASE WHEN json_valid(config) THEN json_extract(config, '$.cpus') END AS cpus,
           CASE WHEN json_valid(config) THEN json_array_length(config, '$.disks') END AS disks
         FROM vms ORDER BY name`,
      )
      .all() as (VmRow & { memory_mib: unknown; cpus: unknown; disks: unknown })[];
    const atLeast = (min: number) => (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= min;
    return rows.map((r) =>
      atLeast(1)(r.memory_mib) && atLeast(1)(r.cpus) && atLeast(0)(r.disks)
        ? { id: r.id, name: r.name, memoryMiB: r.memory_mib, cpus: r.cpus, disks: r.disks, createdAt: r.created_at, currentSnapshotId: r.current_snapshot_id }
        : briefOf(toVm(r)),
    );
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
      protected: r.protected === 1,
      expiresAt: r.expires_at,
      policyId: r.policy_id,
      policySlot: r.policy_slot,
    };
  }

  listSnapshots(vmId: string): SnapshotRecord[] {
    const rows = this.db.prepare('SELECT * FROM snapshots WHERE vm_id = ? ORDER BY created_at, rowid').all(vmId) as SnapshotRow[];
    return rows.map((r) => this.toSnapshot(r));
  }

  /** A VM's snapshots counted (all, protected) and the current one's name: what its summary (`list`) shows, without parsing every snapshot's config. */
  snapshotSummary(vmId: string, currentId: string | null): { count: number; protectedCount: number; currentName: string | null } {
    const { n, p } = this.db.prepare('SELECT count(*) AS n, coalesce(sum(protected), 0) AS p FROM snapshots WHERE vm_id = ?').get(vmId) as { n: number; p: number };
    const cur = currentId === null ? undefined : (this.db.prepare('SELECT name FROM snapshots WHERE id = ? AND vm_id = ?').get(currentId, vmId) as { name: string } | undefined);
    return { count: n, protectedCount: p, currentName: cur?.name ?? null };
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
        `INSERT INTO snapshots (id, vm_id, name, description, parent_id, created_at, config, state_file, vm_state, pause_ms, status, meta,
                                protected, expires_at, policy_id, policy_slot)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
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
        s.protected ? 1 : 0,
        s.expiresAt,
        s.policyId,
        s.policySlot,
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

  /**
   * Protect or unprotect a ready snapshot (one being deleted can no longer be
   * protected). One row, one statement: no lock is needed, and a delete checks
   * the flag in the same transaction that marks the snapshot 'deleting'.
   * Returns whether a ready snapshot was found.
   */
  setSnapshotProtected(id: string, protect: boolean): boolean {
    return this.db.prepare("UPDATE snapshots SET protected = ? WHERE id = ? AND status = 'ready'").run(protect ? 1 : 0, id).changes === 1;
  }

  // ---- policies ----
  private toPolicy(r: PolicyRow, vmName: string): PolicyRecord {
    return {
      id: r.id,
      vmId: r.vm_id,
      spec: parseJsonColumn(PolicySpecSchema, r.spec, `policy of VM '${vmName}'`),
      since: r.since,
      lastSlot: r.last_slot,
      lastRun: r.last_run === null ? null : parseJsonColumn(PolicyRunRecordSchema, r.last_run, `last run of the policy of VM '${vmName}'`),
      createdAt: r.created_at,
      updatedAt: r.updated_at,
    };
  }

  findPolicy(vmId: string): PolicyRecord | undefined {
    const r = this.db.prepare('SELECT * FROM policies WHERE vm_id = ?').get(vmId) as PolicyRow | undefined;
    return r && this.toPolicy(r, this.findVm(vmId)?.name ?? vmId);
  }

  listPolicies(): PolicyRecord[] {
    const rows = this.db.prepare('SELECT p.*, v.name AS vm_name FROM policies p JOIN vms v ON v.id = p.vm_id ORDER BY v.name').all() as (PolicyRow & { vm_name: string })[];
    return rows.map((r) => this.toPolicy(r, r.vm_name));
  }

  /** Insert or replace a VM's policy (a VM has at most one). */
  savePolicy(p: PolicyRecord): void {
    this.db
      .prepare(
        `INSERT INTO policies (id, vm_id, spec, since, last_slot, last_run, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (vm_id) DO UPDATE SET id = excluded.id, spec = excluded.spec, since = excluded.since, last_slot = excluded.last_slot,
           last_run = excluded.last_run, created_at = excluded.created_at, updated_at = excluded.updated_at`,
      )
      .run(p.id, p.vmId, JSON.stringify(p.spec), p.since, p.lastSlot, p.lastRun === null ? null : JSON.stringify(p.lastRun), p.createdAt, p.updatedAt);
  }

  deletePolicy(vmId: string): void {
    this.db.prepare('DELETE FROM policies WHERE vm_id = ?').run(vmId);
    this.db.prepare('DELETE FROM policy_slots WHERE vm_id = ?').run(vmId);
  }

  /** What a pass of this policy did (shown by `policy show` and doctor). */
  recordPolicyRun(policyId: string, run: PolicyRunRecord): void {
    this.db.prepare('UPDATE policies SET last_run = ? WHERE id = ?').run(JSON.stringify(run), policyId);
  }

  /** A slot was taken or tried: no later pass takes it, or one before it, again. */
  advancePolicySlot(policyId: string, slot: string): void {
    this.db.prepare('UPDATE policies SET last_slot = ? WHERE id = ? AND (last_slot IS NULL OR last_slot < ?)').run(slot, policyId, slot);
  }

  /** Whether a VM has a snapshot whose expiry has passed (cheap: a pass with no slot due prunes only then). */
  hasExpiredSnapshots(vmId: string, at: Date): boolean {
    return this.db.prepare("SELECT 1 FROM snapshots WHERE vm_id = ? AND status = 'ready' AND expires_at IS NOT NULL AND expires_at <= ? AND protected = 0").get(vmId, at.toISOString()) !== undefined;
  }

  /** How many snapshots of a VM this policy took (that are still there). */
  countPolicySnapshots(vmId: string, policyId: string): number {
    return (this.db.prepare("SELECT COUNT(*) AS n FROM snapshots WHERE vm_id = ? AND policy_id = ? AND status = 'ready'").get(vmId, policyId) as { n: number }).n;
  }

  // ---- slot claims ----
  private toClaim(r: SlotRow): SlotClaim {
    return { vmId: r.vm_id, slot: r.slot, policyId: r.policy_id, state: r.state, holder: r.holder, pid: r.pid, claimedAt: r.claimed_at, snapshotId: r.snapshot_id, error: r.error };
  }

  findClaim(vmId: string, slot: string): SlotClaim | undefined {
    const r = this.db.prepare('SELECT * FROM policy_slots WHERE vm_id = ? AND slot = ?').get(vmId, slot) as SlotRow | undefined;
    return r && this.toClaim(r);
  }

  /**
   * Claim a slot for `holder` before taking its snapshot: the (VM, slot) key is
   * unique, so of two schedulers only one gets it. A claim left 'claimed' by a
   * process that died is taken over (its snapshot was never taken, or recovery
   * marks it taken first). Returns undefined when claimed, else the claim that
   * stands in the way.
   */
  claimSlot(vmId: string, slot: string, policyId: string, holder: string): SlotClaim | undefined {
    return this.tx(() => {
      const row = this.db.prepare('SELECT * FROM policy_slots WHERE vm_id = ? AND slot = ?').get(vmId, slot) as SlotRow | undefined;
      if (row && (row.state !== 'claimed' || isProcessAlive(row.pid, row.pid_start))) return this.toClaim(row);
      this.db
        .prepare(
          `INSERT OR REPLACE INTO policy_slots (vm_id, slot, policy_id, state, holder, pid, pid_start, claimed_at, snapshot_id, error)
           VALUES (?, ?, ?, 'claimed', ?, ?, ?, ?, NULL, NULL)`,
        )
        .run(vmId, slot, policyId, holder, process.pid, processStartTime(process.pid) ?? '0', new Date().toISOString());
      return undefined;
    });
  }

  /** The slot was taken (or failed: it is not tried again). Older finished claims of the VM beyond the last 100 go. */
  finishClaim(vmId: string, slot: string, state: 'taken' | 'failed', snapshotId: string | null, error: string | null = null): void {
    this.db.prepare('UPDATE policy_slots SET state = ?, snapshot_id = ?, error = ? WHERE vm_id = ? AND slot = ?').run(state, snapshotId, error, vmId, slot);
    this.db
      .prepare(
        `DELETE FROM policy_slots WHERE vm_id = ? AND state != 'claimed' AND slot NOT IN
           (SELECT slot FROM policy_slots WHERE vm_id = ? ORDER BY slot DESC LIMIT 100)`,
      )
      .run(vmId, vmId);
  }

  /** Give a claim up (the VM was busy, or the pass died before its snapshot): a later pass tries the slot again. */
  releaseClaim(vmId: string, slot: string, holder?: string): void {
    if (holder === undefined) this.db.prepare("DELETE FROM policy_slots WHERE vm_id = ? AND slot = ? AND state = 'claimed'").run(vmId, slot);
    else this.db.prepare("DELETE FROM policy_slots WHERE vm_id = ? AND slot = ? AND state = 'claimed' AND holder = ?").run(vmId, slot, holder);
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

  /** Every memory state file a snapshot names (a split state's manifest, RAM image and device state). */
  stateFiles(): string[] {
    return (this.db.prepare('SELECT state_file FROM snapshots WHERE state_file IS NOT NULL').all() as { state_file: string }[]).flatMap((r) =>
      memoryStateFiles(r.state_file),
    );
  }

  /** Whether a layer or a snapshot's memory state names this file. */
  refersToFile(path: string): boolean {
    const byState = this.db.prepare('SELECT 1 FROM snapshots WHERE state_file = ?');
    return this.db.prepare('SELECT 1 FROM layers WHERE path = ?').get(path) !== undefined || stateFileOwners(path).some((f) => byState.get(f) !== undefined);
  }

  /** The hardware config of every VM and every snapshot: what names the stored boot files. */
  allConfigs(): VmConfig[] {
    const vms = this.db.prepare('SELECT name, config FROM vms').all() as { name: string; config: string }[];
    const snaps = this.db.prepare('SELECT name, config FROM snapshots').all() as { name: string; config: string }[];
    return [
      ...vms.map((r) => parseJsonColumn(VmConfigSchema, r.config, `config of VM '${r.name}'`)),
      ...snaps.map((r) => parseJsonColumn(VmConfigSchema, r.config, `config of snapshot '${r.name}'`)),
    ];
  }

  /** Every file the catalog names: layers (imported images too) and state files. */
  referencedFiles(): Set<string> {
    return new Set([...(this.db.prepare('SELECT path FROM layers').all() as { path: string }[]).map((r) => r.path), ...this.stateFiles()]);
  }
}
