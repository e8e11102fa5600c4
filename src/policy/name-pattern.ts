// Names of the snapshots a policy takes: `--name-pattern P`, expanded with the
// slot's time in the policy's time zone, e.g. auto-{yyyy}{MM}{dd}-{HH}{mm} →
// auto-20261125-0300. A name that is taken gets -2, -3, … appended.

import { VmsnapError } from '../errors.js';
import { localParts, pad2, validateTimeZone, type LocalParts } from './timezone.js';

export const DEFAULT_NAME_PATTERN = 'auto-{yyyy}{MM}{dd}-{HH}{mm}';

/** The placeholders and what they expand to (all fixed width, wall-clock time in the policy's zone). */
export const NAME_TOKENS: Readonly<Record<string, { width: number; value: (p: LocalParts) => string; meaning: string }>> = {
  yyyy: { width: 4, value: (p) => String(p.year).padStart(4, '0'), meaning: 'year, 4 digits' },
  yy: { width: 2, value: (p) => pad2(p.year % 100), meaning: 'year, 2 digits' },
  MM: { width: 2, value: (p) => pad2(p.month), meaning: 'month 01-12' },
  dd: { width: 2, value: (p) => pad2(p.day), meaning: 'day 01-31' },
  HH: { width: 2, value: (p) => pad2(p.hour), meaning: 'hour 00-23' },
  mm: { width: 2, value: (p) => pad2(p.minute), meaning: 'minute 00-59' },
  ss: { width: 2, value: (p) => pad2(p.second), meaning: 'second 00-59' },
};

/** Names are at most 63 characters (the project's name rule); a pattern may expand to 59, leaving room for "-999". */
export const MAX_PATTERN_LENGTH = 59;
/** The highest collision suffix tried before giving up. */
export const MAX_COLLISION_SUFFIX = 999;

const LITERAL = /^[a-zA-Z0-9._-]*$/;
const TOKEN_LIST = Object.keys(NAME_TOKENS)
  .map((t) => `{${t}}`)
  .join(' ');

type Piece = { literal: string } | { token: string };

function parsePattern(pattern: string): Piece[] {
  const fail = (why: string): never => {
    throw new VmsnapError('INVALID_ARGUMENT', `--name-pattern '${pattern}': ${why}`, {
      hint: `placeholders: ${TOKEN_LIST}; other characters: letters, digits, '.', '_' or '-'; e.g. '${DEFAULT_NAME_PATTERN}'`,
      details: { field: '--name-pattern', value: pattern },
    });
  };
  if (typeof pattern !== 'string' || pattern === '') return fail('it is empty');
  const pieces: Piece[] = [];
  const re = /\{([^{}]*)\}/g;
  let last = 0;
  let m: RegExpExecArray | null;
  const literal = (text: string): void => {
    if (text.includes('{') || text.includes('}')) fail("a '{' or '}' is not closed or not opened");
    const bad = [...text].find((c) => !LITERAL.test(c));
    if (bad !== undefined) fail(`'${bad}' cannot be in a snapshot name`);
    if (text !== '') pieces.push({ literal: text });
  };
  while ((m = re.exec(pattern)) !== null) {
    literal(pattern.slice(last, m.index));
    const token = m[1]!;
    if (!Object.hasOwn(NAME_TOKENS, token)) fail(`'{${token}}' is not a placeholder`);
    pieces.push({ token });
    last = re.lastIndex;
  }
  literal(pattern.slice(last));
  const first = pieces[0]!;
  if ('literal' in first && !/^[a-zA-Z0-9]/.test(first.literal)) fail('a name must start with a letter or digit');
  const width = pieces.reduce((n, p) => n + ('literal' in p ? p.literal.length : NAME_TOKENS[p.token]!.width), 0);
  if (width > MAX_PATTERN_LENGTH) fail(`it expands to ${width} characters; at most ${MAX_PATTERN_LENGTH} (names are at most 63, with room for a '-2' suffix)`);
  return pieces;
}

/** Throw INVALID_ARGUMENT unless every name the pattern can produce is a valid snapshot name. */
export function validateNamePattern(pattern: string): void {
  parsePattern(pattern);
}

/**
 * The name for a snapshot taken at `at` (pass the schedule slot's time, so the
 * name matches the slot) in `timeZone`. When `taken(name)` says a name is in use,
 * tries name-2, name-3, … up to -999, then throws ALREADY_EXISTS.
 */
export function expandNamePattern(pattern: string, at: Date, timeZone: string, taken: (name: string) => boolean): string {
  const pieces = parsePattern(pattern);
  const parts = localParts(at, validateTimeZone(timeZone));
  const base = pieces.map((p) => ('literal' in p ? p.literal : NAME_TOKENS[p.token]!.value(parts))).join('');
  if (!taken(base)) return base;
  for (let n = 2; n <= MAX_COLLISION_SUFFIX; n++) {
    const name = `${base}-${n}`;
    if (!taken(name)) return name;
  }
  throw new VmsnapError('ALREADY_EXISTS', `snapshot names ${base} to ${base}-${MAX_COLLISION_SUFFIX} are all taken`, {
    hint: 'add {HH}{mm}{ss} to --name-pattern so that names differ',
    details: { pattern, base },
  });
}
