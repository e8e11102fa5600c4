import { join } from 'node:path';
import { defaultImageCache } from '../src/paths.js';
import { probeKvm } from '../src/qemu/accel.js';
import { ensureDemoImage } from '../src/vm/demo-image.js';
import { ensureWebBuilt } from './web-build.js';

/** Build the demo guest once before any test that boots it (cached across runs). */
export default async function setup(): Promise<void> {
  if (process.env.VMSNAP_SKIP_IMAGE === '1') return void process.stderr.write('[demo image] not built or checked (VMSNAP_SKIP_IMAGE=1): tests that boot it will fail\n');
  const started = Date.now();
  await ensureDemoImage(defaultImageCache(), (line) => process.stderr.write(`[demo image] ${line}\n`));
  const s = Math.round((Date.now() - started) / 1000);
  if (s > 1) process.stderr.write(`[demo image] ready after ${s}s\n`);
  await chooseAccel();
  ensureWebBuilt();
}

/**
 * KVM where vmsnap's own probe says guests run under it here, TCG otherwise;
 * VMSNAP_TEST_ACCEL=kvm|tcg forces one. The probe's answer is cached beside
 * the images (per QEMU and host kernel), so it costs at most once ~20 s.
 */
async function chooseAccel(): Promise<void> {
  let accel = process.env.VMSNAP_TEST_ACCEL;
  let why = 'VMSNAP_TEST_ACCEL';
  if (accel !== 'kvm' && accel !== 'tcg') {
    const probe = await probeKvm(defaultImageCache(), join(defaultImageCache(), 'kvm-probe.json'));
    accel = probe.usable ? 'kvm' : 'tcg';
    why = probe.reason;
  }
  process.env.VMSNAP_TEST_ACCEL = accel;
  process.stderr.write(`[accel] guests in these tests run under ${accel.toUpperCase()} (${why})\n`);
}
