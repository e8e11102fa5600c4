import {
  closeSync,
  constants as fsConstants,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  symlinkSync,
  utimesSync,
  chmodSync,
  writeSync,
} from 'node:fs';
import type { Readable } from 'node:stream';
import { scanTar, type TarEntry } from './tar-scan.js';

/**
 * Unpack a tree copied out of a guest (a tar from the appliance) under a fresh
 * host directory, without trusting its names or links: every member's path
 * must stay inside the root (no '..', no absolute path), files are created
 * with O_EXCL|O_NOFOLLOW, and links come last (hard links, then symlinks), so
 * no write ever goes through a link the guest made. Device files, fifos and
 * sockets are skipped and reported. Modes and mtimes are kept (owners too when
 * run as root), directories' last so their mtimes hold.
 */

export interface ExtractResult {
  files: number;
  bytes: number;
  skipped: { path: string; reason: string }[];
}

const SEP = Buffer.from('/');

/** A name an earlier member took (a file where a directory goes, or twice the same name): such a member is skipped. */
const taken = (err: unknown): boolean => ['EEXIST', 'ENOTDIR', 'ELOOP'].includes((err as NodeJS.ErrnoException).code ?? '');

/** A member's name as host path bytes under root, or undefined when it would leave the root. */
function safeJoin(root: Buffer, e: { path: string; rawPath?: string }): Buffer | undefined {
  const name = e.rawPath !== undefined ? Buffer.from(e.rawPath, 'base64') : Buffer.from(e.path);
  if (name.length === 0) return root;
  if (name[0] === 0x2f) return undefined;
  const parts: Buffer[] = [];
  let start = 0;
  for (let i = 0; i <= name.length; i++) {
    if (i === name.length || name[i] === 0x2f) {
      const part = name.subarray(start, i);
      start = i + 1;
      if (part.length === 0) continue;
      if ((part.length === 1 && part[0] === 0x2e) || (part.length === 2 && part[0] === 0x2e && part[1] === 0x2e)) return undefined;
      if (part.includes(0)) return undefined;
      parts.push(part);
    }
  }
  return Buffer.concat([root, ...parts.flatMap((p) => [SEP, p])]);
}

function parentOf(p: Buffer): Buffer {
  const i = p.lastIndexOf(0x2f);
  return i <= 0 ? SEP : p.subarray(0, i);
}

export async function extractTar(source: Readable, rootDir: string, opts: { onBytes?: (n: number) => void } = {}): Promise<ExtractResult> {
  const root = Buffer.from(rootDir);
  const asRoot = process.getuid?.() === 0;
  const out: ExtractResult = { files: 0, bytes: 0, skipped: [] };
  const dirs: { p: Buffer; e: TarEntry }[] = [];
  const hardlinks: { p: Buffer; target: Buffer; e: TarEntry }[] = [];
  const symlinks: { p: Buffer; e: TarEntry }[] = [];
  let fd: number | undefined;
  let current: TarEntry | undefined;

  const ensureParent = (p: Buffer): void => {
    // Only directories exist under root while members are written (links come last): nothing to follow.
    mkdirSync(parentOf(p), { recursive: true, mode: 0o700 });
  };
  const skip = (e: TarEntry, reason: string): void => {
    out.skipped.push({ path: e.path, reason });
  };

  await scanTar(
    source,
    () => {
      if (fd !== undefined && current) {
        const e = current;
        if (asRoot) fchownSync(fd, e.uid, e.gid);
        fchmodSync(fd, e.mode);
        futimesSync(fd, e.mtime, e.mtime);
        closeSync(fd);
        out.files++;
      }
      fd = undefined;
      current = undefined;
    },
    {
      onStart: (e) => {
        const p = safeJoin(root, e);
        if (!p) return skip(e, 'its name leaves the directory');
        switch (e.type) {
          case 'dir':
            if (!p.equals(root)) {
              ensureParent(p);
              try {
                mkdirSync(p, { mode: 0o700 });
              } catch (err) {
                if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || !lstatSync(p).isDirectory()) throw err;
              }
            }
            dirs.push({ p, e });
            return;
          case 'file':
            try {
              ensureParent(p);
              fd = openSync(p, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW, 0o600);
            } catch (err) {
              if (!taken(err)) throw err;
              return skip(e, 'its name is taken by an earlier member');
            }
            current = e;
            return;
          case 'hardlink': {
            const target = e.linkTarget !== undefined ? safeJoin(root, { path: e.linkTarget }) : undefined;
            if (!target) return skip(e, 'its link leaves the directory');
            hardlinks.push({ p, target, e });
            return;
          }
          case 'symlink':
            symlinks.push({ p, e });
            return;
          default:
            return skip(e, `a ${e.type} (not copied)`);
        }
      },
      onContent: (e, chunk) => {
        if (fd === undefined || current !== e) return;
        for (let off = 0; off < chunk.length; ) off += writeSync(fd, chunk, off);
        out.bytes += chunk.length;
        opts.onBytes?.(chunk.length);
      },
    },
  ).finally(() => {
    if (fd !== undefined) closeSync(fd);
  });

  for (const { p, target, e } of hardlinks) {
    try {
      if (!lstatSync(target).isFile()) throw new Error('not a file');
      ensureParent(p);
      linkSync(target, p);
      out.files++;
    } catch {
      skip(e, 'its link target was not copied');
    }
  }
  for (const { p, e } of symlinks) {
    try {
      ensureParent(p);
      symlinkSync(e.linkTarget ?? '', p);
    } catch (err) {
      if (!taken(err)) throw err;
      skip(e, 'its name is taken by an earlier member');
      continue;
    }
    if (asRoot) lchownSync(p, e.uid, e.gid);
  }
  // Deepest first: setting a directory's mtime must follow every change inside it.
  for (const { p, e } of dirs.sort((a, b) => b.p.length - a.p.length)) {
    if (asRoot) lchownSync(p, e.uid, e.gid);
    chmodSync(p, e.mode);
    utimesSync(p, e.mtime, e.mtime);
  }
  return out;
}
