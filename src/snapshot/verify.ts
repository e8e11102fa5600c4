import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { SnapshotMeta, VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import type { VerifyProblem, VerifyReport } from '../contract/views.js';
import { openLayersOf } from '../layers/consolidate.js';
import { findOrphans, inFlight, othersAtWork } from '../operations/recovery.js';
import { bootFilesOf, NVRAM_SLOT } from '../contract/config.js';
import { bootFilePath } from '../store/boot-files.js';
import { checkImage, imageInfo } from '../qemu/qemu-img.js';
import { probeRuntime } from '../qemu/runtime.js';
import { fingerprintDisk } from './fingerprint.js';

export type { VerifyProblem, VerifyReport } from '../contract/views.js';
import { recordRamHashes, verifyMemoryState } from './memory-state.js';

type Fingerprints = Record<string, string>;

/** The stored fingerprints of a snapshot's disks (slot → hash), if computed. */
export function storedFingerprints(meta: SnapshotMeta): Fingerprints | undefined {
  return meta.fingerprints;
}

/**
 * Compute and store the fingerprints of a VM's snapshots that have none (and
 * the sha256 of RAM images that have none yet): the number of snapshots done.
 * Safe without the VM lock: a merge that ran meanwhile (seen in the journal)
 * makes the result untrustworthy, and it is simply not stored.
 */
export async function recordFingerprints(ctx: Context, vm: VmRecord): Promise<number> {
  const done = await recordRamHashes(ctx, vm);
  for (const s of ctx.catalog.listSnapshots(vm.id)) {
    if (s.status !== 'ready' || storedFingerprints(s.meta)) continue;
    const mark = ctx.journal.mark(vm.id);
    const fps: Fingerprints = {};
    try {
      for (const [slot, layerId] of Object.entries(s.layers)) fps[slot] = await fingerprintDisk(ctx.catalog.getLayer(layerId).path);
    } catch {
      continue; // deleted or merged meanwhile
    }
    if (ctx.journal.mark(vm.id) !== mark) continue;
    const fresh = ctx.catalog.findSnapshotById(s.id);
    if (!fresh) continue;
    ctx.catalog.updateSnapshot(s.id, { meta: { ...fresh.meta, fingerprints: fps } });
    done.add(s.id);
  }
  return done.size;
}

/**
 * Check that catalog, files and chains agree: every layer exists, every
 * backing pointer matches the tree, qemu-img check is clean, no file is
 * orphaned, no operation is left unfinished; with `deep`, every snapshot's
 * content still hashes to the fingerprint taken when it was frozen.
 */
export async function verifyVm(ctx: Context, vm: VmRecord, opts: { deep?: boolean } = {}): Promise<VerifyReport> {
  const problems: VerifyProblem[] = [];
  const { catalog } = ctx;
  const layers = catalog.listLayers(vm.id);
  const rt = await probeRuntime(ctx.paths.run, vm.id);
  const open = rt.state === 'stopped' ? new Set<string>() : openLayersOf(ctx, vm);
  const active = new Set(Object.values(catalog.activeLayers(vm.id)));

  for (const l of layers) {
    if (!existsSync(l.path)) {
      problems.push({ severity: 'error', kind: 'missing-file', message: `layer ${l.id} (${l.slot}) is missing its file ${l.path}`, layer: l.id, path: l.path });
      continue;
    }
    if (l.format === 'qcow2') {
      const info = await imageInfo(l.path, { forceShare: true });
      const expected = l.backingId ? catalog.findLayer(l.backingId)?.path : undefined;
      const actual = info.backingFilename ? resolve(dirname(l.path), info.backingFilename) : undefined;
      if (expected !== actual) {
        problems.push({
          severity: 'error',
          kind: 'backing-mismatch',
          message: `layer ${l.id} backs onto ${actual ?? 'nothing'} but the catalog says ${expected ?? 'nothing'}`,
          layer: l.id,
          path: l.path,
        });
      }
      // A layer QEMU is writing cannot be checked from outside; the rest can (read-only, shared).
      if (!(open.has(l.id) && active.has(l.id))) {
        const check = await checkImage(l.path, { forceShare: open.has(l.id) });
        if (!check.clean) {
          problems.push({
            severity: check.corruptions > 0 || check.checkErrors > 0 ? 'error' : 'warning',
            kind: 'image-check',
            message: `qemu-img check ${l.path}: ${check.corruptions} corruptions, ${check.leaks} leaked clusters, ${check.checkErrors} errors`,
            layer: l.id,
            path: l.path,
          });
        }
      }
    }
  }
  for (const d of vm.config.disks) {
    if (!catalog.activeLayers(vm.id)[d.slot]) {
      problems.push({ severity: 'error', kind: 'missing-active-layer', message: `disk ${d.slot} has no active layer` });
    }
  }
  if (vm.config.firmware?.type === 'uefi' && !catalog.activeLayers(vm.id)[NVRAM_SLOT]) {
    problems.push({ severity: 'error', kind: 'missing-active-layer', message: 'the UEFI NVRAM has no active layer' });
  }
  // Every boot file a config of this VM names must be in the store.
  for (const c of [vm.config, ...catalog.listSnapshots(vm.id).map((s) => s.config)]) {
    for (const sha of bootFilesOf(c)) {
      const p = bootFilePath(ctx.paths, sha);
      if (!existsSync(p) && !problems.some((x) => x.path === p)) {
        problems.push({ severity: 'error', kind: 'missing-file', message: `boot file ${sha} is missing from the store (${p})`, path: p });
      }
    }
  }

  // Deep: RAM images not hashed yet are hashed first (and not read twice).
  const hashedNow = opts.deep ? await recordRamHashes(ctx, vm) : new Set<string>();
  const snaps = catalog.listSnapshots(vm.id);
  let verified = 0;
  let recorded = 0;
  for (const s of snaps) {
    if (s.stateFile && s.status === 'ready') problems.push(...(await verifyMemoryState(s, opts.deep ?? false, hashedNow)));
  }
  if (opts.deep) {
    for (const s of snaps) {
      const stored = storedFingerprints(s.meta);
      if (!stored || s.status !== 'ready') continue;
      for (const [slot, layerId] of Object.entries(s.layers)) {
        const l = catalog.findLayer(layerId);
        if (!l || !existsSync(l.path) || stored[slot] === undefined) continue;
        const now = await fingerprintDisk(l.path);
        if (now !== stored[slot]) {
          problems.push({
            severity: 'error',
            kind: 'fingerprint-mismatch',
            message: `snapshot '${s.name}': the content of ${slot} changed since it was taken`,
            snapshot: s.name,
            layer: layerId,
          });
        }
      }
      verified++;
    }
    recorded = await recordFingerprints(ctx, vm);
  }

  for (const issue of ctx.catalog.records.check(vm.id)) {
    problems.push({ severity: 'error', kind: 'record-mismatch', message: issue.message, path: issue.path });
  }
  // An operation a live process is carrying out (a read of guest files holding its pins, say) is not left over.
  for (const op of ctx.journal.unfinished().filter((o) => o.vmId === vm.id && !inFlight(o))) {
    problems.push({ severity: 'warning', kind: 'unfinished-operation', message: `operation ${op.kind} (${op.id}) is unfinished: run 'vmsnap recover'` });
  }
  if (!othersAtWork(ctx)) {
    const vmFiles = new Set(layers.map((l) => l.path));
    for (const f of await findOrphans(ctx)) {
      // Orphans are a data-dir matter; report them with every VM's check.
      if (!vmFiles.has(f)) problems.push({ severity: 'warning', kind: 'orphan-file', message: `orphan file (nothing refers to it): ${f}`, path: f });
    }
  }
  return {
    ok: !problems.some((p) => p.severity === 'error') && !problems.some((p) => p.kind === 'orphan-file' || p.kind === 'unfinished-operation'),
    vm: vm.name,
    layersChecked: layers.length,
    snapshotsChecked: snaps.length,
    fingerprintsVerified: verified,
    fingerprintsRecorded: recorded,
    problems,
  };
}

