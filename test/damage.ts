import { closeSync, openSync, writeSync } from 'node:fs';

/** Overwrite bytes of a file in place, as a bad sector or a careless editor would. (Imports nothing of vmsnap: unit tests use it too.) */
export function overwrite(path: string, offset: number, bytes: Buffer): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, bytes, 0, bytes.length, offset);
  } finally {
    closeSync(fd);
  }
}
