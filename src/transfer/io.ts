import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { VmsnapError } from '../errors.js';
import { isProcessAlive } from '../util/process.js';

const CHUNK = 4 * 1024 * 1024;

export interface PumpOptions {
  /** Where the data goes (at `to`, from its offset on); omitted: only hashed. */
  to?: { fh: FileHandle; offset: number };
  /** Called with the bytes of each chunk as it is done. */
  onBytes?: (n: number) => void;
  signal?: AbortSignal;
}

export interface PumpResult {
  sha256: string;
  /** Bytes actually read: less than asked when the source ended early. */
  bytes: number;
}

/**
 * Read `length` bytes of `from` at `offset`, hashing them (sha256) and, when
 * asked, writing them elsewhere. Three buffers rotate so that the next read
 * and the previous write run in libuv's thread pool while this thread hashes.
 */
export async function pump(from: FileHandle, offset: number, length: number, opts: PumpOptions = {}): Promise<PumpResult> {
  const hash = createHash('sha256');
  const bufs = [Buffer.allocUnsafe(CHUNK), Buffer.allocUnsafe(CHUNK), Buffer.allocUnsafe(CHUNK)];
  const read = (i: number, at: number): Promise<number> =>
    at >= length ? Promise.resolve(0) : from.read(bufs[i % 3]!, 0, Math.min(CHUNK, length - at), offset + at).then((r) => r.bytesRead);
  let done = 0;
  let pending = read(0, 0);
  let writing: Promise<unknown> = Promise.resolve();
  for (let i = 0; ; i++) {
    const n = await pending;
    if (n === 0) break;
    if (opts.signal?.aborted) {
      await writing.catch(() => undefined);
      throw new VmsnapError('INTERRUPTED', 'stopped on request', { cause: opts.signal.reason });
    }
    const at = done;
    done += n;
    pending = read(i + 1, done);
    const chunk = bufs[i % 3]!.subarray(0, n);
    hash.update(chunk);
    await writing;
    if (opts.to) {
      const { fh, offset: toOffset } = opts.to;
      writing = writeAll(fh, chunk, toOffset + at);
    }
    opts.onBytes?.(n);
  }
  await writing;
  return { sha256: hash.digest('hex'), bytes: done };
}

/** pwrite until every byte is written (a short write is legal). */
export async function writeAll(fh: FileHandle, data: Buffer, position: number): Promise<void> {
  let off = 0;
  while (off < data.length) {
    const { bytesWritten } = await fh.write(data, off, data.length - off, position + off);
    off += bytesWritten;
  }
}

export const sha256Of = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

/**
 * A scratch folder under $VMSNAP_HOME/tmp, named after this process so that
 * folders left by a killed vmsnap can be told apart and removed by the next
 * export or import.
 */
export async function scratchDir(home: string, kind: string): Promise<string> {
  const root = join(home, 'tmp');
  mkdirSync(root, { recursive: true, mode: 0o700 });
  for (const f of existsSync(root) ? readdirSync(root) : []) {
    const m = /^[a-z]+-(\d+)-/.exec(f);
    if (m && Number(m[1]) !== process.pid && !isProcessAlive(Number(m[1]))) rmSync(join(root, f), { recursive: true, force: true });
  }
  return mkdtemp(join(root, `${kind}-${process.pid}-`));
}
