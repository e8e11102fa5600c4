/**
 * `vmsnap import-libvirt`: a libvirt domain (its `virsh dumpxml`) becomes a
 * vmsnap VM. The XML is parsed (libvirt-domain.ts), every disk's image is read
 * with its whole backing chain, the domain is mapped (libvirt-mapping.ts, the
 * one place that decides what becomes what), and then the VM is made as
 * `vmsnap create --disk` makes one: the images are adopted read-only as base
 * layers (never written, never removed) under a new empty overlay per disk.
 * Nothing is written before every check has passed.
 */
import { statSync } from 'node:fs';
import type { VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import { NVRAM_SLOT, validateConfig, validateName } from '../contract/config.js';
import type { LibvirtImportResult } from '../contract/views.js';
import { VmsnapError } from '../errors.js';
import { newId, newMacAddress } from '../util/ids.js';
import { commitNewVm, newDiskLayers, newFilesOperation, readImports } from './define.js';
import { parseLibvirtDomain } from './libvirt-domain.js';
import { firmwareConfig, isUefi, newNvramLayer, ovmfVarsSizes } from './firmware.js';
import { type AdoptedImage, mapLibvirtDomain, type MappingHost, unsupportedError } from './libvirt-mapping.js';
import { bridgeProblem, checkNetwork } from './network.js';

/** Import a libvirt domain: the overlays' files, then the VM's rows in the transaction that finishes it. */
export const importLibvirtOp = newFilesOperation('import-libvirt');

export interface ImportLibvirtOptions {
  /** The new VM's name; default: the domain's. */
  name?: string;
  /** Drop what vmsnap cannot carry over (each is returned in `dropped`) instead of refusing. */
  ignoreUnsupported?: boolean;
  /**
   * Called with every host file the XML names (disk images and their backing
   * files, kernel, initrd, NVRAM) before it is looked at; throws to refuse one.
   * The API refuses files outside its --allow-path dirs.
   */
  checkPath?: (path: string, field: string) => void;
  /** Where libvirt keeps the NVRAM files it names itself (default qemu:///system's). */
  nvramDir?: string;
}

export type LibvirtImportOutcome = Omit<LibvirtImportResult, 'vm'> & { vm: VmRecord };

export async function importLibvirtDomain(ctx: Context, xml: string, opts: ImportLibvirtOptions = {}): Promise<LibvirtImportOutcome> {
  const check = opts.checkPath ?? (() => undefined);
  // Every file the XML names is checked before it is even looked at (the API: no probing outside --allow-path).
  const fileExists = (path: string): boolean => {
    check(path, path);
    return statSync(path, { throwIfNoEntry: false })?.isFile() ?? false;
  };
  const domain = parseLibvirtDomain(xml, { fileExists, ...(opts.nvramDir === undefined ? {} : { nvramDir: opts.nvramDir }) });
  const name = opts.name ?? domain.name;
  if (opts.name === undefined) {
    try {
      validateName(name, 'VM');
    } catch (e) {
      if (!(e instanceof VmsnapError)) throw e;
      throw new VmsnapError('INVALID_ARGUMENT', `the domain's name '${name}' is no valid VM name: give the VM a name`, { ...(e.hint === undefined ? {} : { hint: e.hint }), details: { domain: name } });
    }
  } else validateName(name, 'VM');
  if (ctx.catalog.findVm(name)) {
    throw new VmsnapError('ALREADY_EXISTS', `a VM named '${name}' already exists`, {
      hint: 'give the import another name (vmsnap import-libvirt FILE NAME), or remove the old VM with vmsnap rm',
      details: { vm: name },
    });
  }

  // CD-ROMs are not adopted (the mapping lists them as unsupported): their images are not read.
  const disks = domain.disks.filter((d) => d.device === 'disk');
  const read = await readImports(disks.map((d) => ({ importPath: d.sourceFile })));
  const images = new Map<string, AdoptedImage>();
  disks.forEach((d, i) => {
    const image = read.get(i)!;
    for (const layer of image.chain.slice(1)) check(layer.path, `backing file of ${d.target}`);
    images.set(d.sourceFile, { chain: image.chain, virtualSize: image.size });
  });

  const host: MappingHost = {
    bridgeProblem: (bridge) => {
      const p = bridgeProblem(bridge);
      return p === undefined ? undefined : `${p.message.replace(/^bridge: /, '')}${p.hint === undefined ? '' : ` (${p.hint})`}`;
    },
    fileSize: (path) => {
      check(path, path);
      const st = statSync(path, { throwIfNoEntry: false });
      return st?.isFile() ? st.size : undefined;
    },
    ovmfVarsSizes: ovmfVarsSizes(),
  };
  const mapping = mapLibvirtDomain({ domain, images, newMac: newMacAddress, host });
  if (mapping.unsupported.length > 0 && opts.ignoreUnsupported !== true) throw unsupportedError(domain.name, mapping.unsupported);

  // The same checks as create's: a forward's host port another VM holds or something listens on is refused before anything is written.
  await checkNetwork(ctx, { id: '', name }, mapping.config, 'INVALID_ARGUMENT');
  // UEFI: OVMF's code and the NVRAM template go into the store; the domain's NVRAM is copied as the NVRAM layer.
  const fw = mapping.uefi ? await firmwareConfig(ctx, 'uefi', mapping.uefi) : undefined;
  const config = fw ? validateConfig({ ...mapping.config, firmware: fw.firmware }) : mapping.config;

  const vm: VmRecord = { id: newId(), name, config, createdAt: new Date().toISOString(), currentSnapshotId: null };
  const layers = [];
  const active: Record<string, string> = {};
  for (const disk of mapping.disks) {
    const made = newDiskLayers(ctx.paths, vm.id, disk.slot, disk.chain, vm.createdAt);
    layers.push(...made.layers);
    active[disk.slot] = made.activeId;
  }
  if (isUefi(config)) {
    const nvram = newNvramLayer(ctx, vm, vm.createdAt);
    layers.push(nvram);
    active[NVRAM_SLOT] = nvram.id;
  }
  await commitNewVm(ctx, importLibvirtOp, vm, layers, active, mapping.uefi?.nvramFrom);
  return {
    vm,
    domain: domain.name,
    disks: mapping.disks.map((d) => ({ slot: d.slot, target: d.target, source: d.source, adopted: d.chain.map((l) => l.path) })),
    ...(mapping.uefi ? { uefi: mapping.uefi.nvramFrom === undefined ? {} : { nvramFrom: mapping.uefi.nvramFrom } } : {}),
    dropped: mapping.unsupported,
    ignored: domain.ignored,
    notes: mapping.notes,
  };
}
