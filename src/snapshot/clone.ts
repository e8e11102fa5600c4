import { rmSync } from 'node:fs';
import type { LayerRecord, SnapshotRecord, VmRecord } from '../catalog/catalog.js';
import type { OperationRecord } from '../catalog/journal.js';
import { withVm, type Context } from '../context.js';
import { VmsnapError } from '../errors.js';
import { queryBlockGraph } from '../qemu/block-graph.js';
import { runBlockJob } from '../qemu/block-jobs.js';
import { fileNode, formatNode } from '../qemu/launcher.js';
import { convertImage, createImage } from '../qemu/qemu-img.js';
import type { QmpClient } from '../qemu/qmp.js';
import { withStorageDaemon } from '../qemu/storage-daemon.js';
import { newId, newLayerId, newMacAddress } from '../util/ids.js';
import { validateConfig, validateName } from '../vm/config.js';
import { layerPath, type VmService } from '../vm/machines.js';
import { connectQmp, killQemu, probeRuntime } from '../vm/runtime.js';
import { runtimeFiles } from '../qemu/launcher.js';
import { backingRef } from './consolidate.js';
import { fsyncFileAndDir } from './fsync.js';
import { loadMemory } from './live.js';

export interface CloneOptions {
  /** linked (default): empty overlays on the snapshot's layers, instant; full: independent flattened disks. */
  mode?: 'linked' | 'full';
  /** How many clones: NAME-1 … NAME-N when more than one. */
  count?: number;
  /** Start each clone: from the snapshot's memory when it has some (a fork of the running machine), else a boot. */
  start?: boolean;
}

export interface CloneInfo {
  name: string;
  id: string;
  mode: 'linked' | 'full';
  mac: string;
  state: 'running' | 'paused' | 'stopped';
  /** Started from the snapshot's memory state (a fork) rather than booted. */
  forked: boolean;
  /** The guest took its new identity (hostname, MAC) through its agent. */
  identitySet?: boolean;
}

export interface CloneResult {
  source: string;
  snapshot: string;
  clones: CloneInfo[];
  /** Wall time of the whole call, in ms. */
  ms: number;
}

/** The names N clones get: the name itself for one, NAME-1 … NAME-N for more. */
export function cloneNames(name: string, count: number): string[] {
  return count === 1 ? [name] : Array.from({ length: count }, (_, i) => `${name}-${i + 1}`);
}

/**
 * Clone new VMs from any snapshot. The source VM's lock is held throughout,
 * so the snapshot (and the memory state a fork loads) cannot go meanwhile.
 */
export async function cloneFromSnapshot(
  ctx: Context,
  vms: VmService,
  source: VmRecord,
  snap: SnapshotRecord,
  newName: string,
  opts: CloneOptions = {},
): Promise<CloneResult> {
  const t0 = performance.now();
  const mode = opts.mode ?? 'linked';
  const count = opts.count ?? 1;
  if (!Number.isInteger(count) || count < 1 || count > 64) {
    throw new VmsnapError('INVALID_ARGUMENT', `count: ${count} is not a whole number from 1 to 64`, { details: { field: 'count' } });
  }
  const names = cloneNames(newName, count);
  for (const n of names) {
    validateName(n, 'VM');
    if (ctx.catalog.findVm(n)) {
      throw new VmsnapError('ALREADY_EXISTS', `a VM named '${n}' already exists`, { hint: 'choose another clone name', details: { vm: n } });
    }
  }
  const clones: CloneInfo[] = [];
  for (const name of names) {
    const vm = await createClone(ctx, source, snap, name, mode);
    const info: CloneInfo = { name, id: vm.id, mode, mac: vm.config.nics[0]?.mac ?? '', state: 'stopped', forked: false };
    if (opts.start) {
      await withVm(ctx, vm, 'start clone', async () => {
        if (snap.stateFile) {
          info.identitySet = await forkFromMemory(ctx, vms, vm, snap);
          info.forked = true;
          info.state = snap.vmState === 'paused' ? 'paused' : 'running';
        } else {
          await vms.startLocked(vm, {});
          info.state = 'running';
        }
      });
    }
    clones.push(info);
  }
  return { source: source.name, snapshot: snap.name, clones, ms: performance.now() - t0 };
}

async function createClone(ctx: Context, source: VmRecord, snap: SnapshotRecord, name: string, mode: 'linked' | 'full'): Promise<VmRecord> {
  const { catalog } = ctx;
  const now = new Date().toISOString();
  // Each clone is its own machine on the network: a MAC of its own.
  const config = validateConfig({ ...snap.config, nics: snap.config.nics.map((n) => ({ ...n, mac: newMacAddress() })) });
  const vm: VmRecord = { id: newId(), name, config, createdAt: now, currentSnapshotId: null };
  const layers: LayerRecord[] = Object.entries(snap.layers).map(([slot]) => {
    const id = newLayerId();
    return { id, vmId: vm.id, slot, path: layerPath(ctx.paths.layers, id), format: 'qcow2', backingId: null, frozen: false, external: false, createdAt: now };
  });
  const op = ctx.journal.begin('clone-vm', vm.id, { source: source.id, snapshotId: snap.id, mode, createFiles: layers.map((l) => l.path) });
  try {
    for (const l of layers) {
      const frozen = catalog.getLayer(snap.layers[l.slot]!);
      if (mode === 'linked') {
        l.backingId = frozen.id;
        await createImage(l.path, { format: 'qcow2', backing: backingRef(l, frozen), backingFormat: frozen.format });
      } else {
        // Frozen layers never change, so reading them while the source runs is safe (-U: shared).
        await convertImage(frozen.path, l.path, { format: 'qcow2', forceShare: true });
      }
      fsyncFileAndDir(l.path);
    }
    ctx.journal.step(op, 1);
    ctx.journal.finish(op, 'done', undefined, () => {
      catalog.insertVm(vm);
      for (const l of layers) {
        catalog.insertLayer(l);
        catalog.setActiveLayer(vm.id, l.slot, l.id);
      }
    });
    return vm;
  } catch (e) {
    for (const l of layers) rmSync(l.path, { force: true });
    ctx.journal.finish(op, 'rolled_back', e);
    throw e;
  }
}

/**
 * Start a clone from the snapshot's memory: the guest carries on from that
 * instant in a new machine. It then takes its own identity through its agent
 * (the migrated NIC still has the source's MAC until told otherwise).
 */
async function forkFromMemory(ctx: Context, vms: VmService, vm: VmRecord, snap: SnapshotRecord): Promise<boolean> {
  await vms.startLocked(vm, { incomingDefer: true, paused: true });
  const files = runtimeFiles(ctx.paths.run, vm.id);
  try {
    const qmp = await connectQmp(ctx.paths.run, vm);
    try {
      const loaded = await loadMemory(qmp, snap.stateFile!);
      if (typeof snap.meta.stateSha256 === 'string' && loaded.sha256 !== snap.meta.stateSha256) {
        throw new VmsnapError('CATALOG_ERROR', `snapshot '${snap.name}': its memory state file is damaged (checksum mismatch)`, {
          details: { step: 'load-memory' },
        });
      }
      if (snap.vmState !== 'paused') await qmp.execute('cont');
    } finally {
      await qmp.close();
    }
  } catch (e) {
    await killQemu(files);
    throw e;
  }
  if (snap.vmState === 'paused') return false;
  const mac = vm.config.nics[0]?.mac;
  try {
    const agent = await vms.agent(vm, 20_000);
    try {
      const script = [
        `hostname ${vm.name}`,
        ...(mac ? [`for i in /sys/class/net/eth*; do [ -e "$i" ] || continue; d=\${i##*/}; ip link set dev $d down; ip link set dev $d address ${mac}; ip link set dev $d up; break; done`] : []),
      ].join('; ');
      const r = await agent.exec('/bin/sh', ['-c', script], { timeoutMs: 20_000 });
      return r.exitCode === 0;
    } finally {
      await agent.close();
    }
  } catch {
    return false;
  }
}

/** Clones that build directly on a snapshot's layers (its linked clones), by VM. */
export function directClones(ctx: Context, snap: SnapshotRecord): VmRecord[] {
  const ids = new Set<string>();
  for (const layerId of Object.values(snap.layers)) {
    for (const child of ctx.catalog.childrenOfLayer(layerId)) if (child.vmId !== snap.vmId) ids.add(child.vmId);
  }
  return [...ids].flatMap((id) => {
    const vm = ctx.catalog.findVm(id);
    return vm ? [vm] : [];
  });
}

/**
 * Make a linked clone independent: the data of every layer of another VM it
 * builds on is copied into its own lowest layers (block-stream with no base,
 * online in its QEMU if it runs), which then stand on their own. No remaining
 * snapshot's content changes. The caller holds the clone's lock.
 */
export async function detachClone(ctx: Context, clone: VmRecord): Promise<void> {
  const { catalog, journal } = ctx;
  const targets = catalog.listLayers(clone.id).filter((l) => l.backingId && catalog.getLayer(l.backingId).vmId !== clone.id);
  if (targets.length === 0) return;
  const op = journal.begin('detach-clone', clone.id, { layers: targets.map((l) => l.id) });
  await rollDetachForward(ctx, clone, op as OperationRecord<{ layers: string[] }>);
}

export async function rollDetachForward(ctx: Context, clone: VmRecord, op: OperationRecord<{ layers: string[] }>): Promise<void> {
  const { catalog, journal } = ctx;
  const rt = await probeRuntime(ctx.paths.run, clone.id);
  const qmp = rt.state === 'stopped' ? undefined : await connectQmp(ctx.paths.run, clone);
  try {
    for (const layerId of op.plan.layers) {
      const layer = catalog.findLayer(layerId);
      if (!layer || !layer.backingId) continue;
      const foreign = catalog.chain(layer.backingId);
      const stream = async (q: QmpClient): Promise<void> => {
        const graph = await queryBlockGraph(q);
        if (graph.get(formatNode(layer.id))?.backing !== undefined) {
          const jobId = `detach-${layer.id}`;
          await runBlockJob(q, {
            jobId,
            timeoutMs: 24 * 3600_000,
            start: async () => {
              const jobs = await q.execute<{ id: string }[]>('query-jobs');
              if (!jobs.some((j) => j.id === jobId)) await q.execute('block-stream', { 'job-id': jobId, device: formatNode(layer.id), 'auto-dismiss': false });
            },
          });
        }
        // The foreign chain is no longer anyone's backing here: close its nodes, top down.
        for (const f of foreign) {
          await q.execute('blockdev-del', { 'node-name': formatNode(f.id) }).catch(() => undefined);
          await q.execute('blockdev-del', { 'node-name': fileNode(f.id) }).catch(() => undefined);
        }
      };
      const open = qmp && (await queryBlockGraph(qmp)).has(formatNode(layer.id));
      if (open) await stream(qmp);
      else await withStorageDaemon([{ slot: 'detach', chain: catalog.chain(layer.id).map((l) => ({ id: l.id, path: l.path, format: l.format })) }], stream);
      journal.step(op, op.step + 1, () => catalog.setLayerBacking(layer.id, null));
    }
  } finally {
    await qmp?.close();
  }
  journal.finish(op, 'done');
}
