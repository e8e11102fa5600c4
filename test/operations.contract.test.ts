import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { OperationKind } from '../src/contract/operations.js';
import type { CatalogRepairReport, RecoveryReport } from '../src/contract/views.js';
import { findOrphans } from '../src/operations/recovery.js';
import { runtimeFiles } from '../src/qemu/launcher.js';
import { livePid } from '../src/qemu/runtime.js';
import { OPERATIONS } from '../src/registry.js';
import type { Vmsnap } from '../src/vmsnap.js';
import { cleanupHome, cli, files, mountTmpfs, openLib, sh, tempHome, write } from './helpers.js';

/**
 * The fault-injection contract every registered operation goes through: for
 * each of its fault points (every journal step boundary and every named
 * point), run it from the CLI with VMSNAP_FAULT so the process dies there
 * (SIGKILL, like kill -9), run `vmsnap recover`, and check that the data dir
 * is sound (verify --deep clean over every VM, no orphan file, nothing
 * unfinished, the records beside the VMs in agreement with the catalog) and
 * that the VMs are exactly as before the command (rolled back) or as after it
 * (rolled forward). A scenario per kind is required by the compiler:
 * registering an operation without one does not build.
 */

/** What a VM looks like from the outside: enough to tell "as before" from "as after". */
interface VmState {
  disks: number;
  power: 'running' | 'stopped' | 'paused' | 'unknown';
  current: string | null;
  /** snapshot name → parent name */
  snapshots: Record<string, string | null>;
  /** For linked clones: the VMs whose layers this one builds on. */
  buildsOn: string[];
}
interface State {
  vms: Record<string, VmState>;
  extra?: Record<string, unknown>;
}

interface Scenario {
  /** Bring the data dir to where the operation starts from (called before each fault point). */
  setup?: () => Promise<void>;
  /** The CLI command that runs the operation. */
  args: () => string[];
  /** The state the command leaves when it completes, from the one before it. */
  after: (before: State) => State;
  /** Scenario-specific facts to compare too (files outside the catalog, guest files). */
  extra?: () => Promise<Record<string, unknown>>;
  /** Undo what a rolled-forward run did, so the next point starts alike. */
  reset?: () => Promise<void>;
  /** Per fault point, when the command is slow (one that boots a libguestfs appliance: minutes on a loaded host). */
  timeoutMs?: number;
}

let home: string;
let lib: Vmsnap;
const archive = () => join(home, '..', `${home.split('/').pop()}-e1.vmsnap`);
const exportTarget = () => join(home, '..', `${home.split('/').pop()}-out.vmsnap`);
/** A libvirt domain's files: its XML and a qcow2 disk on a raw backing file (adopted, never written). */
const libvirtDir = () => join(home, '..', `${home.split('/').pop()}-libvirt`);
const libvirtDomain = (): void => {
  const dir = libvirtDir();
  if (existsSync(join(dir, 'domain.xml'))) return;
  mkdirSync(dir, { recursive: true });
  execFileSync('qemu-img', ['create', '-q', '-f', 'raw', join(dir, 'base.raw'), '16M']);
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', join(dir, 'top.qcow2')]);
  writeFileSync(
    join(dir, 'domain.xml'),
    `<domain type='qemu'><name>lv</name><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
    <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${join(dir, 'top.qcow2')}'/><target dev='vda' bus='virtio'/></disk></devices></domain>`,
  );
};

async function stateOf(extra?: () => Promise<Record<string, unknown>>): Promise<State> {
  const out: State = { vms: {} };
  for (const vm of lib.ctx.catalog.listVms()) {
    const snaps = lib.ctx.catalog.listSnapshots(vm.id);
    const byId = new Map(snaps.map((s) => [s.id, s.name]));
    const foreign = new Set<string>();
    for (const l of lib.ctx.catalog.listLayers(vm.id)) {
      for (const below of l.backingId ? lib.ctx.catalog.chain(l.backingId) : []) if (below.vmId !== vm.id) foreign.add(lib.ctx.catalog.findVm(below.vmId)?.name ?? below.vmId);
    }
    out.vms[vm.name] = {
      disks: vm.config.disks.length,
      power: (await lib.vms.status(vm.id)).state,
      current: vm.currentSnapshotId ? (byId.get(vm.currentSnapshotId) ?? null) : null,
      snapshots: Object.fromEntries(snaps.map((s) => [s.name, s.parentId ? (byId.get(s.parentId) ?? null) : null])),
      buildsOn: [...foreign].sort(),
    };
  }
  if (extra) out.extra = await extra();
  return out;
}

/** A libguestfs appliance boots in 10 s idle, in minutes on a loaded 2-core host. */
const APPLIANCE_MS = 1_200_000;
process.env.VMSNAP_GUESTFS_LAUNCH_TIMEOUT ??= '900';
const clone = (s: State): State => JSON.parse(JSON.stringify(s)) as State;
const withVm = (s: State, name: string, vm: VmState): State => {
  const a = clone(s);
  a.vms[name] = vm;
  return a;
};
const exists = (name: string) => lib.ctx.catalog.findVm(name) !== undefined;
const removeVm = async (name: string) => {
  if (!exists(name)) return;
  if ((await lib.vms.status(name)).state !== 'stopped') await lib.vms.stop(name, { force: true });
  await lib.vms.remove(name);
};
/** A VM with one blank disk and no OS: cheap to make, enough for operations that need no guest. */
const blank = async (name: string, snapshots: string[] = []) => {
  if (exists(name)) return;
  await lib.vms.create(name, { disks: [{ sizeBytes: 16 * 1024 ** 2 }] });
  for (const s of snapshots) await lib.snapshots.create(name, s);
};
/** The demo VM 'f' running at snapshot S1 with its files a and b. */
const atS1 = async () => {
  await lib.snapshots.revert('f', 'S1', { force: true });
};
const guestFiles = async () => ({ files: (await lib.vms.status('f')).state === 'running' ? await files(lib, 'f') : 'off' });

const scenarios: { [K in OperationKind]: Scenario } = {
  'vm-create': {
    // UEFI: the NVRAM layer and the stored firmware files are made and undone with the disk.
    args: () => ['create', 'nv', '--disk', '16M', '--firmware', 'uefi'],
    after: (b) => withVm(b, 'nv', { disks: 1, power: 'stopped', current: null, snapshots: {}, buildsOn: [] }),
    reset: () => removeVm('nv'),
  },
  'vm-set': {
    setup: () => blank('sv'),
    args: () => ['set', 'sv', '--add-disk', '16M', '--firmware', 'uefi'],
    after: (b) => {
      const a = clone(b);
      a.vms.sv!.disks = 2;
      return a;
    },
    reset: () => removeVm('sv'),
  },
  'vm-rm': {
    setup: () => blank('rv', ['R1']),
    args: () => ['rm', 'rv'],
    after: (b) => {
      const a = clone(b);
      delete a.vms.rv;
      return a;
    },
  },
  'vm-start': {
    setup: async () => {
      await blank('pw');
      if ((await lib.vms.status('pw')).state !== 'stopped') await lib.vms.stop('pw', { force: true });
    },
    args: () => ['start', 'pw'],
    after: (b) => {
      const a = clone(b);
      a.vms.pw!.power = 'running';
      return a;
    },
  },
  'vm-stop': {
    setup: async () => {
      await blank('pw');
      if ((await lib.vms.status('pw')).state === 'stopped') await lib.vms.start('pw');
    },
    args: () => ['stop', 'pw', '--force'],
    after: (b) => {
      const a = clone(b);
      a.vms.pw!.power = 'stopped';
      return a;
    },
  },
  'snapshot-create': {
    setup: atS1,
    args: () => ['snapshot', 'create', 'f', 'X'],
    after: (b) => {
      const a = clone(b);
      a.vms.f!.snapshots.X = 'S1';
      a.vms.f!.current = 'X';
      return a;
    },
    extra: guestFiles,
    reset: async () => {
      if (lib.ctx.catalog.findSnapshot(lib.vms.get('f').id, 'X')) await lib.snapshots.delete('f', 'X');
    },
  },
  'snapshot-revert': {
    setup: atS1,
    args: () => ['snapshot', 'revert', 'f', 'S0', '--force'],
    // Past the kill of the old QEMU a revert only rolls forward, with the VM left off.
    after: (b) => {
      const a = clone(b);
      a.vms.f!.current = 'S0';
      a.vms.f!.power = 'stopped';
      return a;
    },
  },
  'snapshot-delete': {
    setup: async () => {
      await atS1();
      await write(lib, 'f', 't');
      await lib.snapshots.create('f', 'T');
      await write(lib, 'f', 'u');
    },
    args: () => ['snapshot', 'delete', 'f', 'T'],
    after: (b) => {
      const a = clone(b);
      delete a.vms.f!.snapshots.T;
      a.vms.f!.current = 'S1';
      return a;
    },
    // Deleting keeps the present state: the guest's files are all there either way.
    extra: guestFiles,
  },
  'snapshot-delete-all': {
    setup: () => blank('da', ['D1', 'D2']),
    args: () => ['snapshot', 'delete', 'da', '--all'],
    after: (b) => {
      const a = clone(b);
      a.vms.da!.snapshots = {};
      a.vms.da!.current = null;
      return a;
    },
    reset: () => removeVm('da'),
  },
  clone: {
    args: () => ['clone', 'f', 'S1', 'c1'],
    after: (b) => withVm(b, 'c1', { disks: 1, power: 'stopped', current: null, snapshots: {}, buildsOn: ['f'] }),
    reset: () => removeVm('c1'),
  },
  'clone-detach': {
    setup: async () => {
      await blank('dt', ['T1']);
      if (!exists('dtc')) await lib.snapshots.clone('dt', 'T1', 'dtc');
    },
    // The detach runs first, each clone in its own operation, before the delete itself.
    args: () => ['snapshot', 'delete', 'dt', 'T1', '--detach-clones'],
    after: (b) => {
      const a = clone(b);
      a.vms.dtc!.buildsOn = [];
      return a;
    },
    reset: async () => {
      await removeVm('dtc');
      await removeVm('dt');
    },
  },
  consolidate: {
    // Removing a linked clone hands the layers it held back to their VM, to merge what is no longer needed.
    setup: async () => {
      await blank('cs', ['C1']);
      if (!exists('csc')) await lib.snapshots.clone('cs', 'C1', 'csc');
    },
    args: () => ['rm', 'csc'],
    after: (b) => {
      const a = clone(b);
      delete a.vms.csc;
      return a;
    },
    reset: () => removeVm('cs'),
  },
  import: {
    setup: async () => {
      if (existsSync(archive())) return;
      await blank('ex', ['E1']);
      await lib.transfer.export('ex', 'E1', archive());
    },
    args: () => ['import', archive(), 'imp'],
    after: (b) => withVm(b, 'imp', { disks: 1, power: 'stopped', current: 'E1', snapshots: { E1: null }, buildsOn: [] }),
    reset: () => removeVm('imp'),
  },
  'import-libvirt': {
    setup: async () => libvirtDomain(),
    args: () => ['import-libvirt', join(libvirtDir(), 'domain.xml')],
    after: (b) => withVm(b, 'lv', { disks: 1, power: 'stopped', current: null, snapshots: {}, buildsOn: [] }),
    reset: () => removeVm('lv'),
  },
  export: {
    setup: () => blank('ex', ['E1']),
    args: () => ['export', 'ex', 'E1', exportTarget()],
    after: (b) => ({ ...clone(b), extra: { archive: true, partial: false } }),
    extra: async () => ({ archive: existsSync(exportTarget()), partial: existsSync(`${exportTarget()}.partial`) }),
    reset: async () => rmSync(exportTarget(), { force: true }),
  },
  'policy-run': {
    // A blank VM whose policy keeps one snapshot, named p (or p-2 while p is taken): a pass with --now takes one, then prunes the other.
    setup: async () => {
      await blank('pr');
      if (!lib.policies.find('pr')) lib.policies.set('pr', { schedule: '@daily', keepLast: 1, namePattern: 'p' });
      if (lib.snapshots.list('pr').length === 0) await lib.policies.run('pr', { now: true });
    },
    args: () => ['policy', 'run', 'pr', '--now'],
    after: (b) => {
      const a = clone(b);
      const taken = Object.keys(b.vms.pr!.snapshots)[0] === 'p' ? 'p-2' : 'p';
      a.vms.pr!.snapshots = { [taken]: null };
      a.vms.pr!.current = taken;
      return a;
    },
  },
  prune: {
    // Three policy snapshots of a policy that keeps them all, then told to keep the last one: a prune deletes two.
    setup: async () => {
      await blank('pn');
      if (lib.snapshots.list('pn').length === 3) return;
      lib.policies.set('pn', { schedule: '@daily', keepLast: null, namePattern: 'n' });
      for (let i = 0; i < 3; i++) await lib.policies.run('pn', { now: true });
      lib.policies.set('pn', { keepLast: 1 });
    },
    args: () => ['prune', 'pn'],
    after: (b) => {
      const a = clone(b);
      a.vms.pn!.snapshots = { 'n-3': null };
      return a;
    },
    reset: () => removeVm('pn'),
  },
  // A diff against the present state freezes it on temporary layers (and merges them back after the read).
  'files-read': {
    setup: atS1,
    args: () => ['diff', 'f', 'S0', '--stat'],
    after: (b) => clone(b),
    extra: guestFiles,
    timeoutMs: APPLIANCE_MS,
  },
  // A running VM gets the file through its agent: staged beside the target, then renamed into place.
  'restore-file': {
    setup: async () => {
      await atS1();
      await sh(lib, 'f', 'rm /data/b && sync');
    },
    args: () => ['restore-file', 'f', 'S1', '/dev/vda/b'],
    after: (b) => ({ ...clone(b), extra: { files: ['a', 'b'] } }),
    extra: guestFiles,
    timeoutMs: APPLIANCE_MS,
  },
};

/**
 * Operations whose every fault point is proven a second time with the catalog
 * deleted right after the kill: `recover --rebuild-catalog` must restore the
 * journal from the records beside the VMs, and recovery must end the
 * operation as it does with the catalog. (The others share these mechanics:
 * every change reaches the records in the commit's wake, journal rows too.)
 */
const REBUILT_AFTER_KILL: readonly OperationKind[] = ['vm-rm', 'snapshot-create', 'snapshot-revert', 'snapshot-delete', 'import'];

type Outcome = 'rolled_back' | 'rolled_forward';

/** Run the scenario's command from the CLI with a kill -9 at the point. */
async function killAt(kind: OperationKind, point: string, sc: Scenario): Promise<void> {
  const r = await cli(home, sc.args(), { VMSNAP_FAULT: `${kind}:${point}`, VMSNAP_NO_BACKGROUND_FINGERPRINT: '1' });
  expect(r.code, `the fault point ${kind}:${point} must be reached (exit ${r.code}): ${r.stderr}`).toBe(128);
}

function outcomeOf(kind: OperationKind, report: RecoveryReport): Outcome {
  const mine = report.operations.filter((o) => o.kind === kind);
  expect(mine, JSON.stringify(report)).toHaveLength(1);
  return mine[0]!.outcome;
}

/** The data dir is sound (verify --deep clean, no orphan, nothing unfinished, the records agree with the catalog) and the VMs are as before or as after. */
async function expectRecovered(sc: Scenario, before: State, outcome: Outcome): Promise<void> {
  const verify = await cli(home, ['verify', '--deep', '--json']);
  const reports = JSON.parse(verify.stdout) as { vm: string; problems: unknown[] }[];
  expect(reports.flatMap((v) => v.problems), verify.stdout).toEqual([]);
  expect(verify.code).toBe(0);
  expect(await findOrphans(lib.ctx)).toEqual([]);
  expect(lib.ctx.journal.unfinished()).toEqual([]);
  expect(lib.ctx.catalog.records.check()).toEqual([]);
  expect(await stateOf(sc.extra), `${outcome}: the VMs as ${outcome === 'rolled_back' ? 'before' : 'after'}`).toEqual(
    outcome === 'rolled_back' ? before : sc.after(before),
  );
  if (outcome === 'rolled_forward') await sc.reset?.();
}

/** Every point of an operation a kill -9 is proven at: just begun, after each journal step, and the named points. */
const pointsOf = (kind: OperationKind): string[] => {
  const def = OPERATIONS[kind];
  return [...Array.from({ length: def.steps + 1 }, (_, i) => String(i)), ...def.faults];
};

describe('every operation survives kill -9 at every fault point', () => {
  beforeAll(async () => {
    home = tempHome();
    lib = openLib(home);
    await lib.vms.create('f', { image: 'demo', disks: [{ sizeBytes: 128 * 1024 ** 2 }] });
    await lib.vms.start('f');
    await write(lib, 'f', 'a');
    await lib.snapshots.create('f', 'S0');
    await write(lib, 'f', 'b');
    await lib.snapshots.create('f', 'S1');
    await lib.fingerprint('f');
  });
  afterAll(() => {
    lib.close();
    cleanupHome(home);
    rmSync(archive(), { force: true });
    rmSync(exportTarget(), { force: true });
    rmSync(libvirtDir(), { recursive: true, force: true });
  });

  /** How plain recovery ended each kind:point, for the same point with the catalog lost. */
  const outcomes = new Map<string, Outcome>();

  for (const kind of Object.keys(OPERATIONS) as OperationKind[]) {
    const sc = scenarios[kind];
    for (const point of pointsOf(kind)) {
      it(`${kind} killed at ${point}: recovered to as before or as after, nothing lost`, async () => {
        await sc.setup?.();
        const before = await stateOf(sc.extra);
        await killAt(kind, point, sc);
        const rec = await cli(home, ['recover', '--json']);
        expect(rec.code, rec.stderr).toBe(0);
        const outcome = outcomeOf(kind, JSON.parse(rec.stdout) as RecoveryReport);
        outcomes.set(`${kind}:${point}`, outcome);
        await expectRecovered(sc, before, outcome);
      }, sc.timeoutMs);
      if (!REBUILT_AFTER_KILL.includes(kind)) continue;
      it(`${kind} killed at ${point}, then the catalog lost: rebuilt from the records, recovery ends alike`, async () => {
        await sc.setup?.();
        const before = await stateOf(sc.extra);
        await killAt(kind, point, sc);
        lib.close();
        for (const f of ['', '-wal', '-shm']) rmSync(`${join(home, 'catalog.sqlite')}${f}`, { force: true });
        const rebuilt = await cli(home, ['recover', '--rebuild-catalog', '--json']);
        lib = openLib(home);
        expect(rebuilt.code, rebuilt.stdout + rebuilt.stderr).toBe(0);
        const report = JSON.parse(rebuilt.stdout) as CatalogRepairReport;
        expect({ bad: report.badRecords, missing: report.missingFiles, leftOut: report.leftOut, unrecorded: report.unrecordedFiles }).toEqual({
          bad: [],
          missing: [],
          leftOut: [],
          unrecorded: [],
        });
        const outcome = outcomeOf(kind, report.recovery!);
        expect(outcome, 'the same end as recovery with the catalog').toBe(outcomes.get(`${kind}:${point}`));
        await expectRecovered(sc, before, outcome);
      }, sc.timeoutMs);
    }
  }

  it('the demo VM still has every snapshot with its own files', async () => {
    for (const [snap, want] of Object.entries({ S0: ['a'], S1: ['a', 'b'] })) {
      await lib.snapshots.revert('f', snap, { force: true });
      expect(await files(lib, 'f'), `files of ${snap}`).toEqual(want);
    }
  });
});

describe('a rollback whose merge fails loses no write', () => {
  const mnt = join('/tmp', `vs-rb-${process.pid}`);
  let tmpfs: ReturnType<typeof mountTmpfs>;
  beforeAll(() => {
    tmpfs = mountTmpfs(mnt, '200m');
    if (!tmpfs) throw new Error('this test mounts a tmpfs: run it as root (CI does)');
  });
  afterAll(() => {
    tmpfs?.unmount();
  });

  it('snapshot create killed after the switch, QEMU gone, disk full: recovery fails and keeps the overlay; once space is freed it merges every write back', async () => {
    const h = join(mnt, 'home');
    mkdirSync(h, { recursive: true });
    writeFileSync(join(h, 'config.json'), JSON.stringify({ health: { reserveBytes: 0 } }));
    const l = openLib(h);
    try {
      await l.vms.create('rb', { image: 'demo', memoryMiB: 128, disks: [{ sizeBytes: 96 * 1024 ** 2 }] });
      await l.vms.start('rb');
      await sh(l, 'rb', 'echo keep > /data/keep && sync');
      const killed = await cli(h, ['snapshot', 'create', 'rb', 'X', '--no-memory'], { VMSNAP_FAULT: 'snapshot-create:switched' });
      expect(killed.code).toBe(128);
      // Written after the switch: these land in the new overlay only.
      await sh(l, 'rb', 'dd if=/dev/urandom of=/data/late bs=1M count=8 2>/dev/null && md5sum /data/late > /data/late.md5 && sync');
      const sum = await sh(l, 'rb', 'cat /data/late.md5');
      const pid = livePid(runtimeFiles(l.ctx.paths.run, l.vms.get('rb').id))!;
      process.kill(pid, 'SIGKILL');
      const filler = join(mnt, 'filler');
      const free = () => Number(execFileSync('df', ['--output=avail', '-B1', mnt]).toString().split('\n')[1]);
      try {
        writeFileSync(filler, Buffer.alloc(Math.max(0, free() - 64 * 1024)));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
      }
      const failed = await cli(h, ['recover', '--json']);
      expect(failed.code, failed.stdout + failed.stderr).toBe(16); // NO_SPACE
      const unfinished = l.ctx.journal.unfinished();
      expect(unfinished.map((o) => o.kind)).toEqual(['snapshot-create']);
      const plan = unfinished[0]!.plan as { switches: { newPath: string }[] };
      expect(plan.switches.every((s) => existsSync(s.newPath)), 'the overlay holding the late writes is kept').toBe(true);

      rmSync(filler);
      const rec = await cli(h, ['recover', '--json']);
      expect(rec.code, rec.stderr).toBe(0);
      expect(JSON.parse(rec.stdout).operations).toEqual([expect.objectContaining({ kind: 'snapshot-create', outcome: 'rolled_back' })]);
      const verify = await cli(h, ['verify', 'rb', '--deep', '--json']);
      expect(JSON.parse(verify.stdout).problems).toEqual([]);
      await l.vms.start('rb');
      expect((await files(l, 'rb')).sort()).toEqual(['keep', 'late', 'late.md5']);
      expect(await sh(l, 'rb', 'md5sum /data/late')).toBe(sum);
    } finally {
      l.close();
    }
  }, 300_000); // two boots under TCG and five CLI runs: 140 s on a loaded 2-core machine
});
