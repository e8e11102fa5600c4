/**
 * The one mapping from a parsed libvirt domain to a vmsnap VM: pure (no files,
 * no QEMU), so that every decision is unit-tested on real `virsh dumpxml`
 * output. `vmsnap import-libvirt` (src/vm/libvirt-import.ts) reads the XML and
 * the images, calls this, refuses while `unsupported` is not empty (unless told
 * to drop them) and then adopts the disks.
 */
import { validateConfig, type VmConfig } from '../contract/config.js';
import { VmsnapError } from '../errors.js';
import type { ChainLayer, LibvirtDisk, LibvirtDomain, LibvirtIssue, LibvirtNic } from './libvirt-domain.js';

/** A disk image as found on the host: its whole backing chain (top first) and the size the guest sees. */
export interface AdoptedImage {
  chain: ChainLayer[];
  virtualSize: number;
}

export interface LibvirtMappingInput {
  domain: LibvirtDomain;
  /** Every disk's image, by the domain's `<source file>`. */
  images: ReadonlyMap<string, AdoptedImage>;
  /** A MAC for a NIC the XML gives none (hand-written XML only; libvirt always writes one). */
  newMac: () => string;
}

export interface MappedDisk {
  /** vmsnap's slot (disk0 is the boot disk). */
  slot: string;
  /** The guest device name libvirt gave it (vda, sda, …). */
  target: string;
  source: string;
  /** Adopted read-only as the disk's base layers, top first. */
  chain: ChainLayer[];
}

export interface LibvirtMapping {
  config: VmConfig;
  disks: MappedDisk[];
  /**
   * What the VM would lose: the parser's unsupported items plus what this
   * mapping cannot carry over. The import refuses while this is not empty,
   * unless told to drop them (and then warns about each).
   */
  unsupported: LibvirtIssue[];
  /** What the guest will see differently, though nothing is lost (a disk's bus, a NIC's model). */
  notes: string[];
}

const nicLabel = (nic: LibvirtNic): string => (nic.mac === undefined ? 'NIC' : `NIC ${nic.mac}`);

/** The guest's disks in vmsnap's slot order: the first one it boots from comes first (disk0). */
function bootOrdered(disks: LibvirtDisk[]): LibvirtDisk[] {
  const ranked = disks.map((d, i) => ({ d, i }));
  ranked.sort((a, b) => (a.d.bootOrder ?? Number.MAX_SAFE_INTEGER) - (b.d.bootOrder ?? Number.MAX_SAFE_INTEGER) || a.i - b.i);
  return ranked.map((r) => r.d);
}

/**
 * Map a domain to a vmsnap VM config and the disks to adopt. Throws
 * INVALID_STATE for a running domain (its disks are being written: an import
 * of them would be torn) and INVALID_ARGUMENT when a disk's image is missing
 * from `images` (a caller's bug) or the result is no valid config.
 */
export function mapLibvirtDomain(input: LibvirtMappingInput): LibvirtMapping {
  const { domain: d, images } = input;
  if (d.running) {
    throw new VmsnapError('INVALID_STATE', `the libvirt domain '${d.name}' was running when its XML was dumped: its disks are being written`, {
      hint: `shut it off first (virsh shutdown ${d.name}), then import the XML of the shut-off domain (virsh dumpxml ${d.name})`,
      details: { domain: d.name },
    });
  }
  const unsupported: LibvirtIssue[] = [...d.unsupported];
  const notes: string[] = [];

  // Disks: vmsnap attaches every disk as virtio-blk; a CD-ROM has no counterpart.
  const disks: MappedDisk[] = [];
  for (const disk of bootOrdered(d.disks)) {
    if (disk.device === 'cdrom') {
      unsupported.push({ element: disk.element, what: `CD-ROM ${disk.target} with ${disk.sourceFile}`, why: 'vmsnap has no CD-ROM drives' });
      continue;
    }
    const image = images.get(disk.sourceFile);
    if (image === undefined) throw new VmsnapError('INTERNAL', `disk ${disk.target}: its image ${disk.sourceFile} was not read`);
    const slot = `disk${disks.length}`;
    disks.push({ slot, target: disk.target, source: disk.sourceFile, chain: image.chain });
    if (disk.bus !== 'virtio') notes.push(`disk ${disk.target} (${disk.bus}) becomes virtio disk ${slot}: the guest needs virtio drivers and sees it as /dev/vd*`);
    if (disk.readonly) notes.push(`disk ${disk.target} was read-only; under vmsnap the guest may write to it (into vmsnap's overlay: ${disk.sourceFile} stays unchanged)`);
    if (disk.serial !== undefined) notes.push(`disk ${disk.target}: serial '${disk.serial}' becomes '${slot}' (/dev/disk/by-id names change)`);
  }

  const nics: VmConfig['nics'] = [];
  for (const nic of d.nics) {
    if (nic.mode === 'user' && nic.forwards === undefined) {
      nics.push({ id: `net${nics.length}`, mac: nic.mac ?? input.newMac() });
      if (nic.model !== undefined && nic.model !== 'virtio') notes.push(`${nicLabel(nic)} (${nic.model}) becomes a virtio-net NIC: the guest needs its driver and may name the interface differently`);
      if (nic.libvirtType === 'network') notes.push(`${nicLabel(nic)} on libvirt network '${nic.network ?? ''}' becomes user-mode networking (outbound NAT, like libvirt's default network; not reachable from the host)`);
    }
  }

  // ---------------------------------------------------------------------------
  // NOT YET SUPPORTED: firmware, bridge NICs, port forwards and the display.
  // These need config fields that other parts of issue 11 add (part A: firmware
  // and NVRAM; part B: NICs with --bridge/--forward, --display vnc). Until they
  // land, each is listed as unsupported, so the import refuses it (or drops it
  // with a warning under --ignore-unsupported), never silently. The integrator
  // maps them here, into `config`, and removes each item when it can be carried:
  // - d.firmware === 'uefi': config firmware 'uefi'; d.nvram (path, exists,
  //   template) is the vars file to copy into the store (when !exists: a fresh
  //   copy of OVMF's template, as libvirt would make at first start);
  //   d.secureBoot says which OVMF build. d.firmware === 'bios': firmware 'bios'
  //   (today's default: QEMU's SeaBIOS boots the first disk).
  // - nic.mode === 'bridge': a bridge NIC on nic.bridge with nic.mac.
  // - nic.forwards: user-mode port forwards.
  // - d.graphics 'vnc' | 'spice': display 'vnc'.
  // ---------------------------------------------------------------------------
  const later = (what: string): string => `not yet supported by vmsnap: ${what}`;
  if (d.firmware === 'uefi') {
    unsupported.push({
      element: 'os',
      what: `UEFI firmware${d.nvram === undefined ? '' : ` with NVRAM ${d.nvram.path}${d.nvram.exists ? '' : ' (not made yet: the domain never ran)'}`}`,
      why: later('UEFI firmware and its NVRAM (without it the VM boots SeaBIOS, and a disk that boots by UEFI only will not start)'),
    });
  }
  for (const nic of d.nics) {
    if (nic.mode === 'bridge') {
      unsupported.push({ element: nic.element, what: `${nicLabel(nic)} on host bridge ${nic.bridge ?? ''}`, why: later('bridge NICs') });
    } else if (nic.forwards !== undefined) {
      const list = nic.forwards.map((f) => `${f.address === undefined ? '' : `${f.address}:`}${f.hostPort}:${f.guestPort}/${f.proto}`).join(', ');
      unsupported.push({ element: nic.element, what: `${nicLabel(nic)} with port forwards ${list}`, why: later('port forwards') });
    }
  }
  if (d.graphics !== 'none') {
    unsupported.push({ element: 'devices/graphics', what: `${d.graphics.toUpperCase()} display`, why: later('a display (the VM gets its serial console only)') });
  }
  // --------------------------- end of NOT YET SUPPORTED ----------------------

  const config = validateConfig({
    memoryMiB: d.memoryMiB,
    cpus: d.cpus,
    machine: d.machine,
    boot: {
      ...(d.kernelBoot === undefined ? {} : { kernel: d.kernelBoot.kernel }),
      ...(d.kernelBoot?.initrd === undefined ? {} : { initrd: d.kernelBoot.initrd }),
      ...(d.kernelBoot?.cmdline === undefined ? {} : { append: d.kernelBoot.cmdline }),
    },
    disks: disks.map((disk) => ({ slot: disk.slot, sizeBytes: images.get(disk.source)!.virtualSize })),
    nics,
  });
  return { config, disks, unsupported, notes };
}

/** The refusal of a domain with unsupported items: each by name and why, and how to go on anyway. */
export function unsupportedError(domain: string, items: LibvirtIssue[]): VmsnapError {
  const lines = items.map((i) => `  - ${i.what} (${i.element}): ${i.why}`);
  return new VmsnapError('INVALID_ARGUMENT', `the libvirt domain '${domain}' has ${items.length} thing${items.length === 1 ? '' : 's'} vmsnap cannot carry over:\n${lines.join('\n')}`, {
    hint: 'remove them from the domain (virsh edit), or import with --ignore-unsupported to drop them (each is then listed as a warning)',
    details: { domain, unsupported: items },
  });
}
