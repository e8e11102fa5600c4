/**
 * Measurements for the split memory state (src/memory): how fast the splitter runs, how
 * long hashing a RAM image takes, and what a revert from a RAM image costs beside a
 * classic revert that loads the whole migration stream.
 *
 *   npx tsx bench/ram-split.ts split [--ram-mib 512]          synthetic stream, no QEMU
 *   npx tsx bench/ram-split.ts qemu [--mem-mib 256 --fill-mib 32 --runs 3]
 *   npx tsx bench/ram-split.ts qemu --mem-mib 2048 --fill-mib 1536 --runs 2
 *
 * "spawn to running" is from spawning QEMU to QEMU reporting the guest running (polling
 * QMP every millisecond). RSS is read from /proc 2 s after the guest runs again.
 * These machines are shared and noisy: CPU time is printed beside wall time.
 */
import { execSync, spawn, type ChildProcess } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { loadDeviceState } from '../src/memory/revert.js';
import { ramImageArgs } from '../src/qemu/launcher.js';
import { sha256File } from '../src/memory/ram-image.js';
import { openSplitSink, splitToFiles } from '../src/memory/split-files.js';
import { StreamBuilder, pageOf, q35Blocks, type PageRecord } from '../src/memory/stream-builder.js';
import { StreamSplitter } from '../src/memory/stream-split.js';
import { GuestAgentClient } from '../src/qemu/guest-agent.js';
import { QmpClient } from '../src/qemu/qmp.js';
import { sleep } from '../src/util/process.js';

const argv = process.argv.slice(2);
const phase = argv[0] ?? 'split';
const opt = (name: string, dflt: number): number => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? Number(argv[i + 1]) : dflt;
};
const MiB = 1024 * 1024;
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!;
const fmt = (xs: number[]): string => `${median(xs).toFixed(0)} (runs ${xs.map((x) => x.toFixed(0)).join(', ')})`;

function cpuMs(since: NodeJS.CpuUsage): number {
  const u = process.cpuUsage(since);
  return (u.user + u.system) / 1000;
}

// ---------------------------------------------------------------- synthetic split

async function benchSplit(): Promise<void> {
  const ramMiB = opt('ram-mib', 512);
  const ram = ramMiB * MiB;
  // Like a real guest: runs of data pages, runs of zero pages; 60 % data.
  const b = new StreamBuilder({ blocks: q35Blocks(ram) }).header().ramStart();
  const pages = ram / 4096;
  const distinct = Array.from({ length: 64 }, (_, i) => pageOf(i + 1));
  let recs: PageRecord[] = [];
  for (let p = 0; p < pages; p++) {
    const data = p % 1000 < 600;
    recs.push(data ? { block: 'pc.ram', offset: p * 4096, data: distinct[p % 64]! } : { block: 'pc.ram', offset: p * 4096, zero: true });
    if (recs.length === 16384) {
      b.ramSection('part', recs);
      recs = [];
    }
  }
  b.ramSection('part', recs).devices([{ idstr: 'cpu', payload: Buffer.alloc(300_000, 7) }]);
  const { stream } = b.build();
  console.log(`synthetic stream: ${ramMiB} MiB RAM, ${(stream.length / MiB).toFixed(0)} MiB stream`);

  for (const chunk of [64 * 1024, MiB]) {
    const chunks: Buffer[] = [];
    for (let i = 0; i < stream.length; i += chunk) chunks.push(stream.subarray(i, i + chunk));
    const wall: number[] = [];
    const cpu: number[] = [];
    for (let run = 0; run < 4; run++) {
      const s = new StreamSplitter({ onRam: () => undefined, onDevice: () => undefined });
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      for (const c of chunks) await s.push(c);
      await s.end();
      wall.push(performance.now() - t0);
      cpu.push(cpuMs(c0));
    }
    const gbps = (ms: number): string => (stream.length / ms / 1e6).toFixed(2);
    console.log(`parser only, ${chunk / 1024} KiB chunks: wall ${fmt(wall)} ms = ${gbps(median(wall))} GB/s; CPU ${fmt(cpu)} ms = ${gbps(median(cpu))} GB/s per core`);
  }

  const dir = mkdtempSync(join(tmpdir(), 'vs-bench-split-'));
  try {
    const wall: number[] = [];
    const cpu: number[] = [];
    let hashMs = 0;
    for (let run = 0; run < 3; run++) {
      rmSync(join(dir, 'ram'), { force: true });
      rmSync(join(dir, 'dev'), { force: true });
      const chunks: Buffer[] = [];
      for (let i = 0; i < stream.length; i += 64 * 1024) chunks.push(stream.subarray(i, i + 64 * 1024));
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      const r = await splitToFiles(Readable.from(chunks), join(dir, 'ram'), join(dir, 'dev'), { snapshotId: 'bench', hashRamImage: false });
      wall.push(performance.now() - t0);
      cpu.push(cpuMs(c0));
      if (run === 0) console.log(`  (split ${r.timings.splitMs.toFixed(0)} ms + fsync ${r.timings.fsyncMs.toFixed(0)} ms)`);
    }
    const gbps = (ms: number): string => (stream.length / ms / 1e6).toFixed(2);
    console.log(`splitToFiles to ${tmpdir()} (writes + fsync, no RAM hash): wall ${fmt(wall)} ms = ${gbps(median(wall))} GB/s; CPU ${fmt(cpu)} ms`);
    // Over a unix socket from another process, as QEMU sends it: what this process spends per GB.
    const streamFile = join(dir, 'stream.bin');
    await new Promise<void>((res, rej) => createWriteStream(streamFile).end(stream, () => res()).on('error', rej));
    for (let run = 0; run < 3; run++) {
      rmSync(join(dir, 'ram2'), { force: true });
      rmSync(join(dir, 'dev2'), { force: true });
      const sock = join(dir, 'sink.sock');
      const sink = await openSplitSink(sock, join(dir, 'ram2'), join(dir, 'dev2'), { snapshotId: 'bench', hashRamImage: false });
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      const child = spawn(process.execPath, ['-e', `require('fs').createReadStream(${JSON.stringify(streamFile)}, {highWaterMark: 1 << 20}).pipe(require('net').connect(${JSON.stringify(sock)}))`], { stdio: 'inherit' });
      const r = await sink.done;
      sink.close();
      const ms = performance.now() - t0;
      const u = process.cpuUsage(c0);
      await new Promise((res) => (child.exitCode !== null ? res(null) : child.once('exit', res)));
      console.log(
        `unix socket → splitToFiles (run ${run + 1}): ${ms.toFixed(0)} ms = ${(stream.length / ms / 1e6).toFixed(2)} GB/s incl. fsync ${r.timings.fsyncMs.toFixed(0)} ms ` +
          `(${(stream.length / r.timings.splitMs / 1e6).toFixed(2)} GB/s before it); this process's CPU user ${(u.user / 1000).toFixed(0)} ms + sys ${(u.system / 1000).toFixed(0)} ms`,
      );
    }
    const t0 = performance.now();
    await sha256File(join(dir, 'ram'));
    hashMs = performance.now() - t0;
    const st = statSync(join(dir, 'ram'));
    console.log(`sha256 of the ${ramMiB} MiB RAM image (${((st.blocks * 512) / MiB).toFixed(0)} MiB allocated): ${hashMs.toFixed(0)} ms`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------- QEMU

function imageDir(): string {
  const cache = process.env.VMSNAP_IMAGE_CACHE
    ? resolve(process.env.VMSNAP_IMAGE_CACHE)
    : join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'vmsnap', 'images');
  return join(cache, 'demo');
}

interface Vm {
  proc: ChildProcess;
  qmp: QmpClient;
  dir: string;
  spawnedAt: number;
  /** Spawn to QMP connected. */
  qmpReadyMs: number;
}

function rss(pid: number): { rssMiB: number; anonMiB: number; fileMiB: number } {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string): number => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(s)?.[1] ?? NaN) / 1024;
  return { rssMiB: Math.round(kb('VmRSS')), anonMiB: Math.round(kb('RssAnon')), fileMiB: Math.round(kb('RssFile')) };
}

async function startVm(dir: string, memMiB: number, extra: string[], machineProp?: string): Promise<Vm> {
  mkdirSync(dir, { recursive: true });
  const img = imageDir();
  const args = [
    ...['-machine', machineProp ? `q35,${machineProp}` : 'q35', '-accel', 'tcg', '-m', String(memMiB), '-smp', '1'],
    ...['-nodefaults', '-no-user-config', '-display', 'none'],
    ...['-kernel', join(img, 'vmlinuz'), '-initrd', join(img, 'initrd.img'), '-append', 'console=ttyS0 quiet'],
    ...['-chardev', `socket,id=qga0,path=${join(dir, 'qga.sock')},server=on,wait=off`],
    ...['-device', 'virtio-serial-pci,id=vser0', '-device', 'virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0'],
    ...['-serial', `file:${join(dir, 'serial.log')}`, '-qmp', `unix:${join(dir, 'qmp.sock')},server=on,wait=off`],
    ...extra,
  ];
  const spawnedAt = performance.now();
  const proc = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'inherit'] });
  const sock = join(dir, 'qmp.sock');
  while (!existsSync(sock)) {
    if (proc.exitCode !== null) throw new Error('QEMU exited');
    await sleep(1);
  }
  const qmp = await QmpClient.connect(sock, { retryUntilMs: 10_000 });
  return { proc, qmp, dir, spawnedAt, qmpReadyMs: performance.now() - spawnedAt };
}

async function stopVm(vm: Vm): Promise<void> {
  await vm.qmp.close().catch(() => undefined);
  if (vm.proc.exitCode === null && vm.proc.signalCode === null) {
    const gone = new Promise((r) => vm.proc.once('exit', r));
    vm.proc.kill('SIGKILL');
    await gone;
  }
}

async function untilRunning(vm: Vm): Promise<number> {
  for (;;) {
    const st = await vm.qmp.queryStatus();
    if (st.running) return performance.now() - vm.spawnedAt;
    if (st.status !== 'inmigrate' && st.status !== 'prelaunch') throw new Error(`status ${st.status}`);
    await sleep(1);
  }
}

async function waitMigration(qmp: QmpClient): Promise<void> {
  for (;;) {
    const i = await qmp.execute<{ status: string; 'error-desc'?: string }>('query-migrate');
    if (i.status === 'completed') return;
    if (i.status === 'failed' || i.status === 'cancelled') throw new Error(`migration ${i.status}: ${i['error-desc'] ?? ''}`);
    await sleep(10);
  }
}

async function benchQemu(): Promise<void> {
  const memMiB = opt('mem-mib', 256);
  const fillMiB = opt('fill-mib', 32);
  const runs = opt('runs', 3);
  const ramBytes = memMiB * MiB;
  const dir = mkdtempSync(join(tmpdir(), 'vs-bench-ram-'));
  console.log(`QEMU: q35, TCG, ${memMiB} MiB, ${fillMiB} MiB of guest tmpfs filled`);
  try {
    // Source: boot, fill, save with background-snapshot through the splitter and as one plain stream.
    const src = await startVm(join(dir, 'src'), memMiB, []);
    const agent = await GuestAgentClient.waitUntilReady(join(src.dir, 'qga.sock'), { timeoutMs: 300_000 });
    const tf = performance.now();
    const fill = await agent.exec(
      '/bin/sh',
      // /dev/urandom is slow under TCG (~4 MB/s): repeat one random MiB instead.
      ['-c', `mount -o remount,size=${Math.ceil(fillMiB * 1.1) + 16}m /tmp && head -c 1048576 /dev/urandom > /tmp/seed && i=0; while [ $i -lt ${fillMiB} ]; do cat /tmp/seed; i=$((i+1)); done > /tmp/fill && md5sum /tmp/fill`],
      { timeoutMs: 900_000 },
    );
    if (fill.exitCode !== 0) throw new Error(`fill failed: ${fill.stderr}`);
    console.log(`filled ${fillMiB} MiB in ${((performance.now() - tf) / 1000).toFixed(1)} s`);
    await agent.close();
    await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 64 * 1024 ** 3 });
    await src.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'background-snapshot', state: true }] });

    const sink = await openSplitSink(join(dir, 'split.sock'), join(dir, 'ram.img'), join(dir, 'device.state'), { snapshotId: 'bench' });
    const stop = src.qmp.waitForEvent('STOP');
    const resume = src.qmp.waitForEvent('RESUME');
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    await src.qmp.execute('migrate', { uri: sink.uri });
    await waitMigration(src.qmp);
    const migrateMs = performance.now() - t0;
    const split = await sink.done;
    sink.close();
    const splitCpu = cpuMs(c0);
    const [s, r] = await Promise.all([stop, resume]);
    console.log(
      `background-snapshot save through the splitter: migration ${migrateMs.toFixed(0)} ms, pause ${(r.timeMs - s.timeMs).toFixed(1)} ms, ` +
        `stream ${(split.summary.inputBytes / MiB).toFixed(0)} MiB → device state ${(split.deviceState.bytes / 1024).toFixed(0)} KiB + RAM image ` +
        `${((statSync(split.ramImage.path).blocks * 512) / MiB).toFixed(0)} MiB allocated; fsync ${split.timings.fsyncMs.toFixed(0)} ms; ` +
        `sha256 of the ${memMiB} MiB RAM image ${split.timings.hashMs!.toFixed(0)} ms; this process's CPU ${splitCpu.toFixed(0)} ms ` +
        `(stream arrived at ${(split.summary.inputBytes / (split.timings.splitMs * 1e3)).toFixed(0)} MB/s: QEMU under TCG sends no faster)`,
    );

    // The same state as one classic stream file, for the comparison.
    const fullPath = join(dir, 'full.stream');
    let written!: Promise<void>;
    const server = await new Promise<Server>((res) => {
      const srv = createServer((conn) => {
        const out = createWriteStream(fullPath);
        written = new Promise((done) => out.on('close', () => done()));
        conn.pipe(out);
      });
      srv.listen(join(dir, 'full.sock'), () => res(srv));
    });
    await src.qmp.execute('migrate', { uri: `unix:${join(dir, 'full.sock')}` });
    await waitMigration(src.qmp);
    await written;
    server.close();
    await stopVm(src);

    const modes = {
      'split: -incoming defer + migrate-incoming of the device state': async (): Promise<Vm> => {
        const be = ramImageArgs(split.ramImage.path, ramBytes);
        const vm = await startVm(join(dir, 'r'), memMiB, [...be.args, '-incoming', 'defer'], be.machineProperty);
        await loadDeviceState(vm.qmp, split.deviceState.path);
        return vm;
      },
      'split: -incoming exec:cat on the command line': async (): Promise<Vm> => {
        const be = ramImageArgs(split.ramImage.path, ramBytes);
        return startVm(join(dir, 'r'), memMiB, [...be.args, '-incoming', `exec:cat ${split.deviceState.path}`], be.machineProperty);
      },
      'classic: -incoming defer + migrate-incoming of the whole stream': async (): Promise<Vm> => {
        const vm = await startVm(join(dir, 'r'), memMiB, ['-incoming', 'defer']);
        await loadDeviceState(vm.qmp, fullPath);
        return vm;
      },
    };
    for (const [name, run] of Object.entries(modes)) {
      const times: number[] = [];
      const qmpReady: number[] = [];
      let mem: ReturnType<typeof rss> | undefined;
      for (let i = 0; i < runs; i++) {
        rmSync(join(dir, 'r'), { recursive: true, force: true });
        execSync('sync');
        const vm = await run();
        try {
          times.push(await untilRunning(vm));
          qmpReady.push(vm.qmpReadyMs);
          await sleep(2000);
          mem = rss(vm.proc.pid!);
        } finally {
          await stopVm(vm);
        }
      }
      console.log(`revert, ${name}: spawn to running ${fmt(times)} ms (of which spawn to QMP ready ${fmt(qmpReady)} ms); RSS 2 s later ${JSON.stringify(mem)} MiB`);
    }
    console.log(`classic stream file: ${(statSync(fullPath).size / MiB).toFixed(0)} MiB`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (phase === 'split') await benchSplit();
else if (phase === 'qemu') await benchQemu();
else {
  console.error('usage: npx tsx bench/ram-split.ts split|qemu [options]');
  process.exit(2);
}
