/**
 * Reads a libvirt domain XML (as `virsh dumpxml` writes it, or hand-written as
 * `virsh define` accepts it) into a neutral, typed description of the machine
 * that an importer can map to a vmsnap VM.
 *
 * Every element of the domain ends up in one of three places:
 * - mapped: read into a field of the description (memory, vCPUs, firmware,
 *   kernel boot, disks, NICs, display);
 * - `ignored`: dropped because vmsnap provides an equivalent itself or because it
 *   only tunes the host side, with the reason (safe to drop without asking);
 * - `unsupported`: something the guest would lose or that vmsnap cannot honour;
 *   the importer must refuse while this list is not empty, unless told to drop
 *   them (and then it warns about each one).
 * No element under <domain> or <devices> is dropped without landing in one of the
 * two lists; inside a mapped disk or NIC, host-side details (cache mode, PCI
 * address, alias, I/O limits) are not listed.
 *
 * The XML is parsed with fast-xml-parser, never with regular expressions. Paths
 * of disk files are checked to exist (a missing file is an error, as the import
 * must be refused); backing chains are resolved by {@link resolveBackingChain}
 * with qemu-img, because libvirt's inactive XML does not list them.
 */
import { execFile } from 'node:child_process';
import { realpathSync, statSync } from 'node:fs';
import { isAbsolute, resolve as resolvePath, dirname } from 'node:path';
import { XMLParser, XMLValidator } from 'fast-xml-parser';
import { z } from 'zod';
import { VmsnapError } from '../errors.js';

// ---------------------------------------------------------------------------
// The description
// ---------------------------------------------------------------------------

/** Where an element sits in the domain, e.g. `devices/hostdev[0]`, `os/loader`. */
const ElementPath = z.string().min(1);

export const LibvirtDiskSchema = z.object({
  element: ElementPath,
  /** The guest device name libvirt gave it: vda, sda, hdc, … */
  target: z.string().min(1),
  /** virtio, sata, scsi, ide, usb, … (vmsnap attaches every disk as virtio-blk). */
  bus: z.string().min(1),
  device: z.enum(['disk', 'cdrom']),
  /** Absolute path of the top image; its backing chain comes from {@link resolveBackingChain}. */
  sourceFile: z.string().min(1),
  /** From `<driver type>`; libvirt treats a missing type as raw. */
  format: z.enum(['qcow2', 'raw']),
  readonly: z.boolean(),
  bootOrder: z.number().int().positive().optional(),
  /** `<serial>`: the serial number the guest sees (e.g. in /dev/disk/by-id). */
  serial: z.string().optional(),
});

export const LibvirtForwardSchema = z.object({
  proto: z.enum(['tcp', 'udp']),
  /** Host address to listen on; absent: all. */
  address: z.string().optional(),
  hostPort: z.number().int().min(1).max(65535),
  guestPort: z.number().int().min(1).max(65535),
});

export const LibvirtNicSchema = z.object({
  element: ElementPath,
  /** Lowercase; absent only in hand-written XML (libvirt generates one at define). */
  mac: z
    .string()
    .regex(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/)
    .optional(),
  /** 'user': user-mode networking (libvirt's NAT networks and `type='user'`); 'bridge': a tap on a host bridge. */
  mode: z.enum(['user', 'bridge']),
  bridge: z.string().optional(),
  /** For `type='network'`: the libvirt network's name (e.g. 'default'). */
  network: z.string().optional(),
  /** `<model type>`: virtio, e1000, e1000e, rtl8139, …; absent: libvirt's default for the machine. */
  model: z.string().optional(),
  /** The interface's libvirt type: network, bridge or user. */
  libvirtType: z.enum(['network', 'bridge', 'user']),
  bootOrder: z.number().int().positive().optional(),
  /** Port forwards of a user-mode (passt) interface: `<portForward>`. */
  forwards: z.array(LibvirtForwardSchema).optional(),
});

export const LibvirtIssueSchema = z.object({
  element: ElementPath,
  /** What it is, for a person: "USB host device 046d:c52b". */
  what: z.string(),
  why: z.string(),
});

export const LibvirtDomainSchema = z.object({
  name: z.string().min(1),
  uuid: z.string().optional(),
  /** `<domain type>`: 'kvm' or 'qemu' (TCG). */
  domainType: z.enum(['kvm', 'qemu']),
  /** The XML carries a running domain's id: its disks were in use when it was dumped. */
  running: z.boolean(),
  /** `<memory>`, rounded up to a whole MiB. */
  memoryMiB: z.number().int().positive(),
  /** `<memory>` exactly, in KiB, as libvirt stores it. */
  memoryKiB: z.number().int().positive(),
  /** `<currentMemory>` (the balloon target) when it differs from `<memory>`. */
  currentMemoryMiB: z.number().int().positive().optional(),
  /** vCPUs online at boot: `<vcpu current>`, else `<vcpu>`. */
  cpus: z.number().int().positive(),
  /** `<vcpu>`: the maximum (hotplug headroom). */
  maxCpus: z.number().int().positive(),
  /** `<cpu mode>` (host-passthrough, host-model, custom, maximum), for information. */
  cpuMode: z.string().optional(),
  arch: z.string(),
  /** From `<os><type machine>`: pc-q35-* / q35 → q35, pc-i440fx-* / pc → pc. */
  machine: z.enum(['q35', 'pc']),
  /** The machine type as written, e.g. pc-q35-7.2. */
  machineType: z.string(),
  firmware: z.enum(['bios', 'uefi']),
  loader: z
    .object({
      path: z.string(),
      readonly: z.boolean(),
      type: z.enum(['pflash', 'rom']),
      secure: z.boolean().optional(),
    })
    .optional(),
  nvram: z
    .object({
      path: z.string(),
      template: z.string().optional(),
      /** Not written in the XML: libvirt's default place for this domain (`<os firmware='efi'>`). */
      implicit: z.boolean(),
      /** Whether the file exists now. libvirt creates it from the template at the first start. */
      exists: z.boolean(),
    })
    .optional(),
  /**
   * true/false when the XML says so (`<loader secure>`, or the secure-boot firmware
   * feature). Absent for `<os firmware='efi'>` without a preference: libvirt picks at
   * start; Debian 12's libvirt 9.0 then picks the Secure Boot firmware with
   * Microsoft's keys enrolled (OVMF_CODE_4M.ms.fd + OVMF_VARS_4M.ms.fd).
   */
  secureBoot: z.boolean().optional(),
  kernelBoot: z
    .object({
      kernel: z.string(),
      initrd: z.string().optional(),
      cmdline: z.string().optional(),
    })
    .optional(),
  /** `<os><boot dev>` in order: hd, cdrom, network, fd. Empty when per-device boot order is used. */
  bootDevices: z.array(z.string()),
  disks: z.array(LibvirtDiskSchema),
  nics: z.array(LibvirtNicSchema),
  /** The first `<graphics>` that vmsnap's display can stand for. */
  graphics: z.enum(['vnc', 'spice', 'none']),
  unsupported: z.array(LibvirtIssueSchema),
  ignored: z.array(LibvirtIssueSchema),
});

export type LibvirtDisk = z.infer<typeof LibvirtDiskSchema>;
export type LibvirtNic = z.infer<typeof LibvirtNicSchema>;
export type LibvirtForward = z.infer<typeof LibvirtForwardSchema>;
export type LibvirtIssue = z.infer<typeof LibvirtIssueSchema>;
export type LibvirtDomain = z.infer<typeof LibvirtDomainSchema>;

export interface ParseLibvirtDomainOptions {
  /**
   * Whether a disk image, CD-ROM image, kernel or initrd exists as a regular file.
   * Default: a stat of the path. Tests of fixtures made on another machine pass their own.
   */
  fileExists?: (path: string) => boolean;
  /** Where libvirt keeps NVRAM files it names itself. Default: qemu:///system's. */
  nvramDir?: string;
}

/** libvirt's NVRAM folder for qemu:///system (`<name>_VARS.fd` inside). */
export const LIBVIRT_SYSTEM_NVRAM_DIR = '/var/lib/libvirt/qemu/nvram';

// ---------------------------------------------------------------------------
// A small typed element tree over fast-xml-parser's ordered output
// ---------------------------------------------------------------------------

interface XmlElement {
  name: string;
  attrs: Record<string, string>;
  children: XmlElement[];
  /** The element's own text, trimmed (children's text not included). */
  text: string;
  /** Path from the domain element: `devices/disk[1]`, `os/loader`. */
  path: string;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const ATTRS = ':@';
const TEXT = '#text';

/**
 * Turn fast-xml-parser's preserveOrder nodes into elements (text nodes become text).
 * parentPath null: these are the document's nodes; the root gets path '' and its
 * children are named from there (`devices/disk[0]`).
 */
function toElements(nodes: unknown, parentPath: string | null): { elements: XmlElement[]; text: string } {
  const elements: XmlElement[] = [];
  const texts: string[] = [];
  if (!Array.isArray(nodes)) return { elements, text: '' };
  const pending: { name: string; attrs: Record<string, string>; body: unknown }[] = [];
  for (const node of nodes) {
    if (!isRecord(node)) continue;
    const attrsRaw = node[ATTRS];
    const attrs: Record<string, string> = {};
    if (isRecord(attrsRaw)) {
      for (const [k, v] of Object.entries(attrsRaw)) attrs[k] = String(v);
    }
    for (const [key, body] of Object.entries(node)) {
      if (key === ATTRS) continue;
      if (key === TEXT) {
        texts.push(String(body));
        continue;
      }
      pending.push({ name: key, attrs, body });
    }
  }
  const counts = new Map<string, number>();
  for (const p of pending) counts.set(p.name, (counts.get(p.name) ?? 0) + 1);
  const seen = new Map<string, number>();
  for (const p of pending) {
    const i = seen.get(p.name) ?? 0;
    seen.set(p.name, i + 1);
    // Devices are always indexed (devices/hostdev[0]); other elements when they repeat.
    const indexed = parentPath === 'devices' || (counts.get(p.name) ?? 0) > 1;
    const own = indexed ? `${p.name}[${i}]` : p.name;
    const path = parentPath === null ? '' : parentPath === '' ? own : `${parentPath}/${own}`;
    const inner = toElements(p.body, path);
    elements.push({ name: p.name, attrs: p.attrs, children: inner.elements, text: inner.text, path });
  }
  return { elements, text: texts.join('').trim() };
}

function child(el: XmlElement, name: string): XmlElement | undefined {
  return el.children.find((c) => c.name === name);
}

function childrenNamed(el: XmlElement, name: string): XmlElement[] {
  return el.children.filter((c) => c.name === name);
}

function invalid(message: string, details: Record<string, unknown> = {}, hint?: string): VmsnapError {
  return new VmsnapError('INVALID_ARGUMENT', message, { details, ...(hint === undefined ? {} : { hint }) });
}

function parseXml(xml: string): XmlElement {
  if (xml.trim() === '') throw invalid('the libvirt domain XML is empty');
  const valid = XMLValidator.validate(xml);
  if (valid !== true) {
    const { msg, line, col } = valid.err;
    throw invalid(`not well-formed XML (line ${line}${col === undefined ? '' : `, column ${col}`}): ${msg}`, { line, col }, 'pass the file as `virsh dumpxml DOMAIN` writes it');
  }
  const parser = new XMLParser({
    preserveOrder: true,
    ignoreAttributes: false,
    attributeNamePrefix: '',
    parseAttributeValue: false,
    parseTagValue: false,
    trimValues: true,
    ignoreDeclaration: true,
    ignorePiTags: true,
  });
  const parsed: unknown = parser.parse(xml);
  const roots = toElements(parsed, null).elements;
  const root = roots[0];
  if (roots.length !== 1 || root === undefined) throw invalid('the XML has no single root element');
  if (root.name !== 'domain') {
    throw invalid(`the XML is a <${root.name}>, not a libvirt <domain>`, { root: root.name }, 'pass the file as `virsh dumpxml DOMAIN` writes it');
  }
  return root;
}

// ---------------------------------------------------------------------------
// Units and numbers
// ---------------------------------------------------------------------------

/**
 * A memory size in bytes. Units as libvirt 9.0 reads them (virScaleInteger, checked
 * against a live libvirtd): the documented b/bytes, KB, k/KiB, MB, M/MiB, GB, G/GiB,
 * TB, T/TiB, plus P/PiB/PB, E/EiB/EB and 'byte', all case-insensitive; no unit is KiB.
 * `xB` is decimal (1000ⁿ), `x` and `xiB` binary (1024ⁿ).
 */
export function memoryBytes(value: string, unit: string | undefined, what: string): bigint {
  if (!/^[0-9]+$/.test(value)) throw invalid(`${what}: '${value}' is not a whole number`, { field: what, value });
  const n = BigInt(value);
  const u = unit ?? 'KiB';
  const lower = u.toLowerCase();
  if (lower === '') return n * 1024n;
  if (lower === 'b' || lower === 'byte' || lower === 'bytes') return n;
  const powers: Record<string, bigint> = { k: 1n, m: 2n, g: 3n, t: 4n, p: 5n, e: 6n };
  const power = powers[lower[0] ?? ''];
  const rest = lower.slice(1);
  let base: bigint | undefined;
  if (rest === '' || rest === 'ib') base = 1024n;
  else if (rest === 'b') base = 1000n;
  if (power === undefined || base === undefined) {
    throw invalid(`${what}: unknown unit '${u}'`, { field: what, unit: u }, "libvirt's units are b, bytes, KB, k, KiB, MB, M, MiB, GB, G, GiB, TB, T, TiB (KiB when none is given)");
  }
  return n * base ** power;
}

function positiveInt(text: string, what: string): number {
  if (!/^[0-9]+$/.test(text) || Number(text) < 1 || !Number.isSafeInteger(Number(text))) {
    throw invalid(`${what}: '${text}' is not a positive whole number`, { field: what, value: text });
  }
  return Number(text);
}

// ---------------------------------------------------------------------------
// The parser
// ---------------------------------------------------------------------------

class Collector {
  readonly unsupported: LibvirtIssue[] = [];
  readonly ignored: LibvirtIssue[] = [];
  unsupportedAt(el: XmlElement | string, what: string, why: string): void {
    this.unsupported.push({ element: typeof el === 'string' ? el : el.path, what, why });
  }
  ignore(el: XmlElement | string, what: string, why: string): void {
    this.ignored.push({ element: typeof el === 'string' ? el : el.path, what, why });
  }
}

const WHY = {
  descriptive: 'descriptive only: nothing the guest sees',
  hostTuning: 'host-side tuning or placement; the guest sees the same hardware without it',
  lifecycle: "lifecycle actions: vmsnap's own rules apply (poweroff stops the VM, reboot restarts it)",
  seclabel: 'host-side security labelling of files; vmsnap runs QEMU as its own user',
  emulator: 'vmsnap runs its own qemu-system-x86_64',
  controller: 'vmsnap creates the buses and controllers its devices need',
  input: "the machine's PS/2 keyboard and mouse are always there, and vmsnap's display gives pointer input",
  video: "vmsnap's display brings its own video device",
  audioBackend: 'host audio backend only (the guest-visible part is <sound>)',
  serial: "vmsnap gives every VM a serial port (ttyS0) on its console socket, logged to the VM's runtime folder",
  guestAgent: 'vmsnap gives every VM its own guest-agent channel of this name (org.qemu.guest_agent.0)',
  spice: "belongs to SPICE: vmsnap's display is VNC, and the guest sees nothing missing until a SPICE client connects",
  memballoon: 'vmsnap gives the guest all of its memory; no balloon is needed',
  rng: 'the guest seeds its RNG from the CPU and its own entropy sources without it',
  itco: "the ICH9 TCO watchdog is part of every q35 chipset, vmsnap's too",
  features: "machine feature flags: vmsnap runs QEMU's defaults (ACPI and APIC on; SMM on for q35); the guest boots without the others (a Windows guest loses Hyper-V enlightenments: slower, not broken)",
  cpu: "vmsnap picks the CPU model itself (host under KVM, QEMU's default under TCG) and presents the vCPUs as sockets",
  clockTimers: "timer tick policies: QEMU's defaults",
  pm: "ACPI S3/S4 advertisement: QEMU's defaults",
  bootmenu: "boot menu and BIOS console options: QEMU's defaults",
  backingStore: 'the backing chain is read from the image files themselves with qemu-img',
} as const;

/** Parse a libvirt domain XML; throws INVALID_ARGUMENT on input that is not a usable domain. */
export function parseLibvirtDomain(xml: string, options: ParseLibvirtDomainOptions = {}): LibvirtDomain {
  const fileExists = options.fileExists ?? isRegularFile;
  const nvramDir = options.nvramDir ?? LIBVIRT_SYSTEM_NVRAM_DIR;
  const dom = parseXml(xml);
  const c = new Collector();

  const domainType = dom.attrs.type;
  if (domainType === undefined) throw invalid('the <domain> has no type attribute (kvm or qemu)', { field: 'domain@type' });
  if (domainType !== 'kvm' && domainType !== 'qemu') {
    throw invalid(`<domain type='${domainType}'> is not a QEMU/KVM domain`, { field: 'domain@type', value: domainType });
  }

  const nameEl = child(dom, 'name');
  if (nameEl === undefined || nameEl.text === '') throw invalid('the domain has no <name>', { field: 'name' });
  const uuid = child(dom, 'uuid')?.text || undefined;

  // Memory
  const memEl = child(dom, 'memory');
  if (memEl === undefined) throw invalid('the domain has no <memory>', { field: 'memory' }, "libvirt's <memory unit='MiB'>1024</memory> is the guest's RAM");
  const memBytes = memoryBytes(memEl.text, memEl.attrs.unit, 'memory');
  if (memBytes <= 0n) throw invalid('memory: must be more than 0', { field: 'memory' });
  const memoryKiB = toSafeNumber((memBytes + 1023n) / 1024n, 'memory');
  const memoryMiB = Math.ceil(memoryKiB / 1024);
  let currentMemoryMiB: number | undefined;
  const curEl = child(dom, 'currentMemory');
  if (curEl !== undefined) {
    const curKiB = toSafeNumber((memoryBytes(curEl.text, curEl.attrs.unit, 'currentMemory') + 1023n) / 1024n, 'currentMemory');
    if (curKiB !== memoryKiB) {
      currentMemoryMiB = Math.max(1, Math.ceil(curKiB / 1024));
      c.ignore(curEl, `balloon target ${currentMemoryMiB} MiB of ${memoryMiB} MiB`, 'vmsnap boots the guest with all of <memory> and has no balloon target');
    }
  }

  // vCPUs
  const vcpuEl = child(dom, 'vcpu');
  const maxCpus = vcpuEl === undefined ? 1 : positiveInt(vcpuEl.text, 'vcpu');
  const cpus = vcpuEl?.attrs.current === undefined ? maxCpus : positiveInt(vcpuEl.attrs.current, 'vcpu@current');
  if (cpus > maxCpus) throw invalid(`vcpu: current='${cpus}' is more than the maximum ${maxCpus}`, { field: 'vcpu@current' });
  if (vcpuEl !== undefined && cpus < maxCpus) {
    c.ignore(vcpuEl, `${maxCpus - cpus} hot-pluggable vCPUs beyond the ${cpus} online at boot`, 'vmsnap has no vCPU hotplug: the guest boots with the vCPUs that were online at boot');
  }

  // <os>
  const os = child(dom, 'os');
  if (os === undefined) throw invalid('the domain has no <os>', { field: 'os' });
  const osType = child(os, 'type');
  if (osType === undefined) throw invalid('the domain has no <os><type>', { field: 'os/type' });
  if (osType.text !== 'hvm') {
    c.unsupportedAt(osType, `OS type '${osType.text}'`, 'vmsnap runs full virtual machines (hvm) only');
  }
  const arch = osType.attrs.arch ?? 'x86_64';
  if (arch !== 'x86_64' && arch !== 'i686') {
    c.unsupportedAt(osType, `architecture ${arch}`, 'vmsnap runs qemu-system-x86_64 guests only');
  }
  const machineType = osType.attrs.machine ?? 'pc';
  const machine = mapMachine(machineType);
  if (machine === undefined) {
    c.unsupportedAt(osType, `machine type ${machineType}`, 'vmsnap knows the q35 and pc (i440fx) machine types only');
  }

  const fw = readFirmware(nameEl.text, os, nvramDir, fileExists, c);
  const kernelBoot = readKernelBoot(os, fileExists);
  const bootDevices: string[] = [];
  for (const el of os.children) {
    switch (el.name) {
      case 'type':
      case 'loader':
      case 'nvram':
      case 'firmware':
      case 'kernel':
      case 'initrd':
      case 'cmdline':
        break; // read above
      case 'boot':
        if (el.attrs.dev !== undefined) bootDevices.push(el.attrs.dev);
        break;
      case 'bootmenu':
      case 'bios':
        c.ignore(el, `<os><${el.name}>`, WHY.bootmenu);
        break;
      case 'smbios':
        if (el.attrs.mode === 'sysinfo') c.unsupportedAt(el, 'SMBIOS strings from <sysinfo>', 'guest-visible identity (vendor, serial numbers) that vmsnap cannot set');
        else c.ignore(el, `SMBIOS mode ${el.attrs.mode ?? ''}`, "QEMU's default SMBIOS tables");
        break;
      case 'dtb':
        c.unsupportedAt(el, 'device tree blob', 'vmsnap boots x86 guests without a device tree');
        break;
      case 'acpi':
        c.unsupportedAt(el, 'custom ACPI tables', 'vmsnap cannot load extra ACPI tables');
        break;
      default:
        c.unsupportedAt(el, `<os><${el.name}>`, 'an OS boot option vmsnap has no notion of');
    }
  }

  const disks: LibvirtDisk[] = [];
  const nics: LibvirtNic[] = [];
  let graphics: LibvirtDomain['graphics'] = 'none';
  let cpuMode: string | undefined;

  for (const el of dom.children) {
    switch (el.name) {
      case 'name':
      case 'uuid':
      case 'memory':
      case 'currentMemory':
      case 'vcpu':
      case 'os':
        break; // read above
      case 'title':
      case 'description':
      case 'metadata':
        c.ignore(el, `<${el.name}>`, WHY.descriptive);
        break;
      case 'maxMemory':
        c.ignore(el, 'memory hotplug headroom', 'vmsnap has no memory hotplug; the guest keeps its boot memory');
        break;
      case 'vcpus':
        c.ignore(el, 'per-vCPU hotplug settings', 'vmsnap has no vCPU hotplug');
        break;
      case 'iothreads':
      case 'iothreadids':
      case 'defaultiothread':
      case 'cputune':
      case 'memtune':
      case 'blkiotune':
      case 'numatune':
      case 'memoryBacking':
      case 'resource':
      case 'perf':
        c.ignore(el, `<${el.name}>`, WHY.hostTuning);
        break;
      case 'features':
        readFeatures(el, c);
        break;
      case 'cpu':
        cpuMode = el.attrs.mode ?? (child(el, 'model') === undefined ? undefined : 'custom');
        c.ignore(el, `CPU ${cpuMode ?? 'default'}${child(el, 'model')?.text ? ` (${child(el, 'model')?.text ?? ''})` : ''}`, WHY.cpu);
        for (const sub of el.children) {
          if (sub.name === 'numa') c.unsupportedAt(sub, 'guest NUMA topology', 'vmsnap presents one NUMA node');
        }
        break;
      case 'clock':
        readClock(el, c);
        break;
      case 'on_poweroff':
      case 'on_reboot':
      case 'on_crash':
      case 'on_lockfailure':
        c.ignore(el, `${el.name}: ${el.text}`, WHY.lifecycle);
        break;
      case 'pm':
        c.ignore(el, 'power management (suspend-to-mem/disk)', WHY.pm);
        break;
      case 'seclabel':
        c.ignore(el, `security label (${el.attrs.model ?? el.attrs.type ?? 'default'})`, WHY.seclabel);
        break;
      case 'devices':
        for (const dev of el.children) {
          switch (dev.name) {
            case 'disk': {
              const d = readDisk(dev, fileExists, c);
              if (d !== undefined) disks.push(d);
              break;
            }
            case 'interface': {
              const n = readInterface(dev, c);
              if (n !== undefined) nics.push(n);
              break;
            }
            case 'graphics':
              graphics = readGraphics(dev, graphics, c);
              break;
            default:
              readOtherDevice(dev, c);
          }
        }
        break;
      case 'sysinfo':
        c.unsupportedAt(el, 'SMBIOS system information', 'guest-visible identity (vendor, serial numbers) that vmsnap cannot set');
        break;
      case 'genid':
        c.unsupportedAt(el, 'VM generation ID', 'vmsnap has no VM generation ID device');
        break;
      case 'keywrap':
      case 'launchSecurity':
        c.unsupportedAt(el, `<${el.name}>`, 'confidential-computing and key-wrapping settings vmsnap cannot provide');
        break;
      default:
        if (el.name.includes(':')) {
          c.unsupportedAt(el, `<${el.name}>`, 'a hypervisor-specific passthrough (e.g. raw QEMU arguments) vmsnap will not replay');
        } else {
          c.unsupportedAt(el, `<${el.name}>`, 'a domain setting vmsnap has no notion of');
        }
    }
  }

  const result: LibvirtDomain = {
    name: nameEl.text,
    ...(uuid === undefined ? {} : { uuid }),
    domainType,
    running: dom.attrs.id !== undefined && dom.attrs.id !== '-1',
    memoryMiB,
    memoryKiB,
    ...(currentMemoryMiB === undefined ? {} : { currentMemoryMiB }),
    cpus,
    maxCpus,
    ...(cpuMode === undefined ? {} : { cpuMode }),
    arch,
    machine: machine ?? 'q35',
    machineType,
    ...fw,
    ...(kernelBoot === undefined ? {} : { kernelBoot }),
    bootDevices,
    disks,
    nics,
    graphics,
    unsupported: c.unsupported,
    ignored: c.ignored,
  };
  const checked = LibvirtDomainSchema.safeParse(result);
  if (!checked.success) {
    const issue = checked.error.issues[0];
    const field = issue?.path.join('.') ?? '';
    throw invalid(`libvirt domain: ${field}: ${issue?.message ?? 'invalid'}`, { field });
  }
  return checked.data;
}

function toSafeNumber(n: bigint, what: string): number {
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw invalid(`${what}: too large`, { field: what });
  return Number(n);
}

function isRegularFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

function mapMachine(machineType: string): 'q35' | 'pc' | undefined {
  if (machineType === 'q35' || machineType.startsWith('pc-q35-')) return 'q35';
  if (machineType === 'pc' || machineType.startsWith('pc-i440fx-')) return 'pc';
  return undefined;
}

type FirmwareFields = Pick<LibvirtDomain, 'firmware' | 'loader' | 'nvram' | 'secureBoot'>;

function yesNo(v: string | undefined): boolean | undefined {
  if (v === 'yes') return true;
  if (v === 'no') return false;
  return undefined;
}

function readFirmware(
  name: string,
  os: XmlElement,
  nvramDir: string,
  fileExists: (p: string) => boolean,
  c: Collector,
): FirmwareFields {
  const loaderEl = child(os, 'loader');
  const nvramEl = child(os, 'nvram');
  const fwAttr = os.attrs.firmware;
  let firmware: 'bios' | 'uefi' = 'bios';
  if (fwAttr === 'efi') firmware = 'uefi';
  else if (fwAttr !== undefined && fwAttr !== 'bios') c.unsupportedAt(os, `firmware '${fwAttr}'`, 'vmsnap knows BIOS and UEFI firmware only');

  let loader: FirmwareFields['loader'];
  if (loaderEl !== undefined && loaderEl.text !== '') {
    const type = loaderEl.attrs.type === 'rom' ? 'rom' : 'pflash';
    const secure = yesNo(loaderEl.attrs.secure);
    loader = { path: loaderEl.text, readonly: yesNo(loaderEl.attrs.readonly) ?? false, type, ...(secure === undefined ? {} : { secure }) };
    // pflash is UEFI's split code/vars; a ROM is a BIOS image, or an old single-file OVMF.
    if (type === 'pflash' || /ovmf|edk2/i.test(loaderEl.text)) firmware = 'uefi';
    else c.unsupportedAt(loaderEl, `custom BIOS image ${loaderEl.text}`, 'vmsnap boots its own SeaBIOS or OVMF');
  }
  let nvram: FirmwareFields['nvram'];
  if (nvramEl !== undefined) {
    firmware = 'uefi';
    const template = nvramEl.attrs.template;
    if (nvramEl.attrs.type !== undefined && nvramEl.attrs.type !== 'file') {
      c.unsupportedAt(nvramEl, `NVRAM on a ${nvramEl.attrs.type} source`, 'vmsnap copies the NVRAM from a local file');
    } else {
      const source = child(nvramEl, 'source')?.attrs.file;
      const path = nvramEl.text !== '' ? nvramEl.text : (source ?? `${nvramDir}/${name}_VARS.fd`);
      nvram = { path, ...(template === undefined ? {} : { template }), implicit: nvramEl.text === '' && source === undefined, exists: fileExists(path) };
    }
  } else if (firmware === 'uefi') {
    const path = `${nvramDir}/${name}_VARS.fd`;
    nvram = { path, implicit: true, exists: fileExists(path) };
  }

  // <loader secure='yes'/> may come without a path (firmware auto-selection with a wish).
  let secureBoot = yesNo(loaderEl?.attrs.secure);
  const fwEl = child(os, 'firmware');
  if (fwEl !== undefined) {
    for (const f of childrenNamed(fwEl, 'feature')) {
      if (f.attrs.name === 'secure-boot') secureBoot = yesNo(f.attrs.enabled) ?? secureBoot;
    }
  }
  return {
    firmware,
    ...(loader === undefined ? {} : { loader }),
    ...(nvram === undefined ? {} : { nvram }),
    ...(secureBoot === undefined ? {} : { secureBoot }),
  };
}

function readKernelBoot(os: XmlElement, fileExists: (p: string) => boolean): LibvirtDomain['kernelBoot'] {
  const kernel = child(os, 'kernel')?.text;
  const initrd = child(os, 'initrd')?.text;
  const cmdline = child(os, 'cmdline')?.text;
  if (kernel === undefined || kernel === '') {
    if (initrd) throw invalid('<os><initrd> without <os><kernel>', { field: 'os/initrd' });
    return undefined;
  }
  for (const [field, path] of [
    ['os/kernel', kernel],
    ['os/initrd', initrd],
  ] as const) {
    if (path === undefined || path === '') continue;
    if (!isAbsolute(path)) throw invalid(`${field}: '${path}' is not an absolute path`, { field, path });
    if (!fileExists(path)) throw invalid(`${field}: ${path} does not exist`, { field, path }, 'the import needs every file the domain boots from');
  }
  return { kernel, ...(initrd ? { initrd } : {}), ...(cmdline ? { cmdline } : {}) };
}

function readFeatures(el: XmlElement, c: Collector): void {
  const known = new Set(['acpi', 'apic', 'pae', 'hap', 'viridian', 'privnet', 'hyperv', 'kvm', 'pvspinlock', 'vmport', 'smm', 'ioapic', 'vmcoreinfo', 'htm', 'msrs', 'pmu', 'tcg', 'async-teardown', 'xen', 'nested-hv', 'ccf-assist', 'cfpc', 'sbbc', 'ibs', 'hpt', 'gic', 'ras', 'sev']);
  for (const f of el.children) {
    if (known.has(f.name)) c.ignore(f, `feature ${f.name}${f.attrs.state ? `=${f.attrs.state}` : ''}`, WHY.features);
    else c.unsupportedAt(f, `feature ${f.name}`, 'a machine feature vmsnap does not know');
  }
}

function readClock(el: XmlElement, c: Collector): void {
  const offset = el.attrs.offset ?? 'utc';
  if (offset !== 'utc') {
    c.unsupportedAt(el, `real-time clock offset '${offset}'${el.attrs.timezone ? ` (${el.attrs.timezone})` : ''}`, "vmsnap's guest RTC runs in UTC: a guest that expects local time would be off by its zone");
  } else {
    c.ignore(el, 'real-time clock in UTC', "vmsnap's guest RTC runs in UTC too");
  }
  for (const t of el.children) {
    if (t.name === 'timer') c.ignore(t, `timer ${t.attrs.name ?? ''}`, WHY.clockTimers);
    else c.unsupportedAt(t, `<clock><${t.name}>`, 'a clock setting vmsnap does not know');
  }
}

function readDisk(el: XmlElement, fileExists: (p: string) => boolean, c: Collector): LibvirtDisk | undefined {
  const type = el.attrs.type ?? 'file';
  const device = el.attrs.device ?? 'disk';
  const targetEl = child(el, 'target');
  const target = targetEl?.attrs.dev;
  const label = `${device} ${target ?? '(no target)'}`;
  const source = child(el, 'source');
  if (device === 'floppy') {
    c.unsupportedAt(el, `floppy ${target ?? ''}`.trim(), 'vmsnap has no floppy drives');
    return undefined;
  }
  if (device === 'lun') {
    c.unsupportedAt(el, `SCSI LUN passthrough ${source?.attrs.dev ?? ''}`.trim(), 'a host SCSI device passed to the guest; vmsnap can only snapshot image files');
    return undefined;
  }
  if (device !== 'disk' && device !== 'cdrom') {
    c.unsupportedAt(el, `disk device '${device}'`, 'vmsnap knows disks and CD-ROMs only');
    return undefined;
  }
  if (type !== 'file') {
    const what =
      type === 'volume'
        ? `${label} on storage pool volume ${source?.attrs.pool ?? '?'}/${source?.attrs.volume ?? '?'}`
        : type === 'block'
          ? `${label} on host block device ${source?.attrs.dev ?? '?'}`
          : type === 'network'
            ? `${label} on network storage (${source?.attrs.protocol ?? '?'}${source?.attrs.name ? ` ${source.attrs.name}` : ''})`
            : `${label} of type '${type}'`;
    const why =
      type === 'volume'
        ? 'the file behind a pool volume is known only to libvirt; give the disk as a file (virsh vol-path --pool POOL VOLUME), then import'
        : 'vmsnap adopts image files only';
    if (device === 'cdrom' && source === undefined) c.ignore(el, `empty ${label}`, 'an empty CD-ROM drive: no media to import');
    else c.unsupportedAt(el, what, why);
    return undefined;
  }
  if (target === undefined) throw invalid(`${el.path}: the disk has no <target dev>`, { field: `${el.path}/target` });
  const sourceFile = source?.attrs.file;
  if (sourceFile === undefined || sourceFile === '') {
    if (device === 'cdrom') {
      c.ignore(el, `empty CD-ROM drive ${target}`, 'an empty CD-ROM drive: no media to import');
      return undefined;
    }
    throw invalid(`disk ${target}: no <source file>`, { field: `${el.path}/source`, target });
  }
  if (!isAbsolute(sourceFile)) throw invalid(`disk ${target}: '${sourceFile}' is not an absolute path`, { target, path: sourceFile });

  const driver = child(el, 'driver');
  const format = driver?.attrs.type ?? 'raw';
  if (format !== 'qcow2' && format !== 'raw') {
    c.unsupportedAt(el, `${label}: ${format} image ${sourceFile}`, 'vmsnap adopts qcow2 and raw images only (qemu-img convert it first)');
    return undefined;
  }
  const blockers: string[] = [];
  let readonly = device === 'cdrom';
  let bootOrder: number | undefined;
  let serial: string | undefined;
  for (const sub of el.children) {
    switch (sub.name) {
      case 'readonly':
        readonly = true;
        break;
      case 'boot':
        if (sub.attrs.order !== undefined) bootOrder = positiveInt(sub.attrs.order, `${sub.path}@order`);
        break;
      case 'serial':
        serial = sub.text;
        break;
      case 'backingStore':
        if (sub.children.length > 0) c.ignore(sub, `backing chain of ${target} as libvirt saw it`, WHY.backingStore);
        break;
      case 'shareable':
        blockers.push('shared between domains (<shareable/>): a snapshot of it would not be consistent');
        break;
      case 'transient':
        blockers.push('transient (<transient/>): libvirt discards its writes at shutdown, vmsnap would keep them');
        break;
      case 'encryption':
      case 'auth':
        blockers.push(`<${sub.name}>: an encrypted or authenticated source vmsnap cannot open`);
        break;
      case 'mirror':
        blockers.push('a block copy job is running on it (<mirror>)');
        break;
      default:
        break; // driver tuning, address, alias, iotune, geometry, blockio, wwn, vendor, product: host-side or cosmetic
    }
  }
  if (blockers.length > 0) {
    for (const why of blockers) c.unsupportedAt(el, `${label} ${sourceFile}`, why);
    return undefined;
  }
  if (!fileExists(sourceFile)) {
    throw invalid(`${device} ${target}: ${sourceFile} does not exist`, { target, path: sourceFile, element: el.path }, 'the import adopts every disk image; restore the file or remove the disk from the domain');
  }
  return {
    element: el.path,
    target,
    bus: targetEl?.attrs.bus ?? busFromTarget(target),
    device,
    sourceFile,
    format,
    readonly,
    ...(bootOrder === undefined ? {} : { bootOrder }),
    ...(serial === undefined || serial === '' ? {} : { serial }),
  };
}

/** libvirt's default bus for a target name without bus='…'. */
function busFromTarget(target: string): string {
  if (target.startsWith('vd')) return 'virtio';
  if (target.startsWith('sd')) return 'scsi';
  if (target.startsWith('hd')) return 'ide';
  if (target.startsWith('xvd')) return 'xen';
  if (target.startsWith('ubd')) return 'uml';
  return 'unknown';
}

function readInterface(el: XmlElement, c: Collector): LibvirtNic | undefined {
  const type = el.attrs.type ?? '';
  const source = child(el, 'source');
  const macRaw = child(el, 'mac')?.attrs.address;
  const mac = macRaw?.toLowerCase();
  const model = child(el, 'model')?.attrs.type;
  const label = `NIC ${mac ?? ''}`.trim();
  if (type !== 'network' && type !== 'bridge' && type !== 'user') {
    const what =
      type === 'direct'
        ? `${label} (macvtap on ${source?.attrs.dev ?? '?'}, mode ${source?.attrs.mode ?? 'vepa'})`
        : type === 'hostdev'
          ? `${label} (a host network device passed through)`
          : `${label} of type '${type}'`;
    c.unsupportedAt(el, what, 'vmsnap connects NICs to user-mode networking or to a host bridge only');
    return undefined;
  }
  let blocked = false;
  for (const sub of el.children) {
    switch (sub.name) {
      case 'virtualport':
        c.unsupportedAt(sub, `${label}: ${sub.attrs.type ?? ''} virtual port`.trim(), 'needs an Open vSwitch / 802.1Qbh port that vmsnap cannot set up');
        blocked = true;
        break;
      case 'vlan':
        c.unsupportedAt(sub, `${label}: VLAN tag`, 'vmsnap cannot tag the port with a VLAN');
        blocked = true;
        break;
      case 'filterref':
        c.unsupportedAt(sub, `${label}: traffic filter ${sub.attrs.filter ?? ''}`.trim(), 'nwfilter rules that vmsnap cannot apply: the guest would be less fenced in');
        blocked = true;
        break;
      case 'bandwidth':
        c.ignore(sub, `${label}: bandwidth limits`, WHY.hostTuning);
        break;
      default:
        break; // mac, source, model, target, alias, address, driver, link, mtu, rom, boot, backend, portForward: read below or host-side
    }
  }
  if (blocked) return undefined;
  let mode: 'user' | 'bridge' = 'user';
  let bridge: string | undefined;
  let network: string | undefined;
  if (type === 'bridge') {
    bridge = source?.attrs.bridge;
    if (bridge === undefined || bridge === '') throw invalid(`${el.path}: a bridge interface without <source bridge>`, { field: `${el.path}/source` });
    mode = 'bridge';
  } else if (type === 'network') {
    network = source?.attrs.network;
    if (network === undefined || network === '') throw invalid(`${el.path}: a network interface without <source network>`, { field: `${el.path}/source` });
  }
  const bootAttr = child(el, 'boot')?.attrs.order;
  const forwards = type === 'user' ? readPortForwards(el, label, c) : undefined;
  return {
    element: el.path,
    ...(mac === undefined ? {} : { mac }),
    mode,
    ...(bridge === undefined ? {} : { bridge }),
    ...(network === undefined ? {} : { network }),
    ...(model === undefined ? {} : { model }),
    libvirtType: type,
    ...(bootAttr === undefined ? {} : { bootOrder: positiveInt(bootAttr, `${el.path}/boot@order`) }),
    ...(forwards === undefined || forwards.length === 0 ? {} : { forwards }),
  };
}

/** `<portForward proto address><range start end to exclude/>`: host ports → guest ports (passt). */
function readPortForwards(el: XmlElement, label: string, c: Collector): LibvirtForward[] {
  const out: LibvirtForward[] = [];
  for (const pf of childrenNamed(el, 'portForward')) {
    const proto = pf.attrs.proto;
    if (proto !== 'tcp' && proto !== 'udp') {
      c.unsupportedAt(pf, `${label}: port forward of protocol '${proto ?? ''}'`, 'vmsnap forwards tcp and udp only');
      continue;
    }
    for (const r of childrenNamed(pf, 'range')) {
      if (r.attrs.exclude === 'yes' || pf.attrs.dev !== undefined) {
        c.unsupportedAt(r, `${label}: port forward exclusion or device binding`, 'vmsnap forwards whole ports only');
        continue;
      }
      const start = positiveInt(r.attrs.start ?? '', `${r.path}@start`);
      const end = r.attrs.end === undefined ? start : positiveInt(r.attrs.end, `${r.path}@end`);
      const to = r.attrs.to === undefined ? start : positiveInt(r.attrs.to, `${r.path}@to`);
      if (end < start || end - start >= 64) {
        c.unsupportedAt(r, `${label}: port range ${start}-${end}`, 'vmsnap forwards single ports (up to 64 from one range)');
        continue;
      }
      for (let p = start; p <= end; p++) {
        out.push({ proto, ...(pf.attrs.address === undefined ? {} : { address: pf.attrs.address }), hostPort: p, guestPort: to + (p - start) });
      }
    }
  }
  return out;
}

function readGraphics(el: XmlElement, current: LibvirtDomain['graphics'], c: Collector): LibvirtDomain['graphics'] {
  const type = el.attrs.type ?? '';
  if (el.attrs.passwd !== undefined) {
    c.unsupportedAt(el, `${type} console password`, "vmsnap's display does not carry the domain's console password over");
  }
  if (type === 'vnc' || type === 'spice') {
    if (current !== 'none') {
      c.ignore(el, `second display (${type})`, "vmsnap gives a VM one display");
      return current;
    }
    return type;
  }
  c.ignore(el, `${type} display`, "a host-side display backend; vmsnap's display is VNC");
  return current;
}

function readOtherDevice(el: XmlElement, c: Collector): void {
  const a = el.attrs;
  switch (el.name) {
    case 'emulator':
      c.ignore(el, `emulator ${el.text}`, WHY.emulator);
      return;
    case 'controller':
      c.ignore(el, `${a.type ?? ''} controller${a.model ? ` (${a.model})` : ''}`, WHY.controller);
      return;
    case 'input':
      if (a.type === 'mouse' || a.type === 'keyboard' || a.type === 'tablet') c.ignore(el, `${a.bus ?? ''} ${a.type}`.trim(), WHY.input);
      else c.unsupportedAt(el, `${a.type ?? ''} input passthrough`.trim(), 'a host input device given to the guest');
      return;
    case 'video':
      c.ignore(el, `video ${child(el, 'model')?.attrs.type ?? ''}`.trim(), WHY.video);
      return;
    case 'audio':
      c.ignore(el, `audio backend ${a.type ?? ''}`.trim(), WHY.audioBackend);
      return;
    case 'serial':
    case 'console':
      c.ignore(el, `${el.name} (${a.type ?? ''}${child(el, 'target')?.attrs.type ? `, ${child(el, 'target')?.attrs.type ?? ''}` : ''})`, WHY.serial);
      return;
    case 'channel': {
      const target = child(el, 'target');
      const name = target?.attrs.name;
      if (target?.attrs.type === 'virtio' && name === 'org.qemu.guest_agent.0') c.ignore(el, 'QEMU guest agent channel', WHY.guestAgent);
      else if (a.type === 'spicevmc' || name === 'com.redhat.spice.0') c.ignore(el, 'SPICE agent channel', WHY.spice);
      else c.unsupportedAt(el, `channel ${name ?? target?.attrs.type ?? a.type ?? ''}`.trim(), 'a guest channel vmsnap does not provide');
      return;
    }
    case 'redirdev':
      if (a.type === 'spicevmc') c.ignore(el, 'SPICE USB redirection', WHY.spice);
      else c.unsupportedAt(el, `USB redirection over ${a.type ?? '?'}`, 'vmsnap cannot redirect USB devices');
      return;
    case 'redirfilter':
      c.ignore(el, 'USB redirection filter', WHY.spice);
      return;
    case 'memballoon':
      c.ignore(el, `memory balloon (${a.model ?? ''})`, WHY.memballoon);
      return;
    case 'rng':
      c.ignore(el, `random number generator (${child(el, 'backend')?.text || a.model || ''})`, WHY.rng);
      return;
    case 'watchdog':
      if (a.model === 'itco') c.ignore(el, 'iTCO watchdog', WHY.itco);
      else c.unsupportedAt(el, `watchdog ${a.model ?? ''} (action ${a.action ?? 'reset'})`, 'vmsnap gives the guest no watchdog device: a hung guest would not be reset');
      return;
    case 'hostdev': {
      const src = child(el, 'source');
      const vendor = src === undefined ? undefined : child(src, 'vendor')?.attrs.id;
      const product = src === undefined ? undefined : child(src, 'product')?.attrs.id;
      const addr = src === undefined ? undefined : child(src, 'address')?.attrs;
      const id = vendor !== undefined ? `${vendor.replace(/^0x/, '')}:${(product ?? '').replace(/^0x/, '')}` : addr !== undefined ? Object.values(addr).join(':') : '';
      c.unsupportedAt(el, `${(a.type ?? 'host').toUpperCase()} host device ${id}`.trim(), 'a host device passed through to the guest; vmsnap passes no host devices');
      return;
    }
    case 'filesystem': {
      const src = child(el, 'source');
      c.unsupportedAt(el, `shared folder ${src?.attrs.dir ?? src?.attrs.file ?? src?.attrs.name ?? ''} as '${child(el, 'target')?.attrs.dir ?? ''}'`, 'vmsnap has no host folder shares, and a share lives outside the snapshots');
      return;
    }
    case 'tpm':
      c.unsupportedAt(el, `TPM ${a.model ?? ''} (${child(el, 'backend')?.attrs.type ?? '?'} backend)`, 'vmsnap has no TPM: a guest that seals keys in it (BitLocker, LUKS with TPM) would not unlock');
      return;
    case 'sound':
      c.unsupportedAt(el, `sound card ${a.model ?? ''}`.trim(), 'vmsnap gives guests no sound device');
      return;
    case 'parallel':
      c.unsupportedAt(el, 'parallel port', 'vmsnap gives guests no parallel port');
      return;
    case 'smartcard':
      c.unsupportedAt(el, 'smartcard', 'vmsnap cannot pass smartcards');
      return;
    case 'panic':
      c.unsupportedAt(el, `panic notifier ${a.model ?? ''}`.trim(), 'vmsnap has no guest panic device');
      return;
    case 'lease':
      c.unsupportedAt(el, 'lock manager lease', 'vmsnap takes its own locks; a libvirt lease would not be honoured');
      return;
    case 'hub':
    case 'shmem':
    case 'memory':
    case 'iommu':
    case 'vsock':
    case 'crypto':
    case 'nvram':
    case 'pstore':
      c.unsupportedAt(el, `${el.name} device${a.model ? ` (${a.model})` : ''}`, 'a device vmsnap has no notion of');
      return;
    default:
      c.unsupportedAt(el, `<${el.name}> device`, 'a device vmsnap has no notion of');
  }
}

// ---------------------------------------------------------------------------
// Backing chains
// ---------------------------------------------------------------------------

export interface ChainLayer {
  /** Absolute path. */
  path: string;
  format: 'qcow2' | 'raw';
}

const QemuImgInfoSchema = z.looseObject({
  filename: z.string(),
  format: z.string(),
  'backing-filename': z.string().optional(),
  'full-backing-filename': z.string().optional(),
  'backing-filename-format': z.string().optional(),
  'format-specific': z.looseObject({ type: z.string().optional(), data: z.looseObject({ 'data-file': z.string().optional() }).optional() }).optional(),
});
type QemuImgInfo = z.infer<typeof QemuImgInfoSchema>;

function runQemuImg(args: string[]): Promise<{ ok: true; stdout: string } | { ok: false; stderr: string }> {
  return new Promise((done) => {
    execFile(process.env.VMSNAP_QEMU_IMG ?? 'qemu-img', args, { maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) done({ ok: false, stderr: (stderr || err.message).trim() });
      else done({ ok: true, stdout });
    });
  });
}

/** A backing name that is not a plain file: json:{…}, nbd://, http:, rbd:, iscsi:, … */
function isNonFileBacking(name: string): boolean {
  if (name.startsWith('json:')) return true;
  // A protocol prefix ("nbd:", "https://"); plain paths start with '/' or have no scheme.
  return !name.startsWith('/') && /^[a-z][a-z0-9+.-]*:/i.test(name);
}

function chainError(message: string, details: Record<string, unknown>, hint?: string): VmsnapError {
  return invalid(message, details, hint);
}

/** Checks one layer read by qemu-img; returns it and the next file (undefined at the base). */
function checkLayer(info: QemuImgInfo, path: string): { layer: ChainLayer; next: string | undefined } {
  const format = info.format;
  if (format !== 'qcow2' && format !== 'raw') {
    throw chainError(`${path} is a ${format} image; vmsnap adopts qcow2 and raw layers only`, { path, format }, 'qemu-img convert it to qcow2 first');
  }
  const layer: ChainLayer = { path, format };
  const dataFile = info['format-specific']?.data?.['data-file'];
  if (dataFile !== undefined) {
    throw chainError(`${path} keeps its data in an external file (${dataFile}); vmsnap cannot adopt such a qcow2`, { path, dataFile });
  }
  const backing = info['backing-filename'];
  if (backing === undefined) return { layer, next: undefined };
  if (isNonFileBacking(backing)) {
    throw chainError(`${path} has a backing '${backing}' that is not a local file (json: or network); vmsnap adopts local files only`, { path, backing }, 'qemu-img rebase or convert the image onto local files first');
  }
  return { layer, next: info['full-backing-filename'] ?? resolvePath(dirname(path), backing) };
}

/**
 * The whole backing chain of an image, top first, base last, with absolute paths:
 * each will be adopted as a read-only layer. Nothing is written (-U: the image may
 * even be open in a running VM).
 *
 * First it walks the chain one image at a time (`qemu-img info` opens an image
 * without its backing), so that a json: or network backing is refused before
 * anything connects to it, and a missing file or a loop is named precisely. Then
 * `qemu-img info --backing-chain -U` must open the same chain. Fails with
 * INVALID_ARGUMENT, naming the file, on a missing file, a json:/network backing, a
 * loop, a format other than qcow2/raw, an external data file; QEMU_FAILED when
 * qemu-img fails for another reason or disagrees with the walk.
 */
export async function resolveBackingChain(file: string, options: { maxDepth?: number } = {}): Promise<ChainLayer[]> {
  const maxDepth = options.maxDepth ?? 64;
  const top = resolvePath(file);
  if (!isRegularFile(top)) throw invalid(`${top} does not exist`, { path: top });

  const layers: ChainLayer[] = [];
  const seen = new Set<string>();
  let path: string | undefined = top;
  let namedBy: string | undefined;
  while (path !== undefined) {
    if (!isRegularFile(path)) {
      throw chainError(`the backing file ${path} of ${namedBy ?? top} does not exist`, { path: top, missing: path, namedBy }, 'restore the file, or qemu-img rebase the image that names it');
    }
    const real = realpathSync(path);
    if (seen.has(real)) {
      throw chainError(`the backing chain of ${top} loops: ${namedBy ?? top} names ${path}, which is already in the chain`, { path: top, loop: path }, 'a layer names one of its own descendants as backing');
    }
    seen.add(real);
    if (layers.length >= maxDepth) throw chainError(`the backing chain of ${top} is deeper than ${maxDepth} layers`, { path: top });
    const one = await runQemuImg(['info', '--output=json', '-U', path]);
    if (!one.ok) throw new VmsnapError('QEMU_FAILED', `qemu-img info ${path}: ${one.stderr}`, { details: { path } });
    const info = parseInfo(one.stdout, path);
    const { layer, next } = checkLayer(info, path);
    layers.push(layer);
    namedBy = path;
    path = next;
  }

  // qemu's own view of the whole chain must be the same.
  const all = await runQemuImg(['info', '--output=json', '--backing-chain', '-U', top]);
  if (!all.ok) throw new VmsnapError('QEMU_FAILED', `qemu-img info --backing-chain ${top}: ${all.stderr}`, { details: { path: top, stderr: all.stderr } });
  const parsed = z.array(QemuImgInfoSchema).safeParse(jsonOf(all.stdout));
  if (!parsed.success) throw new VmsnapError('QEMU_FAILED', `qemu-img info --backing-chain ${top}: unexpected output`, { details: { path: top } });
  const formats = parsed.data.map((i) => i.format);
  if (formats.length !== layers.length || formats.some((f, i) => f !== layers[i]?.format)) {
    throw new VmsnapError('QEMU_FAILED', `qemu-img info --backing-chain ${top} sees ${formats.length} layers (${formats.join(', ')}), not the ${layers.length} found image by image`, { details: { path: top } });
  }
  return layers;
}

function parseInfo(stdout: string, path: string): QemuImgInfo {
  const r = QemuImgInfoSchema.safeParse(jsonOf(stdout));
  if (!r.success) throw new VmsnapError('QEMU_FAILED', `qemu-img info ${path}: unexpected output`, { details: { path } });
  return r.data;
}

function jsonOf(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined; // the schema check that follows reports it
  }
}
