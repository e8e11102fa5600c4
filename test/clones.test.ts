import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fileBytes } from '../src/util/files.js';
import { findOrphans } from '../src/operations/recovery.js';
import type { Vmsnap } from '../src/vmsnap.js';
import { cleanupHome, cli, COUNTER, files, mountTmpfs, openLib, sh, skipBecause, tempHome, TMPFS_NEEDS_ROOT, waitFor, write } from './helpers.js';


describe('clones, storage accounting and health', () => {
  let home: string;
  let lib: Vmsnap;
  beforeAll(async () => {
    home = tempHome();
    lib = openLib(home);
    await lib.vms.create('src', { image: 'demo', disks: [{ sizeBytes: 256 * 1024 ** 2 }] });
    await lib.vms.start('src');
  });
  afterAll(() => {
    lib.close();
    cleanupHome(home);
  });

  it('forks two running clones from a memory snapshot: each carries on from its value, with its own MAC', async () => {
    await sh(lib, 'src', `echo a > /data/a && sync && ${COUNTER}`);
    await waitFor(async () => Number(await sh(lib, 'src', 'cat /tmp/counter')) > 0, { what: 'the guest counter to start' });
    const before = Number(await sh(lib, 'src', 'cat /tmp/counter'));
    await lib.snapshots.create('src', 'S1');
    const r = await lib.snapshots.clone('src', 'S1', 'fork', { count: 2, start: true });
    expect(r.clones.map((c) => c.name)).toEqual(['fork-1', 'fork-2']);
    expect(r.clones.every((c) => c.forked && c.state === 'running' && c.identitySet)).toBe(true);
    const macs = new Set<string>();
    for (const c of r.clones) {
      const n = Number(await sh(lib, c.name, 'cat /tmp/counter'));
      expect(n).toBeGreaterThanOrEqual(before); // carried on, not restarted
      const mac = (await sh(lib, c.name, 'cat /sys/class/net/eth0/address')).trim();
      expect(mac).toBe(c.mac);
      macs.add(mac);
      expect((await sh(lib, c.name, 'hostname')).trim()).toBe(c.name);
      expect(await files(lib, c.name)).toEqual(['a']);
    }
    expect(macs.size).toBe(2);
    expect(macs.has(lib.vms.get('src').config.nics[0]!.mac)).toBe(false);
    for (const c of r.clones) {
      await lib.vms.stop(c.name, { force: true });
      await lib.vms.remove(c.name);
    }
  });

  it('a linked clone of an inner snapshot of a branched tree: its own files, writes kept apart, survives the snapshot being deleted', async () => {
    // S1 ─┬─ S2 (b) ─ S3 (c)        clone from S2
    //     └─ S4 (d)
    await write(lib, 'src', 'b');
    await lib.snapshots.create('src', 'S2');
    await write(lib, 'src', 'c');
    await lib.snapshots.create('src', 'S3');
    await lib.snapshots.revert('src', 'S1', { force: true });
    await write(lib, 'src', 'd');
    await lib.snapshots.create('src', 'S4');

    const t0 = performance.now();
    const r = await lib.snapshots.clone('src', 'S2', 'lin', { start: true });
    expect(r.clones[0]).toMatchObject({ name: 'lin', mode: 'linked', forked: true });
    expect(performance.now() - t0).toBeLessThan(60_000);
    expect(await files(lib, 'lin')).toEqual(['a', 'b']);
    await write(lib, 'lin', 'fromclone');
    await write(lib, 'src', 'fromsrc');
    expect(await files(lib, 'lin')).toEqual(['a', 'b', 'fromclone']);
    expect(await files(lib, 'src')).toEqual(['a', 'd', 'fromsrc']);

    // Pinned: refused, naming the clone, nothing changed.
    const refused = await cli(home, ['snapshot', 'delete', 'src', 'S2']);
    expect(refused.code).toBe(5);
    expect(refused.stderr).toMatch(/pinned by its linked clones: lin[\s\S]*--detach-clones/);
    expect(lib.snapshots.list('src').map((s) => s.name)).toContain('S2');
    // An ancestor of it can go: its layer stays for the clone.
    await lib.snapshots.delete('src', 'S1');
    expect(await files(lib, 'lin')).toEqual(['a', 'b', 'fromclone']);

    const ok = await cli(home, ['snapshot', 'delete', 'src', 'S2', '--detach-clones', '--json']);
    expect(ok.code, ok.stderr).toBe(0);
    expect(await files(lib, 'lin')).toEqual(['a', 'b', 'fromclone']);
    expect((await lib.vms.info('lin')).diskChains[0]!.chain).toHaveLength(1);
    expect((await lib.verify('lin')).ok).toBe(true);
    expect((await lib.verify('src', { deep: true })).problems).toEqual([]);
    await lib.snapshots.revert('src', 'S3', { force: true });
    expect(await files(lib, 'src')).toEqual(['a', 'b', 'c']);
  });

  it('removing a linked clone lets its source merge the layers it kept for it', async () => {
    await lib.snapshots.clone('src', 'S3', 'tmpclone');
    const refused = await cli(home, ['rm', 'src']);
    expect(refused.code).toBe(5);
    expect(refused.stderr).toMatch(/linked clones that build on its disks: tmpclone/);
    await lib.vms.remove('tmpclone');
    expect(lib.snapshots.list('src').map((s) => s.name)).toEqual(['S3', 'S4']);
    expect(await findOrphans(lib.ctx)).toEqual([]);
    expect((await lib.verify('src')).ok).toBe(true);
  });

  it('a full clone is independent: it survives its source VM being removed', async () => {
    await lib.snapshots.create('src', 'S5', { memory: false });
    const r = await lib.snapshots.clone('src', 'S5', 'full', { mode: 'full' });
    expect(r.clones[0]!.mode).toBe('full');
    const info = await lib.vms.info('full');
    expect(info.diskChains[0]!.chain).toHaveLength(1);
    const expected = await files(lib, 'src');
    await lib.vms.stop('src', { force: true });
    await lib.vms.remove('src');
    await lib.vms.start('full');
    expect(await files(lib, 'full')).toEqual(expected);
  });

  it('df numbers match the files on disk; doctor flags an aged snapshot and a deep chain', async () => {
    await lib.vms.start('full').catch(() => undefined);
    for (const n of ['D1', 'D2', 'D3']) {
      await write(lib, 'full', n);
      await lib.snapshots.create('full', n, { memory: n !== 'D3' });
    }
    const df = await lib.health.df('full');
    const v = df.vms[0]!;
    const layers = lib.ctx.catalog.listLayers(lib.vms.get('full').id);
    expect(v.layersBytes).toBe(layers.reduce((a, l) => a + fileBytes(l.path), 0));
    const snaps = lib.ctx.catalog.listSnapshots(lib.vms.get('full').id);
    expect(v.statesBytes).toBe(snaps.reduce((a, s) => a + (s.stateFile ? fileBytes(s.stateFile) : 0), 0));
    expect(v.totalBytes).toBe(v.layersBytes + v.statesBytes);
    expect(v.disks[0]!.chainDepth).toBe(4);
    for (const s of v.snapshots) {
      const rec = snaps.find((x) => x.name === s.name)!;
      expect(s.stateBytes).toBe(rec.stateFile ? fileBytes(rec.stateFile) : 0);
      expect(s.reclaimableBytes).toBeGreaterThanOrEqual(s.stateBytes);
    }
    const out = await cli(home, ['df', 'full']);
    expect(out.stdout).toMatch(/SNAPSHOT\s+AGE\s+DELTA\s+STATE FILE\s+DELETE FREES/);

    // Deleting D1 frees what df said (give or take qcow2 metadata).
    const d1 = v.snapshots.find((s) => s.name === 'D1')!;
    const del = await lib.snapshots.delete('full', 'D1');
    expect(del.reclaimedBytes).toBeGreaterThanOrEqual(d1.reclaimableBytes - 1024 * 1024);

    const fresh = await cli(home, ['doctor', '--json']);
    expect(JSON.parse(fresh.stdout).warnings.filter((w: { kind: string }) => w.kind === 'old-snapshot')).toEqual([]);
    const aged = await cli(home, ['doctor', '--json', '--max-depth', '2'], { VMSNAP_NOW: new Date(Date.now() + 4 * 86400_000).toISOString() });
    expect(aged.code).toBe(1);
    const kinds = JSON.parse(aged.stdout).warnings.map((w: { kind: string }) => w.kind);
    expect(kinds).toContain('old-snapshot');
    expect(kinds).toContain('deep-chain');
  });
});

describe('low free space', () => {
  const mnt = join('/tmp', `vs-low-${process.pid}`);
  let tmpfs: ReturnType<typeof mountTmpfs>;
  beforeAll(() => {
    tmpfs = mountTmpfs(mnt, '96m');
  });
  afterAll(() => {
    tmpfs?.unmount();
  });

  it('refuses a new snapshot when free space is under the reserve, and doctor says so', async (ctx) => {
    if (!tmpfs) return skipBecause(ctx, TMPFS_NEEDS_ROOT);
    const home = join(mnt, 'home');
    const c = await cli(home, ['create', 'small', '--disk', '32M']);
    expect(c.code, c.stderr).toBe(0);
    const r = await cli(home, ['snapshot', 'create', 'small', 's1']);
    expect(r.code).toBe(16);
    expect(r.stderr).toMatch(/not taking a snapshot of 'small': .* free .* under the reserve of 1.0 GiB/);
    const doc = await cli(home, ['doctor', '--json']);
    expect(JSON.parse(doc.stdout).warnings.map((w: { kind: string }) => w.kind)).toContain('low-free-space');
    // A lower reserve (config.json) lets it through.
    writeFileSync(join(home, 'config.json'), JSON.stringify({ health: { reserveBytes: 8 * 1024 * 1024 } }));
    const ok = await cli(home, ['snapshot', 'create', 'small', 's1']);
    expect(ok.code, ok.stderr).toBe(0);
  });
});
