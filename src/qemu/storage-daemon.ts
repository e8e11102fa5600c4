import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VmsnapError } from '../errors.js';
import { blockdevArgs, type LaunchDisk } from './launcher.js';
import { QmpClient } from './qmp.js';

/**
 * Run block jobs on layers no VM has open, with the same QMP commands as a
 * running VM (qemu-storage-daemon opens the chains and does nothing else): an
 * offline merge then works, and performs, exactly like an online one.
 */
export async function withStorageDaemon<T>(disks: LaunchDisk[], fn: (qmp: QmpClient) => Promise<T>, onSpawn?: (pid: number) => void): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'vmsnap-qsd-'));
  const socket = join(dir, 'qmp.sock');
  const args = ['--chardev', `socket,id=m,path=${socket},server=on,wait=off`, '--monitor', 'chardev=m'];
  for (const d of disks) args.push(...blockdevArgs(d).map((a) => (a === '-blockdev' ? '--blockdev' : a)));
  const child = spawn('qemu-storage-daemon', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  if (child.pid !== undefined) onSpawn?.(child.pid);
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
  child.on('error', () => undefined);
  let qmp: QmpClient | undefined;
  try {
    qmp = await Promise.race([
      QmpClient.connect(socket, { retryUntilMs: 10_000 }),
      exited.then((code) => {
        throw new VmsnapError('QEMU_FAILED', `qemu-storage-daemon exited (${code}): ${stderr.trim()}`);
      }),
    ]);
    return await fn(qmp);
  } finally {
    await qmp?.execute('quit').catch(() => undefined);
    await qmp?.close().catch(() => undefined);
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
    rmSync(dir, { recursive: true, force: true });
  }
}
