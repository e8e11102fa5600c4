import { defaultImageCache } from '../src/paths.js';
import { ensureDemoImage } from '../src/vm/demo-image.js';

/** Build the demo guest once before any test that boots it (cached across runs). */
export default async function setup(): Promise<void> {
  if (process.env.VMSNAP_SKIP_IMAGE === '1') return void process.stderr.write('[demo image] not built or checked (VMSNAP_SKIP_IMAGE=1): tests that boot it will fail\n');
  const started = Date.now();
  await ensureDemoImage(defaultImageCache(), (line) => process.stderr.write(`[demo image] ${line}\n`));
  const s = Math.round((Date.now() - started) / 1000);
  if (s > 1) process.stderr.write(`[demo image] ready after ${s}s\n`);
}
