import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { GuestAgentCommandError } from '../src/errors.js';
import { defaultImageCache } from '../src/paths.js';
import { GuestAgentClient } from '../src/qemu/guest-agent.js';
import { QmpClient } from '../src/qemu/qmp.js';
import { unavailable } from './helpers.js';

// Boots the demo guest (guest/build.sh) under TCG and talks to its qemu-ga for real.
const IMG = join(defaultImageCache(), 'demo');
const imageExists = existsSync(join(IMG, 'vmlinuz')) && existsSync(join(IMG, 'initrd.img'));

describe.skipIf(unavailable(imageExists, 'guest-agent.real.test.ts', `the demo guest is not built in ${IMG} (the global setup builds it unless VMSNAP_SKIP_IMAGE=1)`))('GuestAgentClient (real guest)', () => {
  let dir: string;
  let qemu: ChildProcess;
  let qmp: QmpClient;
  let agent: GuestAgentClient;
  const serialLog = (): string => (existsSync(join(dir, 'serial.log')) ? readFileSync(join(dir, 'serial.log'), 'utf8') : '');

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vmsnap-qga-real-'));
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'disk0.qcow2'), '64M']);
    // The command line DESIGN.md's test guest is built for (see launcher.ts for the real one).
    const args = [
      ...['-machine', 'q35', '-accel', 'tcg', '-m', '256', '-smp', '1', '-nodefaults', '-no-user-config', '-display', 'none'],
      ...['-kernel', join(IMG, 'vmlinuz'), '-initrd', join(IMG, 'initrd.img'), '-append', 'console=ttyS0 quiet'],
      ...['-blockdev', `driver=file,filename=${join(dir, 'disk0.qcow2')},node-name=f0`, '-blockdev', 'driver=qcow2,file=f0,node-name=d0'],
      ...['-device', 'virtio-blk-pci,drive=d0,id=disk0'],
      ...['-chardev', `socket,id=qga0,path=${join(dir, 'qga.sock')},server=on,wait=off`],
      ...['-device', 'virtio-serial-pci,id=vser0', '-device', 'virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0'],
      ...['-chardev', `socket,id=ser0,path=${join(dir, 'console.sock')},server=on,wait=off,logfile=${join(dir, 'serial.log')}`],
      ...['-serial', 'chardev:ser0', '-qmp', `unix:${join(dir, 'qmp.sock')},server=on,wait=off`],
    ];
    qemu = spawn('qemu-system-x86_64', args, { stdio: 'ignore' });
    qmp = await QmpClient.connect(join(dir, 'qmp.sock'), { retryUntilMs: 20_000 });
    try {
      agent = await GuestAgentClient.waitUntilReady(join(dir, 'qga.sock'), { timeoutMs: 180_000 });
    } catch (e) {
      throw new Error(`${(e as Error).message}\n--- serial log ---\n${serialLog()}`);
    }
  });

  afterEach((ctx) => {
    // The guest's console says more than any assertion about why an agent call failed.
    if (ctx.task.result?.state === 'fail') console.error(`--- serial log (tail) ---\n${serialLog().split('\n').slice(-40).join('\n')}`);
  });

  afterAll(async () => {
    await agent?.close();
    await qmp?.close();
    if (qemu?.exitCode === null) qemu.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('answers ping while QEMU runs the guest', async () => {
    await agent.ping();
    expect(await qmp.queryStatus()).toMatchObject({ running: true, status: 'running' });
  });

  it('runs programs and captures their output and exit status', async () => {
    const uname = await agent.exec('/bin/uname', ['-r']);
    expect(uname).toMatchObject({ exitCode: 0, stderr: '' });
    expect(uname.stdout).toMatch(/^\d+\.\d+/);
    expect(await agent.exec('/bin/sh', ['-c', 'echo out; echo err >&2; exit 7'])).toEqual({ exitCode: 7, stdout: 'out\n', stderr: 'err\n' });
    expect((await agent.exec('/bin/cat', [], { input: 'from stdin' })).stdout).toBe('from stdin');
    expect((await agent.exec('/bin/sh', ['-c', 'echo $GREETING'], { env: { GREETING: 'hello' } })).stdout).toBe('hello\n');
  });

  it('reads a file written in the guest, and writes one the guest can read', async () => {
    expect((await agent.exec('/bin/sh', ['-c', 'echo hi > /data/x; sync'])).exitCode).toBe(0);
    expect((await agent.readFile('/data/x')).toString()).toBe('hi\n');
    const data = randomBytes(300 * 1024);
    await agent.writeFile('/data/y', data);
    const sum = await agent.exec('/bin/sh', ['-c', 'md5sum < /data/y']);
    expect(sum.stdout.split(' ')[0]).toBe(createHash('md5').update(data).digest('hex'));
    expect((await agent.readFile('/data/y')).equals(data)).toBe(true);
    await expect(agent.readFile('/data/does-not-exist')).rejects.toBeInstanceOf(GuestAgentCommandError);
  });

  it('freezes and thaws the guest filesystems', async () => {
    expect(await agent.fsfreezeStatus()).toBe('thawed');
    const frozen = await agent.fsfreezeFreeze();
    try {
      expect(frozen).toBeGreaterThanOrEqual(1); // at least /data
      expect(await agent.fsfreezeStatus()).toBe('frozen');
    } finally {
      expect(await agent.fsfreezeThaw()).toBe(frozen);
    }
    expect(await agent.fsfreezeStatus()).toBe('thawed');
    expect((await agent.exec('/bin/sh', ['-c', 'echo after > /data/z && cat /data/z'])).stdout).toBe('after\n');
  });

  it('shuts the guest down (no reply from qemu-ga; QEMU reports SHUTDOWN)', async () => {
    const down = qmp.waitForEvent('SHUTDOWN', { timeoutMs: 60_000 });
    await agent.shutdown();
    const e = await down;
    expect(e.data.guest).toBe(true);
  });
});
