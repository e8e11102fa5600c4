import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { VmsnapError } from '../errors.js';
import { type ChainLayer, type LibvirtDomain, parseLibvirtDomain } from './libvirt-domain.js';
import { type AdoptedImage, type LibvirtMapping, mapLibvirtDomain, type MappingHost, unsupportedError } from './libvirt-mapping.js';

const FIXTURES = fileURLToPath(new URL('../../test/fixtures/libvirt/', import.meta.url));
const DATA = '/var/tmp/vmsnap-libvirt-fixtures';
const GiB = 1024 ** 3;

/** A fixture, parsed as if its files existed (they were on the machine that made them). */
function parse(name: string, fileExists: (path: string) => boolean = () => true): LibvirtDomain {
  return parseLibvirtDomain(readFileSync(join(FIXTURES, name), 'utf8'), { fileExists });
}

const VARS_4M = 540_672;
const VARS_2M = 131_072;
/** A host with both OVMF builds, no bridges, and every file the size of the 4 MiB build's variables. */
const HOST: MappingHost = {
  bridgeProblem: (b) => `no network interface '${b}' on this host`,
  fileSize: () => VARS_4M,
  ovmfVarsSizes: { '4m': VARS_4M, '2m': VARS_2M },
};

/** Every disk a one-layer image of 1 GiB, unless given its own chain. */
function map(d: LibvirtDomain, chains: Record<string, ChainLayer[]> = {}, host: Partial<MappingHost> = {}): LibvirtMapping {
  const images = new Map<string, AdoptedImage>(
    d.disks.map((disk) => [disk.sourceFile, { chain: chains[disk.sourceFile] ?? [{ path: disk.sourceFile, format: disk.format }], virtualSize: GiB }]),
  );
  let n = 0;
  return mapLibvirtDomain({ domain: d, images, newMac: () => `52:54:00:ff:ff:${String(++n).padStart(2, '0')}`, host: { ...HOST, ...host } });
}

const whatOf = (m: LibvirtMapping): string[] => m.unsupported.map((u) => u.what);

describe('mapLibvirtDomain', () => {
  it('a BIOS domain: memory, vCPUs, machine, its disk with the whole backing chain, the NAT NIC as user-mode with its MAC, the VNC screen', () => {
    const d = parse('bios.xml');
    const chain: ChainLayer[] = [
      { path: `${DATA}/bios.qcow2`, format: 'qcow2' },
      { path: `${DATA}/bios-base.raw`, format: 'raw' },
    ];
    const m = map(d, { [`${DATA}/bios.qcow2`]: chain });
    expect(m.config).toEqual({
      memoryMiB: 1024,
      cpus: 2,
      machine: 'q35',
      boot: {},
      disks: [{ slot: 'disk0', sizeBytes: GiB }],
      nics: [{ id: 'net0', mac: '52:54:00:00:00:a1' }],
      display: 'vnc',
    });
    expect(m.disks).toEqual([{ slot: 'disk0', target: 'vda', source: `${DATA}/bios.qcow2`, chain }]);
    expect(m.notes).toEqual([expect.stringContaining("on libvirt network 'default' becomes user-mode networking")]);
    expect(m.unsupported).toEqual([]);
    expect(m.uefi).toBeUndefined();
  });

  it('a kernel boot: kernel, initrd and command line; an i440fx machine; an e1000 NIC becomes virtio-net (noted)', () => {
    const m = map(parse('kernel-boot.xml'));
    expect(m.config.boot).toEqual({ kernel: `${DATA}/vmlinuz`, initrd: `${DATA}/initrd.img`, append: 'console=ttyS0 root=/dev/vda rw quiet' });
    expect(m.config.machine).toBe('pc');
    expect(m.config.memoryMiB).toBe(256);
    expect(m.config.nics).toEqual([{ id: 'net0', mac: '52:54:00:00:00:c1' }]);
    expect(m.notes).toEqual(expect.arrayContaining([expect.stringContaining('(e1000) becomes a virtio-net NIC')]));
    expect(m.unsupported).toEqual([]);
  });

  it('disks in boot order (disk0 boots); a SATA disk becomes virtio (noted); a CD-ROM, and a bridge NIC whose bridge this host lacks, are listed', () => {
    const m = map(parse('chain-bridge-cdrom.xml'));
    expect(m.disks.map((x) => [x.slot, x.target])).toEqual([
      ['disk0', 'vda'],
      ['disk1', 'sda'],
    ]);
    expect(m.notes).toEqual(expect.arrayContaining([expect.stringContaining('disk sda (sata) becomes virtio disk disk1')]));
    expect(whatOf(m)).toEqual(
      expect.arrayContaining([`CD-ROM sdb with ${DATA}/install.iso`, 'NIC 52:54:00:00:00:d1 on host bridge br0']),
    );
    expect(m.unsupported.find((u) => u.what.includes('bridge'))?.why).toBe("no network interface 'br0' on this host");
    // A dropped bridge NIC is not turned into something else.
    expect(m.config.nics).toEqual([]);
  });

  it('a bridge NIC on a bridge this host has: the same bridge, the same MAC', () => {
    const m = map(parse('chain-bridge-cdrom.xml'), {}, { bridgeProblem: () => undefined });
    expect(m.config.nics).toEqual([{ id: 'net0', mac: '52:54:00:00:00:d1', bridge: 'br0' }]);
    expect(whatOf(m).some((w) => w.includes('bridge'))).toBe(false);
  });

  it("port forwards (passt) carry over: passt's every-address default becomes 0.0.0.0; an IPv6 one is listed", () => {
    const xml = `<domain type='qemu'><name>f</name><memory unit='MiB'>64</memory><os><type>hvm</type></os><devices>
      <interface type='user'><mac address='52:54:00:00:00:f1'/><backend type='passt'/>
        <portForward proto='tcp' address='127.0.0.1'><range start='2222' to='22'/></portForward>
        <portForward proto='udp'><range start='5000'/></portForward>
        <portForward proto='tcp' address='::1'><range start='8080' to='80'/></portForward></interface></devices></domain>`;
    const m = map(parseLibvirtDomain(xml));
    expect(m.config.nics).toEqual([
      {
        id: 'net0',
        mac: '52:54:00:00:00:f1',
        forwards: [
          { proto: 'tcp', hostAddr: '127.0.0.1', hostPort: 2222, guestPort: 22 },
          { proto: 'udp', hostAddr: '0.0.0.0', hostPort: 5000, guestPort: 5000 },
        ],
      },
    ]);
    expect(m.unsupported).toEqual([{ element: 'devices/interface[0]', what: 'NIC 52:54:00:00:00:f1: port forward ::1:8080 -> 80/tcp', why: expect.stringMatching(/IPv4 addresses only/) }]);
  });

  it('UEFI with the NVRAM the domain has: OVMF of the NVRAM\'s build, the NVRAM copied, the template kept', () => {
    const m = map(parse('uefi-explicit.xml'));
    expect(m.uefi).toEqual({
      build: '4m',
      secureBoot: false,
      nvramFrom: '/var/lib/libvirt/qemu/nvram/vmsnap-fx-uefi-explicit_VARS.fd',
      template: '/usr/share/OVMF/OVMF_VARS_4M.fd',
    });
    expect(m.notes.join('\n')).not.toMatch(/Secure Boot/);
    expect(m.unsupported).toEqual([]);
    // An old domain's NVRAM of the 2 MiB build gets that build.
    const old = map(parse('uefi-explicit.xml'), {}, { fileSize: (p) => (p.includes('/nvram/') ? VARS_2M : VARS_4M) });
    expect(old.uefi).toEqual({ build: '2m', secureBoot: false, nvramFrom: '/var/lib/libvirt/qemu/nvram/vmsnap-fx-uefi-explicit_VARS.fd' });
  });

  it("UEFI of a domain that never ran: fresh variables (as libvirt's at the first start: its own pick is Secure Boot with Microsoft's keys), said in notes", () => {
    // libvirt makes the NVRAM file at the first start only.
    const m = map(parse('uefi.xml', (p) => !p.includes('/nvram/')));
    expect(m.uefi).toEqual({ build: '4m', secureBoot: true });
    expect(m.unsupported).toEqual([]);
    expect(m.notes).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^the domain never ran, so it has no NVRAM yet \(\/var\/lib\/libvirt\/qemu\/nvram\/vmsnap-fx-uefi_VARS\.fd\)/),
        expect.stringMatching(/^Secure Boot: vmsnap runs OVMF's build without SMM; Secure Boot stays on as the domain's variables have it/),
      ]),
    );
    expect(m.config.display).toBe('vnc');
    // Secure Boot asked for in the XML: the same, noted, not refused.
    const sb = map(parse('kvm-tuned.xml'));
    expect(sb.uefi?.secureBoot).toBe(true);
    expect(sb.notes.join('\n')).toMatch(/Secure Boot stays on/);
    expect(whatOf(sb).join('\n')).not.toMatch(/Secure Boot/);
  });

  it('UEFI that vmsnap cannot carry whole is listed: an NVRAM that fits no OVMF build, no OVMF at all', () => {
    const odd = map(parse('uefi-explicit.xml'), {}, { fileSize: (p) => (p.includes('/nvram/') ? 12345 : VARS_4M) });
    expect(odd.unsupported).toEqual([
      {
        element: 'os/nvram',
        what: '/var/lib/libvirt/qemu/nvram/vmsnap-fx-uefi-explicit_VARS.fd (12345 bytes)'.replace(/^/, 'NVRAM '),
        why: expect.stringMatching(/fits no OVMF build installed here \(540672 bytes for the 4M build, 131072 bytes for the 2M build\); dropped, the VM gets fresh variables/),
      },
    ]);
    // Dropped, it is fresh variables from the template.
    expect(odd.uefi).toEqual({ build: '4m', secureBoot: false, template: '/usr/share/OVMF/OVMF_VARS_4M.fd' });
    const none = map(parse('uefi-explicit.xml'), {}, { ovmfVarsSizes: {} });
    expect(none.unsupported).toEqual([{ element: 'os', what: 'UEFI firmware', why: expect.stringMatching(/apt-get install ovmf/) }]);
  });

  it('a domain dumped while running is refused: its disks were being written', () => {
    let err: unknown;
    try {
      map(parse('uefi-running.xml'));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(VmsnapError);
    expect((err as VmsnapError).code).toBe('INVALID_STATE');
    expect((err as VmsnapError).message).toMatch(/was running when its XML was dumped/);
    expect((err as VmsnapError).hint).toMatch(/virsh shutdown/);
  });

  it("passes on every item the parser could not map, by name, and keeps what it can (the second NIC's MAC)", () => {
    const d = parse('unsupported.xml');
    const m = map(d);
    expect(d.unsupported.length).toBeGreaterThan(5);
    for (const u of d.unsupported) expect(m.unsupported).toContainEqual(u);
    // Its SPICE screen becomes vmsnap's VNC one: said, not dropped.
    expect(m.config.display).toBe('vnc');
    expect(m.notes).toEqual(expect.arrayContaining([expect.stringMatching(/SPICE display becomes a VNC screen/)]));
    expect(m.config.nics.map((n) => n.mac)).toEqual(['52:54:00:00:00:e1']);
  });

  it('gives a NIC without a MAC (hand-written XML) a new one; the memory is rounded up to a MiB', () => {
    const xml = `<domain type='qemu'><name>h</name><memory unit='KiB'>100001</memory><vcpu>3</vcpu><os><type>hvm</type></os>
      <devices><interface type='user'/><interface type='network'><mac address='52:54:00:AA:BB:CC'/><source network='nat'/></interface></devices></domain>`;
    const m = map(parseLibvirtDomain(xml));
    expect(m.config).toMatchObject({ memoryMiB: 98, cpus: 3, machine: 'pc', disks: [] });
    expect(m.config.nics).toEqual([
      { id: 'net0', mac: '52:54:00:ff:ff:01' },
      { id: 'net1', mac: '52:54:00:aa:bb:cc' },
    ]);
    expect(m.unsupported).toEqual([]);
  });

  it('refuses a config vmsnap cannot run (under 16 MiB) with the field named', () => {
    const xml = `<domain type='qemu'><name>h</name><memory unit='MiB'>8</memory><os><type>hvm</type></os></domain>`;
    expect(() => map(parseLibvirtDomain(xml))).toThrow(/memoryMiB: at least 16 MiB/);
  });

  it('the refusal lists each item with where it is and why, and says how to go on', () => {
    const m = map(parse('chain-bridge-cdrom.xml'));
    const e = unsupportedError('vmsnap-fx-chain', m.unsupported);
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(e.message).toMatch(/^the libvirt domain 'vmsnap-fx-chain' has 2 things vmsnap cannot carry over:/);
    expect(e.message).toContain(`  - CD-ROM sdb with ${DATA}/install.iso (devices/disk[2]): vmsnap has no CD-ROM drives`);
    expect(e.hint).toMatch(/--ignore-unsupported/);
    expect(e.details.unsupported).toEqual(m.unsupported);
  });
});
