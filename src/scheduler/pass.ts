import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import type { PolicyRecord, SnapshotRecord, VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import type { ErrorSummary, PolicyRunRecord, PolicyRunResult, PruneResult } from '../contract/views.js';
import { toVmsnapError } from '../errors.js';
import { defineOperation } from '../operations/define.js';
import type { Op } from '../operations/op.js';
import { inFlight } from '../operations/recovery.js';
import { runOperation, withVm } from '../operations/runner.js';
import { expandNamePattern } from '../policy/name-pattern.js';
import { dueSlot, nextRun, type DueSlot } from '../policy/schedule.js';
import { takeSnapshotLocked } from '../snapshot/create.js';
import { newId } from '../util/ids.js';
import { zoneOf } from '../policy/timezone.js';
import { policyClock, requirePolicy } from './policies.js';
import { pruneLocked } from './prune.js';

/**
 * A policy pass for one VM: take the snapshot its schedule has due (at most
 * one: a host that was off catches up once), then prune. The slot is claimed
 * in the catalog by its unique key before the snapshot is taken, so two
 * schedulers (two serves, a serve and a timer) never take it twice.
 */

const PolicyRunPlan = z.object({
  policyId: z.string(),
  trigger: z.enum(['schedule', 'now']),
  /** The slot (ISO, UTC) it takes; null with --now. */
  slot: z.string().nullable(),
  missed: z.number().int().nonnegative(),
  /** The snapshot it takes: its id is chosen before, so recovery can tell whether it was taken. */
  snapshotId: z.string(),
  name: z.string(),
});
type PolicyRunPlan = z.infer<typeof PolicyRunPlan>;

/** The slot was taken: claimed as such, and no later pass takes it again. Joins the transaction of a journal step. */
function markTaken(ctx: Context, vmId: string, plan: PolicyRunPlan): void {
  if (plan.slot === null) return;
  ctx.catalog.finishClaim(vmId, plan.slot, 'taken', plan.snapshotId);
  ctx.catalog.advancePolicySlot(plan.policyId, plan.slot);
}

function summary(e: unknown): ErrorSummary {
  const err = toVmsnapError(e);
  return { code: err.code, message: err.message, ...(err.hint ? { hint: err.hint } : {}) };
}

function emitRun(ctx: Context, vm: VmRecord, status: PolicyRunResult['status'], record: PolicyRunRecord | null): void {
  ctx.events.emitEvent({ type: 'policy', vm: vm.name, vmId: vm.id, status, record });
}

/**
 * Step 1: the snapshot is taken (inside this operation) and its slot marked
 * taken; step 2: the prune (an operation inside this one) is done. Killed
 * before the snapshot was taken, recovery gives the slot back (the next pass
 * takes it); after, it prunes: it only rolls forward from there.
 */
export const policyRun = defineOperation({
  kind: 'policy-run',
  plan: PolicyRunPlan,
  steps: 2,
  faults: [],
  onFailure: 'leave',
  files: () => [],
  async recover(ctx, op, vm) {
    const p = op.plan;
    if (!vm) {
      op.finish('failed', 'VM gone');
      return { outcome: 'rolled_forward', note: 'VM gone' };
    }
    const record = (status: PolicyRunRecord['status'], deleted: string[], error: ErrorSummary | null): PolicyRunRecord => ({
      at: new Date().toISOString(),
      trigger: 'recovery',
      status,
      slot: p.slot,
      missed: p.missed,
      snapshot: status === 'ok' ? p.name : null,
      deleted,
      error,
    });
    const snap = ctx.catalog.findSnapshotById(p.snapshotId);
    if (!snap || snap.status !== 'ready') {
      const error: ErrorSummary = {
        code: 'INTERRUPTED',
        message: `the policy pass was interrupted before its snapshot was taken${p.slot ? `; slot ${p.slot} is taken by the next pass` : ''}`,
      };
      op.finish('rolled_back', error.message, () => {
        if (p.slot !== null) ctx.catalog.releaseClaim(vm.id, p.slot);
        ctx.catalog.recordPolicyRun(p.policyId, record('failed', [], error));
      });
      emitRun(ctx, vm, 'failed', record('failed', [], error));
      return { outcome: 'rolled_back', note: 'no snapshot was taken; the next pass takes the slot' };
    }
    if (op.step < 1) op.done(1, () => markTaken(ctx, vm.id, p));
    let pruned: PruneResult | undefined;
    if (op.step < 2) {
      pruned = await pruneLocked(ctx, vm, { parent: op });
      op.done(2);
    }
    const done = record('ok', pruned?.deleted.map((d) => d.name) ?? [], null);
    op.finish('done', undefined, () => ctx.catalog.recordPolicyRun(p.policyId, done));
    emitRun(ctx, vm, 'ok', done);
    return { outcome: 'rolled_forward', note: pruned ? `took '${p.name}', then pruned` : `took '${p.name}'` };
  },
});

export interface PassOptions {
  /** Take a policy snapshot at once, whatever the schedule (`policy run --now`). */
  now?: boolean;
  onProgress?: (done: number, total: number, what: string) => void;
}

/** The body of a pass once the VM's lock is held: take the snapshot (inside the operation), prune, record. */
async function takeAndPrune(
  ctx: Context,
  vm: VmRecord,
  policy: PolicyRecord,
  due: DueSlot | null,
  at: Date,
  opts: PassOptions,
  /** Set once a failure is recorded with the policy, so the caller does not record it twice. */
  outcome: { recorded: boolean },
): Promise<PolicyRunResult> {
  const { catalog } = ctx;
  const spec = policy.spec;
  const zone = zoneOf(spec);
  const trigger = due ? 'schedule' : 'now';
  const name = expandNamePattern(spec.namePattern, due?.at ?? at, zone, (n) => catalog.findSnapshot(vm.id, n) !== undefined);
  const plan: PolicyRunPlan = { policyId: policy.id, trigger, slot: due?.slot ?? null, missed: due?.missed ?? 0, snapshotId: newId(), name };
  const record = (status: PolicyRunRecord['status'], deleted: string[], error: ErrorSummary | null, snapshot: string | null): PolicyRunRecord => ({
    at: at.toISOString(),
    trigger,
    status,
    slot: plan.slot,
    missed: plan.missed,
    snapshot,
    deleted,
    error,
  });
  return runOperation(ctx, policyRun, { vm, plan }, async (op: Op<PolicyRunPlan, never>) => {
    let taken: SnapshotRecord;
    try {
      taken = await takeSnapshotLocked(
        ctx,
        vm,
        name,
        {
          // Memory when the VM runs, unless the policy says no (a policy never fails for want of a running VM).
          ...(spec.memory === false ? { memory: false } : {}),
          description: plan.slot ? `taken by the policy for ${plan.slot}` : 'taken by the policy (policy run --now)',
        },
        { id: plan.snapshotId, policy: { id: policy.id, slot: plan.slot }, parent: op },
      );
    } catch (e) {
      // Not taken (the snapshot undid itself): the slot is not tried again, and the failure is recorded.
      const failed = record('failed', [], summary(e), null);
      op.finish('rolled_back', e, () => {
        if (plan.slot !== null) {
          catalog.finishClaim(vm.id, plan.slot, 'failed', null, failed.error!.message);
          catalog.advancePolicySlot(policy.id, plan.slot);
        }
        catalog.recordPolicyRun(policy.id, failed);
      });
      emitRun(ctx, vm, 'failed', failed);
      outcome.recorded = true;
      throw e;
    }
    op.done(1, () => markTaken(ctx, vm.id, plan));
    let pruned: PruneResult;
    try {
      // Judged as of after the snapshot, so the snapshot just taken counts (and is never "in the future").
      const after = new Date(Math.max(policyClock().getTime(), Date.parse(taken.createdAt)));
      pruned = await pruneLocked(ctx, catalog.getVm(vm.id), { at: after, parent: op, ...(opts.onProgress ? { onProgress: opts.onProgress } : {}) });
    } catch (e) {
      // The snapshot stands; the prune is left to its own recovery and the next pass.
      const failed = record('failed', [], summary(e), name);
      op.finish('done', undefined, () => catalog.recordPolicyRun(policy.id, failed));
      emitRun(ctx, vm, 'failed', failed);
      outcome.recorded = true;
      throw e;
    }
    op.done(2);
    const ok = record('ok', pruned.deleted.map((d) => d.name), null, name);
    op.finish('done', undefined, () => catalog.recordPolicyRun(policy.id, ok));
    emitRun(ctx, vm, 'ok', ok);
    return {
      vm: vm.name,
      status: 'ok',
      trigger,
      slot: plan.slot,
      missed: plan.missed,
      snapshot: name,
      note: null,
      prune: pruned,
      nextRun: nextRun(spec.schedule, zone, at)?.toISOString() ?? null,
      error: null,
    };
  });
}

/**
 * One pass for one VM. With a policy: take the snapshot of the latest slot
 * due (or, with `now`, one at once), then prune. With no slot due, or no
 * policy, only snapshots whose expiry has passed are pruned. A VM that is
 * busy gives 'busy' (its slot is given back, for the next pass); a failure
 * is recorded with the policy, sent as an event and thrown.
 */
export async function runPolicyPass(ctx: Context, vm0: VmRecord, opts: PassOptions = {}): Promise<PolicyRunResult> {
  const { catalog } = ctx;
  const at = policyClock();
  const policy = opts.now ? requirePolicy(ctx, vm0) : catalog.findPolicy(vm0.id);
  const nextAt = (p: PolicyRecord | undefined) => (p ? (nextRun(p.spec.schedule, zoneOf(p.spec), at)?.toISOString() ?? null) : null);
  const base = (trigger: PolicyRunResult['trigger'], due: DueSlot | null): PolicyRunResult => ({
    vm: vm0.name,
    status: 'ok',
    trigger,
    slot: due?.slot ?? null,
    missed: due?.missed ?? 0,
    snapshot: null,
    note: null,
    prune: null,
    nextRun: nextAt(policy),
    error: null,
  });
  const due = policy && !opts.now ? dueSlot(policy.spec.schedule, zoneOf(policy.spec), policy.lastSlot, at, new Date(policy.since)) : null;
  const takes = policy !== undefined && (opts.now || due !== null);

  if (!takes) {
    // Nothing to take: prune only when something has expired, or to finish what a killed pass left.
    const result = { ...base('schedule', null), note: policy ? 'no slot due' : 'no policy' };
    if (!catalog.hasExpiredSnapshots(vm0.id, at) && !leftBehind(ctx, vm0)) return result;
    try {
      result.prune = await withVm(ctx, vm0, 'prune (expired snapshots)', () => pruneLocked(ctx, catalog.getVm(vm0.id), { at }));
    } catch (e) {
      if (toVmsnapError(e).code !== 'BUSY') throw e;
      emitRun(ctx, vm0, 'busy', null);
      return { ...result, status: 'busy', note: 'the VM was busy: the next pass tries again', error: summary(e) };
    }
    return result;
  }

  const holder = randomUUID();
  const outcome = { recorded: false };
  if (due) {
    const other = catalog.claimSlot(vm0.id, due.slot, policy.id, holder);
    if (other) {
      const by = other.state === 'claimed' ? `claimed by another scheduler (pid ${other.pid})` : `already ${other.state}`;
      return { ...base('schedule', due), note: `slot ${due.slot} ${by}` };
    }
  }
  try {
    return await withVm(ctx, vm0, due ? `policy run (slot ${due.slot})` : 'policy run --now', async () => {
      const vm = catalog.getVm(vm0.id);
      // Recovery (just now, under the lock) may have settled the slot, or the policy changed meanwhile.
      const current = catalog.findPolicy(vm.id);
      if (!current || current.id !== policy.id) return { ...base(due ? 'schedule' : 'now', due), note: 'the policy was removed meanwhile' };
      if (due) {
        const claim = catalog.findClaim(vm.id, due.slot);
        if (!claim || claim.holder !== holder || claim.state !== 'claimed') return { ...base('schedule', due), note: `slot ${due.slot} was settled meanwhile` };
      }
      return takeAndPrune(ctx, vm, current, due, at, opts, outcome);
    });
  } catch (e) {
    const err = toVmsnapError(e);
    if (err.code === 'BUSY') {
      emitRun(ctx, vm0, 'busy', null);
      return { ...base(due ? 'schedule' : 'now', due), status: 'busy', note: 'the VM was busy: the next pass tries again', error: summary(err) };
    }
    if (!outcome.recorded) {
      // Failed before its snapshot was tried (e.g. recovering what an earlier process left, or no free name):
      // recorded all the same, and, like any failed slot, not tried again.
      const failed: PolicyRunRecord = { at: at.toISOString(), trigger: due ? 'schedule' : 'now', status: 'failed', slot: due?.slot ?? null, missed: due?.missed ?? 0, snapshot: null, deleted: [], error: summary(err) };
      catalog.tx(() => {
        if (due && catalog.findClaim(vm0.id, due.slot)?.holder === holder) {
          catalog.finishClaim(vm0.id, due.slot, 'failed', null, err.message);
          catalog.advancePolicySlot(policy.id, due.slot);
        }
        catalog.recordPolicyRun(policy.id, failed);
      });
      emitRun(ctx, vm0, 'failed', failed);
    }
    throw e;
  } finally {
    // A claim not carried to 'taken' or 'failed' (busy, settled, an error before the snapshot) goes back for the next pass.
    if (due) catalog.releaseClaim(vm0.id, due.slot, holder);
  }
}

/** An operation a killed process left unfinished on the VM: the next pass finishes it (taking the lock recovers it). */
function leftBehind(ctx: Context, vm: VmRecord): boolean {
  return ctx.journal.unfinished().some((op) => op.vmId === vm.id && !inFlight(op));
}

/** Whether a VM has work for a pass now: a slot due, a snapshot expired, or a pass to finish. Cheap: no lock, no QEMU. */
export function passDue(ctx: Context, vm: VmRecord, at = policyClock()): boolean {
  const p = ctx.catalog.findPolicy(vm.id);
  if (p && dueSlot(p.spec.schedule, zoneOf(p.spec), p.lastSlot, at, new Date(p.since)) !== null) return true;
  return ctx.catalog.hasExpiredSnapshots(vm.id, at) || (p !== undefined && leftBehind(ctx, vm));
}

/** `policy run` with no VM: a pass for every VM that has a policy or expiring snapshots. One VM's failure does not stop the others. */
export async function runAllPolicies(ctx: Context, opts: PassOptions = {}): Promise<PolicyRunResult[]> {
  const out: PolicyRunResult[] = [];
  for (const vm of ctx.catalog.listVms()) {
    const policy = ctx.catalog.findPolicy(vm.id);
    if (!policy && !ctx.catalog.hasExpiredSnapshots(vm.id, policyClock())) continue;
    try {
      out.push(await runPolicyPass(ctx, vm, policy ? opts : { ...opts, now: false }));
    } catch (e) {
      out.push({
        vm: vm.name,
        status: 'failed',
        trigger: opts.now ? 'now' : 'schedule',
        slot: null,
        missed: 0,
        snapshot: null,
        note: null,
        prune: null,
        nextRun: null,
        error: summary(e),
      });
    }
  }
  return out;
}
