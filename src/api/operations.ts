import { randomBytes } from 'node:crypto';
import type { Task, TaskBase, TaskKind, TaskResults, TaskStatus, VmsnapEvent } from '../contract/operations.js';
import { VmsnapError } from '../errors.js';
import { errorBody } from './errors.js';
import type { EventHub } from './events.js';

/** A long job the API accepted with 202: what GET /api/operations/:id shows (the contract's Task). */
export type Operation = Task;

export interface OperationSpec<K extends TaskKind> {
  /** The library operation (or long read) it runs: the same names as the journal's and the events'. */
  kind: K;
  vm: { id: string; name: string };
  snapshot?: string;
  title: string;
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
  /** VM id → operation id, for the VMs this server is working on. */
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
    const opId = this.busyVms.get(vm.id);
    if (opId === undefined) return;
    const op = this.ops.get(opId)!;
    throw new VmsnapError('BUSY', `VM '${vm.name}' is busy: ${op.title} (operation ${op.id})`, {
      hint: `wait for it to finish: GET /api/operations/${op.id}`,
      details: { vm: vm.name, operationId: op.id, kind: op.kind },
    });
  }

  /** Run `fn` in the background as a task of kind K: its result is that kind's result type. */
  start<K extends TaskKind>(spec: OperationSpec<K>, fn: () => Promise<TaskResults[K]>): Operation {
    this.assertIdle(spec.vm);
    const fields = {
      id: `op-${randomBytes(8).toString('hex')}`,
      kind: spec.kind,
      vm: spec.vm.name,
      vmId: spec.vm.id,
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
    const op = fields as Operation;
    const t0 = performance.now();
    this.ops.set(op.id, op);
    this.busyVms.set(spec.vm.id, op.id);
    this.trim();
    const finish = (patch: Partial<TaskBase> & { result?: TaskResults[K] }): void => {
      Object.assign(op, patch, { finishedAt: new Date().toISOString(), durationMs: Math.round(performance.now() - t0) });
      this.running.delete(op.id);
      this.busyVms.delete(spec.vm.id);
      this.publish(op);
      this.onChange(op);
    };
    // Started on the next tick, so the 202 (and the 'running' event) always goes out first.
    const done = new Promise<void>((resolve) => setImmediate(resolve))
      .then(fn)
      .then(
        (result) => finish({ status: 'succeeded', result }),
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
