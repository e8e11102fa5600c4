import { describe, expect, it } from 'vitest';
import { isVmsnapError } from '../errors.js';
import { describeRules, planRetention, validateRetentionRules, type RetentionPlan, type RetentionRules, type RetentionSnapshot } from './retention.js';
import { localParts } from './timezone.js';

const MIN = 60_000;
const HOUR = 60 * MIN;
const DAY = 24 * HOUR;
const GiB = 1024 ** 3;

function pol(id: string, createdAt: string | Date, extra: Partial<RetentionSnapshot> = {}): RetentionSnapshot {
  return { id, name: id, createdAt, owner: 'policy', protected: false, bytes: GiB, ...extra };
}

function man(id: string, createdAt: string | Date, extra: Partial<RetentionSnapshot> = {}): RetentionSnapshot {
  return pol(id, createdAt, { owner: 'manual', ...extra });
}

/** Policy snapshots every `stepMs` from `from` (inclusive) to `to` (inclusive), ids = ISO times. */
function series(from: string, to: string, stepMs: number, extra: Partial<RetentionSnapshot> = {}): RetentionSnapshot[] {
  const out: RetentionSnapshot[] = [];
  for (let t = Date.parse(from); t <= Date.parse(to); t += stepMs) {
    const iso = new Date(t).toISOString();
    out.push(pol(iso, iso, extra));
  }
  return out;
}

const kept = (p: RetentionPlan): string[] => p.keep.map((k) => k.id);
const removed = (p: RetentionPlan): string[] => p.remove.map((r) => r.id);
const reasonsOf = (p: RetentionPlan, id: string): string[] => p.keep.find((k) => k.id === id)?.reasons ?? [];
const iso = (s: string): string => new Date(s).toISOString();

function plan(snaps: RetentionSnapshot[], rules: RetentionRules, timeZone = 'UTC', now = '2030-01-01T00:00:00Z'): RetentionPlan {
  return planRetention(snaps, rules, { now: new Date(now), timeZone });
}

function expectInvalid(fn: () => unknown, message: RegExp): void {
  try {
    fn();
  } catch (e) {
    expect(isVmsnapError(e) && e.code).toBe('INVALID_ARGUMENT');
    expect((e as Error).message).toMatch(message);
    return;
  }
  expect.unreachable('no error thrown');
}

describe("restic's documented examples (doc/060_forget.rst)", () => {
  // "Suppose you have made backups every weekday for the past two weeks, and on
  // Fridays, you make an additional backup ... you missed making a backup last
  // Wednesday. Then forget --keep-daily 5 will keep only one snapshot per day for
  // the last five days that had a snapshot." The doc's tables print times in the
  // local zone; we read them in UTC. (Its keep table prints the id 8a603ddf beside
  // 2025-04-25 23:00, the time of ae33bf10 in its listing; we go by the times.)
  const timeline: [id: string, time: string, restic: 'keep' | 'remove'][] = [
    ['60e5c031', '2025-04-21 11:00:00', 'remove'],
    ['1dccffe9', '2025-04-22 11:00:00', 'remove'],
    ['90a5c949', '2025-04-23 11:00:00', 'remove'],
    ['79580708', '2025-04-24 11:00:00', 'remove'],
    ['8a603ddf', '2025-04-25 11:00:00', 'remove'],
    ['ae33bf10', '2025-04-25 23:00:00', 'keep'],
    ['fb8b1418', '2025-04-28 11:00:00', 'keep'],
    ['1db188b4', '2025-04-29 11:00:00', 'keep'],
    ['7baa4f28', '2025-05-01 11:00:00', 'keep'],
    ['05c48af3', '2025-05-02 11:00:00', 'remove'],
    ['ad72e262', '2025-05-02 23:00:00', 'keep'],
  ];
  const snaps = timeline.map(([id, t]) => pol(id, `${t.replace(' ', 'T')}Z`));

  it.each(timeline)('--keep-daily 5: %s at %s → %s', (id, _time, restic) => {
    const p = plan(snaps, { keepDaily: 5 }, 'UTC', '2025-05-03T00:00:00Z');
    expect(restic === 'keep' ? kept(p) : removed(p)).toContain(id);
  });

  it('--keep-daily 5 keeps 5 and removes 6, with daily reasons', () => {
    const p = plan(snaps, { keepDaily: 5 }, 'UTC', '2025-05-03T00:00:00Z');
    expect(kept(p)).toEqual(['ad72e262', '7baa4f28', '1db188b4', 'fb8b1418', 'ae33bf10']);
    expect(p.remove).toHaveLength(6);
    expect(reasonsOf(p, 'ae33bf10')).toEqual(['daily 2025-04-25']);
    expect(p.remove.every((r) => r.cause === 'retention' && r.reason === 'no rule keeps it (keep-daily 5)')).toBe(true);
  });

  it('one backup a day for 100 years: --keep-daily 7 --keep-weekly 5 --keep-monthly 12 --keep-yearly 75', () => {
    // "would keep the most recent 7 daily snapshots and 4 last-day-of-the-week ones (since the 7
    // dailies already include 1 weekly). Additionally, 12 or 11 last-day-of-the-month snapshots
    // ... And finally 75 or 74 last-day-of-the-year snapshots".
    // The newest is a Sunday, so the 7 dailies (Monday to Sunday) hold exactly one weekly, as the doc assumes.
    const snaps100 = series('1930-06-02T12:00:00Z', '2030-06-02T12:00:00Z', DAY);
    const p = plan(snaps100, { keepDaily: 7, keepWeekly: 5, keepMonthly: 12, keepYearly: 75 }, 'UTC', '2030-06-03T00:00:00Z');
    const count = (prefix: string): number => p.keep.filter((k) => k.reasons.some((r) => r.startsWith(prefix))).length;
    const only = (prefix: string): number => p.keep.filter((k) => k.reasons.every((r) => r.startsWith(prefix))).length;
    expect([count('daily '), count('weekly '), count('monthly '), count('yearly ')]).toEqual([7, 5, 12, 75]);
    expect(only('weekly ')).toBe(4);
    // The doc's "12 or 11" monthlies are loose: here 9 are monthly only, as June 2 and May 31 are
    // dailies and 2029-12-31 is also a yearly; 73 are yearly only (June 2 and 2029-12-31 are not).
    expect(only('monthly ')).toBe(9);
    expect(only('yearly ')).toBe(73);
    expect(reasonsOf(p, iso('2029-12-31T12:00:00Z'))).toEqual(['monthly 2029-12', 'yearly 2029']);
    expect(p.keep).toHaveLength(7 + 4 + 9 + 73 + 1);
    expect(p.keep.some((k) => k.reasons.some((r) => r.startsWith('oldest')))).toBe(false);
  });
});

describe('GFS periods', () => {
  it('hourly: the newest snapshot of each of the last N hours', () => {
    const snaps = series('2026-11-25T10:00:00Z', '2026-11-25T14:40:00Z', 20 * MIN);
    const p = plan(snaps, { keepHourly: 3 });
    expect(kept(p)).toEqual([iso('2026-11-25T14:40:00Z'), iso('2026-11-25T13:40:00Z'), iso('2026-11-25T12:40:00Z')]);
    expect(reasonsOf(p, iso('2026-11-25T13:40:00Z'))).toEqual(['hourly 2026-11-25 13:00']);
  });

  it('periods are counted only when they have a snapshot (gaps do not use up the count)', () => {
    const snaps = [pol('a', '2026-11-01T10:00:00Z'), pol('b', '2026-11-10T10:00:00Z'), pol('c', '2026-11-20T10:00:00Z'), pol('d', '2026-11-20T09:00:00Z')];
    const p = plan(snaps, { keepDaily: 3 });
    expect(kept(p)).toEqual(['c', 'b', 'a']);
    expect(removed(p)).toEqual(['d']);
  });

  it("daily: days are the policy zone's days", () => {
    const snaps = [pol('old', '2026-11-24T12:00:00Z'), pol('a', '2026-11-25T21:00:00Z'), pol('b', '2026-11-25T22:30:00Z'), pol('c', '2026-11-25T23:30:00Z')];
    // UTC: b and c are both on the 25th.
    expect(kept(plan(snaps, { keepDaily: 2 }, 'UTC'))).toEqual(['c', 'old']);
    // Berlin (UTC+1): c is 00:30 on the 26th, b 23:30 on the 25th.
    const berlin = plan(snaps, { keepDaily: 2 }, 'Europe/Berlin');
    expect(kept(berlin)).toEqual(['c', 'b']);
    expect(reasonsOf(berlin, 'c')).toEqual(['daily 2026-11-26']);
  });

  it('weekly: ISO weeks (Monday to Sunday) across the turn of the year', () => {
    const snaps = series('2026-12-20T12:00:00Z', '2027-01-10T12:00:00Z', DAY);
    const p = plan(snaps, { keepWeekly: 3 });
    expect(p.keep.map((k) => [k.id.slice(0, 10), k.reasons])).toEqual([
      ['2027-01-10', ['weekly 2027-W01']],
      ['2027-01-03', ['weekly 2026-W53']],
      ['2026-12-27', ['weekly 2026-W52']],
    ]);
  });

  it('Dec 31 and Jan 1 share an ISO week but not a year', () => {
    const snaps = [pol('dec31', '2026-12-31T12:00:00Z'), pol('jan1', '2027-01-01T12:00:00Z')];
    expect(kept(plan(snaps, { keepWeekly: 1 }))).toEqual(['jan1']);
    const weekly2 = plan(snaps, { keepWeekly: 2 });
    // Only one week has snapshots: keep-weekly 2 has count left, so the oldest is kept too (as restic does).
    expect(reasonsOf(weekly2, 'dec31')).toEqual(['oldest (keep-weekly 2 found only 1 week)']);
    const yearly = plan(snaps, { keepYearly: 2 });
    expect(reasonsOf(yearly, 'jan1')).toEqual(['yearly 2027']);
    expect(reasonsOf(yearly, 'dec31')).toEqual(['yearly 2026']);
  });

  it('2021-01-01 belongs to 2020-W53; 2024-12-30 to 2025-W01', () => {
    expect(reasonsOf(plan([pol('x', '2021-01-01T12:00:00Z')], { keepWeekly: 1 }), 'x')).toEqual(['weekly 2020-W53']);
    expect(reasonsOf(plan([pol('x', '2024-12-30T12:00:00Z')], { keepWeekly: 1 }), 'x')).toEqual(['weekly 2025-W01']);
  });

  it('monthly and yearly: the last snapshot of each month and year', () => {
    const snaps = series('2024-06-01T12:00:00Z', '2026-03-15T12:00:00Z', DAY);
    const p = plan(snaps, { keepMonthly: 3, keepYearly: 3 });
    expect(p.keep.map((k) => [k.id.slice(0, 10), k.reasons])).toEqual([
      ['2026-03-15', ['monthly 2026-03', 'yearly 2026']],
      ['2026-02-28', ['monthly 2026-02']],
      ['2026-01-31', ['monthly 2026-01']],
      ['2025-12-31', ['yearly 2025']],
      ['2024-12-31', ['yearly 2024']],
    ]);
  });

  it('monthly in a zone: the last snapshot before local midnight of the 1st', () => {
    // 2026-10-31T23:30Z is already November in Berlin (UTC+1).
    const snaps = [pol('oct', '2026-10-31T22:30:00Z'), pol('nov', '2026-10-31T23:30:00Z'), pol('nov2', '2026-11-02T10:00:00Z')];
    expect(kept(plan(snaps, { keepMonthly: 2 }, 'Europe/Berlin'))).toEqual(['nov2', 'oct']);
    expect(kept(plan(snaps, { keepMonthly: 2 }, 'UTC'))).toEqual(['nov2', 'nov']);
  });
});

describe('keep-last and unions', () => {
  it('keep-last keeps the N newest whatever the gaps', () => {
    const snaps = [pol('a', '2020-01-01T00:00:00Z'), pol('b', '2026-01-01T00:00:00Z'), pol('c', '2026-11-01T00:00:00Z'), pol('d', '2026-11-01T00:05:00Z')];
    const p = plan(snaps, { keepLast: 3 });
    expect(kept(p)).toEqual(['d', 'c', 'b']);
    expect(p.keep.map((k) => k.reasons[0])).toEqual(['last 1 of 3', 'last 2 of 3', 'last 3 of 3']);
    expect(removed(p)).toEqual(['a']);
  });

  it('a snapshot kept by any rule is kept, with every reason', () => {
    const snaps = series('2026-11-20T00:00:00Z', '2026-11-25T12:00:00Z', 6 * HOUR);
    const p = plan(snaps, { keepLast: 2, keepHourly: 2, keepDaily: 3 });
    expect(reasonsOf(p, iso('2026-11-25T12:00:00Z'))).toEqual(['last 1 of 2', 'hourly 2026-11-25 12:00', 'daily 2026-11-25']);
    expect(reasonsOf(p, iso('2026-11-25T06:00:00Z'))).toEqual(['last 2 of 2', 'hourly 2026-11-25 06:00']);
    expect(reasonsOf(p, iso('2026-11-24T18:00:00Z'))).toEqual(['daily 2026-11-24']);
    expect(reasonsOf(p, iso('2026-11-23T18:00:00Z'))).toEqual(['daily 2026-11-23']);
    expect(p.keep).toHaveLength(4);
  });

  it('a rule with count left keeps the oldest snapshot too, as restic does', () => {
    const snaps = series('2026-11-23T01:00:00Z', '2026-11-25T23:00:00Z', 2 * HOUR);
    const p = plan(snaps, { keepDaily: 7 });
    expect(kept(p)).toEqual([iso('2026-11-25T23:00:00Z'), iso('2026-11-24T23:00:00Z'), iso('2026-11-23T23:00:00Z'), iso('2026-11-23T01:00:00Z')]);
    expect(reasonsOf(p, iso('2026-11-23T01:00:00Z'))).toEqual(['oldest (keep-daily 7 found only 3 days)']);
  });

  it('the newest policy snapshot is always kept by any keep rule', () => {
    for (const rules of [{ keepLast: 1 }, { keepHourly: 1 }, { keepDaily: 1 }, { keepWeekly: 1 }, { keepMonthly: 1 }, { keepYearly: 1 }]) {
      const snaps = series('2026-01-01T00:00:00Z', '2026-03-01T00:00:00Z', 7 * HOUR);
      const p = plan(snaps, rules);
      expect(p.keep[0]!.id).toBe(snaps.at(-1)!.id);
    }
  });

  it('no keep rule at all keeps every snapshot', () => {
    const snaps = series('2026-11-01T00:00:00Z', '2026-11-02T00:00:00Z', HOUR);
    const p = plan(snaps, {});
    expect(p.remove).toEqual([]);
    expect(p.keep.every((k) => k.reasons[0] === 'no keep rules: keeps every snapshot')).toBe(true);
  });
});

describe('DST', () => {
  it('Europe/Berlin spring forward: the day has 23 hourly periods and no 02:00', () => {
    // 2026-03-29 02:00 CET → 03:00 CEST. Hourly snapshots on the hour in UTC.
    const snaps = series('2026-03-28T12:00:00Z', '2026-03-29T21:00:00Z', HOUR);
    const p = plan(snaps, { keepHourly: 23 }, 'Europe/Berlin');
    expect(p.keep).toHaveLength(23);
    // Exactly the snapshots of Sunday the 29th, local time: 00:00 CET (23:00Z on the 28th) to 23:00 CEST (21:00Z).
    expect(p.keep.every((k) => localParts(new Date(k.createdAt), 'Europe/Berlin').day === 29)).toBe(true);
    const labels = p.keep.map((k) => k.reasons[0]);
    expect(labels).toContain('hourly 2026-03-29 01:00');
    expect(labels).toContain('hourly 2026-03-29 03:00');
    expect(labels).not.toContain('hourly 2026-03-29 02:00');
    expect(plan(snaps, { keepDaily: 2 }, 'Europe/Berlin').keep.map((k) => k.reasons)).toEqual([['daily 2026-03-29'], ['daily 2026-03-28']]);
  });

  it('Europe/Berlin fall back: the repeated hour 02:00-03:00 is one hourly period (as restic, borg and Proxmox)', () => {
    // 2026-10-25 03:00 CEST → 02:00 CET. Every 30 minutes in UTC.
    const snaps = series('2026-10-24T23:00:00Z', '2026-10-25T03:00:00Z', 30 * MIN);
    const p3 = plan(snaps, { keepHourly: 3 }, 'Europe/Berlin');
    expect(p3.keep.map((k) => [k.id, k.reasons[0]])).toEqual([
      [iso('2026-10-25T03:00:00Z'), 'hourly 2026-10-25 04:00'],
      [iso('2026-10-25T02:30:00Z'), 'hourly 2026-10-25 03:00'],
      [iso('2026-10-25T01:30:00Z'), 'hourly 2026-10-25 02:00'], // 02:30 CET, the second pass
    ]);
    // The next period back is 01:00 CEST: 02:00 and 02:30 CEST (00:00Z, 00:30Z) are in the 02:00 period already kept.
    const p4 = plan(snaps, { keepHourly: 4 }, 'Europe/Berlin');
    expect(p4.keep.map((k) => k.id).at(-1)).toBe(iso('2026-10-24T23:30:00Z'));
    expect(kept(p4)).not.toContain(iso('2026-10-25T00:30:00Z'));
  });

  it('Europe/Berlin: the 25-hour day is one daily period', () => {
    const snaps = series('2026-10-24T22:00:00Z', '2026-10-25T22:59:00Z', HOUR); // 00:00 CEST to 23:00 CET on the 25th
    expect(snaps).toHaveLength(25);
    const p = plan(snaps, { keepDaily: 1 }, 'Europe/Berlin');
    expect(kept(p)).toEqual([iso('2026-10-25T22:00:00Z')]);
    expect(p.remove).toHaveLength(24);
  });

  it('America/New_York fall back: 01:00 EDT and 01:00 EST are one hourly period', () => {
    // 2026-11-01 02:00 EDT → 01:00 EST.
    const snaps = [pol('edt', '2026-11-01T05:10:00Z'), pol('est', '2026-11-01T06:10:00Z'), pol('before', '2026-11-01T04:10:00Z')];
    const p = plan(snaps, { keepHourly: 2 }, 'America/New_York');
    expect(p.keep.map((k) => [k.id, k.reasons[0]])).toEqual([
      ['est', 'hourly 2026-11-01 01:00'],
      ['before', 'hourly 2026-11-01 00:00'],
    ]);
    expect(removed(p)).toEqual(['edt']);
  });

  it('America/New_York spring forward: 01:30 EST is followed by 03:30 EDT', () => {
    // 2026-03-08 02:00 EST → 03:00 EDT.
    const snaps = [pol('a', '2026-03-08T06:30:00Z'), pol('b', '2026-03-08T07:30:00Z')];
    const p = plan(snaps, { keepHourly: 2 }, 'America/New_York');
    expect(p.keep.map((k) => k.reasons[0])).toEqual(['hourly 2026-03-08 03:00', 'hourly 2026-03-08 01:00']);
    // A weekly period in New York ends at local midnight between Sunday and Monday.
    const w = [pol('sun', '2026-03-09T03:30:00Z'), pol('mon', '2026-03-09T04:30:00Z')]; // 23:30 EDT Sunday, 00:30 EDT Monday
    expect(plan(w, { keepWeekly: 2 }, 'America/New_York').keep.map((k) => k.reasons[0])).toEqual(['weekly 2026-W11', 'weekly 2026-W10']);
  });
});

describe('manual, protected, expired', () => {
  const now = '2026-11-25T12:00:00Z';

  it('manual snapshots are kept and take no GFS slot', () => {
    const snaps = [pol('p1', '2026-11-25T09:00:00Z'), pol('p2', '2026-11-25T10:00:00Z'), man('m', '2026-11-25T11:00:00Z')];
    const p = plan(snaps, { keepLast: 1 }, 'UTC', now);
    expect(reasonsOf(p, 'm')).toEqual(['manual (no expiry)']);
    expect(reasonsOf(p, 'p2')).toEqual(['last 1 of 1']);
    expect(removed(p)).toEqual(['p1']);
  });

  it('a manual snapshot with an expiry is kept until it passes, then removed', () => {
    const snaps = [man('future', '2026-11-20T00:00:00Z', { expiresAt: '2026-12-01T10:00:00Z' }), man('past', '2026-11-20T00:00:00Z', { expiresAt: '2026-11-24T10:00:00Z', bytes: 3 * GiB })];
    const p = plan(snaps, {}, 'UTC', now);
    expect(reasonsOf(p, 'future')).toEqual(['manual (expires 2026-12-01T10:00Z)']);
    expect(p.remove).toEqual([{ id: 'past', name: 'past', createdAt: iso('2026-11-20T00:00:00Z'), cause: 'expired', reason: 'expired 2026-11-24T10:00Z', bytes: 3 * GiB }]);
    expect(p.freedBytes).toBe(3 * GiB);
  });

  it('an expiry exactly now has passed; seconds show in the label when set', () => {
    const p = plan([man('m', '2026-11-20T00:00:00Z', { expiresAt: '2026-11-25T12:00:00Z' }), man('s', '2026-11-20T00:00:00Z', { expiresAt: '2026-11-25T11:59:30Z' })], {}, 'UTC', now);
    // Equal creation times: the larger id counts as newer and is listed first.
    expect(p.remove.map((r) => r.reason)).toEqual(['expired 2026-11-25T11:59:30Z', 'expired 2026-11-25T12:00Z']);
  });

  it('protected snapshots are never removed, even expired, and take no GFS slot', () => {
    const snaps = [
      pol('p1', '2026-11-25T08:00:00Z'),
      pol('p2', '2026-11-25T09:00:00Z'),
      pol('p3', '2026-11-25T10:00:00Z', { protected: true }),
      man('m', '2026-11-20T00:00:00Z', { protected: true, expiresAt: '2026-11-21T00:00:00Z' }),
    ];
    const p = plan(snaps, { keepLast: 1 }, 'UTC', now);
    expect(reasonsOf(p, 'p3')).toEqual(['protected']);
    expect(reasonsOf(p, 'm')).toEqual(['protected', 'expired 2026-11-21T00:00Z, kept while protected']);
    expect(reasonsOf(p, 'p2')).toEqual(['last 1 of 1']);
    expect(removed(p)).toEqual(['p1']);
  });

  it('an expired policy snapshot is removed and takes no GFS slot', () => {
    const snaps = [pol('p1', '2026-11-25T09:00:00Z'), pol('p2', '2026-11-25T10:00:00Z', { expiresAt: '2026-11-25T11:00:00Z' })];
    const p = plan(snaps, { keepLast: 1 }, 'UTC', now);
    expect(p.remove.map((r) => [r.id, r.cause])).toEqual([['p2', 'expired']]);
    expect(reasonsOf(p, 'p1')).toEqual(['last 1 of 1']);
  });

  it('a policy snapshot dated after now (clock went back) is kept and takes no slot', () => {
    const snaps = [pol('p1', '2026-11-25T10:00:00Z'), pol('p2', '2026-11-25T11:00:00Z'), pol('future', '2026-11-26T10:00:00Z')];
    const p = plan(snaps, { keepLast: 1 }, 'UTC', now);
    expect(reasonsOf(p, 'future')).toEqual(['created in the future (2026-11-26T10:00Z): clock went back?']);
    expect(reasonsOf(p, 'p2')).toEqual(['last 1 of 1']);
    expect(removed(p)).toEqual(['p1']);
  });
});

describe('max-bytes', () => {
  const now = '2026-12-01T00:00:00Z';
  const daily = (): RetentionSnapshot[] => series('2026-11-21T03:00:00Z', '2026-11-30T03:00:00Z', DAY); // 10 × 1 GiB

  it('removes the oldest policy snapshots while the total is over the limit', () => {
    const snaps = [...daily(), man('m', '2026-11-01T00:00:00Z', { bytes: 2 * GiB })]; // 12 GiB in all
    const p = plan(snaps, { keepDaily: 10, maxBytes: 8 * GiB }, 'UTC', now);
    expect(p.remove.map((r) => [r.id.slice(0, 10), r.cause, r.reason]).reverse()).toEqual([
      ['2026-11-21', 'max-bytes', 'max-bytes: oldest policy snapshot while 12 GiB > 8.0 GiB'],
      ['2026-11-22', 'max-bytes', 'max-bytes: oldest policy snapshot while 11 GiB > 8.0 GiB'],
      ['2026-11-23', 'max-bytes', 'max-bytes: oldest policy snapshot while 10 GiB > 8.0 GiB'],
      ['2026-11-24', 'max-bytes', 'max-bytes: oldest policy snapshot while 9.0 GiB > 8.0 GiB'],
    ]);
    expect(p.freedBytes).toBe(4 * GiB);
    expect(p.warnings).toEqual([]);
  });

  it('runs after the keep rules: snapshots they remove are not counted', () => {
    const p = plan(daily(), { keepLast: 5, maxBytes: 4 * GiB }, 'UTC', now);
    expect(p.remove.filter((r) => r.cause === 'retention')).toHaveLength(5);
    expect(p.remove.filter((r) => r.cause === 'max-bytes').map((r) => r.id.slice(0, 10))).toEqual(['2026-11-26']);
    expect(p.keep).toHaveLength(4);
  });

  it('never removes a protected snapshot, a manual one, or the newest policy snapshot; says when the limit cannot be met', () => {
    const snaps = [...daily(), man('m', '2026-11-01T00:00:00Z', { bytes: 5 * GiB })];
    snaps[3] = { ...snaps[3]!, protected: true };
    const p = plan(snaps, { maxBytes: 1 }, 'UTC', now);
    expect(kept(p).sort()).toEqual([iso('2026-11-24T03:00:00Z'), iso('2026-11-30T03:00:00Z'), 'm'].sort());
    expect(p.remove).toHaveLength(8);
    expect(p.warnings).toEqual(['max-bytes 1 B cannot be met: 7.0 GiB remain in snapshots that the policy may not delete (manual, protected, or its newest)']);
  });

  it('when the newest policy snapshot is protected, the newest unprotected one may go', () => {
    const snaps = [pol('a', '2026-11-28T00:00:00Z'), pol('b', '2026-11-29T00:00:00Z'), pol('c', '2026-11-30T00:00:00Z', { protected: true })];
    const p = plan(snaps, { maxBytes: GiB }, 'UTC', now);
    expect(kept(p)).toEqual(['c']);
  });

  it('a policy snapshot dated in the future does not make the newest real one prunable', () => {
    const snaps = [pol('a', '2026-11-28T00:00:00Z'), pol('b', '2026-11-29T00:00:00Z'), pol('future', '2026-12-05T00:00:00Z')];
    const p = plan(snaps, { maxBytes: GiB }, 'UTC', now);
    expect(kept(p)).toEqual(['future', 'b']);
    expect(removed(p)).toEqual(['a']);
    expect(p.warnings).toHaveLength(1);
  });

  it('snapshots of unknown or zero size are neither counted nor removed, with a warning', () => {
    const snaps = [pol('a', '2026-11-27T00:00:00Z', { bytes: null }), pol('b', '2026-11-28T00:00:00Z', { bytes: 0 }), pol('c', '2026-11-29T00:00:00Z'), pol('d', '2026-11-30T00:00:00Z')];
    const p = plan(snaps, { maxBytes: GiB }, 'UTC', now);
    expect(removed(p)).toEqual(['c']);
    expect(p.warnings).toEqual(['the size of some snapshots is unknown: max-bytes counts them as 0 and never deletes them']);
    expect(p.remove[0]!.bytes).toBe(GiB);
  });

  it('shows exact bytes when rounding would make the total look equal to the limit', () => {
    const p = plan([pol('a', '2026-11-29T00:00:00Z', { bytes: 1024 }), pol('b', '2026-11-30T00:00:00Z', { bytes: 8 * GiB })], { maxBytes: 8 * GiB }, 'UTC', now);
    expect(p.remove.map((r) => r.reason)).toEqual([`max-bytes: oldest policy snapshot while ${8 * GiB + 1024} B > ${8 * GiB} B`]);
  });

  it('does nothing under the limit', () => {
    const p = plan(daily(), { maxBytes: 10 * GiB }, 'UTC', now);
    expect(p.remove).toEqual([]);
    expect(p.freedBytes).toBe(0);
  });
});

describe('validation and determinism', () => {
  it.each([
    [{ keepDaily: 0 }, /^--keep-daily must be a whole number of 1 or more \(got 0\)$/],
    [{ keepLast: -1 }, /--keep-last .*got -1/],
    [{ keepWeekly: 1.5 }, /--keep-weekly .*got 1.5/],
    [{ keepMonthly: Number.NaN }, /--keep-monthly .*got NaN/],
    [{ keepYearly: Number.POSITIVE_INFINITY }, /--keep-yearly .*got Infinity/],
    [{ keepHourly: '3' as unknown as number }, /--keep-hourly .*got 3/],
    [{ maxBytes: 0 }, /^--max-bytes must be a size above 0 \(got 0\)$/],
    [{ maxBytes: -5 }, /--max-bytes/],
    [{ maxBytes: 1.5 }, /--max-bytes/],
  ])('refuses %j', (rules, message) => {
    expectInvalid(() => validateRetentionRules(rules), message);
    expectInvalid(() => plan([pol('a', '2026-01-01T00:00:00Z')], rules), message);
  });

  it('accepts absent and null rules', () => {
    expect(() => validateRetentionRules({})).not.toThrow();
    expect(() => validateRetentionRules({ keepDaily: null, maxBytes: null, keepLast: 1 })).not.toThrow();
  });

  it('refuses an unknown zone, a bad time, a duplicate id', () => {
    expectInvalid(() => plan([], {}, 'Mars/Olympus'), /unknown time zone/);
    expectInvalid(() => plan([pol('a', 'yesterday')], {}), /createdAt: 'yesterday' is not a time/);
    expectInvalid(() => plan([pol('a', '2026-01-01T00:00:00Z'), pol('a', '2026-01-02T00:00:00Z')], {}), /given twice/);
  });

  it('does not depend on input order; equal times are ordered by id', () => {
    const snaps = [...series('2026-11-01T00:00:00Z', '2026-11-03T00:00:00Z', 5 * HOUR), pol('x', '2026-11-02T20:00:00Z'), pol('y', '2026-11-02T20:00:00Z')];
    const rules = { keepLast: 2, keepDaily: 2 };
    const a = plan(snaps, rules);
    const b = plan([...snaps].reverse(), rules);
    expect(b).toEqual(a);
    // Newest: 2026-11-02T21:00Z; then y and x at 20:00, where y counts as the newer.
    expect(reasonsOf(a, 'y')).toEqual(['last 2 of 2']);
    expect(removed(a)).toContain('x');
  });

  it('accepts Date objects and lists keep and remove newest first', () => {
    const p = plan([pol('a', new Date('2026-01-01T00:00:00Z')), pol('b', new Date('2026-01-02T00:00:00Z')), pol('c', new Date('2026-01-03T00:00:00Z'))], { keepLast: 1 });
    expect(kept(p)).toEqual(['c']);
    expect(removed(p)).toEqual(['b', 'a']);
    expect(p.keep[0]!.createdAt).toBe('2026-01-03T00:00:00.000Z');
  });

  it('describes rules', () => {
    expect(describeRules({})).toBe('no rules (keeps everything)');
    expect(describeRules({ keepYearly: 2, keepLast: 3, maxBytes: 20 * GiB })).toBe('keep-last 3, keep-yearly 2, max-bytes 20 GiB');
  });
});

/** A small seeded PRNG, so a failure can be replayed. */
function mulberry32(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('properties over random timelines', () => {
  const now = new Date('2027-01-01T00:00:00Z');
  function randomCase(seed: number): { snaps: RetentionSnapshot[]; rules: RetentionRules; timeZone: string } {
    const rnd = mulberry32(seed);
    const n = 1 + Math.floor(rnd() * 60);
    const snaps: RetentionSnapshot[] = [];
    let t = Date.parse('2026-01-01T00:00:00Z');
    for (let i = 0; i < n; i++) {
      t += Math.floor(rnd() * [HOUR, DAY, 10 * DAY][Math.floor(rnd() * 3)]!);
      const owner = rnd() < 0.8 ? 'policy' : 'manual';
      snaps.push({
        id: `s${i}`,
        name: `s${i}`,
        createdAt: new Date(t),
        owner,
        protected: rnd() < 0.1,
        bytes: rnd() < 0.9 ? Math.floor(rnd() * 4 * GiB) : null,
        expiresAt: rnd() < 0.15 ? new Date(t + Math.floor(rnd() * 400 * DAY)) : null,
      });
    }
    const rules: RetentionRules = {};
    for (const k of ['keepLast', 'keepHourly', 'keepDaily', 'keepWeekly', 'keepMonthly', 'keepYearly'] as const) if (rnd() < 0.4) rules[k] = 1 + Math.floor(rnd() * 8);
    if (rnd() < 0.3) rules.maxBytes = Math.floor(rnd() * 40 * GiB) + 1;
    const timeZone = ['UTC', 'Europe/Berlin', 'America/New_York', 'Australia/Lord_Howe'][Math.floor(rnd() * 4)]!;
    return { snaps, rules, timeZone };
  }

  it('invariants hold for 250 random cases', () => {
    for (let seed = 1; seed <= 250; seed++) {
      const { snaps, rules, timeZone } = randomCase(seed);
      const p = planRetention(snaps, rules, { now, timeZone });
      const ctx = `seed ${seed}`;
      // Every snapshot is decided exactly once.
      expect([...kept(p), ...removed(p)].sort(), ctx).toEqual(snaps.map((s) => s.id).sort());
      const byId = new Map(snaps.map((s) => [s.id, s]));
      for (const r of p.remove) {
        const s = byId.get(r.id)!;
        expect(s.protected, ctx).toBe(false);
        if (s.owner === 'manual') expect(r.cause, ctx).toBe('expired');
      }
      // A policy never removes all its snapshots: the newest one that is not expired (or is protected) stays.
      const alive = (x: RetentionSnapshot): boolean => x.protected || !(x.expiresAt instanceof Date && x.expiresAt <= now);
      const newestFirst = (a: RetentionSnapshot, b: RetentionSnapshot): number => +new Date(b.createdAt) - +new Date(a.createdAt) || (a.id < b.id ? 1 : -1);
      const newestPolicy = snaps.filter((x) => x.owner === 'policy' && alive(x)).sort(newestFirst)[0];
      if (newestPolicy !== undefined) expect(kept(p), ctx).toContain(newestPolicy.id);
      // Without max-bytes, the newest unprotected one stays too (every keep rule keeps it).
      const newestUnprotected = snaps.filter((x) => x.owner === 'policy' && alive(x) && !x.protected && new Date(x.createdAt) <= now).sort(newestFirst)[0];
      if (newestUnprotected !== undefined && rules.maxBytes === undefined) expect(kept(p), ctx).toContain(newestUnprotected.id);
      expect(p.freedBytes, ctx).toBe(p.remove.reduce((n, r) => n + r.bytes, 0));
    }
  });

  it('protecting a snapshot never makes the keep rules delete another one', () => {
    for (let seed = 1; seed <= 150; seed++) {
      const { snaps, rules, timeZone } = randomCase(seed);
      delete rules.maxBytes; // max-bytes must find its bytes elsewhere when one is protected: not monotonic by design
      const base = new Set(kept(planRetention(snaps, rules, { now, timeZone })));
      const rnd = mulberry32(seed * 7919);
      for (let k = 0; k < 6; k++) {
        const i = Math.floor(rnd() * snaps.length);
        if (snaps[i]!.protected) continue;
        const withProtected = snaps.map((s, j) => (j === i ? { ...s, protected: true } : s));
        const after = new Set(kept(planRetention(withProtected, rules, { now, timeZone })));
        for (const id of base) expect(after.has(id), `seed ${seed}, protecting s${i} dropped ${id}`).toBe(true);
      }
    }
  });
});
