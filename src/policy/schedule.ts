// Schedules: cron expressions (croner) in a time zone, and which slot is due.
//
// A slot is one time the cron expression names, identified by its instant in UTC
// as an ISO string ("2026-11-25T02:00:00.000Z"). The scheduler claims a slot in the
// catalog by (VM, slot) before it takes the snapshot, so two schedulers never take
// the same slot, and the same slot is the same string whoever computes it.
//
// dueSlot gives at most ONE slot: the latest one that has come (≤ now), if it is
// after the last slot taken and not before the policy was set. A host that was off
// for three days takes one snapshot when it comes back, not one per missed slot;
// `missed` says how many slots were passed over.

import { Cron, type CronOptions } from 'croner';
import { VmsnapError } from '../errors.js';
import { validateTimeZone } from './timezone.js';

/** The nicknames accepted besides 5-field expressions, and what they stand for. */
export const SCHEDULE_NICKNAMES: Readonly<Record<string, string>> = {
  '@hourly': '0 * * * *',
  '@daily': '0 0 * * *',
  '@midnight': '0 0 * * *',
  '@weekly': '0 0 * * 0',
  '@monthly': '0 0 1 * *',
  '@yearly': '0 0 1 1 *',
  '@annually': '0 0 1 1 *',
};

const FIELDS = [
  { name: 'minute', range: '0-59' },
  { name: 'hour', range: '0-23' },
  { name: 'day-of-month', range: '1-31, or L for the last day' },
  { name: 'month', range: '1-12 or JAN-DEC' },
  { name: 'day-of-week', range: '0-7 or SUN-SAT (0 and 7 are Sunday)' },
] as const;

const ORDINALS = ['1st', '2nd', '3rd', '4th', '5th'] as const;

const SCHEDULE_HINT =
  "a schedule is 5 fields, MINUTE HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK, e.g. '0 3 * * *' (03:00 every day), " +
  "'*/15 * * * *' (every 15 minutes), '0 3 * * 1-5' (03:00 Monday to Friday), or one of @hourly, @daily, @weekly, @monthly, @yearly";

/** Most slots counted in `missed` (counting walks the slots one by one). */
export const MISSED_COUNT_LIMIT = 1000;

export interface DueSlot {
  /** The slot's identity: its instant as an ISO string in UTC (Date.prototype.toISOString). */
  slot: string;
  /** The same instant as a Date. */
  at: Date;
  /** Slots passed over between the last one taken (or the time the policy was set) and this one; at most MISSED_COUNT_LIMIT. */
  missed: number;
}

function invalid(expr: string, message: string, details: Record<string, unknown> = {}): VmsnapError {
  return new VmsnapError('INVALID_ARGUMENT', `--schedule '${expr}': ${message}`, {
    hint: SCHEDULE_HINT,
    details: { field: '--schedule', value: expr, ...details },
  });
}

function cronOptions(timeZone: string): CronOptions {
  return {
    paused: true,
    timezone: timeZone,
    mode: '5-part',
    // Day-of-month and day-of-week combine with OR, as in Vixie cron (croner's default).
    domAndDow: false,
    // As in Vixie cron: a job with no wildcard or step in minute and hour (e.g. '30 2 * * *',
    // '30 2,14 * * *') runs once when its time occurs twice (DST fall back) and at the first
    // valid time after a DST gap; other jobs skip times in a gap and run on both occurrences.
    fixedTimeRule: 'no-wildcard',
  };
}

function tryCron(pattern: string, timeZone: string): unknown {
  try {
    new Cron(pattern, cronOptions(timeZone));
    return null;
  } catch (e) {
    return e;
  }
}

/** Trim, collapse spaces, lowercase nicknames; throw for the wrong number of fields. */
function normalize(expr: string): string {
  if (typeof expr !== 'string' || expr.trim() === '') throw invalid(String(expr), 'a schedule is required');
  const e = expr.trim().replace(/\s+/g, ' ');
  if (e.startsWith('@')) {
    const nick = e.toLowerCase();
    if (nick === '@reboot') throw invalid(expr, '@reboot is not a time; use @hourly, @daily, @weekly, @monthly or @yearly');
    if (!Object.hasOwn(SCHEDULE_NICKNAMES, nick)) {
      throw invalid(expr, `unknown nickname '${e}'; use @hourly, @daily, @weekly, @monthly or @yearly`);
    }
    return nick;
  }
  const n = e.split(' ').length;
  if (n === 6 || n === 7) {
    throw invalid(expr, `${n} fields given, 5 expected: seconds and years are not supported (MINUTE HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK)`);
  }
  if (n !== 5) throw invalid(expr, `${n} field${n === 1 ? '' : 's'} given, 5 expected (MINUTE HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK)`);
  return e;
}

function build(expr: string, timeZone: string): Cron {
  const tz = validateTimeZone(timeZone);
  const e = normalize(expr);
  try {
    return new Cron(e, cronOptions(tz));
  } catch (err) {
    // Name the field: try each field alone, the others '*'.
    const fields = e.split(' ');
    for (let i = 0; i < fields.length && i < FIELDS.length; i++) {
      const alone = fields.map((f, j) => (j === i ? f : '*')).join(' ');
      if (tryCron(alone, tz) !== null) {
        const f = FIELDS[i]!;
        throw invalid(expr, `the ${f.name} field (${ORDINALS[i]!}) '${fields[i]!}' is not valid: ${f.name} values are ${f.range}, with *, lists (1,5), ranges (1-5) and steps (*/15)`, {
          cronField: f.name,
          cronValue: fields[i],
        });
      }
    }
    throw invalid(expr, err instanceof Error ? err.message.replace(/^CronPattern: /, '') : String(err));
  }
}

/**
 * Check a schedule and its zone; return the schedule as stored (trimmed, single
 * spaces, nicknames lowercase). Throws INVALID_ARGUMENT naming the bad field, for
 * an unknown zone, and for an expression that never runs ('0 0 30 2 *').
 */
export function validateSchedule(expr: string, timeZone: string): string {
  const cron = build(expr, timeZone);
  if (cron.nextRun(new Date(Date.UTC(2000, 0, 1))) === null) throw invalid(expr, 'it never runs (no such date)');
  return normalize(expr);
}

/** The first slot strictly after `after`, or null when there is none. */
export function nextRun(expr: string, timeZone: string, after: Date): Date | null {
  return build(expr, timeZone).nextRun(after);
}

/** The next `n` slots strictly after `after` (for `policy show`). */
export function nextRuns(expr: string, timeZone: string, after: Date, n: number): Date[] {
  return build(expr, timeZone).nextRuns(n, after);
}

/** The latest slot at or before `at`, or null. */
export function latestSlot(expr: string, timeZone: string, at: Date): Date | null {
  return latestFrom(build(expr, timeZone), at);
}

function latestFrom(cron: Cron, at: Date): Date | null {
  // previousRuns is strictly before its reference; slots are whole minutes.
  const ref = new Date(Math.floor(at.getTime() / 1000) * 1000 + 1000);
  const [prev] = cron.previousRuns(1, ref);
  return prev !== undefined && prev.getTime() <= at.getTime() ? prev : null;
}

function parseSlot(slot: string): Date {
  const d = new Date(slot);
  if (typeof slot !== 'string' || Number.isNaN(d.getTime())) {
    throw new VmsnapError('INVALID_ARGUMENT', `last slot '${String(slot)}' is not an ISO time`, { details: { lastSlot: slot } });
  }
  return d;
}

/**
 * The slot to run now, if any: the latest slot ≤ `now` that is after `lastSlot`
 * (the last slot this policy took, null if none) and not before `since` (when the
 * policy's schedule was set: setting a policy never fires at once for a slot that
 * came before it, and a changed schedule does not fire for its own past slots).
 * Null when nothing is due. If the clock went back behind `lastSlot`, nothing is
 * due until it passes `lastSlot` again.
 */
export function dueSlot(expr: string, timeZone: string, lastSlot: string | null, now: Date, since: Date): DueSlot | null {
  const cron = build(expr, timeZone);
  const latest = latestFrom(cron, now);
  if (latest === null) return null;
  const last = lastSlot === null ? null : parseSlot(lastSlot);
  if (last !== null && latest.getTime() <= last.getTime()) return null;
  if (latest.getTime() < since.getTime()) return null;
  // Count the slots passed over: after `last` and at/after `since`, before `latest`.
  const from = Math.max(last === null ? -Infinity : last.getTime() + 1, since.getTime());
  let missed = 0;
  let cursor: Date | null = new Date(Math.floor(from / 1000) * 1000 - 1000);
  while (missed < MISSED_COUNT_LIMIT) {
    cursor = cron.nextRun(cursor);
    if (cursor === null || cursor.getTime() >= latest.getTime()) break;
    if (cursor.getTime() >= from) missed++;
  }
  return { slot: latest.toISOString(), at: latest, missed };
}
