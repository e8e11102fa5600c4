import { existsSync, rmSync, statfsSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { Catalog, LayerRecord, SnapshotRecord, VmRecord, VmRunState } from '../catalog/catalog.js';
import { faultPoint } from '../catalog/journal.js';
import { withVm, type Context } from '../context.js';
import { VmsnapError } from '../errors.js';
import type { GuestAgentClient } from '../qemu/guest-agent.js';
import { runtimeFiles } from '../qemu/launcher.js';
import { createImage } from '../qemu/qemu-img.js';
import type { QmpClient } from '../qemu/qmp.js';
import { newId, newLayerId } from '../util/ids.js';
import { validateName, type VmConfig } from '../vm/config.js';
import { fileBytes, layerPath, type VmService } from '../vm/machines.js';
import { connectQmp, killQemu, probeRuntime } from '../vm/runtime.js';
import { fsyncFileAndDir } from './fsync.js';
import { addOverlayNodes, loadMemory, mergeBackOverlays, removeOverlayNodes, snapshotWithMemory, switchToOverlays, type OverlaySwitch } from './live.js';
import { renderTree } from './tree.js';
import { cloneFromSnapshot, detachClone, directClones, type CloneOptions, type CloneResult } from './clone.js';
import { deleteSnapshotLocked, estimateMergeBytes, vmDiskUsage, type MergeReport } from './delete.js';
import { formatBytes } from '../util/size.js';
import { healthSettings } from '../health/settings.js';

export interface TakeSnapshotOptions {
  description?: string;
  /** Save memory and device state (default: yes for a running or paused VM). */
  memory?: boolean;
  /** Use a live pre-copy save even where background-snapshot works (benchmarks, tests). */
  forcePrecopy?: boolean;
}

export interface SnapshotDiskView {
  slot: string;
  layerId: string;
  path: string;
  /** Bytes the frozen layer (this snapshot's delta) takes on disk. */
  bytes: number;
}

/** A snapshot as the CLI, the API and the UI show it. */
export interface SnapshotView {
  id: string;
  name: string;
  description: string;
  parentId: string | null;
  parent: string | null;
  createdAt: string;
  hasMemory: boolean;
  /** The VM's power state when it was taken: a revert brings it back to that. */
  vmState: VmRunState;
  /** Guest-visible pause in ms (STOP → RESUME event timestamps); null when the VM was off. */
  pauseMs: number | null;
  current: boolean;
  children: string[];
  disks: SnapshotDiskView[];
  deltaBytes: number;
  stateBytes: number;
  config: VmConfig;
  meta: Record<string, unknown>;
}

export interface RevertOptions {
  /** Discard the present state even when it has changes since its snapshot. */
  force?: boolean;
  /** Boot the VM after reverting to a snapshot without memory. */
  start?: boolean;
}

export interface RevertResult {
  snapshot: SnapshotView;
  /** What the VM is now. */
  state: 'running' | 'paused' | 'stopped';
  /** What was discarded. */
  discarded: string[];
  /** From the kill of the old QEMU to the guest running again, for reverts with memory. */
  resumeMs?: number;
}

export interface DeleteResult {
  /** Names of the snapshots deleted. */
  deleted: string[];
  /** Bytes of layers and state files freed (never negative: a delete never grows disk usage). */
  reclaimedBytes: number;
  /** The merges done to consolidate the chain (online with block jobs, or offline with qemu-img). */
  merges: MergeReport[];
}

export interface DeleteOptions {
  /** Bytes copied so far of the merge under way. */
  onProgress?: (done: number, total: number, what: string) => void;
  /**
   * A snapshot that linked clones build on is pinned: by default deleting it is
   * refused, naming the clones; 'detach' first copies its data into each clone
   * (they no longer depend on this VM), then deletes it.
   */
  clones?: 'refuse' | 'detach';
}

/** What a revert would throw away, in words a user can judge. */
export interface PresentStateChanges {
  running: boolean;
  /** What a revert would discard, in words: the running state, writes per disk, config changes. */
  lost: string[];
  /** A revert without force is refused (anything is listed in `lost`). */
  wouldLoseData: boolean;
}

function size(path: string | null): number {
  if (!path) return 0;
  try {
    return statSync(path).blocks * 512;
  } catch {
    return 0;
  }
}

/** A fresh qcow2 overlay header, with no data written yet, is this small or smaller. */
const EMPTY_OVERLAY_BYTES = 256 * 1024;

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

/** The catalog side of a revert: new active layers, the discarded ones gone, config and "you are here" moved. */
export function applyRevertToCatalog(
  catalog: Catalog,
  vm: VmRecord,
  snap: SnapshotRecord,
  switches: OverlaySwitch[],
  discardLayerIds: string[],
  now: string,
): void {
  for (const l of newLayerRecords(vm, switches, now)) catalog.insertLayer(l);
  catalog.clearActiveLayers(vm.id);
  for (const s of switches) catalog.setActiveLayer(vm.id, s.slot, s.newLayerId);
  for (const id of discardLayerIds) catalog.deleteLayer(id);
  catalog.updateVmConfig(vm.id, snap.config);
  catalog.setCurrentSnapshot(vm.id, snap.id);
}

export class SnapshotService {
  constructor(
    private readonly ctx: Context,
    private readonly vms: VmService,
  ) {}

  private get catalog() {
    return this.ctx.catalog;
  }

  private resolve(vm: VmRecord, nameOrId: string): SnapshotRecord {
    return resolveSnapshot(this.ctx, vm, nameOrId);
  }

  private view(vm: VmRecord, s: SnapshotRecord, all: SnapshotRecord[]): SnapshotView {
    const disks = Object.entries(s.layers).map(([slot, layerId]) => {
      const l = this.catalog.findLayer(layerId);
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
      stateBytes: size(s.stateFile),
      config: s.config,
      meta: s.meta,
    };
  }

  list(vmName: string): SnapshotView[] {
    const vm = this.vms.get(vmName);
    const all = this.catalog.listSnapshots(vm.id).filter((s) => s.status === 'ready');
    return all.map((s) => this.view(vm, s, all));
  }

  show(vmName: string, snapName: string): SnapshotView {
    const vm = this.vms.get(vmName);
    const s = this.resolve(vm, snapName);
    return this.view(vm, s, this.catalog.listSnapshots(vm.id));
  }

  /** The tree drawn for a terminal, with "you are here" under the current snapshot. */
  tree(vmName: string): string {
    const vm = this.vms.get(vmName);
    const views = this.list(vm.id);
    return renderTree(views, vm.currentSnapshotId, (s) => {
      const bits = [s.hasMemory ? 'memory' : 'disk only', new Date(s.createdAt).toLocaleString()];
      return `${s.name}  (${bits.join(', ')})${s.description ? ` — ${s.description}` : ''}`;
    });
  }

  /** New empty overlays, one per disk, on top of the given layers. */
  private planOverlays(onto: Record<string, string>): OverlaySwitch[] {
    return Object.entries(onto).map(([slot, oldLayerId]) => {
      const id = newLayerId();
      return { slot, oldLayerId, newLayerId: id, newPath: layerPath(this.ctx.paths.layers, id) };
    });
  }

  /** Create the overlay files with qemu-img; the backing pointer is relative when both live in the layers dir. */
  private async createOverlayFiles(switches: OverlaySwitch[]): Promise<void> {
    for (const s of switches) {
      const below = this.catalog.getLayer(s.oldLayerId);
      const backing = dirname(below.path) === dirname(s.newPath) ? basename(below.path) : below.path;
      await createImage(s.newPath, { format: 'qcow2', backing, backingFormat: below.format });
      fsyncFileAndDir(s.newPath);
    }
  }

  private newLayerRecords(vm: VmRecord, switches: OverlaySwitch[], now: string): LayerRecord[] {
    return newLayerRecords(vm, switches, now);
  }

  /**
   * Take a snapshot. Every disk's active layer is frozen and a new empty
   * overlay takes the writes, for all disks at one instant; with memory, the
   * RAM and device state of that same instant goes to a state file.
   */
  async create(vmName: string, name: string, opts: TakeSnapshotOptions = {}): Promise<SnapshotView> {
    const vm0 = this.vms.get(vmName);
    validateName(name, 'snapshot');
    if (opts.description !== undefined && opts.description.length > 4096) {
      throw new VmsnapError('INVALID_ARGUMENT', 'description: at most 4096 characters', { details: { field: 'description' } });
    }
    return withVm(this.ctx, vm0, `snapshot create ${name}`, async () => {
      const vm = this.vms.get(vm0.id);
      if (this.catalog.findSnapshot(vm.id, name)) {
        throw new VmsnapError('ALREADY_EXISTS', `VM '${vm.name}' already has a snapshot named '${name}'`, {
          hint: 'snapshot names are unique per VM: choose another',
          details: { vm: vm.name, snapshot: name },
        });
      }
      const rt = await probeRuntime(this.ctx.paths.run, vm.id);
      if (rt.state === 'unknown') {
        throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' is in an unknown state: ${rt.detail ?? ''}`, { hint: `vmsnap status ${vm.name}` });
      }
      const vmState: VmRunState = rt.state === 'stopped' ? 'off' : rt.state;
      const withMemory = vmState !== 'off' && (opts.memory ?? true);
      this.checkReserve(vm, withMemory);
      if (opts.memory === true && vmState === 'off') {
        throw new VmsnapError('INVALID_ARGUMENT', `VM '${vm.name}' is off: there is no memory state to save`, {
          hint: 'take a disk-only snapshot (--no-memory), or start the VM first',
        });
      }
      const switches = this.planOverlays(this.catalog.activeLayers(vm.id));
      const snapshotId = newId();
      const stateFile = withMemory ? join(this.ctx.paths.states, `${snapshotId}.state`) : null;
      const now = new Date().toISOString();
      const record: SnapshotRecord = {
        id: snapshotId,
        vmId: vm.id,
        name,
        description: opts.description ?? '',
        parentId: vm.currentSnapshotId,
        createdAt: now,
        config: vm.config,
        stateFile,
        vmState,
        pauseMs: null,
        status: 'prepare',
        meta: {},
        layers: Object.fromEntries(switches.map((s) => [s.slot, s.oldLayerId])),
      };
      const op = this.ctx.journal.begin('snapshot-create', vm.id, {
        snapshotId,
        name,
        vmState,
        stateFile,
        switches,
        createFiles: [...switches.map((s) => s.newPath), ...(stateFile ? [stateFile] : [])],
      });
      this.ctx.events.emitEvent({ type: 'operation', operationId: op.id, vm: vm.name, kind: 'snapshot-create', status: 'started' });

      let qmp: QmpClient | undefined;
      // Disk only, running: reach the guest agent (to quiesce) while the overlay files are made.
      const agentReady = !withMemory && vmState === 'running' ? this.agentOrNull(vm) : Promise.resolve(null);
      let switched = false;
      let nodesAdded = false;
      const meta: Record<string, unknown> = {};
      try {
        await this.createOverlayFiles(switches);
        // Step 1: files exist; the snapshot row is written in 'prepare' (not shown, removed on failure).
        this.ctx.journal.step(op, 1, () => this.catalog.insertSnapshot(record));

        if (vmState === 'off') {
          switched = true;
        } else {
          qmp = await connectQmp(this.ctx.paths.run, vm);
          await addOverlayNodes(qmp, switches);
          nodesAdded = true;
          if (withMemory) {
            const r = await snapshotWithMemory(qmp, switches, stateFile!, {
              sinkSocket: join(runtimeFiles(this.ctx.paths.run, vm.id).dir, 'state-sink.sock'),
              running: vmState === 'running',
              onDisksSwitched: () => (switched = true),
              ...(opts.forcePrecopy ? { forcePrecopy: true } : {}),
            });
            record.pauseMs = r.pauseMs;
            Object.assign(meta, {
              memoryMode: r.mode,
              stateSha256: r.stateSha256,
              saveMs: Math.round(r.totalMs),
              ...(r.qemuDowntimeMs !== undefined ? { qemuDowntimeMs: r.qemuDowntimeMs } : {}),
              ...(r.fallbackReason ? { fallbackReason: r.fallbackReason } : {}),
            });
          } else {
            // Disk only: quiesce the guest's filesystems if its agent answers (one connection
            // for freeze and thaw, so the guest's writes wait no longer than they must), then switch.
            const agent = await freezeGuest(await agentReady);
            const frozenAt = performance.now();
            let switchMs = 0;
            try {
              await switchToOverlays(qmp, switches);
              switchMs = performance.now() - frozenAt;
              switched = true;
            } finally {
              if (agent) await thawGuest(agent);
            }
            // The vCPUs never stop: I/O waits for the transaction at most; with quiescing, the
            // guest's filesystem writes also wait from freeze to thaw (recorded as quiesceMs).
            record.pauseMs = vmState === 'running' ? switchMs : 0;
            Object.assign(meta, { quiesced: agent !== null, pauseSource: 'transaction', ...(agent ? { quiesceMs: Math.round((performance.now() - frozenAt) * 10) / 10 } : {}) });
          }
        }
        faultPoint('snapshot-create', 'switched');
        // Step 2: QEMU writes to the new overlays. Record it all in one transaction and finish.
        this.ctx.journal.finish(op, 'done', undefined, () => {
          for (const l of this.newLayerRecords(vm, switches, now)) this.catalog.insertLayer(l);
          for (const s of switches) {
            this.catalog.setLayerFrozen(s.oldLayerId);
            this.catalog.setActiveLayer(vm.id, s.slot, s.newLayerId);
          }
          this.catalog.updateSnapshot(snapshotId, { status: 'ready', pauseMs: record.pauseMs, meta });
          this.catalog.setCurrentSnapshot(vm.id, snapshotId);
        });
        this.ctx.events.emitEvent({ type: 'operation', operationId: op.id, vm: vm.name, kind: 'snapshot-create', status: 'done' });
        return this.show(vm.id, snapshotId);
      } catch (e) {
        // Undo in reverse: put the VM back on its previous layers, then remove every file made.
        try {
          if (qmp && switched && vmState !== 'off') await mergeBackOverlays(qmp, switches);
          else if (qmp && nodesAdded) await removeOverlayNodes(qmp, switches);
          for (const s of switches) rmSync(s.newPath, { force: true });
          if (stateFile) rmSync(stateFile, { force: true });
          this.ctx.journal.finish(op, 'rolled_back', e, () => this.catalog.deleteSnapshot(snapshotId));
        } catch (undoError) {
          this.ctx.journal.finish(op, 'failed', `${String(e)}; rollback failed: ${String(undoError)}`);
          throw new VmsnapError('INTERNAL', `snapshot failed and its rollback failed too: ${(undoError as Error).message}`, {
            hint: "run 'vmsnap recover'",
            cause: e,
          });
        }
        this.ctx.events.emitEvent({ type: 'operation', operationId: op.id, vm: vm.name, kind: 'snapshot-create', status: 'failed', error: String(e) });
        throw e;
      } finally {
        await qmp?.close();
        await (await agentReady)?.close();
      }
    });
  }

  /** The guest agent, ready; null if it does not answer soon (the snapshot is then taken unquiesced). */
  private async agentOrNull(vm: VmRecord): Promise<GuestAgentClient | null> {
    try {
      return await this.vms.agent(vm, 1500);
    } catch {
      return null;
    }
  }

  /** What reverting now would discard: the running state, disk writes since the current snapshot, config changes. */
  async presentStateChanges(vmName: string): Promise<PresentStateChanges> {
    const vm = this.vms.get(vmName);
    const rt = await probeRuntime(this.ctx.paths.run, vm.id);
    const lost: string[] = [];
    const running = rt.state !== 'stopped';
    const since = vm.currentSnapshotId ? `since snapshot '${this.catalog.findSnapshotById(vm.currentSnapshotId)?.name}'` : 'since the VM was created';
    if (running) lost.push(`the ${rt.state} state of the VM (its memory and processes)`);
    for (const [slot, layerId] of Object.entries(this.catalog.activeLayers(vm.id))) {
      const l = this.catalog.getLayer(layerId);
      const bytes = fileBytes(l.path);
      if (running || bytes > EMPTY_OVERLAY_BYTES) lost.push(`writes to ${slot} ${since} (layer ${l.id}, ${Math.round(bytes / 1024)} KiB on disk)`);
    }
    const current = vm.currentSnapshotId ? this.catalog.findSnapshotById(vm.currentSnapshotId) : undefined;
    if (current && JSON.stringify(current.config) !== JSON.stringify(vm.config)) lost.push('hardware config changes made since that snapshot');
    return { running, lost, wouldLoseData: lost.length > 0 };
  }

  /**
   * Revert to any snapshot in the tree: every disk gets a new empty overlay on
   * the snapshot's frozen layers, the config goes back to the snapshot's, and
   * with memory the guest resumes exactly where it was.
   */
  async revert(vmName: string, snapName: string, opts: RevertOptions = {}): Promise<RevertResult> {
    const vm0 = this.vms.get(vmName);
    const snap0 = this.resolve(vm0, snapName);
    return withVm(this.ctx, vm0, `snapshot revert ${snap0.name}`, async () => {
      const vm = this.vms.get(vm0.id);
      const snap = this.resolve(vm, snap0.id);
      const changes = await this.presentStateChanges(vm.id);
      const wouldLose = changes.lost;
      const hasChanges = changes.wouldLoseData;
      if (hasChanges && !opts.force) {
        throw new VmsnapError('WOULD_LOSE_DATA', `reverting VM '${vm.name}' to '${snap.name}' would discard: ${wouldLose.join('; ')}`, {
          hint: 'take a snapshot first to keep the present state, or pass --force to discard it',
          details: { vm: vm.name, snapshot: snap.name, lost: wouldLose },
        });
      }
      for (const [slot, layerId] of Object.entries(snap.layers)) {
        const l = this.catalog.findLayer(layerId);
        if (!l || !existsSync(l.path)) {
          throw new VmsnapError('NOT_FOUND', `snapshot '${snap.name}': the layer of ${slot} is missing (${l?.path ?? layerId})`, {
            hint: "run 'vmsnap verify'",
          });
        }
      }
      if (snap.stateFile && !existsSync(snap.stateFile)) {
        throw new VmsnapError('NOT_FOUND', `snapshot '${snap.name}': its memory state file is missing (${snap.stateFile})`, {
          hint: "run 'vmsnap verify'",
        });
      }

      const switches = this.planOverlays(snap.layers);
      const oldActive = Object.values(this.catalog.activeLayers(vm.id)).map((id) => this.catalog.getLayer(id));
      // The old active layers hold only the present state: no snapshot names them, and nothing builds on them.
      const discard = oldActive.filter((l) => !l.frozen && !l.external && this.catalog.childrenOfLayer(l.id).length === 0);
      const op = this.ctx.journal.begin('snapshot-revert', vm.id, {
        snapshotId: snap.id,
        switches,
        createFiles: switches.map((s) => s.newPath),
        removeLayers: discard.map((l) => l.id),
        removeFiles: discard.map((l) => l.path),
      });
      this.ctx.events.emitEvent({ type: 'operation', operationId: op.id, vm: vm.name, kind: 'snapshot-revert', status: 'started' });
      try {
        await this.createOverlayFiles(switches);
        this.ctx.journal.step(op, 1);
      } catch (e) {
        for (const s of switches) rmSync(s.newPath, { force: true });
        this.ctx.journal.finish(op, 'rolled_back', e);
        throw e;
      }

      // Past this point the present state is discarded: the operation only rolls forward.
      const t0 = performance.now();
      const files = runtimeFiles(this.ctx.paths.run, vm.id);
      await killQemu(files);
      const now = new Date().toISOString();
      this.ctx.journal.step(op, 2, () => applyRevertToCatalog(this.catalog, vm, snap, switches, discard.map((l) => l.id), now));
      for (const l of discard) rmSync(l.path, { force: true });
      this.ctx.journal.step(op, 3);

      let state: RevertResult['state'] = 'stopped';
      let resumeMs: number | undefined;
      const reverted = this.vms.get(vm.id);
      try {
        if (snap.stateFile) {
          // Started with its vCPUs stopped: the guest runs only once the state is loaded and its checksum matched.
          await this.vms.startLocked(reverted, { incomingDefer: true, paused: true });
          const qmp = await connectQmp(this.ctx.paths.run, reverted);
          try {
            const loaded = await loadMemory(qmp, snap.stateFile);
            const expected = typeof snap.meta.stateSha256 === 'string' ? snap.meta.stateSha256 : undefined;
            if (expected !== undefined && loaded.sha256 !== expected) {
              throw new VmsnapError('CATALOG_ERROR', `snapshot '${snap.name}': its memory state file is damaged (checksum mismatch); the guest was not resumed from it`, {
                hint: `the VM is left off; revert to another snapshot, or delete this one ('vmsnap verify ${vm.name} --deep' checks them all)`,
                details: { step: 'load-memory', expected, actual: loaded.sha256 },
              });
            }
            if (snap.vmState === 'running') await qmp.execute('cont');
            state = snap.vmState === 'paused' ? 'paused' : 'running';
          } finally {
            await qmp.close();
          }
          resumeMs = performance.now() - t0;
        } else if (opts.start) {
          await this.vms.startLocked(reverted, {});
          state = 'running';
        }
        this.ctx.journal.finish(op, 'done');
      } catch (e) {
        // The disks and config are reverted; only bringing the VM up failed. Leave it off, say so.
        await killQemu(files);
        this.ctx.journal.finish(op, 'done', e);
        throw new VmsnapError(
          e instanceof VmsnapError ? e.code : 'QEMU_FAILED',
          `reverted VM '${vm.name}' to '${snap.name}' on disk, but starting it failed: ${(e as Error).message}`,
          { hint: `the VM is off; 'vmsnap start ${vm.name}' boots it from the snapshot's disks`, cause: e },
        );
      }
      this.ctx.events.emitEvent({ type: 'operation', operationId: op.id, vm: vm.name, kind: 'snapshot-revert', status: 'done' });
      this.ctx.events.emitEvent({ type: 'vm-state', vm: vm.name, vmId: vm.id, state });
      return {
        snapshot: this.show(vm.id, snap.id),
        state,
        discarded: hasChanges ? wouldLose : [],
        ...(resumeMs !== undefined ? { resumeMs } : {}),
      };
    });
  }

  /**
   * Delete any snapshot — a leaf, an inner one, a branch point, the root, the
   * current one — while the VM runs or is off. Its delta is merged into what
   * depends on it; its memory state file goes with it.
   */
  async delete(vmName: string, snapName: string, opts: DeleteOptions = {}): Promise<DeleteResult> {
    const vm = this.vms.get(vmName);
    const snap = this.resolve(vm, snapName);
    return withVm(this.ctx, vm, `snapshot delete ${snap.name}`, async () => {
      const target = this.resolve(vm, snap.id);
      const clones = directClones(this.ctx, target);
      if (clones.length > 0 && opts.clones !== 'detach') {
        throw new VmsnapError('INVALID_STATE', `snapshot '${target.name}' is pinned by its linked clones: ${clones.map((c) => c.name).join(', ')}`, {
          hint: `pass --detach-clones to copy its data into them first (they keep all their data), or remove the clones`,
          details: { vm: vm.name, snapshot: target.name, clones: clones.map((c) => c.name) },
        });
      }
      for (const clone of clones) await withVm(this.ctx, clone, `detach from ${vm.name}`, () => detachClone(this.ctx, clone));
      this.checkSpaceForMerge(target);
      const before = vmDiskUsage(this.ctx, vm.id);
      const { merges } = await deleteSnapshotLocked(this.ctx, this.vms.get(vm.id), target, opts.onProgress);
      return { deleted: [target.name], reclaimedBytes: Math.max(0, before - vmDiskUsage(this.ctx, vm.id)), merges };
    });
  }

  /**
   * Clone new VMs from any snapshot: linked (empty overlays on its layers,
   * instant) or full (flattened, independent); with --start, from its memory
   * when it has some: each clone carries on from that instant, with its own MAC.
   */
  async clone(vmName: string, snapName: string, newName: string, opts: CloneOptions = {}): Promise<CloneResult> {
    const vm = this.vms.get(vmName);
    const snap = this.resolve(vm, snapName);
    return withVm(this.ctx, vm, `clone ${snap.name}`, async () => cloneFromSnapshot(this.ctx, this.vms, vm, this.resolve(vm, snap.id), newName, opts));
  }

  /** New snapshots are refused while free space is under the reserve (a full disk would pause the guest). */
  private checkReserve(vm: VmRecord, withMemory: boolean): void {
    const settings = healthSettings(this.ctx);
    const fs = statfsSync(this.ctx.paths.layers);
    const free = fs.bavail * fs.bsize;
    // A state file can be as large as the guest's RAM.
    const need = settings.reserveBytes + (withMemory ? vm.config.memoryMiB * 1024 ** 2 : 0);
    if (free < need) {
      throw new VmsnapError('NO_SPACE', `not taking a snapshot of '${vm.name}': ${formatBytes(free)} free in ${this.ctx.paths.home}, under the reserve of ${formatBytes(settings.reserveBytes)}${withMemory ? ` plus ${vm.config.memoryMiB} MiB for the memory state` : ''}`, {
        hint: "delete snapshots you no longer need ('vmsnap df' shows what each would free), or lower the reserve in config.json",
        details: { freeBytes: free, reserveBytes: settings.reserveBytes },
      });
    }
  }

  /** Refuse a delete whose merge cannot fit, before anything is touched (a merge that runs out of space midway is still recoverable). */
  private checkSpaceForMerge(snap: SnapshotRecord): void {
    const need = estimateMergeBytes(this.ctx, snap);
    const fs = statfsSync(this.ctx.paths.layers);
    const free = fs.bavail * fs.bsize;
    if (need > free) {
      throw new VmsnapError('NO_SPACE', `deleting '${snap.name}' must merge about ${formatBytes(need)} but only ${formatBytes(free)} is free in ${this.ctx.paths.layers}`, {
        hint: 'free disk space first; nothing was changed',
        details: { needBytes: need, freeBytes: free },
      });
    }
  }

  /** Delete every snapshot of a VM: all deltas merge into the present disks (VMware's "Delete All"). */
  async deleteAll(vmName: string, opts: DeleteOptions = {}): Promise<DeleteResult> {
    const vm = this.vms.get(vmName);
    return withVm(this.ctx, vm, 'snapshot delete --all', async () => {
      const before = vmDiskUsage(this.ctx, vm.id);
      const deleted: string[] = [];
      const merges: MergeReport[] = [];
      // Newest first: each delete then mostly drops leaves and merges small deltas.
      const all = this.catalog.listSnapshots(vm.id).filter((s) => s.status === 'ready');
      const pinned = all.flatMap((s) => directClones(this.ctx, s).map((c) => `${c.name} (on '${s.name}')`));
      if (pinned.length > 0 && opts.clones !== 'detach') {
        throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' has linked clones built on its snapshots: ${pinned.join(', ')}`, {
          hint: 'pass --detach-clones to copy their data into them first, or remove the clones',
          details: { vm: vm.name, clones: pinned },
        });
      }
      for (const s of all) for (const clone of directClones(this.ctx, s)) await withVm(this.ctx, clone, `detach from ${vm.name}`, () => detachClone(this.ctx, clone));
      for (const s of this.catalog.listSnapshots(vm.id).reverse()) {
        if (s.status === 'prepare') continue;
        const r = await deleteSnapshotLocked(this.ctx, this.vms.get(vm.id), s, opts.onProgress);
        deleted.push(s.name);
        merges.push(...r.merges);
      }
      return { deleted, reclaimedBytes: Math.max(0, before - vmDiskUsage(this.ctx, vm.id)), merges };
    });
  }
}

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

/** Freeze the guest's filesystems: the agent, if it froze them (it stays connected for the thaw). */
async function freezeGuest(agent: GuestAgentClient | null): Promise<GuestAgentClient | null> {
  if (!agent) return null;
  try {
    await agent.fsfreezeFreeze();
    return agent;
  } catch {
    // A freeze that failed or timed out half way may have frozen some filesystems: never leave them so.
    await agent.fsfreezeThaw().catch(() => undefined);
    return null;
  }
}

async function thawGuest(agent: GuestAgentClient): Promise<void> {
  await agent.fsfreezeThaw();
}
