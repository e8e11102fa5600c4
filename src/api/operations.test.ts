import { describe, expect, it } from 'vitest';
import type { TaskResults } from '../contract/operations.js';
import { VmsnapError } from '../errors.js';
import { EventHub } from './events.js';
import { OperationTracker } from './operations.js';

/** A task that runs until released. */
function pending<T>() {
  let release!: (v: T) => void;
  const done = new Promise<T>((r) => (release = r));
  return { done, release };
}

const busy = (fn: () => unknown): VmsnapError => {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(VmsnapError);
    expect((e as VmsnapError).code).toBe('BUSY');
    return e as VmsnapError;
  }
  throw new Error('expected BUSY');
};

describe('the operation tracker: what may run beside what', () => {
  const a = { id: 'id-a', name: 'a' };
  const b = { id: 'id-b', name: 'b' };
  const report: TaskResults['verify'] = { ok: true, vm: 'a', layersChecked: 0, snapshotsChecked: 0, fingerprintsVerified: 0, fingerprintsRecorded: 0, problems: [] };

  it('runs one task per VM, a data-dir task alone, and an archive check beside anything', async () => {
    const t = new OperationTracker(new EventHub(), () => {});
    const onA = pending<TaskResults['verify']>();
    const opA = t.start({ kind: 'verify', scope: { vm: a }, title: 'verify a' }, () => onA.done);
    expect(opA).toMatchObject({ kind: 'verify', vm: 'a', vmId: 'id-a', status: 'running' });
    expect(busy(() => t.assertIdle(a)).details).toMatchObject({ vm: 'a', operationId: opA.id });
    t.assertIdle(b);
    // The whole data dir waits for every VM's task; a task that touches nothing the server keeps does not.
    expect(busy(() => t.start({ kind: 'recover', scope: { dataDir: true }, title: 'recover' }, () => Promise.resolve({ operations: [], orphansRemoved: [] }))).message).toMatch(/verify a/);
    const check = t.start({ kind: 'fingerprint', scope: { none: true }, title: 'no scope' }, () => Promise.resolve({ vm: 'a', fingerprinted: 0 }));
    expect(check).toMatchObject({ vm: null, vmId: null });
    onA.release(report);
    await t.settle();

    const all = pending<TaskResults['recover']>();
    const rec = t.start({ kind: 'recover', scope: { dataDir: true }, title: 'recover' }, () => all.done);
    expect(rec).toMatchObject({ vm: null, vmId: null });
    expect(busy(() => t.assertIdle(b)).message).toMatch(/the data dir is busy: recover/);
    busy(() => t.start({ kind: 'import', scope: { newVm: 'c', idOf: (r) => r.id }, title: 'import c' }, () => pending<TaskResults['import']>().done));
    all.release({ operations: [], orphansRemoved: [] });
    await t.settle();
    expect(t.get(rec.id)).toMatchObject({ status: 'succeeded', result: { operations: [] } });
  });

  it('keeps two imports of one name apart, and names the VM an import made once it exists', async () => {
    const t = new OperationTracker(new EventHub(), () => {});
    const imp = pending<TaskResults['import']>();
    const op = t.start({ kind: 'import', scope: { newVm: 'c', idOf: (r) => r.id }, title: 'import c' }, () => imp.done);
    expect(op).toMatchObject({ vm: 'c', vmId: null });
    expect(busy(() => t.start({ kind: 'import', scope: { newVm: 'c', idOf: (r) => r.id }, title: 'import c again' }, () => imp.done)).message).toMatch(/a new VM named 'c' is busy/);
    t.assertIdle(a);
    imp.release({ vm: 'c', id: 'id-c', snapshot: 's', hasMemory: false, vmState: 'off', mac: '', bytes: 0, source: { vm: 'x', snapshot: 's', exportedAt: '', vmsnapVersion: '' }, warnings: [], ms: 0 });
    await t.settle();
    expect(t.get(op.id)).toMatchObject({ status: 'succeeded', vm: 'c', vmId: 'id-c' });
  });

  it('reports progress a task gives by callback, under the task', async () => {
    const hub = new EventHub();
    const seen: unknown[] = [];
    hub.subscribe((e) => seen.push(e.event), () => {});
    const t = new OperationTracker(hub, () => {});
    const op = t.start({ kind: 'fingerprint', scope: { none: true }, title: 'p' }, async (task) => {
      task.progress('reading', 5, 10);
      return { vm: 'a', fingerprinted: 1 };
    });
    await t.settle();
    expect(t.get(op.id)?.progress).toEqual({ what: 'reading', done: 5, total: 10 });
    expect(seen).toContainEqual({ type: 'progress', data: expect.objectContaining({ operationId: op.id, what: 'reading', done: 5, total: 10 }) });
  });
});
