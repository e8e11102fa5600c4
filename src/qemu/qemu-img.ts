import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { VmsnapError } from '../errors.js';

const run = promisify(execFile);

export type ImageFormat = 'qcow2' | 'raw';

/** What `qemu-img info --output=json` says of one image (the fields vmsnap uses). */
export interface ImageInfo {
  filename: string;
  format: string;
  virtualSize: number;
  actualSize: number;
  clusterSize?: number;
  backingFilename?: string;
  fullBackingFilename?: string;
  backingFormat?: string;
  dirty: boolean;
  corrupt: boolean;
}

export interface CheckResult {
  filename: string;
  checkErrors: number;
  corruptions: number;
  leaks: number;
  /** False when qemu-img check found anything to worry about. */
  clean: boolean;
}

interface RawInfo {
  filename: string;
  format: string;
  'virtual-size': number;
  'actual-size'?: number;
  'cluster-size'?: number;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
  'dirty-flag'?: boolean;
  'format-specific'?: { data?: { corrupt?: boolean } };
}

function toInfo(r: RawInfo): ImageInfo {
  return {
    filename: r.filename,
    format: r.format,
    virtualSize: r['virtual-size'],
    actualSize: r['actual-size'] ?? 0,
    ...(r['cluster-size'] === undefined ? {} : { clusterSize: r['cluster-size'] }),
    ...(r['backing-filename'] === undefined ? {} : { backingFilename: r['backing-filename'] }),
    ...(r['full-backing-filename'] === undefined ? {} : { fullBackingFilename: r['full-backing-filename'] }),
    ...(r['backing-filename-format'] === undefined ? {} : { backingFormat: r['backing-filename-format'] }),
    dirty: r['dirty-flag'] ?? false,
    corrupt: r['format-specific']?.data?.corrupt ?? false,
  };
}

async function qemuImg(args: string[], what: string): Promise<string> {
  try {
    const { stdout } = await run('qemu-img', args, { maxBuffer: 64 * 1024 * 1024 });
    return stdout;
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string; code?: number | string };
    if (err.code === 'ENOENT') {
      throw new VmsnapError('QEMU_FAILED', 'qemu-img is not installed', { hint: 'apt-get install qemu-utils' });
    }
    const msg = (err.stderr ?? err.message).trim().replace(/^qemu-img: /, '');
    if (/No space left on device/i.test(msg)) {
      throw new VmsnapError('NO_SPACE', `${what}: ${msg}`, { hint: 'free disk space in the vmsnap data dir' });
    }
    throw new VmsnapError('QEMU_FAILED', `${what}: ${msg}`, { details: { args } });
  }
}

/**
 * `forceShare` (-U) reads an image that a running QEMU holds open; the answer
 * may be slightly stale for the active layer but is exact for frozen ones.
 */
export async function imageInfo(path: string, opts: { forceShare?: boolean } = {}): Promise<ImageInfo> {
  const out = await qemuImg(['info', '--output=json', ...(opts.forceShare ? ['-U'] : []), path], `cannot read image ${path}`);
  return toInfo(JSON.parse(out) as RawInfo);
}

export async function imageChain(path: string, opts: { forceShare?: boolean } = {}): Promise<ImageInfo[]> {
  const out = await qemuImg(
    ['info', '--output=json', '--backing-chain', ...(opts.forceShare ? ['-U'] : []), path],
    `cannot read image chain of ${path}`,
  );
  return (JSON.parse(out) as RawInfo[]).map(toInfo);
}

export interface CreateImageOptions {
  format?: ImageFormat;
  sizeBytes?: number;
  /** Backing file as written into the header (relative paths are relative to the new image). */
  backing?: string;
  backingFormat?: ImageFormat;
}

export async function createImage(path: string, opts: CreateImageOptions): Promise<void> {
  const args = ['create', '-q', '-f', opts.format ?? 'qcow2'];
  if (opts.backing !== undefined) args.push('-b', opts.backing, '-F', opts.backingFormat ?? 'qcow2');
  args.push(path);
  if (opts.sizeBytes !== undefined) args.push(String(opts.sizeBytes));
  await qemuImg(args, `cannot create image ${path}`);
}

export async function checkImage(path: string, opts: { forceShare?: boolean } = {}): Promise<CheckResult> {
  // check exits 2 (corruptions) or 3 (leaks) with JSON still on stdout.
  try {
    const { stdout } = await run('qemu-img', ['check', '--output=json', ...(opts.forceShare ? ['-U'] : []), path]);
    return toCheck(stdout);
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string; code?: number };
    if (err.stdout && (err.code === 2 || err.code === 3)) return toCheck(err.stdout);
    throw new VmsnapError('QEMU_FAILED', `qemu-img check ${path}: ${(err.stderr ?? String(e)).trim()}`);
  }
}

function toCheck(stdout: string): CheckResult {
  const r = JSON.parse(stdout) as { filename: string; 'check-errors': number; corruptions?: number; leaks?: number };
  const corruptions = r.corruptions ?? 0;
  const leaks = r.leaks ?? 0;
  return {
    filename: r.filename,
    checkErrors: r['check-errors'],
    corruptions,
    leaks,
    clean: r['check-errors'] === 0 && corruptions === 0 && leaks === 0,
  };
}

/** Rewrite only the backing pointer in the header (-u: no data is copied). */
export async function rebaseUnsafe(path: string, backing: string, backingFormat: ImageFormat = 'qcow2'): Promise<void> {
  await qemuImg(['rebase', '-u', '-b', backing, '-F', backingFormat, path], `cannot rebase ${path}`);
}

/** Flatten a chain into one independent image. */
export async function convertImage(src: string, dst: string, opts: { format?: ImageFormat; forceShare?: boolean } = {}): Promise<void> {
  await qemuImg(
    ['convert', ...(opts.forceShare ? ['-U'] : []), '-O', opts.format ?? 'qcow2', src, dst],
    `cannot convert ${src}`,
  );
}

/**
 * Run a long qemu-img job with -p, reporting its percentage as it goes
 * (qemu-img prints "(12.34/100%)" with carriage returns).
 */
async function qemuImgWithProgress(
  args: string[],
  what: string,
  onProgress?: (fraction: number) => void,
  onSpawn?: (pid: number) => void,
): Promise<void> {
  const { spawn } = await import('node:child_process');
  await new Promise<void>((resolve, reject) => {
    const child = spawn('qemu-img', [args[0]!, onProgress ? '-p' : '-q', ...args.slice(1)], { stdio: ['ignore', 'pipe', 'pipe'] });
    if (child.pid !== undefined) onSpawn?.(child.pid);
    let stderr = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      const all = [...d.matchAll(/\((\d+(?:\.\d+)?)\/100%\)/g)];
      const last = all[all.length - 1];
      if (last && onProgress) onProgress(Number(last[1]) / 100);
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) return resolve();
      const msg = stderr.trim().replace(/^qemu-img: /, '');
      reject(
        /No space left on device/i.test(msg)
          ? new VmsnapError('NO_SPACE', `${what}: ${msg}`, { hint: 'free disk space in the vmsnap data dir' })
          : new VmsnapError('QEMU_FAILED', `${what}: ${msg || `exit code ${code}`}`, { details: { args } }),
      );
    });
  });
}

/** Merge an overlay into its backing file (-d: leave the overlay's own data in place). */
export async function commitImage(path: string, onProgress?: (fraction: number) => void, onSpawn?: (pid: number) => void): Promise<void> {
  await qemuImgWithProgress(['commit', '-d', path], `cannot merge ${path} into its backing file`, onProgress, onSpawn);
}

/**
 * Give an image a new backing file, copying in whatever differs between the
 * old and the new backing chain (safe mode). `backing` null makes it standalone.
 */
export async function rebaseImage(
  path: string,
  backing: string | null,
  backingFormat: ImageFormat = 'qcow2',
  onProgress?: (fraction: number) => void,
): Promise<void> {
  const args = ['rebase', '-b', backing ?? '', ...(backing === null ? [] : ['-F', backingFormat]), path];
  await qemuImgWithProgress(args, `cannot rebase ${path}`, onProgress);
}

/** One extent of `qemu-img map`: where a guest range's data lives (depth into the chain, host offset). */
export interface MapExtent {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

export async function mapImage(path: string, opts: { forceShare?: boolean } = {}): Promise<MapExtent[]> {
  const out = await qemuImg(['map', '--output=json', ...(opts.forceShare ? ['-U'] : []), path], `cannot map ${path}`);
  return JSON.parse(out) as MapExtent[];
}

/** Free clusters a crash left allocated but unused (harmless, but qemu-img check reports them). */
export async function repairLeaks(path: string): Promise<void> {
  await qemuImg(['check', '-q', '-r', 'leaks', path], `cannot repair ${path}`);
}
