import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { VmsnapError } from '../errors.js';
import { DOWNLOAD_ID, Downloads } from './downloads.js';

describe('archives offered for download', () => {
  const homes: string[] = [];
  const offered = async (ttlMs?: number) => {
    const home = mkdtempSync(join(tmpdir(), 'vs-dl-'));
    homes.push(home);
    const downloads = new Downloads(home, ttlMs);
    const dir = await downloads.folder();
    const file = join(dir, 'a.vmsnap');
    writeFileSync(file, Buffer.alloc(9 * 1024 * 1024, 7));
    return { downloads, dir, d: downloads.offer(dir, file, 'a.vmsnap') };
  };
  const id = (url: string) => url.split('/').pop()!;
  afterEach(() => {
    for (const h of homes.splice(0)) rmSync(h, { recursive: true, force: true });
  });

  it('streams one once, then removes it', async () => {
    const { downloads, dir, d } = await offered();
    expect(d).toMatchObject({ fileName: 'a.vmsnap', bytes: 9 * 1024 * 1024 });
    expect(id(d.url)).toMatch(DOWNLOAD_ID);
    const res = downloads.respond(id(d.url));
    expect(res.headers.get('content-length')).toBe(String(d.bytes));
    expect((await res.arrayBuffer()).byteLength).toBe(d.bytes);
    await expect.poll(() => existsSync(dir)).toBe(false);
    expect(() => downloads.respond(id(d.url))).toThrow(VmsnapError);
  });

  it('keeps one whose download was cut short, for another try', async () => {
    const { downloads, dir, d } = await offered();
    const reader = downloads.respond(id(d.url)).body!.getReader();
    await reader.read();
    await reader.cancel();
    expect(existsSync(dir)).toBe(true);
    expect((await downloads.respond(id(d.url)).arrayBuffer()).byteLength).toBe(d.bytes);
    await expect.poll(() => existsSync(dir)).toBe(false);
  });

  it('removes one nobody fetched when it expires, and all when the server stops', async () => {
    const short = await offered(50);
    await expect.poll(() => existsSync(short.dir)).toBe(false);
    expect(short.downloads.size).toBe(0);
    const kept = await offered();
    kept.downloads.close();
    expect(existsSync(kept.dir)).toBe(false);
  });
});
