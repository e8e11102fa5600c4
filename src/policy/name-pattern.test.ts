import { describe, expect, it } from 'vitest';
import { isVmsnapError } from '../errors.js';
import { DEFAULT_NAME_PATTERN, expandNamePattern, MAX_COLLISION_SUFFIX, validateNamePattern } from './name-pattern.js';

// The project's name rule (src/util/format.ts NAME_PATTERN), copied on purpose: every name a
// policy makes must pass it, and this test must notice if the two drift apart.
const NAME_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$/;

const never = (): boolean => false;

describe('expandNamePattern', () => {
  it('the default pattern gives the slot time in the policy zone', () => {
    const at = new Date('2026-11-25T02:00:00Z');
    expect(DEFAULT_NAME_PATTERN).toBe('auto-{yyyy}{MM}{dd}-{HH}{mm}');
    expect(expandNamePattern(DEFAULT_NAME_PATTERN, at, 'Europe/Berlin', never)).toBe('auto-20261125-0300');
    expect(expandNamePattern(DEFAULT_NAME_PATTERN, at, 'America/New_York', never)).toBe('auto-20261124-2100');
    expect(expandNamePattern(DEFAULT_NAME_PATTERN, at, 'UTC', never)).toBe('auto-20261125-0200');
  });

  it('expands every placeholder', () => {
    expect(expandNamePattern('{yyyy}.{yy}.{MM}.{dd}_{HH}{mm}{ss}', new Date('2027-01-02T03:04:05Z'), 'UTC', never)).toBe('2027.27.01.02_030405');
  });

  it('appends -2, -3 … while a name is taken', () => {
    const taken = new Set(['auto-20261125-0200', 'auto-20261125-0200-2', 'auto-20261125-0200-3']);
    expect(expandNamePattern(DEFAULT_NAME_PATTERN, new Date('2026-11-25T02:00:00Z'), 'UTC', (n) => taken.has(n))).toBe('auto-20261125-0200-4');
  });

  it('the repeated hour of a DST fall back gives the same base name; the second gets -2', () => {
    const taken = new Set<string>();
    const take = (iso: string): string => {
      const n = expandNamePattern(DEFAULT_NAME_PATTERN, new Date(iso), 'Europe/Berlin', (x) => taken.has(x));
      taken.add(n);
      return n;
    };
    expect(take('2026-10-25T00:30:00Z')).toBe('auto-20261025-0230'); // CEST
    expect(take('2026-10-25T01:30:00Z')).toBe('auto-20261025-0230-2'); // CET
  });

  it('gives up with ALREADY_EXISTS after -999', () => {
    try {
      expandNamePattern('nightly', new Date(), 'UTC', () => true);
      expect.unreachable();
    } catch (e) {
      expect(isVmsnapError(e) && e.code).toBe('ALREADY_EXISTS');
      expect((e as Error).message).toBe(`snapshot names nightly to nightly-${MAX_COLLISION_SUFFIX} are all taken`);
    }
  });

  it('every name it makes passes the project name rule, suffix included', () => {
    const longest = `a${'b'.repeat(59 - 1 - 4 - 2 * 6)}{yyyy}{MM}{dd}{HH}{mm}{ss}{yy}`;
    validateNamePattern(longest);
    for (const pattern of [DEFAULT_NAME_PATTERN, longest, '{yyyy}', 'x', 'db_{HH}.{mm}']) {
      for (const iso of ['2026-01-01T00:00:00Z', '2026-12-31T23:59:59Z', '2026-10-25T01:30:00Z']) {
        const n1 = expandNamePattern(pattern, new Date(iso), 'Europe/Berlin', never);
        const n999 = expandNamePattern(pattern, new Date(iso), 'Europe/Berlin', (n) => !n.endsWith(`-${MAX_COLLISION_SUFFIX}`));
        expect(n1).toMatch(NAME_PATTERN);
        expect(n999).toMatch(NAME_PATTERN);
      }
    }
  });
});

describe('validateNamePattern', () => {
  it.each([
    ['', /it is empty/],
    ['auto {HH}', /' ' cannot be in a snapshot name/],
    ['auto/{HH}', /'\/' cannot be in a snapshot name/],
    ['auto-{hh}', /'\{hh\}' is not a placeholder/],
    ['auto-{}', /'\{\}' is not a placeholder/],
    ['auto-{HH', /not closed or not opened/],
    ['auto-HH}', /not closed or not opened/],
    ['-auto', /must start with a letter or digit/],
    ['.{HH}', /must start with a letter or digit/],
    [`${'a'.repeat(56)}{yyyy}`, /expands to 60 characters; at most 59/],
  ])('refuses %j', (pattern, message) => {
    try {
      validateNamePattern(pattern);
      expect.unreachable();
    } catch (e) {
      expect(isVmsnapError(e) && e.code).toBe('INVALID_ARGUMENT');
      expect((e as Error).message).toMatch(/^--name-pattern '/);
      expect((e as Error).message).toMatch(message);
      expect(isVmsnapError(e) && e.hint).toContain('{yyyy}');
    }
  });
});
