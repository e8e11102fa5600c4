// The example timeline of the README's Policies section (README.md at the root), so the doc stays true.
import { describe, expect, it } from 'vitest';
import { DEFAULT_NAME_PATTERN, expandNamePattern } from './name-pattern.js';
import { planRetention, type RetentionSnapshot } from './retention.js';
import { nextRuns } from './schedule.js';

const MiB = 1024 ** 2;
const tz = 'Europe/Berlin';
const rules = { keepLast: 3, keepHourly: 24, keepDaily: 7, keepWeekly: 4, keepMonthly: 6 };
const now = new Date('2026-11-30T22:40:00Z'); // 23:40 in Berlin

function timeline(): RetentionSnapshot[] {
  // `vmsnap policy set web --schedule @hourly --tz Europe/Berlin` on 31 October; every slot of November taken.
  const slots = nextRuns('@hourly', tz, new Date('2026-10-31T22:59:00Z'), 24 * 30);
  const names = new Set<string>();
  const snaps: RetentionSnapshot[] = slots.map((at, i) => {
    const name = expandNamePattern(DEFAULT_NAME_PATTERN, at, tz, (n) => names.has(n));
    names.add(name);
    return { id: `p${i}`, name, createdAt: at, bytes: 150 * MiB, owner: 'policy', protected: false };
  });
  snaps.push({ id: 'm1', name: 'golden', createdAt: '2026-11-03T09:30:00Z', bytes: 512 * MiB, owner: 'manual', protected: false });
  snaps.push({ id: 'm2', name: 'before-upgrade', createdAt: '2026-11-10T13:12:00Z', bytes: 2048 * MiB, owner: 'manual', protected: true });
  snaps.push({ id: 'm3', name: 'try-kernel-6.12', createdAt: '2026-11-20T08:05:00Z', bytes: 1024 * MiB, owner: 'manual', protected: false, expiresAt: '2026-11-27T08:05:00Z' });
  return snaps;
}

describe('README example', () => {
  const snaps = timeline();
  const name = new Map(snaps.map((s) => [s.id, s.name]));

  it('prune --dry-run keeps 35 and deletes 688, freeing 102 GiB', () => {
    const p = planRetention(snaps, rules, { now, timeZone: tz });
    expect(snaps).toHaveLength(723);
    const rows = p.keep.map((k) => [name.get(k.id), k.reasons.join(', ')]);
    expect(rows.slice(0, 4)).toEqual([
      ['auto-20261130-2300', 'last 1 of 3, hourly 2026-11-30 23:00, daily 2026-11-30, weekly 2026-W49, monthly 2026-11'],
      ['auto-20261130-2200', 'last 2 of 3, hourly 2026-11-30 22:00'],
      ['auto-20261130-2100', 'last 3 of 3, hourly 2026-11-30 21:00'],
      ['auto-20261130-2000', 'hourly 2026-11-30 20:00'],
    ]);
    expect(rows.slice(23)).toEqual([
      ['auto-20261130-0000', 'hourly 2026-11-30 00:00'],
      ['auto-20261129-2300', 'daily 2026-11-29, weekly 2026-W48'],
      ['auto-20261128-2300', 'daily 2026-11-28'],
      ['auto-20261127-2300', 'daily 2026-11-27'],
      ['auto-20261126-2300', 'daily 2026-11-26'],
      ['auto-20261125-2300', 'daily 2026-11-25'],
      ['auto-20261124-2300', 'daily 2026-11-24'],
      ['auto-20261122-2300', 'weekly 2026-W47'],
      ['auto-20261115-2300', 'weekly 2026-W46'],
      ['before-upgrade', 'protected'],
      ['golden', 'manual (no expiry)'],
      ['auto-20261101-0000', 'oldest (keep-monthly 6 found only 1 month)'],
    ]);
    expect(p.keep).toHaveLength(35);
    expect(p.remove).toHaveLength(688);
    expect(p.remove.filter((r) => r.cause === 'expired').map((r) => [name.get(r.id), r.reason])).toEqual([['try-kernel-6.12', 'expired 2026-11-27T08:05Z']]);
    const first = p.remove.find((r) => r.cause === 'retention')!;
    expect([name.get(first.id), first.reason]).toEqual(['auto-20261129-2200', 'no rule keeps it (keep-last 3, keep-hourly 24, keep-daily 7, keep-weekly 4, keep-monthly 6)']);
    expect(p.freedBytes).toBe(687 * 150 * MiB + 1024 * MiB);
    expect(p.warnings).toEqual([]);
  });

  it('with --max-bytes 6G, ten more go, oldest first, and the newest hourly ones stay', () => {
    const p = planRetention(snaps, { ...rules, maxBytes: 6 * 1024 * MiB }, { now, timeZone: tz });
    const byMax = p.remove.filter((r) => r.cause === 'max-bytes').map((r) => [name.get(r.id), r.reason]).reverse();
    expect(byMax).toEqual([
      ['auto-20261101-0000', 'max-bytes: oldest policy snapshot while 7.3 GiB > 6.0 GiB'],
      ['auto-20261115-2300', 'max-bytes: oldest policy snapshot while 7.2 GiB > 6.0 GiB'],
      ['auto-20261122-2300', 'max-bytes: oldest policy snapshot while 7.0 GiB > 6.0 GiB'],
      ['auto-20261124-2300', 'max-bytes: oldest policy snapshot while 6.9 GiB > 6.0 GiB'],
      ['auto-20261125-2300', 'max-bytes: oldest policy snapshot while 6.7 GiB > 6.0 GiB'],
      ['auto-20261126-2300', 'max-bytes: oldest policy snapshot while 6.6 GiB > 6.0 GiB'],
      ['auto-20261127-2300', 'max-bytes: oldest policy snapshot while 6.5 GiB > 6.0 GiB'],
      ['auto-20261128-2300', 'max-bytes: oldest policy snapshot while 6.3 GiB > 6.0 GiB'],
      ['auto-20261129-2300', 'max-bytes: oldest policy snapshot while 6.2 GiB > 6.0 GiB'],
      ['auto-20261130-0000', `max-bytes: oldest policy snapshot while ${6 * 1024 * MiB + 16 * MiB} B > ${6 * 1024 * MiB} B`],
    ]);
    expect(p.keep).toHaveLength(25);
  });
});
