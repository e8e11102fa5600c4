import { describe, expect, it } from 'vitest';
import { isVmsnapError } from '../errors.js';
import { expiryFrom, formatDuration, MAX_DURATION_MS, parseDuration } from './duration.js';

const S = 1000;
const M = 60 * S;
const H = 60 * M;
const D = 24 * H;

describe('parseDuration', () => {
  it.each([
    ['1s', S],
    ['90m', 90 * M],
    ['12h', 12 * H],
    ['7d', 7 * D],
    ['2w', 14 * D],
    ['1y', 365 * D],
    ['1d12h', 36 * H],
    ['1w2d3h4m5s', 9 * D + 3 * H + 4 * M + 5 * S],
    [' 30m ', 30 * M],
    ['100y', MAX_DURATION_MS],
    ['0d1h', H],
  ])('%j is %i ms', (text, ms) => {
    expect(parseDuration(text)).toBe(ms);
  });

  it.each([
    ['', /it is empty/],
    ['   ', /it is empty/],
    ['7', /it has no unit/],
    ['1.5h', /whole numbers.*'90m'/],
    ['7D', /units are lowercase/],
    ['1M', /units are lowercase.*months/],
    ['2x', /'x' is not a unit/],
    ['3mo', /'mo' is not a unit/],
    ['12h7d', /each unit once, largest first/],
    ['1h1h', /each unit once/],
    ['0s', /above zero/],
    ['0d0h', /above zero/],
    ['-5m', /above zero/],
    ['5 m', /without spaces/],
    ['h', /'h' is not understood/],
    ['101y', /longer than 100 years/],
    ['1d+2h', /not understood/],
  ])('refuses %j', (text, message) => {
    try {
      parseDuration(text);
      expect.unreachable();
    } catch (e) {
      expect(isVmsnapError(e) && e.code).toBe('INVALID_ARGUMENT');
      expect((e as Error).message).toMatch(/^--expire: '.*' is not a duration: /);
      expect((e as Error).message).toMatch(message);
      expect(isVmsnapError(e) && e.hint).toContain("'7d'");
    }
  });

  it('names the option it parses', () => {
    expect(() => parseDuration('x', '--keep-within')).toThrow(/^--keep-within: /);
  });
});

describe('formatDuration and expiryFrom', () => {
  it('formats the shortest exact form', () => {
    expect(formatDuration(36 * H)).toBe('1d12h');
    expect(formatDuration(14 * D)).toBe('2w');
    expect(formatDuration(90 * M)).toBe('1h30m');
    expect(formatDuration(0)).toBe('0s');
    expect(formatDuration(1500)).toBe('1s');
  });

  it('round-trips', () => {
    for (const t of ['1s', '90m', '12h', '7d', '2w', '1y', '1y2w3d4h5m6s']) expect(formatDuration(parseDuration(t))).toBe(formatDuration(parseDuration(formatDuration(parseDuration(t)))));
    expect(parseDuration(formatDuration(parseDuration('1y2w3d4h5m6s')))).toBe(parseDuration('1y2w3d4h5m6s'));
  });

  it('a duration is elapsed time: 1d across a DST change is 24 hours', () => {
    expect(expiryFrom(new Date('2026-03-28T12:00:00Z'), '1d').toISOString()).toBe('2026-03-29T12:00:00.000Z');
  });
});
