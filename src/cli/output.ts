import { createRequire } from 'node:module';
import { VmsnapError, toVmsnapError } from '../errors.js';
import { stdoutIsTerminal, writeOut } from './stdout.js';
import { formatTable } from './table.js';

/** CommonJS packages loaded only when used, so that starting the CLI does not pay for them. */
export const requireLazily = createRequire(import.meta.url);

export function printJson(value: unknown): void {
  writeOut(`${JSON.stringify(value, null, 2)}\n`);
}

/**
 * A table (see table.ts). Printable ASCII is one column a character; anything else is measured
 * by string-width, imported only then (its emoji pattern alone takes milliseconds to compile).
 */
export async function printTable(head: string[], rows: (string | number)[][]): Promise<void> {
  const ascii = (text: string): boolean => /^[\x20-\x7e]*$/.test(text);
  const plain = [head, ...rows].every((r) => r.every((c) => typeof c === 'number' || ascii(c)));
  const width = plain ? (text: string) => text.length : (await import('string-width')).default;
  writeOut(formatTable(head, rows, { width, bold: stdoutIsTerminal() }));
}

/** Report an error the way the user can act on it; returns the exit code. */
export function reportError(e: unknown, json: boolean): number {
  const err = toVmsnapError(e);
  if (json) {
    process.stderr.write(`${JSON.stringify({ error: err.toJSON() })}\n`);
  } else {
    process.stderr.write(`vmsnap: error: ${err.message}\n`);
    if (err.hint) process.stderr.write(`  hint: ${err.hint}\n`);
    if (err.code === 'INTERNAL' && err.cause instanceof Error && err.cause.stack) {
      process.stderr.write(`${process.env.VMSNAP_DEBUG ? err.cause.stack : '  (set VMSNAP_DEBUG=1 for the stack trace)'}\n`);
    }
  }
  return err.exitCode;
}

export function usageError(message: string, hint?: string): VmsnapError {
  return new VmsnapError('INVALID_ARGUMENT', message, hint === undefined ? {} : { hint });
}

export function ago(iso: string, now = Date.now()): string {
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

/** Ask a yes/no question on the terminal; false when there is none to ask (scripts, pipes). */
export async function confirm(question: string): Promise<boolean> {
  if (!process.stdin.isTTY || !process.stderr.isTTY) return false;
  const { createInterface } = await import('node:readline/promises');
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    return /^y(es)?$/i.test((await rl.question(`${question} [y/N] `)).trim());
  } finally {
    rl.close();
  }
}

/** Ctrl-C (or a TERM) aborts the work cleanly (an export leaves no partial archive, a copy no partial file). */
export async function interruptible<T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const ac = new AbortController();
  const stop = (): void => ac.abort(new Error('interrupted by a signal'));
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    return await fn(ac.signal);
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
}

/**
 * Fingerprint the new snapshot's disks in a detached process, so the content
 * can later be proven unchanged (verify --deep) without making the user wait.
 */
export async function fingerprintInBackground(vm: string): Promise<void> {
  if (process.env.VMSNAP_NO_BACKGROUND_FINGERPRINT) return;
  // The script this CLI was started as (bin/vmsnap.cjs): this module is bundled into
  // dist/cli/vmsnap-cli.cjs, so a path relative to it would not find bin/.
  const self = process.argv[1];
  if (self === undefined) return;
  const { spawn } = await import('node:child_process');
  const { ownNodeEnv } = await import('../util/process.js');
  spawn(process.execPath, [self, 'fingerprint', vm, '--quiet'], { detached: true, stdio: 'ignore', env: ownNodeEnv() }).unref();
}
