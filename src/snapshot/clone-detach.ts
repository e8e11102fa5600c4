import { z } from 'zod';
import type { SnapshotRecord, VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import { defineOperation } from '../operations/define.js';
import type { Op } from '../operations/op.js';
import { rollForward } from '../operations/recovery.js';
import { runOperation } from '../operations/runner.js';
import { queryBlockGraph } from '../qemu/block-graph.js';
import { runBlockJob } from '../qemu/block-jobs.js';
import { fileNode, formatNode } from '../qemu/launcher.js';
import type { QmpClient } from '../qemu/qmp.js';
import { connectQmp, probeRuntime } from '../qemu/runtime.js';
import { withStorageDaemon } from '../qemu/storage-daemon.js';

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
 * online in its QEMU if it runs), which then stand on their own; one journal
 * step per layer. No remaining snapshot's content changes; always carried forward.
 */
export const cloneDetach = defineOperation({
  kind: 'clone-detach',
  aliases: ['detach-clone'],
  plan: z.object({ layers: z.array(z.string()) }),
  steps: 0,
  faults: [],
  onFailure: 'leave',
  files: () => [],
  recover: (ctx, op, vm) => rollForward(op, vm, (v) => rollDetachForward(ctx, v, op)),
});

/** Detach a clone whose lock the caller holds. */
export async function detachClone(ctx: Context, clone: VmRecord): Promise<void> {
  const { catalog } = ctx;
  const targets = catalog.listLayers(clone.id).filter((l) => l.backingId && catalog.getLayer(l.backingId).vmId !== clone.id);
  if (targets.length === 0) return;
  await runOperation(ctx, cloneDetach, { vm: clone, plan: { layers: targets.map((l) => l.id) } }, (op) => rollDetachForward(ctx, clone, op));
}

async function rollDetachForward(ctx: Context, clone: VmRecord, op: Op<{ layers: string[] }, string>): Promise<void> {
  const { catalog } = ctx;
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
            onProgress: (done, total) => op.progress(`detach ${layer.id}`, done, total),
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
      op.done(op.step + 1, () => catalog.setLayerBacking(layer.id, null));
    }
  } finally {
    await qmp?.close();
  }
  op.finish('done');
}
