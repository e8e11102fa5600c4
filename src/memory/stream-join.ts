import { createHash } from 'node:crypto';
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { VmsnapError } from '../errors.js';
import { RAM_SAVE_FLAG_CONTINUE, RAM_SAVE_FLAG_EOS, RAM_SAVE_FLAG_PAGE, StreamSplitter, TARGET_PAGE_SIZE, type SplitSummary } from './stream-split.js';

/**
 * The inverse of the split: a whole QEMU 7.2 migration stream from a device-state stream
 * and its RAM image, loadable by any QEMU 7.2 into ordinary (anonymous) RAM. Used where a
 * memory state leaves vmsnap's data dir as one stream (an export archive).
 *
 * The RAM image's data pages go into one RAM PART section inserted right after the RAM
 * START section (stream-split.ts, ramStart): its first record names the block, the others
 * CONTINUE it; zero pages are left out (RAM that is never written reads as zeros on the
 * loading side). The first page record of the original stream after the START section
 * always names its block (a CONTINUE needs a kept predecessor of the same block), so the
 * loader's "last block" is right for everything that follows.
 */

const ZERO_PAGE = Buffer.alloc(TARGET_PAGE_SIZE);
const READ_BYTES = 4 * 1024 * 1024;
const OUT_BYTES = 1024 * 1024;

export interface JoinOptions {
  /** The RAM block the image holds (default "pc.ram"). */
  ramBlock?: string;
  signal?: AbortSignal;
}

export interface JoinResult {
  /** sha256 of the whole RAM image file (trailer included), as sha256File() computes it. */
  ramImageSha256: string;
  dataPages: number;
  bytes: number;
}

/** A file to read: its path, or a handle held open (a delete meanwhile cannot take it away). */
export type Source = string | FileHandle;
const nameOf = (f: Source): string => (typeof f === 'string' ? f : `fd ${f.fd}`);

/** Reads a device-state stream and where its RAM START section ends (it is parsed whole, so it is checked too). */
export async function scanDeviceState(deviceState: Source, ramBlock = 'pc.ram'): Promise<{ data: Buffer; summary: SplitSummary }> {
  const data = typeof deviceState === 'string' ? await readFile(deviceState) : await readAllAt(deviceState);
  const splitter = new StreamSplitter({
    ramBlock,
    requireRamPages: false,
    onRam: () => {
      throw new VmsnapError('INVALID_STATE', `the device state ${nameOf(deviceState)} carries pages of ${ramBlock}: it is not a split device-state stream`);
    },
    onDevice: () => undefined,
  });
  await splitter.push(data);
  return { data, summary: await splitter.end() };
}

/** The whole file behind a handle, read from its start (whatever its position). */
async function readAllAt(fh: FileHandle): Promise<Buffer> {
  const size = (await fh.stat()).size;
  const buf = Buffer.alloc(size);
  for (let pos = 0; pos < size; ) {
    const { bytesRead } = await fh.read(buf, pos, size - pos, pos);
    if (bytesRead === 0) break;
    pos += bytesRead;
  }
  return buf;
}

function u64(v: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32BE(Math.floor(v / 0x1_0000_0000), 0);
  b.writeUInt32BE(v % 0x1_0000_0000, 4);
  return b;
}

/**
 * Yields the whole stream in pieces; `result` is filled in once the iteration is over.
 * The RAM image is read once, front to back, and hashed on the way.
 */
export async function* joinStream(deviceState: Source, ramImage: Source, result: Partial<JoinResult>, opts: JoinOptions = {}): AsyncGenerator<Buffer> {
  const ramBlock = opts.ramBlock ?? 'pc.ram';
  const { data: dev, summary } = await scanDeviceState(deviceState, ramBlock);
  const ramBytes = summary.ramBlockBytes;
  const { endOffset, sectionId, footers } = summary.ramStart;
  let bytes = 0;
  const emit = (b: Buffer): Buffer => {
    bytes += b.length;
    return b;
  };
  yield emit(dev.subarray(0, endOffset));
  const head = Buffer.alloc(5);
  head[0] = 0x02; // QEMU_VM_SECTION_PART
  head.writeUInt32BE(sectionId, 1);
  yield emit(head);

  const name = Buffer.from(ramBlock, 'latin1');
  const hash = createHash('sha256');
  const fh = typeof ramImage === 'string' ? await open(ramImage, 'r') : ramImage;
  let dataPages = 0;
  try {
    const buf = Buffer.allocUnsafe(READ_BYTES);
    let out: Buffer[] = [];
    let outBytes = 0;
    for (let pos = 0; ; ) {
      if (opts.signal?.aborted) throw new VmsnapError('INTERRUPTED', 'stopped on request', { cause: opts.signal.reason });
      const { bytesRead } = await fh.read(buf, 0, READ_BYTES, pos);
      if (bytesRead === 0) break;
      const chunk = buf.subarray(0, bytesRead);
      hash.update(chunk);
      // Pages of RAM only (the trailer page after them is vmsnap's, not the guest's).
      const ramEnd = Math.min(bytesRead, Math.max(0, ramBytes - pos));
      for (let i = 0; i + TARGET_PAGE_SIZE <= ramEnd; i += TARGET_PAGE_SIZE) {
        const page = chunk.subarray(i, i + TARGET_PAGE_SIZE);
        if (page.equals(ZERO_PAGE)) continue;
        const first = dataPages === 0;
        // The offset is page-aligned, so adding the flags sets its low bits.
        out.push(u64(pos + i + RAM_SAVE_FLAG_PAGE + (first ? 0 : RAM_SAVE_FLAG_CONTINUE)));
        if (first) out.push(Buffer.from([name.length]), name);
        out.push(Buffer.from(page)); // a copy: buf is reused by the next read
        outBytes += 8 + TARGET_PAGE_SIZE + (first ? 1 + name.length : 0);
        dataPages++;
        if (outBytes >= OUT_BYTES) {
          yield emit(Buffer.concat(out));
          out = [];
          outBytes = 0;
        }
      }
      pos += bytesRead;
    }
    if (out.length > 0) yield emit(Buffer.concat(out));
  } finally {
    if (typeof ramImage === 'string') await fh.close();
  }
  const tail = [u64(RAM_SAVE_FLAG_EOS)];
  if (footers) {
    const f = Buffer.alloc(5);
    f[0] = 0x7e; // QEMU_VM_SECTION_FOOTER
    f.writeUInt32BE(sectionId, 1);
    tail.push(f);
  }
  yield emit(Buffer.concat(tail));
  yield emit(dev.subarray(endOffset));
  Object.assign(result, { ramImageSha256: hash.digest('hex'), dataPages, bytes } satisfies JoinResult);
}
