import { hierarchy, tree, type HierarchyPointNode } from 'd3-hierarchy';
import { useEffect, useMemo, useRef } from 'react';
import type { SnapshotView, VmSummary } from '../api.js';
import { shortTime, snapshotBadges } from '../format.js';

/** What a node of the drawn tree stands for: the VM's base disks, a snapshot, or the present state. */
export type NodeRef = { kind: 'root' } | { kind: 'snapshot'; id: string } | { kind: 'here' };

interface Datum {
  key: string;
  ref: NodeRef;
  snapshot?: SnapshotView;
  children: Datum[];
}

const NODE_W = 176;
const NODE_H = 48;
/** A snapshot with flags (protected, policy, expiry) gets a row of small badges under its box's text. */
const FLAGS_H = 16;
const COL = NODE_W + 22;
const ROW = 78 + FLAGS_H;
const PAD = 16;

function buildData(snaps: SnapshotView[]): Datum {
  const byId = new Map<string, Datum>();
  for (const s of snaps) byId.set(s.id, { key: s.id, ref: { kind: 'snapshot', id: s.id }, snapshot: s, children: [] });
  const root: Datum = { key: 'root', ref: { kind: 'root' }, children: [] };
  for (const s of [...snaps].sort((a, b) => a.createdAt.localeCompare(b.createdAt))) {
    const d = byId.get(s.id)!;
    const parent = s.parentId ? byId.get(s.parentId) : undefined;
    (parent ?? root).children.push(d);
  }
  // "You are here": the present state, under the snapshot it descends from (VMware draws it so).
  const current = snaps.find((s) => s.current);
  const here: Datum = { key: 'here', ref: { kind: 'here' }, children: [] };
  ((current && byId.get(current.id)) || root).children.push(here);
  return root;
}

/** A node's box height: taller for a snapshot with flags. */
const heightOf = (d: Datum): number => (d.snapshot && snapshotBadges(d.snapshot).length > 0 ? NODE_H + FLAGS_H : NODE_H);

const same = (a: NodeRef, b: NodeRef) => a.kind === b.kind && (a.kind !== 'snapshot' || (b.kind === 'snapshot' && a.id === b.id));

function truncate(s: string, n: number): string {
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}

/**
 * The snapshot tree, laid out with d3-hierarchy's tidy tree and drawn as SVG,
 * top-down as VMware's Snapshot Manager draws it: time flows down, branches
 * fan out sideways, and "You are here" hangs under the current snapshot.
 */
export function SnapshotTree(props: {
  vm: VmSummary;
  snapshots: SnapshotView[];
  selected: NodeRef;
  onSelect: (r: NodeRef) => void;
  onRevert: (s: SnapshotView) => void;
}) {
  const { vm, snapshots, selected, onSelect } = props;
  const scroller = useRef<HTMLDivElement>(null);
  const layout = useMemo(() => {
    const root = hierarchy(buildData(snapshots), (d) => d.children);
    const laid = tree<Datum>().nodeSize([COL, ROW]).separation((a, b) => (a.parent === b.parent ? 1 : 1.2))(root);
    const nodes = laid.descendants();
    const xs = nodes.map((n) => n.x);
    const minX = Math.min(...xs);
    const maxX = Math.max(...xs);
    const depth = Math.max(...nodes.map((n) => n.y));
    return {
      nodes,
      links: laid.links(),
      width: maxX - minX + NODE_W + PAD * 2,
      height: depth + NODE_H + FLAGS_H + PAD * 2,
      /** Top-left corner of a node's box. */
      pos: (n: HierarchyPointNode<Datum>) => ({ x: n.x - minX + PAD, y: n.y + PAD }),
    };
  }, [snapshots]);

  // Keep the present state in view as the tree grows.
  useEffect(() => {
    const here = scroller.current?.querySelector('[data-testid="tree-here"]');
    if (here && scroller.current) {
      const box = here.getBoundingClientRect();
      const view = scroller.current.getBoundingClientRect();
      if (box.bottom > view.bottom || box.top < view.top || box.right > view.right || box.left < view.left) {
        scroller.current.scrollTo({ top: scroller.current.scrollTop + box.top - view.top - view.height / 2, left: scroller.current.scrollLeft + box.left - view.left - view.width / 2 + box.width / 2 });
      }
    }
  }, [layout]);

  return (
    <div className="tree-scroll" data-testid="snapshot-tree" ref={scroller}>
      <svg width={layout.width} height={layout.height} role="tree" aria-label={`snapshot tree of ${vm.name}`}>
        <g className="links">
          {layout.links.map((l) => {
            const a = layout.pos(l.source);
            const b = layout.pos(l.target);
            const x0 = a.x + NODE_W / 2;
            const y0 = a.y + heightOf(l.source.data);
            const x1 = b.x + NODE_W / 2;
            const y1 = b.y;
            const my = (y0 + y1) / 2;
            const here = l.target.data.ref.kind === 'here';
            return <path key={l.target.data.key} className={here ? 'link link-here' : 'link'} d={`M${x0},${y0} C${x0},${my} ${x1},${my} ${x1},${y1}`} />;
          })}
        </g>
        {layout.nodes.map((n) => {
          const p = layout.pos(n);
          const d = n.data;
          const isSel = same(selected, d.ref);
          const top = p.y;
          if (d.ref.kind === 'here') {
            return (
              <g
                key="here"
                className={`node node-here${isSel ? ' selected' : ''}`}
                transform={`translate(${p.x},${top})`}
                onClick={() => onSelect({ kind: 'here' })}
                role="treeitem"
                aria-selected={isSel}
                data-testid="tree-here"
              >
                <title>The VM's present state: what a new snapshot would capture</title>
                <rect width={NODE_W} height={NODE_H} rx={NODE_H / 2} />
                <circle cx={22} cy={NODE_H / 2} r={6} className="here-dot" />
                <text x={38} y={20} className="node-name">
                  You are here
                </text>
                <text x={38} y={36} className="node-sub">
                  {vm.state === 'stopped' ? 'powered off' : vm.state}
                </text>
              </g>
            );
          }
          if (d.ref.kind === 'root') {
            return (
              <g
                key="root"
                className={`node node-root${isSel ? ' selected' : ''}`}
                transform={`translate(${p.x},${top})`}
                onClick={() => onSelect({ kind: 'root' })}
                role="treeitem"
                aria-selected={isSel}
                data-testid="tree-root"
              >
                <title>{`${vm.name}: the VM's base disks`}</title>
                <rect width={NODE_W} height={NODE_H} rx={8} />
                <path d="M14 15h16v18H14z M14 21h16 M14 27h16" className="root-icon" />
                <text x={40} y={20} className="node-name">
                  {truncate(vm.name, 16)}
                </text>
                <text x={40} y={36} className="node-sub">
                  base disks
                </text>
              </g>
            );
          }
          const s = d.snapshot!;
          const flags = snapshotBadges(s);
          const h = heightOf(d);
          let fx = 12;
          return (
            <g
              key={s.id}
              className={`node node-snap${s.current ? ' current' : ''}${isSel ? ' selected' : ''}`}
              transform={`translate(${p.x},${top})`}
              onClick={() => onSelect({ kind: 'snapshot', id: s.id })}
              onDoubleClick={() => props.onRevert(s)}
              role="treeitem"
              aria-selected={isSel}
              data-testid={`tree-node-${s.name}`}
            >
              <title>{`${s.name}${s.description ? ` — ${s.description}` : ''}\n${new Date(s.createdAt).toLocaleString()}\n${s.hasMemory ? 'with memory' : 'disk only'}${s.current ? '\ncurrent snapshot' : ''}${flags.map((f) => `\n${f.text}: ${f.title}`).join('')}\n(double-click to revert)`}</title>
              <rect width={NODE_W} height={h} rx={8} />
              <circle cx={16} cy={NODE_H / 2} r={6} className={s.hasMemory ? 'snap-dot mem' : 'snap-dot'} />
              <text x={30} y={20} className="node-name">
                {truncate(s.name, 15)}
              </text>
              <text x={30} y={36} className="node-sub">
                {shortTime(s.createdAt)}
              </text>
              <g transform={`translate(${NODE_W - 64},${NODE_H - 20})`}>
                <rect width={56} height={14} rx={7} className={s.hasMemory ? 'badge-mem' : 'badge-disk'} />
                <text x={28} y={10.5} textAnchor="middle" className="badge-text">
                  {s.hasMemory ? 'memory' : 'disk only'}
                </text>
              </g>
              {flags.map((f) => {
                const w = f.text.length * 5.4 + 12;
                const x = fx;
                fx += w + 4;
                return (
                  <g key={f.kind} transform={`translate(${x},${NODE_H - 4})`} data-testid={`badge-${f.kind}-${s.name}`}>
                    <rect width={w} height={14} rx={7} className={`flag flag-${f.kind}`} />
                    <text x={w / 2} y={10.5} textAnchor="middle" className={`flag-text flag-text-${f.kind}`}>
                      {f.text}
                    </text>
                  </g>
                );
              })}
            </g>
          );
        })}
      </svg>
    </div>
  );
}
