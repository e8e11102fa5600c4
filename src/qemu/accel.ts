import { spawn } from 'node:child_process';
import { accessSync, constants, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { VmsnapError } from '../errors.js';
import { qemuBinary } from './launcher.js';

export type Accelerator = 'auto' | 'kvm' | 'tcg';

export function parseAccelerator(value: string, source: string): Accelerator {
  if (value === 'auto' || value === 'kvm' || value === 'tcg') return value;
  throw new VmsnapError('INVALID_ARGUMENT', `${source}: '${value}' is not an accelerator`, {
    hint: 'use auto, kvm or tcg',
    details: { field: source, value },
  });
}

export interface KvmProbeResult {
  usable: boolean;
  reason: string;
  /** What the cached answer is valid for: it is redone when any of these change. */
  key: string;
  probedAt: string;
}

function kvmAccessible(): boolean {
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** A Linux kernel to probe with: the demo guest's, or the host's own. */
function probeKernel(imageCache: string): string | undefined {
  const demo = join(imageCache, 'demo', 'vmlinuz');
  if (existsSync(demo)) return demo;
  try {
    const boot = readdirSync('/boot').filter((f) => f.startsWith('vmlinuz'));
    if (boot[0]) return join('/boot', boot[0]);
  } catch {
    /* no /boot */
  }
  return undefined;
}

/**
 * /dev/kvm can exist while guests stall under it (nested virtualization gone
 * wrong: firmware runs, a Linux kernel never gets far). So KVM counts as usable
 * only after a Linux kernel has booted under it to its end (a panic for want of
 * a root fs, then exit with -no-reboot) within a deadline. The answer is cached
 * per QEMU binary, host kernel and probe kernel.
 */
export async function probeKvm(imageCache: string, cacheFile: string, timeoutMs = 20_000): Promise<KvmProbeResult> {
  const kernel = probeKernel(imageCache);
  const key = [qemuBinary(), release(), kernel ?? 'none'].join('|');
  try {
    const cached = JSON.parse(readFileSync(cacheFile, 'utf8')) as KvmProbeResult;
    if (cached.key === key) return cached;
  } catch {
    /* no cache yet */
  }
  const result = (usable: boolean, reason: string): KvmProbeResult => ({ usable, reason, key, probedAt: new Date().toISOString() });
  let answer: KvmProbeResult;
  if (!kvmAccessible()) answer = result(false, '/dev/kvm is missing or not accessible');
  else if (!kernel) answer = result(false, 'no Linux kernel to probe KVM with (build the demo image)');
  else answer = await bootProbe(kernel, timeoutMs, result);
  try {
    writeFileSync(cacheFile, JSON.stringify(answer, null, 2));
  } catch {
    /* a read-only home still works, just probes again */
  }
  return answer;
}

async function bootProbe(
  kernel: string,
  timeoutMs: number,
  result: (usable: boolean, reason: string) => KvmProbeResult,
): Promise<KvmProbeResult> {
  const dir = mkdtempSync(join(tmpdir(), 'vmsnap-kvm-probe-'));
  const log = join(dir, 'serial.log');
  try {
    const args = ['-machine', 'q35,accel=kvm', '-cpu', 'host', '-m', '128', '-nodefaults', '-display', 'none', '-no-reboot'];
    args.push('-kernel', kernel, '-append', 'console=ttyS0 panic=-1 root=/dev/nonexistent', '-serial', `file:${log}`);
    const exited = await new Promise<boolean>((resolve) => {
      const child = spawn(qemuBinary(), args, { stdio: 'ignore' });
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        resolve(false);
      }, timeoutMs);
      child.on('error', () => {
        clearTimeout(timer);
        resolve(false);
      });
      child.on('exit', () => {
        clearTimeout(timer);
        resolve(true);
      });
    });
    const out = existsSync(log) ? readFileSync(log, 'utf8') : '';
    if (exited && /Kernel panic|VFS: Unable to mount root/.test(out)) return result(true, 'a Linux kernel booted under KVM');
    return result(false, exited ? 'QEMU exited before a Linux kernel booted under KVM' : `a Linux kernel stalled under KVM (no boot in ${timeoutMs} ms)`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The accelerator to run with. VMSNAP_ACCEL overrides the requested one;
 * `auto` picks KVM only where the probe proved guests run under it.
 */
export async function resolveAccelerator(
  requested: Accelerator,
  opts: { imageCache: string; cacheFile: string; env?: NodeJS.ProcessEnv },
): Promise<{ accel: 'kvm' | 'tcg'; reason: string }> {
  const env = opts.env ?? process.env;
  const wanted = env.VMSNAP_ACCEL ? parseAccelerator(env.VMSNAP_ACCEL, 'VMSNAP_ACCEL') : requested;
  if (wanted === 'tcg') return { accel: 'tcg', reason: 'requested' };
  if (wanted === 'kvm') {
    if (!kvmAccessible()) {
      throw new VmsnapError('INVALID_STATE', 'KVM was requested but /dev/kvm is missing or not accessible', {
        hint: 'load the kvm module and check permissions, or use VMSNAP_ACCEL=tcg',
      });
    }
    return { accel: 'kvm', reason: 'requested' };
  }
  const probe = await probeKvm(opts.imageCache, opts.cacheFile);
  return probe.usable ? { accel: 'kvm', reason: probe.reason } : { accel: 'tcg', reason: probe.reason };
}
