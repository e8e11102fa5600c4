import { VmsnapError } from '../errors.js';
import { newId } from '../util/ids.js';
import type { Catalog } from './catalog.js';

/** running: in progress (or its process died); interrupted: failed half way, to be rolled forward by recovery. */
export type OperationStatus = 'running' | 'interrupted' | 'done' | 'rolled_back' | 'failed';

export interface OperationRecord<P = Record<string, unknown>> {
  id: string;
  vmId: string | null;
  kind: string;
  status: OperationStatus;
  step: number;
  plan: P;
  error: string | null;
  pid: number;
  startedAt: string;
  finishedAt: string | null;
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
}

const toOperation = (r: OperationRow): OperationRecord => ({
  id: r.id,
  vmId: r.vm_id,
  kind: r.kind,
  status: r.status,
  step: r.step,
  plan: JSON.parse(r.plan) as Record<string, unknown>,
  error: r.error,
  pid: r.pid,
  startedAt: r.started_at,
  finishedAt: r.finished_at,
});

/**
 * Test-only fault injection: VMSNAP_FAULT="kind:POINT" makes the process die
 * (SIGKILL, like kill -9) at that point of an operation of that kind: a number
 * is the boundary right after that journal step was recorded, a name one of the
 * named points in between (e.g. snapshot-create:switched). Tests use it to
 * prove recovery from every boundary.
 */
export function faultPoint(kind: string, point: string | number): void {
  const fault = process.env.VMSNAP_FAULT;
  if (!fault) return;
  const i = fault.lastIndexOf(':');
  if (fault.slice(0, i) === kind && fault.slice(i + 1) === String(point)) process.kill(process.pid, 'SIGKILL');
}

const maybeInjectFault = faultPoint;

/**
 * The operations journal. An operation is written with its plan (every file it
 * will create or remove) before any file is touched; each step is recorded as
 * it completes, so recovery knows how far it got.
 */
export class Journal {
  constructor(private readonly catalog: Catalog) {}

  begin<P extends object>(kind: string, vmId: string | null, plan: P): OperationRecord<P> {
    const op = {
      id: newId(),
      vmId,
      kind,
      status: 'running' as const,
      step: 0,
      plan,
      error: null,
      pid: process.pid,
      startedAt: new Date().toISOString(),
      finishedAt: null,
    };
    this.catalog.db
      .prepare('INSERT INTO operations (id, vm_id, kind, status, step, plan, pid, started_at) VALUES (?, ?, ?, ?, 0, ?, ?, ?)')
      .run(op.id, vmId, kind, 'running', JSON.stringify(plan), op.pid, op.startedAt);
    maybeInjectFault(kind, 0);
    return op;
  }

  /** Record step `step` as completed; `change` runs in the same transaction (catalog edits of that step). */
  step(op: OperationRecord<object>, step: number, change?: () => void): void {
    this.catalog.tx(() => {
      change?.();
      this.catalog.db.prepare('UPDATE operations SET step = ? WHERE id = ?').run(step, op.id);
    });
    op.step = step;
    maybeInjectFault(op.kind, step);
  }

  /** Replace the plan (when a step learns what later steps need, e.g. a new file's name). */
  updatePlan<P extends object>(op: OperationRecord<P>, plan: P): void {
    this.catalog.db.prepare('UPDATE operations SET plan = ? WHERE id = ?').run(JSON.stringify(plan), op.id);
    op.plan = plan;
  }

  finish(op: OperationRecord<object>, status: Exclude<OperationStatus, 'running'>, error?: unknown, change?: () => void): void {
    this.catalog.tx(() => {
      change?.();
      this.catalog.db
        .prepare('UPDATE operations SET status = ?, error = ?, finished_at = ? WHERE id = ?')
        .run(status, error === undefined ? null : String(error instanceof Error ? error.message : error), new Date().toISOString(), op.id);
    });
    op.status = status;
  }

  get(id: string): OperationRecord {
    const r = this.catalog.db.prepare('SELECT * FROM operations WHERE id = ?').get(id) as OperationRow | undefined;
    if (!r) throw new VmsnapError('NOT_FOUND', `no operation ${id}`);
    return toOperation(r);
  }

  unfinished(): OperationRecord[] {
    return (this.catalog.db.prepare("SELECT * FROM operations WHERE status IN ('running', 'interrupted') ORDER BY started_at").all() as OperationRow[]).map(
      toOperation,
    );
  }

  recent(vmId?: string, limit = 50): OperationRecord[] {
    const rows = (
      vmId === undefined
        ? this.catalog.db.prepare('SELECT * FROM operations ORDER BY started_at DESC LIMIT ?').all(limit)
        : this.catalog.db.prepare('SELECT * FROM operations WHERE vm_id = ? ORDER BY started_at DESC LIMIT ?').all(vmId, limit)
    ) as OperationRow[];
    return rows.map(toOperation);
  }
}
