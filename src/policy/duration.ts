// Durations for `snapshot create --expire DURATION` (and any other option that
// takes a span of time): "90m", "12h", "7d", "2w", "1y", or a sum such as "1d12h".

import { VmsnapError } from '../errors.js';

/** Milliseconds per unit. Days are 24 h and years 365 d: a duration is elapsed time, not a calendar step. */
export const DURATION_UNITS = {
  y: 365 * 86_400_000,
  w: 7 * 86_400_000,
  d: 86_400_000,
  h: 3_600_000,
  m: 60_000,
  s: 1_000,
} as const;

type Unit = keyof typeof DURATION_UNITS;
const UNIT_ORDER: readonly Unit[] = ['y', 'w', 'd', 'h', 'm', 's'];

/** The longest duration accepted: 100 years (longer is almost surely a typo). */
export const MAX_DURATION_MS = 100 * DURATION_UNITS.y;

const EXAMPLES = "e.g. '30m', '12h', '7d', '2w', '1y' or '1d12h' (units: s, m = minutes, h, d, w, y)";

/**
 * Parse a duration into milliseconds. One or more `<whole number><unit>` groups,
 * units from largest to smallest, each at most once: "1d12h" = 36 h. Units are
 * lowercase (`m` is minutes; there are no months: use days). The result must be
 * above zero and at most 100 years.
 */
export function parseDuration(text: string, option = '--expire'): number {
  const fail = (why: string): never => {
    throw new VmsnapError('INVALID_ARGUMENT', `${option}: '${text}' is not a duration: ${why}`, {
      hint: EXAMPLES,
      details: { field: option, value: text },
    });
  };
  if (typeof text !== 'string' || text.trim() === '') return fail('it is empty');
  const s = text.trim();
  if (/\d\.\d/.test(s)) return fail("use whole numbers (e.g. '90m' rather than '1.5h')");
  if (/^\d+$/.test(s)) return fail("it has no unit (e.g. '7d')");
  if (/[A-Z]/.test(s)) return fail("units are lowercase ('m' is minutes; there is no unit for months, use days)");
  if (/^-/.test(s)) return fail('it must be above zero');
  if (/\s/.test(s)) return fail("write it without spaces (e.g. '1d12h')");
  const re = /(\d+)([a-z]+)/gy;
  let total = 0;
  let lastRank = -1;
  let m: RegExpExecArray | null;
  let consumed = 0;
  while ((m = re.exec(s)) !== null) {
    consumed = re.lastIndex;
    const unit = m[2]! as Unit;
    const rank = UNIT_ORDER.indexOf(unit);
    if (rank < 0) return fail(`'${m[2]!}' is not a unit`);
    if (rank <= lastRank) return fail('give each unit once, largest first');
    lastRank = rank;
    total += Number(m[1]!) * DURATION_UNITS[unit];
  }
  if (consumed !== s.length) return fail(`'${s.slice(consumed)}' is not understood`);
  if (total <= 0) return fail('it must be above zero');
  if (total > MAX_DURATION_MS) return fail('it is longer than 100 years');
  return total;
}

/** Milliseconds as the shortest exact duration string: 129600000 → "1d12h"; 0 → "0s". Rounds down to whole seconds. */
export function formatDuration(ms: number): string {
  let left = Math.floor(ms / 1000) * 1000;
  if (left <= 0) return '0s';
  let out = '';
  for (const u of UNIT_ORDER) {
    const n = Math.floor(left / DURATION_UNITS[u]);
    if (n > 0) {
      out += `${n}${u}`;
      left -= n * DURATION_UNITS[u];
    }
  }
  return out;
}

/** When a snapshot taken at `from` with `--expire text` expires. */
export function expiryFrom(from: Date, text: string, option = '--expire'): Date {
  return new Date(from.getTime() + parseDuration(text, option));
}
