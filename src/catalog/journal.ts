import { VmsnapError } from '../errors.js';
import { newId } from '../util/ids.js';
import type { Catalog } from './catalog.js';

/** running: in progress (or its process died); interrupted: failed half way, to be finished by recovery. */
export type OperationStatus = 'running' | 'interrupted' | 'done' | 'rolled_back' | 'failed';

/**
 * One row of the journal. The plan is kept as the JSON it was written as: the
 * operation's definition parses it with its schema before anything uses it.
 */
export interface JournalRecord {
  id: string;
  vmId: string | null;
  kind: string;
  status: OperationStatus;
  step: number;
  plan: unknown;
  error: string | null;
  pid: number;
  startedAt: string;
  finishedAt: string | null;
  /** The operation this one runs inside of, if any. */
  parentId: string | null;
}

interface OperationRow {
  id: string;
  vm_id: string | null;
  kind: string;
  status: OperationStatus;
  step: number;
  plan: string;
  error: string | null;
  pid: number;
  started_at: string;
  finished_at: string | null;
  parent_id: string | null;
}

function toRecord(r: OperationRow): JournalRecord {
  let plan: unknown;
  try {
    plan = JSON.parse(r.plan);
  } catch (e) {
    throw new VmsnapError('CATALOG_ERROR', `the plan of operation ${r.id} (${r.kind}) in the journal is not valid JSON: ${(e as Error).message}`, {
      hint: 'do not edit the catalog by hand',
      details: { operation: r.id },
    });
  }
  return {
    id: r.id,
    vmId: r.vm_id,
    kind: r.kind,
    status: r.status,
    step: r.step,
    plan,
    error: r.error,
    pid: r.pid,
    startedAt: r.started_at,
    finishedAt: r.finished_at,
    parentId: r.parent_id,
  };
}

const errorText = (error: unknown): string | null =>
  error === undefined || error === null ? null : String(error instanceof Error ? error.message : error);

/**
 * The operations journal. An operation is written with its plan (every file it
 * will create or remove) before any file is touched; each step is recorded as
 * it completes, so recovery knows how far it got. Only the operation runner
 * (src/operations/) writes it.
 */
export class Journal {
  constructor(private readonly catalog: Catalog) {}

  begin(kind: string, vmId: string | null, plan: unknown, parentId: string | null = null): JournalRecord {
    const rec: JournalRecord = {
      id: newId(),
      vmId,
      kind,
      status: 'running',
      step: 0,
      plan,
      error: null,
      pid: process.pid,
      startedAt: new Date().toISOString(),
      finishedAt: null,
      parentId,
    };
    this.catalog.db
      .prepare('INSERT INTO operations (id, vm_id, kind, status, step, plan, pid, started_at, parent_id) VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?)')
      .run(rec.id, vmId, kind, 'running', JSON.stringify(plan), rec.pid, rec.startedAt, parentId);
    return rec;
  }

  /** Record step `step` as completed; `change` runs in the same transaction (catalog edits of that step). */
  step(id: string, step: number, change?: () => void): void {
    this.catalog.tx(() => {
      change?.();
      this.catalog.db.prepare('UPDATE operations SET step = ? WHERE id = ?').run(step, id);
    });
  }

  /** Replace the plan (when a step learns what later steps need, e.g. a new file's name). Joins an open transaction. */
  writePlan(id: string, plan: unknown): void {
    this.catalog.db.prepare('UPDATE operations SET plan = ? WHERE id = ?').run(JSON.stringify(plan), id);
  }

  finish(id: string, status: Exclude<OperationStatus, 'running'>, error?: unknown, change?: () => void): void {
    this.catalog.tx(() => {
      change?.();
      this.catalog.db
        .prepare('UPDATE operations SET status = ?, error = ?, finished_at = ? WHERE id = ?')
        .run(status, errorText(error), new Date().toISOString(), id);
    });
  }

  /** Failed half way: left for recovery to finish (still unfinished), with the reason. */
  markInterrupted(id: string, error: unknown): void {
    this.catalog.db.prepare("UPDATE operations SET status = 'interrupted', error = ? WHERE id = ?").run(errorText(error), id);
  }

  get(id: string): JournalRecord {
    const r = this.catalog.db.prepare('SELECT * FROM operations WHERE id = ?').get(id) as OperationRow | undefined;
    if (!r) throw new VmsnapError('NOT_FOUND', `no operation ${id}`);
    return toRecord(r);
  }

  unfinished(): JournalRecord[] {
    return (this.catalog.db.prepare("SELECT * FROM operations WHERE status IN ('running', 'interrupted') ORDER BY started_at, rowid").all() as OperationRow[]).map(
      toRecord,
    );
  }

  recent(vmId?: string, limit = 50): JournalRecord[] {
    const rows = (
      vmId === undefined
        ? this.catalog.db.prepare('SELECT * FROM operations ORDER BY started_at DESC LIMIT ?').all(limit)
        : this.catalog.db.prepare('SELECT * FROM operations WHERE vm_id = ? ORDER BY started_at DESC LIMIT ?').all(vmId, limit)
    ) as OperationRow[];
    return rows.map(toRecord);
  }

  /** Changes whenever an operation on the VM starts: work done without the lock compares it before and after. */
  mark(vmId: string): string {
    const r = this.catalog.db.prepare('SELECT COUNT(*) AS n, MAX(started_at) AS t FROM operations WHERE vm_id = ?').get(vmId) as { n: number; t: string | null };
    return `${r.n}/${r.t}`;
  }
}
