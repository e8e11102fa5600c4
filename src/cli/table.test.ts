import stringWidth from 'string-width';
import { describe, expect, it } from 'vitest';
import { formatTable } from './table.js';

const width = stringWidth;

describe('formatTable', () => {
  it('aligns columns two spaces apart, with nothing after the last one', () => {
    const out = formatTable(['NAME', 'STATE', 'SNAPSHOTS'], [['web', 'running', 3], ['database-1', 'stopped', 12]], { width });
    expect(out).toBe(['NAME        STATE    SNAPSHOTS', 'web         running  3', 'database-1  stopped  12', ''].join('\n'));
  });

  it('measures wide characters and colour codes as the terminal shows them', () => {
    const out = formatTable(['PATH', 'SIZE'], [['/home/日本語.txt', '1 KiB'], ['\x1b[31m/etc\x1b[39m', '-']], { width });
    const [, a, b] = out.split('\n');
    // 日本語 is six columns wide: both SIZE cells start at the same column.
    expect(width(a!.slice(0, a!.indexOf('1 KiB')))).toBe(width(b!.slice(0, b!.indexOf('-'))));
    expect(a).toBe('/home/日本語.txt  1 KiB');
  });

  it('keeps a row on one line when a cell holds a line break, and fills missing cells', () => {
    expect(formatTable(['A', 'B'], [['x\ny', 1], ['z']], { width })).toBe('A    B\nx y  1\nz\n');
  });

  it('prints the header bold for a terminal', () => {
    expect(formatTable(['A'], [['b']], { width, bold: true })).toBe('\x1b[1mA\x1b[22m\nb\n');
  });

  it('prints only the header when there are no rows', () => {
    expect(formatTable(['NAME', 'STATE'], [], { width })).toBe('NAME  STATE\n');
  });

  it("keeps a cell's own trailing spaces (a file named 'a '), and drops only padding after the last non-empty cell", () => {
    expect(formatTable(['NAME', 'SIZE'], [['a ', 1], ['b', '']], { width })).toBe('NAME  SIZE\na     1\nb\n');
    expect(formatTable(['SIZE', 'NAME'], [[1, 'a '], [22, 'b']], { width })).toBe('SIZE  NAME\n1     a \n22    b\n');
  });

  it('lays out more rows than a function call takes arguments (a big directory)', () => {
    const rows = Array.from({ length: 200_000 }, (_, i) => [String(i), 'x']);
    const out = formatTable(['N', 'V'], rows, { width });
    expect(out.split('\n')[1]).toBe('0       x');
    expect(out.split('\n').length).toBe(200_002);
  });
});
