import type { Catalog, LayerRecord } from '../catalog/catalog.js';
import { mapImage } from '../qemu/qemu-img.js';

/**
 * What changed on a disk between two points, from the layers alone: every
 * layer between them (above their nearest common layer, on either side)
 * holds the writes made in between, and its allocation map (qemu-img map)
 * says where, without reading data.
 */

export interface Extent {
  start: number;
  length: number;
}

/** Sorted, merged extents. */
export function unionExtents(extents: Extent[]): Extent[] {
  const sorted = extents.filter((e) => e.length > 0).sort((a, b) => a.start - b.start);
  const out: Extent[] = [];
  for (const e of sorted) {
    const last = out[out.length - 1];
    if (last && e.start <= last.start + last.length) last.length = Math.max(last.length, e.start + e.length - last.start);
    else out.push({ ...e });
  }
  return out;
}

export function totalLength(extents: Extent[]): number {
  return extents.reduce((a, e) => a + e.length, 0);
}

/** Whether any of the (merged, sorted) extents overlaps [start, start + length). */
export function overlaps(extents: Extent[], start: number, length: number): boolean {
  return extents.some((e) => e.start < start + length && start < e.start + e.length);
}

/** Layers of two chains above their nearest common layer (both tops included unless shared). */
export function layersBetween(catalog: Catalog, topA: string, topB: string): LayerRecord[] {
  const a = catalog.chain(topA);
  const b = catalog.chain(topB);
  const inB = new Set(b.map((l) => l.id));
  const common = a.find((l) => inB.has(l.id))?.id;
  const above = (chain: LayerRecord[]): LayerRecord[] => {
    const i = common === undefined ? chain.length : chain.findIndex((l) => l.id === common);
    return chain.slice(0, i);
  };
  return [...above(a), ...above(b)];
}

/** Guest ranges the layers themselves hold (data or zeroes written there, not their backing's). */
export async function writtenExtents(layers: LayerRecord[]): Promise<Extent[]> {
  const all: Extent[] = [];
  for (const l of layers) {
    for (const e of await mapImage(l.path, { forceShare: true })) {
      if (e.depth === 0 && e.present) all.push({ start: e.start, length: e.length });
    }
  }
  return unionExtents(all);
}
