import { withVmLock } from '../catalog/lock.js';
import type { Context } from '../context.js';
import type { OperationKind } from '../contract/operations.js';
import { VmsnapError } from '../errors.js';
import type { OperationDef } from './define.js';
import { injectFault, Op, runningHere } from './op.js';
import { recoverVmOperations } from './recovery.js';

export interface RunSpec<P> {
  /** The VM it acts on (whose lock the caller holds), or the one it creates. */
  vm: { id: string; name: string };
  plan: P;
  /** The operation this one runs inside of (each delete of a delete --all). */
  parent?: { id: string };
}

/**
 * Run an operation: journal it with its plan before anything is touched, emit
 * its started/done/failed events, and on failure either roll it back at once
 * with its own recovery (the code a crash gets) or leave it interrupted for
 * recovery to carry forward. The body moves it on with op.done(step) and may
 * finish it itself (with a catalog change in the same transaction).
 */
export async function runOperation<K extends OperationKind, P, F extends string, R>(
  ctx: Context,
  def: OperationDef<K, P, F>,
  spec: RunSpec<P>,
  body: (op: Op<P, F>) => Promise<R>,
): Promise<R> {
  const checked = def.plan.safeParse(spec.plan);
  if (!checked.success) {
    throw new VmsnapError('INTERNAL', `${def.kind}: its plan does not match its schema: ${checked.error.issues[0]?.message ?? ''}`);
  }
  // Writing into a damaged catalog spreads the damage (SQLite may notice only later, or never): look first.
  if (!spec.parent) ctx.catalog.assertSound();
  const rec = ctx.journal.begin(def.kind, spec.vm.id, checked.data, spec.parent?.id ?? null);
  const op = new Op<P, F>(ctx, rec, def.kind, checked.data, spec.vm.name);
  runningHere.add(op.id);
  injectFault(def.kind, 0);
  const emit = (status: 'started' | 'done' | 'failed', error?: unknown): void =>
    ctx.events.emitEvent({
      type: 'operation',
      operationId: op.id,
      vm: spec.vm.name,
      kind: def.kind,
      status,
      ...(error === undefined ? {} : { error: error instanceof Error ? error.message : String(error) }),
    });
  emit('started');
  try {
    const result = await body(op);
    if (!op.finished) op.finish('done');
    emit('done');
    return result;
  } catch (e) {
    if (!op.finished) {
      op.interrupt(e);
      if (def.onFailure === 'rollback') {
        try {
          await def.recover(ctx, op, ctx.catalog.findVm(spec.vm.id));
        } catch (undo) {
          emit('failed', e);
          const cause = e instanceof VmsnapError ? e : undefined;
          throw new VmsnapError(cause?.code ?? 'INTERNAL', `${e instanceof Error ? e.message : String(e)}; undoing it failed too: ${undo instanceof Error ? undo.message : String(undo)}`, {
            hint: "nothing was removed: the operation is left unfinished; fix the cause (e.g. free disk space), then run 'vmsnap recover'",
            details: { operation: op.id, kind: def.kind },
            cause: e,
          });
        }
      }
    }
    emit('failed', e);
    throw e;
  } finally {
    runningHere.delete(op.id);
    // The catalog changed: a backup when the last is old enough (an inner operation leaves it to its parent).
    if (!spec.parent) await ctx.backups.maybe();
  }
}

/** Hold a VM's lock for an action, first finishing what an earlier process left unfinished on it. */
export function withVm<T>(ctx: Context, vm: { id: string; name: string }, purpose: string, fn: () => Promise<T>): Promise<T> {
  return withVmLock(ctx.catalog, vm, purpose, async () => {
    await recoverVmOperations(ctx, vm.id);
    return fn();
  });
}
