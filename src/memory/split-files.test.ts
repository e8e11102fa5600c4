import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { VmsnapError } from '../errors.js';
import { RAM_TRAILER_BYTES, readTrailer, sha256File } from './ram-image.js';
import { splitToFiles } from './split-files.js';
import { MigrationStreamError } from './stream-split.js';
import { PAGE, StreamBuilder, pageOf, q35Blocks, type PageRecord } from './stream-builder.js';

const RAM = 64 * 1024 * 1024;

function stream(): ReturnType<StreamBuilder['build']> {
  const b = new StreamBuilder({ blocks: q35Blocks(RAM) }).header().ramStart();
  const recs: PageRecord[] = [];
  // 1 MiB of data at 8 MiB, a few scattered pages, everything else zero pages
  for (let p = 0; p < RAM / PAGE; p++) {
    const data = (p >= 2048 && p < 2304) || p % 1000 === 7;
    recs.push(data ? { block: 'pc.ram', offset: p * PAGE, data: pageOf(p) } : { block: 'pc.ram', offset: p * PAGE, zero: true });
  }
  b.ramSection('part', recs.slice(0, 5000)).ramSection('part', recs.slice(5000));
  b.devices([{ idstr: 'timer', payload: Buffer.alloc(100, 1) }]);
  return b.build();
}

function chunked(buf: Buffer, size: number): Readable {
  const parts: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) parts.push(Buffer.from(buf.subarray(i, i + size)));
  return Readable.from(parts);
}

describe('splitToFiles', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'vs-split-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('writes a sparse RAM image with a trailer and the device stream, with hashes', async () => {
    const x = stream();
    const ramPath = join(dir, 'ram.img');
    const devPath = join(dir, 'device.state');
    const r = await splitToFiles(chunked(x.stream, 65536 + 3), ramPath, devPath, { snapshotId: 'snap-1' });
    const img = readFileSync(ramPath);
    expect(img.length).toBe(RAM + RAM_TRAILER_BYTES);
    expect(img.subarray(0, RAM).equals(x.ram)).toBe(true);
    expect(readFileSync(devPath).equals(x.device)).toBe(true);
    expect(r.deviceState).toEqual({ path: devPath, bytes: x.device.length, sha256: createHash('sha256').update(x.device).digest('hex') });
    expect(r.ramImage).toMatchObject({ bytes: RAM + RAM_TRAILER_BYTES, ramBytes: RAM, trailer: true, sha256: createHash('sha256').update(img).digest('hex') });
    expect(await sha256File(ramPath)).toBe(r.ramImage.sha256);
    // Sparse: about 1.06 MiB of data pages + the trailer are allocated, not 64 MiB.
    expect(statSync(ramPath).blocks * 512).toBeLessThan(4 * 1024 * 1024);
    expect(await readTrailer(ramPath, RAM)).toEqual({
      version: 1,
      snapshotId: 'snap-1',
      ramBlock: 'pc.ram',
      ramBytes: RAM,
      deviceStateBytes: x.device.length,
      deviceStateSha256: r.deviceState.sha256,
    });
    expect(r.summary.pagesWithData).toBe(256 + 17);
  });

  it('never overwrites an existing file, and leaves it alone', async () => {
    const x = stream();
    const ramPath = join(dir, 'ram.img');
    const devPath = join(dir, 'device.state');
    writeFileSync(devPath, 'precious');
    const e = await splitToFiles(chunked(x.stream, 65536), ramPath, devPath).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(VmsnapError);
    expect((e as VmsnapError).code).toBe('ALREADY_EXISTS');
    expect(readFileSync(devPath, 'utf8')).toBe('precious');
    expect(existsSync(ramPath)).toBe(false);
  });

  it('removes both files when the stream is bad', async () => {
    const x = stream();
    const ramPath = join(dir, 'ram.img');
    const devPath = join(dir, 'device.state');
    const e = await splitToFiles(chunked(x.stream.subarray(0, x.stream.length - 10), 65536), ramPath, devPath).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(MigrationStreamError);
    expect(existsSync(ramPath)).toBe(false);
    expect(existsSync(devPath)).toBe(false);
  });

  it('pauses a Readable while the queue is full, and takes any async iterable too', async () => {
    const x = stream();
    const r1 = await splitToFiles(chunked(x.stream, 65536), join(dir, 'a1'), join(dir, 'b1'), { highWaterMark: 4096, maxRunBytes: 8192 });
    async function* gen(): AsyncGenerator<Buffer> {
      for (let i = 0; i < x.stream.length; i += 12345) yield Buffer.from(x.stream.subarray(i, i + 12345));
    }
    const r2 = await splitToFiles(gen(), join(dir, 'a2'), join(dir, 'b2'), { highWaterMark: 4096 });
    for (const [a, b] of [
      ['a1', 'b1'],
      ['a2', 'b2'],
    ] as const) {
      expect(readFileSync(join(dir, a)).equals(x.ram)).toBe(true);
      expect(readFileSync(join(dir, b)).equals(x.device)).toBe(true);
    }
    expect(r1.ramImage.sha256).toBe(r2.ramImage.sha256);
  });

  it('without a snapshot id: no trailer, and hashing can be left for later', async () => {
    const x = stream();
    const r = await splitToFiles(chunked(x.stream, 100_000), join(dir, 'a'), join(dir, 'b'), { hashRamImage: false });
    expect(statSync(join(dir, 'a')).size).toBe(RAM);
    expect(r.ramImage.sha256).toBeUndefined();
    expect(r.ramImage.trailer).toBe(false);
  });
});
