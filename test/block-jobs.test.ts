import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmsnapError } from '../src/errors.js';
import { runBlockJob } from '../src/qemu/block-jobs.js';
import { QmpClient } from '../src/qemu/qmp.js';

// Block jobs need no guest: `-machine none` has a full block layer, and nodes added
// with blockdev-add (no device attached) can be committed and streamed.
let dir: string;
let qemu: ChildProcess;
let qmp: QmpClient;

const img = (name: string): string => join(dir, name);
const qemuImg = (...args: string[]): void => void execFileSync('qemu-img', args, { stdio: 'pipe' });
const qemuIo = (file: string, cmd: string): string => execFileSync('qemu-io', ['-c', cmd, file], { encoding: 'utf8' });

/** Creates a qcow2 chain (base first) with 0xab written into the first MiB of `dataIn`. */
function makeChain(names: string[], dataIn: string): void {
  names.forEach((n, i) => {
    if (i === 0) qemuImg('create', '-q', '-f', 'qcow2', img(n), '4M');
    else qemuImg('create', '-q', '-f', 'qcow2', '-b', img(names[i - 1]!), '-F', 'qcow2', img(n));
  });
  qemuIo(img(dataIn), 'write -P 0xab 0 1M');
}

/** Opens one layer in QEMU as node `node`; without `backing`, QEMU opens its backing chain itself. */
async function open(node: string, file: string, opts: { backing?: string; protocol?: Record<string, unknown> } = {}): Promise<void> {
  await qmp.execute('blockdev-add', {
    driver: 'qcow2',
    'node-name': node,
    file: opts.protocol ?? { driver: 'file', filename: img(file) },
    ...(opts.backing !== undefined ? { backing: opts.backing } : {}),
  });
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vmsnap-jobs-'));
  const sock = join(dir, 'qmp.sock');
  qemu = spawn('qemu-system-x86_64', ['-machine', 'none', '-accel', 'tcg', '-nodefaults', '-display', 'none', '-S', '-qmp', `unix:${sock},server=on,wait=off`], {
    stdio: 'ignore',
  });
  qmp = await QmpClient.connect(sock, { retryUntilMs: 20_000 });
});

afterAll(async () => {
  await qmp?.close();
  if (qemu?.exitCode === null) qemu.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

describe('runBlockJob', () => {
  it('runs an active commit to READY, completes it, reports progress and dismisses it', async () => {
    makeChain(['a-base.qcow2', 'a-top.qcow2'], 'a-top.qcow2');
    await open('a-top', 'a-top.qcow2');
    const progress: [number, number][] = [];
    await runBlockJob(qmp, {
      jobId: 'commit-a',
      start: () => qmp.execute('block-commit', { 'job-id': 'commit-a', device: 'a-top', 'auto-dismiss': false }),
      onProgress: (done, total) => progress.push([done, total]),
      complete: true,
    });
    expect(progress.at(-1)).toEqual([1 << 20, 1 << 20]);
    expect(await qmp.execute('query-jobs')).toEqual([]);
    await qmp.execute('blockdev-del', { 'node-name': 'a-top' }); // release the image lock
    expect(qemuIo(img('a-base.qcow2'), 'read -P 0xab 0 1M')).not.toContain('failed');
  });

  it('runs an intermediate commit, which concludes without READY', async () => {
    makeChain(['b-base.qcow2', 'b-mid.qcow2', 'b-top.qcow2'], 'b-mid.qcow2');
    await open('b-base', 'b-base.qcow2');
    await open('b-mid', 'b-mid.qcow2', { backing: 'b-base' });
    await open('b-top', 'b-top.qcow2', { backing: 'b-mid' });
    await runBlockJob(qmp, {
      jobId: 'commit-b',
      start: () =>
        qmp.execute('block-commit', { 'job-id': 'commit-b', device: 'b-top', 'top-node': 'b-mid', 'base-node': 'b-base', 'auto-dismiss': false }),
    });
    // Nodes added by hand stay until deleted by hand (b-mid is out of the chain but still open).
    for (const node of ['b-top', 'b-mid', 'b-base']) await qmp.execute('blockdev-del', { 'node-name': node });
    expect(qemuIo(img('b-base.qcow2'), 'read -P 0xab 0 1M')).not.toContain('failed');
    // The chain is now base <- top, with the same content seen from the top.
    const info = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', img('b-top.qcow2')], { encoding: 'utf8' }));
    expect(info['backing-filename']).toBe(img('b-base.qcow2'));
    expect(qemuIo(img('b-top.qcow2'), 'read -P 0xab 0 1M')).not.toContain('failed');
  });

  it("throws QEMU_FAILED with QEMU's error when the job fails, and dismisses it", async () => {
    makeChain(['c-base.qcow2', 'c-top.qcow2'], 'c-top.qcow2');
    // blkdebug fails every data read of the top layer with EIO.
    await open('c-top', 'c-top.qcow2', {
      protocol: { driver: 'blkdebug', image: { driver: 'file', filename: img('c-top.qcow2') }, 'inject-error': [{ event: 'read_aio', errno: 5 }] },
    });
    const err = await runBlockJob(qmp, {
      jobId: 'commit-c',
      start: () => qmp.execute('block-commit', { 'job-id': 'commit-c', device: 'c-top', 'auto-dismiss': false }),
      complete: true,
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VmsnapError);
    expect(err).toMatchObject({ code: 'QEMU_FAILED', message: 'block job commit-c failed: Input/output error' });
    expect(await qmp.execute('query-jobs')).toEqual([]);
    await qmp.execute('blockdev-del', { 'node-name': 'c-top' });
  });

  it('cancels and dismisses a job that runs out of time', async () => {
    makeChain(['d-base.qcow2', 'd-top.qcow2'], 'd-top.qcow2');
    await open('d-top', 'd-top.qcow2');
    // Without `complete`, an active commit stays READY forever.
    const err = await runBlockJob(qmp, {
      jobId: 'commit-d',
      start: () => qmp.execute('block-commit', { 'job-id': 'commit-d', device: 'd-top', 'auto-dismiss': false }),
      timeoutMs: 1000,
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'QMP_TIMEOUT' });
    expect(await qmp.execute('query-jobs')).toEqual([]);
    await qmp.execute('blockdev-del', { 'node-name': 'd-top' });
  });

  it('passes on an error from start()', async () => {
    const err = await runBlockJob(qmp, {
      jobId: 'nope',
      start: () => qmp.execute('block-commit', { 'job-id': 'nope', device: 'no-such-node', 'auto-dismiss': false }),
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'QMP_ERROR' });
  });
});
