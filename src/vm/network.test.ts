import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { parseForward } from '../contract/network.js';
import type { VmConfig } from '../contract/config.js';
import { runtimeFiles } from '../qemu/launcher.js';
import { holdsForwardsOf } from './network.js';

const config = (...forwards: string[]): VmConfig => ({
  memoryMiB: 256,
  cpus: 1,
  machine: 'q35',
  boot: {},
  disks: [{ slot: 'disk0', sizeBytes: 1 << 30 }],
  nics: [{ id: 'net0', mac: '52:54:00:00:00:01', forwards: forwards.map((f) => parseForward(f)) }],
});

describe('host ports a running QEMU holds for the next one (a revert starts beside it only when none)', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  it('clashes on a fixed host port the present config forwards, never on a port asked as 0', () => {
    const run = mkdtempSync(join(tmpdir(), 'vmsnap-net-'));
    dirs.push(run);
    const files = runtimeFiles(run, 'vm1');
    expect(holdsForwardsOf(files, config('2222:22'), config('2222:80'))).toBe(true);
    expect(holdsForwardsOf(files, config('2222:22'), config('2223:22'))).toBe(false);
    expect(holdsForwardsOf(files, config('0:22'), config('0:22'))).toBe(false);
    expect(holdsForwardsOf(files, config(), config('2222:22'))).toBe(false);
  });

  it('reads the ports the QEMU was given (a port asked as 0 was picked) from its endpoints', () => {
    const run = mkdtempSync(join(tmpdir(), 'vmsnap-net-'));
    dirs.push(run);
    const files = runtimeFiles(run, 'vm1');
    mkdirSync(files.dir, { recursive: true });
    writeFileSync(join(files.dir, 'endpoints.json'), JSON.stringify({ forwards: [parseForward('40123:22')] }));
    expect(holdsForwardsOf(files, config('0:22'), config('40123:22'))).toBe(true);
    expect(holdsForwardsOf(files, config('0:22'), config('2222:22'))).toBe(false);
  });
});
