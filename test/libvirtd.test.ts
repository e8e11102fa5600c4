import { execFile, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseLibvirtDomain } from '../src/vm/libvirt-domain.js';
import { libvirtdUnavailable, type PrivateLibvirtd, startPrivateLibvirtd } from './libvirtd.js';

const unavailable = libvirtdUnavailable();
// CI runs as root with libvirt installed (scripts/install-deps.sh --test): there a missing tool
// is a failure, not a skip. Only a non-root developer run skips, and says so in the title.
if (unavailable !== undefined && process.getuid?.() === 0) throw new Error(`libvirtd tests cannot run: ${unavailable}`);

function virshPlain(args: string[], env: Record<string, string>): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('virsh', args, { env: { ...process.env, ...env } }, (err, stdout, stderr) => (err ? reject(new Error(stderr || err.message)) : resolve(stdout)));
  });
}

describe.skipIf(unavailable !== undefined)(`a private libvirtd${unavailable ? ` (skipped: ${unavailable})` : ''}`, () => {
  let lv: PrivateLibvirtd;
  let dir: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vmsnap-libvirtd-test-'));
    lv = await startPrivateLibvirtd();
  });
  afterAll(async () => {
    await lv?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('answers on its own socket, as qemu:///system', async () => {
    expect(lv.startupMs).toBeLessThan(30_000);
    expect((await lv.virsh(['uri'])).trim()).toBe(lv.uri);
    expect(await lv.virsh(['version'])).toMatch(/Running hypervisor: QEMU/);
    expect(existsSync(join(lv.root, 'run', 'libvirt-sock'))).toBe(true);
    expect(lv.uri).toBe(`qemu+unix:///system?socket=${join(lv.root, 'run', 'libvirt-sock')}`);
  });

  it('defines a domain and dumps it back; the dump parses and maps', async () => {
    const disk = join(dir, 'disk.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '64M']);
    const xml = `<domain type='qemu'>
      <name>vmsnap-e2e</name>
      <memory unit='MiB'>256</memory>
      <vcpu>1</vcpu>
      <os firmware='efi'><type arch='x86_64' machine='q35'>hvm</type></os>
      <features><acpi/></features>
      <devices>
        <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${disk}'/><target dev='vda' bus='virtio'/></disk>
        <interface type='network'><source network='default'/><model type='virtio'/></interface>
      </devices>
    </domain>`;
    const t0 = Date.now();
    await lv.define(xml);
    const defineMs = Date.now() - t0;
    // Through LIBVIRT_DEFAULT_URI, with a plain `virsh dumpxml`.
    const t1 = Date.now();
    const dumped = await virshPlain(['dumpxml', 'vmsnap-e2e'], lv.env);
    const dumpMs = Date.now() - t1;
    const d = parseLibvirtDomain(dumped, { nvramDir: lv.hostPath('/var/lib/libvirt/qemu/nvram') });
    expect(d).toMatchObject({
      name: 'vmsnap-e2e',
      memoryMiB: 256,
      cpus: 1,
      machine: 'q35',
      firmware: 'uefi',
      disks: [{ target: 'vda', sourceFile: disk, format: 'qcow2' }],
      nics: [{ mode: 'user', network: 'default', model: 'virtio' }],
      unsupported: [],
    });
    expect(d.machineType).toMatch(/^pc-q35-/);
    expect(d.nics[0]?.mac).toMatch(/^52:54:00:/); // libvirt made one up
    expect(d.nvram).toMatchObject({ implicit: true, exists: false }); // made at first start only
    // It lives in the private /etc/libvirt, not the host's.
    expect(existsSync(join(lv.root, 'etc', 'qemu', 'vmsnap-e2e.xml'))).toBe(true);
    expect(existsSync('/etc/libvirt/qemu/vmsnap-e2e.xml')).toBe(false);
    expect(defineMs + dumpMs).toBeLessThan(30_000);
    await lv.virsh(['undefine', 'vmsnap-e2e', '--nvram']);
  });

  it('maps paths libvirt picks to the host', () => {
    expect(lv.hostPath('/var/lib/libvirt/qemu/nvram/x_VARS.fd')).toBe(join(lv.root, 'lib', 'qemu', 'nvram', 'x_VARS.fd'));
    expect(lv.hostPath('/srv/disk.qcow2')).toBe('/srv/disk.qcow2');
  });
});

describe.skipIf(unavailable !== undefined)('stopping a private libvirtd', () => {
  it('ends the process and removes its state', async () => {
    const lv = await startPrivateLibvirtd({ cacheDir: null });
    const t0 = Date.now();
    await lv.stop();
    const stopMs = Date.now() - t0;
    expect(() => process.kill(lv.pid, 0)).toThrow();
    expect(existsSync(lv.root)).toBe(false);
    expect(stopMs).toBeLessThan(15_000);
  });
});
