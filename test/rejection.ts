import { expect } from 'vitest';
import { VmsnapError } from '../src/errors.js';

/**
 * The typed error a promise rejects with; fails the test if it resolves or
 * rejects with anything but a VmsnapError. With `code` and `message`, checks them too.
 */
export async function rejection(p: Promise<unknown>, code?: string, message?: RegExp): Promise<VmsnapError> {
  const outcome = await p.then(
    () => ({ resolved: true as const }),
    (err: unknown) => ({ resolved: false as const, err }),
  );
  if (outcome.resolved) throw new Error('expected a rejection');
  expect(outcome.err).toBeInstanceOf(VmsnapError);
  const e = outcome.err as VmsnapError;
  if (code !== undefined) expect(e.code).toBe(code);
  if (message !== undefined) expect(e.message).toMatch(message);
  return e;
}
