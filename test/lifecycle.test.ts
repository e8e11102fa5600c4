import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acquireVmLock } from '../src/catalog/lock.js';
import { EXIT_CODES } from '../src/errors.js';
import { isProcessAlive } from '../src/util/process.js';
import { cleanupHome, cli, expectRefused, openLib, tempHome, waitFor } from './helpers.js';

/** The demo guest end to end through the real CLI, as a user would drive it. */
describe('VM lifecycle on the demo guest', () => {
  let home: string;
  beforeAll(() => {
    home = tempHome();
  });
  afterAll(() => cleanupHome(home));

  const ok = async (args: string[]) => {
    const r = await cli(home, args);
    expect(r.code, `vmsnap ${args.join(' ')}\n${r.stderr}`).toBe(0);
    return r;
  };
  const refused = (args: string[], code: number, message: RegExp) => expectRefused(home, args, code, message);

  it('creates, starts, runs a command, keeps /data across a reboot, and removes', async () => {
    await ok(['create', 't', '--image', 'demo']);
    await ok(['start', 't']);
    const status = JSON.parse((await ok(['status', 't', '--json'])).stdout);
    expect(status).toMatchObject({ name: 't', state: 'running' });

    const uname = await ok(['exec', 't', '--', 'uname', '-r']);
    expect(uname.stdout).toMatch(/^\d+\.\d+\.\d+.*cloud-amd64\n$/);

    // exec passes the guest command's exit code and output through.
    const fail = await cli(home, ['exec', 't', '--', '/bin/sh', '-c', 'echo oops >&2; exit 3']);
    expect(fail.code).toBe(3);
    expect(fail.stderr).toBe('oops\n');

    await ok(['exec', 't', '--', '/bin/sh', '-c', 'echo kept > /data/hello.txt && sync']);

    await refused(['start', 't'], EXIT_CODES.INVALID_STATE, /already running/);
    await refused(['rm', 't'], EXIT_CODES.INVALID_STATE, /stop it before removing it/);
    await refused(['set', 't', '--memory', '512M'], EXIT_CODES.INVALID_STATE, /only be changed while it is stopped/);

    await ok(['stop', 't']);
    expect(JSON.parse((await ok(['status', 't', '--json'])).stdout).state).toBe('stopped');
    await refused(['exec', 't', '--', 'true'], EXIT_CODES.INVALID_STATE, /is stopped/);

    await ok(['start', 't']);
    const cat = await ok(['exec', 't', '--', 'cat', '/data/hello.txt']);
    expect(cat.stdout).toBe('kept\n');

    const serial = readFileSync(join(JSON.parse((await ok(['info', 't', '--json'])).stdout).runtimeDir, 'serial.log'), 'utf8');
    expect(serial).toContain('VMSNAP-GUEST-READY');

    await ok(['stop', 't', '--force']);
    await ok(['rm', 't']);
    expect(JSON.parse((await ok(['list', '--json'])).stdout)).toEqual([]);
  });

  it('pauses and resumes', async () => {
    await ok(['create', 'p', '--image', 'demo', '--memory', '128M']);
    await ok(['start', 'p']);
    await ok(['pause', 'p']);
    expect(JSON.parse((await ok(['status', 'p', '--json'])).stdout).state).toBe('paused');
    await refused(['pause', 'p'], EXIT_CODES.INVALID_STATE, /already paused/);
    await ok(['resume', 'p']);
    expect(JSON.parse((await ok(['status', 'p', '--json'])).stdout).state).toBe('running');
  });

  it('tells the truth after QEMU died: dead pid found, stale files cleaned', async () => {
    const s = JSON.parse((await ok(['status', 'p', '--json'])).stdout);
    process.kill(s.pid, 'SIGKILL');
    await waitFor(() => !isProcessAlive(s.pid), { what: 'the killed QEMU to be gone' });
    const after = JSON.parse((await ok(['status', 'p', '--json'])).stdout);
    expect(after).toMatchObject({ state: 'stopped', staleCleaned: true });
    expect(JSON.parse((await ok(['status', 'p', '--json'])).stdout).staleCleaned).toBeUndefined();
  });

  it('refuses a second process acting on a VM that is busy', async () => {
    const lib = openLib(home);
    const vm = lib.vms.get('p');
    const lock = await acquireVmLock(lib.ctx.catalog, vm.id, vm.name, 'a test holding the VM');
    try {
      const r = await cli(home, ['start', 'p'], { VMSNAP_LOCK_WAIT_MS: '300' });
      expect(r.code).toBe(EXIT_CODES.BUSY);
      expect(r.stderr).toMatch(/VM 'p' is busy: a test holding the VM/);
    } finally {
      lock.release();
      lib.close();
    }
    await ok(['start', 'p']);
    await ok(['stop', 'p', '--force']);
  });
});
