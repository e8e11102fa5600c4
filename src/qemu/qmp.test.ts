import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JsonObjectSplitter, QmpClient, type QmpEvent } from './qmp.js';
import { rejection } from '../../test/rejection.js';

const GREETING = { QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: 'fake' }, capabilities: ['oob'] } };


describe('JsonObjectSplitter', () => {
  const collect = (chunks: Buffer[]): { objects: unknown[]; sentinels: number } => {
    const objects: unknown[] = [];
    let sentinels = 0;
    const s = new JsonObjectSplitter(
      (o) => objects.push(o),
      () => sentinels++,
    );
    for (const c of chunks) s.push(c);
    return { objects, sentinels };
  };

  it('splits objects without relying on newlines, even byte by byte', () => {
    const text = '{"a":"}{\\"x"}{"b":[1,{"c":2}]}\r\n  {"d":"é€😀"}';
    const whole = collect([Buffer.from(text)]);
    const bytes = collect([...Buffer.from(text)].map((b) => Buffer.from([b])));
    const expected = [{ a: '}{"x' }, { b: [1, { c: 2 }] }, { d: 'é€😀' }];
    expect(whole.objects).toEqual(expected);
    expect(bytes.objects).toEqual(expected);
  });

  it('drops a partial object at a 0xFF sentinel', () => {
    const r = collect([Buffer.from('{"stale":"par'), Buffer.from([0xff]), Buffer.from('{"fresh":1}\n')]);
    expect(r.objects).toEqual([{ fresh: 1 }]);
    expect(r.sentinels).toBe(1);
  });
});

/** A unix-socket server that greets like QEMU and hands every parsed command to `onCommand`. */
async function fakeQmp(dir: string, onCommand: (msg: Record<string, unknown>, sock: Socket) => void): Promise<{ path: string; server: Server }> {
  const path = join(dir, `fake-${Math.random().toString(36).slice(2)}.sock`);
  const server = createServer((sock) => {
    sock.on('error', () => {});
    sock.write(JSON.stringify(GREETING) + '\r\n');
    const splitter = new JsonObjectSplitter((m) => {
      const msg = m as Record<string, unknown>;
      if (msg.execute === 'qmp_capabilities') sock.write(JSON.stringify({ return: {}, id: msg.id }) + '\r\n');
      else onCommand(msg, sock);
    });
    sock.on('data', (c: Buffer) => splitter.push(c));
  });
  await new Promise<void>((r) => server.listen(path, r));
  return { path, server };
}

describe('QmpClient against a fake server', () => {
  let dir: string;
  const servers: Server[] = [];
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'vmsnap-qmp-fake-'));
  });
  afterAll(() => {
    for (const s of servers) s.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('times out a command QEMU never answers, naming the command and the timeout', async () => {
    const { path, server } = await fakeQmp(dir, () => {});
    servers.push(server);
    const qmp = await QmpClient.connect(path);
    const e = await rejection(qmp.execute('query-status', undefined, { timeoutMs: 100 }));
    expect(e.code).toBe('QMP_TIMEOUT');
    expect(e.message).toContain("'query-status'");
    expect(e.message).toContain('100 ms');
    await qmp.close();
  });

  it('correlates replies that come back out of order and split across chunks', async () => {
    const held: Record<string, unknown>[] = [];
    const { path, server } = await fakeQmp(dir, (msg, sock) => {
      held.push(msg);
      if (held.length < 3) return;
      // Answer in reverse order, with an event in between, one byte at a time.
      const out = held
        .reverse()
        .map((m) => JSON.stringify({ return: { echo: (m.arguments as { n: number }).n }, id: m.id }))
        .join('\r\n{"event":"X","data":{},"timestamp":{"seconds":1,"microseconds":500}}\r\n');
      for (const b of Buffer.from(out + '\r\n')) sock.write(Buffer.from([b]));
    });
    servers.push(server);
    const qmp = await QmpClient.connect(path);
    const events: QmpEvent[] = [];
    qmp.onEvent((e) => events.push(e));
    const results = await Promise.all([1, 2, 3].map((n) => qmp.execute<{ echo: number }>('echo', { n })));
    expect(results.map((r) => r.echo)).toEqual([1, 2, 3]);
    expect(events).toHaveLength(2);
    expect(events[0]!.timeMs).toBe(1000.5);
    await qmp.close();
  });

  it('rejects every pending command with QMP_DISCONNECTED when the socket closes', async () => {
    let seen = 0;
    const { path, server } = await fakeQmp(dir, (_msg, sock) => {
      if (++seen === 2) sock.destroy();
    });
    servers.push(server);
    const qmp = await QmpClient.connect(path);
    let closeCalls = 0;
    qmp.onClose(() => closeCalls++);
    const a = qmp.execute('first');
    const b = qmp.execute('second');
    const event = qmp.waitForEvent('SHUTDOWN');
    for (const [p, name] of [
      [a, 'first'],
      [b, 'second'],
    ] as const) {
      const e = await rejection(p);
      expect(e.code).toBe('QMP_DISCONNECTED');
      expect(e.message).toBe(`QMP connection closed while waiting for '${name}' (did QEMU exit?)`);
    }
    expect((await rejection(event)).code).toBe('QMP_DISCONNECTED');
    expect(qmp.closed).toBe(true);
    expect(closeCalls).toBe(1);
    expect((await rejection(qmp.execute('later'))).code).toBe('QMP_DISCONNECTED');
  });

  it('retries while the socket does not exist yet', async () => {
    const path = join(dir, 'late.sock');
    const missing = await rejection(QmpClient.connect(path));
    expect(missing.code).toBe('QMP_DISCONNECTED');
    const late = new Promise<Server>((resolve) =>
      setTimeout(() => {
        const server = createServer((sock) => {
          sock.write(JSON.stringify(GREETING) + '\n');
          sock.on('data', (c) => sock.write(JSON.stringify({ return: {}, id: JSON.parse(c.toString()).id }) + '\n'));
        });
        server.listen(path, () => resolve(server));
      }, 300),
    );
    const qmp = await QmpClient.connect(path, { retryUntilMs: 5000 });
    servers.push(await late);
    expect(qmp.qemuVersion).toBe('7.2.0');
    await qmp.close();
  });

  it('times out when no greeting comes (another client holds the socket)', async () => {
    const path = join(dir, 'mute.sock');
    const server = createServer(() => {});
    servers.push(server);
    await new Promise<void>((r) => server.listen(path, r));
    const e = await rejection(QmpClient.connect(path, { timeoutMs: 200 }));
    expect(e.code).toBe('QMP_TIMEOUT');
    expect(e.hint).toContain('another client');
  });
});
