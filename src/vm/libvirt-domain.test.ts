import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { XMLParser } from 'fast-xml-parser';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmsnapError } from '../errors.js';
import { type LibvirtDomain, memoryBytes, parseLibvirtDomain, resolveBackingChain } from './libvirt-domain.js';

const FIXTURES = fileURLToPath(new URL('../../test/fixtures/libvirt/', import.meta.url));
/** Where make-fixtures.sh put the files the fixtures name (gone after it ran). */
const DATA = '/var/tmp/vmsnap-libvirt-fixtures';

function fixture(name: string): string {
  return readFileSync(join(FIXTURES, name), 'utf8');
}

/** The fixtures' files do not exist here: pretend they all do. */
function parse(name: string, exists: (p: string) => boolean = () => true): LibvirtDomain {
  return parseLibvirtDomain(fixture(name), { fileExists: exists });
}

function invalidArgument(fn: () => unknown): VmsnapError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(VmsnapError);
    const err = e as VmsnapError;
    expect(err.code).toBe('INVALID_ARGUMENT');
    return err;
  }
  throw new Error('expected an INVALID_ARGUMENT error');
}

const elementsOf = (list: { element: string }[]): string[] => list.map((i) => i.element);
const whyOf = (d: LibvirtDomain, element: string): string | undefined => d.ignored.find((i) => i.element === element)?.why;

/** A minimal domain around some devices, for hand-written cases. */
function domain(devices: string, extra = '', os = "<type arch='x86_64' machine='pc-q35-7.2'>hvm</type>"): string {
  return `<domain type='kvm'><name>t</name><memory unit='MiB'>512</memory><vcpu>1</vcpu><os>${os}</os>${extra}<devices>${devices}</devices></domain>`;
}

const ALL_FIXTURES = [
  'bios.xml',
  'uefi.xml',
  'uefi-running.xml',
  'uefi-explicit.xml',
  'kernel-boot.xml',
  'chain-bridge-cdrom.xml',
  'chain-bridge-cdrom-running.xml',
  'unsupported.xml',
  'kvm-tuned.xml',
  'kvm-tuned.input.xml',
];

describe('libvirt fixtures', () => {
  it('(a) BIOS, one qcow2 disk, NIC on the NAT network default', () => {
    const d = parse('bios.xml');
    expect(d).toMatchObject({
      name: 'vmsnap-fx-bios',
      uuid: '5f3c9a52-0a11-4c1e-9b1a-000000000001',
      domainType: 'kvm',
      running: false,
      memoryMiB: 1024,
      cpus: 2,
      maxCpus: 2,
      machine: 'q35',
      machineType: 'pc-q35-7.2',
      firmware: 'bios',
      bootDevices: ['hd'],
      graphics: 'vnc',
      disks: [{ element: 'devices/disk[0]', target: 'vda', bus: 'virtio', device: 'disk', sourceFile: `${DATA}/bios.qcow2`, format: 'qcow2', readonly: false }],
      nics: [{ element: 'devices/interface[0]', mac: '52:54:00:00:00:a1', mode: 'user', network: 'default', model: 'virtio', libvirtType: 'network' }],
      unsupported: [],
    });
    expect(d.loader).toBeUndefined();
    expect(d.nvram).toBeUndefined();
    expect(d.kernelBoot).toBeUndefined();
    expect(d.currentMemoryMiB).toBeUndefined();
    // virt-install's defaults that vmsnap provides itself
    expect(whyOf(d, 'devices/channel[0]')).toMatch(/guest-agent channel/);
    expect(whyOf(d, 'devices/memballoon[0]')).toMatch(/balloon/);
    expect(whyOf(d, 'devices/rng[0]')).toMatch(/RNG/);
    expect(whyOf(d, 'devices/video[0]')).toMatch(/display/);
    expect(whyOf(d, 'devices/serial[0]')).toMatch(/serial port/);
    expect(whyOf(d, 'devices/emulator[0]')).toMatch(/qemu-system-x86_64/);
    expect(whyOf(d, 'cpu')).toMatch(/CPU model/);
  });

  it('(b) UEFI by firmware auto-selection: the NVRAM is implicit, Secure Boot left to libvirt', () => {
    const d = parse('uefi.xml', (p) => !p.endsWith('_VARS.fd'));
    expect(d.firmware).toBe('uefi');
    expect(d.loader).toBeUndefined();
    expect(d.secureBoot).toBeUndefined();
    expect(d.nvram).toEqual({ path: '/var/lib/libvirt/qemu/nvram/vmsnap-fx-uefi_VARS.fd', implicit: true, exists: false });
    expect(d.nics).toEqual([]);
    expect(d.unsupported).toEqual([]);
    // another connection's NVRAM folder
    const s = parseLibvirtDomain(fixture('uefi.xml'), { fileExists: () => true, nvramDir: '/root/.config/libvirt/qemu/nvram' });
    expect(s.nvram?.path).toBe('/root/.config/libvirt/qemu/nvram/vmsnap-fx-uefi_VARS.fd');
  });

  it('(b) the same domain running: libvirt picked the Secure Boot firmware with MS keys', () => {
    const d = parse('uefi-running.xml');
    expect(d.running).toBe(true);
    expect(d.loader).toEqual({ path: '/usr/share/OVMF/OVMF_CODE_4M.ms.fd', readonly: true, type: 'pflash', secure: true });
    expect(d.nvram).toEqual({ path: '/var/lib/libvirt/qemu/nvram/vmsnap-fx-uefi_VARS.fd', template: '/usr/share/OVMF/OVMF_VARS_4M.ms.fd', implicit: false, exists: true });
    expect(d.secureBoot).toBe(true);
    expect(d.unsupported).toEqual([]);
    expect(whyOf(d, 'seclabel')).toMatch(/security labelling/);
    expect(whyOf(d, 'features/smm')).toBeDefined();
  });

  it('(b) UEFI with an explicit loader and NVRAM template; a user-mode NIC', () => {
    const d = parse('uefi-explicit.xml');
    expect(d).toMatchObject({
      memoryMiB: 768,
      cpus: 2,
      firmware: 'uefi',
      loader: { path: '/usr/share/OVMF/OVMF_CODE_4M.fd', readonly: true, type: 'pflash' },
      nvram: { path: '/var/lib/libvirt/qemu/nvram/vmsnap-fx-uefi-explicit_VARS.fd', template: '/usr/share/OVMF/OVMF_VARS_4M.fd', implicit: false },
      nics: [{ mac: '52:54:00:00:00:b2', mode: 'user', libvirtType: 'user', model: 'virtio' }],
      graphics: 'none',
      unsupported: [],
    });
    expect(d.secureBoot).toBeUndefined();
    expect(d.nics[0]?.network).toBeUndefined();
  });

  it('(c) direct kernel boot on an i440fx machine, a raw disk, an e1000 NIC', () => {
    const d = parse('kernel-boot.xml');
    expect(d).toMatchObject({
      machine: 'pc',
      machineType: 'pc-i440fx-7.2',
      firmware: 'bios',
      memoryMiB: 256,
      cpus: 1,
      kernelBoot: { kernel: `${DATA}/vmlinuz`, initrd: `${DATA}/initrd.img`, cmdline: 'console=ttyS0 root=/dev/vda rw quiet' },
      disks: [{ target: 'vda', format: 'raw', sourceFile: `${DATA}/root.img` }],
      nics: [{ mac: '52:54:00:00:00:c1', mode: 'user', network: 'default', model: 'e1000' }],
      graphics: 'none',
      unsupported: [],
    });
  });

  it('(d) a qcow2 with backing chain, a raw disk, a CD-ROM, a bridge NIC, per-device boot order', () => {
    for (const name of ['chain-bridge-cdrom.xml', 'chain-bridge-cdrom-running.xml']) {
      const d = parse(name);
      expect(d.disks).toEqual([
        { element: 'devices/disk[0]', target: 'vda', bus: 'virtio', device: 'disk', sourceFile: `${DATA}/top.qcow2`, format: 'qcow2', readonly: false, bootOrder: 2 },
        { element: 'devices/disk[1]', target: 'sda', bus: 'sata', device: 'disk', sourceFile: `${DATA}/data.raw`, format: 'raw', readonly: false },
        { element: 'devices/disk[2]', target: 'sdb', bus: 'sata', device: 'cdrom', sourceFile: `${DATA}/install.iso`, format: 'raw', readonly: true, bootOrder: 1 },
      ]);
      expect(d.nics).toEqual([{ element: 'devices/interface[0]', mac: '52:54:00:00:00:d1', mode: 'bridge', bridge: 'br0', model: 'virtio', libvirtType: 'bridge' }]);
      expect(d.bootDevices).toEqual([]);
      expect(d.unsupported).toEqual([]);
      expect(d.running).toBe(name.includes('running'));
    }
    // The live XML lists the chain libvirt found; the importer reads it from the images instead.
    const live = parse('chain-bridge-cdrom-running.xml');
    expect(whyOf(live, 'devices/disk[0]/backingStore')).toMatch(/qemu-img/);
  });

  it('(e) virt-install defaults plus devices vmsnap cannot map', () => {
    const d = parse('unsupported.xml');
    expect(d.unsupported.map((u) => [u.element, u.what])).toEqual([
      ['devices/disk[1]', 'disk vdb on storage pool volume vmsnap-fx-pool/data.qcow2'],
      ['devices/disk[2]', 'SCSI LUN passthrough /dev/disk/by-id/scsi-SVMSNAP_FIXTURE_LUN'],
      ['devices/filesystem[0]', `shared folder ${DATA}/share as 'hostshare'`],
      ['devices/interface[1]', 'NIC 52:54:00:00:00:e2 (macvtap on eth0, mode bridge)'],
      ['devices/tpm[0]', 'TPM tpm-crb (passthrough backend)'],
      ['devices/sound[0]', 'sound card ich9'],
      ['devices/hostdev[0]', 'USB host device 046d:c52b'],
      ['devices/watchdog[0]', 'watchdog i6300esb (action reset)'],
    ]);
    for (const u of d.unsupported) expect(u.why.length).toBeGreaterThan(10);
    expect(d.unsupported[0]?.why).toMatch(/virsh vol-path/);
    // what still maps
    expect(d.disks.map((x) => x.target)).toEqual(['vda']);
    expect(d.nics.map((x) => x.mac)).toEqual(['52:54:00:00:00:e1']);
    expect(d.graphics).toBe('spice');
    // virt-install's defaults, dropped silently with a reason
    const ignored = new Map(d.ignored.map((i) => [i.element, i.what]));
    expect(ignored.get('devices/channel[0]')).toBe('QEMU guest agent channel');
    expect(ignored.get('devices/channel[1]')).toBe('SPICE agent channel');
    expect(ignored.get('devices/redirdev[0]')).toBe('SPICE USB redirection');
    expect(ignored.get('devices/redirdev[1]')).toBe('SPICE USB redirection');
    expect(ignored.get('devices/input[0]')).toBe('usb tablet');
    expect(ignored.get('devices/audio[0]')).toBe('audio backend spice');
    expect(ignored.get('devices/controller[20]')).toBe('scsi controller (lsilogic)');
    expect(ignored.get('devices/rng[0]')).toMatch(/random number generator/);
    expect(ignored.get('devices/memballoon[0]')).toMatch(/balloon/);
    expect(ignored.get('features/vmport')).toBe('feature vmport=off');
    expect(ignored.get('metadata')).toBe('<metadata>');
    expect(ignored.get('pm')).toMatch(/power management/);
  });

  it('(f) kvm, host-passthrough, memory in GiB, smaller currentMemory, vcpu current < max, Secure Boot asked for', () => {
    const dumped = parse('kvm-tuned.xml');
    const input = parse('kvm-tuned.input.xml');
    for (const d of [dumped, input]) {
      expect(d).toMatchObject({
        domainType: 'kvm',
        memoryMiB: 4096,
        memoryKiB: 4 * 1024 * 1024,
        currentMemoryMiB: 3072,
        cpus: 2,
        maxCpus: 4,
        cpuMode: 'host-passthrough',
        firmware: 'uefi',
        secureBoot: true,
        nvram: { path: '/var/lib/libvirt/qemu/nvram/vmsnap-fx-kvm-tuned_VARS.fd', implicit: true },
        graphics: 'vnc',
        unsupported: [],
      });
      expect(whyOf(d, 'currentMemory')).toMatch(/all of <memory>/);
      expect(whyOf(d, 'vcpu')).toMatch(/no vCPU hotplug/);
    }
    const { ignored: a, ...mappedDumped } = dumped;
    const { ignored: b, ...mappedInput } = input;
    expect(mappedInput).toEqual(mappedDumped);
    expect(a.length).toBeGreaterThan(b.length); // libvirt added controllers, on_* and audio
  });

  it.each(ALL_FIXTURES)('%s: every element under <domain> and <devices> is mapped, ignored or unsupported', (name) => {
    const d = parse(name);
    const tree: unknown = new XMLParser({ preserveOrder: true, ignoreAttributes: true }).parse(fixture(name));
    const rootNodes = (tree as Record<string, unknown>[]).find((n) => 'domain' in n)?.domain as Record<string, unknown>[];
    const names = (nodes: Record<string, unknown>[]): string[] => nodes.flatMap((n) => Object.keys(n).filter((k) => k !== '#text' && k !== ':@'));
    const accounted = new Set([...elementsOf(d.ignored), ...elementsOf(d.unsupported), ...elementsOf(d.disks), ...elementsOf(d.nics)]);
    const mappedTop = new Set(['name', 'uuid', 'memory', 'currentMemory', 'vcpu', 'os', 'devices']);
    for (const n of names(rootNodes)) {
      if (mappedTop.has(n)) continue;
      if (n === 'features') {
        // each feature flag is accounted for on its own
        const features = rootNodes.find((x) => 'features' in x)?.features as Record<string, unknown>[];
        for (const f of names(features)) expect(accounted, `features/${f} in ${name}`).toContain(`features/${f}`);
      } else {
        expect(accounted, `<${n}> in ${name}`).toContain(n);
      }
    }
    const devNodes = rootNodes.find((n) => 'devices' in n)?.devices as Record<string, unknown>[];
    const seen = new Map<string, number>();
    for (const n of names(devNodes)) {
      const i = seen.get(n) ?? 0;
      seen.set(n, i + 1);
      if (n === 'graphics') continue; // read into `graphics`
      expect(accounted, `devices/${n}[${i}] in ${name}`).toContain(`devices/${n}[${i}]`);
    }
    for (const i of [...d.ignored, ...d.unsupported]) {
      expect(i.what, i.element).not.toBe('');
      expect(i.why, i.element).not.toBe('');
    }
  });
});

describe('hand-written domains', () => {
  const parseXml = (xml: string): LibvirtDomain => parseLibvirtDomain(xml, { fileExists: () => true });

  it('units: memory in GiB / MB, defaults when vcpu or machine are missing', () => {
    const d = parseXml(`<domain type='qemu'><name>x</name><memory unit='GiB'>2</memory><os><type>hvm</type></os></domain>`);
    expect(d).toMatchObject({ memoryMiB: 2048, cpus: 1, maxCpus: 1, machine: 'pc', machineType: 'pc', arch: 'x86_64', disks: [], nics: [], graphics: 'none' });
    // 1000 MB = 10^9 bytes = 976562.5 KiB: libvirt rounds up to 976563 KiB
    const mb = parseXml(`<domain type='qemu'><name>x</name><memory unit='MB'>1000</memory><os><type>hvm</type></os></domain>`);
    expect(mb.memoryKiB).toBe(976563);
    expect(mb.memoryMiB).toBe(954);
  });

  it('memoryBytes follows libvirt: documented units, case-insensitive, KiB by default', () => {
    const cases: [string | undefined, bigint][] = [
      [undefined, 1024n],
      ['', 1024n],
      ['b', 1n],
      ['bytes', 1n],
      ['KB', 1000n],
      ['k', 1024n],
      ['KiB', 1024n],
      ['MB', 1000n ** 2n],
      ['M', 1024n ** 2n],
      ['MiB', 1024n ** 2n],
      ['GB', 1000n ** 3n],
      ['G', 1024n ** 3n],
      ['GiB', 1024n ** 3n],
      ['TB', 1000n ** 4n],
      ['T', 1024n ** 4n],
      ['TiB', 1024n ** 4n],
      ['gib', 1024n ** 3n],
      ['Gb', 1000n ** 3n],
    ];
    for (const [unit, bytes] of cases) expect(memoryBytes('1', unit, 'memory'), String(unit)).toBe(bytes);
  });

  it('maps user-mode port forwards (passt)', () => {
    const d = parseXml(
      domain(`<interface type='user'><mac address='52:54:00:AA:BB:CC'/><backend type='passt'/>
        <portForward proto='tcp' address='127.0.0.1'><range start='2222' to='22'/></portForward>
        <portForward proto='udp'><range start='5000' end='5001'/></portForward></interface>`),
    );
    expect(d.nics).toEqual([
      {
        element: 'devices/interface[0]',
        mac: '52:54:00:aa:bb:cc',
        mode: 'user',
        libvirtType: 'user',
        forwards: [
          { proto: 'tcp', address: '127.0.0.1', hostPort: 2222, guestPort: 22 },
          { proto: 'udp', hostPort: 5000, guestPort: 5000 },
          { proto: 'udp', hostPort: 5001, guestPort: 5001 },
        ],
      },
    ]);
  });

  it('reports what the guest would lose', () => {
    const d = parseXml(
      domain(
        `<disk type='file' device='disk'><driver type='vmdk'/><source file='/x.vmdk'/><target dev='vda'/></disk>
         <disk type='file' device='disk'><driver type='qcow2'/><source file='/s.qcow2'/><target dev='vdb'/><shareable/></disk>
         <disk type='file' device='floppy'><source file='/f.img'/><target dev='fda'/></disk>
         <disk type='network' device='disk'><source protocol='rbd' name='pool/img'/><target dev='vdc'/></disk>
         <interface type='bridge'><source bridge='ovsbr'/><virtualport type='openvswitch'/></interface>
         <interface type='bridge'><source bridge='br0'/><vlan><tag id='42'/></vlan></interface>
         <graphics type='vnc' passwd='secret'/>
         <panic model='isa'/>
         <vsock model='virtio'/>`,
        `<clock offset='localtime'/><sysinfo type='smbios'/><qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><qemu:arg value='-foo'/></qemu:commandline>`,
      ),
    );
    expect(elementsOf(d.unsupported)).toEqual([
      'clock',
      'sysinfo',
      'qemu:commandline',
      'devices/disk[0]',
      'devices/disk[1]',
      'devices/disk[2]',
      'devices/disk[3]',
      'devices/interface[0]/virtualport',
      'devices/interface[1]/vlan',
      'devices/graphics[0]',
      'devices/panic[0]',
      'devices/vsock[0]',
    ]);
    expect(d.disks).toEqual([]);
    expect(d.nics).toEqual([]);
    expect(d.graphics).toBe('vnc');
  });

  it('ignores an empty CD-ROM drive and an iTCO watchdog; reports other architectures and machines', () => {
    const d = parseXml(domain(`<disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk><watchdog model='itco' action='reset'/>`));
    expect(d.disks).toEqual([]);
    expect(whyOf(d, 'devices/disk[0]')).toMatch(/empty CD-ROM/);
    expect(whyOf(d, 'devices/watchdog[0]')).toMatch(/ICH9/);
    expect(d.unsupported).toEqual([]);
    const arm = parseXml(domain('', '', "<type arch='aarch64' machine='virt'>hvm</type>"));
    expect(arm.unsupported.map((u) => u.what)).toEqual(['architecture aarch64', 'machine type virt']);
  });

  it('Secure Boot asked for on a path-less loader; Secure Boot refused by firmware feature', () => {
    const on = parseXml(domain('', '<features><acpi/><smm/></features>', "<type machine='q35'>hvm</type><loader secure='yes'/>").replace('<os>', "<os firmware='efi'>"));
    expect(on).toMatchObject({ firmware: 'uefi', secureBoot: true });
    expect(on.loader).toBeUndefined();
    const off = parseXml(domain('', '', "<type machine='q35'>hvm</type><firmware><feature enabled='no' name='secure-boot'/></firmware>").replace('<os>', "<os firmware='efi'>"));
    expect(off).toMatchObject({ firmware: 'uefi', secureBoot: false });
  });

  it('a disk without a driver type is raw, as in libvirt', () => {
    const d = parseXml(domain(`<disk type='file' device='disk'><source file='/img'/><target dev='hda' bus='ide'/></disk>`));
    expect(d.disks[0]).toMatchObject({ format: 'raw', bus: 'ide', target: 'hda' });
    const sd = parseXml(domain(`<disk type='file' device='disk'><source file='/img'/><target dev='sdb'/></disk>`));
    expect(sd.disks[0]?.bus).toBe('scsi'); // libvirt's default for sd*
  });
});

describe('bad input', () => {
  it('not XML', () => {
    expect(invalidArgument(() => parseLibvirtDomain('hello')).message).toMatch(/not well-formed XML \(line 1/);
    expect(invalidArgument(() => parseLibvirtDomain('{"domain": 1}')).message).toMatch(/not well-formed XML/);
    expect(invalidArgument(() => parseLibvirtDomain("<domain type='kvm'><name>x</name>")).message).toMatch(/not well-formed XML/);
    expect(invalidArgument(() => parseLibvirtDomain('  ')).message).toMatch(/empty/);
  });

  it('XML that is not a <domain>', () => {
    const err = invalidArgument(() => parseLibvirtDomain(readFileSync('/usr/share/libvirt/networks/default.xml', 'utf8')));
    expect(err.message).toBe('the XML is a <network>, not a libvirt <domain>');
    expect(err.hint).toMatch(/virsh dumpxml/);
  });

  it('a domain without memory, name, os or a QEMU type', () => {
    expect(invalidArgument(() => parseLibvirtDomain(`<domain type='kvm'><name>x</name><os><type>hvm</type></os></domain>`)).message).toBe('the domain has no <memory>');
    expect(invalidArgument(() => parseLibvirtDomain(`<domain type='kvm'><memory>1024</memory><os><type>hvm</type></os></domain>`)).message).toBe('the domain has no <name>');
    expect(invalidArgument(() => parseLibvirtDomain(`<domain type='kvm'><name>x</name><memory>1024</memory></domain>`)).message).toBe('the domain has no <os>');
    expect(invalidArgument(() => parseLibvirtDomain(`<domain type='xen'><name>x</name><memory>1024</memory><os><type>hvm</type></os></domain>`)).message).toMatch(/not a QEMU\/KVM domain/);
  });

  it('unknown or malformed units and numbers', () => {
    const mem = (m: string): string => `<domain type='kvm'><name>x</name>${m}<os><type>hvm</type></os></domain>`;
    const err = invalidArgument(() => parseLibvirtDomain(mem(`<memory unit='XB'>1</memory>`)));
    expect(err.message).toBe("memory: unknown unit 'XB'");
    expect(err.hint).toMatch(/KiB/);
    expect(invalidArgument(() => parseLibvirtDomain(mem(`<memory unit='pages'>1</memory>`))).message).toMatch(/unknown unit 'pages'/);
    expect(invalidArgument(() => parseLibvirtDomain(mem(`<memory>1.5</memory>`))).message).toMatch(/not a whole number/);
    expect(invalidArgument(() => parseLibvirtDomain(mem(`<memory>1024</memory><currentMemory unit='zz'>1</currentMemory>`))).message).toMatch(/currentMemory: unknown unit 'zz'/);
    expect(invalidArgument(() => parseLibvirtDomain(mem(`<memory>1024</memory><vcpu current='4'>2</vcpu>`))).message).toMatch(/more than the maximum/);
    expect(invalidArgument(() => parseLibvirtDomain(mem(`<memory>1024</memory><vcpu>two</vcpu>`))).message).toMatch(/vcpu: 'two'/);
  });

  it('a disk file that does not exist (the importer must refuse)', () => {
    // The fixtures' files are gone (make-fixtures.sh removes them): the default check sees that.
    const err = invalidArgument(() => parseLibvirtDomain(fixture('bios.xml')));
    expect(err.message).toBe(`disk vda: ${DATA}/bios.qcow2 does not exist`);
    expect(err.details).toMatchObject({ target: 'vda', path: `${DATA}/bios.qcow2`, element: 'devices/disk[0]' });
    const cd = invalidArgument(() => parse('chain-bridge-cdrom.xml', (p) => !p.endsWith('.iso')));
    expect(cd.message).toBe(`cdrom sdb: ${DATA}/install.iso does not exist`);
    const k = invalidArgument(() => parse('kernel-boot.xml', (p) => !p.endsWith('vmlinuz')));
    expect(k.message).toBe(`os/kernel: ${DATA}/vmlinuz does not exist`);
    // unsupported disks are reported, not checked
    expect(() => parse('unsupported.xml', (p) => p.endsWith('unsupported.qcow2'))).not.toThrow();
  });

  it('relative paths and half-described devices', () => {
    const p = (x: string): unknown => parseLibvirtDomain(domain(x), { fileExists: () => true });
    expect(invalidArgument(() => p(`<disk type='file' device='disk'><source file='disk.qcow2'/><target dev='vda'/></disk>`)).message).toMatch(/not an absolute path/);
    expect(invalidArgument(() => p(`<disk type='file' device='disk'><source file='/a'/></disk>`)).message).toMatch(/no <target dev>/);
    expect(invalidArgument(() => p(`<interface type='bridge'><mac address='52:54:00:00:00:01'/></interface>`)).message).toMatch(/without <source bridge>/);
    expect(invalidArgument(() => p(`<interface type='user'><mac address='zz:54:00:00:00:01'/></interface>`)).message).toMatch(/nics\.0\.mac/);
  });
});

describe('resolveBackingChain (qemu-img on temp files)', () => {
  let dir: string;
  const img = (...args: string[]): void => {
    execFileSync('qemu-img', args, { cwd: dir, stdio: 'pipe' });
  };
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'vmsnap-chain-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  async function chainError(file: string): Promise<VmsnapError> {
    try {
      await resolveBackingChain(file);
    } catch (e) {
      expect(e).toBeInstanceOf(VmsnapError);
      return e as VmsnapError;
    }
    throw new Error('expected an error');
  }

  it('base <- mid <- top, with relative backing names: absolute paths, top first', async () => {
    img('create', '-q', '-f', 'raw', 'base.raw', '16M');
    img('create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', 'mid.qcow2');
    img('create', '-q', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', 'top.qcow2');
    expect(await resolveBackingChain(join(dir, 'top.qcow2'))).toEqual([
      { path: join(dir, 'top.qcow2'), format: 'qcow2' },
      { path: join(dir, 'mid.qcow2'), format: 'qcow2' },
      { path: join(dir, 'base.raw'), format: 'raw' },
    ]);
    expect(await resolveBackingChain(join(dir, 'base.raw'))).toEqual([{ path: join(dir, 'base.raw'), format: 'raw' }]);
  });

  it('a missing backing file: names it and the image that names it', async () => {
    img('create', '-q', '-f', 'qcow2', 'b1.qcow2', '16M');
    img('create', '-q', '-f', 'qcow2', '-b', 'b1.qcow2', '-F', 'qcow2', 'b2.qcow2');
    img('create', '-q', '-f', 'qcow2', '-b', 'b2.qcow2', '-F', 'qcow2', 'b3.qcow2');
    rmSync(join(dir, 'b1.qcow2'));
    const err = await chainError(join(dir, 'b3.qcow2'));
    expect(err.code).toBe('INVALID_ARGUMENT');
    expect(err.message).toBe(`the backing file ${join(dir, 'b1.qcow2')} of ${join(dir, 'b2.qcow2')} does not exist`);
    const top = await chainError(join(dir, 'nope.qcow2'));
    expect(top.message).toBe(`${join(dir, 'nope.qcow2')} does not exist`);
  });

  it('a cycle', async () => {
    img('create', '-q', '-f', 'qcow2', 'l1.qcow2', '16M');
    img('create', '-q', '-f', 'qcow2', '-b', 'l1.qcow2', '-F', 'qcow2', 'l2.qcow2');
    img('rebase', '-u', '-b', 'l2.qcow2', '-F', 'qcow2', 'l1.qcow2');
    const err = await chainError(join(dir, 'l2.qcow2'));
    expect(err.code).toBe('INVALID_ARGUMENT');
    expect(err.message).toMatch(/loops/);
  });

  it('a network backing and a json: backing', async () => {
    img('create', '-q', '-f', 'qcow2', 'n.qcow2', '16M');
    img('rebase', '-u', '-b', 'nbd://127.0.0.1:1/export', '-F', 'raw', 'n.qcow2');
    const nbd = await chainError(join(dir, 'n.qcow2'));
    expect(nbd.code).toBe('INVALID_ARGUMENT');
    expect(nbd.message).toMatch(/backing 'nbd:\/\/127\.0\.0\.1:1\/export' that is not a local file/);
    // A json: backing that qemu-img can open (a local file inside): refused all the same.
    img('create', '-q', '-f', 'raw', 'j-base.raw', '16M');
    img('create', '-q', '-f', 'qcow2', 'j.qcow2', '16M');
    const json = `json:{"driver":"raw","file":{"driver":"file","filename":"${join(dir, 'j-base.raw')}"}}`;
    img('rebase', '-u', '-b', json, '-F', 'raw', 'j.qcow2');
    const err = await chainError(join(dir, 'j.qcow2'));
    expect(err.code).toBe('INVALID_ARGUMENT');
    expect(err.message).toMatch(/json:/);
  });

  it('a format other than qcow2/raw', async () => {
    img('create', '-q', '-f', 'vmdk', 'v.vmdk', '16M');
    img('create', '-q', '-f', 'qcow2', '-b', 'v.vmdk', '-F', 'vmdk', 'v-top.qcow2');
    const err = await chainError(join(dir, 'v-top.qcow2'));
    expect(err.message).toBe(`${join(dir, 'v.vmdk')} is a vmdk image; vmsnap adopts qcow2 and raw layers only`);
  });

  it('reads a chain without writing to it', async () => {
    img('create', '-q', '-f', 'qcow2', 'ro-base.qcow2', '16M');
    img('create', '-q', '-f', 'qcow2', '-b', 'ro-base.qcow2', '-F', 'qcow2', 'ro-top.qcow2');
    const before = [readFileSync(join(dir, 'ro-base.qcow2')), readFileSync(join(dir, 'ro-top.qcow2'))];
    await resolveBackingChain(join(dir, 'ro-top.qcow2'));
    expect(readFileSync(join(dir, 'ro-base.qcow2')).equals(before[0]!)).toBe(true);
    expect(readFileSync(join(dir, 'ro-top.qcow2')).equals(before[1]!)).toBe(true);
  });
});
