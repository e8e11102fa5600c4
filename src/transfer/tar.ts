import type { FileHandle } from 'node:fs/promises';

/**
 * The little of the tar format that vmsnap archives need: POSIX ustar headers
 * for regular files, with GNU base-256 sizes above 8 GiB (GNU tar, bsdtar and
 * Python read them). Written and read by position, because the export lets
 * qemu-img write a disk straight into the archive and fills in its header
 * afterwards, and the import lists every entry (seeking past the data) before
 * it reads any.
 */
export const BLOCK = 512;

/** Octal fits 11 digits: sizes up to 8 GiB - 1. */
const MAX_OCTAL_SIZE = 0o77777777777;

export const padTo512 = (n: number): number => Math.ceil(n / BLOCK) * BLOCK;

function writeString(buf: Buffer, value: string, offset: number, length: number): void {
  const bytes = Buffer.from(value, 'utf8');
  if (bytes.length > length) throw new Error(`tar: '${value}' is longer than ${length} bytes`);
  bytes.copy(buf, offset);
}

function writeOctal(buf: Buffer, value: number, offset: number, length: number): void {
  // length - 1 digits, then NUL.
  writeString(buf, value.toString(8).padStart(length - 1, '0'), offset, length - 1);
}

/** A ustar header for a regular file. */
export function fileHeader(name: string, size: number, mtimeMs: number): Buffer {
  const h = Buffer.alloc(BLOCK);
  writeString(h, name, 0, 100);
  writeOctal(h, 0o600, 100, 8);
  writeOctal(h, 0, 108, 8);
  writeOctal(h, 0, 116, 8);
  if (size <= MAX_OCTAL_SIZE) {
    writeOctal(h, size, 124, 12);
  } else {
    // GNU base-256: the high bit of the first byte set, the value big-endian in the rest.
    h[124] = 0x80;
    h.writeBigUInt64BE(BigInt(size), 128);
  }
  writeOctal(h, Math.floor(mtimeMs / 1000), 136, 12);
  h.write('        ', 148, 'latin1');
  h[156] = 0x30; // '0': regular file
  h.write('ustar\u000000', 257, 'latin1');
  writeString(h, 'vmsnap', 265, 32);
  writeString(h, 'vmsnap', 297, 32);
  const sum = h.reduce((a, b) => a + b, 0);
  writeString(h, `${sum.toString(8).padStart(6, '0')}\u0000 `, 148, 8);
  return h;
}

/** The two zero blocks that end an archive. */
export const END_OF_ARCHIVE = Buffer.alloc(2 * BLOCK);

export interface TarEntry {
  name: string;
  /** Bytes of data. */
  size: number;
  /** Where the data starts in the file. */
  offset: number;
}

export class TarFormatError extends Error {}

function readString(buf: Buffer, offset: number, length: number): string {
  const s = buf.subarray(offset, offset + length);
  const end = s.indexOf(0);
  return s.subarray(0, end === -1 ? length : end).toString('utf8');
}

function readNumber(buf: Buffer, offset: number, length: number): number {
  const first = buf[offset]!;
  if (first & 0x80) {
    // Base-256; a negative value (0xff) is never a valid size.
    if (first === 0xff) throw new TarFormatError('negative number in a header');
    let v = BigInt(first & 0x7f);
    for (let i = 1; i < length; i++) v = (v << 8n) | BigInt(buf[offset + i]!);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new TarFormatError('number too large in a header');
    return Number(v);
  }
  const s = readString(buf, offset, length).trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw new TarFormatError(`bad number '${s}' in a header`);
  return parseInt(s, 8);
}

/** True when the block's checksum matches (unsigned, or the signed sum some old tars wrote). */
function checksumOk(h: Buffer): boolean {
  let stored: number;
  try {
    stored = readNumber(h, 148, 8);
  } catch {
    return false;
  }
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : h[i]!;
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  return stored === unsigned || stored === signed;
}

/** Records of a pax extended header: "LEN key=value\n". */
function parsePax(data: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let pos = 0;
  while (pos < data.length) {
    const space = data.indexOf(0x20, pos);
    if (space === -1) break;
    const len = Number(data.subarray(pos, space).toString('latin1'));
    if (!Number.isInteger(len) || len <= 0 || pos + len > data.length) throw new TarFormatError('bad pax record');
    const rec = data.subarray(space + 1, pos + len - 1).toString('utf8');
    const eq = rec.indexOf('=');
    if (eq > 0) out[rec.slice(0, eq)] = rec.slice(eq + 1);
    pos += len;
  }
  return out;
}

export interface ListResult {
  entries: TarEntry[];
  /** The archive ends with its end-of-archive blocks (not cut short after the last entry). */
  complete: boolean;
}

/**
 * Every regular-file entry of a tar file, found by reading its headers only.
 * Throws TarFormatError when the file is not a tar (the first block is not a
 * valid header) or a header is damaged; an entry whose data runs past the end
 * of the file is reported with `truncated` set by the caller's check of
 * offset + size against the file size.
 */
export async function listEntries(fh: FileHandle, fileSize: number, opts: { maxEntries?: number } = {}): Promise<ListResult> {
  const entries: TarEntry[] = [];
  const header = Buffer.alloc(BLOCK);
  let pos = 0;
  let pax: Record<string, string> = {};
  const maxEntries = opts.maxEntries ?? 64;
  for (;;) {
    if (pos + BLOCK > fileSize) return { entries, complete: false };
    const { bytesRead } = await fh.read(header, 0, BLOCK, pos);
    if (bytesRead < BLOCK) return { entries, complete: false };
    if (header.every((b) => b === 0)) return { entries, complete: true };
    if (!checksumOk(header)) throw new TarFormatError(`damaged tar header at byte ${pos}`);
    const type = String.fromCharCode(header[156]!);
    let name = readString(header, 0, 100);
    const magic = header.subarray(257, 263).toString('latin1');
    if (magic.startsWith('ustar')) {
      const prefix = readString(header, 345, 155);
      if (prefix) name = `${prefix}/${name}`;
    }
    let size = readNumber(header, 124, 12);
    const dataAt = pos + BLOCK;
    if (type === 'x' || type === 'g') {
      if (size > 1024 * 1024) throw new TarFormatError('pax header too large');
      const data = Buffer.alloc(size);
      await fh.read(data, 0, size, dataAt);
      if (type === 'x') pax = parsePax(data);
    } else if (type === '0' || type === '\0' || type === '7') {
      if (pax.path !== undefined) name = pax.path;
      if (pax.size !== undefined) {
        if (!/^[0-9]+$/.test(pax.size)) throw new TarFormatError(`bad pax size '${pax.size}'`);
        size = Number(pax.size);
      }
      pax = {};
      entries.push({ name, size, offset: dataAt });
      if (entries.length > maxEntries) throw new TarFormatError(`more than ${maxEntries} entries`);
    } else {
      // Directories, links and the like carry no data vmsnap reads.
      pax = {};
    }
    pos = dataAt + padTo512(size);
  }
}
