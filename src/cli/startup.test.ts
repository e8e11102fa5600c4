import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

/**
 * `vmsnap --help` loads only what src/cli/ imports at its top, so it must stay light: the
 * library, zod, hono, better-sqlite3 and the table and progress packages are imported
 * by a command's action when it runs (`await import(...)`), never at a module's top.
 */
const CLI = fileURLToPath(new URL('.', import.meta.url));
const LIGHT = [/^commander$/, /^node:/, /(^|\/)errors\.js$/, /(^|\/)util\/(size|format)\.js$/, /^\.\.?\/(main|output|parse|progress|stdout)\.js$/, /^\.\/commands\/[a-z]+\.js$/];

function cliModules(dir = CLI): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? cliModules(join(dir, e.name)) : e.name.endsWith('.ts') && !e.name.endsWith('.test.ts') ? [join(dir, e.name)] : [],
  );
}

describe('the CLI’s startup', () => {
  it('imports nothing heavy at the top of a src/cli module (type-only imports are free)', () => {
    const heavy: string[] = [];
    for (const file of cliModules()) {
      for (const m of readFileSync(file, 'utf8').matchAll(/^import\s+(type\s+)?[^'"]*?from\s+'([^']+)';/gm)) {
        if (m[1] || LIGHT.some((ok) => ok.test(m[2]!))) continue;
        heavy.push(`${relative(CLI, file)}: ${m[2]}`);
      }
    }
    expect(heavy).toEqual([]);
  });
});
