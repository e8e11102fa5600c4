import { createHash } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { convertImage, imageChain, mapImage, type MapExtent } from '../qemu/qemu-img.js';

/**
 * A content fingerprint of a disk as the guest sees it through a chain of
 * layers: sha256 over the index and hash of every 64 KiB block that is not all
 * zeros. It depends only on the logical content, not on which layer holds a
 * block or how a merge laid the data out, so it proves a consolidation changed
 * nothing a snapshot shows.
 */
const BLOCK = 64 * 1024;

class BlockHasher {
  private readonly total = createHash('sha256');
  private index = -1;
  private block = Buffer.alloc(BLOCK);
  private dirty = false;

  /** Data must come in increasing guest offsets. */
  write(guestOffset: number, data: Buffer): void {
    let pos = 0;
    while (pos < data.length) {
      const off = guestOffset + pos;
      const idx = Math.floor(off / BLOCK);
      if (idx !== this.index) this.flushTo(idx);
      const inBlock = off - idx * BLOCK;
      const n = Math.min(BLOCK - inBlock, data.length - pos);
      data.copy(this.block, inBlock, pos, pos + n);
      this.dirty = true;
      pos += n;
    }
  }

  private flushTo(next: number): void {
    if (this.dirty && this.block.some((b) => b !== 0)) {
      const idx = Buffer.alloc(8);
      idx.writeBigUInt64BE(BigInt(this.index));
      this.total.update(idx);
      this.total.update(createHash('sha256').update(this.block).digest());
    }
    this.block.fill(0);
    this.dirty = false;
    this.index = next;
  }

  digest(): string {
    this.flushTo(-1);
    return this.total.digest('hex');
  }
}

function readInto(fd: number, offset: number, length: number): Buffer {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const n = readSync(fd, buf, done, length - done, offset + done);
    if (n === 0) break;
    done += n;
  }
  return buf;
}

/** Fingerprint the logical content of the disk whose top layer is `topPath`. */
export async function fingerprintDisk(topPath: string): Promise<string> {
  const [extents, chain] = await Promise.all([mapImage(topPath, { forceShare: true }), imageChain(topPath, { forceShare: true })]);
  const data = extents.filter((e) => e.data);
  // Compressed clusters (in some imported images) have no host offset: read those the slow way.
  if (data.some((e) => e.offset === undefined)) return fingerprintByConvert(topPath);
  const hasher = new BlockHasher();
  const fds = new Map<number, number>();
  try {
    for (const e of data) {
      let fd = fds.get(e.depth);
      if (fd === undefined) {
        fd = openSync(chain[e.depth]!.filename, 'r');
        fds.set(e.depth, fd);
      }
      for (let done = 0; done < e.length; done += 8 * 1024 * 1024) {
        const n = Math.min(8 * 1024 * 1024, e.length - done);
        hasher.write(e.start + done, readInto(fd, (e as Required<MapExtent>).offset + done, n));
      }
    }
  } finally {
    for (const fd of fds.values()) closeSync(fd);
  }
  return hasher.digest();
}

async function fingerprintByConvert(topPath: string): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'vmsnap-fp-'));
  try {
    const raw = join(dir, 'disk.raw');
    await convertImage(topPath, raw, { format: 'raw', forceShare: true });
    const size = statSync(raw).size;
    const fd = openSync(raw, 'r');
    const hasher = new BlockHasher();
    try {
      for (let off = 0; off < size; off += 8 * 1024 * 1024) hasher.write(off, readInto(fd, off, Math.min(8 * 1024 * 1024, size - off)));
    } finally {
      closeSync(fd);
    }
    return hasher.digest();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
