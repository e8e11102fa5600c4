import { z } from 'zod';
import type { PolicyRecord, SnapshotRecord, VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import type { PruneDeleted, PruneKept, PruneResult } from '../contract/views.js';
import { VmsnapError } from '../errors.js';
import { mappedStateFiles, ramImageExtents, reclaimable } from '../health/storage.js';
import { defineOperation } from '../operations/define.js';
import type { Op } from '../operations/op.js';
import { rollForward } from '../operations/recovery.js';
import { runOperation, withVm } from '../operations/runner.js';
import { describeRules, planRetention, type RetentionPlan, type RetentionSnapshot } from '../policy/retention.js';
import { hostTimeZone, zoneOf } from '../policy/timezone.js';
import { directClones } from '../snapshot/clone-detach.js';
import { checkSpaceForMerge, deleteLocked } from '../snapshot/delete.js';
import { isProtectedRefusal } from '../snapshot/protect.js';
import { vmDiskUsage } from '../vm/info.js';
import { policyClock } from './policies.js';

/**
 * Prune: delete what a VM's policy no longer keeps and what has expired, by
 * the rules of src/policy/retention.ts, through the one delete path (each
 * snapshot delete runs inside the prune, so protection, consolidation and the
 * journal are the delete's own).
 */

const Deletion = z.object({
  id: z.string(),
  name: z.string(),
  cause: z.enum(['expired', 'retention', 'max-bytes']),
  reason: z.string(),
});
type Deletion = z.infer<typeof Deletion>;
const PrunePlan = z.object({ deletes: z.array(Deletion) });
type PrunePlan = z.infer<typeof PrunePlan>;

/**
 * A prune: the snapshots to delete, oldest first, journaled with why before
 * the first goes; one snapshot delete each, run inside it. Killed half way,
 * recovery finishes the delete under way and then the rest (it only rolls
 * forward); one protected meanwhile is left alone.
 */
export const prune = defineOperation({
  kind: 'prune',
  plan: PrunePlan,
  steps: 0,
  /** After each snapshot deleted. */
  faults: ['deleted'],
  onFailure: 'leave',
  files: () => [],
  recover: (ctx, op, vm) => rollForward(op, vm, (v) => deletePlanned(ctx, v, op)),
});

interface Decided {
  plan: RetentionPlan;
  rules: string;
  timeZone: string;
  byId: Map<string, SnapshotRecord>;
}

/**
 * What the rules decide now. Sizes (what deleting each would free, as `vmsnap
 * df` shows) are measured only when they matter: for --max-bytes and for a dry
 * run's report; they take a `qemu-img map` of each snapshot's layers.
 */
async function decide(ctx: Context, vm: VmRecord, policy: PolicyRecord | undefined, at: Date, withBytes: boolean): Promise<Decided> {
  const snaps = ctx.catalog.listSnapshots(vm.id).filter((s) => s.status === 'ready');
  const rules = policy?.spec.rules ?? {};
  const measure = withBytes || policy?.spec.rules.maxBytes != null;
  const items: RetentionSnapshot[] = [];
  // What a delete frees now (a RAM image a running VM maps is freed only when it stops).
  const mapped = measure ? mappedStateFiles(ctx) : [];
  const ramExtents = measure ? await ramImageExtents(ctx) : undefined;
  for (const s of snaps) {
    items.push({
      id: s.id,
      name: s.name,
      createdAt: s.createdAt,
      bytes: measure ? (await reclaimable(ctx, s, mapped, ramExtents)).bytes : null,
      owner: policy !== undefined && s.policyId === policy.id ? 'policy' : 'manual',
      protected: s.protected,
      expiresAt: s.expiresAt,
    });
  }
  const timeZone = policy ? zoneOf(policy.spec) : hostTimeZone();
  return {
    plan: planRetention(items, rules, { now: at, timeZone }),
    rules: policy ? describeRules(policy.spec.rules) : 'no policy: only expired snapshots are deleted',
    timeZone,
    byId: new Map(snaps.map((s) => [s.id, s])),
  };
}

/** Why a snapshot the rules would delete cannot go now; undefined when it can. */
function blocker(ctx: Context, s: SnapshotRecord): string | undefined {
  if (s.protected) return 'protected';
  const clones = directClones(ctx, s);
  if (clones.length > 0) return `linked clones build on it (${clones.map((c) => c.name).join(', ')}): delete it with --detach-clones`;
  try {
    checkSpaceForMerge(ctx, s);
  } catch (e) {
    if (e instanceof VmsnapError && e.code === 'NO_SPACE') return e.message;
    throw e;
  }
  return undefined;
}

function keptOf(plan: RetentionPlan): PruneKept[] {
  return plan.keep.map((k) => ({ id: k.id, name: k.name, createdAt: k.createdAt, reasons: k.reasons }));
}

/** What a prune would delete now and why, with what each would free (an estimate). Reads only: takes no lock. */
export async function prunePlan(ctx: Context, vm: VmRecord, at = policyClock()): Promise<PruneResult> {
  const d = await decide(ctx, vm, ctx.catalog.findPolicy(vm.id), at, true);
  const deleted: PruneDeleted[] = [];
  const skipped: PruneResult['skipped'] = [];
  for (const r of [...d.plan.remove].reverse()) {
    const why = blocker(ctx, d.byId.get(r.id)!);
    if (why !== undefined) skipped.push({ name: r.name, reason: why });
    else deleted.push({ id: r.id, name: r.name, createdAt: r.createdAt, cause: r.cause, reason: r.reason, bytes: r.bytes });
  }
  return {
    vm: vm.name,
    dryRun: true,
    rules: d.rules,
    timeZone: d.timeZone,
    kept: keptOf(d.plan),
    deleted,
    skipped,
    freedBytes: deleted.reduce((a, x) => a + x.bytes, 0),
    warnings: d.plan.warnings,
  };
}

/** Carry out a prune's plan from wherever it stopped: each snapshot still there is deleted inside it, oldest first. */
async function deletePlanned(
  ctx: Context,
  vm: VmRecord,
  op: Op<PrunePlan, string>,
  onProgress?: (done: number, total: number, what: string) => void,
): Promise<{ deleted: PruneDeleted[]; skipped: PruneResult['skipped'] }> {
  const deleted: PruneDeleted[] = [];
  const skipped: PruneResult['skipped'] = [];
  for (const d of op.plan.deletes) {
    const s = ctx.catalog.findSnapshotById(d.id);
    if (!s || s.status !== 'ready') continue;
    // Protected since the prune was planned (protect takes no lock): left alone.
    if (s.protected) {
      skipped.push({ name: s.name, reason: 'protected' });
      continue;
    }
    const before = vmDiskUsage(ctx, vm.id);
    try {
      await deleteLocked(ctx, ctx.catalog.getVm(vm.id), s, onProgress ? { onProgress } : {}, op);
    } catch (e) {
      if (!isProtectedRefusal(e)) throw e;
      skipped.push({ name: s.name, reason: 'protected' });
      continue;
    }
    deleted.push({ ...d, createdAt: s.createdAt, bytes: Math.max(0, before - vmDiskUsage(ctx, vm.id)) });
    op.fault('deleted');
  }
  return { deleted, skipped };
}

export interface PruneOptions {
  at?: Date;
  /** The policy pass this prune runs inside of. */
  parent?: { id: string };
  onProgress?: (done: number, total: number, what: string) => void;
}

/**
 * Prune a VM whose lock the caller holds: decide, journal the deletions, and
 * delete. Nothing to delete journals nothing.
 */
export async function pruneLocked(ctx: Context, vm: VmRecord, opts: PruneOptions = {}): Promise<PruneResult> {
  const d = await decide(ctx, vm, ctx.catalog.findPolicy(vm.id), opts.at ?? policyClock(), false);
  const deletes: Deletion[] = [];
  const skipped: PruneResult['skipped'] = [];
  for (const r of [...d.plan.remove].reverse()) {
    const why = blocker(ctx, d.byId.get(r.id)!);
    if (why !== undefined) skipped.push({ name: r.name, reason: why });
    else deletes.push({ id: r.id, name: r.name, cause: r.cause, reason: r.reason });
  }
  const result: PruneResult = {
    vm: vm.name,
    dryRun: false,
    rules: d.rules,
    timeZone: d.timeZone,
    kept: keptOf(d.plan),
    deleted: [],
    skipped,
    freedBytes: 0,
    warnings: d.plan.warnings,
  };
  if (deletes.length === 0) return result;
  const before = vmDiskUsage(ctx, vm.id);
  const done = await runOperation(ctx, prune, { vm, plan: { deletes }, ...(opts.parent ? { parent: opts.parent } : {}) }, (op) => deletePlanned(ctx, vm, op, opts.onProgress));
  result.deleted = done.deleted;
  result.skipped.push(...done.skipped);
  result.freedBytes = Math.max(0, before - vmDiskUsage(ctx, vm.id));
  return result;
}

/** `vmsnap prune VM`: under the VM's lock, finishing first what an earlier process left. */
export function pruneVm(ctx: Context, vm: VmRecord, opts: PruneOptions = {}): Promise<PruneResult> {
  return withVm(ctx, vm, 'prune', () => pruneLocked(ctx, ctx.catalog.getVm(vm.id), opts));
}
