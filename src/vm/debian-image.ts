import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VmsnapError } from '../errors.js';
import { sha256OfFile } from '../store/boot-files.js';

/**
 * The real Debian 12 test guest (guest/debian/build.sh): two GPT qcow2 disks made from
 * one root tree, one booting by UEFI (OVMF + systemd-boot), one by BIOS (SeaBIOS +
 * syslinux). systemd, udev-started qemu-guest-agent, cloud-init (NoCloud, else None),
 * openssh-server, DHCP on the virtio NIC. See guest/debian/README.md.
 */
export type DebianFirmware = 'bios' | 'uefi';

export interface DebianImage {
  dir: string;
  /** GPT: ESP (systemd-boot, kernel, initrd) + ext4 root. Boot with OVMF on q35. */
  uefi: string;
  /** GPT: FAT /boot (syslinux, gptmbr.bin) + ext4 root. Boot with SeaBIOS (QEMU's default). */
  bios: string;
  manifest: string;
}

export interface DebianImageFile {
  file: string;
  firmware: DebianFirmware;
  virtualSize: number;
  fileSize: number;
  sha256: string;
}

/** What guest/debian/build.sh writes to manifest.json (the fields vmsnap relies on). */
export interface DebianManifest {
  name: string;
  buildScriptVersion: number;
  builtAt: string;
  debianVersion: string;
  kernelVersion: string;
  kernelCmdline: string;
  rootLabel: string;
  images: Record<DebianFirmware, DebianImageFile>;
  keyPackages: Record<string, string>;
  packages: Record<string, string>;
}

/**
 * The build script's BUILD_VERSION this code expects. A cache built by another
 * version is rebuilt by ensureDebianImage. Keep equal to BUILD_VERSION in
 * guest/debian/build.sh.
 */
export const DEBIAN_IMAGE_VERSION = 1;

/** Where OVMF lives on Debian (package `ovmf`): code is read-only, each VM gets its own copy of the vars. */
export const OVMF_CODE = '/usr/share/OVMF/OVMF_CODE_4M.fd';
export const OVMF_VARS_TEMPLATE = '/usr/share/OVMF/OVMF_VARS_4M.fd';

export function debianImagePaths(imageCache: string): DebianImage {
  const dir = join(imageCache, 'debian');
  return {
    dir,
    uefi: join(dir, 'debian-uefi.qcow2'),
    bios: join(dir, 'debian-bios.qcow2'),
    manifest: join(dir, 'manifest.json'),
  };
}

function parseManifest(text: string, path: string): DebianManifest {
  let m: unknown;
  try {
    m = JSON.parse(text);
  } catch (e) {
    throw new VmsnapError('NOT_FOUND', `the Debian image manifest is not JSON (${path})`, { cause: e });
  }
  const o = m as Partial<DebianManifest> | null;
  const image = (fw: DebianFirmware): boolean => {
    const i = o?.images?.[fw];
    return !!i && typeof i.file === 'string' && typeof i.sha256 === 'string' && /^[0-9a-f]{64}$/.test(i.sha256) && typeof i.virtualSize === 'number';
  };
  if (
    !o ||
    typeof o !== 'object' ||
    typeof o.buildScriptVersion !== 'number' ||
    typeof o.kernelVersion !== 'string' ||
    typeof o.kernelCmdline !== 'string' ||
    !image('uefi') ||
    !image('bios')
  ) {
    throw new VmsnapError('NOT_FOUND', `the Debian image manifest is incomplete (${path})`, {
      hint: 'delete the directory (or its manifest.json) to rebuild the image',
    });
  }
  return o as DebianManifest;
}

/** The manifest of the built image (validated), or throws NOT_FOUND. */
export function readDebianManifest(imageCache: string): DebianManifest {
  const { manifest } = debianImagePaths(imageCache);
  if (!existsSync(manifest)) throw new VmsnapError('NOT_FOUND', `the Debian image is not built (${manifest} is missing)`);
  return parseManifest(readFileSync(manifest, 'utf8'), manifest);
}

/** Both disks and a manifest of the expected build version are in the cache. */
export function debianImageBuilt(imageCache: string): boolean {
  const img = debianImagePaths(imageCache);
  if (!existsSync(img.uefi) || !existsSync(img.bios) || !existsSync(img.manifest)) return false;
  try {
    return readDebianManifest(imageCache).buildScriptVersion === DEBIAN_IMAGE_VERSION;
  } catch {
    return false;
  }
}

/**
 * Check a built disk against the sha256 in its manifest (reads the whole file,
 * about 380 MB). Resolves to true when it matches.
 */
export async function verifyDebianImage(imageCache: string, firmware: DebianFirmware): Promise<boolean> {
  const manifest = readDebianManifest(imageCache);
  return (await sha256OfFile(debianImagePaths(imageCache)[firmware])) === manifest.images[firmware].sha256;
}

/** The build script ships with the package: src/vm and dist/vm are both two levels below it. */
const BUILD_SCRIPT = fileURLToPath(new URL('../../guest/debian/build.sh', import.meta.url));

/**
 * Build the Debian guest's disks (once; cached in `<imageCache>/debian/`). Needs root
 * and apt-get (Debian 12): debootstrap, then images made without mounting anything.
 * About 4–7 minutes and 400 MB of packages; `log` receives the build's progress lines.
 * The cached disks are base images: boot qcow2 overlays on them, never the files themselves.
 */
export async function ensureDebianImage(imageCache: string, log: (line: string) => void = () => {}): Promise<DebianImage> {
  const img = debianImagePaths(imageCache);
  if (debianImageBuilt(imageCache)) return img;
  if (!existsSync(BUILD_SCRIPT)) {
    throw new VmsnapError('NOT_FOUND', `the Debian image is not built and its build script is missing (${BUILD_SCRIPT})`);
  }
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new VmsnapError('INVALID_STATE', `the Debian image is not built in ${img.dir}, and building it needs root`, {
      hint: `run \`sudo bash ${BUILD_SCRIPT} ${img.dir}\` once`,
    });
  }
  log(`building the Debian guest into ${img.dir} (once; debootstrap, a few minutes)`);
  const { code, output } = await new Promise<{ code: number | null; output: string }>((resolve, reject) => {
    const child = spawn('bash', [BUILD_SCRIPT, img.dir], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    let partial = '';
    const onData = (d: Buffer): void => {
      const text = partial + d.toString();
      output += d.toString();
      const lines = text.split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) if (line.trim()) log(line);
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', reject);
    child.on('close', (c) => {
      if (partial.trim()) log(partial);
      resolve({ code: c, output });
    });
  });
  if (code !== 0 || !debianImageBuilt(imageCache)) {
    throw new VmsnapError('QEMU_FAILED', `building the Debian guest failed (exit ${code}): ${output.trim().split('\n').slice(-5).join(' | ')}`, {
      hint: `it needs root, apt-get and a Debian mirror; run \`bash ${BUILD_SCRIPT} ${img.dir}\` by hand to see the whole log`,
    });
  }
  return img;
}
