import type { PolicyRecord, VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import type { PolicyPatch, PolicyRules, PolicySpec, PolicyView } from '../contract/views.js';
import { VmsnapError } from '../errors.js';
import { DEFAULT_NAME_PATTERN, validateNamePattern } from '../policy/name-pattern.js';
import { describeRules, KEEP_RULES, validateRetentionRules } from '../policy/retention.js';
import { nextRuns, validateSchedule } from '../policy/schedule.js';
import { hostTimeZone, validateTimeZone, zoneOf } from '../policy/timezone.js';
import { now } from '../settings.js';
import { newId } from '../util/ids.js';

/**
 * A VM's policy: set, show, list, remove. The rules themselves (cron, GFS
 * retention, names, zones) are the pure code of src/policy/; this is where
 * they meet the catalog.
 */

/** The clock policies run by: VMSNAP_NOW (ISO) fakes it, as for doctor. */
export function policyClock(): Date {
  return new Date(now());
}

const NO_RULES: PolicyRules = { keepLast: null, keepHourly: null, keepDaily: null, keepWeekly: null, keepMonthly: null, keepYearly: null, maxBytes: null };

/** A count or size from a patch: 0 or null removes the rule; anything else must be a whole number of at least 1. */
function ruleValue(value: number | null, field: keyof PolicyRules): number | null {
  if (value === null || value === 0) return null;
  if (!Number.isSafeInteger(value) || value < 0) {
    const option = field === 'maxBytes' ? '--max-bytes' : (KEEP_RULES.find((r) => r.key === field)?.option ?? field);
    const what = field === 'maxBytes' ? 'a size' : 'a whole number';
    throw new VmsnapError('INVALID_ARGUMENT', `${option} must be ${what}: ${field === 'maxBytes' ? 'above 0 limits the snapshots' : '1 or more keeps that many'}, 0 turns the rule off (got ${String(value)})`, {
      hint: field === 'maxBytes' ? 'e.g. --max-bytes 20G' : `e.g. ${option} 7`,
      details: { field, option, value },
    });
  }
  return value;
}

/** The spec a patch makes of the present one (or of a new policy), checked whole before anything is written. */
export function applyPatch(base: PolicySpec | undefined, patch: PolicyPatch, vmName: string): PolicySpec {
  if (base === undefined && patch.schedule === undefined) {
    throw new VmsnapError('INVALID_ARGUMENT', `VM '${vmName}' has no policy yet: give it a schedule`, {
      hint: `e.g. vmsnap policy set ${vmName} --schedule @daily --keep-daily 7`,
      details: { field: 'schedule', vm: vmName },
    });
  }
  const rules: PolicyRules = { ...(base?.rules ?? NO_RULES) };
  for (const key of Object.keys(NO_RULES) as (keyof PolicyRules)[]) {
    const v = patch[key];
    if (v !== undefined) rules[key] = ruleValue(v, key);
  }
  validateRetentionRules(rules);
  let timeZone = base?.timeZone ?? null;
  if (patch.timeZone !== undefined) timeZone = patch.timeZone === null || patch.timeZone === 'host' ? null : validateTimeZone(patch.timeZone);
  const schedule = validateSchedule(patch.schedule ?? base!.schedule, timeZone ?? hostTimeZone());
  const namePattern = patch.namePattern ?? base?.namePattern ?? DEFAULT_NAME_PATTERN;
  validateNamePattern(namePattern);
  const memory = patch.memory !== undefined ? patch.memory : (base?.memory ?? null);
  return { schedule, timeZone, memory, namePattern, rules };
}

/** A policy as the CLI, the API and the UI show it. */
export function policyView(ctx: Context, vm: VmRecord, p: PolicyRecord, at = policyClock()): PolicyView {
  const zone = zoneOf(p.spec);
  const after = new Date(Math.max(at.getTime(), Date.parse(p.since) - 1));
  return {
    vm: vm.name,
    vmId: vm.id,
    spec: p.spec,
    timeZone: zone,
    rulesText: describeRules(p.spec.rules),
    since: p.since,
    createdAt: p.createdAt,
    updatedAt: p.updatedAt,
    nextRuns: nextRuns(p.spec.schedule, zone, after, 3).map((d) => d.toISOString()),
    lastSlot: p.lastSlot,
    lastRun: p.lastRun,
    snapshots: ctx.catalog.countPolicySnapshots(vm.id, p.id),
  };
}

export function requirePolicy(ctx: Context, vm: VmRecord): PolicyRecord {
  const p = ctx.catalog.findPolicy(vm.id);
  if (!p) {
    throw new VmsnapError('NOT_FOUND', `VM '${vm.name}' has no snapshot policy`, {
      hint: `set one: vmsnap policy set ${vm.name} --schedule @daily --keep-daily 7`,
      details: { vm: vm.name },
    });
  }
  return p;
}

/**
 * Set a VM's policy, or change the one it has (what the patch names; the rest
 * stays). The policy keeps its identity, so it keeps pruning the snapshots it
 * took. A new or changed schedule never fires at once for a slot that came
 * before it: its first snapshot is at its next slot.
 */
export function setPolicy(ctx: Context, vm: VmRecord, patch: PolicyPatch): PolicyView {
  const { catalog } = ctx;
  const at = policyClock();
  const view = catalog.tx(() => {
    const old = catalog.findPolicy(vm.id);
    const spec = applyPatch(old?.spec, patch, vm.name);
    const stamp = at.toISOString();
    const rescheduled = !old || old.spec.schedule !== spec.schedule || zoneOf(old.spec) !== zoneOf(spec);
    const rec: PolicyRecord = {
      id: old?.id ?? newId(),
      vmId: vm.id,
      spec,
      since: rescheduled ? stamp : old.since,
      lastSlot: old?.lastSlot ?? null,
      lastRun: old?.lastRun ?? null,
      createdAt: old?.createdAt ?? stamp,
      updatedAt: stamp,
    };
    catalog.savePolicy(rec);
    return policyView(ctx, vm, rec, at);
  });
  ctx.events.emitEvent({ type: 'snapshots-changed', vm: vm.name, vmId: vm.id });
  return view;
}

/**
 * Remove a VM's policy. Its snapshots stay, as they are: no policy prunes
 * them any more (they count as taken by hand; a policy set later is a new one
 * and leaves them alone).
 */
export function removePolicy(ctx: Context, vm: VmRecord): { vm: string; snapshotsLeft: number } {
  const p = requirePolicy(ctx, vm);
  const left = ctx.catalog.countPolicySnapshots(vm.id, p.id);
  ctx.catalog.tx(() => ctx.catalog.deletePolicy(vm.id));
  ctx.events.emitEvent({ type: 'snapshots-changed', vm: vm.name, vmId: vm.id });
  return { vm: vm.name, snapshotsLeft: left };
}

export function listPolicyViews(ctx: Context): PolicyView[] {
  const at = policyClock();
  return ctx.catalog.listPolicies().map((p) => policyView(ctx, ctx.catalog.getVm(p.vmId), p, at));
}
