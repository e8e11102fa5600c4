import { VmsnapError } from '../errors.js';

/**
 * Splits a QEMU 7.2 migration stream into a sparse RAM image and a small device-state
 * stream, as the stream arrives.
 *
 * - Every page of one RAM block (`pc.ram`, the guest's main memory) goes to the RAM image
 *   at its offset in the block (`onRam`); pages that QEMU sends as zero pages stay holes.
 * - Everything else is copied verbatim into the device-state stream (`onDevice`): the file
 *   header and configuration, the RAM section with its block list and end-of-section
 *   markers, the pages of the small blocks (option ROMs, ACPI tables, BIOS), and the
 *   device sections. Only the page records of `pc.ram` are left out, so that QEMU loads
 *   the device-state stream as an ordinary migration stream into a VM whose `pc.ram` is
 *   the RAM image mapped privately (memory-backend-file, share=off): a page that the
 *   stream does not carry is simply not written by ram_load, and keeps what the mapping
 *   holds.
 *
 * ## The wire format (QEMU 7.2.0 source; file:line at the v7.2.0 tag)
 *
 * Stream = header, setup sections, iteration sections, device sections, EOF, vmdesc.
 * - Header (savevm.c:1138 qemu_savevm_state_header): be32 magic 0x5145564d ("QEVM"),
 *   be32 version 3, then (send-configuration=on, q35-7.2: yes) byte QEMU_VM_CONFIGURATION
 *   0x07 + the "configuration" vmstate (savevm.c:503): be32 len + machine type name
 *   ("pc-q35-7.2"; the loader refuses another machine type, savevm.c:349), then optional
 *   subsections (QEMU_VM_SUBSECTION 0x05, byte len, idstr, be32 version, fields):
 *   configuration/target-page-bits (be32; only if the target's page size varies),
 *   configuration/capabilities (be32 count, count × (byte len + name); only with
 *   x-ignore-shared), configuration/uuid (16 bytes; only with validate-uuid).
 * - Section headers (savevm.c:914 save_section_header): byte type, be32 section id; START
 *   (0x01) and FULL (0x04) add byte len + idstr, be32 instance id, be32 version id; PART
 *   (0x02) and END (0x03) do not. After each section's payload a footer (savevm.c:936,
 *   send-section-footer=on for q35-7.2): byte 0x7e + be32 section id.
 * - Section payloads have NO length field. A device section (FULL) can only be skipped by
 *   interpreting its vmstate description. So this parser does not skip them: it relies on
 *   the order in which QEMU writes sections, and copies everything from the first device
 *   section to the end of the stream without looking inside:
 *     * setup (savevm.c:1164 qemu_savevm_state_setup): one START per active iterable handler;
 *       with default capabilities (no block migration, no dirty-bitmaps, no VFIO) that is
 *       only "ram". A START of anything else is refused.
 *     * iterations (savevm.c:1226 qemu_savevm_state_iterate): PART sections of "ram".
 *     * precopy completion (savevm.c:1433 qemu_savevm_state_complete_precopy): the END of
 *       "ram", then every device as a FULL section (savevm.c:1363
 *       qemu_savevm_state_complete_precopy_non_iterable), QEMU_VM_EOF 0x00 (savevm.c:1417),
 *       then QEMU_VM_VMDESCRIPTION 0x06 + be32 len + JSON, the vmdesc (savevm.c:1425).
 *     * background-snapshot (migration.c:4068 bg_migration_thread): the device sections,
 *       EOF and vmdesc are rendered into a buffer while the VM is paused, RAM goes out in
 *       PART sections while the guest runs, and the buffer is appended after the last PART
 *       (migration.c:3422 bg_migration_completion). There is NO END section for "ram".
 *   So the first FULL (or EOF) after the RAM sections starts the device part, in both
 *   modes, and no RAM page can follow it.
 * - RAM payload (ram.c): records of be64 (offset-in-block | flags), flags in the low 12 bits
 *   (TARGET_PAGE_BITS = 12 on x86). Flags (ram.c:76-84, qemu-file.h:161): 0x01 FULL
 *   (obsolete), 0x02 ZERO, 0x04 MEM_SIZE, 0x08 PAGE, 0x10 EOS, 0x20 CONTINUE, 0x40 XBZRLE,
 *   0x80 HOOK (RDMA), 0x100 COMPRESS_PAGE.
 *     * START payload (ram.c:3209 ram_save_setup): MEM_SIZE record whose offset is the
 *       total of all block lengths, then per block: byte len, idstr, be64 used_length
 *       (+ be64 page size with postcopy-ram on huge pages, + be64 GPA with x-ignore-shared:
 *       neither is supported here; the length sum check catches them), then EOS.
 *     * Page records (ram.c:655 save_page_header): without CONTINUE the header is followed
 *       by byte len + block idstr; with CONTINUE the block is the one named by the last
 *       record that named one (the sender's last_sent_block; the loader's
 *       last_recv_block, ram.c:3519 ram_block_from_stream; both persist across sections).
 *       ZERO: one fill byte (always 0 in 7.2). PAGE: 4096 bytes.
 *     * Every RAM section ends with an EOS record (ram.c:3253, 3368, 3438).
 * - Loading (ram.c:4214 ram_load_precopy) writes only the pages the stream carries; the
 *   other pages of a block are not touched. Removing the `pc.ram` records is sound:
 *   a record that stays is either named (always safe) or CONTINUE, and CONTINUE means the
 *   previous page record was of the same block, hence also kept, so the loader's
 *   last_recv_block is still right. The MEM_SIZE block list stays, so the loader still
 *   checks that `pc.ram` exists and has the same length (ram.c:4313).
 *   Leaving out the ZERO records of `pc.ram` matters too: the loader handles one with
 *   ram_handle_compressed (ram.c:3613), which reads the page (buffer_is_zero) and so would
 *   fault in the whole RAM image at load time.
 * - Precopy sends a page again when the guest dirtied it (later copies win), and may send
 *   a page as ZERO after it was sent with data: such a page is written as zeros here.
 *   A ZERO page never sent with data before is left as a hole (the image starts empty).
 * - Not supported, refused with a clear error: compression (COMPRESS_PAGE), XBZRLE, RDMA
 *   (HOOK), the obsolete FULL flag, unknown flags (a later QEMU's MULTIFD_FLUSH 0x200),
 *   QEMU_VM_COMMAND sections (postcopy, COLO, return path), any iterable section but "ram".
 *   Multifd pages travel on other channels and never reach this stream (7.2 needs no flag
 *   in the main stream for it): a multifd save must not be used with this splitter.
 *
 * The parser never copies page data that arrives whole in one chunk: `onRam` gets views of
 * the input chunks (so chunks must not be modified after push()), contiguous pages batched
 * into one call (a positioned writev). Writes run one at a time, in stream order (a later
 * copy of a page must land after an earlier one); write() returns false (and push() waits)
 * while the queued bytes are above the high-water mark, so a fast sender is held back by a
 * slow disk.
 */

export const TARGET_PAGE_SIZE = 4096;
const TARGET_PAGE_MASK_LOW = TARGET_PAGE_SIZE - 1;

const QEMU_VM_FILE_MAGIC = 0x5145564d;
const QEMU_VM_FILE_VERSION = 3;

const QEMU_VM_EOF = 0x00;
const QEMU_VM_SECTION_START = 0x01;
const QEMU_VM_SECTION_PART = 0x02;
const QEMU_VM_SECTION_END = 0x03;
const QEMU_VM_SECTION_FULL = 0x04;
const QEMU_VM_SUBSECTION = 0x05;
const QEMU_VM_VMDESCRIPTION = 0x06;
const QEMU_VM_CONFIGURATION = 0x07;
const QEMU_VM_COMMAND = 0x08;
const QEMU_VM_SECTION_FOOTER = 0x7e;

export const RAM_SAVE_FLAG_FULL = 0x01;
export const RAM_SAVE_FLAG_ZERO = 0x02;
export const RAM_SAVE_FLAG_MEM_SIZE = 0x04;
export const RAM_SAVE_FLAG_PAGE = 0x08;
export const RAM_SAVE_FLAG_EOS = 0x10;
export const RAM_SAVE_FLAG_CONTINUE = 0x20;
export const RAM_SAVE_FLAG_XBZRLE = 0x40;
export const RAM_SAVE_FLAG_HOOK = 0x80;
export const RAM_SAVE_FLAG_COMPRESS_PAGE = 0x100;

const UNSUPPORTED_FLAGS: [number, string][] = [
  [RAM_SAVE_FLAG_COMPRESS_PAGE, 'a compressed page (RAM_SAVE_FLAG_COMPRESS_PAGE: the "compress" capability is on)'],
  [RAM_SAVE_FLAG_XBZRLE, 'an XBZRLE-encoded page (RAM_SAVE_FLAG_XBZRLE: the "xbzrle" capability is on)'],
  [RAM_SAVE_FLAG_HOOK, 'an RDMA hook (RAM_SAVE_FLAG_HOOK)'],
  [RAM_SAVE_FLAG_FULL, 'the obsolete RAM_SAVE_FLAG_FULL'],
];
const KNOWN_FLAGS = RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_MEM_SIZE | RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_EOS | RAM_SAVE_FLAG_CONTINUE;

/** A RAM block as the stream's block list names it. */
export interface RamBlockInfo {
  id: string;
  /** used_length in bytes. */
  size: number;
}

export type StreamMode = 'background-snapshot' | 'precopy';

export interface SplitSummary {
  /** background-snapshot: the device part follows the last RAM PART; precopy: a RAM END section came first. */
  mode: StreamMode;
  /** Machine type from the configuration section, e.g. "pc-q35-7.2" (undefined if the stream has none). */
  machine: string | undefined;
  ramBlock: string;
  /** Size of the RAM block (the RAM image's length), from the MEM_SIZE block list. */
  ramBlockBytes: number;
  /** Every RAM block in the stream's block list. */
  blocks: RamBlockInfo[];
  /** PAGE records of the RAM block (a page sent twice counts twice). */
  pagesWritten: number;
  /** Of those, pages that had been sent before in this stream (precopy re-sends). */
  pagesRewritten: number;
  /** ZERO records of the RAM block. */
  zeroPages: number;
  /** Of those, pages that had been sent with data before and were written as zeros. */
  zeroPagesWritten: number;
  /** Pages of the RAM block that the stream never mentioned (left as holes). */
  pagesNeverSent: number;
  /** Pages of the RAM block that hold data in the image. */
  pagesWithData: number;
  /** Page records of other blocks (kept in the device stream). */
  otherBlockPages: number;
  /** RAM sections: START + PARTs (+ END). */
  ramSections: number;
  /** Bytes of the input stream. */
  inputBytes: number;
  /** Bytes of the device-state stream. */
  deviceBytes: number;
  /** Number of device sections, from the vmdesc JSON at the end of the stream. */
  vmdescDevices: number;
  /**
   * Where RAM pages can be put back: the device-state offset just after the RAM START
   * section (and its footer), the RAM section's id, and whether sections have footers.
   * joinStream() (stream-join.ts) rebuilds a whole stream by inserting a PART there.
   */
  ramStart: { endOffset: number; sectionId: number; footers: boolean };
}

export type RamSink = (offset: number, data: readonly Buffer[], byteLength: number) => Promise<void> | void;
export type DeviceSink = (data: readonly Buffer[], byteLength: number) => Promise<void> | void;

export interface StreamSplitterOptions {
  /** The RAM block whose pages go to the RAM image. Default "pc.ram". */
  ramBlock?: string;
  /**
   * Called once, when the block list has been read and before any onRam call: the size
   * of the RAM image to create. Runs in order with the RAM writes.
   */
  onRamBlock?: (block: RamBlockInfo) => Promise<void> | void;
  /** Writes `data` (contiguous pages, views of the input) at `offset` of the RAM image. */
  onRam: RamSink;
  /** Appends `data` to the device-state stream. */
  onDevice: DeviceSink;
  /** Largest batch of contiguous pages per onRam call. Default 1 MiB. */
  maxRunBytes?: number;
  /** push() waits while more than this many bytes are queued for the sinks. Default 32 MiB. */
  highWaterMark?: number;
  /**
   * Refuse a stream without any page of the RAM block (default true: a save always sends
   * each page once, so none means multifd). False to read a device-state stream, which
   * has none by design.
   */
  requireRamPages?: boolean;
  /**
   * The RAM image does not start empty (it is a copy of another one): ZERO records must
   * reach onRam as zero pages too, or the copy's data would show through them.
   */
  nonEmptyImage?: boolean;
}

/** The stream is not one this splitter can split (or not a QEMU 7.2 migration stream at all). */
export class MigrationStreamError extends VmsnapError {
  constructor(message: string, offset: number, details: Record<string, unknown> = {}) {
    super('INVALID_ARGUMENT', `migration stream at byte ${offset}: ${message}`, {
      details: { ...details, streamOffset: offset },
      hint: 'the memory state must be saved by QEMU 7.2 with default migration capabilities (no compress, xbzrle, multifd, postcopy, rdma, block migration)',
    });
  }
}

enum S {
  FileHeader,
  TopType,
  ConfigLen,
  ConfigName,
  SubsecIdLen,
  SubsecId,
  SubsecVersion,
  SubsecU32,
  SubsecUuid,
  CapCount,
  CapLen,
  CapName,
  SecId,
  SecIdStrLen,
  SecIdStr,
  SecInstVer,
  RecHeader,
  RecIdLen,
  RecIdStr,
  PageData,
  ZeroByte,
  BlockIdLen,
  BlockId,
  BlockLen,
  AfterRamSection,
  FooterId,
  Device,
}

const STATE_NAMES: Record<S, string> = {
  [S.FileHeader]: 'the file header',
  [S.TopType]: 'a section header',
  [S.ConfigLen]: 'the configuration section',
  [S.ConfigName]: 'the configuration section',
  [S.SubsecIdLen]: 'a configuration subsection',
  [S.SubsecId]: 'a configuration subsection',
  [S.SubsecVersion]: 'a configuration subsection',
  [S.SubsecU32]: 'a configuration subsection',
  [S.SubsecUuid]: 'a configuration subsection',
  [S.CapCount]: 'a configuration subsection',
  [S.CapLen]: 'a configuration subsection',
  [S.CapName]: 'a configuration subsection',
  [S.SecId]: 'a section header',
  [S.SecIdStrLen]: 'a section header',
  [S.SecIdStr]: 'a section header',
  [S.SecInstVer]: 'a section header',
  [S.RecHeader]: 'the RAM section',
  [S.RecIdLen]: 'a RAM page header',
  [S.RecIdStr]: 'a RAM page header',
  [S.PageData]: 'a RAM page',
  [S.ZeroByte]: 'a RAM page',
  [S.BlockIdLen]: 'the RAM block list',
  [S.BlockId]: 'the RAM block list',
  [S.BlockLen]: 'the RAM block list',
  [S.AfterRamSection]: 'a section footer',
  [S.FooterId]: 'a section footer',
  [S.Device]: 'the device state',
};

/** Page states in the RAM block: never mentioned, zero (hole or written zeros), data. */
const PAGE_UNSEEN = 0;
const PAGE_ZERO = 1;
const PAGE_DATA = 2;

const ZERO_PAGE = Buffer.alloc(TARGET_PAGE_SIZE);
/** The device stream's last bytes kept to check its end (EOF + vmdesc). */
const TAIL_KEEP = 8 * 1024 * 1024;
const DEVICE_FLUSH_BYTES = 256 * 1024;

interface Block extends RamBlockInfo {
  isRam: boolean;
}

type SectionKind = 'start' | 'part' | 'end';

export class StreamSplitter {
  private readonly ramBlockName: string;
  private readonly onRamBlock: ((block: RamBlockInfo) => Promise<void> | void) | undefined;
  private readonly onRam: RamSink;
  private readonly onDevice: DeviceSink;
  private readonly maxRunBytes: number;
  private readonly highWaterMark: number;
  private readonly requireRamPages: boolean;
  private readonly nonEmptyImage: boolean;

  // Parser state
  private state: S = S.FileHeader;
  private need = 8;
  private carry: Buffer | undefined;
  private carryLen = 0;
  /** Stream offset of the first byte of the current chunk. */
  private chunkBase = 0;
  /** Stream offset of the item being parsed (for errors). */
  private itemOffset = 0;
  private configSeen = false;
  private inConfig = false;
  private subsecName = '';
  private capsLeft = 0;
  private machine: string | undefined;
  private sectionType = 0;
  private sectionId = 0;
  private sectionKind: SectionKind = 'start';
  private ramSectionId: number | undefined;
  private ramEnded = false;
  private memSizeSeen = false;
  private memRemaining = 0;
  private blockIdPending = '';
  private readonly blocks = new Map<string, Block>();
  private ramBlock: Block | undefined;
  private curBlock: Block | undefined;
  private recFlags = 0;
  private recAddr = 0;
  private recIsRam = false;
  /** Header pieces of a named page record, kept until we know its block. */
  private recPending: Buffer[] = [];
  private pageState: Uint8Array = new Uint8Array(0);
  private mode: StreamMode | undefined;
  private ramStartEnd: number | undefined;
  private footers = false;

  // Output state
  private runOffset = 0;
  private runBufs: Buffer[] = [];
  private runBytes = 0;
  private devBufs: Buffer[] = [];
  private devBytes = 0;
  private stage: Buffer = Buffer.alloc(0);
  private stageStart = 0;
  private stageLen = 0;
  private tail: Buffer[] = [];
  private tailBytes = 0;
  private ramTail: Promise<void> = Promise.resolve();
  private devTail: Promise<void> = Promise.resolve();
  private queued = 0;
  private waiters: (() => void)[] = [];
  private failure: unknown;
  private ended = false;

  private readonly stats = {
    pagesWritten: 0,
    pagesRewritten: 0,
    zeroPages: 0,
    zeroPagesWritten: 0,
    otherBlockPages: 0,
    ramSections: 0,
    inputBytes: 0,
    deviceBytes: 0,
  };

  constructor(opts: StreamSplitterOptions) {
    this.ramBlockName = opts.ramBlock ?? 'pc.ram';
    this.onRamBlock = opts.onRamBlock;
    this.onRam = opts.onRam;
    this.onDevice = opts.onDevice;
    this.maxRunBytes = Math.max(TARGET_PAGE_SIZE, opts.maxRunBytes ?? 1024 * 1024);
    this.highWaterMark = opts.highWaterMark ?? 32 * 1024 * 1024;
    this.requireRamPages = opts.requireRamPages ?? true;
    this.nonEmptyImage = opts.nonEmptyImage ?? false;
  }

  /**
   * Feeds the next bytes of the stream (parsed at once; writes are queued). Returns false
   * when more than the high-water mark is queued for the sinks: wait for drained() before
   * the next write. Throws on a malformed or unsupported stream, or after a failed write.
   * The chunk must not be modified afterwards.
   */
  write(chunk: Buffer): boolean {
    if (this.failure !== undefined) throw this.failure;
    if (this.ended) throw new VmsnapError('INTERNAL', 'StreamSplitter.write() after end()');
    try {
      this.parse(chunk);
    } catch (e) {
      this.fail(e);
      throw e;
    }
    if (this.devBytes >= DEVICE_FLUSH_BYTES) this.flushDevice();
    return this.queued <= this.highWaterMark;
  }

  /** Resolves once the queued writes are below the high-water mark (rejects if a write failed). */
  async drained(): Promise<void> {
    while (this.queued > this.highWaterMark && this.failure === undefined) {
      await new Promise<void>((r) => this.waiters.push(r));
    }
    if (this.failure !== undefined) throw this.failure;
  }

  /** write() and, when needed, drained(): resolves when the splitter is ready for more. */
  async push(chunk: Buffer): Promise<void> {
    if (!this.write(chunk)) await this.drained();
  }

  /** The stream is complete: checks that it ended where a stream ends, waits for every write, and sums up. */
  async end(): Promise<SplitSummary> {
    if (this.failure !== undefined) throw this.failure;
    this.ended = true;
    let vmdescDevices: number;
    try {
      if (this.state !== S.Device) {
        throw new MigrationStreamError(`the stream ended inside ${STATE_NAMES[this.state]}: it is truncated (did the migration fail?)`, this.chunkBase);
      }
      vmdescDevices = this.checkTail();
      if (this.requireRamPages && this.stats.pagesWritten + this.stats.zeroPages === 0) {
        // Every save sends each page at least once (the dirty bitmap starts full); with
        // multifd the pages travel on other connections, which this splitter never sees.
        throw new MigrationStreamError(`the stream carries no page of "${this.ramBlockName}": saved with multifd, or not a full save`, this.chunkBase);
      }
    } catch (e) {
      this.fail(e);
      throw e;
    }
    this.flushRun();
    this.flushDevice();
    await Promise.all([this.ramTail, this.devTail]);
    if (this.failure !== undefined) throw this.failure;
    const ram = this.ramBlock!;
    let withData = 0;
    let unseen = 0;
    for (const s of this.pageState) {
      if (s === PAGE_DATA) withData++;
      else if (s === PAGE_UNSEEN) unseen++;
    }
    return {
      mode: this.mode!,
      machine: this.machine,
      ramBlock: ram.id,
      ramBlockBytes: ram.size,
      blocks: [...this.blocks.values()].map((b) => ({ id: b.id, size: b.size })),
      pagesWritten: this.stats.pagesWritten,
      pagesRewritten: this.stats.pagesRewritten,
      zeroPages: this.stats.zeroPages,
      zeroPagesWritten: this.stats.zeroPagesWritten,
      pagesNeverSent: unseen,
      pagesWithData: withData,
      otherBlockPages: this.stats.otherBlockPages,
      ramSections: this.stats.ramSections,
      inputBytes: this.stats.inputBytes,
      deviceBytes: this.stats.deviceBytes,
      vmdescDevices,
      ramStart: { endOffset: this.ramStartEnd!, sectionId: this.ramSectionId!, footers: this.footers },
    };
  }

  /** After end(): the runs of pages (offset, bytes) of the RAM block that the stream never mentioned. */
  *unseenRuns(): Generator<[number, number]> {
    let start = -1;
    for (let i = 0; i <= this.pageState.length; i++) {
      const unseen = i < this.pageState.length && this.pageState[i] === PAGE_UNSEEN;
      if (unseen && start < 0) start = i;
      if (!unseen && start >= 0) {
        yield [start * TARGET_PAGE_SIZE, (i - start) * TARGET_PAGE_SIZE];
        start = -1;
      }
    }
  }

  /** Stops: pending writes finish, nothing more is accepted. */
  abort(reason: unknown = new VmsnapError('INTERRUPTED', 'stream split aborted')): void {
    this.fail(reason);
  }

  // ---------------------------------------------------------------- parsing

  private parse(chunk: Buffer): void {
    this.stats.inputBytes += chunk.length;
    let pos = 0;
    const len = chunk.length;
    while (pos < len) {
      if (this.state === S.Device) {
        this.keepDevice(chunk.subarray(pos));
        break;
      }
      const need = this.need;
      let buf: Buffer;
      let off: number;
      if (this.carryLen === 0 && len - pos >= need) {
        buf = chunk;
        off = pos;
        this.itemOffset = this.chunkBase + pos;
        pos += need;
      } else {
        if (this.carryLen === 0) {
          this.carry = Buffer.allocUnsafe(need);
          this.itemOffset = this.chunkBase + pos;
        }
        const take = Math.min(need - this.carryLen, len - pos);
        chunk.copy(this.carry!, this.carryLen, pos, pos + take);
        this.carryLen += take;
        pos += take;
        if (this.carryLen < need) break;
        buf = this.carry!;
        off = 0;
        this.carry = undefined;
        this.carryLen = 0;
      }
      this.step(buf, off);
    }
    this.chunkBase += len;
  }

  private error(message: string, details?: Record<string, unknown>): MigrationStreamError {
    return new MigrationStreamError(message, this.itemOffset, details);
  }

  /** Next item: `n` bytes in state `s`. A zero-length item is handled at once. */
  private expect(s: S, n: number): void {
    this.state = s;
    this.need = n;
    if (n === 0) this.step(ZERO_PAGE, 0);
  }

  private step(buf: Buffer, off: number): void {
    const n = this.need;
    switch (this.state) {
      case S.RecHeader:
        return this.onRecordHeader(buf, off);
      case S.PageData: {
        const view = buf.subarray(off, off + TARGET_PAGE_SIZE);
        if (this.recIsRam) this.ramPage(this.recAddr, view);
        else {
          this.keepDevice(view);
          this.stats.otherBlockPages++;
        }
        return this.expect(S.RecHeader, 8);
      }
      case S.ZeroByte: {
        if (this.recIsRam) this.ramZero(this.recAddr, buf[off]!);
        else {
          this.keepDevice(buf.subarray(off, off + 1));
          this.stats.otherBlockPages++;
        }
        return this.expect(S.RecHeader, 8);
      }
      case S.RecIdLen: {
        const idLen = buf[off]!;
        this.recPending.push(buf.subarray(off, off + 1));
        if (idLen === 0) throw this.error('a page record names an empty block id');
        return this.expect(S.RecIdStr, idLen);
      }
      case S.RecIdStr: {
        this.recPending.push(buf.subarray(off, off + n));
        const id = buf.toString('latin1', off, off + n);
        const block = this.blocks.get(id);
        if (!block) throw this.error(`a page of block "${id}", which is not in the stream's block list`);
        this.curBlock = block;
        return this.pageRecord(block);
      }
      case S.FileHeader: {
        this.keepDevice(buf.subarray(off, off + 8));
        const magic = buf.readUInt32BE(off);
        const version = buf.readUInt32BE(off + 4);
        if (magic !== QEMU_VM_FILE_MAGIC) throw this.error(`not a QEMU migration stream (magic 0x${magic.toString(16)}, expected 0x5145564d "QEVM")`);
        if (version !== QEMU_VM_FILE_VERSION) throw this.error(`unsupported migration stream version ${version} (expected ${QEMU_VM_FILE_VERSION})`);
        return this.expect(S.TopType, 1);
      }
      case S.TopType:
        return this.onTopType(buf[off]!, buf, off);
      case S.ConfigLen: {
        this.keepDevice(buf.subarray(off, off + 4));
        const l = buf.readUInt32BE(off);
        if (l > 255) throw this.error(`configuration section with a machine name of ${l} bytes`);
        return this.expect(S.ConfigName, l);
      }
      case S.ConfigName:
        this.keepDevice(buf.subarray(off, off + n));
        this.machine = buf.toString('latin1', off, off + n);
        this.inConfig = true;
        return this.expect(S.TopType, 1);
      case S.SubsecIdLen:
        this.keepDevice(buf.subarray(off, off + 1));
        return this.expect(S.SubsecId, buf[off]!);
      case S.SubsecId:
        this.keepDevice(buf.subarray(off, off + n));
        this.subsecName = buf.toString('latin1', off, off + n);
        if (!['configuration/target-page-bits', 'configuration/capabilities', 'configuration/uuid'].includes(this.subsecName)) {
          throw this.error(`unknown configuration subsection "${this.subsecName}"`);
        }
        return this.expect(S.SubsecVersion, 4);
      case S.SubsecVersion:
        this.keepDevice(buf.subarray(off, off + 4));
        if (this.subsecName === 'configuration/target-page-bits') return this.expect(S.SubsecU32, 4);
        if (this.subsecName === 'configuration/uuid') return this.expect(S.SubsecUuid, 16);
        return this.expect(S.CapCount, 4);
      case S.SubsecU32: {
        this.keepDevice(buf.subarray(off, off + 4));
        const bits = buf.readUInt32BE(off);
        if (bits !== 12) throw this.error(`target page size 2^${bits}: only 4 KiB target pages are supported`);
        return this.expect(S.TopType, 1);
      }
      case S.SubsecUuid:
        this.keepDevice(buf.subarray(off, off + 16));
        return this.expect(S.TopType, 1);
      case S.CapCount:
        this.keepDevice(buf.subarray(off, off + 4));
        this.capsLeft = buf.readUInt32BE(off);
        if (this.capsLeft > 1000) throw this.error(`configuration lists ${this.capsLeft} capabilities`);
        return this.capsLeft === 0 ? this.expect(S.TopType, 1) : this.expect(S.CapLen, 1);
      case S.CapLen:
        this.keepDevice(buf.subarray(off, off + 1));
        return this.expect(S.CapName, buf[off]!);
      case S.CapName: {
        this.keepDevice(buf.subarray(off, off + n));
        const cap = buf.toString('latin1', off, off + n);
        // x-ignore-shared adds a GPA to every block of the block list and leaves shared blocks out.
        if (cap === 'x-ignore-shared') throw this.error('the stream was saved with the x-ignore-shared capability');
        this.capsLeft--;
        return this.capsLeft === 0 ? this.expect(S.TopType, 1) : this.expect(S.CapLen, 1);
      }
      case S.SecId: {
        this.keepDevice(buf.subarray(off, off + 4));
        this.sectionId = buf.readUInt32BE(off);
        if (this.sectionType === QEMU_VM_SECTION_START) return this.expect(S.SecIdStrLen, 1);
        // PART or END: only of the RAM section
        if (this.ramSectionId === undefined || this.sectionId !== this.ramSectionId) {
          throw this.error(`a ${this.sectionType === QEMU_VM_SECTION_PART ? 'PART' : 'END'} section of section id ${this.sectionId}, which is not the RAM section (only "ram" may be iterable)`);
        }
        if (this.ramEnded) throw this.error('a RAM section after the RAM END section');
        this.sectionKind = this.sectionType === QEMU_VM_SECTION_PART ? 'part' : 'end';
        if (this.sectionKind === 'end') this.ramEnded = true;
        this.stats.ramSections++;
        return this.expect(S.RecHeader, 8);
      }
      case S.SecIdStrLen:
        this.keepDevice(buf.subarray(off, off + 1));
        return this.expect(S.SecIdStr, buf[off]!);
      case S.SecIdStr: {
        this.keepDevice(buf.subarray(off, off + n));
        const idstr = buf.toString('latin1', off, off + n);
        if (idstr !== 'ram') {
          throw this.error(`an iterable section "${idstr}": only "ram" is supported (block migration, dirty bitmaps and VFIO state must be off)`);
        }
        if (this.ramSectionId !== undefined) throw this.error('a second START section of "ram"');
        this.ramSectionId = this.sectionId;
        return this.expect(S.SecInstVer, 8);
      }
      case S.SecInstVer: {
        this.keepDevice(buf.subarray(off, off + 8));
        const version = buf.readUInt32BE(off + 4);
        if (version !== 4) throw this.error(`RAM section version ${version} (QEMU 7.2 writes 4)`);
        this.sectionKind = 'start';
        this.stats.ramSections++;
        return this.expect(S.RecHeader, 8);
      }
      case S.BlockIdLen:
        this.keepDevice(buf.subarray(off, off + 1));
        if (buf[off] === 0) throw this.error('an empty block id in the block list');
        return this.expect(S.BlockId, buf[off]!);
      case S.BlockId:
        this.keepDevice(buf.subarray(off, off + n));
        this.blockIdPending = buf.toString('latin1', off, off + n);
        return this.expect(S.BlockLen, 8);
      case S.BlockLen:
        this.keepDevice(buf.subarray(off, off + 8));
        return this.onBlockLength(buf.readUInt32BE(off) * 0x1_0000_0000 + buf.readUInt32BE(off + 4));
      case S.AfterRamSection: {
        const b = buf[off]!;
        if (b === QEMU_VM_SECTION_FOOTER) {
          this.keepDevice(buf.subarray(off, off + 1));
          this.footers = true;
          return this.expect(S.FooterId, 4);
        }
        this.markRamStartEnd();
        return this.onTopType(b, buf, off);
      }
      case S.FooterId: {
        this.keepDevice(buf.subarray(off, off + 4));
        const id = buf.readUInt32BE(off);
        if (id !== this.ramSectionId) throw this.error(`section footer of id ${id} after the RAM section (id ${this.ramSectionId})`);
        this.markRamStartEnd();
        return this.expect(S.TopType, 1);
      }
      case S.Device:
        throw new VmsnapError('INTERNAL', 'stream splitter: step() in device state');
    }
  }

  /** A RAM section just ended: if it was the START, remember where (in the device stream). */
  private markRamStartEnd(): void {
    if (this.sectionKind === 'start' && this.ramStartEnd === undefined) this.ramStartEnd = this.stats.deviceBytes;
  }

  private onTopType(b: number, buf: Buffer, off: number): void {
    const inConfig = this.inConfig;
    this.inConfig = false;
    switch (b) {
      case QEMU_VM_CONFIGURATION:
        if (this.configSeen || this.ramSectionId !== undefined) throw this.error('a configuration section after the start of the stream');
        this.configSeen = true;
        this.keepDevice(buf.subarray(off, off + 1));
        return this.expect(S.ConfigLen, 4);
      case QEMU_VM_SUBSECTION:
        if (!inConfig) throw this.error('a subsection outside the configuration section');
        this.inConfig = true; // more subsections may follow this one
        this.keepDevice(buf.subarray(off, off + 1));
        return this.expect(S.SubsecIdLen, 1);
      case QEMU_VM_SECTION_START:
      case QEMU_VM_SECTION_PART:
      case QEMU_VM_SECTION_END:
        this.sectionType = b;
        this.keepDevice(buf.subarray(off, off + 1));
        return this.expect(S.SecId, 4);
      case QEMU_VM_SECTION_FULL:
      case QEMU_VM_EOF:
        if (this.ramSectionId === undefined || !this.ramBlock) throw this.error('device state before any RAM section: not a live migration stream');
        this.mode = this.ramEnded ? 'precopy' : 'background-snapshot';
        this.state = S.Device;
        this.need = 0;
        this.keepDevice(buf.subarray(off, off + 1));
        return;
      case QEMU_VM_COMMAND:
        throw this.error('a QEMU_VM_COMMAND section (postcopy, COLO or return-path): only plain precopy and background-snapshot streams are supported');
      case QEMU_VM_VMDESCRIPTION:
        throw this.error('a vmdesc section before the device state');
      default:
        throw this.error(`unknown section type 0x${b.toString(16)}`);
    }
  }

  private onRecordHeader(buf: Buffer, off: number): void {
    const hi = buf.readUInt32BE(off);
    const lo = buf.readUInt32BE(off + 4);
    const flags = lo & TARGET_PAGE_MASK_LOW;
    const addr = hi * 0x1_0000_0000 + (lo - flags);
    const hdr = buf.subarray(off, off + 8);
    if ((flags & ~KNOWN_FLAGS) !== 0) {
      const known = UNSUPPORTED_FLAGS.find(([f]) => (flags & f) !== 0);
      throw this.error(
        known ? `${known[1]}: not supported` : `unknown RAM record flags 0x${flags.toString(16)} (not written by QEMU 7.2 with default capabilities)`,
        { flags },
      );
    }
    const type = flags & ~RAM_SAVE_FLAG_CONTINUE;
    this.recFlags = flags;
    this.recAddr = addr;
    switch (type) {
      case RAM_SAVE_FLAG_EOS:
        this.keepDevice(hdr);
        return this.expect(S.AfterRamSection, 1);
      case RAM_SAVE_FLAG_MEM_SIZE:
        if (this.sectionKind !== 'start' || this.memSizeSeen) throw this.error('a RAM block list (MEM_SIZE) outside the RAM START section');
        this.memSizeSeen = true;
        this.keepDevice(hdr);
        if (addr === 0) throw this.error('an empty RAM block list');
        this.memRemaining = addr;
        return this.expect(S.BlockIdLen, 1);
      case RAM_SAVE_FLAG_PAGE:
      case RAM_SAVE_FLAG_ZERO:
        if (this.sectionKind === 'start' || !this.ramBlock) throw this.error('a RAM page before the block list was complete');
        if (flags & RAM_SAVE_FLAG_CONTINUE) {
          if (!this.curBlock) throw this.error('a RAM page continuing a block when none was named yet');
          this.recPending.push(hdr);
          return this.pageRecord(this.curBlock);
        }
        this.recPending.push(hdr);
        return this.expect(S.RecIdLen, 1);
      default:
        throw this.error(`unknown combination of RAM record flags 0x${flags.toString(16)}`, { flags });
    }
  }

  /** The header of a page record is complete and its block known. */
  private pageRecord(block: Block): void {
    if (this.recAddr + TARGET_PAGE_SIZE > block.size) {
      throw this.error(`page at offset ${this.recAddr} is beyond the end of block "${block.id}" (${block.size} bytes)`);
    }
    this.recIsRam = block.isRam;
    if (!block.isRam) for (const b of this.recPending) this.keepDevice(b);
    this.recPending = [];
    if ((this.recFlags & ~RAM_SAVE_FLAG_CONTINUE) === RAM_SAVE_FLAG_PAGE) this.expect(S.PageData, TARGET_PAGE_SIZE);
    else this.expect(S.ZeroByte, 1);
  }

  private onBlockLength(length: number): void {
    const id = this.blockIdPending;
    if (this.blocks.has(id)) throw this.error(`block "${id}" listed twice`);
    if (length > this.memRemaining) {
      throw this.error(`the block list does not add up to its total (block "${id}" of ${length} bytes); postcopy-ram or x-ignore-shared streams are not supported`);
    }
    const isRam = id === this.ramBlockName;
    const block: Block = { id, size: length, isRam };
    this.blocks.set(id, block);
    this.memRemaining -= length;
    if (this.memRemaining > 0) return this.expect(S.BlockIdLen, 1);
    const ram = [...this.blocks.values()].find((b) => b.isRam);
    if (!ram) {
      throw this.error(`the stream has no RAM block "${this.ramBlockName}" (blocks: ${[...this.blocks.keys()].join(', ')})`);
    }
    if (ram.size % TARGET_PAGE_SIZE !== 0 || ram.size === 0) throw this.error(`RAM block "${ram.id}" has a size of ${ram.size} bytes, not a whole number of pages`);
    this.ramBlock = ram;
    this.pageState = new Uint8Array(ram.size / TARGET_PAGE_SIZE);
    const info = { id: ram.id, size: ram.size };
    if (this.onRamBlock) {
      const cb = this.onRamBlock;
      this.enqueue('ram', 0, () => cb(info));
    }
    return this.expect(S.RecHeader, 8);
  }

  // ---------------------------------------------------------------- RAM image

  private ramPage(addr: number, view: Buffer): void {
    const idx = addr / TARGET_PAGE_SIZE;
    if (this.pageState[idx] !== PAGE_UNSEEN) this.stats.pagesRewritten++;
    this.pageState[idx] = PAGE_DATA;
    this.stats.pagesWritten++;
    this.appendRun(addr, view);
  }

  private ramZero(addr: number, fill: number): void {
    const idx = addr / TARGET_PAGE_SIZE;
    this.stats.zeroPages++;
    if (fill !== 0) {
      // QEMU 7.2 always sends 0; the loader would fill the page with `fill` (ram_handle_compressed).
      this.pageState[idx] = PAGE_DATA;
      this.appendRun(addr, Buffer.alloc(TARGET_PAGE_SIZE, fill));
    } else if (this.pageState[idx] === PAGE_DATA) {
      // Precopy: the page was sent with data earlier in this stream and is zero now.
      this.pageState[idx] = PAGE_ZERO;
      this.stats.zeroPagesWritten++;
      this.appendRun(addr, ZERO_PAGE);
    } else if (this.nonEmptyImage) {
      this.pageState[idx] = PAGE_ZERO;
      this.appendRun(addr, ZERO_PAGE);
    } else {
      this.pageState[idx] = PAGE_ZERO; // a hole in a fresh image reads as zeros
    }
  }

  private appendRun(addr: number, view: Buffer): void {
    if (this.runBytes > 0 && addr === this.runOffset + this.runBytes && this.runBytes < this.maxRunBytes) {
      this.runBufs.push(view);
      this.runBytes += view.length;
      return;
    }
    this.flushRun();
    this.runOffset = addr;
    this.runBufs = [view];
    this.runBytes = view.length;
  }

  private flushRun(): void {
    if (this.runBytes === 0) return;
    const offset = this.runOffset;
    const bufs = this.runBufs;
    const bytes = this.runBytes;
    this.runBufs = [];
    this.runBytes = 0;
    this.enqueue('ram', bytes, () => this.onRam(offset, bufs, bytes));
  }

  // ---------------------------------------------------------------- device stream

  /**
   * Appends to the device stream. Before the device part, pieces are small (headers, EOS
   * markers, pages of small blocks) and are copied into a staging buffer, so that they do
   * not keep whole input chunks alive; the device part itself is passed on as views.
   */
  private keepDevice(view: Buffer): void {
    const n = view.length;
    if (n === 0) return;
    this.stats.deviceBytes += n;
    this.devBytes += n;
    if (this.state === S.Device) {
      this.sealStage();
      this.devBufs.push(view);
      this.keepTail(view);
      return;
    }
    if (this.stage.length - this.stageLen < n) {
      this.sealStage();
      this.stage = Buffer.allocUnsafeSlow(Math.max(DEVICE_FLUSH_BYTES, n));
      this.stageStart = 0;
      this.stageLen = 0;
    }
    view.copy(this.stage, this.stageLen);
    this.stageLen += n;
  }

  /** Moves the staged bytes into the output list; the rest of the staging buffer is used for what follows. */
  private sealStage(): void {
    if (this.stageLen === this.stageStart) return;
    this.devBufs.push(this.stage.subarray(this.stageStart, this.stageLen));
    this.stageStart = this.stageLen;
  }

  private keepTail(view: Buffer): void {
    this.tail.push(view);
    this.tailBytes += view.length;
    while (this.tail.length > 1 && this.tailBytes - this.tail[0]!.length >= TAIL_KEEP) {
      this.tailBytes -= this.tail.shift()!.length;
    }
  }

  private flushDevice(): void {
    this.sealStage();
    if (this.devBytes === 0) return;
    const bufs = this.devBufs;
    const bytes = this.devBytes;
    this.devBufs = [];
    this.devBytes = 0;
    this.enqueue('dev', bytes, () => this.onDevice(bufs, bytes));
  }

  /**
   * The device part must end with QEMU_VM_EOF followed by the vmdesc (savevm.c:1417-1427):
   * anything else means the stream was cut short. Returns the number of devices vmdesc lists.
   */
  private checkTail(): number {
    const tail = Buffer.concat(this.tail);
    const end = tail.length;
    for (let p = end - 6; p >= 1; p--) {
      if (tail[p] !== QEMU_VM_VMDESCRIPTION || tail[p - 1] !== QEMU_VM_EOF) continue;
      if (tail.readUInt32BE(p + 1) !== end - (p + 5)) continue;
      let desc: unknown;
      try {
        desc = JSON.parse(tail.toString('utf8', p + 5));
      } catch {
        continue;
      }
      if (typeof desc !== 'object' || desc === null) continue;
      const d = desc as { page_size?: unknown; devices?: unknown };
      if (d.page_size !== TARGET_PAGE_SIZE) throw new MigrationStreamError(`vmdesc gives a page size of ${String(d.page_size)}`, this.chunkBase - (end - p));
      return Array.isArray(d.devices) ? d.devices.length : 0;
    }
    throw new MigrationStreamError('the stream does not end with QEMU_VM_EOF and the vmdesc: it is truncated (did the migration fail?)', this.chunkBase);
  }

  // ---------------------------------------------------------------- sinks

  private enqueue(which: 'ram' | 'dev', bytes: number, run: () => Promise<void> | void): void {
    this.queued += bytes;
    const prev = which === 'ram' ? this.ramTail : this.devTail;
    const next = prev.then(async () => {
      if (this.failure !== undefined) return;
      try {
        await run();
      } catch (e) {
        this.fail(e);
      }
      this.queued -= bytes;
      if (this.queued <= this.highWaterMark / 2) this.wake();
    });
    if (which === 'ram') this.ramTail = next;
    else this.devTail = next;
  }

  private fail(e: unknown): void {
    if (this.failure === undefined) this.failure = e;
    this.wake();
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const r of w) r();
  }
}
