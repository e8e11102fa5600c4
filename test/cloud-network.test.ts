import { execFileSync, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { createServer, connect, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultImageCache } from '../src/paths.js';
import { ensureDebianImage } from '../src/vm/debian-image.js';
import type { Vmsnap } from '../src/vmsnap.js';
import { catalogDump, cleanupHome, cli, expectRefused, openLib, tempHome, waitFor } from './helpers.js';
import { freePort, guestSsh, newSshKey, type GuestSsh } from './ssh.js';

/**
 * A real cloud-style guest (the Debian test guest, booted by SeaBIOS from its
 * own disk) brought up the way a user would: a NoCloud seed from --ssh-key, a
 * port forward to its sshd, a VNC screen. One booted guest for the file; the
 * clone boots a second one.
 */

const BOOT_MS = 30 * 60_000;

describe('a Debian guest with a cloud-init seed, a port forward and a VNC screen', () => {
  let home: string;
  let lib: Vmsnap;
  let keyDir: string;
  let key: string;
  let port: number;

  let g: GuestSsh;
  const ssh = (p: number, cmd: string): Promise<string> => g.run(p, cmd);
  /** The host key the guest's sshd offers (ssh-keyscan). */
  const hostKey = (p: number): string =>
    execFileSync('ssh-keyscan', ['-T', '20', '-t', 'ed25519', '-p', String(p), '127.0.0.1'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
      .split('\n')
      .find((l) => l.includes('ssh-ed25519'))!
      .split(' ')
      .slice(1)
      .join(' ');
  const counter = (p: number): Promise<number> => g.counter(p);

  beforeAll(async () => {
    const img = await ensureDebianImage(defaultImageCache(), (l) => process.stderr.write(`${l}\n`));
    home = tempHome();
    lib = openLib(home);
    ({ dir: keyDir, key } = newSshKey());
    g = guestSsh(key);
    port = await freePort();
    const r = await cli(home, ['create', 'deb', '--memory', '512M', '--disk', img.bios, '--forward', `${port}:22`, '--ssh-key', `${key}.pub`, '--display', 'vnc']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    await lib.vms.start('deb');
    // The agent answers before cloud-init has made keys and users: wait for a login.
    await waitFor(() => ssh(port, 'true').then(() => true), { what: 'SSH through the forward', timeoutMs: BOOT_MS, intervalMs: 3000 });
  }, BOOT_MS + 120_000);

  afterAll(() => {
    lib?.close();
    if (home) cleanupHome(home);
    if (keyDir) rmSync(keyDir, { recursive: true, force: true });
  });

  it("logs in by SSH through the forward as the image's default user, with the key from the seed; the seed set the hostname", async () => {
    expect((await ssh(port, 'id -un; hostname')).trim().split('\n')).toEqual(['debian', 'deb']);
  });

  it('info shows how to reach the forward and the VNC screen; the VNC port answers with an RFB banner', async () => {
    const text = (await cli(home, ['info', 'deb'])).stdout;
    expect(text).toContain(`forward tcp 127.0.0.1:${port} -> guest port 22  ssh -p ${port} USER@127.0.0.1`);
    const info = await lib.vms.info('deb');
    const vnc = info.endpoints!.vnc!;
    expect(vnc.host).toBe('127.0.0.1');
    expect(text).toContain(`display: vnc on 127.0.0.1:${vnc.port}`);
    const banner = await new Promise<string>((resolve, reject) => {
      const s = connect(vnc.port, vnc.host);
      s.once('data', (d: Buffer) => {
        s.destroy();
        resolve(d.toString('latin1'));
      });
      s.once('error', reject);
    });
    expect(banner).toMatch(/^RFB 003\.00[38]\n/);
  });

  it("a memory snapshot taken while an SSH session runs a counter; the forward changed; revert: the counter carries on and the snapshot's forward is back", async () => {
    // The SSH session keeps running the counter (it ignores the hangup when the revert cuts the connection).
    const session: ChildProcess = g.startCounter(port);
    try {
      await waitFor(async () => (await counter(port)) >= 5, { what: 'the counter', timeoutMs: 120_000, intervalMs: 500 });
      await lib.snapshots.create('deb', 'live');
      const atSnapshot = await counter(port);
      await waitFor(async () => (await counter(port)) > atSnapshot + 10, { what: 'the counter to move on', timeoutMs: 120_000, intervalMs: 500 });
      const beforeRevert = await counter(port);

      // Another forward while stopped: `set` changes it, and the revert brings the snapshot's back.
      await lib.vms.stop('deb', { force: true });
      const other = await freePort();
      await lib.vms.set('deb', { forwards: [{ proto: 'tcp', hostAddr: '127.0.0.1', hostPort: other, guestPort: 22 }] });
      expect((await lib.vms.info('deb')).config.nics[0]!.forwards).toEqual([{ proto: 'tcp', hostAddr: '127.0.0.1', hostPort: other, guestPort: 22 }]);

      await lib.snapshots.revert('deb', 'live', { force: true });
      const info = await lib.vms.info('deb');
      expect(info.config.nics[0]!.forwards).toEqual([{ proto: 'tcp', hostAddr: '127.0.0.1', hostPort: port, guestPort: 22 }]);
      expect(info.endpoints!.forwards.map((f) => f.hostPort)).toEqual([port]);
      // Resumed where it was: the counter is back near the snapshot's value, under the one it had reached, and counts on.
      const resumed = await waitFor(() => counter(port), { what: 'SSH after the revert', timeoutMs: 120_000, intervalMs: 1000 });
      expect(resumed).toBeGreaterThanOrEqual(atSnapshot - 50);
      expect(resumed).toBeLessThan(beforeRevert);
      await waitFor(async () => (await counter(port)) > resumed + 5, { what: 'the counter to carry on', timeoutMs: 120_000, intervalMs: 500 });
    } finally {
      session.kill('SIGKILL');
    }
  }, 900_000);

  it('a clone gets a new instance-id, a new MAC, its own host port, and new SSH host keys', async () => {
    const key0 = hostKey(port);
    const r = await cli(home, ['clone', 'deb', 'live', 'deb2']);
    expect(r.code).toBe(0);
    const [a, b] = [await lib.vms.info('deb'), await lib.vms.info('deb2')];
    expect(b.config.cloudInit!.instanceId).not.toBe(a.config.cloudInit!.instanceId);
    expect(b.config.cloudInit!.sshKeys).toEqual(a.config.cloudInit!.sshKeys);
    expect(b.config.nics[0]!.mac).not.toBe(a.config.nics[0]!.mac);
    expect(b.config.nics[0]!.forwards).toEqual([{ proto: 'tcp', hostAddr: '127.0.0.1', hostPort: 0, guestPort: 22 }]);
    // A boot from the snapshot's disks: cloud-init sees a new instance and makes new host keys.
    await lib.vms.start('deb2');
    const p2 = (await lib.vms.info('deb2')).endpoints!.forwards[0]!.hostPort;
    expect(p2).not.toBe(port);
    expect(p2).toBeGreaterThan(0);
    expect((await cli(home, ['info', 'deb2'])).stdout).toContain(`forward tcp 127.0.0.1:${p2} -> guest port 22`);
    await waitFor(() => ssh(p2, 'true').then(() => true), { what: "SSH into the clone", timeoutMs: BOOT_MS, intervalMs: 3000 });
    expect((await ssh(p2, 'hostname')).trim()).toBe('deb2');
    expect(hostKey(p2)).not.toBe(key0);
    await lib.vms.stop('deb2', { force: true });
  }, BOOT_MS + 120_000);

  it('refuses before QEMU starts, writing nothing: a host port in use, a port another VM forwards, a missing bridge', async () => {
    const busy = createServer();
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', () => r()));
    const taken = (busy.address() as { port: number }).port;
    try {
      await expectRefused(home, ['create', 'x', '--disk', '1G', '--forward', `${taken}:22`], 2, new RegExp(`host port 127\\.0\\.0\\.1:${taken}/tcp is in use`));
      await expectRefused(home, ['create', 'x', '--disk', '1G', '--forward', `0.0.0.0:${port}:80`], 2, new RegExp(`already forwarded by VM 'deb'`));
      await expectRefused(home, ['create', 'x', '--disk', '1G', '--bridge', 'vmsnapnobr0'], 2, /bridge: no network interface 'vmsnapnobr0'/);
      await expectRefused(home, ['create', 'x', '--disk', '1G', '--forward', '22'], 2, /forward: '22' is not a forward/);
      // A stopped VM whose port was taken since: start refuses before QEMU runs.
      await lib.vms.create('y', { disks: [{ sizeBytes: 1 << 20 }] });
      await lib.vms.set('y', { forwards: [{ proto: 'tcp', hostAddr: '127.0.0.1', hostPort: taken, guestPort: 22 }] }).then(
        () => expect.unreachable('set to a port in use'),
        (e: Error) => expect(e.message).toMatch(/is in use/),
      );
      const before = catalogDump(home);
      await new Promise<void>((r) => busy.close(() => r()));
      await lib.vms.set('y', { forwards: [{ proto: 'tcp', hostAddr: '127.0.0.1', hostPort: taken, guestPort: 22 }] });
      const again: Server = createServer();
      await new Promise<void>((r) => again.listen(taken, '127.0.0.1', () => r()));
      try {
        const dump = catalogDump(home);
        await expectRefused(home, ['start', 'y'], 5, new RegExp(`host port 127\\.0\\.0\\.1:${taken}/tcp is in use`));
        expect(catalogDump(home)).toBe(dump);
        expect((await lib.vms.status('y')).state).toBe('stopped');
      } finally {
        await new Promise<void>((r) => again.close(() => r()));
      }
      expect(before).not.toBe('');
    } finally {
      if (busy.listening) busy.close();
    }
  });
});
