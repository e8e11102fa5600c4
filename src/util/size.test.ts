import { describe, expect, it } from 'vitest';
import { VmsnapError } from '../errors.js';
import { formatBytes, parseSize } from './size.js';

describe('parseSize', () => {
  it('reads bytes and binary units, in any case, with or without B/iB and spaces', () => {
    const cases: [string, number][] = [
      ['0', 0],
      ['1048576', 1048576],
      ['512B', 512],
      ['1K', 1024],
      ['1kb', 1024],
      ['1KiB', 1024],
      ['256M', 256 * 1024 ** 2],
      ['256 MiB', 256 * 1024 ** 2],
      [' 1G ', 1024 ** 3],
      ['1.5G', 1.5 * 1024 ** 3],
      ['2TB', 2 * 1024 ** 4],
      ['0.5k', 512],
      ['1.0001K', 1024], // rounded to whole bytes
    ];
    for (const [text, bytes] of cases) expect(parseSize(text, 'disk'), text).toBe(bytes);
  });

  it('refuses anything else, naming the field and showing the accepted form', () => {
    for (const text of ['', 'lots', '1X', '1 G B', '-1G', '1e9', '0x10', '.5G', '1,5G', 'G']) {
      let e: unknown;
      try {
        parseSize(text, 'disk');
      } catch (x) {
        e = x;
      }
      expect(e, text).toBeInstanceOf(VmsnapError);
      expect(e).toMatchObject({ code: 'INVALID_ARGUMENT', message: `disk: '${text}' is not a size`, details: { field: 'disk', value: text } });
      expect((e as VmsnapError).hint).toMatch(/K, M, G or T.*e\.g\. 1G/);
    }
    expect(() => parseSize('lots', 'memory')).toThrow(expect.objectContaining({ hint: expect.stringMatching(/e\.g\. 256M$/) }));
  });
});

describe('formatBytes', () => {
  it('prints binary units with one decimal under 10', () => {
    const cases: [number, string][] = [
      [0, '0 B'],
      [1023, '1023 B'],
      [1024, '1.0 KiB'],
      [1536, '1.5 KiB'],
      [10 * 1024, '10 KiB'],
      [256 * 1024 ** 2, '256 MiB'],
      [1.5 * 1024 ** 3, '1.5 GiB'],
      [3 * 1024 ** 4, '3.0 TiB'],
      [5000 * 1024 ** 4, '5000 TiB'],
      [-2048, '-2.0 KiB'],
      [Number.NaN, '-'],
      [Number.POSITIVE_INFINITY, '-'],
    ];
    for (const [n, text] of cases) expect(formatBytes(n), String(n)).toBe(text);
  });
});
