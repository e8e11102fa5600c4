/**
 * CLI round trip: how long `vmsnap --help` and `vmsnap list --json` take from the shell
 * (process start to exit), run as users run them: the `vmsnap` command (bin/vmsnap) of this
 * checkout, and of the package as npm installs it (a symlink to a copy with no src/). Beside
 * them `node -e 0`, the floor any Node CLI stands on, started as bin/vmsnap starts Node
 * (without NODE_EXTRA_CA_CERTS: see bin/vmsnap). No QEMU: the VMs listed are stopped ones with
 * small blank disks and disk-only snapshots.
 */
import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ownNodeEnv } from '../src/util/process.js';
import { Vmsnap } from '../src/vmsnap.js';
import { cleanupHome, tempHome } from '../test/helpers.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CHECKOUT_BIN = join(ROOT, 'bin', 'vmsnap');

export interface CliRow {
  name: string;
  unit: 'ms';
  vmsnap: number;
  vmsnapRuns: number[];
  raw: number;
  rawRuns: number[];
  target: string;
}

function timeOnce(command: string, argv: string[], env: NodeJS.ProcessEnv): number {
  const t0 = performance.now();
  const r = spawnSync(command, argv, { env, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
  const ms = performance.now() - t0;
  if (r.status !== 0) throw new Error(`${command} ${argv.join(' ')} exited ${r.status ?? r.signal}: ${r.stderr}`);
  return ms;
}

/**
 * The package as `npm install -g` lays it out: its files (package.json, bin/, dist/; no src/,
 * so no freshness check of dist/) in lib/node_modules/vmsnap, its dependencies beside them, and
 * bin/vmsnap a symlink to the package's command. Returns that command.
 */
function installedCopy(dir: string): string {
  const pkg = join(dir, 'lib', 'node_modules', 'vmsnap');
  mkdirSync(pkg, { recursive: true });
  for (const f of ['package.json', 'bin', 'dist']) cpSync(join(ROOT, f), join(pkg, f), { recursive: true });
  symlinkSync(join(ROOT, 'node_modules'), join(pkg, 'node_modules'));
  mkdirSync(join(dir, 'bin'));
  symlinkSync(join(pkg, 'bin', 'vmsnap'), join(dir, 'bin', 'vmsnap'));
  return join(dir, 'bin', 'vmsnap');
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
  const install = mkdtempSync(join(tmpdir(), 'vmsnap-installed-'));
  try {
    // One round first, so that the checkout's dist/ is up to date before it is copied.
    timeOnce(CHECKOUT_BIN, ['--version'], process.env);
    const installedBin = installedCopy(install);
    const base = { ...process.env, VMSNAP_NO_BACKGROUND_FINGERPRINT: '1' };
    const nodeEnv = ownNodeEnv();
    const node = process.execPath;
    const measures = [
      { name: 'node -e 0 (the floor)', command: node, argv: ['-e', '0'], env: nodeEnv },
      { name: 'CLI round trip: --help', command: CHECKOUT_BIN, argv: ['--help'], env: { ...base, VMSNAP_HOME: empty } },
      { name: 'CLI round trip: list --json, no VMs', command: CHECKOUT_BIN, argv: ['list', '--json'], env: { ...base, VMSNAP_HOME: empty } },
      { name: `CLI round trip: list --json, ${vmCount} VMs`, command: CHECKOUT_BIN, argv: ['list', '--json'], env: { ...base, VMSNAP_HOME: full } },
      { name: `CLI round trip: list (table), ${vmCount} VMs`, command: CHECKOUT_BIN, argv: ['list'], env: { ...base, VMSNAP_HOME: full } },
      { name: 'installed package: --help', command: installedBin, argv: ['--help'], env: { ...base, VMSNAP_HOME: empty } },
      { name: `installed package: list --json, ${vmCount} VMs`, command: installedBin, argv: ['list', '--json'], env: { ...base, VMSNAP_HOME: full } },
      // What Node alone costs here when started with the certificates (bin/vmsnap's reason).
      ...(process.env.NODE_EXTRA_CA_CERTS
        ? [{ name: 'node -e 0 with NODE_EXTRA_CA_CERTS set', command: node, argv: ['-e', '0'], env: process.env, target: '(not vmsnap)' as string | undefined }]
        : []),
    ];
    const times = measures.map(() => [] as number[]);
    for (let round = 0; round <= runs; round++) {
      measures.forEach((m, i) => {
        const ms = timeOnce(m.command, m.argv, m.env);
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
      target: ('target' in m ? m.target : undefined) ?? '≤ 150 ms',
    }));
  } finally {
    cleanupHome(empty);
    cleanupHome(full);
    rmSync(install, { recursive: true, force: true });
  }
}
