import { describe, expect, it } from 'vitest';
import { isVmsnapError, type VmsnapError } from '../errors.js';
import { dueSlot, latestSlot, MISSED_COUNT_LIMIT, nextRun, nextRuns, validateSchedule } from './schedule.js';

const d = (s: string): Date => new Date(s);
const isoList = (ds: Date[]): string[] => ds.map((x) => x.toISOString());

function caught(fn: () => unknown): VmsnapError {
  try {
    fn();
  } catch (e) {
    if (isVmsnapError(e)) return e;
    throw e;
  }
  throw new Error('no error thrown');
}

describe('validateSchedule', () => {
  it.each([
    ['*/15 * * * *', '*/15 * * * *'],
    ['0 3 * * 1-5', '0 3 * * 1-5'],
    ['0 3 * * MON-FRI', '0 3 * * MON-FRI'],
    ['  0   3 * * *  ', '0 3 * * *'],
    ['0 0 L * *', '0 0 L * *'],
    ['0 0 29 2 *', '0 0 29 2 *'],
    ['@hourly', '@hourly'],
    ['@daily', '@daily'],
    ['@midnight', '@midnight'],
    ['@weekly', '@weekly'],
    ['@monthly', '@monthly'],
    ['@yearly', '@yearly'],
    ['@annually', '@annually'],
    ['@DAILY', '@daily'],
  ])('accepts %j as %j', (expr, stored) => {
    expect(validateSchedule(expr, 'Europe/Berlin')).toBe(stored);
  });

  it.each([
    ['61 3 * * *', 'minute', '61'],
    ['0 24 * * *', 'hour', '24'],
    ['0 3 32 * *', 'day-of-month', '32'],
    ['0 3 0 * *', 'day-of-month', '0'],
    ['0 3 * 13 *', 'month', '13'],
    ['0 3 * * 8', 'day-of-week', '8'],
    ['*/0 * * * *', 'minute', '*/0'],
    ['5/5 * * * *', 'minute', '5/5'],
    ['0 3 * * FOO', 'day-of-week', 'FOO'],
    ['0 x * * *', 'hour', 'x'],
  ])('refuses %j naming the %s field', (expr, field, value) => {
    const e = caught(() => validateSchedule(expr, 'UTC'));
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(e.message).toContain(`--schedule '${expr}': the ${field} field`);
    expect(e.message).toContain(`'${value}' is not valid`);
    expect(e.details).toMatchObject({ field: '--schedule', cronField: field });
    expect(e.hint).toContain("'0 3 * * *' (03:00 every day)");
  });

  it.each([
    ['', /a schedule is required/],
    ['0 3 * *', /4 fields given, 5 expected/],
    ['daily', /1 field given, 5 expected/],
    ['0 0 3 * * *', /6 fields given, 5 expected: seconds and years are not supported/],
    ['0 0 3 * * * 2030', /7 fields given/],
    ['@reboot', /@reboot is not a time/],
    ['@often', /unknown nickname '@often'/],
    ['0 0 30 2 *', /it never runs/],
    ['0 0 31 4 *', /it never runs/],
  ])('refuses %j', (expr, message) => {
    const e = caught(() => validateSchedule(expr, 'UTC'));
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(e.message).toMatch(message);
  });

  it('refuses an unknown zone', () => {
    const e = caught(() => validateSchedule('@daily', 'Mars/Olympus'));
    expect(e.message).toBe("--tz: unknown time zone 'Mars/Olympus'");
  });
});

describe('nextRun and nextRuns', () => {
  it('*/15 runs on the quarter hours, strictly after the given time', () => {
    expect(nextRun('*/15 * * * *', 'UTC', d('2026-11-25T10:07:00Z'))).toEqual(d('2026-11-25T10:15:00Z'));
    expect(nextRun('*/15 * * * *', 'UTC', d('2026-11-25T10:15:00Z'))).toEqual(d('2026-11-25T10:30:00Z'));
  });

  it('0 3 * * 1-5 skips the weekend, in the zone', () => {
    // Friday 2026-11-27 04:00 Berlin → Monday 2026-11-30 03:00 CET = 02:00Z.
    expect(nextRun('0 3 * * 1-5', 'Europe/Berlin', d('2026-11-27T03:00:00Z'))).toEqual(d('2026-11-30T02:00:00Z'));
    expect(isoList(nextRuns('0 3 * * 1-5', 'UTC', d('2026-11-27T04:00:00Z'), 3))).toEqual([
      '2026-11-30T03:00:00.000Z',
      '2026-12-01T03:00:00.000Z',
      '2026-12-02T03:00:00.000Z',
    ]);
  });

  it('the same wall-clock time is a different UTC time in summer and winter', () => {
    expect(nextRun('0 3 * * *', 'Europe/Berlin', d('2026-07-01T00:00:00Z'))).toEqual(d('2026-07-01T01:00:00Z'));
    expect(nextRun('0 3 * * *', 'Europe/Berlin', d('2026-12-01T00:00:00Z'))).toEqual(d('2026-12-01T02:00:00Z'));
    expect(nextRun('@daily', 'America/New_York', d('2026-12-01T00:00:00Z'))).toEqual(d('2026-12-01T05:00:00Z'));
  });

  it('@weekly is Sunday 00:00, @monthly the 1st, @yearly 1 January', () => {
    expect(nextRun('@weekly', 'UTC', d('2026-11-25T00:00:00Z'))).toEqual(d('2026-11-29T00:00:00Z'));
    expect(nextRun('@monthly', 'UTC', d('2026-11-25T00:00:00Z'))).toEqual(d('2026-12-01T00:00:00Z'));
    expect(nextRun('@yearly', 'UTC', d('2026-11-25T00:00:00Z'))).toEqual(d('2027-01-01T00:00:00Z'));
  });

  it('day-of-month and day-of-week combine with OR, as in Vixie cron', () => {
    // The 1st of the month OR Mondays: after Sat 2026-11-28 comes Mon 11-30, then Tue 12-01.
    expect(isoList(nextRuns('0 12 1 * 1', 'UTC', d('2026-11-28T00:00:00Z'), 2))).toEqual(['2026-11-30T12:00:00.000Z', '2026-12-01T12:00:00.000Z']);
  });
});

describe('DST (what croner does, with fixedTimeRule "no-wildcard", as Vixie cron)', () => {
  it('Europe/Berlin spring forward: a daily 02:30 runs at 03:00 CEST on the day 02:30 does not exist', () => {
    expect(isoList(nextRuns('30 2 * * *', 'Europe/Berlin', d('2026-03-27T12:00:00Z'), 3))).toEqual([
      '2026-03-28T01:30:00.000Z', // 02:30 CET
      '2026-03-29T01:00:00.000Z', // 03:00 CEST: the first valid time after the gap
      '2026-03-30T00:30:00.000Z', // 02:30 CEST
    ]);
  });

  it('Europe/Berlin fall back: a daily 02:30 runs once, at the first 02:30 (CEST)', () => {
    expect(isoList(nextRuns('30 2 * * *', 'Europe/Berlin', d('2026-10-24T12:00:00Z'), 2))).toEqual([
      '2026-10-25T00:30:00.000Z', // 02:30 CEST; not again at 02:30 CET (01:30Z)
      '2026-10-26T01:30:00.000Z',
    ]);
  });

  it('a list of fixed times (30 2,14) also runs after the gap, not skipped', () => {
    expect(nextRun('30 2,14 * * *', 'Europe/Berlin', d('2026-03-28T23:00:00Z'))).toEqual(d('2026-03-29T01:00:00Z'));
  });

  it('an interval schedule skips the gap and runs in both passes of the repeated hour', () => {
    expect(isoList(nextRuns('*/30 * * * *', 'Europe/Berlin', d('2026-03-29T00:10:00Z'), 2))).toEqual([
      '2026-03-29T00:30:00.000Z', // 01:30 CET
      '2026-03-29T01:00:00.000Z', // 03:00 CEST (02:00 and 02:30 do not exist)
    ]);
    expect(isoList(nextRuns('*/30 * * * *', 'Europe/Berlin', d('2026-10-24T23:50:00Z'), 4))).toEqual([
      '2026-10-25T00:00:00.000Z', // 02:00 CEST
      '2026-10-25T00:30:00.000Z', // 02:30 CEST
      '2026-10-25T01:00:00.000Z', // 02:00 CET
      '2026-10-25T01:30:00.000Z', // 02:30 CET
    ]);
  });

  it('America/New_York: a daily 02:30 runs at 03:00 EDT on 2026-03-08, once on 2026-11-01', () => {
    expect(nextRun('30 2 * * *', 'America/New_York', d('2026-03-08T05:00:00Z'))).toEqual(d('2026-03-08T07:00:00Z'));
    expect(isoList(nextRuns('30 1 * * *', 'America/New_York', d('2026-11-01T04:00:00Z'), 2))).toEqual([
      '2026-11-01T05:30:00.000Z', // 01:30 EDT; not again at 01:30 EST
      '2026-11-02T06:30:00.000Z',
    ]);
  });
});

describe('dueSlot', () => {
  const since = d('2026-01-01T00:00:00Z');

  it('gives the latest slot at or before now, as an ISO UTC string', () => {
    expect(dueSlot('0 3 * * *', 'UTC', null, d('2026-11-25T03:00:30Z'), d('2026-11-24T12:00:00Z'))).toEqual({
      slot: '2026-11-25T03:00:00.000Z',
      at: d('2026-11-25T03:00:00Z'),
      missed: 0,
    });
    // Exactly at the slot counts.
    expect(dueSlot('0 3 * * *', 'UTC', '2026-11-24T03:00:00.000Z', d('2026-11-25T03:00:00Z'), since)?.slot).toBe('2026-11-25T03:00:00.000Z');
  });

  it('the slot is the same whenever it is computed before the next one, so it can be claimed once', () => {
    const a = dueSlot('*/15 * * * *', 'Europe/Berlin', '2026-11-25T10:00:00.000Z', d('2026-11-25T10:15:01Z'), since);
    const b = dueSlot('*/15 * * * *', 'Europe/Berlin', '2026-11-25T10:00:00.000Z', d('2026-11-25T10:29:59.999Z'), since);
    expect(a?.slot).toBe('2026-11-25T10:15:00.000Z');
    expect(b?.slot).toBe(a?.slot);
    // Once taken, nothing is due until the next slot.
    expect(dueSlot('*/15 * * * *', 'Europe/Berlin', a!.slot, d('2026-11-25T10:29:59Z'), since)).toBeNull();
  });

  it('a host that was off for three days catches up once, with the latest slot', () => {
    const due = dueSlot('@hourly', 'UTC', '2026-11-22T10:00:00.000Z', d('2026-11-25T10:20:00Z'), since);
    expect(due).toEqual({ slot: '2026-11-25T10:00:00.000Z', at: d('2026-11-25T10:00:00Z'), missed: 71 });
    expect(dueSlot('@hourly', 'UTC', due!.slot, d('2026-11-25T10:59:00Z'), since)).toBeNull();
  });

  it(`counts at most ${MISSED_COUNT_LIMIT} missed slots`, () => {
    const due = dueSlot('* * * * *', 'UTC', '2026-10-01T00:00:00.000Z', d('2026-11-25T10:20:00Z'), since);
    expect(due?.slot).toBe('2026-11-25T10:20:00.000Z');
    expect(due?.missed).toBe(MISSED_COUNT_LIMIT);
  });

  it('a new policy does not fire for a slot before it was set', () => {
    const set = d('2026-11-25T03:10:00Z');
    expect(dueSlot('0 3 * * *', 'UTC', null, d('2026-11-25T03:20:00Z'), set)).toBeNull();
    expect(dueSlot('0 3 * * *', 'UTC', null, d('2026-11-26T03:00:05Z'), set)).toEqual({ slot: '2026-11-26T03:00:00.000Z', at: d('2026-11-26T03:00:00Z'), missed: 0 });
    // Set exactly at a slot: that slot is due.
    expect(dueSlot('0 3 * * *', 'UTC', null, d('2026-11-25T03:00:05Z'), d('2026-11-25T03:00:00Z'))?.slot).toBe('2026-11-25T03:00:00.000Z');
    // Set long ago and never run (the host was off): the latest slot, once, and the count of the others since it was set.
    expect(dueSlot('0 3 * * *', 'UTC', null, d('2026-11-25T12:00:00Z'), d('2026-11-20T12:00:00Z'))).toMatchObject({ slot: '2026-11-25T03:00:00.000Z', missed: 4 });
  });

  it('a changed schedule does not fire for its own past slots', () => {
    // Was daily at 03:00 (last taken today 03:00); set to hourly at 09:30.
    const changed = d('2026-11-25T09:30:00Z');
    expect(dueSlot('@hourly', 'UTC', '2026-11-25T03:00:00.000Z', d('2026-11-25T09:31:00Z'), changed)).toBeNull();
    expect(dueSlot('@hourly', 'UTC', '2026-11-25T03:00:00.000Z', d('2026-11-25T10:00:10Z'), changed)).toMatchObject({ slot: '2026-11-25T10:00:00.000Z', missed: 0 });
  });

  it('if the clock went back behind the last slot, nothing is due until it passes it', () => {
    expect(dueSlot('@hourly', 'UTC', '2026-11-25T12:00:00.000Z', d('2026-11-25T11:30:00Z'), since)).toBeNull();
    expect(dueSlot('@hourly', 'UTC', '2026-11-25T12:00:00.000Z', d('2026-11-25T12:59:00Z'), since)).toBeNull();
    expect(dueSlot('@hourly', 'UTC', '2026-11-25T12:00:00.000Z', d('2026-11-25T13:00:00Z'), since)?.slot).toBe('2026-11-25T13:00:00.000Z');
  });

  it('DST fall back: the two 02:00 of an hourly schedule are two slots', () => {
    const first = dueSlot('@hourly', 'Europe/Berlin', '2026-10-24T23:00:00.000Z', d('2026-10-25T00:30:00Z'), since);
    expect(first?.slot).toBe('2026-10-25T00:00:00.000Z'); // 02:00 CEST
    const second = dueSlot('@hourly', 'Europe/Berlin', first!.slot, d('2026-10-25T01:30:00Z'), since);
    expect(second?.slot).toBe('2026-10-25T01:00:00.000Z'); // 02:00 CET
  });

  it('DST spring forward: a daily 02:30 is due at 03:00 CEST', () => {
    expect(dueSlot('30 2 * * *', 'Europe/Berlin', '2026-03-28T01:30:00.000Z', d('2026-03-29T00:59:00Z'), since)).toBeNull();
    expect(dueSlot('30 2 * * *', 'Europe/Berlin', '2026-03-28T01:30:00.000Z', d('2026-03-29T01:05:00Z'), since)?.slot).toBe('2026-03-29T01:00:00.000Z');
  });

  it('refuses a bad last slot, a bad schedule, a bad zone', () => {
    expect(caught(() => dueSlot('@hourly', 'UTC', 'yesterday', d('2026-11-25T10:00:00Z'), since)).message).toMatch(/last slot 'yesterday' is not an ISO time/);
    expect(caught(() => dueSlot('61 * * * *', 'UTC', null, d('2026-11-25T10:00:00Z'), since)).message).toMatch(/minute field/);
    expect(caught(() => dueSlot('@hourly', 'Nowhere/City', null, d('2026-11-25T10:00:00Z'), since)).message).toMatch(/unknown time zone/);
  });

  it('latestSlot is the latest slot at or before a time', () => {
    expect(latestSlot('0 3 * * *', 'UTC', d('2026-11-25T02:59:59Z'))).toEqual(d('2026-11-24T03:00:00Z'));
    expect(latestSlot('0 3 * * *', 'UTC', d('2026-11-25T03:00:00Z'))).toEqual(d('2026-11-25T03:00:00Z'));
  });
});
