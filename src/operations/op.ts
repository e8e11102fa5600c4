import type { JournalRecord, OperationStatus } from '../catalog/journal.js';
import type { Context } from '../context.js';
import type { OperationKind } from '../contract/operations.js';

/**
 * Test-only fault injection: VMSNAP_FAULT="kind:POINT" makes the process die
 * (SIGKILL, like kill -9) at that point of an operation of that kind: a number
 * is the boundary right after that journal step was recorded, a name one of
 * the operation's named points in between (e.g. snapshot-create:switched).
 * The fault-injection contract test proves recovery from every one.
 */
export function injectFault(kind: string, point: string | number): void {
  const fault = process.env.VMSNAP_FAULT;
  if (!fault) return;
  const i = fault.lastIndexOf(':');
  if (fault.slice(0, i) === kind && fault.slice(i + 1) === String(point)) process.kill(process.pid, 'SIGKILL');
}

/** Operations this process is carrying out now: recovery (by another part of the same process) leaves them alone. */
export const runningHere = new Set<string>();

/**
 * A journaled operation while it runs or while recovery finishes it: the plan
 * (parsed), how far it got, and the only ways to move it on — each journal
 * step is a fault point, and progress goes out as events.
 */
export class Op<P, F extends string = string> {
  readonly id: string;
  readonly kind: OperationKind;
  readonly vmId: string | null;
  readonly parentId: string | null;
  plan: P;
  step: number;
  status: OperationStatus;
  /** Why it failed, if it did (kept in the journal). */
  error: string | null;

  constructor(
    private readonly ctx: Context,
    rec: JournalRecord,
    kind: OperationKind,
    plan: P,
    /** The VM's name, for events. */
    readonly vmName: string,
  ) {
    this.id = rec.id;
    this.kind = kind;
    this.vmId = rec.vmId;
    this.parentId = rec.parentId;
    this.plan = plan;
    this.step = rec.step;
    this.status = rec.status;
    this.error = rec.error;
  }

  get finished(): boolean {
    return this.status !== 'running' && this.status !== 'interrupted';
  }

  /** Step `n` is done; `change` (its catalog edits) commits in the same transaction. A fault point. */
  done(n: number, change?: () => void): void {
    this.ctx.journal.step(this.id, n, change);
    this.step = n;
    injectFault(this.kind, n);
  }

  /** Write the plan as it is now (a step learned what later ones need); joins an open transaction. */
  savePlan(): void {
    this.ctx.journal.writePlan(this.id, this.plan);
  }

  /** A named fault point of this operation. */
  fault(point: F): void {
    injectFault(this.kind, point);
  }

  progress(what: string, done: number, total: number): void {
    this.ctx.events.emitEvent({ type: 'progress', operationId: this.id, vm: this.vmName, what, done, total });
  }

  /** End it: done (as after), rolled_back (as before) or failed; `change` commits with it. */
  finish(status: Exclude<OperationStatus, 'running' | 'interrupted'>, error?: unknown, change?: () => void): void {
    this.ctx.journal.finish(this.id, status, error ?? (status === 'done' ? undefined : this.error ?? undefined), change);
    this.status = status;
  }

  /** Failed half way: left unfinished for recovery, with the reason. Never throws (the disk may be full). */
  interrupt(error: unknown): void {
    this.error = String(error instanceof Error ? error.message : error);
    try {
      this.ctx.journal.markInterrupted(this.id, error);
      this.status = 'interrupted';
    } catch {
      // The journal cannot be written (a full disk): the row stays 'running' and recovery still finds it.
    }
  }
}
