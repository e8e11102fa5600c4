import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JsonObjectSplitter, QmpClient } from '../qemu/qmp.js';
import { saveToUri } from './live.js';

/*
 * The pre-copy fallback (a VM whose RAM background-snapshot cannot write-protect) against a
 * fake QEMU that answers like QEMU 7.2: the downtime limit must be 0 (one pass over RAM:
 * under TCG, QEMU 7.2 misses guest writes at every dirty-bitmap sync made while the guest
 * runs after the setup one), and a save that synced more often must be refused before the
 * disks switch.
 */

const GREETING = { QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: 'fake' }, capabilities: ['oob'] } };

type Msg = { execute: string; arguments?: Record<string, unknown>; id?: unknown };

/** A fake QEMU whose precopy makes `syncsWhileRunning` dirty-bitmap syncs before it stops the guest. */
async function fakeQemu(path: string, syncsWhileRunning: number, log: Msg[]): Promise<Server> {
  let running = true;
  let syncs = 0;
  let status = 'none';
  const server = createServer((sock: Socket) => {
    sock.on('error', () => undefined);
    const send = (o: unknown): boolean => sock.write(JSON.stringify(o) + '\r\n');
    const now = (): { seconds: number; microseconds: number } => {
      const t = Date.now();
      return { seconds: Math.floor(t / 1000), microseconds: (t % 1000) * 1000 };
    };
    const event = (name: string, data: Record<string, unknown> = {}): boolean => send({ event: name, data, timestamp: now() });
    const sync = (): void => {
      syncs++;
      event('MIGRATION_PASS', { pass: syncs });
    };
    send(GREETING);
    const splitter = new JsonObjectSplitter((m) => {
      const msg = m as Msg;
      log.push(msg);
      const reply = (r: unknown = {}): boolean => send({ return: r, id: msg.id });
      const caps = msg.arguments?.capabilities as { capability: string; state: boolean }[] | undefined;
      switch (msg.execute) {
        case 'migrate-set-capabilities':
          if (caps?.some((c) => c.capability === 'background-snapshot' && c.state)) {
            send({ error: { class: 'GenericError', desc: 'Background-snapshot is not compatible with guest memory configuration' }, id: msg.id });
          } else reply();
          return;
        case 'migrate':
          reply();
          status = 'active';
          for (let i = 0; i < syncsWhileRunning; i++) sync();
          running = false;
          event('STOP');
          status = 'pre-switchover';
          event('MIGRATION', { status });
          return;
        case 'migrate-continue':
          reply();
          sync(); // the final one, guest stopped
          status = 'completed';
          event('MIGRATION', { status });
          return;
        case 'cont':
          reply();
          running = true;
          event('RESUME');
          return;
        case 'migrate_cancel':
          reply();
          status = 'cancelled';
          return;
        case 'query-status':
          reply({ status: running ? 'running' : 'paused', running });
          return;
        case 'query-migrate':
          reply({ status, downtime: 3, ram: { 'dirty-sync-count': syncs } });
          return;
        default:
          reply();
      }
    });
    sock.on('data', (c: Buffer) => splitter.push(c));
  });
  await new Promise<void>((r) => server.listen(path, r));
  return server;
}

describe('pre-copy fallback of a memory snapshot (fake QEMU 7.2)', () => {
  let dir: string;
  const servers: Server[] = [];
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'vs-live-'));
  });
  afterAll(() => {
    for (const s of servers) s.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function save(syncsWhileRunning: number): Promise<{ log: Msg[]; result: Promise<Awaited<ReturnType<typeof saveToUri>>> }> {
    const log: Msg[] = [];
    const path = join(dir, `qmp-${syncsWhileRunning}.sock`);
    servers.push(await fakeQemu(path, syncsWhileRunning, log));
    const qmp = await QmpClient.connect(path);
    const result = saveToUri(qmp, [], 'unix:/nonexistent', { running: true, timeoutMs: 5000 });
    result.catch(() => undefined).finally(() => void qmp.close());
    return { log, result };
  }

  it('saves with a downtime limit of 0 and never changes it: one sync while the guest runs, the final one stopped', async () => {
    const { log, result } = await save(1);
    const r = await result;
    expect(r).toMatchObject({ mode: 'precopy', downtimeLimitMs: 0, fallbackReason: expect.stringMatching(/not compatible/) });
    const limits = log.filter((m) => m.execute === 'migrate-set-parameters').map((m) => m.arguments?.['downtime-limit']);
    // The background-snapshot attempt tunes first (50 ms is harmless there: it never syncs); the pre-copy sets 0 before migrate.
    const migrateAt = log.findIndex((m) => m.execute === 'migrate');
    const lastLimitAt = log.map((m) => m.execute).lastIndexOf('migrate-set-parameters');
    expect(limits.at(-1)).toBe(0);
    expect(lastLimitAt).toBeLessThan(migrateAt);
    expect(log.map((m) => m.execute)).toContain('migrate-continue');
  });

  it('refuses a save whose dirty bitmap was synced again while the guest ran: cancelled before the switch-over, guest resumed', async () => {
    const { log, result } = await save(2);
    await expect(result).rejects.toThrow(/synced its dirty bitmap 3 times.*may have missed guest writes/);
    const cmds = log.map((m) => m.execute);
    expect(cmds).toContain('migrate_cancel');
    expect(cmds).not.toContain('migrate-continue');
    expect(cmds).toContain('cont');
  });
});
