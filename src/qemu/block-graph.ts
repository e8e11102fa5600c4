import type { QmpClient } from './qmp.js';

/** One node of QEMU's block graph, by node name, with the names of its children. */
export interface GraphNode {
  name: string;
  type: string;
  backing?: string;
  file?: string;
}

interface RawGraph {
  nodes: { id: number; type: string; name: string }[];
  edges: { parent: number; child: number; name: string }[];
}

/**
 * QEMU's block graph as it is now (x-debug-query-block-graph: the only query that
 * names each node's backing child exactly). Recovery uses it to see how far an
 * interrupted merge got inside a QEMU that outlived vmsnap.
 */
export async function queryBlockGraph(qmp: QmpClient): Promise<Map<string, GraphNode>> {
  const g = await qmp.execute<RawGraph>('x-debug-query-block-graph');
  const byId = new Map(g.nodes.map((n) => [n.id, n]));
  const out = new Map<string, GraphNode>();
  for (const n of g.nodes) if (n.type === 'block-driver') out.set(n.name, { name: n.name, type: n.type });
  for (const e of g.edges) {
    const parent = byId.get(e.parent);
    const child = byId.get(e.child);
    if (!parent || !child) continue;
    const node = out.get(parent.name);
    if (!node) continue;
    if (e.name === 'backing') node.backing = child.name;
    if (e.name === 'file') node.file = child.name;
  }
  return out;
}
