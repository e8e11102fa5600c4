import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VmsnapError } from '../errors.js';

export interface DemoImage {
  dir: string;
  kernel: string;
  initrd: string;
}

/** The kernel command line the demo guest is built for. */
export const DEMO_APPEND = 'console=ttyS0 quiet';

export function demoImagePaths(imageCache: string): DemoImage {
  const dir = join(imageCache, 'demo');
  return { dir, kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd.img') };
}

export function demoImageBuilt(imageCache: string): boolean {
  const img = demoImagePaths(imageCache);
  return existsSync(img.kernel) && existsSync(img.initrd) && existsSync(join(img.dir, 'manifest.json'));
}

/** The build script ships with the package: src/vm and dist/vm are both two levels below it. */
const BUILD_SCRIPT = fileURLToPath(new URL('../../guest/build.sh', import.meta.url));

/**
 * Build the demo guest from Debian packages (once; cached in the image cache).
 * `log` receives the build's progress lines.
 */
export async function ensureDemoImage(imageCache: string, log: (line: string) => void = () => {}): Promise<DemoImage> {
  const img = demoImagePaths(imageCache);
  if (demoImageBuilt(imageCache)) return img;
  if (!existsSync(BUILD_SCRIPT)) {
    throw new VmsnapError('NOT_FOUND', `the demo image is not built and its build script is missing (${BUILD_SCRIPT})`);
  }
  log(`building the demo guest into ${img.dir} (once; from Debian packages)`);
  const { code, output } = await new Promise<{ code: number | null; output: string }>((resolve, reject) => {
    const child = spawn('bash', [BUILD_SCRIPT, img.dir], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const onData = (d: Buffer): void => {
      const text = d.toString();
      output += text;
      for (const line of text.split('\n')) if (line.trim()) log(line);
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', reject);
    child.on('close', (c) => resolve({ code: c, output }));
  });
  if (code !== 0 || !demoImageBuilt(imageCache)) {
    throw new VmsnapError('QEMU_FAILED', `building the demo guest failed (exit ${code}): ${output.trim().split('\n').slice(-5).join(' | ')}`, {
      hint: 'it needs root and apt-get (Debian/Ubuntu); run `bash guest/build.sh DIR` by hand to see the whole log',
    });
  }
  return img;
}
