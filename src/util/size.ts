import { VmsnapError } from '../errors.js';

const UNITS: Record<string, number> = {
  '': 1,
  B: 1,
  K: 1024,
  KB: 1024,
  KIB: 1024,
  M: 1024 ** 2,
  MB: 1024 ** 2,
  MIB: 1024 ** 2,
  G: 1024 ** 3,
  GB: 1024 ** 3,
  GIB: 1024 ** 3,
  T: 1024 ** 4,
  TB: 1024 ** 4,
  TIB: 1024 ** 4,
};

/** Parse "256M", "1G", "1.5GiB", "1048576" into bytes (binary units, like QEMU). */
export function parseSize(text: string, field: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m ? UNITS[m[2]!.toUpperCase()] : undefined;
  if (!m || unit === undefined) {
    throw new VmsnapError('INVALID_ARGUMENT', `${field}: '${text}' is not a size`, {
      hint: `give a number with an optional unit K, M, G or T (binary), e.g. ${field === 'memory' ? '256M' : '1G'}`,
      details: { field, value: text },
    });
  }
  return Math.round(Number(m[1]) * unit);
}

export { formatBytes } from '../contract/format.js';
