import { createHash } from 'node:crypto';

/**
 * A streaming reader of the tar that libguestfs' tar-out writes (GNU tar in the
 * appliance: ustar headers, GNU long names 'L'/'K', PAX 'x'/'g' records, base-256
 * numbers). It yields every member's metadata and, when asked, the SHA-256 of its
 * content, without keeping the content. Names are bytes in a tar: a name that is
 * not UTF-8 is given with U+FFFD in `path` and its bytes in `rawPath` (base64).
 */

export type TarEntryType = 'file' | 'dir' | 'symlink' | 'hardlink' | 'chardev' | 'blockdev' | 'fifo' | 'unknown';

export interface TarEntry {
  /** Relative to the tarred directory, without a leading './'; '' is the directory itself. */
  path: string;
  /** The name's bytes, base64, only when they are not UTF-8. */
  rawPath?: string;
  type: TarEntryType;
  size: number;
  /** Permission bits (with setuid, setgid, sticky). */
  mode: number;
  mtime: Date;
  uid: number;
  gid: number;
  /** Symlink target, or for a hard link the member it links to. */
  linkTarget?: string;
  /** Hex SHA-256 of a regular file's content (when hashing was asked for). */
  sha256?: string;
}

const BLOCK = 512;

function decodeName(bytes: Buffer): { text: string; raw?: string } {
  const text = bytes.toString('utf8');
  // A round trip that changes the bytes means they were not valid UTF-8.
  if (Buffer.from(text, 'utf8').equals(bytes)) return { text };
  return { text, raw: bytes.toString('base64') };
}

function cString(buf: Buffer, start: number, len: number): Buffer {
  const field = buf.subarray(start, start + len);
  const nul = field.indexOf(0);
  return nul === -1 ? field : field.subarray(0, nul);
}

function tarNumber(buf: Buffer, start: number, len: number): number {
  const field = buf.subarray(start, start + len);
  const first = field[0] ?? 0;
  if (first & 0x80) {
    // base-256: big-endian two's complement with the top bit as a marker
    let v = BigInt(first & 0x7f);
    for (let i = 1; i < field.length; i++) v = (v << 8n) | BigInt(field[i] ?? 0);
    return Number(v);
  }
  const text = cString(buf, start, len).toString('latin1').trim();
  return text === '' ? 0 : parseInt(text, 8);
}

function checksumOk(header: Buffer): boolean {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : (header[i] ?? 0);
  return sum === tarNumber(header, 148, 8);
}

function parsePax(data: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let pos = 0;
  while (pos < data.length) {
    const space = data.indexOf(0x20, pos);
    if (space === -1) break;
    const len = parseInt(data.subarray(pos, space).toString('latin1'), 10);
    if (!Number.isFinite(len) || len <= 0) break;
    const record = data.subarray(space + 1, pos + len - 1); // drop the trailing \n
    const eq = record.indexOf(0x3d);
    if (eq !== -1) out.set(record.subarray(0, eq).toString('utf8'), record.subarray(eq + 1));
    pos += len;
  }
  return out;
}

function typeOf(flag: string): TarEntryType {
  switch (flag) {
    case '0':
    case '\0':
    case '7':
      return 'file';
    case '1':
      return 'hardlink';
    case '2':
      return 'symlink';
    case '3':
      return 'chardev';
    case '4':
      return 'blockdev';
    case '5':
      return 'dir';
    case '6':
      return 'fifo';
    default:
      return 'unknown';
  }
}

function cleanPath(name: Buffer): Buffer {
  let b = name;
  if (b.length >= 2 && b[0] === 0x2e && b[1] === 0x2f) b = b.subarray(2); // './'
  else if (b.length === 1 && b[0] === 0x2e) b = b.subarray(1); // '.'
  if (b.length > 0 && b[b.length - 1] === 0x2f) b = b.subarray(0, b.length - 1); // trailing '/'
  return b;
}

/** Read a tar stream; call `onEntry` for every member (hashing file content when `hash`). */
export async function scanTar(
  source: AsyncIterable<Buffer | string>,
  onEntry: (e: TarEntry) => void,
  opts: {
    hash?: boolean;
    /** A member's header was read; its content (if any) follows in onContent calls, then onEntry. */
    onStart?: (e: TarEntry) => void;
    onContent?: (e: TarEntry, chunk: Buffer) => void;
  } = {},
): Promise<number> {
  let buf: Buffer = Buffer.alloc(0);
  let count = 0;
  // state of the member being read
  let remaining = 0; // content bytes still to read
  let padding = 0;
  let collecting: Buffer[] | null = null; // for L/K/x/g records
  let collectKind = '';
  let hasher: ReturnType<typeof createHash> | null = null;
  let pending: TarEntry | null = null;
  let longName: Buffer | null = null;
  let longLink: Buffer | null = null;
  let pax = new Map<string, Buffer>();
  let globalPax = new Map<string, Buffer>();

  const finishMember = (): void => {
    if (collecting) {
      const data = Buffer.concat(collecting);
      if (collectKind === 'L') longName = cString(data, 0, data.length);
      else if (collectKind === 'K') longLink = cString(data, 0, data.length);
      else if (collectKind === 'x') pax = parsePax(data);
      else if (collectKind === 'g') globalPax = new Map([...globalPax, ...parsePax(data)]);
      collecting = null;
    } else if (pending) {
      if (hasher) pending.sha256 = hasher.digest('hex');
      hasher = null;
      onEntry(pending);
      count++;
      pending = null;
    }
  };

  const header = (h: Buffer): void => {
    if (!checksumOk(h)) throw new Error('not a tar stream (bad header checksum)');
    const flag = String.fromCharCode(h[156] ?? 0);
    const size = tarNumber(h, 124, 12);
    remaining = size;
    padding = (BLOCK - (size % BLOCK)) % BLOCK;
    if (flag === 'L' || flag === 'K' || flag === 'x' || flag === 'g') {
      collecting = [];
      collectKind = flag;
      return;
    }
    const magic = h.subarray(257, 263).toString('latin1');
    let name = cString(h, 0, 100);
    if (magic.startsWith('ustar')) {
      const prefix = cString(h, 345, 155);
      if (prefix.length > 0 && magic === 'ustar\0') name = Buffer.concat([prefix, Buffer.from('/'), name]);
    }
    const merged = new Map([...globalPax, ...pax]);
    const paxPath = merged.get('path');
    if (paxPath) name = paxPath;
    else if (longName) name = longName;
    let link = cString(h, 157, 100);
    const paxLink = merged.get('linkpath');
    if (paxLink) link = paxLink;
    else if (longLink) link = longLink;
    const mtimePax = merged.get('mtime');
    const mtimeSec = mtimePax ? Number(mtimePax.toString('latin1')) : tarNumber(h, 136, 12);
    const num = (key: string, fallback: number): number => {
      const v = merged.get(key);
      return v ? Number(v.toString('latin1')) : fallback;
    };
    const type = typeOf(flag);
    const realSize = num('size', size);
    remaining = type === 'file' ? realSize : size;
    padding = (BLOCK - (remaining % BLOCK)) % BLOCK;
    const { text, raw } = decodeName(cleanPath(name));
    const e: TarEntry = {
      path: text,
      type,
      size: type === 'file' ? realSize : 0,
      mode: tarNumber(h, 100, 8) & 0o7777,
      mtime: new Date(Math.round(mtimeSec * 1000)),
      uid: num('uid', tarNumber(h, 108, 8)),
      gid: num('gid', tarNumber(h, 116, 8)),
    };
    if (raw) e.rawPath = raw;
    if (type === 'symlink') e.linkTarget = decodeName(link).text;
    if (type === 'hardlink') e.linkTarget = decodeName(cleanPath(link)).text;
    pending = e;
    opts.onStart?.(e);
    hasher = opts.hash && type === 'file' ? createHash('sha256') : null;
    longName = null;
    longLink = null;
    pax = new Map();
  };

  for await (const chunk of source) {
    const c = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    buf = buf.length === 0 ? c : Buffer.concat([buf, c]);
    for (;;) {
      if (remaining > 0) {
        if (buf.length === 0) break;
        const take = Math.min(remaining, buf.length);
        const part = buf.subarray(0, take);
        // (read through the closure-shared state: TS cannot see header() set these)
        const col = collecting as Buffer[] | null;
        const hsh = hasher as ReturnType<typeof createHash> | null;
        if (col) col.push(Buffer.from(part));
        else {
          hsh?.update(part);
          const cur = pending as TarEntry | null;
          if (cur && opts.onContent) opts.onContent(cur, part);
        }
        remaining -= take;
        buf = buf.subarray(take);
        if (remaining > 0) break;
      }
      if (padding > 0) {
        if (buf.length < padding) {
          padding -= buf.length;
          buf = Buffer.alloc(0);
          break;
        }
        buf = buf.subarray(padding);
        padding = 0;
      }
      if (pending || collecting) finishMember();
      if (buf.length < BLOCK) break;
      const h = buf.subarray(0, BLOCK);
      buf = buf.subarray(BLOCK);
      if (h.every((b) => b === 0)) continue; // the end-of-archive blocks
      header(h);
    }
  }
  if (pending || collecting) {
    if (remaining > 0) throw new Error('the tar stream ended inside a member');
    finishMember();
  }
  return count;
}
