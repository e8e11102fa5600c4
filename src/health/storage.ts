import { readdirSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import type { SnapshotRecord, VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import type { DataDirUsage, SnapshotUsage, VmUsage } from '../contract/views.js';
import { catalogGraph } from '../layers/merge.js';
import { mapImage, type MapExtent } from '../qemu/qemu-img.js';
import { bootStoreBytes } from '../store/boot-files.js';
import { fileBytes } from '../util/files.js';

/** Storage accounting: what each snapshot costs and would free, per VM and for the data dir. */

export function dataDirUsage(ctx: Context): DataDirUsage {
  const fs = statfsSync(ctx.paths.layers);
  const layers = ctx.catalog.listLayers().filter((l) => !l.external);
  const boot = bootStoreBytes(ctx.paths);
  const data = layers.reduce((a, l) => a + fileBytes(l.path), 0) + ctx.catalog.stateFiles().reduce((a, f) => a + fileBytes(f), 0) + boot;
  const catalogBytes = fileBytes(ctx.paths.catalog) + fileBytes(`${ctx.paths.catalog}-wal`);
  const backupsBytes = treeBytes(ctx.paths.backups);
  const recordsBytes = treeBytes(ctx.paths.records) + treeBytes(ctx.paths.lostFound);
  return {
    path: ctx.paths.home,
    usedBytes: data + catalogBytes + backupsBytes + recordsBytes,
    bootFilesBytes: boot,
    catalogBytes,
    backupsBytes,
    recordsBytes,
    freeBytes: fs.bavail * fs.bsize,
    totalBytes: fs.blocks * fs.bsize,
  };
}

/** Bytes of every file under a folder (0 when it does not exist). */
function treeBytes(dir: string): number {
  let total = 0;
  try {
    for (const e of readdirSync(dir, { withFileTypes: true })) total += e.isDirectory() ? treeBytes(join(dir, e.name)) : fileBytes(join(dir, e.name));
  } catch {
    // gone, or never made
  }
  return total;
}

/** Guest ranges a layer itself holds data for (not its backing chain). */
async function ownExtents(path: string): Promise<MapExtent[]> {
  return (await mapImage(path, { forceShare: true })).filter((e) => e.depth === 0 && e.data);
}

function overlapBytes(a: MapExtent[], b: MapExtent[]): number {
  let i = 0;
  let j = 0;
  let total = 0;
  while (i < a.length && j < b.length) {
    const x = a[i]!;
    const y = b[j]!;
    const lo = Math.max(x.start, y.start);
    const hi = Math.min(x.start + x.length, y.start + y.length);
    if (hi > lo) total += hi - lo;
    if (x.start + x.length < y.start + y.length) i++;
    else j++;
  }
  return total;
}

/** Estimate what deleting a snapshot frees (see SnapshotUsage.reclaimableBytes). */
export async function reclaimable(ctx: Context, snap: SnapshotRecord): Promise<number> {
  const g = catalogGraph(ctx.catalog);
  let bytes = snap.stateFile ? fileBytes(snap.stateFile) : 0;
  for (const layerId of Object.values(snap.layers)) {
    const layer = ctx.catalog.findLayer(layerId);
    if (!layer || layer.external) continue;
    const namedElsewhere = ctx.catalog.snapshotsUsingLayer(layerId).some((u) => u.snapshotId !== snap.id);
    if (namedElsewhere || ctx.catalog.isActiveLayer(layerId) || ctx.catalog.foreignDependents(layerId).length > 0) continue;
    const kids = g.children(layerId);
    if (kids.length === 0) bytes += fileBytes(layer.path);
    else if (kids.length === 1) {
      // After a merge one copy of the data both layers hold is redundant.
      const [mine, theirs] = await Promise.all([ownExtents(layer.path), ownExtents(kids[0]!.path)]);
      bytes += overlapBytes(mine, theirs);
    }
  }
  return bytes;
}

export async function vmUsage(ctx: Context, vm: VmRecord): Promise<VmUsage> {
  const layers = ctx.catalog.listLayers(vm.id).filter((l) => !l.external);
  const snaps = ctx.catalog.listSnapshots(vm.id).filter((s) => s.status === 'ready');
  const layersBytes = layers.reduce((a, l) => a + fileBytes(l.path), 0);
  const statesBytes = snaps.reduce((a, s) => a + (s.stateFile ? fileBytes(s.stateFile) : 0), 0);
  const active = ctx.catalog.activeLayers(vm.id);
  const snapshots: SnapshotUsage[] = [];
  for (const s of snaps) {
    snapshots.push({
      name: s.name,
      id: s.id,
      createdAt: s.createdAt,
      deltaBytes: Object.values(s.layers).reduce((a, id) => a + fileBytes(ctx.catalog.findLayer(id)?.path ?? ''), 0),
      stateBytes: s.stateFile ? fileBytes(s.stateFile) : 0,
      reclaimableBytes: await reclaimable(ctx, s),
    });
  }
  return {
    vm: vm.name,
    totalBytes: layersBytes + statesBytes,
    layersBytes,
    statesBytes,
    disks: Object.entries(active).map(([slot, id]) => ({
      slot,
      chainDepth: ctx.catalog.chain(id).length,
      activeBytes: fileBytes(ctx.catalog.getLayer(id).path),
    })),
    snapshots,
  };
}
