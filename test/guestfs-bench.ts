/**
 * Measures the libguestfs reading layer (src/files/guestfs.ts). Not a test:
 *
 *   npx tsx test/guestfs-bench.ts [WORKDIR] [--first-launch] [--six]
 *
 * Builds its images in WORKDIR (default /tmp/vmsnap-guestfs-bench) without
 * mounting anything: an ext4 made by `mkfs.ext4 -d` holding a directory of 1000
 * files, a tree of 10,000 files and a 100 MiB file.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { GuestFs } from '../src/files/guestfs.js';

const args = process.argv.slice(2);
const work = args.find((a) => !a.startsWith('--')) ?? '/tmp/vmsnap-guestfs-bench';
const rows: [string, string][] = [];

function row(label: string, ms: number, note = ''): void {
  const text = ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(1)} ms`;
  rows.push([label, text + (note ? `  (${note})` : '')]);
  process.stderr.write(`${label.padEnd(52)} ${text} ${note}\n`);
}

async function time<T>(label: string, f: () => Promise<T>, n = 1, note = ''): Promise<T> {
  const t = performance.now();
  let r: T | undefined;
  for (let i = 0; i < n; i++) r = await f();
  row(label, (performance.now() - t) / n, note);
  return r as T;
}

function load(): string {
  return execFileSync('cat', ['/proc/loadavg']).toString().split(' ').slice(0, 3).join(' ');
}

function makeImages(): string {
  const img = join(work, 'data.qcow2');
  if (existsSync(img)) return img;
  mkdirSync(work, { recursive: true });
  const src = join(work, 'src');
  rmSync(src, { recursive: true, force: true });
  mkdirSync(join(src, 'd1000'), { recursive: true });
  for (let i = 0; i < 1000; i++) writeFileSync(join(src, 'd1000', `f${String(i).padStart(4, '0')}.txt`), `file ${i}\n`.repeat((i % 50) + 1));
  for (let a = 0; a < 10; a++) {
    for (let b = 0; b < 10; b++) {
      const d = join(src, 'tree', `a${a}`, `b${b}`);
      mkdirSync(d, { recursive: true });
      for (let c = 0; c < 100; c++) writeFileSync(join(d, `c${c}`), String(c));
    }
  }
  writeFileSync(join(src, 'big.bin'), randomBytes(100 * 1024 * 1024));
  const raw = join(work, 'data.raw');
  execFileSync('truncate', ['-s', '600M', raw]);
  execFileSync('mkfs.ext4', ['-q', '-F', '-d', src, raw]);
  execFileSync('qemu-img', ['convert', '-O', 'qcow2', raw, img]);
  rmSync(raw);
  rmSync(src, { recursive: true, force: true });
  for (let i = 1; i < 6; i++) execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', img, '-F', 'qcow2', join(work, `ov${i}.qcow2`)]);
  return img;
}

async function main(): Promise<void> {
  const img = makeImages();
  process.stderr.write(`load before: ${load()}\n`);
  if (args.includes('--first-launch')) {
    const cache = mkdtempSync(join(tmpdir(), 'gfs-cache-'));
    const t = performance.now();
    const g = await GuestFs.open([{ path: img, format: 'qcow2', readonly: true }], { cacheDir: cache });
    row('open, first ever (empty appliance cache)', performance.now() - t, `appliance launch ${g.info?.launchMs} ms`);
    await g.close();
    const t2 = performance.now();
    const g2 = await GuestFs.open([{ path: img, format: 'qcow2', readonly: true }], { cacheDir: cache });
    row('open, same cache again', performance.now() - t2, `appliance launch ${g2.info?.launchMs} ms`);
    await g2.close();
    rmSync(cache, { recursive: true, force: true });
  }
  if (args.includes('--six')) {
    const drives = [img, ...[1, 2, 3, 4, 5].map((i) => join(work, `ov${i}.qcow2`))].map((path) => ({ path, format: 'qcow2' as const, readonly: true }));
    const t = performance.now();
    const g6 = await GuestFs.open(drives);
    row('open with 6 drives (helper start + launch)', performance.now() - t, `launch ${g6.info?.launchMs} ms`);
    await time('filesystems() of 6 drives (blkid + fstab probe)', () => g6.filesystems());
    await time('close (6 drives)', () => g6.close());
  }
  const t = performance.now();
  const g = await GuestFs.open([{ path: img, format: 'qcow2', readonly: true }]);
  row('open with 1 drive (helper start + launch)', performance.now() - t, `launch ${g.info?.launchMs} ms`);
  await time('ping (per-call overhead: JSON + helper + daemon)', () => g.ping(), 200, 'mean of 200');
  const fss = await time('filesystems() (list + blkid + size + fstab probe)', () => g.filesystems());
  await time('filesystems() again (cached)', () => g.filesystems());
  await time('mount (read-only)', () => g.mount(fss[0]?.device ?? '/dev/vda'));
  await time('stat of one file', () => g.stat('/d1000/f0001.txt'), 50, 'mean of 50');
  await time('list of a 1000-entry directory (lstat+readlink bulk)', () => g.list('/d1000'), 3, 'mean of 3');
  await time('find names only, 10,110 entries', () => g.find('/tree', { stat: false }));
  await time('find with lstat, 10,110 entries', () => g.find('/tree'));
  await time('download 100 MiB to a host file', () => g.download('/big.bin', join(work, 'big.out')));
  const sink = (): Writable => new Writable({ write: (_c, _e, cb) => cb() });
  await time('downloadTo a stream, 100 MiB (FIFO)', () => g.downloadTo('/big.bin', sink()));
  await time('download of a small file to a host file', () => g.download('/d1000/f0001.txt', join(work, 'small.out')), 5, 'mean of 5');
  await time('checksum sha256 of the 100 MiB file (in appliance)', () => g.checksum(['/big.bin']));
  await time('checksum sha256, 20 small files one by one', () => g.checksum(Array.from({ length: 20 }, (_, i) => `/d1000/f${String(i).padStart(4, '0')}.txt`)));
  await time('checksumTree sha256 of /d1000 (checksums-out)', () => g.checksumTree('/d1000'));
  await time('scan /d1000 with sha256 (tar-out, hashed on host)', () => g.scan('/d1000', { hash: true }));
  await time('scan /tree with sha256, 10,110 entries', () => g.scan('/tree', { hash: true }));
  await time('tarOut /tree to a host file', () => g.tarOut('/tree', join(work, 'tree.tar')));
  await time('checksumTree sha256 of /tree (10,000 files)', () => g.checksumTree('/tree'));
  await time('umount', () => g.umount('/'));
  await time('close', () => g.close());
  process.stderr.write(`load after: ${load()}\n`);
  process.stdout.write(`| operation | time |\n| --- | --- |\n${rows.map(([a, b]) => `| ${a} | ${b} |`).join('\n')}\n`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
