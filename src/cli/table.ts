/**
 * A plain table in the style of `docker ps` and `kubectl get`: a header row, columns left
 * aligned and two spaces apart, no borders, no padding after the last column. Widths are
 * terminal columns (a CJK character takes two, an ANSI colour code none): `width` measures
 * them (string-width, given by the caller so that this module loads nothing).
 */
export function formatTable(
  head: string[],
  rows: (string | number)[][],
  opts: { width: (text: string) => number; bold?: boolean },
): string {
  // A line break inside a cell would break every column after it.
  const cells = [head, ...rows].map((r) => head.map((_, i) => String(r[i] ?? '').replace(/\s*[\r\n]+\s*/g, ' ')));
  const widths = head.map((_, i) => Math.max(...cells.map((r) => opts.width(r[i]!))));
  const lines = cells.map((r) =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c + ' '.repeat(widths[i]! - opts.width(c) + 2)))
      .join('')
      .trimEnd(),
  );
  if (opts.bold) lines[0] = `\x1b[1m${lines[0]}\x1b[22m`;
  return `${lines.join('\n')}\n`;
}
