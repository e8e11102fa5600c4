/**
 * The snapshot tree as data, and its drawing for the terminal. Pure: no I/O,
 * so it is unit-tested on its own.
 */
export interface TreeInput {
  id: string;
  name: string;
  parentId: string | null;
  createdAt: string;
}

export interface TreeNode<T extends TreeInput> {
  snapshot: T;
  children: TreeNode<T>[];
}

/** Roots first, children in the order they were taken. A parent missing from the list makes a root. */
export function buildTree<T extends TreeInput>(snapshots: T[]): TreeNode<T>[] {
  const byId = new Map(snapshots.map((s) => [s.id, { snapshot: s, children: [] as TreeNode<T>[] }]));
  const roots: TreeNode<T>[] = [];
  const ordered = [...snapshots].sort((a, b) => a.createdAt.localeCompare(b.createdAt));
  for (const s of ordered) {
    const node = byId.get(s.id)!;
    const parent = s.parentId ? byId.get(s.parentId) : undefined;
    (parent ? parent.children : roots).push(node);
  }
  return roots;
}

/** The ids from a root down to this snapshot. */
export function ancestry(snapshots: TreeInput[], id: string): string[] {
  const byId = new Map(snapshots.map((s) => [s.id, s]));
  const path: string[] = [];
  let cur = byId.get(id);
  while (cur && path.length <= snapshots.length) {
    path.unshift(cur.id);
    cur = cur.parentId ? byId.get(cur.parentId) : undefined;
  }
  return path;
}

/**
 * Draw the tree like `tree(1)`, with the present state ("you are here") as a
 * child of the current snapshot, as VMware's Snapshot Manager shows it.
 */
export function renderTree<T extends TreeInput>(
  snapshots: T[],
  currentId: string | null,
  label: (s: T) => string,
  hereLabel = '● you are here',
): string {
  const lines: string[] = [];
  const walk = (nodes: TreeNode<T>[], prefix: string, hereUnder: string | null): void => {
    const items: ({ node: TreeNode<T> } | { here: true })[] = nodes.map((node) => ({ node }));
    if (hereUnder !== null) items.push({ here: true });
    items.forEach((item, i) => {
      const last = i === items.length - 1;
      const branch = last ? '└─ ' : '├─ ';
      if ('here' in item) {
        lines.push(`${prefix}${branch}${hereLabel}`);
        return;
      }
      lines.push(`${prefix}${branch}${label(item.node.snapshot)}`);
      const isCurrent = item.node.snapshot.id === currentId;
      walk(item.node.children, prefix + (last ? '   ' : '│  '), isCurrent ? item.node.snapshot.id : null);
    });
  };
  const roots = buildTree(snapshots);
  if (roots.length === 0) return hereLabel;
  walk(roots, '', currentId === null ? '' : null);
  return lines.join('\n');
}
