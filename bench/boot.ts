import { defaultImageCache } from '../src/paths.js';
import { ensureDebianImage, type DebianFirmware } from '../src/vm/debian-image.js';
import { Vmsnap } from '../src/vmsnap.js';
import { cleanupHome, tempHome, waitFor } from '../test/helpers.js';

/**
 * Boot to the guest agent of the real Debian test guest (guest/debian), from
 * its own disk, under SeaBIOS and under OVMF: from `vmsnap start` until the
 * agent runs a command. Each run is a fresh VM (a first boot: cloud-init's
 * None datasource and OVMF's first Boot#### variables included), so a run
 * costs what a user's first start costs.
 */
export async function debianBoots(runs: number): Promise<{ firmware: DebianFirmware; ms: number[] }[]> {
  const img = await ensureDebianImage(defaultImageCache(), (l) => process.stderr.write(`[debian image] ${l}\n`));
  const home = tempHome();
  const lib = Vmsnap.open({ home });
  const out: { firmware: DebianFirmware; ms: number[] }[] = [];
  try {
    for (const firmware of ['bios', 'uefi'] as const) {
      const ms: number[] = [];
      for (let i = 0; i < runs; i++) {
        const name = `debian-${firmware}-${i}`;
        await lib.vms.create(name, { disks: [{ importPath: img[firmware] }], firmware, memoryMiB: 512 });
        const t0 = performance.now();
        await lib.vms.start(name);
        await waitFor(async () => (await lib.vms.exec(name, ['/bin/true'], { timeoutMs: 10_000, agentWaitMs: 5000 })).exitCode === 0, {
          what: `the guest agent of ${name}`,
          timeoutMs: 20 * 60_000,
          intervalMs: 500,
        });
        ms.push(performance.now() - t0);
        process.stderr.write(`Debian ${firmware} boot ${i + 1}/${runs}: ${(ms.at(-1)! / 1000).toFixed(1)} s\n`);
        await lib.vms.stop(name, { force: true });
        await lib.vms.remove(name);
      }
      out.push({ firmware, ms });
    }
  } finally {
    lib.close();
    cleanupHome(home);
  }
  return out;
}
