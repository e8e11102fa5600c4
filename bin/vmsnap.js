#!/usr/bin/env node
// In a checkout (src/ present) run the TypeScript sources through tsx, so the
// CLI never runs stale compiled code; an installed package runs dist/.
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';

const src = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));
if (existsSync(src) && !process.env.VMSNAP_USE_DIST) {
  const { register } = await import('tsx/esm/api');
  register();
  await import(pathToFileURL(src).href);
} else {
  await import('../dist/cli/main.js');
}
