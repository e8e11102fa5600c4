/**
 * vmsnap benchmarks (`npm run bench`): each vmsnap operation on the demo guest
 * beside the raw QEMU operation it is built on, on the same machine, as medians
 * of several runs and as ratios. Targets are printed beside the figures; they
 * are never asserted in tests (these machines are noisy).
 *
 *   npm run bench -- --runs 5 --json bench/results/latest.json
 *   npm run bench -- --only cli          the CLI round trips alone (no QEMU, about a minute)
 *   npm run bench -- --only big,forks    some sections: cli, snapshots, big, forks, clones, merge, export, boot, files
 *   npm run bench -- --only boot         the Debian guest's boot to its agent, BIOS and UEFI (--boot-runs N, default 3)
 *   npm run bench -- --only files        guest files alone (libguestfs appliances: minutes)
 */
import { execFileSync, spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { GuestAgentClient } from '../src/qemu/guest-agent.js';
import { blockdevArgs, formatNode, runtimeFiles } from '../src/qemu/launcher.js';
import { createImage } from '../src/qemu/qemu-img.js';
import { QmpClient } from '../src/qemu/qmp.js';
import { shellQuote, tuneMigration } from '../src/snapshot/live.js';
import { livePid, waitForExit } from '../src/qemu/runtime.js';
import { launchDisks } from '../src/vm/power.js';
import { Vmsnap } from '../src/vmsnap.js';
import { cleanupHome, sh, tempHome } from '../test/helpers.js';
import { debianBoots } from './boot.js';
import { cliRoundTrip } from './cli.js';
import { filesBenchmarks } from './files.js';

interface Row {
  name: string;
  unit: string;
  /** Medians; every run's figure is kept beside them, to show how noisy the machine was. */
  vmsnap: number;
  raw?: number;
  vmsnapRuns: number[];
  rawRuns?: number[];
  target?: string;
}

/** The median of a measure's runs, and the runs themselves. */
const ofVmsnap = (xs: number[]): { vmsnap: number; vmsnapRuns: number[] } => ({ vmsnap: median(xs), vmsnapRuns: xs });
const ofRaw = (xs: number[]): { raw: number; rawRuns: number[] } => ({ raw: median(xs), rawRuns: xs });

const args = process.argv.slice(2);
const RUNS = Number(args[args.indexOf('--runs') + 1] || 5) || 5;
const JSON_OUT = args.includes('--json') ? args[args.indexOf('--json') + 1] : undefined;
/** `--only cli,snapshots,big,forks,clones,merge,export,boot,files`: some sections (the whole run takes a while). */
const ONLY = args.includes('--only') ? (args[args.indexOf('--only') + 1] ?? '').split(',') : undefined;
const want = (section: string): boolean => !ONLY || ONLY.includes(section);
/** The sections on the shared demo guest (qemuBenchmarks). */
const DEMO_SECTIONS = ['snapshots', 'big', 'forks', 'clones', 'merge', 'export'];
/** A boot of the Debian guest takes tens of seconds under TCG: fewer runs. */
const BOOT_RUNS = Number(args[args.indexOf('--boot-runs') + 1] || 3) || 3;
/** A CLI round trip is short, and a shared machine's noise large beside it: at least 15 runs. */
const CLI_RUNS = Math.max(15, RUNS);

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

async function rawQmp(lib: Vmsnap, vm: string): Promise<QmpClient> {
  const rec = lib.vms.get(vm);
  return QmpClient.connect(runtimeFiles(lib.ctx.paths.run, rec.id).qmpSocket, { timeoutMs: 10_000, retryUntilMs: 5000 });
}

/**
 * Raw QEMU: a bare blockdev-snapshot-sync of the running VM's disk (its round trip is the I/O pause).
 * Its wall time includes making the overlay, beforehand as vmsnap does (mode "existing"): QEMU would otherwise write
 * the active node's json: name as the backing file, which outgrows qcow2's 1023-byte limit on a deep chain.
 */
async function rawDiskSnapshot(lib: Vmsnap, vm: string, dir: string, i: number): Promise<{ pauseMs: number; wallMs: number }> {
  const rec = lib.vms.get(vm);
  const active = lib.ctx.catalog.activeLayers(rec.id).disk0!;
  const activePath = lib.ctx.catalog.getLayer(active).path;
  const overlay = join(dir, `raw-${i}.qcow2`);
  const t0 = performance.now();
  const size = (JSON.parse(execFileSync('qemu-img', ['info', '-U', '--output=json', activePath]).toString()) as { 'virtual-size': number })['virtual-size'];
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', activePath, '-F', 'qcow2', overlay, String(size)]);
  const qmp = await rawQmp(lib, vm);
  try {
    const t1 = performance.now();
    await qmp.execute('blockdev-snapshot-sync', { 'node-name': formatNode(active), 'snapshot-file': overlay, 'snapshot-node-name': `raw${i}`, format: 'qcow2', mode: 'existing' });
    const t2 = performance.now();
    return { pauseMs: t2 - t1, wallMs: t2 - t0 };
  } finally {
    await qmp.close();
  }
}

/**
 * Raw QEMU: a bare background-snapshot migration to a file; pause from its STOP/RESUME events, wall until
 * completed, and wall until the file is on disk too (fsync, as vmsnap does before it reports a snapshot).
 */
async function rawMemorySave(lib: Vmsnap, vm: string, path: string): Promise<{ pauseMs: number; wallMs: number; durableWallMs: number }> {
  const qmp = await rawQmp(lib, vm);
  try {
    await tuneMigration(qmp);
    await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'background-snapshot', state: true }] });
    const stop = qmp.waitForEvent('STOP', { timeoutMs: 60_000 });
    const resume = qmp.waitForEvent('RESUME', { timeoutMs: 60_000 });
    const t0 = performance.now();
    await qmp.execute('migrate', { uri: `exec:cat > ${shellQuote(path)}` });
    for (;;) {
      const m = await qmp.execute<{ status: string }>('query-migrate');
      if (m.status === 'completed') break;
      if (m.status === 'failed') throw new Error('raw migration failed');
      await new Promise((r) => setTimeout(r, 5));
    }
    const wallMs = performance.now() - t0;
    execFileSync('sync', ['-f', path]);
    const durableWallMs = performance.now() - t0;
    const [s, r] = await Promise.all([stop, resume]);
    return { pauseMs: r.timeMs - s.timeMs, wallMs, durableWallMs };
  } finally {
    await qmp.close();
  }
}

/** A QEMU started by the bench itself (the raw operation), until quit. */
interface RawQemu {
  /** From spawn to the guest running. */
  runningMs: number;
  pid: number;
  agentSocket: string;
  quit(): Promise<void>;
}

/**
 * Raw QEMU: start a QEMU with -incoming defer on the same disks and load the same (whole,
 * classic) state file, until the guest runs: the full load a revert did before.
 */
async function rawStart(lib: Vmsnap, vm: string, statePath: string, dir: string, tag: string): Promise<RawQemu> {
  const rec = lib.vms.get(vm);
  const info = await lib.vms.info(vm);
  const overlay = join(dir, `incoming-${tag}-${Date.now()}.qcow2`);
  const disks = launchDisks(lib.ctx, rec);
  const base = disks[0]!.chain[1]!;
  await createImage(overlay, { backing: base.path, backingFormat: base.format });
  const sock = join(dir, `raw-${tag}.sock`);
  const pidFile = join(dir, `raw-${tag}.pid`);
  const t0 = performance.now();
  const argv = [
    '-machine', 'q35,accel=tcg', '-m', `${info.config.memoryMiB}M`, '-smp', String(info.config.cpus), '-nodefaults', '-no-user-config', '-display', 'none', '-vga', 'none',
    '-qmp', `unix:${sock},server=on,wait=off`, '-chardev', `socket,id=qmpev,path=${sock}.ev,server=on,wait=off`, '-mon', 'chardev=qmpev,mode=control',
    '-chardev', `socket,id=ser0,path=${sock}.con,server=on,wait=off`, '-serial', 'chardev:ser0',
    '-chardev', `socket,id=qga0,path=${sock}.qga,server=on,wait=off`, '-device', 'virtio-serial-pci,id=vser0', '-device', 'virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0',
    ...blockdevArgs({ slot: 'disk0', chain: [{ id: `raw${tag}`, path: overlay, format: 'qcow2' }, base] }),
    '-device', `virtio-blk-pci,drive=lraw${tag},id=disk0,serial=disk0`,
    ...info.config.nics.flatMap((n) => ['-netdev', `user,id=${n.id}`, '-device', `virtio-net-pci,netdev=${n.id},mac=${n.mac},id=${n.id}-dev`]),
    '-pidfile', pidFile, '-daemonize', '-incoming', 'defer',
  ];
  if (info.config.boot.image === 'demo') {
    const img = join(lib.ctx.paths.imageCache, 'demo');
    argv.push('-kernel', join(img, 'vmlinuz'), '-initrd', join(img, 'initrd.img'), '-append', info.config.boot.append ?? '');
  }
  await new Promise<void>((resolve, reject) => {
    const c = spawn('qemu-system-x86_64', argv, { stdio: 'inherit' });
    c.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`qemu exit ${code}`))));
  });
  const qmp = await QmpClient.connect(sock, { retryUntilMs: 5000 });
  await qmp.execute('migrate-incoming', { uri: `exec:cat ${shellQuote(statePath)}` });
  for (;;) {
    const st = await qmp.queryStatus();
    if (st.status !== 'inmigrate') break;
    await new Promise((r) => setTimeout(r, 2));
  }
  const runningMs = performance.now() - t0;
  const pid = Number(readFileSync(pidFile, 'utf8').trim());
  return {
    runningMs,
    pid,
    agentSocket: `${sock}.qga`,
    quit: async () => {
      await qmp.execute('quit').catch(() => undefined);
      await qmp.close();
      await waitForExit(pid, 10_000);
      rmSync(overlay, { force: true });
    },
  };
}

/** Raw QEMU: a full load until the guest runs, then the guest agent's first reply and the RSS then. */
async function rawIncoming(lib: Vmsnap, vm: string, statePath: string, dir: string): Promise<{ runningMs: number; agentMs: number; rss: Rss }> {
  const t0 = performance.now();
  const q = await rawStart(lib, vm, statePath, dir, 'in');
  try {
    const agentMs = await agentReplyMs(q.agentSocket, t0);
    return { runningMs: q.runningMs, agentMs, rss: rssOf(q.pid) };
  } finally {
    await q.quit();
  }
}

interface Rss {
  rssMiB: number;
  anonMiB: number;
  fileMiB: number;
}

function rssOf(pid: number): Rss {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const mib = (k: string): number => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(s)?.[1] ?? NaN) / 1024;
  return { rssMiB: mib('VmRSS'), anonMiB: mib('RssAnon'), fileMiB: mib('RssFile') };
}

/** Proportional set size: a page shared by N processes counts 1/N in each (from smaps_rollup). */
function pssBytes(pid: number): number {
  const s = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  return Number(/^Pss:\s+(\d+) kB/m.exec(s)?.[1] ?? NaN) * 1024;
}

/** From t0 until the guest agent answers a ping. */
async function agentReplyMs(socket: string, t0: number): Promise<number> {
  const agent = await GuestAgentClient.waitUntilReady(socket, { timeoutMs: 120_000 });
  const ms = performance.now() - t0;
  await agent.close();
  return ms;
}

/** One revert with memory (how long the VM was down, the whole command, to the agent's first reply, RSS then), and the raw full load of the same instant's state. */
interface RevertRuns {
  down: number[];
  wall: number[];
  agent: number[];
  rss: number[];
  raw: number[];
  agentRaw: number[];
  rssRaw: number[];
}

const revertRuns = (): RevertRuns => ({ down: [], wall: [], agent: [], rss: [], raw: [], agentRaw: [], rssRaw: [] });

async function revertAgainstRaw(lib: Vmsnap, vm: string, snap: string, rawState: string, scratch: string, into: RevertRuns): Promise<void> {
  settle();
  const t0 = performance.now();
  const r = await lib.snapshots.revert(vm, snap, { force: true });
  const files = runtimeFiles(lib.ctx.paths.run, lib.vms.get(vm).id);
  into.agent.push(await agentReplyMs(files.agentSocket, t0));
  into.rss.push(rssOf(livePid(files)!).rssMiB);
  into.down.push(r.resumeMs ?? NaN);
  into.wall.push(r.ms ?? NaN);
  settle();
  const raw = await rawIncoming(lib, vm, rawState, scratch);
  into.raw.push(raw.runningMs);
  into.agentRaw.push(raw.agentMs);
  into.rssRaw.push(raw.rss.rssMiB);
}

/** Fill a guest's RAM with `mib` MiB of non-zero data in tmpfs (a random MiB doubled up: fast under TCG). */
async function fillGuest(lib: Vmsnap, vm: string, mib: number): Promise<void> {
  const r = await lib.vms.exec(
    vm,
    [
      '/bin/sh',
      '-c',
      `mount -o remount,size=${mib + 256}m /tmp && head -c 1048576 /dev/urandom > /tmp/f0 && i=0; while [ $i -lt 6 ]; do cat /tmp/f$i /tmp/f$i > /tmp/f$((i+1)); rm /tmp/f$i; i=$((i+1)); done; j=0; while [ $j -lt ${mib / 64} ]; do cat /tmp/f6; j=$((j+1)); done > /tmp/fill; rm /tmp/f6`,
    ],
    { timeoutMs: 900_000 },
  );
  if (r.exitCode !== 0) throw new Error(`filling the guest's RAM failed: ${r.stderr}`);
}

const MiB = 1024 ** 2;

/**
 * Write back every dirty page before a timed contender starts: otherwise the data the
 * previous step left in the page cache is flushed during (and billed to) the next one.
 */
const settle = (): void => void execFileSync('sync');
// Large enough that the merge, not the fixed cost around it (a storage daemon's start, the journal), is measured.
const DELTA = 512 * MiB;

function qemuIo(path: string, cmd: string): void {
  execFileSync('qemu-io', ['-f', 'qcow2', '-c', cmd, path], { stdio: 'ignore' });
}

/**
 * Consolidation throughput: a snapshot between two 512 MiB deltas at different
 * offsets is deleted (so the merge must copy 512 MiB), against `qemu-img
 * commit` of two identical files. Online: the VM runs (block-stream); offline:
 * it is off (qemu-img).
 */
async function consolidation(lib: Vmsnap, scratch: string, online: boolean, i: number): Promise<{ vmsnapMs: number; rawMs: number; vcpuPauseMs: number; pivotMs?: number }> {
  const name = `merge-${online ? 'on' : 'off'}-${i}`;
  await lib.vms.create(name, { image: 'demo', memoryMiB: 128, disks: [{ sizeBytes: 2 * DELTA }] });
  const vm = lib.vms.get(name);
  const layerOf = () => lib.ctx.catalog.getLayer(lib.ctx.catalog.activeLayers(vm.id).disk0!).path;
  qemuIo(layerOf(), `write -P 0x5a ${DELTA} ${DELTA}`);
  await lib.snapshots.create(name, 'S', { memory: false });
  qemuIo(layerOf(), `write -P 0xa5 0 ${DELTA}`);
  // The same two files for the raw operation.
  const rawBase = join(scratch, `${name}-base.qcow2`);
  const rawTop = join(scratch, `${name}-top.qcow2`);
  const chain = launchDisks(lib.ctx, vm)[0]!.chain;
  copyFileSync(chain[1]!.path, rawBase);
  copyFileSync(chain[0]!.path, rawTop);
  execFileSync('qemu-img', ['rebase', '-u', '-b', rawBase, '-F', 'qcow2', rawTop]);

  let vcpuPauseMs = 0;
  let pivotMs: number | undefined;
  let watcher: QmpClient | undefined;
  if (online) {
    await lib.vms.start(name);
    watcher = await QmpClient.connect(runtimeFiles(lib.ctx.paths.run, vm.id).eventsSocket, { retryUntilMs: 5000 });
    let stop = 0;
    let ready = 0;
    watcher.onEvent((e) => {
      if (e.event === 'STOP') stop = e.timeMs;
      if (e.event === 'RESUME' && stop) vcpuPauseMs += e.timeMs - stop;
      if (e.event === 'JOB_STATUS_CHANGE' && e.data.status === 'ready') ready = e.timeMs;
      if (e.event === 'JOB_STATUS_CHANGE' && e.data.status === 'concluded' && ready) pivotMs = e.timeMs - ready;
    });
  }
  let vmsnapMs = 0;
  let rawMs = 0;
  const contenders = [
    async () => {
      settle();
      const t0 = performance.now();
      await lib.snapshots.delete(name, 'S');
      vmsnapMs = performance.now() - t0;
    },
    async () => {
      settle();
      const t1 = performance.now();
      execFileSync('qemu-img', ['commit', '-q', '-d', rawTop]);
      rawMs = performance.now() - t1;
    },
  ];
  // Alternate which goes first: whichever did was measured systematically slower here.
  for (const c of i % 2 ? contenders.reverse() : contenders) await c();
  await watcher?.close();
  process.stderr.write(`  ${name}: vmsnap ${vmsnapMs.toFixed(0)} ms, qemu-img commit ${rawMs.toFixed(0)} ms\n`);
  if (online) await lib.vms.stop(name, { force: true });
  await lib.vms.remove(name);
  return { vmsnapMs, rawMs, vcpuPauseMs, ...(pivotMs !== undefined ? { pivotMs } : {}) };
}

/** The rows of a series of reverts; raw: QEMU loading the whole state (spawn to running). */
function revertRows(rows: Row[], what: string, rv: RevertRuns): void {
  rows.push({ name: `revert (${what}): VM down, kill→running`, unit: 'ms', ...ofVmsnap(rv.down), ...ofRaw(rv.raw), target: '≤ 150 ms' });
  rows.push({ name: `revert (${what}): whole command`, unit: 'ms', ...ofVmsnap(rv.wall), ...ofRaw(rv.raw) });
  rows.push({ name: `revert (${what}): to first guest-agent reply`, unit: 'ms', ...ofVmsnap(rv.agent), ...ofRaw(rv.agentRaw) });
  rows.push({ name: `revert (${what}): QEMU RSS after resume`, unit: 'MiB', ...ofVmsnap(rv.rss), ...ofRaw(rv.rssRaw) });
}

/**
 * A 2 GiB guest with 1.5 GiB in use: a revert maps its RAM image, against a full load of
 * the same state (raw); then a memory snapshot of the reverted guest.
 */
async function bigGuest(lib: Vmsnap, scratch: string, rows: Row[], revert256: number): Promise<void> {
  process.stderr.write('2 GiB guest\n');
  await lib.vms.create('big', { image: 'demo', memoryMiB: 2048 });
  try {
    await lib.vms.start('big');
    await fillGuest(lib, 'big', 1536);
    await lib.snapshots.create('big', 'B');
    const rawState = join(scratch, 'big.state');
    await rawMemorySave(lib, 'big', rawState);
    const rv = revertRuns();
    const pause: number[] = [];
    const saveWall: number[] = [];
    for (let i = 0; i < Math.min(RUNS, 3); i++) {
      process.stderr.write(`  run ${i + 1}\n`);
      await revertAgainstRaw(lib, 'big', 'B', rawState, scratch, rv);
      if (i < 2) {
        settle();
        const t1 = performance.now();
        const s = await lib.snapshots.create('big', `L${i}`);
        saveWall.push(performance.now() - t1);
        pause.push(s.pauseMs ?? NaN);
      }
    }
    revertRows(rows, '2 GiB, 1.5 in use', rv);
    rows.push({ name: 'revert: 2 GiB / 256 MiB VM down', unit: 'ratio', ...ofVmsnap(rv.down.map((x) => x / revert256)), target: '≤ 1.3' });
    rows.push({ name: 'memory snapshot of a reverted 2 GiB VM: pause', unit: 'ms', ...ofVmsnap(pause), target: '≤ 10 ms' });
    rows.push({ name: 'memory snapshot of a reverted 2 GiB VM: wall', unit: 'ms', ...ofVmsnap(saveWall) });
  } finally {
    await lib.vms.stop('big', { force: true }).catch(() => undefined);
    await lib.vms.remove('big');
  }
}

/**
 * Forks: 10 running clones of a 1 GiB guest from one memory snapshot (each maps the same
 * RAM image), until all run with their identity set, and their PSS together right after;
 * raw: 10 QEMUs each loading the whole state, side by side.
 */
async function forks(lib: Vmsnap, scratch: string, rows: Row[]): Promise<void> {
  process.stderr.write('forks\n');
  const N = 10;
  await lib.vms.create('fk', { image: 'demo', memoryMiB: 1024 });
  try {
    await lib.vms.start('fk');
    await fillGuest(lib, 'fk', 512);
    await lib.snapshots.create('fk', 'F');
    const used = lib.ctx.catalog.findSnapshot(lib.vms.get('fk').id, 'F')!.meta.ramDataBytes!;
    const rawState = join(scratch, 'fk.state');
    await rawMemorySave(lib, 'fk', rawState);
    await lib.vms.stop('fk', { force: true });
    const ms: number[] = [];
    const pss: number[] = [];
    for (let i = 0; i < Math.min(RUNS, 2); i++) {
      process.stderr.write(`  run ${i + 1}\n`);
      settle();
      const t0 = performance.now();
      const r = await lib.snapshots.clone('fk', 'F', `fk${i}`, { count: N, start: true });
      ms.push(performance.now() - t0);
      pss.push(r.clones.reduce((a, c) => a + pssBytes(livePid(runtimeFiles(lib.ctx.paths.run, c.id))!), 0) / used);
      for (const c of r.clones) {
        await lib.vms.stop(c.name, { force: true });
        await lib.vms.remove(c.name);
      }
    }
    settle();
    const t0 = performance.now();
    const raws = await Promise.all(Array.from({ length: N }, (_, k) => rawStart(lib, 'fk', rawState, scratch, `fk${k}`)));
    const rawMs = performance.now() - t0;
    const rawPss = raws.reduce((a, q) => a + pssBytes(q.pid), 0) / used;
    for (const q of raws) await q.quit();
    rows.push({ name: `fork ${N} × 1 GiB (${(used / MiB).toFixed(0)} MiB used): all running`, unit: 'ms', ...ofVmsnap(ms), ...ofRaw([rawMs]), target: '≤ 5000 ms' });
    rows.push({ name: `fork ${N} × 1 GiB: PSS of all / one's used RAM`, unit: 'ratio', ...ofVmsnap(pss), ...ofRaw([rawPss]), target: '≤ 2' });
  } finally {
    await lib.vms.remove('fk').catch(() => undefined);
  }
}

async function main(): Promise<void> {
  process.env.VMSNAP_ACCEL ??= 'tcg';
  const rows: Row[] = [];
  if (want('cli')) {
    process.stderr.write(`CLI round trip: ${CLI_RUNS} runs\n`);
    rows.push(...(await cliRoundTrip(CLI_RUNS, median)));
  }
  if (!ONLY || ONLY.some((s) => DEMO_SECTIONS.includes(s))) await qemuBenchmarks(rows);
  if (want('boot')) {
    for (const b of await debianBoots(BOOT_RUNS)) {
      rows.push({ name: `Debian guest: boot to agent, ${b.firmware.toUpperCase()} (${BOOT_RUNS} runs)`, unit: 'ms', ...ofVmsnap(b.ms) });
    }
  }
  if (want('files')) await filesBench(rows);
  report(rows);
}

async function qemuBenchmarks(rows: Row[]): Promise<void> {
  const home = tempHome();
  const scratch = join(home, 'raw');
  mkdirSync(scratch, { recursive: true });
  const lib = Vmsnap.open({ home });
  try {
    await lib.vms.create('bench', { image: 'demo', memoryMiB: 256 });
    await lib.vms.start('bench');
    await sh(lib, 'bench', 'echo ready > /data/ready && sync');
    // Let the guest settle after boot, like a VM in use would be.
    await sh(lib, 'bench', "setsid /bin/sh -c 'while :; do date > /tmp/now; sleep 0.05; done' </dev/null >/dev/null 2>&1 &");

    const diskPause: number[] = [];
    const diskWall: number[] = [];
    const diskRawPause: number[] = [];
    const diskRawWall: number[] = [];
    const quiesce: number[] = [];
    const memPause: number[] = [];
    const memWall: number[] = [];
    const memRawPause: number[] = [];
    const memRawWall: number[] = [];
    const memRawDurableWall: number[] = [];
    const stateRatio: number[] = [];
    const rv = revertRuns();
    const lazyPause: number[] = [];
    const lazyWall: number[] = [];

    let r256 = NaN;
    if (want('snapshots')) {
      for (let i = 0; i < RUNS; i++) {
        process.stderr.write(`run ${i + 1}/${RUNS}\n`);
        settle();
        let t0 = performance.now();
        const d = await lib.snapshots.create('bench', `disk-${i}`, { memory: false });
        diskWall.push(performance.now() - t0);
        diskPause.push(d.pauseMs ?? NaN);
        if (typeof d.meta.quiesceMs === 'number') quiesce.push(d.meta.quiesceMs);
        settle();
        const rawDisk = await rawDiskSnapshot(lib, 'bench', scratch, i);
        diskRawPause.push(rawDisk.pauseMs);
        diskRawWall.push(rawDisk.wallMs);
        // The raw overlay sits on top now; put the VM back on vmsnap's chain by reverting (fresh QEMU).
        await lib.snapshots.revert('bench', `disk-${i}`, { force: true, start: true });
        await sh(lib, 'bench', 'true');

        settle();
        t0 = performance.now();
        const m = await lib.snapshots.create('bench', `mem-${i}`);
        memWall.push(performance.now() - t0);
        memPause.push(m.pauseMs ?? NaN);
        stateRatio.push(m.stateBytes / (256 * 1024 ** 2));
        const rawState = join(scratch, `raw-${i}.state`);
        settle();
        const raw = await rawMemorySave(lib, 'bench', rawState);
        memRawPause.push(raw.pauseMs);
        memRawWall.push(raw.wallMs);
        memRawDurableWall.push(raw.durableWallMs);

        await revertAgainstRaw(lib, 'bench', `mem-${i}`, rawState, scratch, rv);

        // A memory snapshot of the VM now running from a RAM image (pre-copy: see README).
        settle();
        t0 = performance.now();
        const l = await lib.snapshots.create('bench', `lazy-${i}`);
        lazyWall.push(performance.now() - t0);
        lazyPause.push(l.pauseMs ?? NaN);
      }
      rows.push({ name: 'disk-only snapshot: guest I/O pause', unit: 'ms', ...ofVmsnap(diskPause), ...ofRaw(diskRawPause), target: '≤ 10 ms' });
      if (quiesce.length) rows.push({ name: 'disk-only snapshot: fs frozen (fsfreeze→thaw)', unit: 'ms', ...ofVmsnap(quiesce) });
      rows.push({ name: 'disk-only snapshot: wall time', unit: 'ms', ...ofVmsnap(diskWall), ...ofRaw(diskRawWall) });
      rows.push({ name: 'memory snapshot (256 MiB): guest pause', unit: 'ms', ...ofVmsnap(memPause), ...ofRaw(memRawPause), target: '≤ 20 ms' });
      rows.push({ name: 'memory snapshot (256 MiB): wall time', unit: 'ms', ...ofVmsnap(memWall), ...ofRaw(memRawWall) });
      rows.push({ name: 'memory snapshot: wall vs raw + fsync', unit: 'ms', ...ofVmsnap(memWall), ...ofRaw(memRawDurableWall), target: 'ratio ≤ 1.5' });
      rows.push({ name: 'state file size / guest RAM', unit: 'ratio', ...ofVmsnap(stateRatio) });
      revertRows(rows, '256 MiB', rv);
      rows.push({ name: 'memory snapshot of a reverted VM: pause', unit: 'ms', ...ofVmsnap(lazyPause), ...ofRaw(memRawPause), target: '≤ 10 ms' });
      rows.push({ name: 'memory snapshot of a reverted VM: wall', unit: 'ms', ...ofVmsnap(lazyWall), ...ofRaw(memRawWall) });
      r256 = median(rv.down);
    }

    if (want('big')) await bigGuest(lib, scratch, rows, r256);
    if (want('forks')) await forks(lib, scratch, rows);

    if (want('clones')) {
      // Clones: a linked clone of a snapshot with a large disk, a fork from memory, a full clone against qemu-img convert.
      await sh(lib, 'bench', 'dd if=/dev/urandom of=/data/clone-data bs=1M count=256 2>/dev/null && sync');
      await lib.snapshots.create('bench', 'clone-src');
      const linked: number[] = [];
      const fork: number[] = [];
      const fullMbps: number[] = [];
      const convertMbps: number[] = [];
      const convertFlushedMbps: number[] = [];
      for (let i = 0; i < Math.min(RUNS, 3); i++) {
        process.stderr.write(`clones ${i + 1}\n`);
        let t = performance.now();
        await lib.snapshots.clone('bench', 'clone-src', `lc-${i}`);
        linked.push(performance.now() - t);
        t = performance.now();
        await lib.snapshots.clone('bench', 'clone-src', `fk-${i}`, { start: true });
        fork.push(performance.now() - t);
        await lib.vms.stop(`fk-${i}`, { force: true });
        const top = lib.ctx.catalog.getLayer(lib.snapshots.show('bench', 'clone-src').disks[0]!.layerId).path;
        const usedMiB = execFileSync('qemu-img', ['info', '--output=json', '-U', '--backing-chain', top]).toString();
        const bytes = (JSON.parse(usedMiB) as { 'actual-size': number }[]).reduce((a, x) => a + x['actual-size'], 0);
        settle();
        t = performance.now();
        await lib.snapshots.clone('bench', 'clone-src', `fc-${i}`, { mode: 'full' });
        fullMbps.push(bytes / MiB / ((performance.now() - t) / 1000));
        for (const [cache, into] of [['unsafe', convertMbps], ['writeback', convertFlushedMbps]] as const) {
          const dst = join(scratch, `convert-${i}-${cache}.qcow2`);
          settle();
          t = performance.now();
          execFileSync('qemu-img', ['convert', '-U', '-t', cache, '-O', 'qcow2', top, dst]);
          into.push(bytes / MiB / ((performance.now() - t) / 1000));
          rmSync(dst, { force: true });
        }
        for (const n of [`lc-${i}`, `fk-${i}`, `fc-${i}`]) await lib.vms.remove(n);
      }
      rows.push({ name: 'linked clone (1 GiB disk)', unit: 'ms', ...ofVmsnap(linked), target: '< 1000 ms' });
      rows.push({ name: 'fork a clone from memory until it runs', unit: 'ms', ...ofVmsnap(fork) });
      rows.push({ name: 'full clone vs qemu-img convert', unit: 'MiB/s', ...ofVmsnap(fullMbps), ...ofRaw(convertMbps), target: 'ratio ≥ 0.9' });
      rows.push({ name: 'full clone vs convert flushed (-t writeback)', unit: 'MiB/s', ...ofVmsnap(fullMbps), ...ofRaw(convertFlushedMbps), target: 'ratio ≥ 0.9' });
    }

    await lib.vms.stop('bench', { force: true });
    if (want('merge')) {
      for (const online of [false, true]) {
        const runs = [];
        for (let i = 0; i < Math.min(RUNS, 3); i++) {
          process.stderr.write(`consolidation ${online ? 'online' : 'offline'} ${i + 1}\n`);
          runs.push(await consolidation(lib, scratch, online, i));
        }
        const mbps = (ms: number) => DELTA / MiB / (ms / 1000);
        rows.push({
          name: `delete, ${online ? 'online (VM running)' : 'offline'}: merge throughput`,
          unit: 'MiB/s',
          ...ofVmsnap(runs.map((r) => mbps(r.vmsnapMs))),
          ...ofRaw(runs.map((r) => mbps(r.rawMs))),
          target: 'ratio ≥ 0.9',
        });
        if (online) {
          rows.push({ name: 'online delete: vCPU pause (STOP→RESUME)', unit: 'ms', ...ofVmsnap(runs.map((r) => r.vcpuPauseMs)), target: '≤ 10 ms' });
          const pivots = runs.flatMap((r) => (r.pivotMs === undefined ? [] : [r.pivotMs]));
          if (pivots.length) rows.push({ name: 'online delete: I/O switch-over (READY→done)', unit: 'ms', ...ofVmsnap(pivots) });
        }
      }
    }

    // Export: a disk-only snapshot whose chain holds 256 MiB more data, written as an archive (flattened,
    // checksummed, fsynced), against `qemu-img convert` of the same chain: as is (no flush), and with
    // -t writeback, which flushes the copy to disk at the end as an archive must be. Then import.
    if (want('export')) {
      const vmRec = lib.vms.get('bench');
      qemuIo(lib.ctx.catalog.getLayer(lib.ctx.catalog.activeLayers(vmRec.id).disk0!).path, `write -P 0x6b ${256 * MiB} ${256 * MiB}`);
      await lib.snapshots.create('bench', 'export-src', { memory: false });
      const top = lib.ctx.catalog.getLayer(lib.snapshots.show('bench', 'export-src').disks[0]!.layerId).path;
      const exportMs: number[] = [];
      const plainMs: number[] = [];
      const durableMs: number[] = [];
      const importMbps: number[] = [];
      let diskBytes = 0;
      const lockedMs: number[] = [];
      const convert = (cache: 'unsafe' | 'writeback', i: number): number => {
        const dst = join(scratch, `export-raw-${i}-${cache}.qcow2`);
        settle();
        const t = performance.now();
        execFileSync('qemu-img', ['convert', '-U', '-t', cache, '-O', 'qcow2', top, dst]);
        const ms = performance.now() - t;
        rmSync(dst, { force: true });
        return ms;
      };
      convert('unsafe', -1); // warm the page cache: every contender then reads the chain from memory
      for (let i = 0; i < Math.min(RUNS, 3); i++) {
        process.stderr.write(`export ${i + 1}\n`);
        const archive = join(scratch, `export-${i}.vmsnap`);
        // Rotate the order, so that no contender always runs right after another's writeback.
        const steps = [
          async () => {
            settle();
            const t = performance.now();
            const r = await lib.transfer.export('bench', 'export-src', archive);
            diskBytes = r.disks[0]!.bytes;
            exportMs.push(performance.now() - t);
            lockedMs.push(r.lockedMs);
          },
          async () => void plainMs.push(convert('unsafe', i)),
          async () => void durableMs.push(convert('writeback', i)),
        ];
        for (let k = 0; k < steps.length; k++) await steps[(i + k) % steps.length]!();
        settle();
        const t = performance.now();
        await lib.transfer.import(archive, { name: `imported-${i}` });
        importMbps.push(statSync(archive).size / MiB / ((performance.now() - t) / 1000));
        await lib.vms.remove(`imported-${i}`);
        rmSync(archive, { force: true });
      }
      const mbps = (ms: number[]) => ms.map((x) => diskBytes / MiB / (x / 1000));
      rows.push({ name: 'export vs qemu-img convert', unit: 'MiB/s', ...ofVmsnap(mbps(exportMs)), ...ofRaw(mbps(plainMs)), target: 'ratio ≥ 0.9' });
      rows.push({ name: 'export vs convert flushed (-t writeback)', unit: 'MiB/s', ...ofVmsnap(mbps(exportMs)), ...ofRaw(mbps(durableMs)), target: 'ratio ≥ 0.9' });
      rows.push({ name: 'export: VM lock held (flattening)', unit: 'ms', ...ofVmsnap(lockedMs) });
      rows.push({ name: 'import throughput (verify + extract)', unit: 'MiB/s', ...ofVmsnap(importMbps) });
    }
  } finally {
    const pid = livePid(runtimeFiles(lib.ctx.paths.run, lib.vms.get('bench').id));
    if (pid) process.kill(pid, 'SIGKILL');
    if (pid) await waitForExit(pid, 5000);
    lib.close();
    cleanupHome(home);
  }
}

/** Guest files on a demo VM of its own (bench/files.ts); appliance boots are long, so at most 3 runs. */
async function filesBench(rows: Row[]): Promise<void> {
  const home = tempHome();
  const lib = Vmsnap.open({ home });
  try {
    await lib.vms.create('files', { image: 'demo', disks: [{ sizeBytes: 256 * 1024 * 1024 }] });
    await lib.vms.start('files');
    rows.push(...(await filesBenchmarks(lib, 'files', Math.min(RUNS, 3), median)));
  } finally {
    const pid = livePid(runtimeFiles(lib.ctx.paths.run, lib.vms.get('files').id));
    if (pid) process.kill(pid, 'SIGKILL');
    lib.close();
    cleanupHome(home);
  }
}

function report(rows: Row[]): void {
  const fmt = (n: number | undefined, unit: string) => (n === undefined ? '-' : unit === 'ratio' ? n.toFixed(3) : n.toFixed(1));
  const accel = process.env.VMSNAP_ACCEL;
  const only = (s: string): boolean => ONLY?.every((x) => x === s) ?? false;
  const what = only('cli') ? 'CLI round trips' : only('boot') ? `Debian guest under ${accel}` : only('files') ? `guest files on the demo guest under ${accel}` : `demo guest under ${accel}`;
  process.stdout.write(`vmsnap benchmarks — medians of ${RUNS} runs (${CLI_RUNS} for the CLI, beside node -e 0), ${what}\n\n`);
  const range = (xs: number[] | undefined, unit: string) => (xs && xs.length > 1 ? `${fmt(Math.min(...xs), unit)}–${fmt(Math.max(...xs), unit)}` : '');
  process.stdout.write('raw: the QEMU operation (or qemu-img) vmsnap builds on; for a CLI round trip, node -e 0\n');
  process.stdout.write(`${'measure'.padEnd(46)} ${'vmsnap'.padStart(9)} ${'raw'.padStart(9)} ${'ratio'.padStart(6)}  ${'target'.padEnd(12)} runs: vmsnap | raw (min–max)\n`);
  for (const r of rows) {
    const ratio = r.raw ? (r.vmsnap / r.raw).toFixed(2) : '-';
    // For throughput, higher is better: the ratio is vmsnap/raw all the same.
    const runs = [range(r.vmsnapRuns, r.unit), range(r.rawRuns, r.unit)].filter(Boolean).join(' | ');
    process.stdout.write(`${r.name.padEnd(46)} ${fmt(r.vmsnap, r.unit).padStart(9)} ${fmt(r.raw, r.unit).padStart(9)} ${ratio.padStart(6)}  ${(r.target ?? '').padEnd(12)} ${runs}\n`);
  }
  if (JSON_OUT) {
    mkdirSync(dirname(JSON_OUT), { recursive: true });
    writeFileSync(JSON_OUT, JSON.stringify({ runs: RUNS, cliRuns: CLI_RUNS, at: new Date().toISOString(), rows }, null, 2));
  }
}

await main();
