import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { sha256File } from './ram-image.js';
import { splitToFiles } from './split-files.js';
import { PAGE, StreamBuilder, pageOf, q35Blocks, type PageRecord } from './stream-builder.js';
import { joinStream, scanDeviceState } from './stream-join.js';
import { StreamSplitter } from './stream-split.js';

const RAM = 16 * 1024 * 1024;

async function collect(it: AsyncGenerator<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of it) parts.push(Buffer.from(b));
  return Buffer.concat(parts);
}

describe('joinStream: a whole stream back from a RAM image and a device state', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'vs-join-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  for (const mode of ['background', 'precopy'] as const) {
    it(`${mode}: splitting the joined stream gives the same RAM image and device sections`, async () => {
      const b = new StreamBuilder({ blocks: q35Blocks(RAM) }).header().ramStart();
      const recs: PageRecord[] = [];
      for (let p = 0; p < RAM / PAGE; p++) {
        if (p % 7 === 0) recs.push({ block: 'pc.ram', offset: p * PAGE, data: pageOf(p) });
        else if (p % 5 === 0) recs.push({ block: 'pc.ram', offset: p * PAGE, zero: true });
      }
      // Pages of another block stay in the device state, in both PART sections.
      recs.splice(3, 0, { block: 'pc.bios', offset: 0, data: pageOf(99) });
      b.ramSection('part', recs.slice(0, 1000)).ramSection('part', [{ block: 'pc.bios', offset: PAGE, data: pageOf(98) }, ...recs.slice(1000)]);
      if (mode === 'precopy') b.ramSection('end', []);
      b.devices([{ idstr: 'timer', payload: Buffer.alloc(100, 1) }]);
      const x = b.build();

      const ram = join(dir, 'a.ram');
      const dev = join(dir, 'a.dev');
      const split = await splitToFiles(Readable.from([x.stream]), ram, dev, { snapshotId: 'a' });
      const scanned = await scanDeviceState(dev);
      expect(scanned.summary.ramStart).toEqual(split.summary.ramStart);
      expect(scanned.summary.pagesWritten).toBe(0);

      const result: { ramImageSha256?: string; dataPages?: number; bytes?: number } = {};
      const joined = await collect(joinStream(dev, ram, result));
      expect(result.ramImageSha256).toBe(await sha256File(ram));
      expect(result.dataPages).toBe(split.summary.pagesWithData);
      expect(result.bytes).toBe(joined.length);

      // The joined stream splits again into the same RAM content, and the same device state plus nothing.
      const again = new StreamSplitter({
        onRam: () => undefined,
        onDevice: () => undefined,
      });
      await again.push(joined);
      const s2 = await again.end();
      expect(s2).toMatchObject({ mode: split.summary.mode, ramBlockBytes: RAM, pagesWithData: split.summary.pagesWithData, otherBlockPages: 2 });
      const ram2 = join(dir, 'b.ram');
      const dev2 = join(dir, 'b.dev');
      await splitToFiles(Readable.from([joined]), ram2, dev2, { snapshotId: 'a' });
      expect(readFileSync(ram2).subarray(0, RAM).equals(readFileSync(ram).subarray(0, RAM))).toBe(true);
      expect(readFileSync(ram2).subarray(0, RAM).equals(x.ram)).toBe(true);
      // The device state is the same but for the inserted PART, now empty: header, EOS, footer.
      const d1 = readFileSync(dev);
      const d2 = readFileSync(dev2);
      const at = split.summary.ramStart.endOffset;
      expect(d2.length).toBe(d1.length + 5 + 8 + 5);
      expect(Buffer.concat([d2.subarray(0, at), d2.subarray(at + 18)]).equals(d1)).toBe(true);
    });
  }
});
