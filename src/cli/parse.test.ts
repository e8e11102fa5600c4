import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { VmsnapError } from '../errors.js';
import { parseCount, parseDiskSize, parseDiskSpec, parseMemory } from './parse.js';

function refusal(fn: () => unknown): VmsnapError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(VmsnapError);
    return e as VmsnapError;
  }
  throw new Error('expected a refusal');
}

describe('parseMemory (like QEMU’s -m)', () => {
  it('takes a bare number as MiB and a unit otherwise', () => {
    expect(parseMemory('256')).toBe(256);
    expect(parseMemory(' 512 ')).toBe(512);
    expect(parseMemory('256M')).toBe(256);
    expect(parseMemory('1G')).toBe(1024);
    expect(parseMemory('1.5G')).toBe(1536);
    expect(parseMemory('1048576K')).toBe(1024);
  });

  it('refuses zero, a part of a MiB, and what is not a size', () => {
    expect(refusal(() => parseMemory('0'))).toMatchObject({ code: 'INVALID_ARGUMENT', message: "memory: '0' is not a whole number of MiB", details: { field: 'memory' } });
    expect(refusal(() => parseMemory('1.5M')).message).toBe("memory: '1.5M' is not a whole number of MiB");
    expect(refusal(() => parseMemory('1000K')).message).toMatch(/not a whole number of MiB/);
    expect(refusal(() => parseMemory('lots')).message).toBe("memory: 'lots' is not a size");
    expect(refusal(() => parseMemory('lots')).hint).toMatch(/256M/);
  });
});

describe('parseCount', () => {
  it('takes whole numbers in range', () => {
    expect(parseCount('1', 'cpus')).toBe(1);
    expect(parseCount('256', 'cpus')).toBe(256);
    expect(parseCount('0', 'timeout', 0, 86_400)).toBe(0);
    expect(parseCount(' 8 ', 'count')).toBe(8);
  });

  it('refuses words, fractions, signs and out-of-range values, naming the field and the range', () => {
    for (const text of ['two', '1.5', '-1', '+1', '', '1e2', '0x10']) {
      expect(refusal(() => parseCount(text, 'cpus')).message, text).toBe(`cpus: '${text}' is not a whole number from 1 to 256`);
    }
    expect(refusal(() => parseCount('0', 'cpus')).details).toEqual({ field: 'cpus', value: '0' });
    expect(refusal(() => parseCount('65', 'count', 1, 64)).message).toBe("count: '65' is not a whole number from 1 to 64");
  });
});

describe('parseDiskSize', () => {
  it('takes a size of at least 1 MiB', () => {
    expect(parseDiskSize('1M')).toBe(1024 ** 2);
    expect(parseDiskSize('1G', 'add-disk')).toBe(1024 ** 3);
    expect(parseDiskSize('1048576')).toBe(1024 ** 2);
  });

  it('refuses a smaller one, or no size, naming the field', () => {
    expect(refusal(() => parseDiskSize('512K'))).toMatchObject({ message: "disk: '512K' is smaller than 1 MiB", details: { field: 'disk' } });
    expect(refusal(() => parseDiskSize('64', 'add-disk')).message).toBe("add-disk: '64' is smaller than 1 MiB");
    expect(refusal(() => parseDiskSize('big', 'reserve')).message).toBe("reserve: 'big' is not a size");
  });
});

describe('parseDiskSpec (--disk SIZE or PATH)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vmsnap-parse-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('reads a size as a blank disk and an existing file as an image to import', () => {
    expect(parseDiskSpec('1G')).toEqual({ sizeBytes: 1024 ** 3 });
    expect(parseDiskSpec('64 M')).toEqual({ sizeBytes: 64 * 1024 ** 2 });
    const image = join(dir, 'disk.qcow2');
    writeFileSync(image, '');
    expect(parseDiskSpec(image)).toEqual({ importPath: image });
  });

  it('imports a file even when its name looks like a size', () => {
    const cwd = process.cwd();
    process.chdir(dir);
    try {
      writeFileSync(join(dir, '2G'), '');
      expect(parseDiskSpec('2G')).toEqual({ importPath: '2G' });
    } finally {
      process.chdir(cwd);
    }
  });

  it('refuses what is neither', () => {
    expect(refusal(() => parseDiskSpec('/nonexistent/disk.qcow2'))).toMatchObject({ code: 'NOT_FOUND', message: "disk: '/nonexistent/disk.qcow2' is neither a size nor an existing image file" });
    expect(refusal(() => parseDiskSpec('10K')).message).toBe("disk: '10K' is smaller than 1 MiB");
    expect(refusal(() => parseDiskSpec('1X')).message).toBe("disk: '1X' is not a size");
  });
});
