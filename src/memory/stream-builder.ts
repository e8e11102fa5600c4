/**
 * Builds synthetic QEMU 7.2 migration streams for tests and benchmarks, written the way
 * QEMU writes them (savevm.c save_section_header/footer, ram.c save_page_header with the
 * sender's last_sent_block), together with what a correct split must produce: the
 * device-state stream is built alongside by leaving the RAM block's page records out
 * (construction, not parsing), and the RAM image by applying the page records in order.
 */

const be32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
};
const be64 = (n: number): Buffer => {
  const b = Buffer.alloc(8);
  b.writeUInt32BE(Math.floor(n / 0x1_0000_0000));
  b.writeUInt32BE(n % 0x1_0000_0000, 4);
  return b;
};
const str8 = (s: string): Buffer => Buffer.concat([Buffer.from([s.length]), Buffer.from(s, 'latin1')]);

export const PAGE = 4096;

export type PageRecord =
  | { block: string; offset: number; data: Buffer }
  | { block: string; offset: number; zero: true; fill?: number }
  /** A raw record header with arbitrary flags (for refusal tests); `tail` follows it. */
  | { rawFlags: number; offset: number; block?: string; tail?: Buffer };

export interface BuilderOptions {
  ramBlock?: string;
  blocks: { id: string; size: number }[];
  /** null: no configuration section (send-configuration=off). */
  machine?: string | null;
  /** Configuration subsections, raw (after the 0x05 byte each). */
  configSubsections?: Buffer[];
  /** send-section-footer. Default true. */
  footers?: boolean;
  ramSectionId?: number;
}

export class StreamBuilder {
  private readonly out: Buffer[] = [];
  private readonly dev: Buffer[] = [];
  private readonly ramBlock: string;
  private readonly footers: boolean;
  private readonly sid: number;
  private lastSent: string | undefined;
  /** The expected RAM image content (zeros where nothing was written). */
  readonly ram: Buffer;
  /** Pages the expected image holds data in (written, not holes). */
  readonly dataPages = new Set<number>();

  constructor(private readonly opts: BuilderOptions) {
    this.ramBlock = opts.ramBlock ?? 'pc.ram';
    this.footers = opts.footers ?? true;
    this.sid = opts.ramSectionId ?? 2;
    const ram = opts.blocks.find((b) => b.id === this.ramBlock);
    this.ram = Buffer.alloc(ram ? ram.size : 0);
  }

  /** Bytes that go to both the stream and the device stream. */
  private both(...bufs: Buffer[]): this {
    for (const b of bufs) {
      this.out.push(b);
      this.dev.push(b);
    }
    return this;
  }

  /** Bytes of the stream only (the RAM block's page records). */
  private streamOnly(...bufs: Buffer[]): void {
    this.out.push(...bufs);
  }

  header(): this {
    this.both(be32(0x5145564d), be32(3));
    if (this.opts.machine !== null) {
      const m = this.opts.machine ?? 'pc-q35-7.2';
      this.both(Buffer.from([0x07]), be32(m.length), Buffer.from(m, 'latin1'));
      for (const s of this.opts.configSubsections ?? []) this.both(Buffer.from([0x05]), s);
    }
    return this;
  }

  private footer(): void {
    if (this.footers) this.both(Buffer.from([0x7e]), be32(this.sid));
  }

  ramStart(): this {
    const total = this.opts.blocks.reduce((a, b) => a + b.size, 0);
    this.both(Buffer.from([0x01]), be32(this.sid), str8('ram'), be32(0), be32(4));
    this.both(be64(total + 0x04));
    for (const b of this.opts.blocks) this.both(str8(b.id), be64(b.size));
    this.both(be64(0x10));
    this.footer();
    return this;
  }

  /** One PART (or END) section of the RAM: the records, EOS, footer. */
  ramSection(kind: 'part' | 'end', records: PageRecord[]): this {
    this.both(Buffer.from([kind === 'part' ? 0x02 : 0x03]), be32(this.sid));
    for (const r of records) this.record(r);
    this.both(be64(0x10));
    this.footer();
    return this;
  }

  private record(r: PageRecord): void {
    if ('rawFlags' in r) {
      const parts = [be64(r.offset + r.rawFlags)];
      if (r.block !== undefined) parts.push(str8(r.block));
      if (r.tail) parts.push(r.tail);
      this.both(...parts);
      return;
    }
    const cont = this.lastSent === r.block;
    const isZero = 'zero' in r;
    const flags = (isZero ? 0x02 : 0x08) | (cont ? 0x20 : 0);
    const parts = [be64(r.offset + flags)];
    if (!cont) parts.push(str8(r.block));
    this.lastSent = r.block;
    parts.push(isZero ? Buffer.from([r.fill ?? 0]) : r.data);
    if (r.block !== this.ramBlock) {
      this.both(...parts);
      return;
    }
    this.streamOnly(...parts);
    const idx = r.offset / PAGE;
    if (isZero) {
      this.ram.fill(r.fill ?? 0, r.offset, r.offset + PAGE);
      if ((r.fill ?? 0) !== 0) this.dataPages.add(idx);
    } else {
      r.data.copy(this.ram, r.offset);
      this.dataPages.add(idx);
    }
  }

  /** Device sections (FULL, opaque payloads), EOF, vmdesc. */
  devices(sections: { idstr: string; payload: Buffer }[], opts: { vmdesc?: boolean } = {}): this {
    let id = this.sid + 1;
    const devs: { name: string; instance_id: number }[] = [];
    for (const s of sections) {
      this.both(Buffer.from([0x04]), be32(id), str8(s.idstr), be32(0), be32(1), s.payload);
      if (this.footers) this.both(Buffer.from([0x7e]), be32(id));
      devs.push({ name: s.idstr, instance_id: 0 });
      id++;
    }
    this.both(Buffer.from([0x00]));
    if (opts.vmdesc ?? true) {
      const json = Buffer.from(JSON.stringify({ page_size: 4096, devices: devs }));
      this.both(Buffer.from([0x06]), be32(json.length), json);
    }
    return this;
  }

  /** Arbitrary bytes, in both streams. */
  raw(b: Buffer): this {
    return this.both(b);
  }

  build(): { stream: Buffer; device: Buffer; ram: Buffer; dataPages: Set<number> } {
    return { stream: Buffer.concat(this.out), device: Buffer.concat(this.dev), ram: this.ram, dataPages: this.dataPages };
  }
}

/** A page of deterministic pseudo-random bytes. */
export function pageOf(seed: number): Buffer {
  const b = Buffer.alloc(PAGE);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < PAGE; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b.writeUInt32LE(x, i);
  }
  return b;
}

/** The usual q35 block list with a RAM block of `ramBytes`. */
export function q35Blocks(ramBytes: number): { id: string; size: number }[] {
  return [
    { id: 'pc.ram', size: ramBytes },
    { id: '/rom@etc/acpi/tables', size: 131072 },
    { id: 'pc.bios', size: 262144 },
    { id: 'pc.rom', size: 131072 },
    { id: '/rom@etc/table-loader', size: 4096 },
    { id: '/rom@etc/acpi/rsdp', size: 4096 },
  ];
}
