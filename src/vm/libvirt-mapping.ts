/**
 * The one mapping from a parsed libvirt domain to a vmsnap VM: pure (no files,
 * no QEMU), so that every decision is unit-tested on real `virsh dumpxml`
 * output. `vmsnap import-libvirt` (src/vm/libvirt-import.ts) reads the XML and
 * the images, calls this, refuses while `unsupported` is not empty (unless told
 * to drop them) and then adopts the disks.
 */
import { ForwardSchema, validateConfig, type ForwardConfig, type VmConfig } from '../contract/config.js';
import { VmsnapError } from '../errors.js';
import type { OvmfBuild } from './firmware.js';
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
  /** What the mapping needs to know of this host (the import looks; tests say). */
  host: MappingHost;
}

/** Facts of the host the import runs on. */
export interface MappingHost {
  /** Why a NIC cannot go on this host bridge now (missing, not a bridge, not allowed), or undefined when it can. */
  bridgeProblem: (bridge: string) => string | undefined;
  /** A file's size in bytes; undefined when it does not exist. */
  fileSize: (path: string) => number | undefined;
  /** The size of the variable store of each OVMF build installed (OVMF_VARS_4M.fd, OVMF_VARS.fd): an NVRAM fits the build of its size. */
  ovmfVarsSizes: Partial<Record<OvmfBuild, number>>;
}

/** A UEFI domain's firmware under vmsnap. */
export interface MappedUefi {
  /** Which OVMF build: the one whose variable store has the NVRAM's size. */
  build: OvmfBuild;
  /** The domain's NVRAM file, copied as the VM's NVRAM (absent: fresh variables from the template). */
  nvramFrom?: string;
  /** The domain's NVRAM template, when usable; absent: vmsnap's template of the build (with Microsoft's keys enrolled when `secureBoot`). */
  template?: string;
  /** The domain wants Secure Boot (or lets libvirt pick, which picks it): a fresh NVRAM gets enrolled keys. */
  secureBoot: boolean;
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
  /** For a UEFI domain: the firmware and where its NVRAM comes from (the config's firmware is filled in by the import, which stores the files). */
  uefi?: MappedUefi;
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
    if (nic.model !== undefined && nic.model !== 'virtio') notes.push(`${nicLabel(nic)} (${nic.model}) becomes a virtio-net NIC: the guest needs its driver and may name the interface differently`);
    if (nic.mode === 'bridge') {
      const bridge = nic.bridge ?? '';
      const problem = input.host.bridgeProblem(bridge);
      if (problem !== undefined) {
        unsupported.push({ element: nic.element, what: `${nicLabel(nic)} on host bridge ${bridge}`, why: problem });
        continue;
      }
      nics.push({ id: `net${nics.length}`, mac: nic.mac ?? input.newMac(), bridge });
      continue;
    }
    if (nic.libvirtType === 'network') notes.push(`${nicLabel(nic)} on libvirt network '${nic.network ?? ''}' becomes user-mode networking (outbound NAT, like libvirt's default network; reachable from the host through port forwards only)`);
    const forwards: ForwardConfig[] = [];
    for (const f of nic.forwards ?? []) {
      // passt listens on every address when none is given; QEMU's user-mode network forwards from IPv4 addresses only.
      const hostAddr = f.address ?? '0.0.0.0';
      if (!ForwardSchema.shape.hostAddr.safeParse(hostAddr).success) {
        unsupported.push({ element: nic.element, what: `${nicLabel(nic)}: port forward ${hostAddr}:${f.hostPort} -> ${f.guestPort}/${f.proto}`, why: "QEMU's user-mode network forwards from IPv4 addresses only" });
        continue;
      }
      forwards.push({ proto: f.proto, hostAddr, hostPort: f.hostPort, guestPort: f.guestPort });
    }
    nics.push({ id: `net${nics.length}`, mac: nic.mac ?? input.newMac(), ...(forwards.length > 0 ? { forwards } : {}) });
  }

  const uefi = d.firmware === 'uefi' ? mapUefi(d, input.host, unsupported, notes) : undefined;

  if (d.graphics === 'spice') notes.push("the SPICE display becomes a VNC screen (vmsnap's display; the web UI's console shows it)");

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
    ...(d.graphics === 'none' ? {} : { display: 'vnc' }),
  });
  return { config, disks, unsupported, notes, ...(uefi === undefined ? {} : { uefi }) };
}

const SECURE_BOOT_BUILD = /secboot|\.ms\.fd$|snakeoil/i;

/**
 * UEFI: vmsnap runs OVMF's build without SMM, the one (4 MiB or 2 MiB) whose
 * variable store the NVRAM fits; Secure Boot is on when the variables say so. The domain's NVRAM is copied (its boot
 * entries and any variable the guest set); a domain that never ran has none
 * yet and gets fresh variables from its template, as libvirt would at its
 * first start.
 */
function mapUefi(d: LibvirtDomain, host: MappingHost, unsupported: LibvirtIssue[], notes: string[]): MappedUefi | undefined {
  const builds = Object.entries(host.ovmfVarsSizes) as [OvmfBuild, number][];
  const buildOfSize = (size: number | undefined): OvmfBuild | undefined => builds.find(([, s]) => s === size)?.[0];
  const preferred: OvmfBuild | undefined = host.ovmfVarsSizes['4m'] !== undefined ? '4m' : builds[0]?.[0];
  if (preferred === undefined) {
    unsupported.push({ element: 'os', what: 'UEFI firmware', why: 'OVMF is not installed on this host (apt-get install ovmf)' });
    return undefined;
  }
  // libvirt's own pick for `<os firmware='efi'>` without a wish is its Secure Boot build with Microsoft's keys.
  const secureBoot = d.secureBoot ?? (SECURE_BOOT_BUILD.test(d.loader?.path ?? '') || d.loader === undefined);
  if (secureBoot) {
    notes.push(
      "Secure Boot: vmsnap runs OVMF's build without SMM; Secure Boot stays on as the domain's variables have it (with their enrolled keys), but without SMM the firmware does not guard the variable store from the guest's kernel",
    );
  }

  let template: string | undefined;
  let templateBuild: OvmfBuild | undefined;
  const t = d.nvram?.template;
  if (t !== undefined) {
    const size = host.fileSize(t);
    templateBuild = buildOfSize(size);
    if (templateBuild !== undefined) template = t;
    else notes.push(`the NVRAM template ${t} ${size === undefined ? 'does not exist' : `(${size} bytes) fits no OVMF build installed`}: vmsnap's own template is used instead`);
  }
  const nvram = d.nvram;
  if (nvram === undefined || !nvram.exists) {
    if (nvram !== undefined) notes.push(`the domain never ran, so it has no NVRAM yet (${nvram.path}): the VM gets fresh variables from ${template ?? "vmsnap's OVMF template"}, as libvirt would make at the first start`);
    return { build: templateBuild ?? preferred, secureBoot, ...(template === undefined ? {} : { template }) };
  }
  const size = host.fileSize(nvram.path);
  const build = buildOfSize(size);
  if (build === undefined) {
    const sizes = builds.map(([b, s]) => `${s} bytes for the ${b.toUpperCase()} build`).join(', ');
    unsupported.push({
      element: 'os/nvram',
      what: `NVRAM ${nvram.path} (${size ?? 0} bytes)`,
      why: `it fits no OVMF build installed here (${sizes}); dropped, the VM gets fresh variables and the firmware boots the disk's default loader (\\EFI\\BOOT\\BOOTX64.EFI)`,
    });
    return { build: templateBuild ?? preferred, secureBoot, ...(template === undefined ? {} : { template }) };
  }
  // A template of another build cannot remake this NVRAM: vmsnap's of the NVRAM's build stands in.
  return { build, secureBoot, nvramFrom: nvram.path, ...(template !== undefined && templateBuild === build ? { template } : {}) };
}


/** The refusal of a domain with unsupported items: each by name and why, and how to go on anyway. */
export function unsupportedError(domain: string, items: LibvirtIssue[]): VmsnapError {
  const lines = items.map((i) => `  - ${i.what} (${i.element}): ${i.why}`);
  return new VmsnapError('INVALID_ARGUMENT', `the libvirt domain '${domain}' has ${items.length} thing${items.length === 1 ? '' : 's'} vmsnap cannot carry over:\n${lines.join('\n')}`, {
    hint: 'remove them from the domain (virsh edit), or import with --ignore-unsupported to drop them (each is then listed as a warning)',
    details: { domain, unsupported: items },
  });
}
