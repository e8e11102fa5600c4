import type { SnapshotRecord, VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import { snapshotFlags } from '../contract/format.js';
import type { PresentStateChanges, SnapshotView } from '../contract/views.js';
import { VmsnapError } from '../errors.js';
import { probeRuntime } from '../qemu/runtime.js';
import { memoryStateFiles } from '../paths.js';
import { fileBytes, filesBytes } from '../util/files.js';
import { renderTree } from './tree.js';

/** How snapshots are shown (list, show, tree), and what a revert would discard now. */

/** A ready snapshot of `vm` by name or id, or NOT_FOUND naming where to look. */
export function resolveSnapshot(ctx: Context, vm: VmRecord, nameOrId: string): SnapshotRecord {
  const s = ctx.catalog.findSnapshot(vm.id, nameOrId);
  if (!s || s.status !== 'ready') {
    throw new VmsnapError('NOT_FOUND', `VM '${vm.name}' has no snapshot '${nameOrId}'`, {
      hint: `see 'vmsnap snapshot list ${vm.name}'`,
      details: { vm: vm.name, snapshot: nameOrId },
    });
  }
  return s;
}

export function snapshotView(ctx: Context, vm: VmRecord, s: SnapshotRecord, all: SnapshotRecord[], policyId = ctx.catalog.findPolicy(vm.id)?.id): SnapshotView {
  const disks = Object.entries(s.layers).map(([slot, layerId]) => {
    const l = ctx.catalog.findLayer(layerId);
    return { slot, layerId, path: l?.path ?? '', bytes: l ? fileBytes(l.path) : 0 };
  });
  const parent = s.parentId ? all.find((p) => p.id === s.parentId) : undefined;
  return {
    id: s.id,
    name: s.name,
    description: s.description,
    parentId: s.parentId,
    parent: parent?.name ?? null,
    createdAt: s.createdAt,
    hasMemory: s.stateFile !== null,
    vmState: s.vmState,
    pauseMs: s.pauseMs,
    current: vm.currentSnapshotId === s.id,
    children: all.filter((c) => c.parentId === s.id).map((c) => c.name),
    disks,
    deltaBytes: disks.reduce((a, d) => a + d.bytes, 0),
    stateBytes: filesBytes(memoryStateFiles(s.stateFile)),
    config: s.config,
    meta: s.meta,
    protected: s.protected,
    expiresAt: s.expiresAt,
    policy: s.policyId === null ? null : { slot: s.policySlot, owned: s.policyId === policyId },
  };
}

export function listSnapshotViews(ctx: Context, vm: VmRecord): SnapshotView[] {
  const all = ctx.catalog.listSnapshots(vm.id).filter((s) => s.status === 'ready');
  const policyId = ctx.catalog.findPolicy(vm.id)?.id;
  return all.map((s) => snapshotView(ctx, vm, s, all, policyId));
}

export function showSnapshot(ctx: Context, vm: VmRecord, nameOrId: string): SnapshotView {
  return snapshotView(ctx, vm, resolveSnapshot(ctx, vm, nameOrId), ctx.catalog.listSnapshots(vm.id));
}

/** The tree drawn for a terminal, with "you are here" under the current snapshot. */
export function drawTree(ctx: Context, vm: VmRecord): string {
  return renderTree(listSnapshotViews(ctx, vm), vm.currentSnapshotId, (s) => {
    const bits = [s.hasMemory ? 'memory' : 'disk only', new Date(s.createdAt).toLocaleString(), ...snapshotFlags(s).map((f) => f.text)];
    return `${s.name}  (${bits.join(', ')})${s.description ? ` — ${s.description}` : ''}`;
  });
}

/** A fresh qcow2 overlay header, with no data written yet, is this small or smaller. */
const EMPTY_OVERLAY_BYTES = 256 * 1024;

/** What reverting now would discard: the running state, disk writes since the current snapshot, config changes. */
export async function presentStateChanges(ctx: Context, vm: VmRecord): Promise<PresentStateChanges> {
  const { catalog } = ctx;
  const rt = await probeRuntime(ctx.paths.run, vm.id);
  const lost: string[] = [];
  const running = rt.state !== 'stopped';
  const since = vm.currentSnapshotId ? `since snapshot '${catalog.findSnapshotById(vm.currentSnapshotId)?.name}'` : 'since the VM was created';
  if (running) lost.push(`the ${rt.state} state of the VM (its memory and processes)`);
  for (const [slot, layerId] of Object.entries(catalog.activeLayers(vm.id))) {
    const l = catalog.getLayer(layerId);
    // Frozen layers below the active one that no snapshot names and nothing else builds on (a
    // temporary frozen point of a read in progress, a merge put off while a layer was read) hold
    // present-state writes too: a revert discards them with it.
    let bytes = fileBytes(l.path);
    for (const below of catalog.chain(layerId).slice(1)) {
      if (below.external || catalog.snapshotsUsingLayer(below.id).length > 0 || catalog.childrenOfLayer(below.id).length !== 1) break;
      bytes += fileBytes(below.path);
    }
    if (running || bytes > EMPTY_OVERLAY_BYTES) lost.push(`writes to ${slot} ${since} (layer ${l.id}, ${Math.round(bytes / 1024)} KiB on disk)`);
  }
  const current = vm.currentSnapshotId ? catalog.findSnapshotById(vm.currentSnapshotId) : undefined;
  if (current && JSON.stringify(current.config) !== JSON.stringify(vm.config)) lost.push('hardware config changes made since that snapshot');
  return { running, lost, wouldLoseData: lost.length > 0 };
}
