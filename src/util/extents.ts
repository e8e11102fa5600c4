import { execFile } from 'node:child_process';
import { statfsSync } from 'node:fs';
import { promisify } from 'node:util';

/**
 * Where a file's data lies on disk, to account for reflinked files (XFS, btrfs), whose
 * extents other files may share: from `filefrag -v` (e2fsprogs; FIEMAP, on any file
 * system that supports it). Node has no ioctl of its own.
 */

const run = promisify(execFile);

export interface Extent {
  /** Byte offset on the device, and length. */
  physical: number;
  length: number;
  /** Also part of another file (a reflink copy). */
  shared: boolean;
}

const XFS_SUPER_MAGIC = 0x58465342;
const BTRFS_SUPER_MAGIC = 0x9123683e;

/** Whether files in this folder can share extents (reflinks: XFS, btrfs). */
export function supportsReflinks(dir: string): boolean {
  const type = statfsSync(dir).type;
  return type === XFS_SUPER_MAGIC || type === BTRFS_SUPER_MAGIC;
}

/** A file's extents; undefined when they cannot be read (no filefrag, no FIEMAP). */
export async function fileExtents(path: string): Promise<Extent[] | undefined> {
  let out: string;
  try {
    out = (await run('filefrag', ['-v', path], { maxBuffer: 64 * 1024 * 1024 })).stdout;
  } catch {
    return undefined;
  }
  const bs = Number(/blocks of (\d+) bytes/.exec(out)?.[1]);
  if (!Number.isFinite(bs) || bs <= 0) return undefined;
  const extents: Extent[] = [];
  for (const line of out.split('\n')) {
    // "ext: logical_offset: physical_offset: length: expected: flags:"
    const m = /^\s*\d+:\s*\d+\.\.\s*\d+:\s*(\d+)\.\.\s*\d+:\s*(\d+):(.*)$/.exec(line);
    if (!m) continue;
    extents.push({ physical: Number(m[1]) * bs, length: Number(m[2]) * bs, shared: /\bshared\b/.test(m[3]!) });
  }
  return extents;
}

/** Bytes of extents no other file shares: what removing the file gives back. */
export function uniqueBytes(extents: readonly Extent[]): number {
  return extents.reduce((a, e) => a + (e.shared ? 0 : e.length), 0);
}

/** Bytes the union of several files' extents covers on disk (shared extents counted once). */
export function unionBytes(extents: readonly Extent[]): number {
  const sorted = [...extents].sort((a, b) => a.physical - b.physical);
  let total = 0;
  let end = -1;
  for (const e of sorted) {
    const from = Math.max(e.physical, end);
    const to = e.physical + e.length;
    if (to > from) total += to - from;
    end = Math.max(end, to);
  }
  return total;
}
