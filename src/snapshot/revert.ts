import { existsSync, rmSync } from 'node:fs';
import { z } from 'zod';
import type { Catalog, SnapshotRecord, VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import type { RevertResult } from '../contract/views.js';
import { VmsnapError } from '../errors.js';
import { defineOperation } from '../operations/define.js';
import { removeUnreferenced } from '../operations/recovery.js';
import { runOperation, withVm } from '../operations/runner.js';
import { runtimeFiles, stagingFiles } from '../qemu/launcher.js';
import { QmpClient } from '../qemu/qmp.js';
import { killQemu, livePid, probeRuntime } from '../qemu/runtime.js';
import { holdsForwardsOf } from '../vm/network.js';
import { promoteStaged, startLocked, startStaged } from '../vm/power.js';
import type { OverlaySwitch } from './live.js';
import { checkMemoryState, launchFor, loadMemoryState, type CheckedMemory } from './memory-state.js';
import { createOverlayFiles, newLayerRecords, OverlaySwitchSchema, planOverlays } from './overlays.js';
import { presentStateChanges, resolveSnapshot, showSnapshot } from './views.js';

export interface RevertOptions {
  /** Discard the present state even when it has changes since its snapshot. */
  force?: boolean;
  /** Boot the VM after reverting to a snapshot without memory. */
  start?: boolean;
}

/** The catalog side of a revert: new active layers, the discarded ones gone, config and "you are here" moved. */
function applyRevertToCatalog(catalog: Catalog, vm: VmRecord, snap: SnapshotRecord, switches: OverlaySwitch[], discardLayerIds: string[], now: string): void {
  for (const l of newLayerRecords(vm, switches, now)) catalog.insertLayer(l);
  catalog.clearActiveLayers(vm.id);
  for (const s of switches) catalog.setActiveLayer(vm.id, s.slot, s.newLayerId);
  for (const id of discardLayerIds) catalog.deleteLayer(id);
  catalog.updateVmConfig(vm.id, snap.config);
  catalog.setCurrentSnapshot(vm.id, snap.id);
}

/**
 * Revert. Step 1: new overlays on the snapshot's layers exist; with memory, a
 * new QEMU starts beside the old one and loads the memory state, its guest
 * stopped (named fault point `loading` after that). Then the old QEMU is
 * killed: from there the present state is gone and the operation only rolls
 * forward. Step 2: the catalog points at the new overlays (config and "you
 * are here" moved) and the new QEMU takes the VM's place, its guest resumed;
 * step 3: the discarded layers' files are removed. Recovery before the kill
 * (the old QEMU still alive) rolls back; after it, forward with the VM left
 * off. A new QEMU the revert did not see through is stopped either way.
 */
export const snapshotRevert = defineOperation({
  kind: 'snapshot-revert',
  plan: z.object({
    snapshotId: z.string(),
    switches: z.array(OverlaySwitchSchema),
    createFiles: z.array(z.string()),
    removeLayers: z.array(z.string()),
    removeFiles: z.array(z.string()),
  }),
  steps: 3,
  faults: ['loading'],
  onFailure: 'rollback',
  files: (p) => [...p.createFiles, ...p.removeFiles],
  async recover(ctx, op, vm) {
    const plan = op.plan;
    // A QEMU started for the reverted VM but never promoted goes either way.
    if (op.vmId) await killQemu(stagingFiles(ctx.paths.run, op.vmId));
    if (!vm) {
      removeUnreferenced(ctx, plan.createFiles);
      op.finish('rolled_back', 'VM gone');
      return { outcome: 'rolled_back' };
    }
    if (op.step < 2) {
      const rt = await probeRuntime(ctx.paths.run, vm.id);
      const snap = ctx.catalog.findSnapshotById(plan.snapshotId);
      if (op.step < 1 || rt.state !== 'stopped' || !snap) {
        // The old QEMU was not killed yet (or never ran): nothing of the present state was lost.
        removeUnreferenced(ctx, plan.createFiles);
        op.finish('rolled_back');
        return { outcome: 'rolled_back' };
      }
      op.done(2, () => applyRevertToCatalog(ctx.catalog, vm, snap, plan.switches, plan.removeLayers, new Date().toISOString()));
    }
    for (const f of plan.removeFiles) rmSync(f, { force: true });
    // A QEMU promoted but whose guest the revert did not (or is not known to have) resumed: the VM is left off.
    await killQemu(runtimeFiles(ctx.paths.run, vm.id));
    op.finish('done', 'interrupted: reverted on disk, VM left off');
    return { outcome: 'rolled_forward', note: 'reverted; the VM is left off' };
  },
});

/**
 * Revert to any snapshot in the tree: every disk gets a new empty overlay on
 * the snapshot's frozen layers, the config goes back to the snapshot's, and
 * with memory the guest resumes exactly where it was.
 */
export async function revertToSnapshot(ctx: Context, vm0: VmRecord, snapName: string, opts: RevertOptions = {}): Promise<RevertResult> {
  const { catalog } = ctx;
  const t0 = performance.now();
  const snap0 = resolveSnapshot(ctx, vm0, snapName);
  return withVm(ctx, vm0, `snapshot revert ${snap0.name}`, async () => {
    const vm = catalog.getVm(vm0.id);
    const snap = resolveSnapshot(ctx, vm, snap0.id);
    // Checked before anything changes (side by side: both only read): a damaged or
    // mismatched memory state is refused with the VM as it is.
    const [changes, mem] = await Promise.all([presentStateChanges(ctx, vm), snap.stateFile ? checkMemoryState(ctx, snap) : undefined]);
    if (changes.wouldLoseData && !opts.force) {
      throw new VmsnapError('WOULD_LOSE_DATA', `reverting VM '${vm.name}' to '${snap.name}' would discard: ${changes.lost.join('; ')}`, {
        hint: 'take a snapshot first to keep the present state, or pass --force to discard it',
        details: { vm: vm.name, snapshot: snap.name, lost: changes.lost },
      });
    }
    for (const [slot, layerId] of Object.entries(snap.layers)) {
      const l = catalog.findLayer(layerId);
      if (!l || !existsSync(l.path)) {
        throw new VmsnapError('NOT_FOUND', `snapshot '${snap.name}': the layer of ${slot} is missing (${l?.path ?? layerId})`, {
          hint: "run 'vmsnap verify'",
        });
      }
    }

    const switches = planOverlays(ctx, snap.layers);
    const oldActive = Object.values(catalog.activeLayers(vm.id)).map((id) => catalog.getLayer(id));
    // The old active layers hold only the present state: no snapshot names them, and nothing builds on them.
    const discard = oldActive.filter((l) => !l.frozen && !l.external && catalog.childrenOfLayer(l.id).length === 0);
    const plan = {
      snapshotId: snap.id,
      switches,
      createFiles: switches.map((s) => s.newPath),
      removeLayers: discard.map((l) => l.id),
      removeFiles: discard.map((l) => l.path),
    };
    return runOperation(ctx, snapshotRevert, { vm, plan }, async (op) => {
      await createOverlayFiles(ctx, switches);
      op.done(1);
      const files = runtimeFiles(ctx.paths.run, vm.id);

      // With memory, the new QEMU starts first, beside the present one (stopped, on the new
      // overlays and the RAM image), and loads the memory state while the old guest still
      // runs: a state QEMU refuses leaves the VM as it was, and the VM is down only from
      // the kill of the old QEMU to the resume of the new one. Not when the reverted VM
      // forwards a host port the present QEMU listens on: it starts after the kill then.
      const afterKill = mem !== undefined && livePid(files) !== undefined && holdsForwardsOf(files, vm.config, snap.config);
      let staged = mem && !afterKill ? await startMemoryQemu(ctx, vm, snap, switches, mem) : undefined;
      op.fault('loading');

      // Past the kill the present state is discarded: the operation only rolls forward.
      let resumeMs: number | undefined;
      let state: RevertResult['state'] = 'stopped';
      let reverted = vm;
      try {
        // The down time starts here: wait only until the old QEMU can run no more, not for its memory to be freed
        // (a QEMU that needs its host ports waits until the old one is gone and its sockets closed).
        await killQemu(files, { untilExiting: Boolean(staged) });
        const killedAt = performance.now();
        op.done(2, () => applyRevertToCatalog(catalog, vm, snap, switches, plan.removeLayers, new Date().toISOString()));
        reverted = catalog.getVm(vm.id);
        if (mem && !staged) staged = await startMemoryQemu(ctx, vm, snap, switches, mem);
        if (staged) {
          promoteStaged(ctx, reverted);
          if (snap.vmState === 'running') await staged.execute('cont');
          state = snap.vmState === 'paused' ? 'paused' : 'running';
          resumeMs = performance.now() - killedAt;
        }
      } catch (e) {
        await staged?.close();
        await killQemu(stagingFiles(ctx.paths.run, vm.id));
        if (op.step < 2) throw e; // the old QEMU lives on: rolled back
        // The disks and config are reverted; only bringing the VM up failed. Leave it off, say so.
        await killQemu(files);
        op.finish('done', e);
        throw new VmsnapError(
          e instanceof VmsnapError ? e.code : 'QEMU_FAILED',
          `reverted VM '${vm.name}' to '${snap.name}' on disk, but starting it failed: ${(e as Error).message}`,
          { hint: `the VM is off; 'vmsnap start ${vm.name}' boots it from the snapshot's disks`, cause: e },
        );
      } finally {
        await staged?.close();
      }
      for (const f of plan.removeFiles) rmSync(f, { force: true });
      op.done(3);
      if (!staged && opts.start) {
        try {
          await startLocked(ctx, reverted, {});
          state = 'running';
        } catch (e) {
          op.finish('done', e);
          throw new VmsnapError(e instanceof VmsnapError ? e.code : 'QEMU_FAILED', `reverted VM '${vm.name}' to '${snap.name}', but starting it failed: ${(e as Error).message}`, {
            hint: `the VM is off; 'vmsnap start ${vm.name}' boots it from the snapshot's disks`,
            cause: e,
          });
        }
      }
      ctx.events.emitEvent({ type: 'vm-state', vm: vm.name, vmId: vm.id, state });
      return {
        snapshot: showSnapshot(ctx, reverted, snap.id),
        state,
        discarded: changes.wouldLoseData ? changes.lost : [],
        ...(resumeMs !== undefined ? { resumeMs } : {}),
        ms: performance.now() - t0,
      };
    });
  });
}

/**
 * The reverted VM's QEMU, started in the staging folder with the snapshot's config on
 * the new overlays, its memory state loaded and checked, its guest not yet resumed. On
 * failure it is stopped again.
 */
async function startMemoryQemu(ctx: Context, vm: VmRecord, snap: SnapshotRecord, switches: OverlaySwitch[], mem: CheckedMemory): Promise<QmpClient> {
  // Every slot's new chain, the disks' and a UEFI VM's NVRAM: the launcher takes each by slot, as a start does.
  const chains = switches.map((s) => ({
    slot: s.slot,
    chain: [{ id: s.newLayerId, path: s.newPath, format: 'qcow2' as const }, ...ctx.catalog.chain(s.oldLayerId).map((l) => ({ id: l.id, path: l.path, format: l.format }))],
  }));
  const { pid, files } = await startStaged(ctx, vm, snap.config, chains, launchFor(mem));
  let qmp: QmpClient | undefined;
  try {
    qmp = await QmpClient.connect(files.qmpSocket, { timeoutMs: 10_000, retryUntilMs: 5000 });
    await loadMemoryState(qmp, { pid, files }, snap, mem);
    return qmp;
  } catch (e) {
    await qmp?.close();
    await killQemu(files);
    throw e;
  }
}
