import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../src/api/server.js';
import type { LibvirtImportResult } from '../src/contract/views.js';
import { DEMO_APPEND, demoImagePaths } from '../src/vm/demo-image.js';
import type { Vmsnap } from '../src/vmsnap.js';
import { COMMAND, catalogDump, cleanupHome, cli, dataFiles, expectRefused, openLib, sh, tempHome } from './helpers.js';
import { libvirtdUnavailable, type PrivateLibvirtd, startPrivateLibvirtd } from './libvirtd.js';

/**
 * `vmsnap import-libvirt`, end to end: a domain defined in a real (private)
 * libvirtd and dumped with `virsh dumpxml` becomes a vmsnap VM whose disk is
 * the domain's qcow2 with its backing chain, adopted read-only; it boots under
 * vmsnap and the source files stay byte for byte as they were. Then every way
 * the input can be wrong, each refused with nothing written.
 */

const unavailable = libvirtdUnavailable();
// CI runs as root with libvirt installed: there a missing tool is a failure, not a skip.
if (unavailable !== undefined && process.getuid?.() === 0) throw new Error(`import-libvirt tests cannot run: ${unavailable}`);

const sha256 = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');
const qemuImg = (...args: string[]): void => {
  execFileSync('qemu-img', args);
};

/** A domain by hand, as `virsh define` takes it. */
function domainXml(name: string, devices: string, os = "<type arch='x86_64' machine='pc-q35-7.2'>hvm</type>", features = ''): string {
  return `<domain type='qemu'>
  <name>${name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>${os}</os>${features}
  <devices>${devices}</devices>
</domain>`;
}
const diskXml = (file: string, format = 'qcow2', target = 'vda'): string =>
  `<disk type='file' device='disk'><driver name='qemu' type='${format}'/><source file='${file}'/><target dev='${target}' bus='virtio'/></disk>`;

describe.skipIf(unavailable !== undefined)(`import-libvirt${unavailable ? ` (skipped: ${unavailable})` : ''}`, () => {
  let home: string;
  let lib: Vmsnap;
  let dir: string;
  let lv: PrivateLibvirtd | undefined;
  /** The XML the private libvirtd dumped. */
  let dumped: string;
  /** The same guest as a UEFI domain with an NVRAM and a VNC screen, as libvirt dumped it. */
  let dumpedUefi: string;
  let sources: string[];
  let sumsBefore: Record<string, string>;
  const sums = (): Record<string, string> => Object.fromEntries(sources.map((p) => [p, sha256(p)]));
  const xmlFile = (name: string, xml: string): string => {
    const f = join(dir, name);
    writeFileSync(f, xml);
    return f;
  };

  beforeAll(async () => {
    home = tempHome();
    lib = openLib(home);
    dir = mkdtempSync(join(tmpdir(), 'vs-lv-'));
    // The disk: an ext2 filesystem with one file (made without mounting), as a raw base under two qcow2 layers.
    const content = join(dir, 'content');
    mkdirSync(content);
    writeFileSync(join(content, 'from-base'), 'written before the import\n');
    execFileSync('truncate', ['-s', '64M', join(dir, 'base.raw')]);
    execFileSync('mke2fs', ['-q', '-F', '-t', 'ext2', '-L', 'vda', '-d', content, join(dir, 'base.raw')]);
    qemuImg('create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', join(dir, 'mid.qcow2'));
    qemuImg('create', '-q', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', join(dir, 'top.qcow2'));
    // The demo guest's kernel, as the domain's own files.
    const demo = demoImagePaths(lib.ctx.paths.imageCache);
    if (!existsSync(demo.kernel)) await lib.vms.create('warm', { image: 'demo' }).then(() => lib.vms.remove('warm'));
    copyFileSync(demo.kernel, join(dir, 'vmlinuz'));
    copyFileSync(demo.initrd, join(dir, 'initrd.img'));
    // The UEFI domain's NVRAM: the variables with Microsoft's keys enrolled (what libvirt makes when it picks firmware itself), not vmsnap's template.
    copyFileSync('/usr/share/OVMF/OVMF_VARS_4M.ms.fd', join(dir, 'lv-uefi_VARS.fd'));
    sources = ['top.qcow2', 'mid.qcow2', 'base.raw', 'vmlinuz', 'initrd.img', 'lv-uefi_VARS.fd'].map((f) => join(dir, f));
    sumsBefore = sums();

    lv = await startPrivateLibvirtd();
    try {
      await lv.define(
        domainXml(
          'lv-demo',
          `${diskXml(join(dir, 'top.qcow2'))}
           <interface type='network'><mac address='52:54:00:12:34:56'/><source network='default'/><model type='virtio'/></interface>`,
          `<type arch='x86_64' machine='q35'>hvm</type><kernel>${join(dir, 'vmlinuz')}</kernel><initrd>${join(dir, 'initrd.img')}</initrd><cmdline>${DEMO_APPEND}</cmdline>`,
        ),
      );
      dumped = await lv.virsh(['dumpxml', 'lv-demo']);
      await lv.define(
        domainXml(
          'lv-uefi',
          `${diskXml(join(dir, 'top.qcow2'))}
           <interface type='network'><mac address='52:54:00:12:34:57'/><source network='default'/><model type='virtio'/></interface>
           <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>`,
          `<type arch='x86_64' machine='q35'>hvm</type>
           <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
           <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>${join(dir, 'lv-uefi_VARS.fd')}</nvram>
           <kernel>${join(dir, 'vmlinuz')}</kernel><initrd>${join(dir, 'initrd.img')}</initrd><cmdline>${DEMO_APPEND}</cmdline>`,
          '<features><acpi/></features>',
        ).replace("<memory unit='MiB'>128</memory>", "<memory unit='MiB'>256</memory>"), // OVMF with -kernel needs more than 128 MiB
      );
      dumpedUefi = await lv.virsh(['dumpxml', 'lv-uefi']);
    } finally {
      // The import needs only the XML; the domain is never started (libvirt would chown and write its files).
      await lv.stop();
      lv = undefined;
    }
  }, 180_000);

  afterAll(async () => {
    await lv?.stop();
    lib?.close();
    if (home) cleanupHome(home);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("imports the domain libvirt dumped: memory, vCPUs, kernel boot, the MAC, and the disk's whole chain adopted read-only", async () => {
    const file = xmlFile('lv-demo.xml', dumped);
    const r = await cli(home, ['import-libvirt', file, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as LibvirtImportResult;
    expect(out.domain).toBe('lv-demo');
    expect(out.dropped).toEqual([]);
    expect(out.vm).toMatchObject({ name: 'lv-demo', memoryMiB: 128, cpus: 1, disks: 1, state: 'stopped' });
    expect(out.vm.config).toMatchObject({
      machine: 'q35',
      boot: { kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd.img'), append: DEMO_APPEND },
      nics: [{ id: 'net0', mac: '52:54:00:12:34:56' }],
      disks: [{ slot: 'disk0', sizeBytes: 64 * 1024 ** 2 }],
    });
    expect(out.disks).toEqual([{ slot: 'disk0', target: 'vda', source: join(dir, 'top.qcow2'), adopted: sources.slice(0, 3) }]);
    // The chain as vmsnap keeps it: its own empty overlay on the three adopted files.
    const chain = out.vm.diskChains[0]!.chain;
    expect(chain.map((l) => [l.path, l.external, l.frozen])).toEqual([
      [expect.stringContaining(join(home, 'layers')), false, false],
      [join(dir, 'top.qcow2'), true, true],
      [join(dir, 'mid.qcow2'), true, true],
      [join(dir, 'base.raw'), true, true],
    ]);
    expect(dataFiles(home)).toHaveLength(1);
    // libvirt's NAT network becomes user-mode networking: said, not silent.
    expect(out.notes.join('\n')).toMatch(/network 'default' becomes user-mode networking/);
    expect(out.ignored.length).toBeGreaterThan(0);
  });

  it('boots under vmsnap: the guest reads the file of the base layer, its writes land in vmsnap\'s overlay, and the source files are unchanged', async () => {
    const t0 = Date.now();
    await lib.vms.start('lv-demo');
    expect(await sh(lib, 'lv-demo', 'cat /data/from-base')).toBe('written before the import\n');
    const bootMs = Date.now() - t0;
    await sh(lib, 'lv-demo', 'echo new > /data/after && sync');
    await lib.snapshots.create('lv-demo', 'imported');
    expect((await sh(lib, 'lv-demo', 'cat /data/after')).trim()).toBe('new');
    await lib.vms.stop('lv-demo', { force: true });
    const verify = await cli(home, ['verify', 'lv-demo', '--json']);
    expect(JSON.parse(verify.stdout).problems).toEqual([]);
    expect(sums()).toEqual(sumsBefore);
    // Removing the VM leaves the adopted files where they were.
    await lib.vms.remove('lv-demo');
    expect(sums()).toEqual(sumsBefore);
    console.log(`import-libvirt: boot to guest agent under vmsnap ${bootMs} ms (TCG, loaded machine)`);
  }, 240_000);

  it("a UEFI domain: OVMF, the domain's NVRAM copied byte for byte as the VM's NVRAM layer, its VNC screen; it boots and a snapshot carries the NVRAM", async () => {
    const r = await cli(home, ['import-libvirt', xmlFile('lv-uefi.xml', dumpedUefi), '--json']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as LibvirtImportResult;
    expect(out.dropped).toEqual([]);
    expect(out.uefi).toEqual({ nvramFrom: join(dir, 'lv-uefi_VARS.fd') });
    expect(out.vm.config).toMatchObject({
      firmware: { type: 'uefi', varsTemplate: sha256('/usr/share/OVMF/OVMF_VARS_4M.fd'), code: sha256('/usr/share/OVMF/OVMF_CODE_4M.fd') },
      display: 'vnc',
      nics: [{ id: 'net0', mac: '52:54:00:12:34:57' }],
    });
    const info = await lib.vms.info('lv-uefi');
    const nvram = info.nvramChain?.[0]?.path;
    expect(nvram).toBeDefined();
    // The NVRAM layer holds the domain's variables (not the template's): qemu-img compare says identical.
    expect(spawnSync('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'raw', nvram!, join(dir, 'lv-uefi_VARS.fd')]).status).toBe(0);
    expect(spawnSync('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'raw', nvram!, '/usr/share/OVMF/OVMF_VARS_4M.fd']).status).toBe(1);

    const t0 = Date.now();
    await lib.vms.start('lv-uefi');
    expect(await sh(lib, 'lv-uefi', 'cat /data/from-base')).toBe('written before the import\n');
    const bootMs = Date.now() - t0;
    expect((await lib.vms.info('lv-uefi')).endpoints?.vnc?.port).toBeGreaterThan(0);
    await lib.snapshots.create('lv-uefi', 'imported-uefi');
    await lib.vms.stop('lv-uefi', { force: true });
    const verify = await cli(home, ['verify', 'lv-uefi', '--json']);
    expect(JSON.parse(verify.stdout).problems).toEqual([]);
    expect((await lib.vms.info('lv-uefi')).nvramChain?.length).toBeGreaterThan(1);
    await lib.vms.remove('lv-uefi');
    expect(sums()).toEqual(sumsBefore);
    console.log(`import-libvirt: UEFI boot to guest agent under vmsnap ${bootMs} ms (TCG)`);
  }, 300_000);

  it("reads the XML from stdin with '-', under another name", () => {
    const r = spawnSync(COMMAND, ['import-libvirt', '-', 'from-stdin'], {
      input: dumped,
      env: { ...process.env, VMSNAP_HOME: home, VMSNAP_ACCEL: 'tcg' },
      encoding: 'utf8',
    });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/imported libvirt domain 'lv-demo' as VM 'from-stdin'/);
    expect(r.stdout).toMatch(new RegExp(`disk0 \\(was vda\\): ${join(dir, 'top.qcow2')} and 2 backing files, adopted read-only`));
    expect(lib.vms.get('from-stdin').config.nics[0]?.mac).toBe('52:54:00:12:34:56');
  });

  describe('bad input: a clear error, nothing written', () => {
    const refused = async (args: string[], code: number, message: RegExp) => {
      const files = dataFiles(home);
      const r = await expectRefused(home, ['import-libvirt', ...args], code, message);
      expect(dataFiles(home)).toEqual(files);
      return r;
    };

    it('an XML that is not a domain, a file that is not XML, an empty file, no such file', async () => {
      await refused([xmlFile('net.xml', "<network><name>default</name><forward mode='nat'/></network>")], 2, /the XML is a <network>, not a libvirt <domain>/);
      await refused([xmlFile('text.xml', 'this is not XML at all\n')], 2, /not well-formed XML/);
      await refused([xmlFile('empty.xml', '')], 2, /the libvirt domain XML is empty/);
      await refused([join(dir, 'nope.xml')], 3, /cannot read .*nope\.xml/);
    });

    it('a domain whose disk image is missing, or whose backing chain is broken', async () => {
      await refused([xmlFile('missing.xml', domainXml('m1', diskXml(join(dir, 'gone.qcow2'))))], 2, /disk vda: .*gone\.qcow2 does not exist/);
      qemuImg('create', '-q', '-f', 'qcow2', '-b', 'vanished.qcow2', '-F', 'qcow2', '-u', join(dir, 'orphan.qcow2'), '64M');
      await refused([xmlFile('broken.xml', domainXml('m2', diskXml(join(dir, 'orphan.qcow2'))))], 2, /the backing file .*vanished\.qcow2 of .*orphan\.qcow2 does not exist/);
    });

    it('a domain dumped while it ran, and one whose disk a running QEMU writes', async () => {
      const running = dumped.replace("<domain type='qemu'>", "<domain type='qemu' id='7'>");
      expect(running).not.toBe(dumped);
      await refused([xmlFile('running.xml', running), 'r1'], 5, /was running when its XML was dumped[\s\S]*virsh shutdown/);

      qemuImg('create', '-q', '-f', 'qcow2', join(dir, 'busy.qcow2'), '16M');
      const pidFile = join(dir, 'busy.pid');
      execFileSync('qemu-system-x86_64', [
        '-machine', 'q35,accel=tcg', '-nodefaults', '-display', 'none', '-S', '-daemonize', '-pidfile', pidFile,
        '-blockdev', JSON.stringify({ driver: 'qcow2', 'node-name': 'd', file: { driver: 'file', filename: join(dir, 'busy.qcow2') } }),
        '-device', 'virtio-blk-pci,drive=d',
      ]);
      try {
        await refused([xmlFile('busy.xml', domainXml('b1', diskXml(join(dir, 'busy.qcow2'))))], 5, /is in use: another process \(a running VM\?\) is writing it/);
      } finally {
        process.kill(Number(readFileSync(pidFile, 'utf8').trim()), 'SIGKILL');
      }
    });

    it('what vmsnap cannot carry over is listed by name and refused; --ignore-unsupported drops each with a warning', async () => {
      const xml = domainXml(
        'u1',
        `${diskXml(join(dir, 'top.qcow2'))}
         <interface type='bridge'><mac address='52:54:00:00:00:09'/><source bridge='br0'/></interface>
         <hostdev mode='subsystem' type='usb'><source><vendor id='0x046d'/><product id='0xc52b'/></source></hostdev>
         <watchdog model='i6300esb' action='reset'/>`,
      );
      const file = xmlFile('unsupported.xml', xml);
      const r = await refused([file], 2, /the libvirt domain 'u1' has 3 things vmsnap cannot carry over/);
      expect(r.stderr).toMatch(/NIC 52:54:00:00:00:09 on host bridge br0 \(devices\/interface\[0\]\): no network interface 'br0' on this host \(create it first/);
      expect(r.stderr).toMatch(/USB host device 046d:c52b/);
      expect(r.stderr).toMatch(/watchdog i6300esb/);
      expect(r.stderr).toMatch(/--ignore-unsupported/);

      const ok = await cli(home, ['import-libvirt', file, '--ignore-unsupported']);
      expect(ok.code, ok.stderr).toBe(0);
      expect(ok.stderr.split('\n').filter((l) => l.startsWith('warning: dropped '))).toHaveLength(3);
      expect(ok.stderr).toMatch(/warning: dropped NIC 52:54:00:00:00:09 on host bridge br0/);
      expect(lib.vms.get('u1').config.nics).toEqual([]);
      expect(sums()).toEqual(sumsBefore);
    });

    it("a port forward whose host port is in use is refused like create's; a free one is carried over", async () => {
      const server = createServer();
      await new Promise<void>((done) => server.listen({ host: '127.0.0.1', port: 0 }, done));
      const busy = (server.address() as AddressInfo).port;
      const forward = (port: number): string =>
        `<interface type='user'><mac address='52:54:00:00:00:0a'/><backend type='passt'/><portForward proto='tcp' address='127.0.0.1'><range start='${port}' to='22'/></portForward></interface>`;
      try {
        await refused([xmlFile('fwd-busy.xml', domainXml('fw1', `${diskXml(join(dir, 'top.qcow2'))}${forward(busy)}`))], 2, new RegExp(`forward: host port 127\\.0\\.0\\.1:${busy}/tcp is in use`));
      } finally {
        await new Promise((done) => server.close(done));
      }
      const ok = await cli(home, ['import-libvirt', xmlFile('fwd.xml', domainXml('fw2', `${diskXml(join(dir, 'top.qcow2'))}${forward(busy)}`))]);
      expect(ok.code, ok.stderr).toBe(0);
      expect(lib.vms.get('fw2').config.nics).toEqual([{ id: 'net0', mac: '52:54:00:00:00:0a', forwards: [{ proto: 'tcp', hostAddr: '127.0.0.1', hostPort: busy, guestPort: 22 }] }]);
      // Another import forwarding the same host port is refused: fw2 holds it.
      await refused([xmlFile('fwd-twice.xml', domainXml('fw3', `${diskXml(join(dir, 'top.qcow2'))}${forward(busy)}`))], 2, /is already forwarded by VM 'fw2'/);
    });

    it('a name that is taken, or a domain name that is no VM name', async () => {
      await lib.vms.create('taken', { disks: [{ sizeBytes: 16 * 1024 ** 2 }] });
      await refused([xmlFile('taken.xml', dumped), 'taken'], 4, /a VM named 'taken' already exists/);
      await refused([xmlFile('badname.xml', domainXml('has space', diskXml(join(dir, 'top.qcow2'))))], 2, /the domain's name 'has space' is no valid VM name: give the VM a name/);
    });
  });

  it('create --disk adopts a backed qcow2 the same way: its whole chain, read-only', async () => {
    const r = await cli(home, ['create', 'by-disk', '--disk', join(dir, 'top.qcow2'), '--json']);
    expect(r.code, r.stderr).toBe(0);
    const chain = lib.vms.get('by-disk') && (await lib.vms.info('by-disk')).diskChains[0]!.chain;
    expect(chain.map((l) => [l.path, l.external])).toEqual([
      [expect.stringContaining(join(home, 'layers')), false],
      [join(dir, 'top.qcow2'), true],
      [join(dir, 'mid.qcow2'), true],
      [join(dir, 'base.raw'), true],
    ]);
    const verify = await cli(home, ['verify', 'by-disk', '--json']);
    expect(JSON.parse(verify.stdout).problems).toEqual([]);
  });

  it('the API imports too, and refuses files outside its --allow-path dirs', async () => {
    const before = catalogDump(home);
    const xml = domainXml('api1', diskXml(join(dir, 'top.qcow2')));
    const closed = createApp(lib);
    const res = await closed.app.request('/api/vms/import-libvirt', {
      method: 'POST',
      headers: { Host: 'localhost', 'Content-Type': 'application/json' },
      body: JSON.stringify({ xml }),
    });
    await closed.close();
    expect(res.status).toBe(403);
    expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(/does not accept host file paths/);
    expect(catalogDump(home)).toBe(before);

    const open = createApp(lib, { allowPaths: [dir] });
    const ok = await open.app.request('/api/vms/import-libvirt', {
      method: 'POST',
      headers: { Host: 'localhost', 'Content-Type': 'application/json' },
      body: JSON.stringify({ xml, name: 'api-vm' }),
    });
    await open.close();
    expect(ok.status, await ok.clone().text()).toBe(201);
    const body = (await ok.json()) as LibvirtImportResult;
    expect(body.vm.name).toBe('api-vm');
    expect(body.disks[0]?.adopted).toEqual(sources.slice(0, 3));
  });
});
