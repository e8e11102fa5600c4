import { basename, dirname } from 'node:path';
import { z } from 'zod';
import type { LayerRecord, VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import { layerPath } from '../paths.js';
import { createImage } from '../qemu/qemu-img.js';
import { fsyncFileAndDir } from '../util/files.js';
import { newLayerId } from '../util/ids.js';
import type { OverlaySwitch } from './live.js';

/** New empty overlays on frozen layers: what a snapshot and a revert both make, one per disk. */

export const OverlaySwitchSchema: z.ZodType<OverlaySwitch> = z.object({
  slot: z.string(),
  oldLayerId: z.string(),
  newLayerId: z.string(),
  newPath: z.string(),
});

/** One new overlay per disk, on top of the given layers (slot → layer id). */
export function planOverlays(ctx: Context, onto: Record<string, string>): OverlaySwitch[] {
  return Object.entries(onto).map(([slot, oldLayerId]) => {
    const id = newLayerId();
    return { slot, oldLayerId, newLayerId: id, newPath: layerPath(ctx.paths, id) };
  });
}

/** Create the overlay files; the backing pointer is a bare file name when both live in the layers dir, so the folder can move. */
export async function createOverlayFiles(ctx: Context, switches: OverlaySwitch[]): Promise<void> {
  for (const s of switches) {
    const below = ctx.catalog.getLayer(s.oldLayerId);
    const backing = dirname(below.path) === dirname(s.newPath) ? basename(below.path) : below.path;
    await createImage(s.newPath, { format: 'qcow2', backing, backingFormat: below.format });
    fsyncFileAndDir(s.newPath);
  }
}

export function newLayerRecords(vm: VmRecord, switches: OverlaySwitch[], now: string): LayerRecord[] {
  return switches.map((s) => ({
    id: s.newLayerId,
    vmId: vm.id,
    slot: s.slot,
    path: s.newPath,
    format: 'qcow2',
    backingId: s.oldLayerId,
    frozen: false,
    external: false,
    createdAt: now,
  }));
}
