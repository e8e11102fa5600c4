import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

/**
 * `vmsnap --help` loads only what main.ts imports at its top, and what those modules import at
 * theirs, so that must stay light: the library, zod, hono, better-sqlite3 and the table and
 * progress packages are imported by a command's action when it runs (`await import(...)`), never
 * at the top of a module that starting the CLI evaluates. (A module imported only by
 * `await import`, like zod-jitless.ts, may import what it likes.)
 */
const CLI = fileURLToPath(new URL('.', import.meta.url));
const SRC = resolve(CLI, '..');
const LIGHT = [/^commander$/, /^node:/];

/** Modules main.ts loads at start: its static imports, and theirs (type-only imports are free). */
function loadedAtStart(): Map<string, string[]> {
  const seen = new Map<string, string[]>();
  const visit = (file: string): void => {
    if (seen.has(file)) return;
    const imports: string[] = [];
    seen.set(file, imports);
    // import … from, export … from, and a bare import 'x' (type-only ones load nothing).
    for (const m of readFileSync(file, 'utf8').matchAll(/^(?:import|export)\s+(type\s+)?(?:[^'";]*?from\s+)?'([^']+)';/gm)) {
      if (m[1]) continue;
      const spec = m[2]!;
      if (!spec.startsWith('.')) {
        imports.push(spec);
        continue;
      }
      const ts = resolve(dirname(file), spec.replace(/\.js$/, '.ts'));
      if (existsSync(ts)) visit(ts);
    }
  };
  visit(join(CLI, 'main.ts'));
  return seen;
}

describe('the CLI’s startup', () => {
  it('loads nothing heavy: only commander, node: built-ins and small modules of its own', () => {
    const heavy: string[] = [];
    for (const [file, imports] of loadedAtStart()) {
      for (const spec of imports) if (!LIGHT.some((ok) => ok.test(spec))) heavy.push(`${relative(SRC, file)}: ${spec}`);
    }
    expect(heavy).toEqual([]);
  });

  it('loads only the CLI’s own modules and a few small library ones (errors, size parsing and formatting)', () => {
    const modules = [...loadedAtStart().keys()].map((f) => relative(SRC, f)).filter((f) => !f.startsWith('cli/'));
    expect(modules.sort()).toEqual(['contract/format.ts', 'errors.ts', 'util/size.ts']);
  });
});
