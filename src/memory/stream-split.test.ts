import { describe, expect, it } from 'vitest';
import { MigrationStreamError, StreamSplitter, type SplitSummary, type StreamSplitterOptions } from './stream-split.js';
import { PAGE, StreamBuilder, pageOf, q35Blocks, type PageRecord } from './stream-builder.js';

const MiB = 1024 * 1024;

/** A deterministic PRNG for chunk sizes (mulberry32). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Chunking = 'whole' | 'bytes' | 'odd' | 'random';

function chunksOf(stream: Buffer, how: Chunking, seed = 1): Buffer[] {
  const out: Buffer[] = [];
  const r = rng(seed);
  for (let i = 0; i < stream.length; ) {
    const n =
      how === 'whole' ? stream.length : how === 'bytes' ? 1 : how === 'odd' ? [1, 3, 7, 4095, 4097, 8191][out.length % 6]! : 1 + Math.floor(r() * 20000);
    // Copy each chunk, like a socket hands out fresh buffers.
    out.push(Buffer.from(stream.subarray(i, i + n)));
    i += n;
  }
  return out;
}

interface Captured {
  summary: SplitSummary;
  ram: Buffer;
  device: Buffer;
  /** Pages that onRam wrote (any content). */
  writtenPages: Set<number>;
  ramCalls: number;
}

async function split(stream: Buffer, how: Chunking, extra: Partial<StreamSplitterOptions> = {}, seed = 1): Promise<Captured> {
  let ram = Buffer.alloc(0);
  const device: Buffer[] = [];
  const writtenPages = new Set<number>();
  let ramCalls = 0;
  const s = new StreamSplitter({
    onRamBlock: (b) => {
      ram = Buffer.alloc(b.size);
    },
    onRam: (offset, bufs, bytes) => {
      ramCalls++;
      let o = offset;
      for (const b of bufs) {
        expect(b.length).toBe(PAGE);
        b.copy(ram, o);
        writtenPages.add(o / PAGE);
        o += b.length;
      }
      expect(o - offset).toBe(bytes);
    },
    onDevice: (bufs, bytes) => {
      expect(bufs.reduce((a, b) => a + b.length, 0)).toBe(bytes);
      for (const b of bufs) device.push(Buffer.from(b));
    },
    ...extra,
  });
  for (const c of chunksOf(stream, how, seed)) await s.push(c);
  const summary = await s.end();
  return { summary, ram, device: Buffer.concat(device), writtenPages, ramCalls };
}

async function splitError(stream: Buffer, how: Chunking = 'random'): Promise<MigrationStreamError> {
  try {
    await split(stream, how);
  } catch (e) {
    expect(e).toBeInstanceOf(MigrationStreamError);
    return e as MigrationStreamError;
  }
  throw new Error('the split did not fail');
}

const RAM = 2 * MiB; // 512 pages

/** A background-snapshot-shaped stream: START, PARTs with pages of several blocks in arbitrary order, devices after the last PART. */
function backgroundStream(): ReturnType<StreamBuilder['build']> {
  const b = new StreamBuilder({ blocks: q35Blocks(RAM) }).header().ramStart();
  const parts: PageRecord[][] = [
    [
      { block: 'pc.ram', offset: 37 * PAGE, data: pageOf(37) }, // a write fault first, as uffd-wp does
      { block: 'pc.ram', offset: 0, data: pageOf(0) },
      { block: 'pc.ram', offset: PAGE, zero: true },
      { block: 'pc.ram', offset: 2 * PAGE, data: pageOf(2) },
      { block: 'pc.ram', offset: 3 * PAGE, data: pageOf(3) },
    ],
    [
      { block: 'pc.ram', offset: 4 * PAGE, data: pageOf(4) }, // CONTINUE across sections
      { block: 'pc.bios', offset: 0, data: pageOf(1000) },
      { block: 'pc.bios', offset: PAGE, zero: true }, // CONTINUE of a kept block
      { block: 'pc.ram', offset: 5 * PAGE, data: pageOf(5) },
    ],
    [
      { block: 'pc.ram', offset: 6 * PAGE, zero: true },
      { block: '/rom@etc/acpi/rsdp', offset: 0, data: pageOf(2000) },
    ],
    [
      { block: '/rom@etc/acpi/rsdp', offset: 0, zero: true }, // CONTINUE right at the start of a section
      { block: 'pc.ram', offset: RAM - PAGE, data: pageOf(511) },
    ],
  ];
  // The rest of pc.ram as zero pages, mostly CONTINUE.
  const rest: PageRecord[] = [];
  for (let p = 7; p < 511; p++) if (p !== 37) rest.push({ block: 'pc.ram', offset: p * PAGE, zero: true });
  parts.push(rest);
  for (const p of parts) b.ramSection('part', p);
  b.devices([
    { idstr: 'timer', payload: Buffer.from('0123456789abcdef') },
    // Bytes that look like section headers and RAM flags inside device payloads: never parsed.
    { idstr: 'cpu', payload: Buffer.from([0x02, 0, 0, 0, 2, 0x03, 0x7e, 0, 0, 0, 2, 0x01, 0x08, 0x10]) },
  ]);
  return b.build();
}

/** A precopy-shaped stream: pages re-sent, data then zero, zero then data, END section, devices. */
function precopyStream(footers = true): ReturnType<StreamBuilder['build']> {
  const b = new StreamBuilder({ blocks: q35Blocks(RAM), footers }).header().ramStart();
  const first: PageRecord[] = [];
  for (let p = 0; p < 512; p++) {
    first.push(p % 3 === 0 ? { block: 'pc.ram', offset: p * PAGE, zero: true } : { block: 'pc.ram', offset: p * PAGE, data: pageOf(p) });
    if (p === 100) first.push({ block: 'pc.bios', offset: 0, data: pageOf(9000) });
  }
  b.ramSection('part', first.slice(0, 200));
  b.ramSection('part', first.slice(200));
  b.ramSection('part', [
    { block: 'pc.ram', offset: 1 * PAGE, data: pageOf(10001) }, // data again
    { block: 'pc.ram', offset: 2 * PAGE, zero: true }, // data, then zero: must be zeroed
    { block: 'pc.ram', offset: 3 * PAGE, data: pageOf(10003) }, // zero, then data
    { block: 'pc.bios', offset: 0, data: pageOf(9001) }, // other block re-sent
  ]);
  b.ramSection('end', [
    { block: 'pc.ram', offset: 2 * PAGE, data: pageOf(20002) }, // zero again, then data again
    { block: 'pc.ram', offset: 4 * PAGE, zero: true }, // data then zero
    { block: 'pc.ram', offset: 6 * PAGE, zero: true }, // zero twice: stays a hole
  ]);
  b.devices([{ idstr: 'timer', payload: Buffer.from('state') }]);
  return b.build();
}

describe('StreamSplitter', () => {
  for (const how of ['whole', 'bytes', 'odd', 'random'] as const) {
    it(`splits a background-snapshot stream fed in ${how} chunks`, async () => {
      const x = backgroundStream();
      const r = await split(x.stream, how);
      expect(r.device.equals(x.device)).toBe(true);
      expect(r.ram.equals(x.ram)).toBe(true);
      expect([...r.writtenPages].sort((a, b) => a - b)).toEqual([...x.dataPages].sort((a, b) => a - b));
      expect(r.summary).toMatchObject({
        mode: 'background-snapshot',
        machine: 'pc-q35-7.2',
        ramBlock: 'pc.ram',
        ramBlockBytes: RAM,
        pagesWritten: 7,
        pagesRewritten: 0,
        zeroPages: 505,
        zeroPagesWritten: 0,
        pagesNeverSent: 0,
        pagesWithData: 7,
        otherBlockPages: 4,
        ramSections: 6,
        inputBytes: x.stream.length,
        deviceBytes: x.device.length,
        vmdescDevices: 2,
      });
      expect(r.summary.blocks).toEqual(q35Blocks(RAM));
    });
  }

  for (const seed of [1, 2, 3, 4, 5]) {
    it(`splits a precopy stream with re-sent pages (random chunks, seed ${seed})`, async () => {
      const x = precopyStream();
      const r = await split(x.stream, 'random', {}, seed);
      expect(r.device.equals(x.device)).toBe(true);
      expect(r.ram.equals(x.ram)).toBe(true);
      expect(r.summary.mode).toBe('precopy');
      // page 6 was zero twice: never written (a hole); pages 2 and 4 were zeroed after data
      expect(r.writtenPages.has(6)).toBe(false);
      expect(r.writtenPages.has(0)).toBe(false);
      expect(r.summary.zeroPagesWritten).toBe(2);
      expect(r.summary.pagesRewritten).toBe(3); // pages 1, 3 and 2 (again) came with data after an earlier record
    });
  }

  it('writes zeros over a page that held data, in stream order, even across write batches', async () => {
    const x = precopyStream();
    // One page per onRam call: ordering alone must make the later copy win.
    const r = await split(x.stream, 'random', { maxRunBytes: PAGE, highWaterMark: 1 });
    expect(r.ram.equals(x.ram)).toBe(true);
    expect(r.ram.subarray(2 * PAGE, 3 * PAGE).equals(pageOf(20002))).toBe(true);
    expect(r.ram.subarray(4 * PAGE, 5 * PAGE).every((v) => v === 0)).toBe(true);
  });

  it('batches contiguous pages into one write', async () => {
    const b = new StreamBuilder({ blocks: q35Blocks(RAM) }).header().ramStart();
    const recs: PageRecord[] = [];
    for (let p = 0; p < 512; p++) recs.push({ block: 'pc.ram', offset: p * PAGE, data: pageOf(p) });
    b.ramSection('part', recs).devices([]);
    const x = b.build();
    const r = await split(x.stream, 'whole');
    expect(r.ram.equals(x.ram)).toBe(true);
    expect(r.ramCalls).toBe(2); // 2 MiB in runs of at most 1 MiB
  });

  it('handles streams without section footers and without a configuration section', async () => {
    const x = precopyStream(false);
    const r = await split(x.stream, 'odd');
    expect(r.device.equals(x.device)).toBe(true);
    expect(r.ram.equals(x.ram)).toBe(true);

    const b = new StreamBuilder({ blocks: q35Blocks(RAM), machine: null }).header().ramStart();
    b.ramSection('part', [{ block: 'pc.ram', offset: 0, data: pageOf(1) }]).devices([]);
    const y = b.build();
    const r2 = await split(y.stream, 'bytes');
    expect(r2.summary.machine).toBeUndefined();
    expect(r2.device.equals(y.device)).toBe(true);
  });

  it('accepts the configuration subsections QEMU 7.2 may send (target-page-bits 12, uuid)', async () => {
    const sub = (name: string, body: Buffer): Buffer => Buffer.concat([Buffer.from([name.length]), Buffer.from(name), Buffer.from([0, 0, 0, 1]), body]);
    const b = new StreamBuilder({
      blocks: q35Blocks(RAM),
      configSubsections: [sub('configuration/target-page-bits', Buffer.from([0, 0, 0, 12])), sub('configuration/uuid', Buffer.alloc(16, 0xab))],
    })
      .header()
      .ramStart();
    b.ramSection('part', [{ block: 'pc.ram', offset: 0, data: pageOf(1) }]).devices([]);
    const x = b.build();
    const r = await split(x.stream, 'bytes');
    expect(r.device.equals(x.device)).toBe(true);
    expect(r.ram.equals(x.ram)).toBe(true);
  });

  it('refuses a stream without any page of the RAM block (multifd sends them elsewhere), such as a device stream split again', async () => {
    const x = precopyStream();
    const r = await split(x.stream, 'random');
    const e = await splitError(r.device);
    expect(e.message).toMatch(/no page of "pc.ram": saved with multifd/);
  });

  it('holds the sender back while writes are slow (bounded queue)', async () => {
    const x = precopyStream();
    let inFlight = 0;
    let maxInFlight = 0;
    const s = new StreamSplitter({
      highWaterMark: 64 * 1024,
      maxRunBytes: 16 * 1024,
      onRam: async (_o, _b, bytes) => {
        inFlight += bytes;
        maxInFlight = Math.max(maxInFlight, inFlight);
        await new Promise((r) => setTimeout(r, 1));
        inFlight -= bytes;
      },
      onDevice: () => undefined,
    });
    let queuedMax = 0;
    for (const c of chunksOf(x.stream, 'random', 9)) {
      await s.push(c);
      queuedMax = Math.max(queuedMax, (s as unknown as { queued: number }).queued);
    }
    await s.end();
    // After each push resolves, at most the high-water mark plus one chunk's worth is queued.
    expect(queuedMax).toBeLessThanOrEqual(64 * 1024 + 20000);
    expect(maxInFlight).toBeLessThanOrEqual(16 * 1024); // one write at a time
  });

  it('reports a failed write from push() or end()', async () => {
    const x = backgroundStream();
    const s = new StreamSplitter({
      onRam: () => Promise.reject(new Error('disk on fire')),
      onDevice: () => undefined,
    });
    await expect(
      (async () => {
        for (const c of chunksOf(x.stream, 'random')) await s.push(c);
        await s.end();
      })(),
    ).rejects.toThrow('disk on fire');
  });
});

describe('StreamSplitter refuses what it cannot split', () => {
  const withRecord = (rec: PageRecord): Buffer => {
    const b = new StreamBuilder({ blocks: q35Blocks(RAM) }).header().ramStart();
    b.ramSection('part', [{ block: 'pc.ram', offset: 0, data: pageOf(1) }, rec]).devices([]);
    return b.build().stream;
  };

  it('a compressed page (RAM_SAVE_FLAG_COMPRESS_PAGE)', async () => {
    const e = await splitError(withRecord({ rawFlags: 0x100 | 0x20, offset: PAGE, tail: Buffer.from([0, 0, 0, 4, 1, 2, 3, 4]) }));
    expect(e.message).toMatch(/compressed page.*not supported/);
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(e.details.streamOffset).toBeGreaterThan(0);
  });

  it('an XBZRLE page', async () => {
    const e = await splitError(withRecord({ rawFlags: 0x40, offset: PAGE, block: 'pc.ram', tail: Buffer.from([1, 0, 4, 1, 2, 3, 4]) }));
    expect(e.message).toMatch(/XBZRLE/);
  });

  it('an RDMA hook, the obsolete FULL flag, and flags QEMU 7.2 does not know (multifd flush of later versions)', async () => {
    expect((await splitError(withRecord({ rawFlags: 0x80, offset: 0 }))).message).toMatch(/RDMA hook/);
    expect((await splitError(withRecord({ rawFlags: 0x01, offset: 0 }))).message).toMatch(/FULL/);
    expect((await splitError(withRecord({ rawFlags: 0x200, offset: 0 }))).message).toMatch(/unknown RAM record flags 0x200/);
    expect((await splitError(withRecord({ rawFlags: 0x08 | 0x02, offset: 0, block: 'pc.ram' }))).message).toMatch(/unknown combination/);
  });

  it('a page of an unknown block, or beyond its block', async () => {
    expect((await splitError(withRecord({ block: 'nope', offset: 0, data: pageOf(1) }))).message).toMatch(/block "nope", which is not in the stream's block list/);
    expect((await splitError(withRecord({ block: 'pc.ram', offset: RAM, data: pageOf(1) }))).message).toMatch(/beyond the end of block "pc.ram"/);
  });

  it('a CONTINUE page before any block was named', async () => {
    const b = new StreamBuilder({ blocks: q35Blocks(RAM) }).header().ramStart();
    b.ramSection('part', [{ rawFlags: 0x08 | 0x20, offset: 0, tail: pageOf(1) }]).devices([]);
    expect((await splitError(b.build().stream)).message).toMatch(/continuing a block when none was named/);
  });

  it('a stream without the RAM block', async () => {
    const b = new StreamBuilder({ blocks: q35Blocks(RAM).filter((x) => x.id !== 'pc.ram') }).header().ramStart();
    expect((await splitError(b.build().stream)).message).toMatch(/no RAM block "pc.ram"/);
  });

  it('a QEMU_VM_COMMAND section (postcopy, return path)', async () => {
    const b = new StreamBuilder({ blocks: q35Blocks(RAM) }).header().ramStart();
    b.raw(Buffer.from([0x08, 0, 1, 0, 0]));
    expect((await splitError(b.build().stream)).message).toMatch(/QEMU_VM_COMMAND/);
  });

  it('an iterable section other than ram (block migration)', async () => {
    const b = new StreamBuilder({ blocks: q35Blocks(RAM) }).header();
    b.raw(Buffer.concat([Buffer.from([0x01, 0, 0, 0, 1, 5]), Buffer.from('block'), Buffer.alloc(8)]));
    expect((await splitError(b.build().stream)).message).toMatch(/iterable section "block"/);
  });

  it('x-ignore-shared in the configuration', async () => {
    const name = 'configuration/capabilities';
    const cap = 'x-ignore-shared';
    const sub = Buffer.concat([Buffer.from([name.length]), Buffer.from(name), Buffer.from([0, 0, 0, 1, 0, 0, 0, 1, cap.length]), Buffer.from(cap)]);
    const b = new StreamBuilder({ blocks: q35Blocks(RAM), configSubsections: [sub] }).header().ramStart();
    expect((await splitError(b.build().stream, 'bytes')).message).toMatch(/x-ignore-shared/);
  });

  it('not a migration stream, or another version', async () => {
    expect((await splitError(Buffer.from('hello world, this is no stream'))).message).toMatch(/not a QEMU migration stream/);
    expect((await splitError(Buffer.from([0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 2, 0]))).message).toMatch(/version 2/);
  });

  it('a truncated stream, wherever it is cut', async () => {
    const x = backgroundStream();
    for (const cut of [4, 30, 300, 5000, x.stream.length - x.device.length + 20, x.stream.length - 1]) {
      const e = await splitError(x.stream.subarray(0, cut), 'random');
      expect(e.message).toMatch(/truncated/);
    }
  });

  it('device state before the RAM', async () => {
    const b = new StreamBuilder({ blocks: q35Blocks(RAM) }).header();
    b.devices([]);
    expect((await splitError(b.build().stream)).message).toMatch(/device state before any RAM section/);
  });

  it('a RAM section after END', async () => {
    const b = new StreamBuilder({ blocks: q35Blocks(RAM) }).header().ramStart();
    b.ramSection('end', []).ramSection('part', []).devices([]);
    expect((await splitError(b.build().stream)).message).toMatch(/after the RAM END/);
  });

  it('nothing more after an error', async () => {
    const s = new StreamSplitter({ onRam: () => undefined, onDevice: () => undefined });
    await expect(s.push(Buffer.from('garbage!garbage!'))).rejects.toThrow(/not a QEMU migration stream/);
    await expect(s.push(Buffer.from('more'))).rejects.toThrow(/not a QEMU migration stream/);
    await expect(s.end()).rejects.toThrow(/not a QEMU migration stream/);
  });
});
