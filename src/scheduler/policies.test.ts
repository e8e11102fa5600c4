import { describe, expect, it } from 'vitest';
import type { PolicySpec } from '../contract/views.js';
import { isVmsnapError } from '../errors.js';
import { applyPatch } from './policies.js';

const base: PolicySpec = {
  schedule: '@daily',
  timeZone: 'Europe/Berlin',
  memory: null,
  namePattern: 'auto-{yyyy}{MM}{dd}-{HH}{mm}',
  rules: { keepLast: 3, keepHourly: null, keepDaily: 7, keepWeekly: null, keepMonthly: null, keepYearly: null, maxBytes: null },
};

function refused(fn: () => unknown, field: string, message: RegExp): void {
  try {
    fn();
  } catch (e) {
    expect(isVmsnapError(e) && e.code).toBe('INVALID_ARGUMENT');
    expect(isVmsnapError(e) && e.details.field).toBe(field);
    expect((e as Error).message).toMatch(message);
    return;
  }
  expect.unreachable('not refused');
}

describe('policy set: what a patch makes of a policy', () => {
  it('a new policy needs a schedule; the rest has defaults (host zone, memory when running, the auto- names, no rules)', () => {
    refused(() => applyPatch(undefined, { keepLast: 3 }, 'web'), 'schedule', /VM 'web' has no policy yet: give it a schedule/);
    expect(applyPatch(undefined, { schedule: ' 0  3 * * * ' }, 'web')).toEqual({
      schedule: '0 3 * * *',
      timeZone: null,
      memory: null,
      namePattern: 'auto-{yyyy}{MM}{dd}-{HH}{mm}',
      rules: { keepLast: null, keepHourly: null, keepDaily: null, keepWeekly: null, keepMonthly: null, keepYearly: null, maxBytes: null },
    });
  });

  it('changes only what is given; 0 or null removes a rule; "host" or null goes back to the host zone', () => {
    const s = applyPatch(base, { keepWeekly: 4, keepDaily: 0, maxBytes: 1024 }, 'web');
    expect(s).toEqual({ ...base, rules: { ...base.rules, keepWeekly: 4, keepDaily: null, maxBytes: 1024 } });
    expect(applyPatch(base, { keepLast: null, maxBytes: 0 }, 'web').rules).toMatchObject({ keepLast: null, maxBytes: null });
    expect(applyPatch(base, { timeZone: 'host' }, 'web').timeZone).toBeNull();
    expect(applyPatch(base, { timeZone: 'europe/paris' }, 'web').timeZone).toBe('Europe/Paris');
    expect(applyPatch(base, { memory: false, schedule: '@HOURLY' }, 'web')).toMatchObject({ memory: false, schedule: '@hourly' });
  });

  it('refuses negative or fractional counts and sizes, naming the option', () => {
    refused(() => applyPatch(base, { keepLast: -1 }, 'web'), 'keepLast', /--keep-last must be a whole number: 1 or more keeps that many, 0 turns the rule off \(got -1\)/);
    refused(() => applyPatch(base, { keepMonthly: 1.5 }, 'web'), 'keepMonthly', /--keep-monthly must be a whole number/);
    refused(() => applyPatch(base, { maxBytes: -5 }, 'web'), 'maxBytes', /--max-bytes must be a size/);
  });

  it('refuses a bad schedule, zone or name pattern, whatever else the patch holds', () => {
    refused(() => applyPatch(base, { schedule: '* * *', keepLast: 1 }, 'web'), '--schedule', /3 fields given, 5 expected/);
    refused(() => applyPatch(base, { timeZone: 'Nowhere/City' }, 'web'), '--tz', /unknown time zone 'Nowhere\/City'/);
    refused(() => applyPatch(base, { namePattern: '{HH}:{mm}' }, 'web'), '--name-pattern', /':' cannot be in a snapshot name/);
  });
});
