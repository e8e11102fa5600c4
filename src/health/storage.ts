import { readdirSync, readFileSync, statSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import type { SnapshotRecord, VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import type { DataDirUsage, SnapshotUsage, VmUsage } from '../contract/views.js';
import { catalogGraph } from '../layers/merge.js';
import { runtimeFiles } from '../qemu/launcher.js';
import { mapImage, type MapExtent } from '../qemu/qemu-img.js';
import { livePid } from '../qemu/runtime.js';
import { memoryStateFiles } from '../paths.js';
import { bootStoreBytes } from '../store/boot-files.js';
import { fileExtents, supportsReflinks, unionBytes, uniqueBytes, type Extent } from '../util/extents.js';
import { fileBytes, filesBytes } from '../util/files.js';

/** Storage accounting: what each snapshot costs and would free, per VM and for the data dir. */

export function dataDirUsage(ctx: Context, mapped = mappedStateFiles(ctx), ramExtents?: RamExtents): DataDirUsage {
  const fs = statfsSync(ctx.paths.layers);
  const layers = ctx.catalog.listLayers().filter((l) => !l.external);
  const states = ctx.catalog.stateFiles();
  // Reflinked RAM images share extents: counted once, by their union on disk.
  const shared = ramExtents ? states.filter((f) => ramExtents.has(f)) : [];
  const boot = bootStoreBytes(ctx.paths);
  const data =
    layers.reduce((a, l) => a + fileBytes(l.path), 0) +
    filesBytes(states.filter((f) => !shared.includes(f))) +
    unionBytes(shared.flatMap((f) => ramExtents!.get(f)!)) +
    boot;
  const held = mapped.filter((m) => m.deleted).map((m) => ({ vms: m.vms, bytes: m.bytes }));
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
    heldByRunningVms: held,
    reflinks: supportsReflinks(ctx.paths.states),
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

/** RAM image → its extents, where RAM images can share them (reflinks). */
export type RamExtents = Map<string, Extent[]>;

/**
 * The extents of every RAM image, on a data dir whose file system has reflinks (XFS,
 * btrfs), where a snapshot's image shares the pages it did not change with its parent's;
 * undefined elsewhere (ext4: each image holds all its data).
 */
export async function ramImageExtents(ctx: Context): Promise<RamExtents | undefined> {
  if (!supportsReflinks(ctx.paths.states)) return undefined;
  const out: RamExtents = new Map();
  for (const f of ctx.catalog.stateFiles()) {
    if (!f.endsWith('.ram')) continue;
    const e = await fileExtents(f);
    if (e) out.set(f, e);
  }
  return out;
}

/** A memory state file that running VMs map (their guest RAM, after a revert or a fork). */
export interface MappedStateFile {
  path: string;
  /** Unlinked (its snapshot was deleted): its space comes back when the last VM mapping it stops. */
  deleted: boolean;
  bytes: number;
  vms: string[];
}

/**
 * Memory state files of the data dir that running QEMUs map, from /proc/PID/maps (one
 * entry per file, however many VMs map it). The size of a deleted one is read through
 * /proc/PID/map_files, which needs the rights to inspect the QEMU (as its owner or root);
 * where they are missing its bytes show as 0.
 */
export function mappedStateFiles(ctx: Context): MappedStateFile[] {
  const byInode = new Map<string, MappedStateFile>();
  const prefix = `${ctx.paths.states}/`;
  for (const vm of ctx.catalog.listVms()) {
    const pid = livePid(runtimeFiles(ctx.paths.run, vm.id));
    if (pid === undefined) continue;
    let maps: string;
    try {
      maps = readFileSync(`/proc/${pid}/maps`, 'utf8');
    } catch {
      continue;
    }
    for (const line of maps.split('\n')) {
      // address perms offset dev inode pathname
      const m = /^(\S+)\s+\S+\s+\S+\s+(\S+)\s+(\d+)\s+(.*)$/.exec(line);
      if (!m || !m[4]!.startsWith(prefix)) continue;
      const deleted = m[4]!.endsWith(' (deleted)');
      const path = deleted ? m[4]!.slice(0, -' (deleted)'.length) : m[4]!;
      const key = `${m[2]}:${m[3]}`;
      const seen = byInode.get(key);
      if (seen) {
        if (!seen.vms.includes(vm.name)) seen.vms.push(vm.name);
        continue;
      }
      let bytes = 0;
      try {
        bytes = statSync(deleted ? `/proc/${pid}/map_files/${m[1]}` : path).blocks * 512;
      } catch {
        // not allowed to look: unknown
      }
      byInode.set(key, { path, deleted, bytes, vms: [vm.name] });
    }
  }
  return [...byInode.values()];
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

/**
 * Estimate what deleting a snapshot frees (see SnapshotUsage.reclaimableBytes): at once,
 * and once the running VMs that map its RAM image stop.
 */
export async function reclaimable(
  ctx: Context,
  snap: SnapshotRecord,
  mapped: MappedStateFile[],
  ramExtents?: RamExtents,
): Promise<{ bytes: number; later: number; mappedBy: string[] }> {
  const g = catalogGraph(ctx.catalog);
  const stateFiles = memoryStateFiles(snap.stateFile);
  // A reflinked RAM image gives back only the extents no other image shares.
  const cost = (f: string): number => {
    const e = ramExtents?.get(f);
    return e ? uniqueBytes(e) : fileBytes(f);
  };
  const inUse = mapped.filter((m) => !m.deleted && stateFiles.includes(m.path));
  const later = inUse.reduce((a, m) => a + cost(m.path), 0);
  let bytes = stateFiles.reduce((a, f) => a + cost(f), 0) - later;
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
  return { bytes, later, mappedBy: [...new Set(inUse.flatMap((m) => m.vms))] };
}

export async function vmUsage(ctx: Context, vm: VmRecord, mapped = mappedStateFiles(ctx), ramExtents?: RamExtents): Promise<VmUsage> {
  const layers = ctx.catalog.listLayers(vm.id).filter((l) => !l.external);
  const snaps = ctx.catalog.listSnapshots(vm.id).filter((s) => s.status === 'ready');
  const layersBytes = layers.reduce((a, l) => a + fileBytes(l.path), 0);
  const statesBytes = snaps.reduce((a, s) => a + filesBytes(memoryStateFiles(s.stateFile)), 0);
  const active = ctx.catalog.activeLayers(vm.id);
  const snapshots: SnapshotUsage[] = [];
  for (const s of snaps) {
    const r = await reclaimable(ctx, s, mapped, ramExtents);
    const ramFile = memoryStateFiles(s.stateFile)[1];
    const ext = ramFile ? ramExtents?.get(ramFile) : undefined;
    snapshots.push({
      name: s.name,
      id: s.id,
      createdAt: s.createdAt,
      deltaBytes: Object.values(s.layers).reduce((a, id) => a + fileBytes(ctx.catalog.findLayer(id)?.path ?? ''), 0),
      stateBytes: filesBytes(memoryStateFiles(s.stateFile)),
      ...(ext ? { stateSharedBytes: ext.reduce((a, e) => a + e.length, 0) - uniqueBytes(ext) } : {}),
      reclaimableBytes: r.bytes,
      ...(r.mappedBy.length > 0 ? { stateMappedBy: r.mappedBy, freedWhenStoppedBytes: r.later } : {}),
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
