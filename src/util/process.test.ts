import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, expect, it, vi } from 'vitest';
import { isProcessAlive, isProcessExiting, killAndWait, ownNodeEnv, processStartTime } from './process.js';

/** A process that is not our child once started (so nobody reaps it for us but init): sh forks it and exits. */
async function orphan(script: string): Promise<number> {
  const sh = spawn('/bin/sh', ['-c', `/bin/sh -c '${script}' </dev/null >/dev/null 2>&1 & echo $!`], { stdio: ['ignore', 'pipe', 'ignore'] });
  let out = '';
  sh.stdout.on('data', (d: Buffer) => (out += d.toString()));
  await new Promise((r) => sh.on('close', r));
  return Number(out.trim());
}

describe('killAndWait', () => {
  it('kills a process and resolves once it is gone, without blocking the event loop', async () => {
    const pid = await orphan('exec sleep 30');
    expect(isProcessAlive(pid)).toBe(true);
    expect(await killAndWait(pid)).toBe(true);
    expect(isProcessAlive(pid)).toBe(false);
  });

  it('gives up after the timeout when the signal is ignored, and keeps the loop free meanwhile', async () => {
    const pid = await orphan("trap \"\" TERM; while :; do sleep 0.05; done");
    try {
      // Wait until it ignores SIGTERM (bit 15 of its ignored-signals mask).
      await vi.waitFor(() => expect(/^SigIgn:\s*[0-9a-f]*[4567cdef][0-9a-f]{3}$/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'))).toBe(true), { interval: 10 });
      let ticks = 0;
      const timer = setInterval(() => ticks++, 10);
      const t0 = Date.now();
      expect(await killAndWait(pid, { signal: 'SIGTERM', timeoutMs: 300 })).toBe(false);
      clearInterval(timer);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
      expect(ticks).toBeGreaterThan(5);
      expect(isProcessAlive(pid)).toBe(true);
    } finally {
      await killAndWait(pid);
    }
  });

  it('is done at once for a process that is gone, and never signals a reused pid', async () => {
    expect(await killAndWait(2 ** 22 + 12345)).toBe(true);
    const pid = await orphan('exec sleep 30');
    try {
      const start = processStartTime(pid)!;
      // A start time that is not this process's: as if the pid had been reused.
      expect(await killAndWait(pid, { startTime: `${start}0` })).toBe(true);
      expect(isProcessAlive(pid)).toBe(true);
    } finally {
      expect(await killAndWait(pid, { startTime: processStartTime(pid)! })).toBe(true);
    }
  });
});

describe('isProcessExiting', () => {
  it('is false while any thread can run, true once the process is killed (before or after it is reaped) or gone', async () => {
    const pid = await orphan('exec sleep 30');
    expect(isProcessExiting(pid)).toBe(false);
    process.kill(pid, 'SIGKILL');
    await vi.waitFor(() => expect(isProcessExiting(pid)).toBe(true), { interval: 1 });
    await vi.waitFor(() => expect(isProcessAlive(pid)).toBe(false), { interval: 5 });
    expect(isProcessExiting(pid)).toBe(true);
    expect(isProcessExiting(2 ** 22 + 12345)).toBe(true); // above pid_max: never a process
  });
});

describe('ownNodeEnv', () => {
  it('is the environment without NODE_EXTRA_CA_CERTS, the rest kept; the caller’s object untouched', () => {
    const env = { PATH: '/bin', NODE_EXTRA_CA_CERTS: '/etc/ssl/certs/ca.pem', VMSNAP_HOME: '/h' };
    expect(ownNodeEnv(env)).toEqual({ PATH: '/bin', VMSNAP_HOME: '/h' });
    expect(env.NODE_EXTRA_CA_CERTS).toBe('/etc/ssl/certs/ca.pem');
  });

  it('a Node started with it starts without reading certificates (a missing file would be warned about)', () => {
    const env = { ...process.env, NODE_EXTRA_CA_CERTS: '/nonexistent/ca.pem' };
    const run = (e: NodeJS.ProcessEnv) =>
      new Promise<string>((resolve) => {
        const c = spawn(process.execPath, ['-e', '0'], { env: e, stdio: ['ignore', 'ignore', 'pipe'] });
        let err = '';
        c.stderr.on('data', (d: Buffer) => (err += d.toString()));
        c.on('close', () => resolve(err));
      });
    return Promise.all([run(env), run(ownNodeEnv(env))]).then(([withIt, without]) => {
      expect(withIt).toMatch(/Ignoring extra certs/);
      expect(without).toBe('');
    });
  });
});
