import { createWriteStream, existsSync, mkdirSync, openAsBlob, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as NodeReadableStream } from 'node:stream/web';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serve, type RunningServer } from '../src/api/server.js';
import type { CloneResult, DfReport, ExportTaskResult, HealthReport, ImportResult } from '../src/contract/index.js';
import { runtimeFiles } from '../src/qemu/launcher.js';
import { QmpClient } from '../src/qemu/qmp.js';
import type { Vmsnap } from '../src/vmsnap.js';
import { catalogDump, cleanupHome, cli, COUNTER, counter, openLib, sh, tempHome, write } from './helpers.js';
import { apiClient, expectError, type Answer } from './http.js';

/** How far the free space of a shared disk may move between two looks a few seconds apart. */
const FREE_DRIFT = 2 * 1024 ** 3;

/**
 * Clone, export, import, storage and health over HTTP against a real server
 * and the demo guest: what the CLI does, through the API.
 */
describe('clones, downloads, uploads and health over the HTTP API', () => {
  let home: string;
  let out: string;
  let lib: Vmsnap;
  let server: RunningServer;
  let archive: string;
  let atSnapshot: number;
  const { call, refused, succeed } = apiClient(() => server.url);

  /** What the scratch folder holds: no download or upload may be left behind. */
  const scratch = () => (existsSync(join(home, 'tmp')) ? readdirSync(join(home, 'tmp')) : []);
  const until = async (what: string, ok: () => boolean | Promise<boolean>) => {
    const deadline = Date.now() + 10_000;
    while (!(await ok())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  /** Upload a file (or bytes) as an archive. */
  const upload = async (path: string, body: Blob | Uint8Array | string, headers: Record<string, string> = {}): Promise<Answer> => {
    const res = await fetch(`${server.url}${path}`, {
      method: 'POST',
      // A copy: Blob wants a plain ArrayBuffer behind the bytes, which a Buffer need not have.
      body: body instanceof Uint8Array ? new Blob([new Uint8Array(body)]) : body,
      headers: { 'Content-Type': 'application/octet-stream', ...headers },
    });
    const text = await res.text();
    return { status: res.status, json: text ? JSON.parse(text) : undefined, headers: res.headers };
  };
  const execIn = async (vm: string, script: string): Promise<string> => {
    const r = await call('POST', `/api/vms/${vm}/exec`, { argv: ['/bin/sh', '-c', script] });
    expect(r.status, JSON.stringify(r.json)).toBe(200);
    expect(r.json.exitCode, r.json.stderr).toBe(0);
    return r.json.stdout as string;
  };
  const powerOff = async (vm: string) => succeed(await call('POST', `/api/vms/${vm}/stop`, { force: true }));

  beforeAll(async () => {
    home = tempHome();
    out = join(home, 'out');
    mkdirSync(out);
    lib = openLib(home);
    await lib.vms.create('src', { image: 'demo', memoryMiB: 128 });
    await lib.vms.start('src');
    await write(lib, 'src', 'A');
    await sh(lib, 'src', COUNTER);
    await until('the counter runs', async () => (await counter(lib, 'src').catch(() => 0)) > 0);
    atSnapshot = await counter(lib, 'src');
    await lib.snapshots.create('src', 'mem', { description: 'with memory' });
    await write(lib, 'src', 'B');
    server = await serve({ lib, host: '127.0.0.1', port: 0, watchIntervalMs: 500 });
  });
  afterAll(async () => {
    await server?.close();
    lib?.close();
    if (home) cleanupHome(home);
  });

  it('clones and forks: two running copies of the memory snapshot, each with its own MAC', async () => {
    const op = await succeed(await call('POST', '/api/vms/src/snapshots/mem/clone', { name: 'fork', count: 2, start: true }));
    expect(op).toMatchObject({ kind: 'clone', vm: 'src', snapshot: 'mem' });
    const r = op.result as CloneResult;
    expect(r.clones.map((c) => [c.name, c.mode, c.state, c.forked])).toEqual([
      ['fork-1', 'linked', 'running', true],
      ['fork-2', 'linked', 'running', true],
    ]);
    const macs = await Promise.all(['src', 'fork-1', 'fork-2'].map(async (vm) => (await call('GET', `/api/vms/${vm}`)).json.config.nics[0].mac as string));
    expect(new Set(macs).size).toBe(3);
    expect(macs.slice(1)).toEqual(r.clones.map((c) => c.mac));
    for (const fork of ['fork-1', 'fork-2']) {
      // A fork, not a boot: the counter in RAM (/tmp) carries on from the snapshot's instant.
      expect(Number((await execIn(fork, 'cat /tmp/counter')).trim())).toBeGreaterThanOrEqual(atSnapshot);
      expect((await execIn(fork, 'ls /data | grep -v lost+found')).trim()).toBe('A');
      expect((await call('GET', `/api/vms/${fork}`)).json.state).toBe('running');
    }
    // A full clone, not started: independent disks.
    const full = await succeed(await call('POST', '/api/vms/src/snapshots/mem/clone', { name: 'solo', mode: 'full' }));
    expect(full.result).toMatchObject({ clones: [{ name: 'solo', mode: 'full', state: 'stopped', forked: false }] });
    expect((await call('GET', '/api/vms')).json.map((v: { name: string }) => v.name).sort()).toEqual(['fork-1', 'fork-2', 'solo', 'src']);
    for (const fork of ['fork-1', 'fork-2']) await powerOff(fork);
    for (const vm of ['fork-1', 'fork-2', 'solo']) expect((await call('DELETE', `/api/vms/${vm}`)).status).toBe(200);
  });

  it('refuses a bad clone at once, writing nothing', async () => {
    const before = catalogDump(home);
    await refused('POST', '/api/vms/src/snapshots/mem/clone', { name: 'src' }, 409, 'ALREADY_EXISTS', 'name');
    await refused('POST', '/api/vms/src/snapshots/mem/clone', { name: 'new', count: 0 }, 400, 'INVALID_ARGUMENT', 'count');
    await refused('POST', '/api/vms/src/snapshots/mem/clone', { name: 'new', count: 65 }, 400, 'INVALID_ARGUMENT', 'count');
    await refused('POST', '/api/vms/src/snapshots/mem/clone', { name: 'new', mode: 'thin' }, 400, 'INVALID_ARGUMENT', 'mode');
    await refused('POST', '/api/vms/src/snapshots/mem/clone', { name: 'bad name' }, 400, 'INVALID_ARGUMENT', 'name');
    await refused('POST', '/api/vms/src/snapshots/nope/clone', { name: 'new' }, 404, 'NOT_FOUND');
    await refused('POST', '/api/vms/ghost/snapshots/mem/clone', { name: 'new' }, 404, 'NOT_FOUND');
    expect(catalogDump(home)).toBe(before);
  });

  it('exports a memory snapshot as a download while the guest runs: it never pauses', async () => {
    const vm = lib.vms.get('src');
    const watcher = await QmpClient.connect(runtimeFiles(lib.ctx.paths.run, vm.id).eventsSocket, { retryUntilMs: 2000 });
    const stops: string[] = [];
    watcher.onEvent((e) => e.event === 'STOP' && stops.push(e.event));
    let r: ExportTaskResult;
    try {
      const before = await counter(lib, 'src');
      const op = await succeed(await call('POST', '/api/vms/src/snapshots/mem/export'));
      expect(op).toMatchObject({ kind: 'export', vm: 'src', snapshot: 'mem', progress: { what: 'writing and checksumming' } });
      r = op.result as ExportTaskResult;
      expect(r).toMatchObject({ vm: 'src', snapshot: 'mem', hasMemory: true, download: { fileName: 'src-mem.vmsnap' } });
      expect(r).not.toHaveProperty('file');
      expect(r.download.url).toMatch(/^\/api\/downloads\/[A-Za-z0-9_-]{32}$/);

      const res = await fetch(`${server.url}${r.download.url}`);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toBe('application/x-tar');
      expect(res.headers.get('content-disposition')).toBe('attachment; filename="src-mem.vmsnap"');
      expect(Number(res.headers.get('content-length'))).toBe(r.bytes);
      archive = join(out, 'src-mem.vmsnap');
      await pipeline(Readable.fromWeb(res.body as NodeReadableStream<Uint8Array>), createWriteStream(archive));
      expect(statSync(archive).size).toBe(r.bytes);
      // The guest ran throughout: no STOP event, and its counter kept going.
      expect(stops).toEqual([]);
      expect(await counter(lib, 'src')).toBeGreaterThan(before);
    } finally {
      await watcher.close();
    }
    // The archive is the CLI's: every checksum holds, and its state is the snapshot's.
    const check = await lib.transfer.check(archive);
    expect(check).toMatchObject({ hasMemory: true, source: { vm: 'src', snapshot: 'mem' } });
    // (A split memory state is joined back into one stream as it is exported: its checksum is the export's.)
    expect(check.manifest.state?.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(check.manifest.state?.sha256).toBe(r!.state?.sha256);
    // Fetched whole, the server's copy is gone; the URL with it.
    await until('the download is removed', () => scratch().length === 0);
    await refused('GET', r.download.url, undefined, 404, 'NOT_FOUND');
  });

  it('refuses a download of what is not there, writing nothing', async () => {
    const before = catalogDump(home);
    await refused('POST', '/api/vms/src/snapshots/nope/export', undefined, 404, 'NOT_FOUND');
    await refused('POST', '/api/vms/ghost/snapshots/mem/export', undefined, 404, 'NOT_FOUND');
    await refused('GET', `/api/downloads/${'x'.repeat(32)}`, undefined, 404, 'NOT_FOUND');
    await refused('GET', '/api/downloads/short', undefined, 400, 'INVALID_ARGUMENT', 'id');
    expect(catalogDump(home)).toBe(before);
    expect(scratch()).toEqual([]);
  });

  it('imports the download by upload, and a revert resumes the guest with its files', async () => {
    const up = await upload('/api/imports?name=back&filename=src-mem.vmsnap', await openAsBlob(archive));
    expect(up.json.operation).toMatchObject({ kind: 'import', vm: 'back', vmId: null, status: 'running' });
    const op = await succeed(up);
    const r = op.result as ImportResult;
    expect(r).toMatchObject({ vm: 'back', snapshot: 'mem', hasMemory: true, vmState: 'running', source: { vm: 'src', snapshot: 'mem' } });
    expect(op.vmId).toBe(r.id);
    expect(scratch()).toEqual([]);
    expect(lib.snapshots.show('back', 'mem').meta.imported).toMatchObject({ archive: 'src-mem.vmsnap' });

    const rev = await succeed(await call('POST', '/api/vms/back/snapshots/mem/revert', { force: true }));
    expect(rev.result).toMatchObject({ state: 'running' });
    expect((await execIn('back', 'ls /data | grep -v lost+found')).trim()).toBe('A');
    const resumed = Number((await execIn('back', 'cat /tmp/counter')).trim());
    expect(resumed).toBeGreaterThanOrEqual(atSnapshot);
    await expect.poll(async () => Number((await execIn('back', 'cat /tmp/counter')).trim()), { timeout: 10_000 }).toBeGreaterThan(resumed);
    await powerOff('back');
  });

  it('refuses a truncated upload, one that is not an archive, a taken name, and one cut short: nothing is created', async () => {
    const before = catalogDump(home);
    const whole = readFileSync(archive);
    const half = whole.subarray(0, Math.floor(whole.length / 2));
    const cut = expectError(await upload('/api/imports?name=cut&filename=half.vmsnap', half), 400, 'INVALID_ARGUMENT');
    expect(cut.message).toMatch(/'half\.vmsnap' is damaged: the archive is truncated/);
    const text = expectError(await upload('/api/imports?name=text', 'hello, not an archive'), 400, 'INVALID_ARGUMENT');
    expect(text.message).toMatch(/'upload' is not a vmsnap archive/);
    // Without a name the archive's VM name is taken: 'src' exists.
    expectError(await upload('/api/imports', whole), 409, 'ALREADY_EXISTS', 'name');
    expectError(await upload('/api/imports?name=src', whole), 409, 'ALREADY_EXISTS', 'name');
    expectError(await upload('/api/imports?name=bad%20name', whole), 400, 'INVALID_ARGUMENT', 'name');
    expectError(await upload('/api/imports?name=x', whole, { 'Content-Type': 'application/json' }), 415, 'UNSUPPORTED_MEDIA_TYPE');
    expectError(await upload('/api/imports?name=x', ''), 400, 'INVALID_ARGUMENT', 'body');
    // A stream of unknown length cannot be checked against the free space first.
    const chunked = await fetch(`${server.url}/api/imports?name=x`, {
      method: 'POST',
      body: new Blob([whole]).stream(),
      headers: { 'Content-Type': 'application/octet-stream' },
      duplex: 'half',
    } as RequestInit);
    expect(chunked.status).toBe(411);
    expect(((await chunked.json()) as { error: { code: string } }).error.code).toBe('LENGTH_REQUIRED');

    // A client that goes away half way: the server drops what it got.
    await new Promise<void>((resolve) => {
      const req = request(`${server.url}/api/imports?name=gone`, { method: 'POST', headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': whole.length } });
      req.on('error', () => resolve());
      req.write(half, () => setTimeout(() => req.destroy(), 100));
    });
    await until('the cut upload is removed', () => scratch().length === 0);

    // The archive checked without importing: the same refusals, and nothing created either way.
    const checked = await succeed(await upload('/api/archives/check?filename=src-mem.vmsnap', await openAsBlob(archive)));
    expect(checked.result).toMatchObject({ hasMemory: true, source: { vm: 'src', snapshot: 'mem' }, bytes: whole.length });
    expect(checked.result).not.toHaveProperty('file');
    expectError(await upload('/api/archives/check', half), 400, 'INVALID_ARGUMENT');
    expect(catalogDump(home)).toBe(before);
    expect(scratch()).toEqual([]);
  });

  it("reports storage and the doctor's findings exactly as the CLI's --json does", async () => {
    // Every snapshot is "old" with this threshold: the doctor has something to say, and names the snapshot.
    writeFileSync(join(home, 'config.json'), JSON.stringify({ health: { maxAgeHours: 0.0001 } }));
    // Nothing may write while the two are compared: the source pauses, the imported copy is off.
    await call('POST', '/api/vms/src/pause');
    try {
      const doctor = (await call('GET', '/api/doctor')).json as HealthReport;
      const byCli = await cli(home, ['doctor', '--json']);
      expect(byCli.code, byCli.stderr).toBe(1);
      const fromCli = JSON.parse(byCli.stdout) as HealthReport;
      expect(doctor.warnings).toContainEqual(expect.objectContaining({ kind: 'old-snapshot', vm: 'src', snapshot: 'mem' }));
      expect({ ...doctor, freeBytes: 0 }).toEqual({ ...fromCli, freeBytes: 0 });
      // Free space is the machine's, and others write to its disk meanwhile: near, not equal.
      expect(Math.abs(doctor.freeBytes - fromCli.freeBytes)).toBeLessThan(FREE_DRIFT);
      const quick = (await call('GET', '/api/doctor?verify=false&maxAgeHours=1000')).json as HealthReport;
      expect(quick.warnings.filter((w) => w.kind === 'old-snapshot')).toEqual([]);
      expect(quick.settings.maxAgeHours).toBe(1000);
      await refused('GET', '/api/doctor?maxAgeHours=soon', undefined, 400, 'INVALID_ARGUMENT', 'maxAgeHours');

      for (const [path, args] of [
        ['/api/storage', ['df', '--json']],
        ['/api/vms/src/storage', ['df', 'src', '--json']],
      ] as const) {
        const api = (await call('GET', path)).json as DfReport;
        const r = await cli(home, [...args]);
        expect(r.code, r.stderr).toBe(0);
        const fromCli = JSON.parse(r.stdout) as DfReport;
        expect(api.vms).toEqual(fromCli.vms);
        expect({ ...api.dataDir, freeBytes: 0 }).toEqual({ ...fromCli.dataDir, freeBytes: 0 });
        expect(Math.abs(api.dataDir.freeBytes - fromCli.dataDir.freeBytes)).toBeLessThan(FREE_DRIFT);
      }
      expect((await call('GET', '/api/vms/src/storage')).json.vms.map((v: { vm: string }) => v.vm)).toEqual(['src']);
      await refused('GET', '/api/vms/ghost/storage', undefined, 404, 'NOT_FOUND');
    } finally {
      rmSync(join(home, 'config.json'));
      await call('POST', '/api/vms/src/resume');
    }
  });

  it('fingerprints, verifies every VM and recovers through operations', async () => {
    const fp = await succeed(await call('POST', '/api/vms/src/fingerprint'));
    expect(fp.result).toEqual({ vm: 'src', fingerprinted: 1 });
    const all = await succeed(await call('POST', '/api/verify', { deep: true }));
    expect(all).toMatchObject({ kind: 'verify-all', vm: null, vmId: null });
    expect((all.result as { vm: string; ok: boolean }[]).map((v) => [v.vm, v.ok]).sort()).toEqual([
      ['back', true],
      ['src', true],
    ]);
    const orphan = join(home, 'layers', 'orphan.qcow2');
    writeFileSync(orphan, 'left by nobody');
    const rec = await succeed(await call('POST', '/api/recover'));
    expect(rec.result).toEqual({ operations: [], orphansRemoved: [orphan] });
    expect(existsSync(orphan)).toBe(false);
  });
});
