import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEMO_APPEND, demoImagePaths } from '../src/vm/demo-image.js';
import type { Vmsnap } from '../src/vmsnap.js';
import { cleanupHome, cli, openLib, sh, tempHome } from './helpers.js';

/**
 * A NIC on a real host bridge: the test makes a Linux bridge with an address,
 * allows it in /etc/qemu/bridge.conf (qemu-bridge-helper's only config), and
 * the demo guest, given an address on the same network, reaches the host
 * through it — after create --bridge, after a revert to a memory snapshot
 * (the tap is made anew by the new QEMU), and when a libvirt domain with
 * `<interface type='bridge'>` is imported. Needs root (CI runs as root).
 */

const BRIDGE_CONF = '/etc/qemu/bridge.conf';
const root = process.getuid?.() === 0;
const BR = `vsbr${process.pid % 100000}`;
const HOST_IP = '10.231.7.1';

/** The guest's address on the bridge, then a ping of the host's. */
const PING = (ip: string): string => `ip link set eth0 up; ip addr flush dev eth0; ip addr add ${ip}/24 dev eth0; ping -c 2 -W 5 ${HOST_IP} >/dev/null && echo reached`;

describe.skipIf(!root)(`a NIC on a host bridge${root ? '' : ' (skipped: needs root to make a bridge)'}`, () => {
  let home: string;
  let lib: Vmsnap;
  let dir: string;
  let confBefore: string | undefined;

  beforeAll(async () => {
    // A fixed MAC, as a bridge with a physical port has: otherwise the bridge takes the lowest MAC of its
    // ports, which changes with each new tap, and a reverted guest's ARP entry for the host goes stale.
    execFileSync('ip', ['link', 'add', BR, 'address', '02:76:73:62:72:01', 'type', 'bridge']);
    execFileSync('ip', ['link', 'set', BR, 'up']);
    execFileSync('ip', ['addr', 'add', `${HOST_IP}/24`, 'dev', BR]);
    confBefore = existsSync(BRIDGE_CONF) ? readFileSync(BRIDGE_CONF, 'utf8') : undefined;
    execFileSync('mkdir', ['-p', '/etc/qemu']);
    writeFileSync(BRIDGE_CONF, `${confBefore ?? ''}allow ${BR}\n`);
    home = tempHome();
    lib = openLib(home);
    dir = mkdtempSync(join(tmpdir(), 'vs-br-'));
  });

  afterAll(async () => {
    for (const vm of lib ? await lib.vms.list() : []) await lib.vms.stop(vm.name, { force: true }).catch(() => undefined);
    lib?.close();
    if (home) cleanupHome(home);
    if (dir) rmSync(dir, { recursive: true, force: true });
    if (confBefore === undefined) rmSync(BRIDGE_CONF, { force: true });
    else writeFileSync(BRIDGE_CONF, confBefore);
    execFileSync('ip', ['link', 'del', BR]);
  });

  it('create --bridge: the guest reaches the host over the bridge; info names it; a revert to a memory snapshot keeps it on the bridge', async () => {
    const r = await cli(home, ['create', 'onbr', '--image', 'demo', '--bridge', BR]);
    expect(r.code, r.stderr).toBe(0);
    expect((await cli(home, ['info', 'onbr'])).stdout).toMatch(new RegExp(`net0: mac [0-9a-f:]{17}, bridge ${BR} \\(tap via qemu-bridge-helper\\)`));
    await lib.vms.start('onbr');
    expect((await sh(lib, 'onbr', PING('10.231.7.2'))).trim()).toBe('reached');
    await lib.snapshots.create('onbr', 'on-bridge');
    await lib.snapshots.revert('onbr', 'on-bridge', { force: true });
    // The guest's address came back with its memory; the new QEMU's tap is on the bridge again.
    expect((await sh(lib, 'onbr', `ping -c 2 -W 5 ${HOST_IP} >/dev/null && echo reached`)).trim()).toBe('reached');
    await lib.vms.stop('onbr', { force: true });
  }, 300_000);

  it('import-libvirt: a domain\'s <interface type=\'bridge\'> stays on that bridge with its MAC, and the guest reaches the host', async () => {
    const demo = demoImagePaths(lib.ctx.paths.imageCache);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'disk.qcow2'), '64M']);
    const xml = `<domain type='qemu'><name>lv-br</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>
      <os><type arch='x86_64' machine='q35'>hvm</type><kernel>${demo.kernel}</kernel><initrd>${demo.initrd}</initrd><cmdline>${DEMO_APPEND}</cmdline></os>
      <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${join(dir, 'disk.qcow2')}'/><target dev='vda' bus='virtio'/></disk>
      <interface type='bridge'><mac address='52:54:00:0b:0b:01'/><source bridge='${BR}'/><model type='virtio'/></interface></devices></domain>`;
    writeFileSync(join(dir, 'lv-br.xml'), xml);
    const r = await cli(home, ['import-libvirt', join(dir, 'lv-br.xml')]);
    expect(r.code, r.stderr).toBe(0);
    expect(lib.vms.get('lv-br').config.nics).toEqual([{ id: 'net0', mac: '52:54:00:0b:0b:01', bridge: BR }]);
    await lib.vms.start('lv-br');
    expect((await sh(lib, 'lv-br', `cat /sys/class/net/eth0/address; ${PING('10.231.7.3')}`)).trim().split('\n')).toEqual(['52:54:00:0b:0b:01', 'reached']);
    await lib.vms.stop('lv-br', { force: true });
  }, 300_000);
});
