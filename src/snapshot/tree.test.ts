import { describe, expect, it } from 'vitest';
import { ancestry, buildTree, renderTree } from './tree.js';

const s = (id: string, parentId: string | null, t: number) => ({ id, name: id.toUpperCase(), parentId, createdAt: new Date(t * 1000).toISOString() });

describe('snapshot tree', () => {
  const snaps = [s('s1', null, 1), s('s2', 's1', 2), s('s3', 's1', 3), s('s4', 's3', 4)];

  it('builds branches in the order snapshots were taken', () => {
    const roots = buildTree(snaps);
    expect(roots.map((r) => r.snapshot.id)).toEqual(['s1']);
    expect(roots[0]!.children.map((c) => c.snapshot.id)).toEqual(['s2', 's3']);
  });

  it('draws the present state under the current snapshot', () => {
    expect(renderTree(snaps, 's2', (x) => x.name)).toBe(
      ['└─ S1', '   ├─ S2', '   │  └─ ● you are here', '   └─ S3', '      └─ S4'].join('\n'),
    );
  });

  it('draws the present state at the top level when there is no current snapshot', () => {
    expect(renderTree([s('a', null, 1)], null, (x) => x.name)).toBe(['├─ A', '└─ ● you are here'].join('\n'));
    expect(renderTree<ReturnType<typeof s>>([], null, (x) => x.name)).toBe('● you are here');
  });

  it('treats a snapshot whose parent is gone as a root', () => {
    expect(buildTree([s('x', 'gone', 1)]).map((r) => r.snapshot.id)).toEqual(['x']);
  });

  it('finds the ancestry of a snapshot', () => {
    expect(ancestry(snaps, 's4')).toEqual(['s1', 's3', 's4']);
  });
});
