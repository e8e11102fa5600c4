import { randomBytes, randomUUID } from 'node:crypto';

/** Stable public id for VMs, snapshots and operations. */
export function newId(): string {
  return randomUUID();
}

/**
 * Layer ids double as QEMU node names (at most 31 chars, must start with a
 * letter) and file names, so they are short lowercase hex.
 */
export function newLayerId(): string {
  return randomBytes(8).toString('hex');
}

/** A locally administered, unicast MAC address (52:54:00 is QEMU's own prefix). */
export function newMacAddress(): string {
  const b = randomBytes(3);
  return ['52', '54', '00', ...[...b].map((x) => x.toString(16).padStart(2, '0'))].join(':');
}
