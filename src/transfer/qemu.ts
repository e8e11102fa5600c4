import { runQemuImg } from '../qemu/qemu-img.js';

/**
 * qemu-img as export and import use it (through the one runner in qemu/qemu-img.ts):
 * abortable (Ctrl-C stops the child), with -p progress, and reading qcow2 images that sit
 * inside the archive at an offset (the raw driver's `offset` option), so nothing is copied twice.
 */
interface RunOptions {
  onFraction?: (fraction: number) => void;
  signal?: AbortSignal;
  /** Exit codes that are not failures (qemu-img check exits 3 for leaked clusters only). */
  okCodes?: number[];
}

async function qemuImg(args: string[], what: string, opts: RunOptions = {}): Promise<string> {
  const r = await runQemuImg(args, {
    what,
    noSpaceHint: 'free disk space where the file is written',
    ...(opts.onFraction ? { onProgress: opts.onFraction } : {}),
    ...(opts.signal ? { signal: opts.signal } : {}),
    ...(opts.okCodes ? { okCodes: opts.okCodes } : {}),
  });
  return r.stdout;
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
