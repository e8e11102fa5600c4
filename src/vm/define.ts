import { closeSync, existsSync, openSync, readSync, rmSync } from 'node:fs';
import { resolve } from 'node:path';
import { z } from 'zod';
import type { LayerRecord, VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import { bootFilesOf, NVRAM_SLOT, validateConfig, validateName, type FirmwareType, type ForwardConfig, type NicConfig, type VmConfig } from '../contract/config.js';
import { VmsnapError } from '../errors.js';
import { consolidateReleased } from '../layers/consolidate.js';
import { defineOperation, type OperationDef } from '../operations/define.js';
import type { Op } from '../operations/op.js';
import { removeUnreferenced } from '../operations/recovery.js';
import { runOperation, withVm } from '../operations/runner.js';
import { layerPath, memoryStateFiles, type VmsnapPaths } from '../paths.js';
import { convertImage, createImage, imageInfo } from '../qemu/qemu-img.js';
import { probeRuntime } from '../qemu/runtime.js';
import { fsyncFileAndDir } from '../util/files.js';
import { newId, newLayerId, newMacAddress } from '../util/ids.js';
import { bootFilePath, pruneBootFiles, storeBootFile } from '../store/boot-files.js';
import { DEMO_APPEND, ensureDemoImage } from './demo-image.js';
import { type ChainLayer, resolveBackingChain } from './libvirt-domain.js';
import { firmwareConfig, isUefi, newNvramLayer, ovmfFiles } from './firmware.js';
import { checkNetwork } from './network.js';
import { newInstanceId, seedPath } from './seed.js';

/** A disk to give a new VM: a blank one of a size, or an existing image imported as its base layer. */
export type DiskSpec = { sizeBytes: number } | { importPath: string };

export interface CreateVmOptions {
  memoryMiB?: number;
  cpus?: number;
  disks?: DiskSpec[];
  kernel?: string;
  initrd?: string;
  append?: string;
  /** 'demo': the project's tiny test guest (built on first use). */
  image?: 'demo';
  /** bios (SeaBIOS, the default) or uefi (OVMF, with an NVRAM of the VM's own). */
  firmware?: FirmwareType;
  /** Host ports forwarded into the user-mode NIC. */
  forwards?: ForwardConfig[];
  /** A NIC on this host bridge (a tap through qemu-bridge-helper); without forwards, instead of the user-mode NIC. */
  bridge?: string;
  display?: 'none' | 'vnc';
  /** cloud-init (NoCloud seed): user-data text, public keys for the default user, host name. */
  userData?: string;
  sshKeys?: string[];
  hostname?: string;
}

export interface SetVmOptions {
  memoryMiB?: number;
  cpus?: number;
  addDisks?: number[];
  firmware?: FirmwareType;
  /** Replace the user-mode NIC's forwards ([] removes them). */
  forwards?: ForwardConfig[];
  /** Put a NIC on this bridge; null removes the bridged NIC. */
  bridge?: string | null;
  display?: 'none' | 'vnc';
}

/**
 * The NICs of a config from its forwards and bridge: a user-mode NIC (with
 * the forwards) unless only a bridge is asked for, then the bridged NIC. MACs
 * of NICs that stay are kept.
 */
export function networkNics(old: NicConfig[], forwards: ForwardConfig[] | undefined, bridge: string | undefined): NicConfig[] {
  const user = old.find((n) => !n.bridge);
  const nics: NicConfig[] = [];
  if (forwards?.length || bridge === undefined) {
    nics.push({ id: 'net0', mac: user?.mac ?? newMacAddress(), ...(forwards?.length ? { forwards } : {}) });
  }
  if (bridge !== undefined) {
    const was = old.find((n) => n.bridge);
    nics.push({ id: `net${nics.length}`, mac: was?.mac ?? newMacAddress(), bridge });
  }
  return nics;
}

/**
 * A copy of a machine (a clone, an import) is a machine of its own: new MAC
 * addresses, a new cloud-init instance-id (so cloud-init in the guest makes
 * new host keys on its next boot), and forwards on free host ports picked at
 * each start instead of the ports the original holds.
 */
export function newIdentity(config: VmConfig): VmConfig {
  return validateConfig({
    ...config,
    nics: config.nics.map((n) => ({
      ...n,
      mac: newMacAddress(),
      ...(n.forwards ? { forwards: n.forwards.map((f) => ({ ...f, hostPort: 0 })) } : {}),
    })),
    ...(config.cloudInit ? { cloudInit: { ...config.cloudInit, instanceId: newInstanceId() } } : {}),
  });
}

/** The cloud-init part of a new config, or nothing when no cloud-init option was given. */
function cloudInitConfig(opts: CreateVmOptions): VmConfig['cloudInit'] {
  if (opts.userData === undefined && opts.sshKeys === undefined && opts.hostname === undefined) return undefined;
  return {
    instanceId: newInstanceId(),
    ...(opts.hostname !== undefined ? { hostname: opts.hostname } : {}),
    ...(opts.userData !== undefined ? { userData: opts.userData } : {}),
    ...(opts.sshKeys !== undefined ? { sshKeys: opts.sshKeys } : {}),
  };
}

const DEFAULT_DISK = 1024 ** 3;

/** The plan of an operation that only makes new files before its rows commit (create, set, clone, import). */
export const NewFilesPlan = z.object({ createFiles: z.array(z.string()) });

/**
 * Undo an operation whose catalog rows are written in the transaction that
 * finishes it: unfinished means uncommitted, so the files it made are all
 * that is left of it.
 */
export async function rollBackNewFiles(ctx: Context, op: Op<{ createFiles: string[] }, string>): Promise<{ outcome: 'rolled_back' }> {
  removeUnreferenced(ctx, op.plan.createFiles);
  op.finish('rolled_back');
  return { outcome: 'rolled_back' };
}

/** An operation that makes files (step 1), then commits the rows that name them as it finishes. */
export function newFilesOperation<K extends 'vm-create' | 'vm-set' | 'import-libvirt'>(kind: K, alias?: string) {
  return defineOperation({
    kind,
    ...(alias === undefined ? {} : { aliases: [alias] }),
    plan: NewFilesPlan,
    steps: 1,
    faults: [],
    onFailure: 'rollback',
    files: (p) => p.createFiles,
    recover: (ctx, op) => rollBackNewFiles(ctx, op),
  });
}

/** Create a VM: its layer files, then its rows in the transaction that finishes the operation. */
export const vmCreate = newFilesOperation('vm-create', 'create-vm');

/** Change a stopped VM's hardware: new disks' files first, then config and rows in one transaction. */
export const vmSet = newFilesOperation('vm-set', 'set-vm');

/** Remove a VM: its rows go first (so no row ever names a missing file), then its files; carried forward once the rows are gone. */
export const vmRm = defineOperation({
  kind: 'vm-rm',
  aliases: ['rm-vm'],
  plan: z.object({ removeFiles: z.array(z.string()) }),
  steps: 1,
  faults: [],
  onFailure: 'rollback',
  files: (p) => p.removeFiles,
  async recover(_ctx, op) {
    if (op.step < 1) {
      op.finish('rolled_back');
      return { outcome: 'rolled_back' };
    }
    for (const f of op.plan.removeFiles) rmSync(f, { force: true });
    op.finish('done');
    return { outcome: 'rolled_forward' };
  },
});

/**
 * Create the files of new layers (blank, or overlays on their backing) under
 * a running operation, fsynced. Files of imported images are not created.
 */
export async function createLayerFiles(ctx: Context, layers: LayerRecord[], config: VmConfig, nvramFrom?: string): Promise<void> {
  const byId = new Map(layers.map((l) => [l.id, l]));
  for (const l of layers.filter((x) => !x.external)) {
    const backing = l.backingId ? (byId.get(l.backingId) ?? ctx.catalog.getLayer(l.backingId)) : undefined;
    if (l.slot === NVRAM_SLOT && !backing) {
      // A new NVRAM: the firmware's variable template (or an imported domain's NVRAM), as a qcow2 layer of the same size (pflash needs it exact).
      if (!isUefi(config)) throw new VmsnapError('INTERNAL', 'an NVRAM layer for a VM without UEFI firmware');
      await convertImage(nvramFrom ?? bootFilePath(ctx.paths, config.firmware.varsTemplate), l.path, { format: 'qcow2', sourceFormat: 'raw' });
      fsyncFileAndDir(l.path);
      continue;
    }
    const size = config.disks.find((d) => d.slot === l.slot)?.sizeBytes;
    await createImage(l.path, {
      format: 'qcow2',
      ...(backing ? { backing: backing.path, backingFormat: backing.format } : { sizeBytes: size }),
    });
    fsyncFileAndDir(l.path);
  }
}

/**
 * The layers of a new VM's disk: an imported image's whole backing chain
 * (`adopted`, top first) as external, frozen layers that are never written
 * nor removed, and the empty overlay on top that takes the VM's writes.
 */
export function newDiskLayers(paths: Pick<VmsnapPaths, 'layers'>, vmId: string, slot: string, adopted: readonly ChainLayer[], now: string): { layers: LayerRecord[]; activeId: string } {
  const layers: LayerRecord[] = [];
  let backingId: string | null = null;
  for (const image of [...adopted].reverse()) {
    const id = newLayerId();
    // Normalized as verify resolves a backing name, so the two compare equal.
    layers.push({ id, vmId, slot, path: resolve(image.path), format: image.format, backingId, frozen: true, external: true, createdAt: now });
    backingId = id;
  }
  const activeId = newLayerId();
  layers.push({ id: activeId, vmId, slot, path: layerPath(paths, activeId), format: 'qcow2', backingId, frozen: false, external: false, createdAt: now });
  return { layers, activeId };
}

/**
 * Make a new VM's layer files and commit its rows as the operation `def`
 * (vm-create, import-libvirt) finishes: a crash before that leaves only files,
 * which recovery removes.
 */
export async function commitNewVm(
  ctx: Context,
  def: OperationDef<'vm-create' | 'import-libvirt', z.infer<typeof NewFilesPlan>, never>,
  vm: VmRecord,
  layers: LayerRecord[],
  active: Record<string, string>,
  /** An imported domain's NVRAM: copied into the new NVRAM layer instead of the template. */
  nvramFrom?: string,
): Promise<void> {
  const { catalog } = ctx;
  // Boot files stored for it are its files too until it commits (recovery keeps those other VMs use).
  const stored = bootFilesOf(vm.config).map((sha) => bootFilePath(ctx.paths, sha));
  const createFiles = [...layers.filter((l) => !l.external).map((l) => l.path), ...stored];
  await runOperation(ctx, def, { vm, plan: { createFiles } }, async (op) => {
    await createLayerFiles(ctx, layers, vm.config, nvramFrom);
    op.done(1);
    op.finish('done', undefined, () => {
      catalog.insertVm(vm);
      for (const l of layers) catalog.insertLayer(l);
      for (const [slot, id] of Object.entries(active)) catalog.setActiveLayer(vm.id, slot, id);
    });
  });
}

interface ImportedImage {
  /** The whole backing chain, top first: adopted read-only. */
  chain: ChainLayer[];
  size: number;
}

/**
 * Read every imported image before anything is written: a bad path, an image
 * another process writes (a running VM: its disk would be torn), or a broken
 * backing chain fails here.
 */
export async function readImports(specs: DiskSpec[]): Promise<Map<number, ImportedImage>> {
  const imports = new Map<number, ImportedImage>();
  for (const [i, spec] of specs.entries()) {
    if (!('importPath' in spec)) continue;
    const path = resolve(spec.importPath);
    if (!existsSync(path)) {
      throw new VmsnapError('NOT_FOUND', `disk: no such image '${spec.importPath}'`, {
        hint: 'give a size such as 1G for a blank disk, or the path of an existing qcow2 or raw image',
        details: { field: 'disk', path: spec.importPath },
      });
    }
    const info = await imageInfo(path, { forceShare: true }).catch((e: unknown) => {
      throw new VmsnapError('INVALID_ARGUMENT', `disk: '${spec.importPath}' is not a readable disk image: ${(e as Error).message}`, {
        hint: 'vmsnap imports qcow2 or raw images',
        details: { field: 'disk', path: spec.importPath },
      });
    });
    if (info.format !== 'qcow2' && info.format !== 'raw') {
      throw new VmsnapError('INVALID_ARGUMENT', `disk: '${spec.importPath}' is ${info.format}; vmsnap imports qcow2 or raw`, {
        hint: `convert it first: qemu-img convert -O qcow2 ${spec.importPath} disk.qcow2`,
        details: { field: 'disk', path: spec.importPath },
      });
    }
    if (info.format === 'raw') refuseNonImage(path, spec.importPath, info.virtualSize);
    // Without -U, qemu-img takes the image's shared lock: it fails while a process (QEMU) writes it.
    await imageInfo(path).catch((e: unknown) => {
      if (!/lock/i.test((e as Error).message)) throw e;
      throw new VmsnapError('INVALID_STATE', `disk: '${spec.importPath}' is in use: another process (a running VM?) is writing it`, {
        hint: 'shut that VM off first; vmsnap adopts an image only while nothing writes it',
        details: { field: 'disk', path: spec.importPath },
      });
    });
    // A qcow2 with a backing file: the whole chain is the disk.
    imports.set(i, { chain: await resolveBackingChain(path), size: info.virtualSize });
  }
  return imports;
}

/**
 * qemu-img calls any file it does not recognise "raw", so a text file (a
 * config, a cloud-init user-data, a path mixed up) would become a disk without
 * a word. Refuse an empty file and one whose first 64 KiB look like text: no
 * NUL byte, only printable characters and whitespace.
 */
function refuseNonImage(path: string, given: string, size: number): void {
  const fail = (why: string): never => {
    throw new VmsnapError('INVALID_ARGUMENT', `disk: '${given}' ${why}, not a disk image`, {
      hint: 'give a qcow2 or raw disk image (qemu-img info FILE shows what a file is), or a size such as 10G for a blank disk',
      details: { field: 'disk', path: given },
    });
  };
  const buf = Buffer.alloc(65536);
  const fd = openSync(path, 'r');
  let n: number;
  try {
    n = readSync(fd, buf, 0, buf.length, 0);
  } finally {
    closeSync(fd);
  }
  if (size === 0 || n === 0) fail('is empty');
  const head = buf.subarray(0, n);
  if (head.includes(0)) return;
  const printable = head.every((b) => b === 9 || b === 10 || b === 13 || (b >= 32 && b < 127) || b >= 128);
  if (printable) fail('is a text file');
}

export async function createVm(ctx: Context, name: string, opts: CreateVmOptions = {}): Promise<VmRecord> {
  const { catalog } = ctx;
  validateName(name, 'VM');
  if (catalog.findVm(name)) {
    throw new VmsnapError('ALREADY_EXISTS', `a VM named '${name}' already exists`, {
      hint: 'choose another name, or remove the old VM with vmsnap rm',
      details: { vm: name },
    });
  }
  for (const [field, path] of [['kernel', opts.kernel], ['initrd', opts.initrd]] as const) {
    if (path !== undefined && !existsSync(path)) {
      throw new VmsnapError('NOT_FOUND', `${field}: no such file '${path}'`, { details: { field, path } });
    }
  }
  if (opts.image !== undefined && (opts.kernel !== undefined || opts.initrd !== undefined)) {
    throw new VmsnapError('INVALID_ARGUMENT', '--image demo brings its own kernel and initrd: drop --kernel/--initrd', {
      details: { field: 'image' },
    });
  }
  const specs = opts.disks ?? (opts.image === 'demo' ? [{ sizeBytes: DEFAULT_DISK }] : []);
  const imports = await readImports(specs);
  // Refused before anything is stored.
  if (opts.firmware === 'uefi') ovmfFiles();
  // Boot files go into the store: the VM and its snapshots never depend on the host's copies.
  const kernel = opts.kernel !== undefined ? await storeBootFile(ctx.paths, resolve(opts.kernel), 'kernel') : undefined;
  const initrd = opts.initrd !== undefined ? await storeBootFile(ctx.paths, resolve(opts.initrd), 'initrd') : undefined;
  const fw = opts.firmware !== undefined ? await firmwareConfig(ctx, opts.firmware) : undefined;
  const config = validateConfig({
    memoryMiB: opts.memoryMiB ?? 256,
    cpus: opts.cpus ?? 1,
    machine: 'q35',
    boot: {
      ...(opts.image ? { image: opts.image, append: DEMO_APPEND } : {}),
      ...(kernel ? { kernelFile: kernel.sha256 } : {}),
      ...(initrd ? { initrdFile: initrd.sha256 } : {}),
      ...(opts.append !== undefined ? { append: opts.append } : {}),
    },
    disks: specs.map((s, i) => ({ slot: `disk${i}`, sizeBytes: imports.get(i)?.size ?? ('sizeBytes' in s ? s.sizeBytes : 0) })),
    nics: networkNics([], opts.forwards, opts.bridge),
    ...(fw ? { firmware: fw.firmware } : {}),
    ...(opts.display !== undefined ? { display: opts.display } : {}),
    ...(cloudInitConfig(opts) ? { cloudInit: cloudInitConfig(opts) } : {}),
  });
  await checkNetwork(ctx, { id: '', name }, config, 'INVALID_ARGUMENT');
  if (opts.image === 'demo') await ensureDemoImage(ctx.paths.imageCache);

  const vm: VmRecord = { id: newId(), name, config, createdAt: new Date().toISOString(), currentSnapshotId: null };
  const layers: LayerRecord[] = [];
  const active: Record<string, string> = {};
  config.disks.forEach((disk, i) => {
    // An imported image is adopted as frozen base layers, never written: writes go to an overlay.
    const d = newDiskLayers(ctx.paths, vm.id, disk.slot, imports.get(i)?.chain ?? [], vm.createdAt);
    layers.push(...d.layers);
    active[disk.slot] = d.activeId;
  });
  if (isUefi(config)) {
    const nvram = newNvramLayer(ctx, vm, vm.createdAt);
    layers.push(nvram);
    active[NVRAM_SLOT] = nvram.id;
  }
  await commitNewVm(ctx, vmCreate, vm, layers, active);
  return vm;
}

async function requireStopped(ctx: Context, vm: VmRecord, what: string): Promise<void> {
  const rt = await probeRuntime(ctx.paths.run, vm.id);
  if (rt.state !== 'stopped') {
    throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' is ${rt.state}: ${what}`, {
      hint: `vmsnap stop ${vm.name}`,
      details: { vm: vm.name, state: rt.state },
    });
  }
}

/** Change the hardware config of a stopped VM. */
export async function setVm(ctx: Context, vm0: VmRecord, opts: SetVmOptions): Promise<void> {
  const netChange = opts.forwards !== undefined || opts.bridge !== undefined;
  if (opts.memoryMiB === undefined && opts.cpus === undefined && !opts.addDisks?.length && !netChange && opts.display === undefined && opts.firmware === undefined) {
    throw new VmsnapError('INVALID_ARGUMENT', 'nothing to change', { hint: 'give --memory, --cpus, --add-disk, --firmware, --forward, --bridge or --display' });
  }
  await withVm(ctx, vm0, 'set', async () => {
    const vm = ctx.catalog.getVm(vm0.id);
    await requireStopped(ctx, vm, 'its hardware can only be changed while it is stopped');
    const used = new Set(vm.config.disks.map((d) => d.slot));
    const added = (opts.addDisks ?? []).map((sizeBytes) => {
      let n = 0;
      while (used.has(`disk${n}`)) n++;
      used.add(`disk${n}`);
      return { slot: `disk${n}`, sizeBytes };
    });
    // A change of firmware keeps the NVRAM a VM has (switching back to UEFI finds its variables); a first switch to UEFI makes one.
    const fw = opts.firmware !== undefined ? await firmwareConfig(ctx, opts.firmware) : undefined;
    const config = validateConfig({
      ...vm.config,
      ...(opts.memoryMiB !== undefined ? { memoryMiB: opts.memoryMiB } : {}),
      ...(opts.cpus !== undefined ? { cpus: opts.cpus } : {}),
      disks: [...vm.config.disks, ...added],
      ...(fw ? { firmware: fw.firmware } : {}),
      ...(netChange
        ? {
            nics: networkNics(
              vm.config.nics,
              opts.forwards ?? vm.config.nics.find((n) => !n.bridge)?.forwards,
              opts.bridge === undefined ? vm.config.nics.find((n) => n.bridge)?.bridge : (opts.bridge ?? undefined),
            ),
          }
        : {}),
      ...(opts.display !== undefined ? { display: opts.display } : {}),
    });
    if (netChange) await checkNetwork(ctx, vm, config, 'INVALID_ARGUMENT');
    const now = new Date().toISOString();
    const layers: LayerRecord[] = added.map((d) => {
      const id = newLayerId();
      return { id, vmId: vm.id, slot: d.slot, path: layerPath(ctx.paths, id), format: 'qcow2', backingId: null, frozen: false, external: false, createdAt: now };
    });
    if (isUefi(config) && !ctx.catalog.activeLayers(vm.id)[NVRAM_SLOT]) layers.push(newNvramLayer(ctx, vm, now));
    const createFiles = [...layers.map((l) => l.path), ...(fw?.stored ?? [])];
    await runOperation(ctx, vmSet, { vm, plan: { createFiles } }, async (op) => {
      await createLayerFiles(ctx, layers, config);
      op.done(1);
      op.finish('done', undefined, () => {
        ctx.catalog.updateVmConfig(vm.id, config);
        for (const l of layers) {
          ctx.catalog.insertLayer(l);
          ctx.catalog.setActiveLayer(vm.id, l.slot, l.id);
        }
      });
    });
  });
}

/** Remove a stopped VM: its snapshots, its layers and state files. Imported images are left alone. */
export async function removeVm(ctx: Context, vm: VmRecord): Promise<void> {
  const { catalog } = ctx;
  let bootFiles: string[] = [];
  const released = await withVm(ctx, vm, 'rm', async () => {
    const layers = catalog.listLayers(vm.id);
    // A layer another VM builds on (a linked clone) must stay.
    const cloneIds = new Set(layers.flatMap((l) => catalog.childrenOfLayer(l.id).filter((c) => c.vmId !== vm.id).map((c) => c.vmId)));
    if (cloneIds.size > 0) {
      const names = [...cloneIds].map((id) => catalog.findVm(id)?.name ?? id);
      throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' has linked clones that build on its disks: ${names.join(', ')}`, {
        hint: `remove the clones first, or make them independent: vmsnap snapshot delete ${vm.name} SNAPSHOT --detach-clones`,
        details: { vm: vm.name, clones: names },
      });
    }
    const guarded = catalog.listSnapshots(vm.id).filter((s) => s.protected);
    if (guarded.length > 0) {
      const names = guarded.map((s) => s.name);
      throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' has protected snapshots: ${names.join(', ')}; removing it would delete them`, {
        hint: `unprotect them first: vmsnap snapshot unprotect ${vm.name} ${names[0]}`,
        details: { vm: vm.name, snapshots: names, protected: true },
      });
    }
    await requireStopped(ctx, vm, 'stop it before removing it');
    // Layers of other VMs this one builds on (it is a linked clone): they may be mergeable once it is gone.
    const released = new Map<string, string[]>();
    for (const l of layers) {
      const below = l.backingId ? catalog.findLayer(l.backingId) : undefined;
      if (below && below.vmId !== vm.id) released.set(below.vmId, [...(released.get(below.vmId) ?? []), below.id]);
    }
    const snaps = catalog.listSnapshots(vm.id);
    bootFiles = [...new Set([vm.config, ...snaps.map((s) => s.config)].flatMap(bootFilesOf))];
    const files = [...layers.filter((l) => !l.external).map((l) => l.path), ...snaps.flatMap((s) => memoryStateFiles(s.stateFile)), seedPath(ctx.paths, vm.id)];
    await runOperation(ctx, vmRm, { vm, plan: { removeFiles: files } }, async (op) => {
      op.done(1, () => {
        catalog.clearActiveLayers(vm.id);
        // Unlink the tree first: a snapshot's parent must not go while a child names it.
        for (const s of snaps) catalog.updateSnapshot(s.id, { parentId: null });
        for (const s of snaps) catalog.deleteSnapshot(s.id);
        // Children before parents: a layer's backing must outlive it in the table.
        for (const l of [...layers].reverse()) catalog.setLayerBacking(l.id, null);
        for (const l of layers) catalog.deleteLayer(l.id);
        catalog.deleteVm(vm.id);
      });
      for (const f of files) rmSync(f, { force: true });
    });
    return released;
  });
  // Boot files only this VM used go with it.
  pruneBootFiles(ctx.paths, ctx.catalog, bootFiles);
  for (const [owner, layerIds] of released) await consolidateReleased(ctx, owner, layerIds);
}
