import { defineConfig } from 'vitest/config';

// Unit tests live beside the code (src/**/*.test.ts); end-to-end tests that boot the demo
// guest (or the Debian one) under real QEMU live in test/. Guests run under TCG here, so
// the end-to-end files get long timeouts. They run two at a time (one per core: a TCG
// guest keeps about one busy), except the few listed below that want the machine to
// themselves; those run one by one after the rest.
const EXCLUSIVE = [
  'test/firmware.test.ts', // two Debian guests (systemd, 512 MiB) for the whole file, 4 GiB disks imported and exported
  'test/memory-debian.test.ts', // two 512 MiB Debian guests at once (failed once beside another file)
  'test/lazy-memory.test.ts', // a 2 GiB guest filled with 1.5 GiB, and GiB-sized RAM images written (others measure free space)
];
const GUESTS = { testTimeout: 300_000, hookTimeout: 600_000 };

export default defineConfig({
  test: {
    // Runs once for the whole run (root config only): builds the demo guest, picks the accelerator.
    globalSetup: ['test/global-setup.ts'],
    reporters: ['default'],
    projects: [
      {
        // Projects of one group must agree on maxWorkers (vitest checks).
        test: { name: 'unit', include: ['src/**/*.test.ts', 'web/src/**/*.test.ts'], maxWorkers: 2, testTimeout: 120_000, hookTimeout: 300_000 },
      },
      { test: { name: 'guests', include: ['test/**/*.test.ts'], exclude: EXCLUSIVE, maxWorkers: 2, ...GUESTS } },
      { test: { name: 'guests-alone', include: EXCLUSIVE, fileParallelism: false, sequence: { groupOrder: 1 }, ...GUESTS } },
    ],
  },
});
