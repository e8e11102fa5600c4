import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmsnapError } from '../errors.js';
import { convertInto, embeddedQcow2, inspectDisk, measureQcow2 } from './qemu.js';

// Export and import run qemu-img through the one runner (qemu/qemu-img.ts): a fake
// qemu-img on PATH shows what they pass it and how they read its answers.
const path = process.env.PATH;
let bin: string;
beforeAll(() => {
  bin = mkdtempSync(join(tmpdir(), 'vmsnap-transfer-qemu-'));
  process.env.PATH = `${bin}:${path ?? ''}`;
});
afterAll(() => {
  process.env.PATH = path;
  rmSync(bin, { recursive: true, force: true });
});

function install(script: string): void {
  writeFileSync(join(bin, 'qemu-img'), `#!/bin/sh\necho "$@" >> ${join(bin, 'calls')}\n${script}\n`);
  chmodSync(join(bin, 'qemu-img'), 0o755);
  writeFileSync(join(bin, 'calls'), '');
}
const calls = (): string[] => readFileSync(join(bin, 'calls'), 'utf8').trim().split('\n');

describe('transfer/qemu', () => {
  it('measures with qemu-img measure', async () => {
    install(`echo '{"required": 1245184, "fully-allocated": 1310720}'`);
    expect(await measureQcow2('/d/a.qcow2', 'qcow2')).toBe(1245184);
    expect(calls()).toEqual(['measure --output=json -U -f qcow2 -O qcow2 /d/a.qcow2']);
  });

  it('flattens into the archive with progress, and stops on abort', async () => {
    install(`printf '(25.00/100%%)\\r(100.00/100%%)\\r'`);
    const seen: number[] = [];
    await convertInto('/d/top.qcow2', 'qcow2', '/x/a,b.vmsnap', 512, { onFraction: (f) => seen.push(f) });
    expect(seen).toEqual([1]);
    expect(calls()[0]).toBe(`convert -p -U -f qcow2 -n --target-is-zero --target-image-opts /d/top.qcow2 ${embeddedQcow2('/x/a,b.vmsnap', 512)}`);
    expect(embeddedQcow2('/x/a,b.vmsnap', 512)).toBe('driver=qcow2,file.driver=raw,file.offset=512,file.file.driver=file,file.file.filename=/x/a,,b.vmsnap');

    install('exec sleep 30');
    const ac = new AbortController();
    const run = convertInto('/d/top.qcow2', 'qcow2', '/x/a.vmsnap', 0, { signal: ac.signal });
    setTimeout(() => ac.abort(), 50);
    await expect(run).rejects.toMatchObject({ code: 'INTERRUPTED' });
  });

  it('says NO_SPACE with where to free it', async () => {
    install(`echo "qemu-img: error while writing at byte 0: No space left on device" >&2; exit 1`);
    const e = await convertInto('/d/top.qcow2', 'qcow2', '/x/a.vmsnap', 0).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(VmsnapError);
    expect(e).toMatchObject({ code: 'NO_SPACE', hint: 'free disk space where the file is written' });
  });

  it('inspects a disk: leaked clusters (check exit 3) are fine, a backing file is not', async () => {
    install(`case "$1" in info) echo '{"format": "qcow2", "virtual-size": 1048576}';; check) exit 3;; esac`);
    expect(await inspectDisk({ path: '/d/a.qcow2' })).toEqual({ virtualSize: 1048576 });
    install(`case "$1" in info) echo '{"format": "qcow2", "virtual-size": 1048576}';; check) echo "qemu-img: 2 errors" >&2; exit 2;; esac`);
    expect(await inspectDisk({ path: '/d/a.qcow2' })).toEqual({ virtualSize: 1048576, problem: 'qemu-img check: it is damaged: 2 errors' });
    install(`echo '{"format": "qcow2", "virtual-size": 4096, "backing-filename": "/etc/shadow"}'`);
    expect(await inspectDisk({ imageOpts: embeddedQcow2('/x/a.vmsnap', 0) })).toEqual({ virtualSize: 4096, problem: 'it refers to a backing file (/etc/shadow)' });
  });
});
