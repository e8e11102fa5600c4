import { spawn } from 'node:child_process';
import { VmsnapError } from '../errors.js';

/**
 * qemu-img as export and import use it: abortable (Ctrl-C stops the child),
 * with -p progress, and reading qcow2 images that sit inside the archive at
 * an offset (the raw driver's `offset` option), so nothing is copied twice.
 */
interface RunOptions {
  onFraction?: (fraction: number) => void;
  signal?: AbortSignal;
  /** Exit codes that are not failures (qemu-img check exits 3 for leaked clusters only). */
  okCodes?: number[];
}

function interrupted(signal: AbortSignal | undefined): VmsnapError {
  return new VmsnapError('INTERRUPTED', 'stopped on request', { cause: signal?.reason });
}

async function qemuImg(args: string[], what: string, opts: RunOptions = {}): Promise<string> {
  if (opts.signal?.aborted) throw interrupted(opts.signal);
  return new Promise<string>((resolve, reject) => {
    const child = spawn('qemu-img', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const onAbort = (): void => {
      child.kill('SIGTERM');
    };
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      if (opts.onFraction) {
        // -p prints "    (12.34/100%)" with carriage returns.
        const all = [...d.matchAll(/\((\d+(?:\.\d+)?)\/100%\)/g)];
        const last = all[all.length - 1];
        if (last) opts.onFraction(Number(last[1]) / 100);
      } else {
        stdout += d;
      }
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', (e: NodeJS.ErrnoException) => {
      opts.signal?.removeEventListener('abort', onAbort);
      reject(e.code === 'ENOENT' ? new VmsnapError('QEMU_FAILED', 'qemu-img is not installed', { hint: 'apt-get install qemu-utils' }) : e);
    });
    child.on('close', (code) => {
      opts.signal?.removeEventListener('abort', onAbort);
      if (opts.signal?.aborted) return reject(interrupted(opts.signal));
      if (code === 0 || (code !== null && opts.okCodes?.includes(code))) return resolve(stdout);
      const msg = stderr.trim().replace(/^qemu-img: /, '') || `exit code ${code}`;
      reject(
        /No space left on device/i.test(msg)
          ? new VmsnapError('NO_SPACE', `${what}: ${msg}`, { hint: 'free disk space where the file is written' })
          : new VmsnapError('QEMU_FAILED', `${what}: ${msg}`, { details: { args } }),
      );
    });
  });
}

/** QemuOpts syntax: a comma in a value is written twice. */
const optValue = (s: string): string => s.replaceAll(',', ',,');

/** Image options for a qcow2 image stored in `file` from byte `offset` (to its end, or `size` bytes). */
export function embeddedQcow2(file: string, offset: number, size?: number): string {
  return [
    'driver=qcow2',
    'file.driver=raw',
    `file.offset=${offset}`,
    ...(size === undefined ? [] : [`file.size=${size}`]),
    'file.file.driver=file',
    `file.file.filename=${optValue(file)}`,
  ].join(',');
}

/** What a flattened copy of a chain will take as qcow2 (data plus metadata), for progress and space checks. */
export async function measureQcow2(src: string, format: string): Promise<number> {
  const out = await qemuImg(['measure', '--output=json', '-U', '-f', format, '-O', 'qcow2', src], `cannot measure ${src}`);
  return (JSON.parse(out) as { required: number }).required;
}

export async function virtualSize(src: string, format: string): Promise<number> {
  const out = await qemuImg(['info', '--output=json', '-U', '-f', format, src], `cannot read image ${src}`);
  return (JSON.parse(out) as { 'virtual-size': number })['virtual-size'];
}

/**
 * Flatten the chain under `src` into the (empty, freshly created) qcow2 image
 * that starts at `offset` in `archive`: only allocated data is written
 * (--target-is-zero), and the image grows at the end of the file. Frozen
 * layers never change, so reading them while their VM runs is safe (-U).
 */
export async function convertInto(src: string, srcFormat: string, archive: string, offset: number, opts: RunOptions = {}): Promise<void> {
  await qemuImg(
    ['convert', ...(opts.onFraction ? ['-p'] : ['-q']), '-U', '-f', srcFormat, '-n', '--target-is-zero', '--target-image-opts', src, embeddedQcow2(archive, offset)],
    `cannot flatten ${src} into ${archive}`,
    opts,
  );
}

export async function createQcow2(path: string, sizeBytes: number): Promise<void> {
  await qemuImg(['create', '-q', '-f', 'qcow2', path, String(sizeBytes)], `cannot create image ${path}`);
}

export interface InspectedDisk {
  virtualSize: number;
  /** Why the image may not be used, if it may not. */
  problem?: string;
}

/**
 * Check that a disk from an archive is what an export makes: a standalone
 * qcow2 that refers to no other file (a backing file or an external data file
 * would let a crafted archive read host files into the guest), and that
 * `qemu-img check` finds sound. `imageOpts` is a path or embeddedQcow2(...).
 */
export async function inspectDisk(image: { path: string } | { imageOpts: string }): Promise<InspectedDisk> {
  const target = 'path' in image ? ['-f', 'qcow2', image.path] : ['--image-opts', image.imageOpts];
  let info: { format?: string; 'virtual-size'?: number; 'backing-filename'?: string; 'format-specific'?: { data?: { 'data-file'?: string; corrupt?: boolean } } };
  try {
    info = JSON.parse(await qemuImg(['info', '--output=json', ...target], 'not a qcow2 image')) as typeof info;
  } catch (e) {
    return { virtualSize: 0, problem: (e as Error).message };
  }
  const virtualSize = info['virtual-size'] ?? 0;
  if (info.format !== 'qcow2') return { virtualSize, problem: `it is ${info.format ?? 'not an image'}, not qcow2` };
  if (info['backing-filename'] !== undefined) return { virtualSize, problem: `it refers to a backing file (${info['backing-filename']})` };
  if (info['format-specific']?.data?.['data-file'] !== undefined) return { virtualSize, problem: 'it refers to an external data file' };
  if (info['format-specific']?.data?.corrupt) return { virtualSize, problem: 'it is marked corrupt' };
  try {
    // Leaked clusters (exit 3) waste space but hold no data: not a reason to refuse.
    await qemuImg(['check', '-q', ...target], 'it is damaged', { okCodes: [3] });
  } catch (e) {
    return { virtualSize, problem: `qemu-img check: ${(e as Error).message}` };
  }
  return { virtualSize };
}
