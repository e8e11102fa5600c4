import { spawn } from 'node:child_process';
import { VmsnapError } from '../errors.js';

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

/**
 * The one way vmsnap runs qemu-img. `what` names what failed ("cannot create image X"),
 * and errors are mapped alike for every caller: qemu-img missing, a full disk (NO_SPACE),
 * anything else (QEMU_FAILED, with qemu-img's own message); an abort (AbortSignal) stops the
 * child and rejects with INTERRUPTED once it is gone.
 */
export interface QemuImgOptions {
  /** What was being done, for the error message: "cannot create image /x/y.qcow2". */
  what: string;
  /**
   * Progress of a job run with -p, as a fraction from 0 to 1 (the caller puts -p in the
   * arguments). With it, stdout is progress text and is not kept.
   */
  onProgress?: (fraction: number) => void;
  /** The child's pid, as soon as it runs (journaled, so recovery can stop an orphan). */
  onSpawn?: (pid: number) => void;
  /** Stops qemu-img (SIGTERM, then SIGKILL after killGraceMs); the run rejects with INTERRUPTED. */
  signal?: AbortSignal;
  /** How long qemu-img may take to exit after SIGTERM before it is killed (default 5 s). */
  killGraceMs?: number;
  /** Exit codes other than 0 that are not failures (qemu-img check: 2 corruptions, 3 leaks). */
  okCodes?: number[];
  /** At most this much stdout is kept (default 64 MiB); more fails the run. */
  maxStdoutBytes?: number;
  /** What to suggest when the disk is full. */
  noSpaceHint?: string;
  /** The program to run (tests run a fake one); default qemu-img from PATH. */
  command?: string;
}

export interface QemuImgResult {
  stdout: string;
  /** The end of what qemu-img wrote to stderr (warnings, or why an okCodes exit happened). */
  stderr: string;
  /** 0, or one of okCodes. */
  code: number;
}

const MAX_STDOUT = 64 * 1024 * 1024;
/** Of stderr only the end is kept: qemu-img's message is its last line. */
const MAX_STDERR = 64 * 1024;
const DEFAULT_NO_SPACE_HINT = 'free disk space in the vmsnap data dir';

export function interruptedError(signal: AbortSignal | undefined): VmsnapError {
  return new VmsnapError('INTERRUPTED', 'stopped on request', { cause: signal?.reason });
}

/**
 * A parser for qemu-img's -p output ("    (12.34/100%)" rewritten with carriage returns),
 * fed the stream chunk by chunk: a report split across two chunks is read whole. Calls
 * `onFraction` with the latest fraction of each chunk that completes one.
 */
export function progressParser(onFraction: (fraction: number) => void): (chunk: string) => void {
  let carry = '';
  return (chunk) => {
    const text = carry + chunk;
    let last: number | undefined;
    let end = 0;
    for (const m of text.matchAll(/\((\d+(?:\.\d+)?)\/100%\)/g)) {
      last = Number(m[1]);
      end = m.index + m[0].length;
    }
    // What follows the last whole report may be the start of the next one ("(12.3").
    carry = text.slice(end).slice(-32);
    if (last !== undefined) onFraction(Math.min(1, Math.max(0, last / 100)));
  };
}

/** How a failed run is reported: qemu-img's own message, named after what was being done. */
export function qemuImgFailure(
  what: string,
  args: readonly string[],
  exit: { code: number | null; signal?: NodeJS.Signals | null; stderr: string },
  noSpaceHint = DEFAULT_NO_SPACE_HINT,
): VmsnapError {
  const msg = exit.stderr.trim().replace(/^qemu-img: /gm, '');
  if (/No space left on device/i.test(msg)) return new VmsnapError('NO_SPACE', `${what}: ${msg}`, { hint: noSpaceHint, details: { args } });
  const why = msg || (exit.signal ? `qemu-img was killed by ${exit.signal}` : `qemu-img exited with code ${exit.code}`);
  return new VmsnapError('QEMU_FAILED', `${what}: ${why}`, {
    details: { args, ...(exit.code !== null ? { exitCode: exit.code } : {}), ...(exit.signal ? { signal: exit.signal } : {}) },
  });
}

/** A failure to start qemu-img at all. */
export function qemuImgSpawnFailure(what: string, e: NodeJS.ErrnoException, command = 'qemu-img'): VmsnapError {
  if (e.code === 'ENOENT') return new VmsnapError('QEMU_FAILED', `${command} is not installed`, { hint: 'apt-get install qemu-utils', cause: e });
  return new VmsnapError('QEMU_FAILED', `${what}: cannot run ${command}: ${e.message}`, { cause: e });
}

export function runQemuImg(args: readonly string[], opts: QemuImgOptions): Promise<QemuImgResult> {
  const { what, signal } = opts;
  const command = opts.command ?? 'qemu-img';
  if (signal?.aborted) return Promise.reject(interruptedError(signal));
  const maxStdout = opts.maxStdoutBytes ?? MAX_STDOUT;
  return new Promise<QemuImgResult>((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stdoutBytes = 0;
    let stderr = '';
    let failure: VmsnapError | undefined;
    let killTimer: NodeJS.Timeout | undefined;
    const stop = (): void => {
      child.kill('SIGTERM');
      killTimer ??= setTimeout(() => child.kill('SIGKILL'), opts.killGraceMs ?? 5000);
      killTimer.unref();
    };
    const onAbort = (): void => stop();
    signal?.addEventListener('abort', onAbort, { once: true });
    const done = (): void => {
      signal?.removeEventListener('abort', onAbort);
      if (killTimer) clearTimeout(killTimer);
    };
    if (child.pid !== undefined) opts.onSpawn?.(child.pid);
    const progress = opts.onProgress ? progressParser(opts.onProgress) : undefined;
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      if (progress) return progress(d);
      stdoutBytes += Buffer.byteLength(d);
      if (stdoutBytes > maxStdout) {
        failure ??= new VmsnapError('QEMU_FAILED', `${what}: qemu-img wrote more than ${maxStdout} bytes of output`, { details: { args } });
        stop();
        return;
      }
      stdout += d;
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => {
      stderr = (stderr + d).slice(-MAX_STDERR);
    });
    child.on('error', (e: NodeJS.ErrnoException) => {
      // Failed to start (no 'close' follows for ENOENT), or failed to be killed.
      done();
      reject(qemuImgSpawnFailure(what, e, command));
    });
    child.on('close', (code, sig) => {
      done();
      if (signal?.aborted) return reject(interruptedError(signal));
      if (failure) return reject(failure);
      if (code === 0 || (code !== null && opts.okCodes?.includes(code))) return resolve({ stdout, stderr, code });
      reject(qemuImgFailure(what, args, { code, signal: sig, stderr }, opts.noSpaceHint));
    });
  });
}

async function qemuImg(args: string[], what: string): Promise<string> {
  return (await runQemuImg(args, { what })).stdout;
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
  const args = ['check', '--output=json', ...(opts.forceShare ? ['-U'] : []), path];
  const r = await runQemuImg(args, { what: `qemu-img check ${path}`, okCodes: [2, 3] });
  if (r.code !== 0 && r.stdout.trim() === '') throw qemuImgFailure(`qemu-img check ${path}`, args, { code: r.code, stderr: r.stderr });
  return toCheck(r.stdout);
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
export async function convertImage(src: string, dst: string, opts: { format?: ImageFormat; sourceFormat?: ImageFormat; forceShare?: boolean } = {}): Promise<void> {
  await qemuImg(
    // A raw source is named raw: a probed format would let the file's bytes decide.
    ['convert', ...(opts.forceShare ? ['-U'] : []), ...(opts.sourceFormat ? ['-f', opts.sourceFormat] : []), '-O', opts.format ?? 'qcow2', src, dst],
    `cannot convert ${src}`,
  );
}

/** Merge an overlay into its backing file (-d: leave the overlay's own data in place). */
export async function commitImage(path: string, onProgress?: (fraction: number) => void, onSpawn?: (pid: number) => void): Promise<void> {
  await runQemuImg(['commit', onProgress ? '-p' : '-q', '-d', path], {
    what: `cannot merge ${path} into its backing file`,
    ...(onProgress ? { onProgress } : {}),
    ...(onSpawn ? { onSpawn } : {}),
  });
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
  const args = ['rebase', onProgress ? '-p' : '-q', '-b', backing ?? '', ...(backing === null ? [] : ['-F', backingFormat]), path];
  await runQemuImg(args, { what: `cannot rebase ${path}`, ...(onProgress ? { onProgress } : {}) });
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
