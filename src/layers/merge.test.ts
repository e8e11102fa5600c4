import { describe, expect, it } from 'vitest';
import type { LayerRecord } from '../catalog/catalog.js';
import { nextAction, type LayerGraph } from './merge.js';

/**
 * The merge planner on made-up layer graphs: `layers` maps an id to its backing id
 * (null for a base); `bytes` gives each layer's size.
 */
function graph(layers: Record<string, string | null>, opts: { bytes?: Record<string, number>; pinned?: string[]; external?: string[] } = {}): LayerGraph {
  const rec = (id: string): LayerRecord => ({
    id,
    vmId: 'vm',
    slot: 'disk0',
    path: `/layers/${id}.qcow2`,
    format: 'qcow2',
    backingId: layers[id] ?? null,
    frozen: true,
    external: opts.external?.includes(id) ?? false,
    createdAt: '2026-01-01T00:00:00.000Z',
  });
  return {
    layer: (id) => (id in layers ? rec(id) : undefined),
    children: (id) => Object.keys(layers).filter((k) => layers[k] === id).map(rec),
    pinned: (id) => opts.pinned?.includes(id) ?? false,
    bytes: (id) => opts.bytes?.[id] ?? 0,
  };
}

describe('nextAction (the merge planner)', () => {
  it('leaves alone a layer that is unknown, imported, or pinned (named by a snapshot, active, or under a clone)', () => {
    const g = graph({ base: null, mid: 'base', top: 'mid' }, { pinned: ['mid'], external: ['base'] });
    expect(nextAction(g, 'nope')).toBeUndefined();
    expect(nextAction(g, 'base')).toBeUndefined();
    expect(nextAction(g, 'mid')).toBeUndefined();
  });

  it('drops a layer nothing depends on', () => {
    expect(nextAction(graph({ base: null, orphan: 'base' }), 'orphan')).toEqual({ kind: 'drop', layerId: 'orphan' });
  });

  it('keeps a branch point (two or more layers depend on it) as an internal layer', () => {
    expect(nextAction(graph({ base: null, a: 'base', b: 'base' }), 'base')).toBeUndefined();
    expect(nextAction(graph({ base: null, a: 'base', b: 'base', c: 'base' }), 'base')).toBeUndefined();
  });

  it('merges a layer into its one dependant in the quicker direction: stream only when it copies under half as much', () => {
    const plan = (lower: number, upper: number) => nextAction(graph({ base: null, low: 'base', up: 'low' }, { bytes: { low: lower, up: upper } }), 'low');
    expect(plan(100, 1000)).toEqual({ kind: 'stream', lowerId: 'low', upperId: 'up' });
    expect(plan(500, 1000)).toEqual({ kind: 'stream', lowerId: 'low', upperId: 'up' }); // exactly half: stream
    expect(plan(501, 1000)).toEqual({ kind: 'commit', lowerId: 'low', upperId: 'up' });
    expect(plan(1000, 1000)).toEqual({ kind: 'commit', lowerId: 'low', upperId: 'up' });
    expect(plan(0, 0)).toEqual({ kind: 'stream', lowerId: 'low', upperId: 'up' });
  });

  it('plans for the layer it is asked about only, whatever lies below it', () => {
    const g = graph({ base: null, a: 'base', b: 'a', c: 'b' }, { bytes: { a: 10, b: 10, c: 10 }, pinned: ['c'] });
    expect(nextAction(g, 'b')).toEqual({ kind: 'commit', lowerId: 'b', upperId: 'c' });
    expect(nextAction(g, 'a')).toEqual({ kind: 'commit', lowerId: 'a', upperId: 'b' });
  });
});
