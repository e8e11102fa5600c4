import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync, openSync, writeSync, closeSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { VmsnapError } from '../errors.js';
import { createManifest, MemoryStateError, parseManifest, readManifest, serializeManifest, validateMemoryState, writeManifest, type MemoryManifest } from './manifest.js';
import { splitToFiles } from './split-files.js';
import { PAGE, StreamBuilder, pageOf, q35Blocks } from './stream-builder.js';

const RAM = 4 * 1024 * 1024;

function stream(seed: number): Buffer {
  const b = new StreamBuilder({ blocks: q35Blocks(RAM) }).header().ramStart();
  b.ramSection('part', [
    { block: 'pc.ram', offset: 0, data: pageOf(seed) },
    { block: 'pc.ram', offset: 5 * PAGE, data: pageOf(seed + 1) },
  ]);
  b.devices([{ idstr: 'cpu', payload: Buffer.from(`cpu state ${seed}`) }]);
  return b.build().stream;
}

async function saveState(dir: string, snapshotId: string, seed: number): Promise<{ manifestPath: string; manifest: MemoryManifest }> {
  const ramFile = `${snapshotId}.ram`;
  const devFile = `${snapshotId}.dev`;
  const r = await splitToFiles(Readable.from([stream(seed)]), join(dir, ramFile), join(dir, devFile), { snapshotId });
  const manifest = createManifest({
    snapshotId,
    createdAt: new Date().toISOString(),
    machine: r.summary.machine!,
    memoryMiB: RAM / 1024 / 1024,
    streamMode: r.summary.mode,
    ramBlock: r.summary.ramBlock,
    ramBytes: r.summary.ramBlockBytes,
    ramImage: { file: ramFile, bytes: r.ramImage.bytes, sha256: r.ramImage.sha256! },
    deviceState: { file: devFile, bytes: r.deviceState.bytes, sha256: r.deviceState.sha256 },
  });
  const manifestPath = join(dir, `${snapshotId}.json`);
  await writeManifest(manifestPath, manifest);
  return { manifestPath, manifest };
}

async function failedCheck(p: Promise<unknown>): Promise<MemoryStateError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(MemoryStateError);
  return e as MemoryStateError;
}

describe('memory state manifest', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'vs-manifest-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('round-trips and validates a fresh state (fast path and full hash)', async () => {
    const { manifestPath, manifest } = await saveState(dir, 'snap-a', 1);
    expect(readManifest(manifestPath)).toEqual(manifest);
    const v = await validateMemoryState(manifestPath, { expect: { snapshotId: 'snap-a', machine: 'pc-q35-7.2', memoryMiB: 4 } });
    expect(v.checks).toEqual(['manifest', 'expected', 'sizes', 'ram-image-trailer', 'device-state-sha256']);
    const full = await validateMemoryState(manifestPath, { verifyRamSha256: true });
    expect(full.checks).toContain('ram-image-sha256');
    expect(full.ramImagePath).toBe(join(dir, 'snap-a.ram'));
  });

  it('catches a RAM image paired with the device state of another snapshot', async () => {
    const a = await saveState(dir, 'snap-a', 1);
    await saveState(dir, 'snap-b', 2);
    // Same sizes, swapped in under a's name: only the trailer can tell.
    renameSync(join(dir, 'snap-b.ram'), join(dir, 'snap-a.ram'));
    const e = await failedCheck(validateMemoryState(a.manifestPath));
    expect(e.details.check).toBe('ram-image-pairing');
    expect(e.message).toMatch(/does not belong to memory state.*snapshot snap-b, not snap-a/);
    expect(e.code).toBe('INVALID_STATE');
  });

  it('catches a device state of another snapshot (its hash)', async () => {
    const a = await saveState(dir, 'snap-a', 1);
    await saveState(dir, 'snap-b', 2);
    copyFileSync(join(dir, 'snap-b.dev'), join(dir, 'snap-a.dev'));
    const e = await failedCheck(validateMemoryState(a.manifestPath));
    expect(e.details.check).toBe('device-state-sha256');
  });

  it('catches a changed manifest (its own checksum), another version, bad JSON, a path in a file name', async () => {
    const { manifestPath, manifest } = await saveState(dir, 'snap-a', 1);
    const tampered = { ...manifest, memoryMiB: 8 };
    writeFileSync(manifestPath, JSON.stringify(tampered));
    expect((await failedCheck(validateMemoryState(manifestPath))).details.check).toBe('manifest-checksum');
    writeFileSync(manifestPath, JSON.stringify({ ...manifest, version: 2 }));
    expect((await failedCheck(validateMemoryState(manifestPath))).message).toMatch(/version 2; this vmsnap reads version 1/);
    writeFileSync(manifestPath, '{"format": "vmsnap-memory-state", ');
    expect((await failedCheck(validateMemoryState(manifestPath))).details.check).toBe('manifest-json');
    expect(() => parseManifest(JSON.stringify({ ...manifest, ramImage: { ...manifest.ramImage, file: '../etc/passwd' } }))).toThrow(/plain file name/);
    expect(() => createManifest({ ...manifest, ramImage: { ...manifest.ramImage, file: 'a/b' } })).toThrow(VmsnapError);
  });

  it('catches a missing file, a wrong size, a flipped byte in the RAM (slow path only)', async () => {
    const { manifestPath } = await saveState(dir, 'snap-a', 1);
    const ram = join(dir, 'snap-a.ram');
    const saved = readFileSync(ram);
    const fd = openSync(ram, 'r+');
    writeSync(fd, Buffer.from([0xff]), 0, 1, 100);
    closeSync(fd);
    await validateMemoryState(manifestPath); // the fast path does not read RAM
    expect((await failedCheck(validateMemoryState(manifestPath, { verifyRamSha256: true }))).details.check).toBe('ram-image-sha256');
    writeFileSync(ram, saved.subarray(0, saved.length - 1));
    expect((await failedCheck(validateMemoryState(manifestPath))).details.check).toBe('ram-image-size');
    rmSync(ram);
    const e = await failedCheck(validateMemoryState(manifestPath));
    expect(e.details.check).toBe('missing-file');
    expect(e.code).toBe('NOT_FOUND');
  });

  it('refuses a load for another snapshot, machine or memory size', async () => {
    const { manifestPath } = await saveState(dir, 'snap-a', 1);
    expect((await failedCheck(validateMemoryState(manifestPath, { expect: { snapshotId: 'x' } }))).details.check).toBe('expected-snapshotId');
    expect((await failedCheck(validateMemoryState(manifestPath, { expect: { machine: 'pc-i440fx-7.2' } }))).details.check).toBe('expected-machine');
    expect((await failedCheck(validateMemoryState(manifestPath, { expect: { memoryMiB: 8 } }))).details.check).toBe('expected-memoryMiB');
  });

  it('serializes stably: the checksum does not depend on key order', async () => {
    const { manifest } = await saveState(dir, 'snap-a', 1);
    const reordered = Object.fromEntries(Object.entries(manifest).reverse());
    expect(parseManifest(JSON.stringify(reordered))).toEqual(manifest);
    expect(serializeManifest(manifest)).toMatch(/"checksum": "[0-9a-f]{64}"/);
  });
});
