import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Vmsnap } from '../src/vmsnap.js';

/** The CLI's Node entry (what bin/vmsnap runs). */
export const BIN = fileURLToPath(new URL('../bin/vmsnap.cjs', import.meta.url));
/** The `vmsnap` command as installed (a sh script that runs BIN): what the tests run. */
export const COMMAND = fileURLToPath(new URL('../bin/vmsnap', import.meta.url));

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** A throwaway VMSNAP_HOME; short, because unix socket paths are limited. */
export function tempHome(): string {
  return mkdtempSync(join(tmpdir(), 'vs-'));
}

/** Run the real CLI as a user would. */
export function cli(home: string, args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(COMMAND, args, {
      env: { ...process.env, VMSNAP_HOME: home, VMSNAP_ACCEL: testAccel(), ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr }));
  });
}

/** Kill every QEMU started under a home and remove it. */
export function cleanupHome(home: string): void {
  const run = join(home, 'run');
  if (existsSync(run)) {
    for (const id of readdirSync(run)) {
      const pidFile = join(run, id, 'qemu.pid');
      if (!existsSync(pidFile)) continue;
      try {
        process.kill(Number(readFileSync(pidFile, 'utf8').trim()), 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
  rmSync(home, { recursive: true, force: true });
}

/**
 * The accelerator the tests run under: KVM where vmsnap's probe saw a Linux
 * kernel boot under it on this machine, TCG otherwise (global-setup.ts probes
 * once, says which on stderr, and passes it on in VMSNAP_TEST_ACCEL).
 */
export function testAccel(): 'kvm' | 'tcg' {
  return process.env.VMSNAP_TEST_ACCEL === 'kvm' ? 'kvm' : 'tcg';
}

/** The library on a home, with the tests' accelerator (see testAccel). */
export function openLib(home: string): Vmsnap {
  process.env.VMSNAP_ACCEL = testAccel();
  return Vmsnap.open({ home });
}

/** Run a shell command in the guest and return its stdout, failing on a non-zero exit. */
export async function sh(lib: Vmsnap, vm: string, script: string): Promise<string> {
  const r = await lib.vms.exec(vm, ['/bin/sh', '-c', script]);
  if (r.exitCode !== 0) throw new Error(`guest command failed (${r.exitCode}): ${script}\n${r.stderr}`);
  return r.stdout;
}

/** Files currently in the layers and states dirs of a home. */
export function dataFiles(home: string): string[] {
  const out: string[] = [];
  for (const dir of ['layers', 'states']) {
    const p = join(home, dir);
    if (existsSync(p)) out.push(...readdirSync(p).map((f) => join(p, f)));
  }
  return out.sort();
}

/** Everything the catalog holds about VMs, layers and snapshots, plus the data files: to prove "nothing changed". */
export function catalogDump(home: string): string {
  const lib = Vmsnap.open({ home });
  try {
    const db = lib.ctx.catalog.db;
    const tables = ['vms', 'layers', 'active_layers', 'snapshots', 'snapshot_layers'];
    const rows = Object.fromEntries(tables.map((t) => [t, db.prepare(`SELECT * FROM ${t} ORDER BY rowid`).all()]));
    return JSON.stringify({ rows, files: dataFiles(home) });
  } finally {
    lib.close();
  }
}

/** A guest process that counts in RAM (/tmp): proves a memory revert resumes it rather than restarting it. */
export const COUNTER = "setsid /bin/sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done' </dev/null >/dev/null 2>&1 &";

export const counter = async (lib: Vmsnap, vm: string): Promise<number> => Number((await sh(lib, vm, 'cat /tmp/counter')).trim());

/** The files in the guest's /data, sorted. */
export const files = async (lib: Vmsnap, vm: string): Promise<string[]> =>
  (await sh(lib, vm, 'ls /data | grep -v lost+found || true')).split('\n').filter(Boolean).sort();

/** Write a file named after its content into the guest's /data, synced to disk. */
export const write = (lib: Vmsnap, vm: string, name: string): Promise<string> => sh(lib, vm, `echo ${name} > /data/${name} && sync`);

/** A CLI call that must be refused with this exit code and message, leaving the catalog and data files as they were. */
export async function expectRefused(home: string, args: string[], code: number, message: RegExp, env: Record<string, string> = {}): Promise<CliResult> {
  const { expect } = await import('vitest');
  const before = catalogDump(home);
  const r = await cli(home, args, env);
  expect(r.stderr).toMatch(message);
  expect(r.code).toBe(code);
  expect(catalogDump(home)).toBe(before);
  return r;
}

/**
 * Wait until `cond` returns something truthy (polled every `intervalMs`; a throw counts as
 * "not yet", e.g. a guest file not written yet) and return it; after `timeoutMs` fail,
 * naming `what` and the last error. Use it instead of a fixed sleep.
 */
export async function waitFor<T>(cond: () => T | Promise<T>, opts: { what: string; timeoutMs?: number; intervalMs?: number }): Promise<T> {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await cond();
      if (v) return v;
      last = undefined;
    } catch (e) {
      last = e;
    }
    if (Date.now() >= deadline) {
      const why = last instanceof Error ? `: ${last.message}` : last === undefined ? '' : `: ${String(last)}`;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${opts.what}${why}`);
    }
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 25));
  }
}

/** Skip a test, saying why on stderr as well as in the report (a skip must never be silent). */
export function skipBecause(ctx: { skip: (note?: string) => void; task: { name: string } }, why: string): void {
  process.stderr.write(`skipped: ${ctx.task.name}: ${why}\n`);
  ctx.skip(why);
}

/** For describe.skipIf: true (skip) when `available` is false, saying why on stderr. */
export function unavailable(available: boolean, what: string, why: string): boolean {
  if (!available) process.stderr.write(`skipped: ${what}: ${why}\n`);
  return !available;
}

const isRoot = process.getuid?.() === 0;

/** Why a test that needs a tmpfs was skipped. */
export const TMPFS_NEEDS_ROOT = 'needs root to mount a tmpfs (CI runs as root, so it runs there)';

/**
 * A small tmpfs (to run out of space on purpose); undefined when not root (the test then
 * skips with TMPFS_NEEDS_ROOT). As root a failed mount is an error, not a skip: CI runs as
 * root, and these tests must run there.
 */
export function mountTmpfs(dir: string, size: string): { unmount: () => void } | undefined {
  mkdirSync(dir, { recursive: true });
  if (!isRoot) return undefined;
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e) {
    const stderr = (e as { stderr?: Buffer }).stderr?.toString().trim();
    throw new Error(`mount -t tmpfs on ${dir} failed as root: ${stderr || (e as Error).message}`);
  }
  return {
    unmount: () => {
      cleanupHome(join(dir, 'home'));
      execFileSync('umount', ['-l', dir]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
