import { describe, expect, it } from 'vitest';
import { isVmsnapError } from '../errors.js';
import { hostTimeZone, isoWeekOf, localParts, validateTimeZone } from './timezone.js';

describe('isoWeekOf', () => {
  // Checked against GNU date +%G-W%V.
  it.each([
    ['2020-12-31', 2020, 53],
    ['2021-01-01', 2020, 53],
    ['2021-01-03', 2020, 53],
    ['2021-01-04', 2021, 1],
    ['2024-12-29', 2024, 52],
    ['2024-12-30', 2025, 1],
    ['2025-01-01', 2025, 1],
    ['2026-12-31', 2026, 53],
    ['2027-01-01', 2026, 53],
    ['2027-01-03', 2026, 53],
    ['2027-01-04', 2027, 1],
    ['2018-12-31', 2019, 1],
    ['2016-01-03', 2015, 53],
    ['2026-11-25', 2026, 48],
    ['2026-03-29', 2026, 13],
  ])('%s is %i-W%i', (date, year, week) => {
    const [y, m, d] = date.split('-').map(Number) as [number, number, number];
    expect(isoWeekOf(y, m, d)).toEqual({ isoWeekYear: year, isoWeek: week });
  });

  it('weeks run Monday to Sunday and never skip or repeat across 40 years', () => {
    let prev = isoWeekOf(1999, 12, 31);
    let weeks53 = 0;
    const bad: string[] = [];
    for (let t = Date.UTC(2000, 0, 1); t < Date.UTC(2040, 0, 1); t += 86_400_000) {
      const d = new Date(t);
      const w = isoWeekOf(d.getUTCFullYear(), d.getUTCMonth() + 1, d.getUTCDate());
      const monday = d.getUTCDay() === 1;
      if (monday) {
        const sameYear = w.isoWeekYear === prev.isoWeekYear && w.isoWeek === prev.isoWeek + 1 && w.isoWeek <= 53;
        const newYear = w.isoWeekYear === prev.isoWeekYear + 1 && w.isoWeek === 1 && prev.isoWeek >= 52;
        if (!(sameYear || newYear)) bad.push(d.toISOString());
        if (w.isoWeek === 53) weeks53++;
      } else if (w.isoWeek !== prev.isoWeek || w.isoWeekYear !== prev.isoWeekYear) {
        bad.push(d.toISOString());
      }
      prev = w;
    }
    // 2004 2009 2015 2020 2026 2032 2037 have 53 weeks.
    expect(bad).toEqual([]);
    expect(weeks53).toBe(7);
  });
});

describe('localParts', () => {
  it('reads the wall clock in the zone', () => {
    expect(localParts(new Date('2026-11-25T23:30:00Z'), 'Europe/Berlin')).toMatchObject({ year: 2026, month: 11, day: 26, hour: 0, minute: 30, isoWeek: 48 });
    expect(localParts(new Date('2026-11-25T03:30:00Z'), 'America/New_York')).toMatchObject({ day: 24, hour: 22 });
    expect(localParts(new Date('2026-01-01T00:00:00Z'), 'UTC')).toMatchObject({ year: 2026, month: 1, day: 1, hour: 0 });
  });

  it('midnight is hour 0, not 24', () => {
    expect(localParts(new Date('2026-06-01T22:00:00Z'), 'Europe/Berlin').hour).toBe(0);
  });

  it('a repeated hour (DST fall back) reads the same wall clock twice', () => {
    const a = localParts(new Date('2026-10-25T00:15:00Z'), 'Europe/Berlin'); // 02:15 CEST
    const b = localParts(new Date('2026-10-25T01:15:00Z'), 'Europe/Berlin'); // 02:15 CET
    expect(a).toEqual(b);
  });
});

describe('validateTimeZone', () => {
  it('returns the canonical name', () => {
    expect(validateTimeZone('Europe/Berlin')).toBe('Europe/Berlin');
    expect(validateTimeZone('europe/berlin')).toBe('Europe/Berlin');
    expect(validateTimeZone('utc')).toBe('UTC');
    expect(validateTimeZone('US/Eastern')).toBe('America/New_York');
  });

  it.each(['Mars/Olympus', '', '  ', '+02:00', 'Local'])('refuses %j clearly', (tz) => {
    try {
      validateTimeZone(tz);
      expect.unreachable();
    } catch (e) {
      expect(isVmsnapError(e) && e.code).toBe('INVALID_ARGUMENT');
      expect((e as Error).message).toMatch(/^--tz: /);
      expect(isVmsnapError(e) && e.hint).toMatch(/Europe\/Berlin/);
    }
  });

  it('the host zone is a valid zone', () => {
    expect(validateTimeZone(hostTimeZone())).toBe(hostTimeZone());
  });
});

describe('localParts fast path', () => {
  it('agrees with formatToParts over a year of random instants in several zones', () => {
    let seed = 42;
    const rnd = (): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (const tz of ['UTC', 'Europe/Berlin', 'America/New_York', 'Asia/Kathmandu', 'Australia/Lord_Howe']) {
      const f = new Intl.DateTimeFormat('en-US', { timeZone: tz, hourCycle: 'h23', year: 'numeric', month: 'numeric', day: 'numeric', hour: 'numeric', minute: 'numeric', second: 'numeric' });
      for (let i = 0; i < 300; i++) {
        const at = new Date(Date.UTC(2026, 0, 1) + Math.floor(rnd() * 365 * 86_400_000));
        const get = (type: string): number => Number(f.formatToParts(at).find((p) => p.type === type)!.value);
        expect(localParts(at, tz), `${tz} ${at.toISOString()}`).toMatchObject({ year: get('year'), month: get('month'), day: get('day'), hour: get('hour'), minute: get('minute'), second: get('second') });
      }
    }
  });
});
