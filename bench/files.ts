import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Vmsnap } from '../src/vmsnap.js';
import { sh } from '../test/helpers.js';

/** What a benchmark row needs (bench/run.ts's Row, less the fields it fills itself). */
export interface FilesRow {
  name: string;
  unit: string;
  vmsnap: number;
  vmsnapRuns: number[];
  raw?: number;
  rawRuns?: number[];
  target?: string;
}

/**
 * Guest files (`npm run bench -- --only files`): on the demo guest, a snapshot
 * S0 with a 100 MiB file and 50 small ones, and S1 with those 50 changed.
 * Each run opens one appliance holding both (the boot is timed beside a bare
 * `guestfish --ro -a LAYER run`, the raw libguestfs launch), then lists a
 * directory, copies the 100 MiB file out and diffs S0 and S1: cold (the
 * appliance's first touch of the data), then warm (the same calls again).
 */
export async function filesBenchmarks(lib: Vmsnap, vm: string, runs: number, median: (xs: number[]) => number): Promise<FilesRow[]> {
  await sh(lib, vm, 'mkdir -p /data/many && head -c 104857600 /dev/urandom > /data/big && for i in $(seq 1 50); do echo one-$i > /data/many/f$i; done && sync');
  await lib.snapshots.create(vm, 'files-S0', { memory: false });
  await sh(lib, vm, 'for i in $(seq 1 50); do echo two-$i > /data/many/f$i; done && sync');
  await lib.snapshots.create(vm, 'files-S1', { memory: false });
  const top = lib.ctx.catalog.getLayer(lib.snapshots.show(vm, 'files-S0').disks[0]!.layerId).path;
  const out = mkdtempSync(join(lib.home, 'bench-files-'));
  const m = { boot: [] as number[], raw: [] as number[], listCold: [] as number[], listWarm: [] as number[], cpCold: [] as number[], cpWarm: [] as number[], diffCold: [] as number[], diffWarm: [] as number[] };
  const time = async (xs: number[], fn: () => Promise<unknown>): Promise<void> => {
    const t = performance.now();
    await fn();
    xs.push(performance.now() - t);
  };
  try {
    for (let i = 0; i < runs; i++) {
      process.stderr.write(`files ${i + 1}\n`);
      const t = performance.now();
      execFileSync('guestfish', ['--ro', '-a', top, 'run'], { env: { ...process.env, LIBGUESTFS_BACKEND: 'direct', LIBGUESTFS_BACKEND_SETTINGS: 'force_tcg' }, stdio: 'ignore' });
      m.raw.push(performance.now() - t);
      let s!: Awaited<ReturnType<Vmsnap['files']['open']>>;
      await time(m.boot, async () => {
        s = await lib.files.open(vm, ['files-S0', 'files-S1']);
        await s.filesystems('files-S0'); // the boot is lazy: the first call waits for it
      });
      try {
        for (const [list, cp, diff] of [
          [m.listCold, m.cpCold, m.diffCold],
          [m.listWarm, m.cpWarm, m.diffWarm],
        ] as const) {
          await time(list, () => s.list('files-S0', '/dev/vda/many'));
          const dest = join(out, `big-${i}-${list === m.listCold ? 'cold' : 'warm'}`);
          await time(cp, () => s.copyOut('files-S0', '/dev/vda/big', dest));
          rmSync(dest, { force: true });
          await time(diff, () => s.diff('files-S0', 'files-S1'));
        }
      } finally {
        await s.close();
      }
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
  const ofV = (xs: number[]) => ({ vmsnap: median(xs), vmsnapRuns: xs });
  const mbps = (xs: number[]) => xs.map((x) => 100 / (x / 1000));
  return [
    { name: 'files: appliance boot (2 snapshots, 1 drive each)', unit: 'ms', ...ofV(m.boot), raw: median(m.raw), rawRuns: m.raw },
    { name: 'files: list 50 entries, cold', unit: 'ms', ...ofV(m.listCold) },
    { name: 'files: list 50 entries, warm', unit: 'ms', ...ofV(m.listWarm) },
    { name: 'files: cp 100 MiB out, cold', unit: 'MiB/s', ...ofV(mbps(m.cpCold)) },
    { name: 'files: cp 100 MiB out, warm', unit: 'MiB/s', ...ofV(mbps(m.cpWarm)) },
    { name: 'files: diff, 50 files changed, cold', unit: 'ms', ...ofV(m.diffCold) },
    { name: 'files: diff, 50 files changed, warm', unit: 'ms', ...ofV(m.diffWarm) },
  ];
}
