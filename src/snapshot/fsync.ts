import { closeSync, fsyncSync, openSync } from 'node:fs';
import { dirname } from 'node:path';

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
