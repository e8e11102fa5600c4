/**
 * CLI round trip: how long `vmsnap --help` and `vmsnap list --json` take from the shell
 * (process start to exit), beside `node -e 0`, the floor any Node CLI stands on. No QEMU:
 * the VMs listed are stopped ones with small blank disks and disk-only snapshots.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Vmsnap } from '../src/vmsnap.js';
import { cleanupHome, tempHome } from '../test/helpers.js';

const BIN = fileURLToPath(new URL('../bin/vmsnap.cjs', import.meta.url));

export interface CliRow {
  name: string;
  unit: 'ms';
  vmsnap: number;
  vmsnapRuns: number[];
  raw: number;
  rawRuns: number[];
  target: string;
}

function timeOnce(argv: string[], env: Record<string, string>): number {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, argv, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
  const ms = performance.now() - t0;
  if (r.status !== 0) throw new Error(`${argv.join(' ')} exited ${r.status ?? r.signal}: ${r.stderr}`);
  return ms;
}

/** A home with `count` stopped VMs, each with a 16 MiB blank disk and two disk-only snapshots. */
async function homeWithVms(count: number): Promise<string> {
  const home = tempHome();
  const lib = Vmsnap.open({ home });
  try {
    for (let i = 1; i <= count; i++) {
      await lib.vms.create(`vm${i}`, { disks: [{ sizeBytes: 16 * 1024 ** 2 }] });
      await lib.snapshots.create(`vm${i}`, 'a', { memory: false });
      await lib.snapshots.create(`vm${i}`, 'b', { memory: false });
    }
  } finally {
    lib.close();
  }
  return home;
}

/**
 * Each measure's runs are interleaved with the others' (one of each, round after round), so a
 * burst of load on a shared machine hits them all alike; one unmeasured round first warms the
 * page cache and rebuilds dist/ if src/ changed.
 */
export async function cliRoundTrip(runs: number, median: (xs: number[]) => number, vmCount = 5): Promise<CliRow[]> {
  const empty = tempHome();
  const full = await homeWithVms(vmCount);
  try {
    const env = { VMSNAP_NO_BACKGROUND_FINGERPRINT: '1' };
    const measures = [
      { name: 'node -e 0 (the floor)', argv: ['-e', '0'], env: {} },
      { name: 'CLI round trip: --help', argv: [BIN, '--help'], env: { ...env, VMSNAP_HOME: empty } },
      { name: 'CLI round trip: list --json, no VMs', argv: [BIN, 'list', '--json'], env: { ...env, VMSNAP_HOME: empty } },
      { name: `CLI round trip: list --json, ${vmCount} VMs`, argv: [BIN, 'list', '--json'], env: { ...env, VMSNAP_HOME: full } },
      { name: `CLI round trip: list (table), ${vmCount} VMs`, argv: [BIN, 'list'], env: { ...env, VMSNAP_HOME: full } },
    ];
    const times = measures.map(() => [] as number[]);
    for (let round = 0; round <= runs; round++) {
      measures.forEach((m, i) => {
        const ms = timeOnce(m.argv, m.env);
        if (round > 0) times[i]!.push(ms);
      });
    }
    const floor = times[0]!;
    return measures.slice(1).map((m, i) => ({
      name: m.name,
      unit: 'ms' as const,
      vmsnap: median(times[i + 1]!),
      vmsnapRuns: times[i + 1]!,
      raw: median(floor),
      rawRuns: floor,
      target: '≤ 150 ms',
    }));
  } finally {
    cleanupHome(empty);
    cleanupHome(full);
  }
}
