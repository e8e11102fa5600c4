// Time zones for policies: validation, the host's zone, and the wall-clock
// fields of an instant in a zone. Only the platform's Intl API is used (Node's
// ICU carries the IANA database), so no time zone library is needed.

import { VmsnapError } from '../errors.js';

/** The wall-clock reading of an instant in a time zone, plus its ISO week. */
export interface LocalParts {
  year: number;
  month: number; // 1-12
  day: number; // 1-31
  hour: number; // 0-23
  minute: number;
  second: number;
  /** ISO-8601 week-numbering year (differs from `year` around 1 January). */
  isoWeekYear: number;
  /** ISO-8601 week, 1-53; weeks start on Monday, week 1 holds the year's first Thursday. */
  isoWeek: number;
}

const formatters = new Map<string, Intl.DateTimeFormat>();

function formatterFor(timeZone: string): Intl.DateTimeFormat {
  let f = formatters.get(timeZone);
  if (f === undefined) {
    f = new Intl.DateTimeFormat('en-US', {
      timeZone,
      hourCycle: 'h23',
      year: 'numeric',
      month: '2-digit',
      day: '2-digit',
      hour: '2-digit',
      minute: '2-digit',
      second: '2-digit',
    });
    formatters.set(timeZone, f);
  }
  return f;
}

/**
 * Check a time zone name and return its canonical spelling ("europe/berlin" →
 * "Europe/Berlin", "US/Eastern" → "America/New_York"). Accepts what the
 * platform's IANA database knows, including "UTC" and "Etc/GMT-2"; refuses
 * offsets such as "+02:00" (they have no DST rules: use an Etc/GMT zone).
 */
export function validateTimeZone(timeZone: string, option = '--tz'): string {
  const hint = "use an IANA zone name such as 'Europe/Berlin', 'America/New_York' or 'UTC' (timedatectl list-timezones shows them all)";
  if (typeof timeZone !== 'string' || timeZone.trim() === '') {
    throw new VmsnapError('INVALID_ARGUMENT', `${option}: a time zone name is required`, { hint, details: { field: option } });
  }
  try {
    return new Intl.DateTimeFormat('en-US', { timeZone }).resolvedOptions().timeZone;
  } catch {
    throw new VmsnapError('INVALID_ARGUMENT', `${option}: unknown time zone '${timeZone}'`, { hint, details: { field: option, value: timeZone } });
  }
}

/** The host's time zone (what a policy uses without --tz). "UTC" when the host has none set. */
export function hostTimeZone(): string {
  return Intl.DateTimeFormat().resolvedOptions().timeZone;
}

/** The zone a policy runs in: its own, or (null) the host's. */
export function zoneOf(spec: { timeZone: string | null }): string {
  return spec.timeZone ?? hostTimeZone();
}

/** ISO-8601 week-numbering year and week of a calendar date. */
export function isoWeekOf(year: number, month: number, day: number): { isoWeekYear: number; isoWeek: number } {
  const date = new Date(Date.UTC(year, month - 1, day));
  const weekday = (date.getUTCDay() + 6) % 7; // Monday 0 … Sunday 6
  // The Thursday of this week decides the week's year.
  const thursday = new Date(date.getTime() + (3 - weekday) * 86_400_000);
  const isoWeekYear = thursday.getUTCFullYear();
  const jan1 = Date.UTC(isoWeekYear, 0, 1);
  const isoWeek = 1 + Math.floor((thursday.getTime() - jan1) / (7 * 86_400_000));
  return { isoWeekYear, isoWeek };
}

/** The wall-clock fields of `at` in `timeZone` (which must be valid). */
export function localParts(at: Date, timeZone: string): LocalParts {
  const f = formatterFor(timeZone);
  // format() is about 3x faster than formatToParts(); en-US with these options gives "11/25/2026, 02:15:00".
  const m = /^(\d{2})\/(\d{2})\/(\d{4}), (\d{2}):(\d{2}):(\d{2})$/.exec(f.format(at));
  let fields: [number, number, number, number, number, number];
  if (m !== null) {
    fields = [Number(m[3]), Number(m[1]), Number(m[2]), Number(m[4]), Number(m[5]), Number(m[6])];
  } else {
    const parts = f.formatToParts(at);
    const get = (type: Intl.DateTimeFormatPartTypes): number => {
      const p = parts.find((x) => x.type === type);
      if (p === undefined) throw new VmsnapError('INTERNAL', `Intl gave no ${type} for ${at.toISOString()} in ${timeZone}`);
      return Number(p.value);
    };
    fields = [get('year'), get('month'), get('day'), get('hour'), get('minute'), get('second')];
  }
  const [year, month, day, hour, minute, second] = fields;
  const { isoWeekYear, isoWeek } = isoWeekOf(year, month, day);
  return { year, month, day, hour, minute, second, isoWeekYear, isoWeek };
}

export function pad2(n: number): string {
  return String(n).padStart(2, '0');
}
