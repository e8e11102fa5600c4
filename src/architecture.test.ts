import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

/**
 * The folders show the architecture, so they must not import each other in a
 * circle: contract and util at the bottom, then the QEMU plumbing and the
 * catalog, the operation model, layers, VMs, snapshots, health and transfer,
 * and the interfaces (API, CLI) on top. Type-only imports are left out: they
 * vanish at run time. Files directly in src/ count as nodes of their own.
 */
const SRC = dirname(fileURLToPath(import.meta.url));

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    if (statSync(p).isDirectory()) return sources(p);
    return p.endsWith('.ts') && !p.endsWith('.test.ts') ? [p] : [];
  });
}

/** The node a file belongs to: its top folder under src/, or the file itself when it sits in src/. */
function nodeOf(file: string): string {
  const rel = relative(SRC, file);
  const top = rel.split('/')[0]!;
  return rel.includes('/') ? `${top}/` : top;
}

/** Value imports (static and dynamic) of a file, resolved to files under src/. */
function valueImports(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const out: string[] = [];
  const re = /^\s*(?:import|export)\s+(?!type\b)(?:[^'";]*?\bfrom\s+)?['"](\.[^'"]+)['"]|\bimport\(\s*['"](\.[^'"]+)['"]\s*\)/gm;
  for (const m of text.matchAll(re)) {
    const spec = m[1] ?? m[2]!;
    // `import { type A, type B } from` is type-only too.
    if (m[1] && /^\s*(?:import|export)\s*\{\s*(?:type\s+[\w$]+\s*,?\s*)+\}\s*from/.test(m[0])) continue;
    out.push(resolve(dirname(file), spec.replace(/\.js$/, '.ts')));
  }
  return out;
}

function folderGraph(): Map<string, Set<string>> {
  const g = new Map<string, Set<string>>();
  for (const f of sources(SRC)) {
    const from = nodeOf(f);
    if (!g.has(from)) g.set(from, new Set());
    for (const target of valueImports(f)) {
      if (!target.startsWith(SRC)) continue;
      const to = nodeOf(target);
      if (to !== from) g.get(from)!.add(to);
    }
  }
  return g;
}

/** Strongly connected components with more than one node: the cycles. */
function cycles(g: Map<string, Set<string>>): string[][] {
  let index = 0;
  const idx = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const on = new Set<string>();
  const out: string[][] = [];
  const visit = (v: string): void => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    on.add(v);
    for (const w of g.get(v) ?? []) {
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v)!, idx.get(w)!));
    }
    if (low.get(v) === idx.get(v)) {
      const comp: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        on.delete(w);
        comp.push(w);
      } while (w !== v);
      if (comp.length > 1) out.push(comp.sort());
    }
  };
  for (const v of g.keys()) if (!idx.has(v)) visit(v);
  return out;
}

describe('architecture', () => {
  it('has no import cycles between folders', () => {
    const g = folderGraph();
    const found = cycles(g).map((c) => c.map((n) => `${n} -> ${[...(g.get(n) ?? [])].filter((t) => c.includes(t)).join(', ')}`));
    expect(g.get('snapshot/')?.has('vm/'), "the graph sees imports").toBe(true);
    expect(found).toEqual([]);
  });

  it('keeps the contract free of the library: it imports only itself and errors.ts', () => {
    const deps = folderGraph().get('contract/') ?? new Set();
    expect([...deps].filter((d) => d !== 'errors.ts')).toEqual([]);
  });

  it('keeps SQL in the catalog', () => {
    const offenders = sources(SRC).filter((f) => nodeOf(f) !== 'catalog/' && /\.prepare\(|\bdb\.(exec|pragma)\(/.test(readFileSync(f, 'utf8')));
    expect(offenders.map((f) => relative(SRC, f))).toEqual([]);
  });
});
