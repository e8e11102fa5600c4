import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { VmsnapError } from '../errors.js';
import { type ChainLayer, type LibvirtDomain, parseLibvirtDomain } from './libvirt-domain.js';
import { type AdoptedImage, type LibvirtMapping, mapLibvirtDomain, unsupportedError } from './libvirt-mapping.js';

const FIXTURES = fileURLToPath(new URL('../../test/fixtures/libvirt/', import.meta.url));
const DATA = '/var/tmp/vmsnap-libvirt-fixtures';
const GiB = 1024 ** 3;

/** A fixture, parsed as if its files existed (they were on the machine that made them). */
function parse(name: string, fileExists: (path: string) => boolean = () => true): LibvirtDomain {
  return parseLibvirtDomain(readFileSync(join(FIXTURES, name), 'utf8'), { fileExists });
}

/** Every disk a one-layer image of 1 GiB, unless given its own chain. */
function map(d: LibvirtDomain, chains: Record<string, ChainLayer[]> = {}): LibvirtMapping {
  const images = new Map<string, AdoptedImage>(
    d.disks.map((disk) => [disk.sourceFile, { chain: chains[disk.sourceFile] ?? [{ path: disk.sourceFile, format: disk.format }], virtualSize: GiB }]),
  );
  let n = 0;
  return mapLibvirtDomain({ domain: d, images, newMac: () => `52:54:00:ff:ff:${String(++n).padStart(2, '0')}` });
}

const whatOf = (m: LibvirtMapping): string[] => m.unsupported.map((u) => u.what);

describe('mapLibvirtDomain', () => {
  it('a BIOS domain: memory, vCPUs, machine, its disk with the whole backing chain, the NAT NIC as user-mode with its MAC', () => {
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
    });
    expect(m.disks).toEqual([{ slot: 'disk0', target: 'vda', source: `${DATA}/bios.qcow2`, chain }]);
    expect(m.notes).toEqual([expect.stringContaining("on libvirt network 'default' becomes user-mode networking")]);
    // Its VNC screen has no counterpart yet: listed, never dropped silently.
    expect(m.unsupported).toEqual([{ element: 'devices/graphics', what: 'VNC display', why: expect.stringMatching(/^not yet supported by vmsnap: a display/) }]);
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

  it('disks in boot order (disk0 boots); a SATA disk becomes virtio (noted); a CD-ROM and a bridge NIC are listed', () => {
    const m = map(parse('chain-bridge-cdrom.xml'));
    expect(m.disks.map((x) => [x.slot, x.target])).toEqual([
      ['disk0', 'vda'],
      ['disk1', 'sda'],
    ]);
    expect(m.notes).toEqual(expect.arrayContaining([expect.stringContaining('disk sda (sata) becomes virtio disk disk1')]));
    expect(whatOf(m)).toEqual(
      expect.arrayContaining([`CD-ROM sdb with ${DATA}/install.iso`, 'NIC 52:54:00:00:00:d1 on host bridge br0', 'VNC display']),
    );
    expect(m.unsupported.find((u) => u.what.includes('bridge'))?.why).toBe('not yet supported by vmsnap: bridge NICs');
    // A dropped bridge NIC is not turned into something else.
    expect(m.config.nics).toEqual([]);
  });

  it('UEFI is listed (not yet supported), naming the NVRAM and that an inactive domain has none yet', () => {
    // libvirt makes the NVRAM file at the first start only.
    const m = map(parse('uefi.xml', (p) => !p.includes('/nvram/')));
    const uefi = m.unsupported.find((u) => u.element === 'os');
    expect(uefi?.what).toBe('UEFI firmware with NVRAM /var/lib/libvirt/qemu/nvram/vmsnap-fx-uefi_VARS.fd (not made yet: the domain never ran)');
    expect(uefi?.why).toMatch(/^not yet supported by vmsnap: UEFI firmware and its NVRAM/);
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
    expect(whatOf(m)).toContain('SPICE display');
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
    expect(e.message).toMatch(/^the libvirt domain 'vmsnap-fx-chain' has 3 things vmsnap cannot carry over:/);
    expect(e.message).toContain(`  - CD-ROM sdb with ${DATA}/install.iso (devices/disk[2]): vmsnap has no CD-ROM drives`);
    expect(e.hint).toMatch(/--ignore-unsupported/);
    expect(e.details.unsupported).toEqual(m.unsupported);
  });
});
