import { describe, expect, it } from 'vitest';
import { buildQemuArgs, runtimeFiles, type LaunchSpec } from './launcher.js';

const base = (over: Partial<LaunchSpec> = {}): LaunchSpec => ({
  vmId: 'id1',
  vmName: 'vm',
  config: { memoryMiB: 256, cpus: 1, machine: 'q35', boot: {}, disks: [{ slot: 'disk0', sizeBytes: 1 << 30 }], nics: [] },
  disks: [{ slot: 'disk0', chain: [{ id: 'a1', path: '/l/a1.qcow2', format: 'qcow2' }] }],
  accel: 'tcg',
  files: runtimeFiles('/r', 'id1'),
  ...over,
});

describe('QEMU command line', () => {
  it('a revert of a UEFI VM from a RAM image: the firmware and NVRAM as a start gives them, guest RAM from the image, the exact machine type', () => {
    const args = buildQemuArgs(
      base({
        ramImage: '/s/x.ram',
        machineType: 'pc-q35-7.2',
        firmware: { code: '/boot/code', nvram: { slot: 'nvram', chain: [{ id: 'n2', path: '/l/n2.qcow2', format: 'qcow2' }] } },
      }),
    );
    expect(args[args.indexOf('-machine') + 1]).toBe('pc-q35-7.2,accel=tcg,memory-backend=pc.ram,pflash0=fwcode,pflash1=ln2');
    expect(args[args.indexOf('-object') + 1]).toBe(`memory-backend-file,id=pc.ram,size=${256 * 1024 * 1024},mem-path=/s/x.ram,share=off,prealloc=off`);
  });

  it('boots from the first disk when there is no kernel (bootindex), not when there is one', () => {
    expect(buildQemuArgs(base()).join(' ')).toMatch(/id=disk0,serial=disk0,bootindex=0/);
    expect(buildQemuArgs(base({ kernel: '/k' })).join(' ')).not.toMatch(/bootindex/);
  });

  it('UEFI: OVMF code read-only on pflash0, the NVRAM chain on pflash1 with its frozen layers read-only', () => {
    const args = buildQemuArgs(
      base({
        firmware: {
          code: '/boot/code',
          nvram: {
            slot: 'nvram',
            chain: [
              { id: 'n2', path: '/l/n2.qcow2', format: 'qcow2' },
              { id: 'n1', path: '/l/n1.qcow2', format: 'qcow2' },
            ],
          },
        },
      }),
    );
    expect(args[args.indexOf('-machine') + 1]).toBe('q35,accel=tcg,pflash0=fwcode,pflash1=ln2');
    const nodes = args.flatMap((a, i) => (args[i - 1] === '-blockdev' ? [JSON.parse(a) as Record<string, unknown>] : []));
    expect(nodes.find((n) => n['node-name'] === 'fwcode')).toMatchObject({ driver: 'raw', 'read-only': true });
    expect(nodes.find((n) => n['node-name'] === 'ln1')).toMatchObject({ 'read-only': true });
    expect(nodes.find((n) => n['node-name'] === 'ln2')).toMatchObject({ backing: 'ln1' });
    expect(nodes.find((n) => n['node-name'] === 'ln2')).not.toHaveProperty('read-only');
  });

  it('BIOS: no pflash', () => {
    expect(buildQemuArgs(base()).join(' ')).not.toMatch(/pflash/);
  });
});
