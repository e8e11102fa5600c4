import { closeSync, fsyncSync, openSync, rmSync, statSync } from 'node:fs';
import { dirname } from 'node:path';

/** File helpers shared by every part of the library that writes the data dir. */

export function fsyncPath(path: string): void {
  const fd = openSync(path, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** fsync a file and its directory, so a new file's name survives a crash too. */
export function fsyncFileAndDir(path: string): void {
  fsyncPath(path);
  fsyncPath(dirname(path));
}

/** Bytes a file takes on disk (allocated blocks, so sparse files count what they hold); 0 when it is gone. */
export function fileBytes(path: string | null | undefined): number {
  if (!path) return 0;
  try {
    return statSync(path).blocks * 512;
  } catch {
    return 0;
  }
}

/** Bytes several files take on disk (see fileBytes). */
export function filesBytes(paths: readonly string[]): number {
  return paths.reduce((a, p) => a + fileBytes(p), 0);
}

export function removeFiles(paths: string[]): void {
  for (const p of paths) rmSync(p, { force: true });
}
