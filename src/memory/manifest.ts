import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { open, rename, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { z } from 'zod';
import { VmsnapError } from '../errors.js';
import { RAM_TRAILER_BYTES, readTrailer, sha256File, sha256Hex } from './ram-image.js';

/**
 * The manifest of a split memory state: one JSON file beside a RAM image and a device
 * state stream, naming both, with their sizes and hashes, the snapshot they belong to and
 * the machine they were saved from. QEMU does not check that a RAM image and a device
 * stream belong together (a wrong pair silently corrupts the guest), so a load must pass
 * validateMemoryState() first.
 *
 * The manifest carries a checksum of itself: sha256 over the canonical JSON (keys sorted,
 * no whitespace) of every field but `checksum`.
 */

export const MEMORY_MANIFEST_FORMAT = 'vmsnap-memory-state';
export const MEMORY_MANIFEST_VERSION = 1;

/** A file name in the manifest's directory: no directories, no tricks. */
const fileName = z
  .string()
  .min(1)
  .max(255)
  .refine((s) => s === basename(s) && s !== '.' && s !== '..' && !s.includes('\0'), 'a plain file name in the manifest directory');

const manifestBody = z
  .object({
    format: z.literal(MEMORY_MANIFEST_FORMAT),
    version: z.literal(MEMORY_MANIFEST_VERSION),
    snapshotId: z.string().min(1).max(200),
    /** ISO 8601. */
    createdAt: z.iso.datetime(),
    /** QEMU machine type from the stream, e.g. "pc-q35-7.2": the load must use the same. */
    machine: z.string().min(1),
    /** The VM's configured memory. */
    memoryMiB: z.number().int().positive(),
    /** "background-snapshot" streams resume by themselves; "precopy" ones from a paused VM need `cont`. */
    streamMode: z.enum(['background-snapshot', 'precopy']),
    qemuVersion: z.string().optional(),
    /** The RAM block whose pages the RAM image holds: the memory backend's id when loading. */
    ramBlock: z.string().min(1),
    /** Size of the RAM block (the backend's size=). */
    ramBytes: z.number().int().positive(),
    ramImage: z
      .object({
        file: fileName,
        /** File size: ramBytes + the 4 KiB trailer page. */
        bytes: z.number().int().positive(),
        /**
         * sha256 of the whole file read sequentially (holes as zeros), as `sha256sum` prints
         * it. Optional: hashing a RAM image takes seconds per GiB, so vmsnap saves without it
         * and records it in its catalog once a background pass has read the image.
         */
        sha256: sha256Hex.optional(),
      })
      .strict(),
    deviceState: z
      .object({
        file: fileName,
        bytes: z.number().int().positive(),
        sha256: sha256Hex,
      })
      .strict(),
  })
  .strict();

export const memoryManifestSchema = manifestBody.extend({ checksum: sha256Hex }).strict();

export type MemoryManifestBody = z.infer<typeof manifestBody>;
export type MemoryManifest = z.infer<typeof memoryManifestSchema>;

/** JSON with object keys sorted at every level, no whitespace. */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

function checksumOf(body: MemoryManifestBody): string {
  return createHash('sha256').update(canonicalJson(body)).digest('hex');
}

/** Error about a memory state that must not be loaded. `details.check` names the failed check. */
export class MemoryStateError extends VmsnapError {
  constructor(check: string, message: string, details: Record<string, unknown> = {}, cause?: unknown) {
    super(check === 'missing-file' ? 'NOT_FOUND' : 'INVALID_STATE', message, {
      details: { check, ...details },
      hint: 'this memory state cannot be loaded; revert to the snapshot without memory (cold boot) or take a new one',
      ...(cause !== undefined ? { cause } : {}),
    });
  }
}

/** Builds a manifest (validated, with its checksum). */
export function createManifest(body: Omit<MemoryManifestBody, 'format' | 'version'>): MemoryManifest {
  const parsed = manifestBody.safeParse({ format: MEMORY_MANIFEST_FORMAT, version: MEMORY_MANIFEST_VERSION, ...body });
  if (!parsed.success) {
    throw new VmsnapError('INVALID_ARGUMENT', `invalid memory state manifest: ${z.prettifyError(parsed.error)}`);
  }
  const b = parsed.data;
  if (b.ramImage.bytes !== b.ramBytes + RAM_TRAILER_BYTES) {
    throw new VmsnapError('INVALID_ARGUMENT', `RAM image of ${b.ramImage.bytes} bytes for ${b.ramBytes} bytes of RAM (expected RAM + a ${RAM_TRAILER_BYTES}-byte trailer)`);
  }
  if (b.memoryMiB * 1024 * 1024 !== b.ramBytes) {
    throw new VmsnapError('INVALID_ARGUMENT', `${b.ramBytes} bytes of ${b.ramBlock} do not match ${b.memoryMiB} MiB of memory`);
  }
  if (b.ramImage.file === b.deviceState.file) throw new VmsnapError('INVALID_ARGUMENT', 'the RAM image and the device state must be two files');
  return { ...b, checksum: checksumOf(b) };
}

/** Parses and checks a manifest's JSON text: schema, version, own checksum. */
export function parseManifest(text: string, source = 'memory state manifest'): MemoryManifest {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new MemoryStateError('manifest-json', `${source} is not valid JSON: ${(e as Error).message}`, {}, e);
  }
  if (typeof raw === 'object' && raw !== null) {
    const r = raw as Record<string, unknown>;
    if (r.format !== MEMORY_MANIFEST_FORMAT) throw new MemoryStateError('manifest-format', `${source} is not a vmsnap memory state manifest (format ${JSON.stringify(r.format)})`);
    if (r.version !== MEMORY_MANIFEST_VERSION) {
      throw new MemoryStateError('manifest-version', `${source} has version ${JSON.stringify(r.version)}; this vmsnap reads version ${MEMORY_MANIFEST_VERSION}`, {
        version: r.version,
      });
    }
  }
  const parsed = memoryManifestSchema.safeParse(raw);
  if (!parsed.success) throw new MemoryStateError('manifest-schema', `${source} is malformed: ${z.prettifyError(parsed.error)}`);
  const { checksum, ...body } = parsed.data;
  const expected = checksumOf(body);
  if (checksum !== expected) throw new MemoryStateError('manifest-checksum', `${source} fails its checksum (it was changed or damaged)`, { checksum, expected });
  return parsed.data;
}

export function serializeManifest(m: MemoryManifest): string {
  return JSON.stringify(m, null, 2) + '\n';
}

/** Writes a manifest atomically (temp file, fsync, rename, fsync of the directory). */
export async function writeManifest(path: string, m: MemoryManifest): Promise<void> {
  const text = serializeManifest(parseManifest(serializeManifest(m), path));
  const tmp = `${path}.tmp-${process.pid}`;
  await writeFile(tmp, text, { mode: 0o600, flag: 'w' });
  const fh = await open(tmp, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
  const dir = await open(dirname(path), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

export function readManifest(path: string): MemoryManifest {
  if (!existsSync(path)) throw new MemoryStateError('missing-file', `memory state manifest ${path} does not exist`, { path });
  return parseManifest(readFileSync(path, 'utf8'), `memory state manifest ${path}`);
}

export interface ValidateOptions {
  /** Also hash the whole RAM image (slow: seconds per GiB) and compare with the manifest's sha256. Default false. */
  verifyRamSha256?: boolean;
  /** Hash the whole RAM image and compare with this sha256 (recorded elsewhere, e.g. the catalog); also checks the manifest's, if it has one. */
  ramSha256?: string;
  /** Hash the device state (small; default true). */
  verifyDeviceSha256?: boolean;
  /** What the caller is about to load: each given field must match the manifest. */
  expect?: { snapshotId?: string; machine?: string; memoryMiB?: number; ramBlock?: string };
  signal?: AbortSignal;
}

export interface ValidatedMemoryState {
  manifest: MemoryManifest;
  ramImagePath: string;
  deviceStatePath: string;
  checks: string[];
  ms: number;
}

/**
 * Checks a memory state before it is loaded: the manifest (schema, version, checksum),
 * what the caller expects (snapshot, machine, memory size), both files' sizes, the RAM
 * image's trailer (it names the snapshot and the device stream's sha256: a RAM image from
 * another snapshot is caught here in microseconds), the device stream's sha256, and on
 * request the RAM image's sha256. Throws MemoryStateError naming the failed check.
 */
export async function validateMemoryState(manifestPath: string, opts: ValidateOptions = {}): Promise<ValidatedMemoryState> {
  const t0 = performance.now();
  const checks: string[] = [];
  const m = readManifest(manifestPath);
  checks.push('manifest');
  const dir = dirname(manifestPath);
  const ramImagePath = join(dir, m.ramImage.file);
  const deviceStatePath = join(dir, m.deviceState.file);

  const exp = opts.expect ?? {};
  for (const key of ['snapshotId', 'machine', 'memoryMiB', 'ramBlock'] as const) {
    const want = exp[key];
    if (want !== undefined && want !== m[key]) {
      throw new MemoryStateError('expected-' + key, `memory state ${manifestPath} is for ${key} ${JSON.stringify(m[key])}, not ${JSON.stringify(want)}`, {
        [key]: m[key],
        expected: want,
      });
    }
  }
  if (m.memoryMiB * 1024 * 1024 !== m.ramBytes) {
    throw new MemoryStateError('ram-size', `memory state ${manifestPath}: ${m.ramBytes} bytes of ${m.ramBlock} do not match ${m.memoryMiB} MiB of memory`);
  }
  checks.push('expected');

  for (const [what, path, bytes] of [
    ['RAM image', ramImagePath, m.ramImage.bytes],
    ['device state', deviceStatePath, m.deviceState.bytes],
  ] as const) {
    let size: number;
    try {
      size = (await stat(path)).size;
    } catch (e) {
      throw new MemoryStateError('missing-file', `the ${what} ${path} of memory state ${manifestPath} is missing`, { path }, e);
    }
    if (size !== bytes) {
      throw new MemoryStateError(what === 'RAM image' ? 'ram-image-size' : 'device-state-size', `the ${what} ${path} has ${size} bytes; its manifest says ${bytes}`, {
        path,
        size,
        expected: bytes,
      });
    }
  }
  checks.push('sizes');

  const trailer = await readTrailer(ramImagePath, m.ramBytes);
  if (!trailer) throw new MemoryStateError('ram-image-trailer', `the RAM image ${ramImagePath} has no vmsnap trailer after its ${m.ramBytes} bytes of RAM`, { path: ramImagePath });
  const mismatch: string[] = [];
  if (trailer.snapshotId !== m.snapshotId) mismatch.push(`snapshot ${trailer.snapshotId}, not ${m.snapshotId}`);
  if (trailer.ramBlock !== m.ramBlock) mismatch.push(`block ${trailer.ramBlock}, not ${m.ramBlock}`);
  if (trailer.ramBytes !== m.ramBytes) mismatch.push(`${trailer.ramBytes} bytes of RAM, not ${m.ramBytes}`);
  if (trailer.deviceStateSha256 !== m.deviceState.sha256 || trailer.deviceStateBytes !== m.deviceState.bytes) {
    mismatch.push('it was saved with another device state stream');
  }
  if (mismatch.length > 0) {
    throw new MemoryStateError('ram-image-pairing', `the RAM image ${ramImagePath} does not belong to memory state ${manifestPath}: ${mismatch.join('; ')}`, {
      path: ramImagePath,
      trailer,
    });
  }
  checks.push('ram-image-trailer');

  if (opts.verifyDeviceSha256 ?? true) {
    const got = await sha256File(deviceStatePath, opts.signal ? { signal: opts.signal } : {});
    if (got !== m.deviceState.sha256) {
      throw new MemoryStateError('device-state-sha256', `the device state ${deviceStatePath} fails its sha256 (damaged or replaced)`, {
        path: deviceStatePath,
        sha256: got,
        expected: m.deviceState.sha256,
      });
    }
    checks.push('device-state-sha256');
  }
  const wanted = [opts.ramSha256, opts.verifyRamSha256 || opts.ramSha256 !== undefined ? m.ramImage.sha256 : undefined].filter((x): x is string => x !== undefined);
  if (opts.verifyRamSha256 && wanted.length === 0) {
    throw new MemoryStateError('ram-image-sha256', `memory state ${manifestPath} records no sha256 of its RAM image to check it against`, { path: ramImagePath });
  }
  if (wanted.length > 0) {
    const got = await sha256File(ramImagePath, opts.signal ? { signal: opts.signal } : {});
    for (const expected of wanted) {
      if (got !== expected) {
        throw new MemoryStateError('ram-image-sha256', `the RAM image ${ramImagePath} fails its sha256 (damaged or replaced)`, { path: ramImagePath, sha256: got, expected });
      }
    }
    checks.push('ram-image-sha256');
  }
  return { manifest: m, ramImagePath, deviceStatePath, checks, ms: performance.now() - t0 };
}
