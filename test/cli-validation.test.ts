import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXIT_CODES } from '../src/errors.js';
import { cleanupHome, cli, expectRefused, tempHome } from './helpers.js';

/** Bad input: a clear message naming what was wrong, a non-zero exit, and nothing written. No QEMU needed. */
describe('CLI input validation', () => {
  let home: string;
  beforeAll(async () => {
    home = tempHome();
    const r = await cli(home, ['create', 'existing', '--disk', '64M']);
    expect(r.code, r.stderr).toBe(0);
  });
  afterAll(() => cleanupHome(home));

  const refused = (args: string[], code: number, message: RegExp) => expectRefused(home, args, code, message);

  it('refuses --memory lots, naming the field and the accepted form', () =>
    refused(['create', 'a', '--memory', 'lots'], EXIT_CODES.INVALID_ARGUMENT, /memory: 'lots' is not a size[\s\S]*256M/));

  it('refuses a memory size too small for the schema', () =>
    refused(['create', 'a', '--memory', '1M'], EXIT_CODES.INVALID_ARGUMENT, /memoryMiB: at least 16 MiB/));

  it('refuses a bad CPU count', () => refused(['create', 'a', '--cpus', 'two'], EXIT_CODES.INVALID_ARGUMENT, /cpus: 'two'/));

  it('refuses a missing image path', () =>
    refused(['create', 'a', '--disk', '/nonexistent/disk.qcow2'], EXIT_CODES.NOT_FOUND, /neither a size nor an existing image/));

  it('refuses a file that is not a disk image format it imports', async () => {
    const f = join(home, 'not-an-image.vmdk');
    writeFileSync(f, 'KDMV');
    await refused(['create', 'a', '--disk', f], EXIT_CODES.INVALID_ARGUMENT, /not a readable disk image|imports qcow2 or raw/);
  });

  it('refuses a duplicate name', () => refused(['create', 'existing'], EXIT_CODES.ALREADY_EXISTS, /already exists/));

  it('refuses a bad VM name', () => refused(['create', '../etc'], EXIT_CODES.INVALID_ARGUMENT, /invalid VM name/));

  it('refuses an unknown image', () => refused(['create', 'a', '--image', 'windows'], EXIT_CODES.INVALID_ARGUMENT, /not a known image/));

  it('refuses a missing kernel file', () => refused(['create', 'a', '--kernel', '/nope/vmlinuz'], EXIT_CODES.NOT_FOUND, /kernel: no such file/));

  it('says which VM is unknown', () => refused(['status', 'ghost'], EXIT_CODES.NOT_FOUND, /no VM named 'ghost'/));

  it('refuses exec on a stopped VM', () => refused(['exec', 'existing', '--', 'true'], EXIT_CODES.INVALID_STATE, /is stopped/));

  it('refuses stop of a stopped VM', () => refused(['stop', 'existing'], EXIT_CODES.INVALID_STATE, /is not running/));

  it('refuses set with nothing to change', () => refused(['set', 'existing'], EXIT_CODES.INVALID_ARGUMENT, /nothing to change/));

  it('refuses a usage error with exit 2', async () => {
    const r = await cli(home, ['create']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/missing required argument 'name'/);
  });

  it('prints errors as JSON with --json', async () => {
    const r = await cli(home, ['status', 'ghost', '--json']);
    expect(r.code).toBe(EXIT_CODES.NOT_FOUND);
    expect(JSON.parse(r.stderr)).toMatchObject({ error: { code: 'NOT_FOUND' } });
  });

  it('lists VMs as a table and as JSON', async () => {
    const t = await cli(home, ['list']);
    expect(t.stdout).toMatch(/NAME\s+STATE[\s\S]*existing\s+stopped/);
    const j = await cli(home, ['list', '--json']);
    expect(JSON.parse(j.stdout)).toEqual([expect.objectContaining({ name: 'existing', state: 'stopped', memoryMiB: 256 })]);
  });

  it('changes the hardware of a stopped VM with set', async () => {
    const r = await cli(home, ['set', 'existing', '--memory', '512M', '--cpus', '2', '--add-disk', '32M', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ memoryMiB: 512, cpus: 2, disks: [{ slot: 'disk0' }, { slot: 'disk1', sizeBytes: 32 * 1024 ** 2 }] });
    const info = JSON.parse((await cli(home, ['info', 'existing', '--json'])).stdout);
    expect(info.diskChains).toHaveLength(2);
  });

  it('has --help on every command', async () => {
    for (const args of [['--help'], ['create', '--help'], ['snapshot', 'revert', '--help']]) {
      const r = await cli(home, args);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/Usage: vmsnap/);
    }
  });
});
