import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QmpCommandError } from '../src/errors.js';
import { QmpClient } from '../src/qemu/qmp.js';
import { rejection } from './rejection.js';

// QmpClient against a real QEMU (no guest: -S, the machine never runs). Moved here from
// src/qemu/qmp.test.ts so that the unit tests (npm run test:unit) need no QEMU.
describe('QmpClient against QEMU', () => {
  let dir: string;
  let qemu: ChildProcess;
  let qmp: QmpClient;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vmsnap-qmp-'));
    const sock = join(dir, 'qmp.sock');
    qemu = spawn(
      'qemu-system-x86_64',
      ['-M', 'q35', '-accel', 'tcg', '-nodefaults', '-display', 'none', '-S', '-qmp', `unix:${sock},server=on,wait=off`],
      { stdio: 'ignore' },
    );
    qmp = await QmpClient.connect(sock, { retryUntilMs: 20_000 });
  });

  afterAll(async () => {
    await qmp?.close();
    if (qemu?.exitCode === null) qemu.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('negotiates capabilities and exposes the greeting', async () => {
    expect(qmp.greeting.version.qemu.major).toBeGreaterThanOrEqual(7);
    expect(qmp.qemuVersion).toMatch(/^\d+\.\d+\.\d+$/);
    expect(Array.isArray(qmp.greeting.capabilities)).toBe(true);
    // Started with -S: the machine exists but has never run.
    expect(await qmp.queryStatus()).toMatchObject({ status: 'prelaunch', running: false });
  });

  it('correlates concurrent commands', async () => {
    const [status, version, name, bad, kvm] = await Promise.allSettled([
      qmp.execute<{ status: string }>('query-status'),
      qmp.execute<{ qemu: { major: number } }>('query-version'),
      qmp.execute<Record<string, unknown>>('query-name'),
      qmp.execute('query-nonsense'),
      qmp.execute<{ enabled: boolean; present: boolean }>('query-kvm'),
    ]);
    expect(status).toMatchObject({ status: 'fulfilled', value: { status: 'prelaunch' } });
    expect(version).toMatchObject({ status: 'fulfilled', value: { qemu: { major: qmp.greeting.version.qemu.major } } });
    expect(name).toEqual({ status: 'fulfilled', value: {} });
    expect(bad.status).toBe('rejected');
    expect(kvm).toMatchObject({ status: 'fulfilled', value: { enabled: false } });
  });

  it('turns error replies into QmpCommandError', async () => {
    const notFound = await rejection(qmp.execute('no-such-command'));
    expect(notFound).toBeInstanceOf(QmpCommandError);
    expect(notFound).toMatchObject({ code: 'QMP_ERROR', errorClass: 'CommandNotFound', command: 'no-such-command' });
    const generic = await rejection(qmp.execute('blockdev-del', { 'node-name': 'nope' }));
    expect(generic).toMatchObject({ errorClass: 'GenericError' });
    expect((generic as QmpCommandError).description).toContain('nope');
    // The connection is still fine afterwards.
    expect((await qmp.queryStatus()).running).toBe(false);
  });

  it('delivers STOP/RESUME with timestamps to waiters set up before the command', async () => {
    const iter = qmp.events();
    const before = Date.now();
    const resumed = qmp.waitForEvent('RESUME', { timeoutMs: 10_000 });
    await qmp.execute('cont');
    const resume = await resumed;
    const stopped = qmp.waitForEvent('STOP', { timeoutMs: 10_000 });
    await qmp.execute('stop');
    const stop = await stopped;
    expect(resume.timestamp.seconds).toBeGreaterThan(0);
    // QEMU stamps events with the host's wall clock.
    expect(resume.timeMs).toBeGreaterThanOrEqual(before - 1000);
    expect(resume.timeMs).toBeLessThanOrEqual(Date.now() + 1000);
    expect(stop.timeMs).toBeGreaterThanOrEqual(resume.timeMs);
    expect((await qmp.queryStatus()).status).toBe('paused');
    // The iterator buffered both, in order, from the moment it was created.
    const seen: string[] = [];
    for await (const e of iter) {
      seen.push(e.event);
      if (e.event === 'STOP') break;
    }
    expect(seen).toEqual(['RESUME', 'STOP']);
  });

  it('ends waits on timeout or abort without unhandled rejections', async () => {
    const e = await rejection(qmp.waitForEvent('NEVER', { timeoutMs: 50 }));
    expect(e.code).toBe('QMP_TIMEOUT');
    const ac = new AbortController();
    const aborted = qmp.waitForEvent('NEVER', { signal: ac.signal });
    ac.abort();
    expect((await rejection(aborted)).code).toBe('INTERRUPTED');
    // Nobody observes this one: it must not surface as an unhandled rejection.
    void qmp.waitForEvent('NEVER', { timeoutMs: 10 });
    await new Promise((r) => setTimeout(r, 50));
  });

  it('reports QMP_DISCONNECTED when QEMU dies', async () => {
    const shutdown = qmp.waitForEvent('SHUTDOWN');
    const closed = new Promise<void>((r) => qmp.onClose(r));
    const iter = qmp.events();
    qemu.kill('SIGKILL');
    await closed;
    expect((await rejection(shutdown)).code).toBe('QMP_DISCONNECTED');
    expect(await iter.next()).toEqual({ value: undefined, done: true });
    const e = await rejection(qmp.execute('query-status'));
    expect(e.code).toBe('QMP_DISCONNECTED');
    expect(e.message).toContain("'query-status'");
  });
});
