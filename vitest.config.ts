import { defineConfig } from 'vitest/config';

// Unit tests live beside the code (src/**/*.test.ts); end-to-end tests that boot
// the demo guest under real QEMU live in test/. QEMU tests are slow under TCG, so
// they get long timeouts and run one file at a time (2 cores).
export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'web/src/**/*.test.ts', 'test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 300_000,
    fileParallelism: false,
    globalSetup: ['test/global-setup.ts'],
    reporters: ['default'],
  },
});
