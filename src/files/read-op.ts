import { existsSync } from 'node:fs';
import { z } from 'zod';
import type { SnapshotRecord, VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import { NVRAM_SLOT } from '../contract/config.js';
import { VmsnapError } from '../errors.js';
import { MergePlanFields, mergeCandidates } from '../layers/consolidate.js';
import { defineOperation } from '../operations/define.js';
import type { Op } from '../operations/op.js';
import { rollForward } from '../operations/recovery.js';
import { runOperation, withVm } from '../operations/runner.js';
import { connectQmp, probeRuntime } from '../qemu/runtime.js';
import { agentOrNull, switchDisksLive, undoOverlaySwitch } from '../snapshot/create.js';
import { addOverlayNodes } from '../snapshot/live.js';
import { createOverlayFiles, newLayerRecords, OverlaySwitchSchema, planOverlays } from '../snapshot/overlays.js';
import { resolveSnapshot } from '../snapshot/views.js';
import { FilesReader, type ReaderOptions, type ReaderPoint } from './reader.js';

/**
 * A read of guest files is an operation too, though it changes no data:
 *
 * - its plan **pins** every layer it opens: a snapshot delete meanwhile goes
 *   ahead but leaves those layers unmerged (a merge would rewrite or remove a
 *   file the appliance is reading), and the read's release merges them; so the
 *   VM's lock is held only for the moments that need it (pinning, freezing,
 *   releasing), never while the appliance boots and reads;
 * - reading the **present state** first freezes it: like a disk-only
 *   snapshot without a snapshot (one QMP transaction, the guest's filesystems
 *   quiesced when its agent answers: an I/O stall of milliseconds, the vCPUs
 *   never stop), the active layers become frozen internal layers under new
 *   overlays, and the release merges them back (an online commit).
 *
 * Killed at any point, recovery (under the VM's lock, before anything else
 * touches the VM) undoes a half-made freeze or releases the pins and merges
 * the frozen point: nothing is left behind.
 */
const FilesReadPlan = z.object({
  /** Every layer of every chain the read opens. */
  pins: z.array(z.string()),
  /** The VM's power state when the present was frozen. */
  vmState: z.enum(['running', 'paused', 'off']),
  /** The overlays the present state was switched onto (empty when only snapshots are read). */
  switches: z.array(OverlaySwitchSchema),
  createFiles: z.array(z.string()),
  ...MergePlanFields,
});
type FilesReadPlan = z.infer<typeof FilesReadPlan>;

export const filesRead = defineOperation({
  kind: 'files-read',
  plan: FilesReadPlan,
  steps: 2,
  faults: ['switched', 'reading', 'merging'],
  // A failure never rolls back outside the VM's lock: the body releases under the lock itself,
  // and what it could not finish is left to recovery (which runs under the lock).
  onFailure: 'leave',
  files: (p) => p.createFiles,
  async recover(ctx, op, vm) {
    if (vm && op.step < 2 && op.plan.switches.length > 0) {
      const note = await undoOverlaySwitch(ctx, vm, op.plan);
      op.finish('rolled_back');
      return { outcome: 'rolled_back', ...(note ? { note } : {}) };
    }
    return rollForward(op, vm, (v) => releasePins(ctx, v, op));
  },
});

/** End a read: unpin its layers and merge the frozen point and whatever a delete put off meanwhile. The caller holds the VM's lock. */
async function releasePins(ctx: Context, vm: VmRecord, op: Op<FilesReadPlan, string>): Promise<void> {
  op.plan.pins = [];
  op.savePlan();
  await mergeCandidates(ctx, vm, op);
  op.finish('done');
}

/** A point as the reader opens it: a snapshot, or the present state frozen for the read. */
export interface PinnedPoint {
  label: string;
  snapshot: SnapshotRecord | null;
  /** slot → top layer of its chain at that point */
  layers: Record<string, string>;
  /** The slots in the guest's disk order. */
  slots: string[];
  createdAt: string;
}

export interface PresentFreeze {
  frozenAt: string;
  /** The guest's I/O stall while its disks switched (the vCPUs never stop). */
  pauseMs: number;
  quiesced: boolean;
}

/**
 * The disks among a point's layers, in the guest's disk order. A UEFI VM's
 * NVRAM is a layered slot too, but firmware variables hold no filesystem: it
 * is never opened, frozen or pinned for a read.
 */
export function diskLayers(disks: readonly { slot: string }[], layers: Record<string, string>): { slots: string[]; layers: Record<string, string> } {
  const slots = disks.map((d) => d.slot).filter((s) => layers[s] !== undefined);
  for (const s of Object.keys(layers)) if (s !== NVRAM_SLOT && !slots.includes(s)) slots.push(s);
  return { slots, layers: Object.fromEntries(slots.map((s) => [s, layers[s]!])) };
}

export function snapshotPoint(snap: SnapshotRecord): PinnedPoint {
  return { label: snap.name, snapshot: snap, ...diskLayers(snap.config.disks, snap.layers), createdAt: snap.createdAt };
}

/** The drives of a point, for the reader (each disk's top layer opens its whole chain). */
export function readerPoint(ctx: Context, p: PinnedPoint, readonly = true): ReaderPoint {
  return {
    label: p.label,
    drives: p.slots.map((slot) => {
      const l = ctx.catalog.getLayer(p.layers[slot]!);
      if (!existsSync(l.path)) throw new VmsnapError('NOT_FOUND', `${p.label}: the layer of ${slot} is missing (${l.path})`, { hint: "run 'vmsnap verify'" });
      return { slot, path: l.path, format: l.format, readonly };
    }),
  };
}

/**
 * Freeze the present state for a read (the caller holds the lock, inside the
 * read's operation): new overlays take the writes from now on and the active
 * layers become frozen. A failure undoes it at once.
 */
async function freezePresent(ctx: Context, vm: VmRecord, op: Op<FilesReadPlan, string>): Promise<{ point: PinnedPoint; info: PresentFreeze }> {
  const rt = await probeRuntime(ctx.paths.run, vm.id);
  if (rt.state === 'unknown') {
    throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' is in an unknown state: ${rt.detail ?? ''}`, { hint: `vmsnap status ${vm.name}` });
  }
  const vmState = rt.state === 'stopped' ? 'off' : rt.state;
  const disks = diskLayers(vm.config.disks, ctx.catalog.activeLayers(vm.id));
  const switches = planOverlays(ctx, disks.layers);
  Object.assign(op.plan, { vmState, switches, createFiles: switches.map((s) => s.newPath) });
  op.savePlan();
  const frozenAt = new Date().toISOString();
  let pauseMs = 0;
  let quiesced = false;
  try {
    await createOverlayFiles(ctx, switches);
    op.done(1);
    if (vmState !== 'off') {
      const agentReady = vmState === 'running' ? agentOrNull(ctx, vm) : Promise.resolve(null);
      const qmp = await connectQmp(ctx.paths.run, vm);
      try {
        await addOverlayNodes(qmp, switches);
        const r = await switchDisksLive(qmp, switches, await agentReady, vmState === 'running');
        pauseMs = r.pauseMs;
        quiesced = r.quiesced;
      } finally {
        await qmp.close();
        await (await agentReady)?.close();
      }
    }
    op.fault('switched');
    op.done(2, () => {
      for (const l of newLayerRecords(vm, switches, frozenAt)) ctx.catalog.insertLayer(l);
      for (const s of switches) {
        ctx.catalog.setLayerFrozen(s.oldLayerId);
        ctx.catalog.setActiveLayer(vm.id, s.slot, s.newLayerId);
      }
    });
  } catch (e) {
    if (op.step < 2) {
      await undoOverlaySwitch(ctx, vm, op.plan);
      op.finish('rolled_back', e);
    }
    throw e;
  }
  return { point: { label: 'present', snapshot: null, ...disks, createdAt: frozenAt }, info: { frozenAt, pauseMs, quiesced } };
}

export type PointRequest = { snapshot: string } | 'present';

export interface PinnedReader {
  vm: VmRecord;
  reader: FilesReader;
  points: PinnedPoint[];
  /** How the present state was frozen, when it is one of the points. */
  present?: PresentFreeze;
  /** Close the appliances and release the pins (merging what was put off). */
  close(): Promise<void>;
}

/**
 * Open snapshots (and the present state) of a VM for reading: pin their layers
 * under the VM's lock, freeze the present if asked, release the lock, and boot
 * one appliance for them all. close() releases everything.
 */
export async function openPinnedReader(ctx: Context, vmName: string, requests: PointRequest[], opts: ReaderOptions & { purpose: string }): Promise<PinnedReader> {
  const vm0 = ctx.catalog.getVm(vmName);
  for (const r of requests) if (r !== 'present') resolveSnapshot(ctx, vm0, r.snapshot);
  // What a killed process left on this VM is finished first (the lock is taken again to pin).
  await withVm(ctx, vm0, opts.purpose, async () => undefined);
  let ready!: (r: PinnedReader) => void;
  let failed!: (e: unknown) => void;
  const opened = new Promise<PinnedReader>((res, rej) => {
    ready = res;
    failed = rej;
  });
  let requestClose!: () => void;
  const closing = new Promise<void>((r) => (requestClose = r));
  const plan: FilesReadPlan = { pins: [], vmState: 'off', switches: [], createFiles: [], candidates: [] };
  const done = runOperation(ctx, filesRead, { vm: vm0, plan }, async (op) => {
    let points: PinnedPoint[] = [];
    let present: PresentFreeze | undefined;
    await withVm(ctx, vm0, opts.purpose, async () => {
      const vm = ctx.catalog.getVm(vm0.id);
      const snaps = requests.map((r) => (r === 'present' ? null : resolveSnapshot(ctx, vm, r.snapshot)));
      if (requests.includes('present')) {
        const f = await freezePresent(ctx, vm, op);
        present = f.info;
        points = snaps.map((s) => (s ? snapshotPoint(s) : f.point));
      } else {
        points = snaps.map((s) => snapshotPoint(s!));
        op.done(1);
        op.done(2);
      }
      const pins = [...new Set(points.flatMap((p) => Object.values(p.layers).flatMap((id) => ctx.catalog.chain(id).map((l) => l.id))))];
      const frozen = op.plan.switches.map((s) => s.oldLayerId);
      op.plan.pins = pins;
      op.plan.candidates = [...new Set([...frozen, ...pins])];
      op.savePlan();
    });
    op.fault('reading');
    let reader: FilesReader | undefined;
    try {
      reader = FilesReader.open(
        points.map((p) => readerPoint(ctx, p)),
        opts,
      );
      ready({ vm: ctx.catalog.getVm(vm0.id), reader, points, ...(present ? { present } : {}), close: () => closeIt() });
      await closing;
    } finally {
      await reader?.close().catch(() => undefined);
      await withVm(ctx, vm0, `${opts.purpose}: release`, () => releasePins(ctx, ctx.catalog.getVm(vm0.id), op));
    }
  });
  done.catch(failed);
  const closeIt = async (): Promise<void> => {
    requestClose();
    try {
      await done;
    } catch (e) {
      // The VM is busy with another operation: the release is left to the next one (recovery runs first).
      if (!(e instanceof VmsnapError && e.code === 'BUSY')) throw e;
    }
  };
  return opened;
}
