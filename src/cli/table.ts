/**
 * A plain table in the style of `docker ps` and `kubectl get`: a header row, columns left
 * aligned and two spaces apart, no borders, no padding after a row's last non-empty cell (a
 * cell's own spaces are kept). Widths are terminal columns (a CJK character takes two, an
 * ANSI colour code none): `width` measures them (string-width, given by the caller so that
 * this module loads nothing). A line break inside a cell is shown as a space: it would break
 * every column after it.
 */
export function formatTable(
  head: string[],
  rows: (string | number)[][],
  opts: { width: (text: string) => number; bold?: boolean },
): string {
  const cells = [head, ...rows].map((r) => head.map((_, i) => String(r[i] ?? '').replace(/[ \t]*[\r\n]+[ \t]*/g, ' ')));
  // A loop, not Math.max(...column): a directory listing can have more rows than a call has room for arguments.
  const widths = head.map(() => 0);
  for (const r of cells) r.forEach((c, i) => (widths[i] = Math.max(widths[i]!, opts.width(c))));
  const lines = cells.map((r) => {
    let last = r.length - 1;
    while (last > 0 && r[last] === '') last--;
    return r
      .slice(0, last + 1)
      .map((c, i) => (i === last ? c : c + ' '.repeat(widths[i]! - opts.width(c) + 2)))
      .join('');
  });
  if (opts.bold) lines[0] = `\x1b[1m${lines[0]}\x1b[22m`;
  return `${lines.join('\n')}\n`;
}
