import { z } from 'zod';
import type { LayerRecord, SnapshotRecord, VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import { validateName } from '../contract/config.js';
import type { CloneInfo, CloneResult } from '../contract/views.js';
import { VmsnapError } from '../errors.js';
import { backingRef } from '../layers/merge.js';
import { defineOperation } from '../operations/define.js';
import { runOperation, withVm } from '../operations/runner.js';
import { layerPath } from '../paths.js';
import { runtimeFiles } from '../qemu/launcher.js';
import { convertImage, createImage } from '../qemu/qemu-img.js';
import { connectQmp, killQemu } from '../qemu/runtime.js';
import { fsyncFileAndDir } from '../util/files.js';
import { newId, newLayerId } from '../util/ids.js';
import { newIdentity, rollBackNewFiles } from '../vm/define.js';
import { guestAgent } from '../vm/guest.js';
import { startLocked } from '../vm/power.js';
import { checkMemoryState, launchFor, loadMemoryState, type CheckedMemory } from './memory-state.js';
import { resolveSnapshot } from './views.js';

export interface CloneOptions {
  /** linked (default): empty overlays on the snapshot's layers, instant; full: independent flattened disks. */
  mode?: 'linked' | 'full';
  /** How many clones: NAME-1 … NAME-N when more than one. */
  count?: number;
  /** Start each clone: from the snapshot's memory when it has some (a fork of the running machine), else a boot. */
  start?: boolean;
}

/** The names N clones get: the name itself for one, NAME-1 … NAME-N for more. */
export function cloneNames(name: string, count: number): string[] {
  return count === 1 ? [name] : Array.from({ length: count }, (_, i) => `${name}-${i + 1}`);
}

/**
 * Clone: every new VM's layer files are made (overlays on the snapshot's
 * layers, or flattened copies), then all their rows commit in the transaction
 * that finishes the operation. Unfinished means uncommitted: undone by
 * removing the files. Journaled on the source VM, whose lock it holds.
 */
export const clone = defineOperation({
  kind: 'clone',
  aliases: ['clone-vm'],
  plan: z.object({
    snapshotId: z.string(),
    mode: z.enum(['linked', 'full']),
    names: z.array(z.string()),
    createFiles: z.array(z.string()),
  }),
  steps: 1,
  faults: [],
  onFailure: 'rollback',
  files: (p) => p.createFiles,
  recover: (ctx, op) => rollBackNewFiles(ctx, op),
});

interface NewClone {
  vm: VmRecord;
  layers: LayerRecord[];
}

function planClone(ctx: Context, snap: SnapshotRecord, name: string, now: string): NewClone {
  // Each clone is its own machine: MACs, cloud-init instance, host ports of its own.
  const config = newIdentity(snap.config);
  const vm: VmRecord = { id: newId(), name, config, createdAt: now, currentSnapshotId: null };
  const layers: LayerRecord[] = Object.keys(snap.layers).map((slot) => {
    const id = newLayerId();
    return { id, vmId: vm.id, slot, path: layerPath(ctx.paths, id), format: 'qcow2', backingId: null, frozen: false, external: false, createdAt: now };
  });
  return { vm, layers };
}

async function makeCloneFiles(ctx: Context, snap: SnapshotRecord, c: NewClone, mode: 'linked' | 'full'): Promise<void> {
  for (const l of c.layers) {
    const frozen = ctx.catalog.getLayer(snap.layers[l.slot]!);
    if (mode === 'linked') {
      l.backingId = frozen.id;
      await createImage(l.path, { format: 'qcow2', backing: backingRef(l, frozen), backingFormat: frozen.format });
    } else {
      // Frozen layers never change, so reading them while the source runs is safe (-U: shared).
      await convertImage(frozen.path, l.path, { format: 'qcow2', forceShare: true });
    }
    fsyncFileAndDir(l.path);
  }
}

/**
 * Clone new VMs from any snapshot: linked (empty overlays on its layers,
 * instant) or full (flattened, independent); with `start`, from its memory
 * when it has some: each clone carries on from that instant, with its own MAC.
 * The source VM's lock is held throughout, so the snapshot (and the memory
 * state a fork loads) cannot go meanwhile.
 */
export async function cloneSnapshot(ctx: Context, source0: VmRecord, snapName: string, newName: string, opts: CloneOptions = {}): Promise<CloneResult> {
  const t0 = performance.now();
  const { catalog } = ctx;
  const mode = opts.mode ?? 'linked';
  const count = opts.count ?? 1;
  if (!Number.isInteger(count) || count < 1 || count > 64) {
    throw new VmsnapError('INVALID_ARGUMENT', `count: ${count} is not a whole number from 1 to 64`, { details: { field: 'count' } });
  }
  const snap0 = resolveSnapshot(ctx, source0, snapName);
  return withVm(ctx, source0, `clone ${snap0.name}`, async () => {
    const source = catalog.getVm(source0.id);
    const snap = resolveSnapshot(ctx, source, snap0.id);
    const names = cloneNames(newName, count);
    for (const n of names) {
      validateName(n, 'VM');
      if (catalog.findVm(n)) {
        throw new VmsnapError('ALREADY_EXISTS', `a VM named '${n}' already exists`, { hint: 'choose another clone name', details: { vm: n } });
      }
    }
    const now = new Date().toISOString();
    const clones = names.map((n) => planClone(ctx, snap, n, now));
    const plan = { snapshotId: snap.id, mode, names, createFiles: clones.flatMap((c) => c.layers.map((l) => l.path)) };
    await runOperation(ctx, clone, { vm: source, plan }, async (op) => {
      for (const [i, c] of clones.entries()) {
        await makeCloneFiles(ctx, snap, c, mode);
        op.progress(`clone ${c.vm.name}`, i + 1, clones.length);
      }
      op.done(1);
      op.finish('done', undefined, () => {
        for (const c of clones) {
          catalog.insertVm(c.vm);
          for (const l of c.layers) {
            catalog.insertLayer(l);
            catalog.setActiveLayer(c.vm.id, l.slot, l.id);
          }
        }
      });
    });
    // The memory state is checked once, before any clone starts from it.
    const mem = opts.start && snap.stateFile ? await checkMemoryState(ctx, snap) : undefined;
    // The clones start side by side: each maps the same RAM image (copy on write), so the
    // guest RAM they have not written is one copy in the host's page cache for all of them.
    const started = await Promise.allSettled(
      clones.map(async (c): Promise<CloneInfo> => {
        const info: CloneInfo = { name: c.vm.name, id: c.vm.id, mode, mac: c.vm.config.nics[0]?.mac ?? '', state: 'stopped', forked: false };
        if (!opts.start) return info;
        await withVm(ctx, c.vm, 'start clone', async () => {
          if (mem) {
            info.identitySet = await forkFromMemory(ctx, c.vm, snap, mem);
            info.forked = true;
            info.state = snap.vmState === 'paused' ? 'paused' : 'running';
          } else {
            await startLocked(ctx, c.vm, {});
            info.state = 'running';
          }
        });
        return info;
      }),
    );
    const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    const out = started.map((r) => (r as PromiseFulfilledResult<CloneInfo>).value);
    return { source: source.name, snapshot: snap.name, clones: out, ms: performance.now() - t0 };
  });
}

/**
 * Start a clone from the snapshot's memory: the guest carries on from that
 * instant in a new machine. It then takes its own identity through its agent
 * (the migrated NIC still has the source's MAC until told otherwise).
 */
async function forkFromMemory(ctx: Context, vm: VmRecord, snap: SnapshotRecord, mem: CheckedMemory): Promise<boolean> {
  const files = runtimeFiles(ctx.paths.run, vm.id);
  try {
    const pid = await startLocked(ctx, vm, launchFor(mem));
    const qmp = await connectQmp(ctx.paths.run, vm);
    try {
      await loadMemoryState(qmp, { pid, files }, snap, mem);
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
    const agent = await guestAgent(ctx, vm, 20_000);
    try {
      const script = [
        `hostname ${vm.name}`,
        ...(mac
          ? [`for i in /sys/class/net/eth*; do [ -e "$i" ] || continue; d=\${i##*/}; ip link set dev $d down; ip link set dev $d address ${mac}; ip link set dev $d up; break; done`]
          : []),
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
