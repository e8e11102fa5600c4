import { readFileSync } from 'node:fs';

let cached: string | undefined;

/** This vmsnap's version, from its package.json (src/ and dist/ are both two levels below it). */
export function vmsnapVersion(): string {
  cached ??= (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  return cached;
}
