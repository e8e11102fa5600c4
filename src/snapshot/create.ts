import { existsSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import type { SnapshotMeta, SnapshotRecord, VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import { validateName } from '../contract/config.js';
import { formatBytes } from '../contract/format.js';
import { VmsnapError } from '../errors.js';
import { defineOperation } from '../operations/define.js';
import { removeUnreferenced } from '../operations/recovery.js';
import { runOperation, withVm } from '../operations/runner.js';
import { memoryStateFiles, memoryStatePaths } from '../paths.js';
import type { GuestAgentClient } from '../qemu/guest-agent.js';
import { formatNode, runtimeFiles } from '../qemu/launcher.js';
import { commitImage } from '../qemu/qemu-img.js';
import type { QmpClient } from '../qemu/qmp.js';
import { connectQmp, probeRuntime } from '../qemu/runtime.js';
import { parseDuration } from '../policy/duration.js';
import { healthSettings } from '../settings.js';
import { newId } from '../util/ids.js';
import { sleep } from '../util/process.js';
import { guestAgent } from '../vm/guest.js';
import { addOverlayNodes, deviceTopNodes, mergeBackOverlays, type OverlaySwitch, removeOverlayNodes, openMemorySink, snapshotWithMemory, switchToOverlays } from './live.js';
import { parentRamImage, recordSplitState } from './memory-state.js';
import { createOverlayFiles, newLayerRecords, OverlaySwitchSchema, planOverlays } from './overlays.js';

export interface TakeSnapshotOptions {
  description?: string;
  /** Save memory and device state (default: yes for a running or paused VM). */
  memory?: boolean;
  /** Use a live pre-copy save even where background-snapshot works (benchmarks, tests). */
  forcePrecopy?: boolean;
  /** A duration ('7d', '12h', '1d12h'): a prune deletes the snapshot once it has passed (unless it is protected). */
  expire?: string;
}

/** What a policy pass adds: the policy and slot it takes the snapshot for, its id, and the operation it runs inside. */
export interface TakeForPolicy {
  id: string;
  policy: { id: string; slot: string | null };
  parent: { id: string };
}

/**
 * Take a snapshot. Step 1: the overlay files exist and the snapshot row is
 * written in 'prepare' (hidden). Then QEMU switches every disk to its overlay
 * at one instant, and with memory its stream is split into the RAM image and
 * the device state (named fault points `splitting`, once the RAM image is
 * being written, and `switched` after it all) and the operation
 * finishes in one transaction that freezes the old layers and marks the
 * snapshot ready. Until then it is undone: the VM goes back onto its previous
 * layers with every write made since merged back, and the files made go.
 */
export const snapshotCreate = defineOperation({
  kind: 'snapshot-create',
  plan: z.object({
    snapshotId: z.string(),
    name: z.string(),
    vmState: z.enum(['running', 'paused', 'off']),
    stateFile: z.string().nullable(),
    switches: z.array(OverlaySwitchSchema),
    createFiles: z.array(z.string()),
  }),
  steps: 1,
  faults: ['splitting', 'switched'],
  onFailure: 'rollback',
  files: (p) => p.createFiles,
  async recover(ctx, op, vm) {
    const plan = op.plan;
    const note = await undoOverlaySwitch(ctx, vm, plan);
    op.finish('rolled_back', undefined, () => {
      if (ctx.catalog.findSnapshotById(plan.snapshotId)) ctx.catalog.deleteSnapshot(plan.snapshotId);
    });
    return { outcome: 'rolled_back', ...(note ? { note } : {}) };
  },
});

/**
 * Undo a switch of a VM's disks onto new overlays that the catalog has not
 * recorded (a snapshot or a temporary frozen point killed half way): the VM goes
 * back onto its previous layers with every write made since merged back, and
 * the files made are removed. Returns a note when writes were merged back.
 */
export async function undoOverlaySwitch(
  ctx: Context,
  vm: VmRecord | undefined,
  plan: { vmState: 'running' | 'paused' | 'off'; switches: OverlaySwitch[]; createFiles: string[] },
): Promise<string | undefined> {
  let note: string | undefined;
  if (vm) {
    const rt = await probeRuntime(ctx.paths.run, vm.id);
    if (rt.state !== 'stopped') {
      // QEMU outlived the switch: stop any save under way and move the disks back onto their old layers.
      const qmp = await connectQmp(ctx.paths.run, vm);
      try {
        await letBackgroundSnapshotEnd(qmp);
        const mig = await qmp.execute<{ status?: string }>('query-migrate');
        if (mig.status && MIGRATING.includes(mig.status)) {
          await qmp.execute('migrate_cancel').catch(() => undefined);
          for (let i = 0; i < 200; i++) {
            const m = await qmp.execute<{ status?: string }>('query-migrate');
            if (m.status !== 'cancelling' && m.status !== 'active' && m.status !== 'pre-switchover') break;
            await sleep(25);
          }
        }
        const tops = await deviceTopNodes(qmp);
        const switched = plan.switches.filter((s) => tops[s.slot] === formatNode(s.newLayerId));
        await mergeBackOverlays(qmp, switched);
        await removeOverlayNodes(
          qmp,
          plan.switches.filter((s) => !switched.includes(s)),
        );
        const st = await qmp.queryStatus();
        if (plan.vmState === 'running' && !st.running) await qmp.execute('cont');
        note = switched.length ? 'merged the writes made since back into the previous layers' : undefined;
      } finally {
        await qmp.close();
      }
    } else {
      // QEMU is gone too: the writes it made into a new overlay go back down before the overlay is
      // removed. A commit that fails (a full disk, an I/O error) throws here and leaves the overlay
      // and the operation as they are, for the next recovery: never a write lost.
      for (const s of plan.switches) {
        if (existsSync(s.newPath)) await commitImage(s.newPath);
      }
    }
  }
  removeUnreferenced(ctx, plan.createFiles);
  return note;
}

const MIGRATING = ['setup', 'active', 'pre-switchover', 'device', 'cancelling'];

/**
 * A background snapshot still under way is left to finish (its split process reads the
 * stream to the end), not cancelled: QEMU 7.2 write-protects guest RAM for it, and a
 * cancel can leave a thread that writes a protected page asleep for good (src/memory/README.md).
 * A pre-copy save (no write protection) is cancelled by the caller.
 */
async function letBackgroundSnapshotEnd(qmp: QmpClient): Promise<void> {
  const caps = await qmp.execute<{ capability: string; state: boolean }[]>('query-migrate-capabilities');
  if (!caps.some((c) => c.capability === 'background-snapshot' && c.state)) return;
  // RAM goes out at well over 100 MiB/s even under TCG: 10 minutes is far more than a save takes.
  const until = Date.now() + 600_000;
  while (Date.now() < until) {
    const m = await qmp.execute<{ status?: string }>('query-migrate');
    if (!m.status || !['setup', 'active'].includes(m.status)) return;
    await sleep(50);
  }
}

/** New snapshots are refused while free space is under the reserve (a full disk would pause the guest). */
function checkReserve(ctx: Context, vm: VmRecord, withMemory: boolean): void {
  const settings = healthSettings(ctx.paths.home);
  const fs = statfsSync(ctx.paths.layers);
  const free = fs.bavail * fs.bsize;
  // A state file can be as large as the guest's RAM.
  const need = settings.reserveBytes + (withMemory ? vm.config.memoryMiB * 1024 ** 2 : 0);
  if (free < need) {
    throw new VmsnapError(
      'NO_SPACE',
      `not taking a snapshot of '${vm.name}': ${formatBytes(free)} free in ${ctx.paths.home}, under the reserve of ${formatBytes(settings.reserveBytes)}${withMemory ? ` plus ${vm.config.memoryMiB} MiB for the memory state` : ''}`,
      {
        hint: "delete snapshots you no longer need ('vmsnap df' shows what each would free), or lower the reserve in config.json",
        details: { freeBytes: free, reserveBytes: settings.reserveBytes },
      },
    );
  }
}

/** The guest agent, ready; null if it does not answer soon (the snapshot is then taken unquiesced). */
export async function agentOrNull(ctx: Context, vm: VmRecord): Promise<GuestAgentClient | null> {
  try {
    return await guestAgent(ctx, vm, 1500);
  } catch {
    return null;
  }
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

/**
 * Freeze a live VM's disks at one instant without memory: quiesce the guest's
 * filesystems when its agent answers (one connection for freeze and thaw, so
 * the guest's writes wait no longer than they must), then one transaction moves
 * every disk onto its new overlay (added with addOverlayNodes). The vCPUs never
 * stop: I/O waits for the transaction at most (pauseMs); with quiescing, the
 * guest's filesystem writes also wait from freeze to thaw (quiesceMs).
 */
export async function switchDisksLive(
  qmp: QmpClient,
  switches: OverlaySwitch[],
  agentReady: GuestAgentClient | null,
  running: boolean,
): Promise<{ pauseMs: number; quiesced: boolean; quiesceMs?: number }> {
  const agent = await freezeGuest(agentReady);
  const frozenAt = performance.now();
  let switchMs = 0;
  try {
    await switchToOverlays(qmp, switches);
    switchMs = performance.now() - frozenAt;
  } finally {
    if (agent) await agent.fsfreezeThaw();
  }
  return {
    pauseMs: running ? switchMs : 0,
    quiesced: agent !== null,
    ...(agent ? { quiesceMs: Math.round((performance.now() - frozenAt) * 10) / 10 } : {}),
  };
}

/**
 * Take a snapshot. Every disk's active layer is frozen and a new empty
 * overlay takes the writes, for all disks at one instant; with memory, the
 * RAM and device state of that same instant goes to a state file.
 */
export async function takeSnapshot(ctx: Context, vm0: VmRecord, name: string, opts: TakeSnapshotOptions = {}): Promise<SnapshotRecord> {
  checkTakeOptions(name, opts);
  return withVm(ctx, vm0, `snapshot create ${name}`, () => takeSnapshotLocked(ctx, vm0, name, opts));
}

/** Refuse bad input before anything is locked or written. Returns the expiry in ms, if any. */
function checkTakeOptions(name: string, opts: TakeSnapshotOptions): number | undefined {
  validateName(name, 'snapshot');
  if (opts.description !== undefined && opts.description.length > 4096) {
    throw new VmsnapError('INVALID_ARGUMENT', 'description: at most 4096 characters', { details: { field: 'description' } });
  }
  return opts.expire === undefined ? undefined : parseDuration(opts.expire, 'expire');
}

/** Take a snapshot of a VM whose lock the caller holds (a policy pass passes its policy, slot and operation). */
export async function takeSnapshotLocked(ctx: Context, vm0: VmRecord, name: string, opts: TakeSnapshotOptions = {}, forPolicy?: TakeForPolicy): Promise<SnapshotRecord> {
  const { catalog } = ctx;
  const expireMs = checkTakeOptions(name, opts);
  const vm = catalog.getVm(vm0.id);
  if (catalog.findSnapshot(vm.id, name)) {
    throw new VmsnapError('ALREADY_EXISTS', `VM '${vm.name}' already has a snapshot named '${name}'`, {
      hint: 'snapshot names are unique per VM: choose another',
      details: { vm: vm.name, snapshot: name },
    });
  }
  const rt = await probeRuntime(ctx.paths.run, vm.id);
  if (rt.state === 'unknown') {
    throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' is in an unknown state: ${rt.detail ?? ''}`, { hint: `vmsnap status ${vm.name}` });
  }
  const vmState = rt.state === 'stopped' ? 'off' : rt.state;
  const withMemory = vmState !== 'off' && (opts.memory ?? true);
  checkReserve(ctx, vm, withMemory);
  if (opts.memory === true && vmState === 'off') {
    throw new VmsnapError('INVALID_ARGUMENT', `VM '${vm.name}' is off: there is no memory state to save`, {
      hint: 'take a disk-only snapshot (--no-memory), or start the VM first',
    });
  }
  const switches = planOverlays(ctx, catalog.activeLayers(vm.id));
  const snapshotId = forPolicy?.id ?? newId();
  const memFiles = withMemory ? memoryStatePaths(ctx.paths, snapshotId) : null;
  const parentImage = withMemory ? parentRamImage(ctx, vm) : undefined;
  const stateFile = memFiles?.manifest ?? null;
  const takenAt = new Date();
  const now = takenAt.toISOString();
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
    protected: false,
    expiresAt: expireMs === undefined ? null : new Date(takenAt.getTime() + expireMs).toISOString(),
    policyId: forPolicy?.policy.id ?? null,
    policySlot: forPolicy?.policy.slot ?? null,
  };
  const plan = { snapshotId, name, vmState, stateFile, switches, createFiles: [...switches.map((s) => s.newPath), ...memoryStateFiles(stateFile)] };
  return runOperation(ctx, snapshotCreate, { vm, plan, ...(forPolicy ? { parent: forPolicy.parent } : {}) }, async (op) => {
    let qmp: QmpClient | undefined;
    // Disk only, running: reach the guest agent (to quiesce) while the overlay files are made.
    const agentReady = !withMemory && vmState === 'running' ? agentOrNull(ctx, vm) : Promise.resolve(null);
    const meta: SnapshotMeta = {};
    // The memory sink's process starts while the overlay files are made.
    const sinkReady =
      memFiles && vmState !== 'off'
        ? openMemorySink(memFiles, {
            // A name per snapshot: the sink of an earlier save that outlived its vmsnap (it reads its
            // stream to the end) must not remove or answer on this one's socket. Short: a unix
            // socket's path has 107 bytes at most.
            sinkSocket: join(runtimeFiles(ctx.paths.run, vm.id).dir, `sink-${snapshotId.slice(0, 8)}.sock`),
            snapshotId,
            onSplitStarted: () => op.fault('splitting'),
            // On XFS or btrfs the new image shares the parent's unchanged pages (reflinks).
            ...(parentImage ? { baseImage: parentImage } : {}),
          })
        : undefined;
    sinkReady?.catch(() => undefined); // awaited below, or closed on failure
    try {
      await createOverlayFiles(ctx, switches);
      op.done(1, () => catalog.insertSnapshot(record));

      if (vmState !== 'off') {
        qmp = await connectQmp(ctx.paths.run, vm);
        await addOverlayNodes(qmp, switches);
        if (memFiles && sinkReady) {
          const r = await snapshotWithMemory(qmp, switches, await sinkReady, {
            running: vmState === 'running',
            ...(opts.forcePrecopy ? { forcePrecopy: true } : {}),
          });
          record.pauseMs = r.pauseMs;
          Object.assign(meta, {
            memoryMode: r.mode,
            saveMs: Math.round(r.totalMs),
            ...(r.qemuDowntimeMs !== undefined ? { qemuDowntimeMs: r.qemuDowntimeMs } : {}),
            ...(r.fallbackReason ? { fallbackReason: r.fallbackReason } : {}),
            ...(r.downtimeLimitMs !== undefined ? { downtimeLimitMs: r.downtimeLimitMs } : {}),
            ...(await recordSplitState(memFiles.manifest, r.split, { id: snapshotId, memoryMiB: vm.config.memoryMiB }, qmp.qemuVersion)),
          });
        } else {
          // Disk only: quiesce the guest's filesystems if its agent answers, then switch.
          const r = await switchDisksLive(qmp, switches, await agentReady, vmState === 'running');
          record.pauseMs = r.pauseMs;
          Object.assign(meta, {
            quiesced: r.quiesced,
            pauseSource: 'transaction',
            ...(r.quiesceMs !== undefined ? { quiesceMs: r.quiesceMs } : {}),
          });
        }
      }
      op.fault('switched');
      // QEMU writes to the new overlays: record it all in one transaction and finish.
      op.finish('done', undefined, () => {
        for (const l of newLayerRecords(vm, switches, now)) catalog.insertLayer(l);
        for (const s of switches) {
          catalog.setLayerFrozen(s.oldLayerId);
          catalog.setActiveLayer(vm.id, s.slot, s.newLayerId);
        }
        catalog.updateSnapshot(snapshotId, { status: 'ready', pauseMs: record.pauseMs, meta });
        catalog.setCurrentSnapshot(vm.id, snapshotId);
      });
      return catalog.findSnapshotById(snapshotId)!;
    } finally {
      // A sink no save reached gives up (one that took a stream reads it to the end).
      void sinkReady?.then((sink) => sink.close(), () => undefined);
      await qmp?.close();
      await (await agentReady)?.close();
    }
  });
}
