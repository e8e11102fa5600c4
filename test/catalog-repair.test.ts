import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import type { Command } from 'commander';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serve } from '../src/api/server.js';
import { RECORD_VERSION, recordText, snapshotRecordPath, SNAPSHOT_RECORD, vmRecordPath } from '../src/catalog/records.js';
import type { CatalogRepairReport } from '../src/contract/views.js';
import { memoryStateFiles } from '../src/paths.js';
import type { Vmsnap } from '../src/vmsnap.js';
import { overwrite } from './damage.js';
import { cleanupHome, cli, files, openLib, tempHome, write } from './helpers.js';
import { apiClient } from './http.js';

/**
 * Losing the catalog loses nothing: with a branched tree of memory and
 * disk-only snapshots, a linked clone and an imported VM, the catalog is
 * deleted (rebuilt from the records beside the VMs), damaged (every command
 * says so; restored from a backup, reconciled with the records), and records
 * are damaged (reported, never trusted). The kill -9 at every fault point of
 * an operation followed by a lost catalog is in operations.contract.test.ts.
 */

const TWO_WAYS = /vmsnap recover --from-backup.*vmsnap recover --rebuild-catalog/s;
const MiB = 1024 ** 2;

let home: string;
let lib: Vmsnap;
const catalogPath = () => join(home, 'catalog.sqlite');

/** Every VM row of the catalog (VMs, layers, active layers, snapshots with config, meta and fingerprints, their layers), in a stable order. */
function dump(): Record<string, unknown[]> {
  const db = lib.ctx.catalog.db;
  const order = { vms: 'id', layers: 'id', active_layers: 'vm_id, slot', snapshots: 'id', snapshot_layers: 'snapshot_id, slot' };
  return Object.fromEntries(Object.entries(order).map(([t, o]) => [t, db.prepare(`SELECT * FROM ${t} ORDER BY ${o}`).all()]));
}

/** A command refused with CATALOG_ERROR (exit 17) and the hint naming both ways back; as JSON too. */
async function expectCatalogError(args: string[], message: RegExp): Promise<void> {
  const r = await cli(home, args);
  expect(r.code, `${args.join(' ')}: ${r.stdout}${r.stderr}`).toBe(17);
  expect(r.stderr).toMatch(message);
  expect(r.stderr).toMatch(TWO_WAYS);
  expect(r.stderr).not.toMatch(/INTERNAL|set VMSNAP_DEBUG/);
}

async function repair(args: string[], code = 0): Promise<CatalogRepairReport> {
  const r = await cli(home, ['recover', ...args, '--json']);
  expect(r.code, r.stdout + r.stderr).toBe(code);
  return JSON.parse(r.stdout) as CatalogRepairReport;
}

const nothingAmiss = (r: CatalogRepairReport) => ({ bad: r.badRecords, missing: r.missingFiles, leftOut: r.leftOut, backing: r.backingMismatches, unrecorded: r.unrecordedFiles });
const NOTHING = { bad: [], missing: [], leftOut: [], backing: [], unrecorded: [] };

async function verifyDeepClean(): Promise<void> {
  const v = await cli(home, ['verify', '--deep', '--json']);
  const reports = JSON.parse(v.stdout) as { vm: string; problems: unknown[]; fingerprintsVerified: number }[];
  expect(reports.flatMap((x) => x.problems), v.stdout).toEqual([]);
  expect(v.code).toBe(0);
}

describe('losing the catalog loses nothing', () => {
  let archive: string;

  beforeAll(async () => {
    home = tempHome();
    // Backups at most hourly within a process: a restore must take what is newer from the records.
    writeFileSync(join(home, 'config.json'), JSON.stringify({ catalog: { backupIntervalSeconds: 3600 } }));
    lib = openLib(home);
    await lib.vms.create('w', { image: 'demo', disks: [{ sizeBytes: 128 * MiB }] });
    await lib.vms.start('w');
    await write(lib, 'w', 'a');
    await lib.snapshots.create('w', 'S0', { description: 'memory' });
    await write(lib, 'w', 'b');
    await lib.snapshots.create('w', 'S1', { memory: false, description: 'disk only' });
    await lib.snapshots.revert('w', 'S0', { force: true });
    await write(lib, 'w', 'c');
    await lib.snapshots.create('w', 'S2');
    await write(lib, 'w', 'd');
    await lib.snapshots.clone('w', 'S1', 'cl');
    archive = join(home, '..', `${basename(home)}-s2.vmsnap`);
    await lib.transfer.export('w', 'S2', archive);
    await lib.transfer.import(archive, { name: 'imp' });
    await lib.fingerprint('w');
  });
  afterAll(() => {
    lib.close();
    cleanupHome(home);
    rmSync(archive, { force: true });
  });

  it('deleted entirely: every command says so with the two ways back; --rebuild-catalog brings back every VM, snapshot, parent, current, config and fingerprint', async () => {
    const want = dump();
    expect(lib.ctx.catalog.records.check()).toEqual([]);
    lib.close();
    for (const f of ['', '-wal', '-shm']) rmSync(`${catalogPath()}${f}`, { force: true });

    for (const args of [['list'], ['info', 'w'], ['snapshot', 'list', 'w'], ['snapshot', 'create', 'w', 'X'], ['df'], ['recover']]) {
      await expectCatalogError(args, /the catalog .*catalog\.sqlite is missing/);
    }
    const asJson = await cli(home, ['list', '--json']);
    expect(JSON.parse(asJson.stderr)).toMatchObject({ error: { code: 'CATALOG_ERROR', hint: expect.stringMatching(TWO_WAYS) } });

    const dry = await repair(['--rebuild-catalog', '--dry-run']);
    expect(dry.vms.map((v) => [v.name, v.snapshots, v.current])).toEqual([
      ['cl', [], null],
      ['imp', ['S2'], 'S2'],
      ['w', ['S0', 'S1', 'S2'], 'S2'],
    ]);
    expect(nothingAmiss(dry)).toEqual(NOTHING);
    expect(existsSync(catalogPath()), 'a dry run changes nothing').toBe(false);

    const r = await repair(['--rebuild-catalog']);
    expect(nothingAmiss(r)).toEqual(NOTHING);
    expect(r).toMatchObject({ mode: 'rebuild', oldCatalog: null, lostFound: null, recovery: { operations: [], orphansRemoved: [] } });
    lib = openLib(home);
    expect(dump()).toEqual(want);
    expect(lib.ctx.catalog.records.check()).toEqual([]);
    await verifyDeepClean();
  });

  it('after the rebuild every snapshot reverts to its own content; the running VM, the linked clone and the imported VM carry on', async () => {
    // QEMU ran on through the rebuild.
    expect((await lib.vms.status('w')).state).toBe('running');
    expect(await files(lib, 'w')).toEqual(['a', 'c', 'd']);
    for (const [snap, want] of [['S1', ['a', 'b']], ['S0', ['a']], ['S2', ['a', 'c']]] as const) {
      await lib.snapshots.revert('w', snap, { force: true, start: true });
      expect(await files(lib, 'w'), `files of ${snap}`).toEqual(want);
    }
    await lib.vms.start('cl');
    expect(await files(lib, 'cl')).toEqual(['a', 'b']);
    await write(lib, 'cl', 'e');
    await lib.snapshots.create('cl', 'C1', { memory: false });
    await lib.vms.stop('cl', { force: true });
    await lib.snapshots.revert('imp', 'S2', { force: true });
    expect(await files(lib, 'imp')).toEqual(['a', 'c']);
    await lib.vms.stop('imp', { force: true });
    await verifyDeepClean();
  }, 300_000); // four boots under TCG: a loaded machine needs more than the default two minutes

  it('bytes overwritten: every command and the API answer CATALOG_ERROR with the two ways back; --from-backup (CLI or API) restores the newest sound backup, reconciled with the records', async () => {
    const taken = await lib.ctx.backups.take();
    // Changes after the newest backup: only the records have them.
    await lib.snapshots.create('w', 'S3');
    await lib.snapshots.delete('w', 'S2');
    writeFileSync(join(home, 'backups', 'catalog-29990101T000000000Z.sqlite'), Buffer.alloc(8192, 1)); // newest, and no database
    const want = dump();
    const { root, pageSize } = {
      root: (lib.ctx.catalog.db.prepare("SELECT rootpage FROM sqlite_master WHERE name = 'vms'").get() as { rootpage: number }).rootpage,
      pageSize: lib.ctx.catalog.db.pragma('page_size', { simple: true }) as number,
    };
    lib.close();
    overwrite(catalogPath(), (root - 1) * pageSize + 8, Buffer.alloc(32, 0xa5));

    // A domain whose files exist: import-libvirt reads them before it opens the catalog.
    const libvirtXml = () => {
      const disk = join(home, '..', `${basename(home)}-lv.qcow2`);
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '16M']);
      const xml = join(home, '..', `${basename(home)}-lv.xml`);
      writeFileSync(
        xml,
        `<domain type='qemu'><name>lv</name><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='q35'>hvm</type></os>` +
          `<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${disk}'/><target dev='vda' bus='virtio'/></disk></devices></domain>`,
      );
      return xml;
    };
    const damaged = /the catalog .*catalog\.sqlite is damaged: database disk image is malformed/;
    // Every command of the CLI's tree, each once; the test below fails when a new one is not here.
    const everyCommand = [
      ['list'],
      ['info', 'w'],
      ['status', 'w'],
      ['create', 'new', '--disk', '16M'],
      ['set', 'w', '--cpus', '2'],
      ['rm', 'cl'],
      ['start', 'cl'],
      ['stop', 'w'],
      ['pause', 'w'],
      ['resume', 'w'],
      ['exec', 'w', 'true'],
      ['console', 'w'],
      ['snapshot', 'list', 'w'],
      ['snapshot', 'tree', 'w'],
      ['snapshot', 'show', 'w', 'S0'],
      ['snapshot', 'create', 'w', 'X'],
      ['snapshot', 'revert', 'w', 'S0', '--force'],
      ['snapshot', 'delete', 'w', 'S0'],
      ['snapshot', 'protect', 'w', 'S0'],
      ['snapshot', 'unprotect', 'w', 'S0'],
      ['policy', 'set', 'w', '--schedule', '@hourly', '--keep-last', '2'],
      ['policy', 'show', 'w'],
      ['policy', 'list'],
      ['policy', 'rm', 'w'],
      ['policy', 'run', 'w'],
      ['prune', 'w'],
      ['clone', 'w', 'S0', 'c2'],
      ['export', 'w', 'S0', `${archive}.2`],
      ['import', archive, 'imp2'],
      ['import-libvirt', libvirtXml(), 'lv'],
      ['df'],
      ['doctor'],
      ['verify'],
      ['fingerprint', 'w'],
      ['recover'],
      ['files', 'w', 'S0', '/'],
      ['cp', 'w', 'S0:/dev/vda/a', join(home, '..', `${basename(home)}-a`)],
      ['restore-file', 'w', 'S0', '/dev/vda/a'],
      ['diff', 'w', 'S0'],
      ['search', 'w', 'a*'],
    ];
    for (const args of everyCommand) {
      await expectCatalogError(args, /the catalog .*catalog\.sqlite (is damaged|fails SQLite's integrity check)/);
    }
    const program = (await import('../src/cli/main.js')).buildProgram();
    const leaves = (cmd: Command, prefix: string[] = []): string[] =>
      cmd.commands.flatMap((c) => (c.commands.length > 0 ? leaves(c, [...prefix, c.name()]) : [[...prefix, c.name()].join(' ')]));
    const tried = new Set(everyCommand.map((a) => (a[0] === 'snapshot' || a[0] === 'policy' ? `${a[0]} ${a[1]}` : a[0]!)));
    // serve stays up through a damaged catalog (its routes answer CATALOG_ERROR, below).
    expect(leaves(program).filter((c) => !tried.has(c) && c !== 'serve'), 'commands not tried against a damaged catalog').toEqual([]);
    await expectCatalogError(['list'], damaged);

    const dry = await repair(['--from-backup', '--dry-run']);
    expect(dry.backup?.path, 'the newest sound backup; the garbage one is skipped').toBe(taken.path);
    expect(dry.oldCatalog, 'a dry run moves nothing').toBeNull();

    // The server stays up through the damage, and repairs the catalog it runs on (as recover --from-backup would).
    const server = await serve({ home, port: 0 });
    try {
      for (const path of ['/api/vms', '/api/vms/w/snapshots']) {
        const res = await fetch(`${server.url}${path}`);
        expect(res.status, path).toBe(500);
        const body = (await res.json()) as { error: { code: string; message: string; hint: string } };
        expect(body.error).toMatchObject({ code: 'CATALOG_ERROR', message: expect.stringMatching(damaged), hint: expect.stringMatching(TWO_WAYS) });
      }
      const api = apiClient(() => server.url);
      await api.refused('POST', '/api/catalog/repair', { mode: 'backup' }, 400, 'INVALID_ARGUMENT', 'mode');
      const op = await api.succeed(await api.call('POST', '/api/catalog/repair', { mode: 'from-backup' }));
      expect(op.kind).toBe('catalog-repair');
      const r = op.result as CatalogRepairReport;
      expect(r.backup?.path, 'the newest sound backup; the garbage one is skipped').toBe(taken.path);
      expect(nothingAmiss(r)).toEqual(NOTHING);
      expect(r.vms.find((v) => v.name === 'w')).toMatchObject({ snapshots: ['S0', 'S1', 'S3'], current: 'S3', source: 'records' });
      expect(existsSync(r.oldCatalog!), 'the damaged catalog is kept aside').toBe(true);
      const list = await api.call('GET', '/api/vms');
      expect(list.status, 'the server runs on the new catalog').toBe(200);
      expect((list.json as { name: string }[]).map((v) => v.name).sort()).toEqual(['cl', 'imp', 'w']);
    } finally {
      await server.close();
    }

    lib = openLib(home);
    expect(dump()).toEqual(want);
    await verifyDeepClean();
    expect(await files(lib, 'w')).toEqual(['a', 'c']);
  });

  it('a record with a wrong checksum or from a newer vmsnap is reported and skipped, never trusted; recover rewrites it from a sound catalog', async () => {
    const before = dump();
    const cl = lib.vms.get('cl');
    const imp = lib.vms.get('imp');
    const clRecord = vmRecordPath(lib.ctx.paths.records, cl.id);
    writeFileSync(clRecord, readFileSync(clRecord, 'utf8').replace('"name": "cl"', '"name": "cm"'));
    const s2 = lib.ctx.catalog.findSnapshot(imp.id, 'S2')!;
    const s2Record = snapshotRecordPath(lib.ctx.paths.records, imp.id, s2.id);
    const body = (JSON.parse(readFileSync(s2Record, 'utf8')) as { body: unknown }).body;
    writeFileSync(s2Record, recordText(SNAPSHOT_RECORD, body).replace(`"version": ${RECORD_VERSION}`, '"version": 99'));

    const r = await repair(['--rebuild-catalog', '--dry-run'], 1);
    expect(r.badRecords).toHaveLength(2);
    expect(r.badRecords).toEqual(
      expect.arrayContaining([
        { path: clRecord, problem: expect.stringMatching(/does not match its checksum/) },
        { path: s2Record, problem: expect.stringMatching(/written by a newer vmsnap \(record version 99/) },
      ]),
    );
    expect(r.vms.map((v) => v.name)).toEqual(['imp', 'w']);
    expect(r.vms.find((v) => v.name === 'imp')).toMatchObject({ snapshots: [], current: null });
    expect(r.leftOut.map((l) => l.what)).toEqual([`snapshot ${s2.id}`, 'its current snapshot']);
    // The clone's own layers and the skipped snapshot's memory state (manifest, RAM image, device state) are named by no usable record: kept, listed, never removed.
    const unnamed = [...lib.ctx.catalog.listLayers(cl.id).map((l) => l.path), ...memoryStateFiles(s2.stateFile)];
    expect(r.unrecordedFiles.map((u) => u.path).sort()).toEqual([...unnamed].sort());
    expect(unnamed.every((p) => existsSync(p))).toBe(true);
    expect(dump()).toEqual(before);

    const rec = await cli(home, ['recover']);
    expect(rec.code, rec.stderr).toBe(0);
    expect(rec.stdout).toMatch(/rewrote the records of 2 VMs/);
    expect(lib.ctx.catalog.records.check()).toEqual([]);
    await verifyDeepClean();
  });
});
