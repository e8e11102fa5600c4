import { randomBytes } from 'node:crypto';
import type { Task, TaskBase, TaskKind, TaskResults, TaskStatus, VmsnapEvent } from '../contract/operations.js';
import { VmsnapError } from '../errors.js';
import { errorBody } from './errors.js';
import type { EventHub } from './events.js';

/** A long job the API accepted with 202: what GET /api/operations/:id shows (the contract's Task). */
export type Operation = Task;
/** A task of one kind, its result typed. */
export type TaskOf<K extends TaskKind> = Extract<Task, { kind: K }>;

/** What a task works on, for the per-VM exclusion and for the task's vm/vmId fields. */
export type TaskScope<K extends TaskKind = TaskKind> =
  /** One VM: no other task on it meanwhile. */
  | { vm: { id: string; name: string } }
  /** A VM the task makes (import): no other task making one of that name meanwhile; its id comes from the result. */
  | { newVm: string; idOf: (result: TaskResults[K]) => string }
  /** The whole data dir (recover, verify of every VM): runs alone. */
  | { dataDir: true }
  /** Nothing the server keeps (an uploaded archive's check): excludes nothing. */
  | { none: true };

export interface OperationSpec<K extends TaskKind> {
  /** The library operation (or long read) it runs: the same names as the journal's and the events'. */
  kind: K;
  scope: TaskScope<K>;
  snapshot?: string;
  title: string;
}

/** What a running task's function may tell the tracker. */
export interface TaskHandle {
  /** Progress the library reports by callback rather than by event (reads that journal nothing). */
  progress(what: string, done: number, total: number): void;
}

/** The tracker's busy key of a scope: a VM's id, a new VM's name, everything, or nothing. */
const DATA_DIR = '*';
function busyKey<K extends TaskKind>(scope: TaskScope<K>): string | undefined {
  if ('vm' in scope) return scope.vm.id;
  if ('newVm' in scope) return `new:${scope.newVm}`;
  if ('dataDir' in scope) return DATA_DIR;
  return undefined;
}

/**
 * Runs long library calls in the background and remembers them. It also makes
 * the per-VM exclusion visible at once: the library's lock would make a second
 * call on a busy VM wait and then fail, but this server knows what it is
 * running, so it refuses with BUSY (423) before accepting anything.
 */
export class OperationTracker {
  private readonly ops = new Map<string, Operation>();
  private readonly running = new Map<string, { op: Operation; done: Promise<void>; libraryIds: Set<string> }>();
  /** Busy key (VM id, new VM name, or '*' for the whole data dir) → operation id. */
  private readonly busyVms = new Map<string, string>();

  constructor(
    private readonly hub: EventHub,
    /** Called when an operation starts and when it ends. */
    private readonly onChange: (op: Operation) => void,
    private readonly keepFinished = 500,
  ) {}

  get(id: string): Operation | undefined {
    return this.ops.get(id);
  }

  list(filter: { vm?: string; status?: TaskStatus } = {}): Operation[] {
    return [...this.ops.values()]
      .filter((o) => (filter.vm === undefined || o.vm === filter.vm || o.vmId === filter.vm) && (filter.status === undefined || o.status === filter.status))
      .reverse();
  }

  get runningCount(): number {
    return this.running.size;
  }

  /** Refuse work on a VM this server is already changing (sync endpoints call this too). */
  assertIdle(vm: { id: string; name: string }): void {
    this.assertFree({ vm });
  }

  /** Refuse a task whose scope overlaps a running one's; a data-dir task overlaps everything. */
  private assertFree<K extends TaskKind>(scope: TaskScope<K>): void {
    const label = 'vm' in scope ? `VM '${scope.vm.name}'` : 'newVm' in scope ? `a new VM named '${scope.newVm}'` : 'the data dir';
    const key = busyKey(scope);
    const opId =
      this.busyVms.get(DATA_DIR) ??
      ('dataDir' in scope ? this.busyVms.values().next().value : undefined) ??
      (key === undefined ? undefined : this.busyVms.get(key));
    if (opId === undefined) return;
    const op = this.ops.get(opId)!;
    throw new VmsnapError('BUSY', `${op.vm === null ? 'the data dir' : label} is busy: ${op.title} (operation ${op.id})`, {
      hint: `wait for it to finish: GET /api/operations/${op.id}`,
      details: { ...('vm' in scope ? { vm: scope.vm.name } : 'newVm' in scope ? { vm: scope.newVm } : {}), operationId: op.id, kind: op.kind },
    });
  }

  /** Run `fn` in the background as a task of kind K: its result is that kind's result type. */
  start<K extends TaskKind>(spec: OperationSpec<K>, fn: (task: TaskHandle) => Promise<TaskResults[K]>): TaskOf<K> {
    const { scope } = spec;
    this.assertFree(scope);
    const key = busyKey(scope);
    const fields = {
      id: `op-${randomBytes(8).toString('hex')}`,
      kind: spec.kind,
      vm: 'vm' in scope ? scope.vm.name : 'newVm' in scope ? scope.newVm : null,
      vmId: 'vm' in scope ? scope.vm.id : null,
      snapshot: spec.snapshot ?? null,
      title: spec.title,
      status: 'running',
      progress: null,
      result: null,
      error: null,
      createdAt: new Date().toISOString(),
      finishedAt: null,
      durationMs: null,
    };
    // The compiler cannot see that a generic K picks one member of the Task union; fn's type ties kind and result.
    const op = fields as Operation as TaskOf<K>;
    const t0 = performance.now();
    this.ops.set(op.id, op);
    if (key !== undefined) this.busyVms.set(key, op.id);
    this.trim();
    const finish = (patch: Partial<TaskBase> & { result?: TaskResults[K] }): void => {
      Object.assign(op, patch, { finishedAt: new Date().toISOString(), durationMs: Math.round(performance.now() - t0) });
      this.running.delete(op.id);
      if (key !== undefined) this.busyVms.delete(key);
      this.publish(op);
      this.onChange(op);
    };
    const handle: TaskHandle = {
      progress: (what, done, total) => {
        op.progress = { what, done, total };
        this.hub.publish({ type: 'progress', data: { operationId: op.id, libraryOperationId: op.id, vm: op.vm ?? '', what, done, total } });
      },
    };
    // Started on the next tick, so the 202 (and the 'running' event) always goes out first.
    const done = new Promise<void>((resolve) => setImmediate(resolve))
      .then(() => fn(handle))
      .then(
        (result) => finish({ status: 'succeeded', result, ...('newVm' in scope ? { vmId: scope.idOf(result) } : {}) }),
        (e: unknown) => finish({ status: 'failed', error: errorBody(e).body }),
      );
    this.running.set(op.id, { op, done, libraryIds: new Set() });
    this.publish(op);
    this.onChange(op);
    return op;
  }

  /** Tie the library's events to the operation that caused them (one per VM at a time). */
  onLibraryEvent(e: VmsnapEvent): void {
    if (e.type === 'operation') {
      const entry = this.findRunning(e.operationId, e.vm);
      if (entry && e.status === 'started') entry.libraryIds.add(e.operationId);
      this.hub.publish({ type: 'journal', data: { libraryOperationId: e.operationId, vm: e.vm, kind: e.kind, status: e.status, ...(e.error ? { error: e.error } : {}) } });
    } else if (e.type === 'progress') {
      const entry = this.findRunning(e.operationId, e.vm);
      if (entry) {
        entry.libraryIds.add(e.operationId);
        entry.op.progress = { what: e.what, done: e.done, total: e.total };
      }
      this.hub.publish({
        type: 'progress',
        data: { operationId: entry?.op.id ?? null, libraryOperationId: e.operationId, vm: e.vm, what: e.what, done: e.done, total: e.total },
      });
    }
  }

  private findRunning(libraryId: string, vmName: string) {
    for (const entry of this.running.values()) if (entry.libraryIds.has(libraryId)) return entry;
    for (const entry of this.running.values()) if (entry.op.vm === vmName) return entry;
    return undefined;
  }

  private publish(op: Operation): void {
    this.hub.publish({ type: 'operation', data: { operation: { ...op } } });
  }

  /** Forget the oldest finished operations beyond the limit. */
  private trim(): void {
    if (this.ops.size <= this.keepFinished) return;
    for (const [id, op] of this.ops) {
      if (this.ops.size <= this.keepFinished) break;
      if (op.status !== 'running') this.ops.delete(id);
    }
  }

  /** Resolves when every running operation has finished (graceful shutdown). */
  async settle(): Promise<void> {
    while (this.running.size > 0) await Promise.all([...this.running.values()].map((r) => r.done));
  }
}
