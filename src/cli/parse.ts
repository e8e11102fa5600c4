import { existsSync } from 'node:fs';
import { VmsnapError } from '../errors.js';
import type { DiskSpec } from '../vm/service.js';
import { parseSize } from '../util/size.js';

const MiB = 1024 ** 2;

/** Memory like QEMU's -m: a bare number is MiB; units K/M/G/T otherwise. */
export function parseMemory(text: string): number {
  const bytes = /^\s*\d+\s*$/.test(text) ? Number(text) * MiB : parseSize(text, 'memory');
  if (bytes % MiB !== 0 || bytes === 0) {
    throw new VmsnapError('INVALID_ARGUMENT', `memory: '${text}' is not a whole number of MiB`, {
      hint: 'give a size such as 256M or 1G',
      details: { field: 'memory', value: text },
    });
  }
  return bytes / MiB;
}

export function parseCount(text: string, field: string, min = 1, max = 256): number {
  const n = Number(text);
  if (!/^\s*\d+\s*$/.test(text) || n < min || n > max) {
    throw new VmsnapError('INVALID_ARGUMENT', `${field}: '${text}' is not a whole number from ${min} to ${max}`, {
      details: { field, value: text },
    });
  }
  return n;
}

/** A disk size for a blank disk (at least 1 MiB). */
export function parseDiskSize(text: string, field = 'disk'): number {
  const bytes = parseSize(text, field);
  if (bytes < MiB) {
    throw new VmsnapError('INVALID_ARGUMENT', `${field}: '${text}' is smaller than 1 MiB`, {
      hint: 'give a size with a unit, such as 1G or 512M',
      details: { field, value: text },
    });
  }
  return bytes;
}

/** --disk takes a size (blank disk) or the path of an image to import. */
export function parseDiskSpec(text: string): DiskSpec {
  if (/^\s*\d+(\.\d+)?\s*[a-zA-Z]*\s*$/.test(text) && !existsSync(text)) return { sizeBytes: parseDiskSize(text) };
  if (!existsSync(text)) {
    throw new VmsnapError('NOT_FOUND', `disk: '${text}' is neither a size nor an existing image file`, {
      hint: 'give a size such as 1G for a blank disk, or the path of a qcow2 or raw image to import',
      details: { field: 'disk', value: text },
    });
  }
  return { importPath: text };
}
