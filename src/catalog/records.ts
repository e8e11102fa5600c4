import { createHash } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { memoryStateFiles } from '../paths.js';
import { fsyncPath } from '../util/files.js';
import type { Db } from './db.js';
import { MIGRATIONS } from './migrations.js';

/**
 * Records beside the VMs: a small, self-describing copy of everything the
 * catalog knows about each VM, so that losing the catalog loses nothing
 * (`vmsnap recover --rebuild-catalog` builds a new one from them).
 *
 *   records/VM-ID/vm.json                 the VM's row, its layers (backing ids, paths,
 *                                         format, external), its active layers, the ids
 *                                         of its snapshots, its unfinished operations
 *   records/VM-ID/snapshots/SNAP-ID.json  one snapshot's row and its layer per disk
 *
 * They are derived from the catalog, never edited: rows are copied whole
 * (`SELECT *`), so a column added to a table by a later migration is carried
 * without a line here (a JSON column needs one line in JSON_COLUMNS). Triggers
 * mark a VM stale in the same transaction as any change to its rows
 * (migration 3), and the connection rewrites the stale VMs' records right
 * after each commit (db.ts `afterCommit`), so a crash in between leaves the
 * mark for the next writer. Each file is versioned and checksummed, written to
 * a temporary name, fsynced and renamed; a VM's snapshot files are renamed
 * before its vm.json, which names them.
 */

export const RECORD_VERSION = 1;
export const VM_RECORD = 'vmsnap-vm-record';
export const SNAPSHOT_RECORD = 'vmsnap-snapshot-record';

/** Columns holding JSON text: kept as JSON in a record, so it reads as what it is. */
const JSON_COLUMNS: Record<string, readonly string[]> = { vms: ['config'], snapshots: ['config', 'meta'], operations: ['plan'], policies: ['spec', 'last_run'] };

export type Row = Record<string, unknown>;
const RowSchema = z.record(z.string(), z.unknown());
const IdRow = z.looseObject({ id: z.string() });

export const VmRecordBody = z.object({
  vmId: z.string(),
  /** The catalog schema version the rows come from. */
  schema: z.number().int(),
  vm: IdRow.nullable(),
  layers: z.array(IdRow),
  activeLayers: z.array(RowSchema),
  /** The VM's snapshots, oldest first: each has its own record. */
  snapshots: z.array(z.string()),
  /** Its unfinished operations (journal rows), so recovery can finish them after a rebuild. */
  operations: z.array(IdRow),
  /** Its snapshot policy (policies rows: schedule, keep rules, last pass); absent in records written before policies. */
  policies: z.array(IdRow).default([]),
});
export type VmRecordBody = z.infer<typeof VmRecordBody>;

export const SnapshotRecordBody = z.object({
  vmId: z.string(),
  schema: z.number().int(),
  snapshot: IdRow,
  /** Its frozen layer per disk (snapshot_layers rows). */
  layers: z.array(RowSchema),
});
export type SnapshotRecordBody = z.infer<typeof SnapshotRecordBody>;

interface Envelope<B> {
  format: string;
  version: number;
  body: B;
  sha256: string;
}

const sha256 = (text: string): string => createHash('sha256').update(text).digest('hex');

/** The text of a record: the checksum covers format, version and body as serialized (JSON.stringify is stable for parsed JSON). */
export function recordText(format: string, body: unknown): string {
  const unsigned = { format, version: RECORD_VERSION, body };
  return `${JSON.stringify({ ...unsigned, sha256: sha256(JSON.stringify(unsigned)) }, null, 2)}\n`;
}

export type ReadResult<B> = { ok: true; body: B } | { ok: false; problem: string };

/** Read a record and check it before anything trusts it: format, version, checksum, schema, shape. */
export function readRecord<B>(path: string, format: string, schema: z.ZodType<B>): ReadResult<B> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    return { ok: false, problem: `cannot be read: ${(e as Error).message}` };
  }
  let doc: Partial<Envelope<unknown>>;
  try {
    doc = JSON.parse(text) as Partial<Envelope<unknown>>;
  } catch (e) {
    return { ok: false, problem: `is not valid JSON: ${(e as Error).message}` };
  }
  if (typeof doc !== 'object' || doc === null || doc.format !== format) return { ok: false, problem: `is not a ${format} file` };
  if (typeof doc.version !== 'number' || !Number.isInteger(doc.version)) return { ok: false, problem: 'has no version' };
  if (doc.version > RECORD_VERSION) return { ok: false, problem: `was written by a newer vmsnap (record version ${doc.version}; this one reads up to ${RECORD_VERSION})` };
  const unsigned = { format: doc.format, version: doc.version, body: doc.body };
  if (doc.sha256 !== sha256(JSON.stringify(unsigned))) return { ok: false, problem: 'does not match its checksum (damaged or edited)' };
  const schemaVersion = (doc.body as { schema?: unknown } | undefined)?.schema;
  if (typeof schemaVersion === 'number' && schemaVersion > MIGRATIONS.length) {
    return { ok: false, problem: `holds rows of a newer catalog schema (${schemaVersion}; this vmsnap knows ${MIGRATIONS.length})` };
  }
  const parsed = schema.safeParse(doc.body);
  if (!parsed.success) {
    const i = parsed.error.issues[0]!;
    return { ok: false, problem: `is not what this vmsnap expects: ${i.path.join('.') || 'body'}: ${i.message}` };
  }
  return { ok: true, body: parsed.data };
}

/** Write a file so that a crash leaves the old content or the new, never a mix: temp file, fsync, rename (the caller fsyncs the folder). */
export function writeFileAtomic(path: string, text: string): void {
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w', 0o600);
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}

/** JSON with sorted keys: two bodies compare equal whatever order a parser left their keys in. */
function canonical(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) =>
    x && typeof x === 'object' && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) : x,
  );
}

function readIfExists(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** A row as a record holds it: JSON columns parsed. */
function exportRow(table: string, row: Row): Row {
  const out: Row = { ...row };
  for (const c of JSON_COLUMNS[table] ?? []) if (typeof out[c] === 'string') out[c] = JSON.parse(out[c] as string) as unknown;
  return out;
}

/** A row from a record, as the catalog stores it: JSON columns as text. */
export function importRow(table: string, row: Row): Row {
  const out: Row = { ...row };
  for (const c of JSON_COLUMNS[table] ?? []) if (out[c] !== undefined && out[c] !== null && typeof out[c] !== 'string') out[c] = JSON.stringify(out[c]);
  return out;
}

/** What a VM's records hold now, straight from the catalog's rows; undefined when the catalog has nothing of it. */
export function recordsOf(db: Db, vmId: string): { vm: VmRecordBody; snapshots: SnapshotRecordBody[] } | undefined {
  const schema = MIGRATIONS.length;
  const vm = db.prepare('SELECT * FROM vms WHERE id = ?').get(vmId) as Row | undefined;
  const operations = db
    .prepare("SELECT * FROM operations WHERE vm_id = ? AND status IN ('running', 'interrupted') ORDER BY started_at, rowid")
    .all(vmId) as Row[];
  if (!vm && operations.length === 0) return undefined;
  const layers = db.prepare('SELECT * FROM layers WHERE vm_id = ? ORDER BY created_at, rowid').all(vmId) as Row[];
  const activeLayers = db.prepare('SELECT * FROM active_layers WHERE vm_id = ? ORDER BY slot').all(vmId) as Row[];
  const policies = db.prepare('SELECT * FROM policies WHERE vm_id = ? ORDER BY id').all(vmId) as Row[];
  const snaps = db.prepare('SELECT * FROM snapshots WHERE vm_id = ? ORDER BY created_at, rowid').all(vmId) as Row[];
  const snapLayers = db
    .prepare('SELECT sl.* FROM snapshot_layers sl JOIN snapshots s ON s.id = sl.snapshot_id WHERE s.vm_id = ? ORDER BY sl.snapshot_id, sl.slot')
    .all(vmId) as Row[];
  const bySnap = new Map<unknown, Row[]>();
  for (const r of snapLayers) bySnap.set(r.snapshot_id, [...(bySnap.get(r.snapshot_id) ?? []), r]);
  const asId = (r: Row) => r as z.infer<typeof IdRow>;
  return {
    vm: {
      vmId,
      schema,
      vm: vm ? asId(exportRow('vms', vm)) : null,
      layers: layers.map((r) => asId(exportRow('layers', r))),
      activeLayers,
      snapshots: snaps.map((s) => String(s.id)),
      operations: operations.map((r) => asId(exportRow('operations', r))),
      policies: policies.map((r) => asId(exportRow('policies', r))),
    },
    snapshots: snaps.map((s) => ({ vmId, schema, snapshot: asId(exportRow('snapshots', s)), layers: bySnap.get(s.id) ?? [] })),
  };
}

export interface RecordIssue {
  vmId: string;
  path: string;
  message: string;
}

const vmDir = (dir: string, vmId: string) => join(dir, vmId);
export const vmRecordPath = (dir: string, vmId: string) => join(dir, vmId, 'vm.json');
export const snapshotRecordPath = (dir: string, vmId: string, snapId: string) => join(dir, vmId, 'snapshots', `${snapId}.json`);

/**
 * The records of one home, kept in step with its catalog. `flush` runs after
 * every commit (quietly: a record that cannot be written stays marked and is
 * retried by the next writer, and recovery flushes strictly).
 */
export class Records {
  private flushing = false;
  /** Why the last quiet flush failed, if it did (doctor and recover report it). */
  lastError: Error | undefined;

  constructor(
    private readonly db: Db,
    readonly dir: string,
  ) {}

  /** VMs whose records are behind the catalog. */
  pending(): string[] {
    return (this.db.prepare('SELECT vm_id FROM stale_records ORDER BY vm_id').all() as { vm_id: string }[]).map((r) => r.vm_id);
  }

  /**
   * Rewrite the records of the VMs marked stale, in one IMMEDIATE transaction
   * (so no writer changes them meanwhile, and the marks go only once the files
   * are written). Returns how many VMs were marked. Strict: throws when a
   * record cannot be written; otherwise remembers why and leaves the marks.
   */
  flush(opts: { strict?: boolean } = {}): number {
    if (this.flushing) return 0;
    this.flushing = true;
    try {
      let n = 0;
      this.db.transaction(() => {
        const stale = this.pending();
        n = stale.length;
        for (const vmId of stale) {
          this.write(vmId);
          this.db.prepare('DELETE FROM stale_records WHERE vm_id = ?').run(vmId);
        }
      });
      if (n > 0) this.lastError = undefined;
      return n;
    } catch (e) {
      this.lastError = e instanceof Error ? e : new Error(String(e));
      if (opts.strict) throw e;
      return 1;
    } finally {
      this.flushing = false;
    }
  }

  /**
   * Rewrite the records of every VM whose records are pending, missing,
   * damaged or out of date (the catalog is the truth here: the caller checked
   * it is sound). Records of VMs the catalog lacks are left for the user: they
   * may be all that is left of a VM. Returns how many VMs were rewritten.
   */
  repair(): number {
    const known = new Set(
      (this.db.prepare("SELECT id FROM vms UNION SELECT vm_id FROM operations WHERE status IN ('running', 'interrupted') AND vm_id IS NOT NULL").all() as { id: string }[]).map(
        (r) => r.id,
      ),
    );
    const ids = [...new Set(this.check().map((i) => i.vmId))].filter((id) => known.has(id) || this.pending().includes(id));
    if (ids.length === 0) return 0;
    this.db.transaction(() => {
      const mark = this.db.prepare('INSERT INTO stale_records (vm_id) SELECT ? WHERE NOT EXISTS (SELECT 1 FROM stale_records WHERE vm_id = ?)');
      for (const id of ids) mark.run(id, id);
    });
    this.flush({ strict: true });
    return ids.length;
  }

  /** Mark every VM the catalog knows and write all their records (after a rebuild or a restore). */
  rewriteAll(): void {
    this.db.transaction(() => {
      this.db
        .prepare(
          `INSERT INTO stale_records (vm_id) SELECT id FROM vms
             UNION SELECT vm_id FROM operations WHERE status IN ('running', 'interrupted') AND vm_id IS NOT NULL
           EXCEPT SELECT vm_id FROM stale_records`,
        )
        .run();
    });
    this.flush({ strict: true });
  }

  /** Write one VM's records from the catalog (or remove them when the catalog has nothing of it). */
  private write(vmId: string): void {
    const want = recordsOf(this.db, vmId);
    const dir = vmDir(this.dir, vmId);
    if (!want) {
      if (existsSync(dir)) {
        rmSync(dir, { recursive: true, force: true });
        fsyncPath(this.dir);
      }
      return;
    }
    const snapDir = join(dir, 'snapshots');
    if (!existsSync(snapDir)) {
      mkdirSync(snapDir, { recursive: true, mode: 0o700 });
      fsyncPath(dir);
      fsyncPath(this.dir);
    }
    let renamed = false;
    for (const s of want.snapshots) {
      const p = snapshotRecordPath(this.dir, vmId, String(s.snapshot.id));
      const text = recordText(SNAPSHOT_RECORD, s);
      if (readIfExists(p) === text) continue;
      writeFileAtomic(p, text);
      renamed = true;
    }
    if (renamed) fsyncPath(snapDir);
    const vmPath = vmRecordPath(this.dir, vmId);
    const text = recordText(VM_RECORD, want.vm);
    if (readIfExists(vmPath) !== text) {
      writeFileAtomic(vmPath, text);
      fsyncPath(dir);
    }
    const keep = new Set(want.snapshots.map((s) => `${String(s.snapshot.id)}.json`));
    let removed = false;
    for (const f of readdirSync(snapDir)) {
      if (keep.has(f)) continue;
      rmSync(join(snapDir, f), { force: true });
      removed = true;
    }
    if (removed) fsyncPath(snapDir);
  }

  /**
   * Where records and catalog disagree (records missing, damaged or out of
   * date, records of VMs the catalog lacks), and records waiting to be
   * written; of one VM (plus the records of VMs the catalog lacks), or all.
   */
  check(onlyVmId?: string): RecordIssue[] {
    const issues: RecordIssue[] = [];
    const pending = new Set(this.pending());
    for (const vmId of pending) {
      if (onlyVmId !== undefined && vmId !== onlyVmId) continue;
      issues.push({
        vmId,
        path: vmDir(this.dir, vmId),
        message: `the records of VM ${vmId} are waiting to be written${this.lastError ? ` (last attempt: ${this.lastError.message})` : ''}: run 'vmsnap recover'`,
      });
    }
    const ids = (
      this.db
        .prepare("SELECT id FROM vms UNION SELECT vm_id FROM operations WHERE status IN ('running', 'interrupted') AND vm_id IS NOT NULL")
        .all() as { id: string }[]
    ).map((r) => r.id);
    for (const vmId of ids) {
      if (pending.has(vmId) || (onlyVmId !== undefined && vmId !== onlyVmId)) continue;
      const want = recordsOf(this.db, vmId);
      if (!want) continue;
      const name = (want.vm.vm?.name as string | undefined) ?? vmId;
      const compare = <B>(path: string, format: string, schema: z.ZodType<B>, expected: B, what: string) => {
        if (!existsSync(path)) return issues.push({ vmId, path, message: `the record of ${what} is missing: ${path}` });
        const got = readRecord(path, format, schema);
        if (!got.ok) return issues.push({ vmId, path, message: `the record of ${what} ${got.problem}: ${path}` });
        if (canonical(got.body) !== canonical(expected)) issues.push({ vmId, path, message: `the record of ${what} disagrees with the catalog: ${path}` });
        return undefined;
      };
      compare(vmRecordPath(this.dir, vmId), VM_RECORD, VmRecordBody, want.vm, `VM '${name}'`);
      for (const s of want.snapshots) {
        compare(snapshotRecordPath(this.dir, vmId, String(s.snapshot.id)), SNAPSHOT_RECORD, SnapshotRecordBody, s, `snapshot '${String(s.snapshot.name)}' of '${name}'`);
      }
      const snapDir = join(vmDir(this.dir, vmId), 'snapshots');
      const known = new Set(want.snapshots.map((s) => `${String(s.snapshot.id)}.json`));
      for (const f of existsSync(snapDir) ? readdirSync(snapDir) : []) {
        if (!known.has(f)) issues.push({ vmId, path: join(snapDir, f), message: `a snapshot record the catalog does not have: ${join(snapDir, f)}` });
      }
    }
    const known = new Set(ids);
    for (const d of existsSync(this.dir) ? readdirSync(this.dir) : []) {
      if (!known.has(d) && !pending.has(d)) issues.push({ vmId: d, path: join(this.dir, d), message: `records of a VM the catalog does not have: ${join(this.dir, d)}` });
    }
    return issues;
  }
}

/** One VM as its records on disk tell it, checked. */
export interface LoadedVm {
  vm: VmRecordBody;
  snapshots: SnapshotRecordBody[];
}

/** Every VM's records in a folder, each checked before it is used; records that fail a check are reported, never used. */
export function loadRecords(dir: string): { vms: LoadedVm[]; problems: { path: string; problem: string }[] } {
  const vms: LoadedVm[] = [];
  const problems: { path: string; problem: string }[] = [];
  for (const vmId of existsSync(dir) ? readdirSync(dir).sort() : []) {
    const path = vmRecordPath(dir, vmId);
    const got = existsSync(path) ? readRecord(path, VM_RECORD, VmRecordBody) : { ok: false as const, problem: 'is missing' };
    if (!got.ok) {
      problems.push({ path, problem: got.problem });
      continue;
    }
    if (got.body.vmId !== vmId) {
      problems.push({ path, problem: `names VM ${got.body.vmId}, not the folder's ${vmId}` });
      continue;
    }
    const loaded: LoadedVm = { vm: got.body, snapshots: [] };
    for (const snapId of got.body.snapshots) {
      const p = snapshotRecordPath(dir, vmId, snapId);
      const s = existsSync(p) ? readRecord(p, SNAPSHOT_RECORD, SnapshotRecordBody) : { ok: false as const, problem: 'is missing' };
      if (!s.ok) problems.push({ path: p, problem: s.problem });
      else if (s.body.snapshot.id !== snapId || s.body.vmId !== vmId) problems.push({ path: p, problem: 'belongs to another snapshot or VM' });
      else loaded.snapshots.push(s.body);
    }
    vms.push(loaded);
  }
  return { vms, problems };
}

/** Every file the records on disk name (layers and state files): nothing a record names is ever swept as an orphan. */
export function recordedFiles(dir: string): Set<string> {
  const out = new Set<string>();
  for (const v of loadRecords(dir).vms) {
    for (const l of v.vm.layers) if (typeof l.path === 'string') out.add(l.path);
    for (const s of v.snapshots) if (typeof s.snapshot.state_file === 'string') for (const f of memoryStateFiles(s.snapshot.state_file)) out.add(f);
  }
  return out;
}
