// Retention: which of a VM's snapshots a policy run (or `vmsnap prune`) keeps,
// which it deletes, and why. Pure: no catalog, no clock, no QEMU; the caller
// passes the VM's snapshots, the policy's rules, the time and the zone.
//
// The rules, in the order they are applied (the README's Policies section says the
// same for users):
//  1. Protected snapshots are kept, always, whoever took them and whatever their
//     expiry. They take no GFS slot.
//  2. A snapshot whose expiry has passed is deleted ("expired ...").
//  3. Manual snapshots (not taken by this policy) are kept: no rule of the
//     policy applies to them and they take no GFS slot.
//  4. Policy snapshots dated after `now` (the clock went back) are kept and take
//     no slot, so they cannot push out the snapshots taken since.
//  5. The remaining policy snapshots go through the keep rules exactly as restic's
//     `forget` does: sorted newest first, each rule walks them on its own; keep-last
//     N keeps the N newest; keep-hourly/daily/weekly/monthly/yearly N keeps the
//     newest snapshot of each of the N newest hours/days/ISO weeks/months/years
//     that have a snapshot (empty periods do not count); a rule that still has
//     count left when it reaches the oldest snapshot keeps that one too
//     ("oldest ..."). A snapshot kept by any rule is kept (union). Periods are
//     wall-clock periods in the policy's time zone. No keep rule at all keeps
//     every policy snapshot.
//  6. --max-bytes: while the VM's snapshots (all of them that remain, manual and
//     protected included) add up to more than the limit, delete the oldest policy
//     snapshot still kept, never a protected one, never the newest policy snapshot
//     (up to now), never one dated in the future, never one whose deletion frees
//     nothing known (bytes 0 or unknown).

import { formatBytes } from '../contract/format.js';
import type { PolicyRules } from '../contract/views.js';
import { VmsnapError } from '../errors.js';
import { localParts, pad2, validateTimeZone, type LocalParts } from './timezone.js';

export type SnapshotOwner = 'policy' | 'manual';

export interface RetentionSnapshot {
  id: string;
  name: string;
  createdAt: Date | string;
  /** What deleting this snapshot would free (the caller's estimate); unknown counts as 0. */
  bytes?: number | null;
  /** 'policy' only for snapshots that this VM's policy took; everything else is 'manual'. */
  owner: SnapshotOwner;
  protected: boolean;
  /** When the snapshot may be deleted (`snapshot create --expire`); null/undefined = never. */
  expiresAt?: Date | string | null;
}

/** A policy's rules (src/contract/views.ts); a rule left out or null is not used. */
export type RetentionRules = Partial<PolicyRules>;

export interface RetentionOptions {
  now: Date;
  /** The policy's zone: periods (hour, day, week, month, year) are wall-clock periods here. */
  timeZone: string;
}

export interface KeepEntry {
  id: string;
  name: string;
  createdAt: string;
  /** Every reason it is kept, e.g. ['last 1 of 3', 'daily 2026-11-25', 'weekly 2026-W48']. */
  reasons: string[];
}

/** Which step deletes it: its expiry, the keep rules, or --max-bytes. */
export type RemoveCause = 'expired' | 'retention' | 'max-bytes';

export interface RemoveEntry {
  id: string;
  name: string;
  createdAt: string;
  cause: RemoveCause;
  /** Human and stable, e.g. 'expired 2026-11-24T10:00Z'. */
  reason: string;
  /** The snapshot's bytes as given (0 when unknown). */
  bytes: number;
}

export interface RetentionPlan {
  /** Newest first. */
  keep: KeepEntry[];
  /** Newest first. */
  remove: RemoveEntry[];
  /** Sum of `remove[].bytes`. */
  freedBytes: number;
  /** Things the user should know (max-bytes cannot be met, sizes unknown). */
  warnings: string[];
}

type KeepKey = 'keepLast' | 'keepHourly' | 'keepDaily' | 'keepWeekly' | 'keepMonthly' | 'keepYearly';

interface KeepRule {
  key: KeepKey;
  option: string;
  /** What the rule counts: one 'day', several 'days'. */
  unit: string;
  units: string;
  /** The period's label, also its identity; null for keep-last (every snapshot is its own). */
  period: ((p: LocalParts) => string) | null;
}

/** The keep rules in restic's (and borg's and Proxmox's) order. */
export const KEEP_RULES: readonly KeepRule[] = [
  { key: 'keepLast', option: '--keep-last', unit: 'snapshot', units: 'snapshots', period: null },
  { key: 'keepHourly', option: '--keep-hourly', unit: 'hour', units: 'hours', period: (p) => `hourly ${p.year}-${pad2(p.month)}-${pad2(p.day)} ${pad2(p.hour)}:00` },
  { key: 'keepDaily', option: '--keep-daily', unit: 'day', units: 'days', period: (p) => `daily ${p.year}-${pad2(p.month)}-${pad2(p.day)}` },
  { key: 'keepWeekly', option: '--keep-weekly', unit: 'week', units: 'weeks', period: (p) => `weekly ${p.isoWeekYear}-W${pad2(p.isoWeek)}` },
  { key: 'keepMonthly', option: '--keep-monthly', unit: 'month', units: 'months', period: (p) => `monthly ${p.year}-${pad2(p.month)}` },
  { key: 'keepYearly', option: '--keep-yearly', unit: 'year', units: 'years', period: (p) => `yearly ${p.year}` },
];

function isSet(v: number | null | undefined): v is number {
  return v !== undefined && v !== null;
}

/**
 * Refuse rules that cannot mean what the user wants: every keep-* must be a
 * whole number of at least 1 (leave a rule out rather than give it 0; restic
 * also ignores 0), and --max-bytes a whole number of bytes of at least 1.
 * No rule at all is valid: it keeps every snapshot.
 */
export function validateRetentionRules(rules: RetentionRules): void {
  for (const r of KEEP_RULES) {
    const v: unknown = rules[r.key];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) {
      throw new VmsnapError('INVALID_ARGUMENT', `${r.option} must be a whole number of 1 or more (got ${String(v)})`, {
        hint: `e.g. ${r.option} 7; leave ${r.option} out to not use that rule`,
        details: { field: r.key, option: r.option, value: v },
      });
    }
  }
  const mb: unknown = rules.maxBytes;
  if (mb !== undefined && mb !== null && (typeof mb !== 'number' || !Number.isSafeInteger(mb) || mb < 1)) {
    throw new VmsnapError('INVALID_ARGUMENT', `--max-bytes must be a size above 0 (got ${String(mb)})`, {
      hint: 'e.g. --max-bytes 20G; leave it out for no size limit',
      details: { field: 'maxBytes', option: '--max-bytes', value: mb },
    });
  }
}

/** True when no keep-* rule is set (then every policy snapshot is kept). */
export function hasKeepRules(rules: RetentionRules): boolean {
  return KEEP_RULES.some((r) => isSet(rules[r.key]));
}

/** The rules as options, in a stable order: "keep-last 3, keep-daily 7, max-bytes 20 GiB". */
export function describeRules(rules: RetentionRules): string {
  const parts: string[] = [];
  for (const r of KEEP_RULES) {
    const v = rules[r.key];
    if (isSet(v)) parts.push(`${r.option.slice(2)} ${v}`);
  }
  if (isSet(rules.maxBytes)) parts.push(`max-bytes ${formatBytes(rules.maxBytes)}`);
  return parts.length === 0 ? 'no rules (keeps everything)' : parts.join(', ');
}

/** "7.2 GiB > 6.0 GiB"; exact bytes when rounding would show the two the same. */
function overLabel(total: number, max: number): string {
  const a = formatBytes(total);
  const b = formatBytes(max);
  return a === b ? `${total} B > ${max} B` : `${a} > ${b}`;
}

/** An instant as a short UTC label: "2026-11-24T10:00Z" (seconds when they are not 0). */
export function utcLabel(d: Date): string {
  const iso = d.toISOString(); // 2026-11-24T10:00:00.000Z
  const withSeconds = iso.slice(17, 23) !== '00.000';
  return `${iso.slice(0, withSeconds ? 19 : 16)}Z`;
}

function toDate(v: Date | string, what: string): Date {
  const d = v instanceof Date ? new Date(v.getTime()) : new Date(v);
  if (Number.isNaN(d.getTime())) throw new VmsnapError('INVALID_ARGUMENT', `${what}: '${String(v)}' is not a time`, { details: { value: String(v) } });
  return d;
}

interface Item {
  snap: RetentionSnapshot;
  at: Date;
  expires: Date | null;
  bytes: number;
  bytesKnown: boolean;
}

/** Newest first; equal times are ordered by id (the larger id counts as newer), so the result never depends on input order. */
function newestFirst(a: Item, b: Item): number {
  const dt = b.at.getTime() - a.at.getTime();
  if (dt !== 0) return dt;
  return a.snap.id < b.snap.id ? 1 : a.snap.id > b.snap.id ? -1 : 0;
}

/**
 * Apply the GFS keep rules to `list` (newest first). Returns each kept item's
 * reasons; items not in the map are not kept by any rule.
 */
function applyKeepRules(list: readonly Item[], rules: RetentionRules, timeZone: string): Map<Item, string[]> {
  const kept = new Map<Item, string[]>();
  const add = (it: Item, reason: string): void => {
    const rs = kept.get(it);
    if (rs === undefined) kept.set(it, [reason]);
    else rs.push(reason);
  };
  const parts = list.map((it) => localParts(it.at, timeZone));
  for (const rule of KEEP_RULES) {
    const count = rules[rule.key];
    if (!isSet(count)) continue;
    let left = count;
    let lastPeriod: string | null = null;
    for (let i = 0; i < list.length && left > 0; i++) {
      const it = list[i]!;
      if (rule.period === null) {
        add(it, `last ${count - left + 1} of ${count}`);
        left--;
        continue;
      }
      const period = rule.period(parts[i]!);
      if (period !== lastPeriod) {
        add(it, period);
        lastPeriod = period;
        left--;
      } else if (i === list.length - 1) {
        // restic: a rule with count left keeps the oldest snapshot as well, so
        // history is not lost while a new policy fills its periods.
        const found = count - left;
        add(it, `oldest (${rule.option.slice(2)} ${count} found only ${found} ${found === 1 ? rule.unit : rule.units})`);
        left--;
      }
    }
  }
  return kept;
}

/**
 * Decide which snapshots to keep and which to delete. Throws INVALID_ARGUMENT on
 * bad rules, an unknown time zone, an unreadable time or a duplicate id.
 */
export function planRetention(snapshots: readonly RetentionSnapshot[], rules: RetentionRules, opts: RetentionOptions): RetentionPlan {
  validateRetentionRules(rules);
  const timeZone = validateTimeZone(opts.timeZone);
  const now = opts.now;
  const seen = new Set<string>();
  const items: Item[] = snapshots.map((snap) => {
    if (seen.has(snap.id)) throw new VmsnapError('INVALID_ARGUMENT', `snapshot id ${snap.id} is given twice`, { details: { id: snap.id } });
    seen.add(snap.id);
    const bytesKnown = typeof snap.bytes === 'number' && Number.isFinite(snap.bytes) && snap.bytes >= 0;
    return {
      snap,
      at: toDate(snap.createdAt, `snapshot ${snap.name} createdAt`),
      expires: snap.expiresAt === undefined || snap.expiresAt === null ? null : toDate(snap.expiresAt, `snapshot ${snap.name} expiresAt`),
      bytes: bytesKnown ? (snap.bytes as number) : 0,
      bytesKnown,
    };
  });
  items.sort(newestFirst);

  const keep = new Map<Item, string[]>();
  const remove = new Map<Item, { cause: RemoveCause; reason: string }>();
  const candidates: Item[] = [];

  for (const it of items) {
    const expired = it.expires !== null && it.expires.getTime() <= now.getTime();
    if (it.snap.protected) {
      keep.set(it, expired ? ['protected', `expired ${utcLabel(it.expires!)}, kept while protected`] : ['protected']);
    } else if (expired) {
      remove.set(it, { cause: 'expired', reason: `expired ${utcLabel(it.expires!)}` });
    } else if (it.snap.owner === 'manual') {
      keep.set(it, [it.expires === null ? 'manual (no expiry)' : `manual (expires ${utcLabel(it.expires)})`]);
    } else if (it.at.getTime() > now.getTime()) {
      keep.set(it, [`created in the future (${utcLabel(it.at)}): clock went back?`]);
    } else {
      candidates.push(it);
    }
  }

  if (!hasKeepRules(rules)) {
    for (const it of candidates) keep.set(it, ['no keep rules: keeps every snapshot']);
  } else {
    const kept = applyKeepRules(candidates, rules, timeZone);
    const summary = describeRules({ ...rules, maxBytes: null });
    for (const it of candidates) {
      const reasons = kept.get(it);
      if (reasons !== undefined) keep.set(it, reasons);
      else remove.set(it, { cause: 'retention', reason: `no rule keeps it (${summary})` });
    }
  }

  const warnings: string[] = [];
  if (isSet(rules.maxBytes)) {
    const max = rules.maxBytes;
    if (items.some((it) => !it.bytesKnown && !remove.has(it))) {
      warnings.push('the size of some snapshots is unknown: max-bytes counts them as 0 and never deletes them');
    }
    let total = 0;
    for (const it of items) if (!remove.has(it)) total += it.bytes;
    // The newest policy snapshot (protected or not; not one already deleted, not one dated in the future) is never deleted by max-bytes.
    const newestPolicy = items.find((it) => it.snap.owner === 'policy' && !remove.has(it) && it.at.getTime() <= now.getTime());
    const prunable = candidates.filter((it) => keep.has(it) && it !== newestPolicy && it.bytes > 0).reverse(); // oldest first
    for (const it of prunable) {
      if (total <= max) break;
      keep.delete(it);
      remove.set(it, { cause: 'max-bytes', reason: `max-bytes: oldest policy snapshot while ${overLabel(total, max)}` });
      total -= it.bytes;
    }
    if (total > max) {
      warnings.push(
        `max-bytes ${formatBytes(max)} cannot be met: ${formatBytes(total)} remain in snapshots that the policy may not delete (manual, protected, or its newest)`,
      );
    }
  }

  const plan: RetentionPlan = { keep: [], remove: [], freedBytes: 0, warnings };
  for (const it of items) {
    const base = { id: it.snap.id, name: it.snap.name, createdAt: it.at.toISOString() };
    const r = remove.get(it);
    if (r !== undefined) {
      plan.remove.push({ ...base, cause: r.cause, reason: r.reason, bytes: it.bytes });
      plan.freedBytes += it.bytes;
    } else {
      plan.keep.push({ ...base, reasons: keep.get(it) ?? [] });
    }
  }
  return plan;
}
