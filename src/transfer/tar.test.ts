import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BLOCK, END_OF_ARCHIVE, fileHeader, listEntries, padTo512, TarFormatError } from './tar.js';

const dir = mkdtempSync(join(tmpdir(), 'vs-tar-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function list(path: string, size: number) {
  const fh = await open(path, 'r');
  try {
    return await listEntries(fh, size);
  } finally {
    await fh.close();
  }
}

describe('tar', () => {
  it('writes headers GNU tar reads, with base-256 sizes past 8 GiB, and reads them back', async () => {
    const small = Buffer.from('{"a":1}\n');
    const big = 9 * 1024 ** 3 + 123;
    const path = join(dir, 'a.tar');
    const parts = [fileHeader('x.json', small.length, 0), small, Buffer.alloc(padTo512(small.length) - small.length)];
    writeFileSync(path, Buffer.concat(parts));
    const bigAt = BLOCK + padTo512(small.length);
    const end = bigAt + BLOCK + padTo512(big);
    // A sparse file: the big entry's data is a hole.
    const fh = await open(path, 'r+');
    await fh.write(fileHeader('disks/disk0.qcow2', big, 0), 0, BLOCK, bigAt);
    await fh.write(END_OF_ARCHIVE, 0, END_OF_ARCHIVE.length, end);
    await fh.close();
    const size = end + END_OF_ARCHIVE.length;
    const listing = execFileSync('tar', ['tvf', path]).toString();
    expect(listing).toMatch(/ 8 .* x\.json/);
    expect(listing).toMatch(new RegExp(`${big} .* disks/disk0\\.qcow2`));
    expect(await list(path, size)).toEqual({
      entries: [
        { name: 'x.json', size: small.length, offset: BLOCK },
        { name: 'disks/disk0.qcow2', size: big, offset: bigAt + BLOCK },
      ],
      complete: true,
    });
    // Cut short: the entries are still listed, but the archive is not complete.
    truncateSync(path, end);
    expect((await list(path, end)).complete).toBe(false);
  });

  it('reads pax and long names as GNU tar writes them', async () => {
    const src = join(dir, 'src');
    const long = `${'d'.repeat(120)}.bin`;
    mkdirSync(src, { recursive: true });
    writeFileSync(join(src, long), 'hello');
    const path = join(dir, 'pax.tar');
    execFileSync('tar', ['--format=posix', '-C', src, '-cf', path, long]);
    const { entries, complete } = await list(path, statSync(path).size);
    expect(complete).toBe(true);
    expect(entries.map((e) => [e.name, e.size])).toEqual([[long, 5]]);
  });

  it('refuses what is not a tar, and a damaged header', async () => {
    const path = join(dir, 'junk');
    writeFileSync(path, Buffer.alloc(4096, 0x41));
    await expect(list(path, 4096)).rejects.toThrow(TarFormatError);
    await expect(list(path, 4096)).rejects.toThrow(/at byte 0$/);
    const h = fileHeader('a', 1, 0);
    h[10] = 0x7a;
    writeFileSync(path, Buffer.concat([fileHeader('ok', 0, 0), h]));
    await expect(list(path, 1024)).rejects.toThrow(/damaged tar header at byte 512/);
  });
});
