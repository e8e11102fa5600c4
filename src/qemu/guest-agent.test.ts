import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GuestAgentCommandError } from '../errors.js';
import { GuestAgentClient } from './guest-agent.js';
import { JsonObjectSplitter } from './qmp.js';
import { rejection } from '../../test/rejection.js';

type Msg = { execute: string; arguments?: Record<string, unknown> };
/** What the fake agent does with one command: a reply, a delayed reply, or no reply at all. */
type Answer = { reply?: unknown; delayMs?: number } | undefined;

interface FakeAgent {
  path: string;
  server: Server;
  received: Msg[];
  /** Commands that arrived while the previous reply was still being worked on. */
  overlapped: number;
}

/**
 * A fake qemu-ga: like the real one it handles commands strictly in order (so a late
 * reply comes before the reply to anything sent after it), answers
 * guest-sync-delimited with a 0xFF-prefixed reply (after a parse error for the 0xFF
 * flush byte itself, as qemu-ga 7.2 does), and answers other commands with
 * `handle`. `upAfterMs` models a guest that is still booting: the socket accepts, but
 * nothing is read until then.
 */
async function fakeAgent(dir: string, handle: (m: Msg) => Answer, opts: { upAfterMs?: number; greetStale?: boolean } = {}): Promise<FakeAgent> {
  const path = join(dir, `qga-${Math.random().toString(36).slice(2)}.sock`);
  const fake: FakeAgent = { path, server: undefined as unknown as Server, received: [], overlapped: 0 };
  fake.server = createServer((sock: Socket) => {
    sock.on('error', () => {});
    // A previous client's leftovers: half a message and a whole stale reply.
    if (opts.greetStale) sock.write('{"return": {"stale": "par');
    if (opts.greetStale) sock.write(Buffer.from([0xff, ...Buffer.from('{"return": {"old": 1}}\n')]));
    let chain = Promise.resolve();
    let busy = 0;
    const splitter = new JsonObjectSplitter((value) => {
      const m = value as Msg;
      fake.received.push(m);
      if (busy > 0 && m.execute !== 'guest-sync-delimited') fake.overlapped++;
      busy++;
      chain = chain.then(async () => {
        // The sync reply comes a little apart from what precedes it, so that a client
        // taking a stale reply for it would then take the sync reply for its next command.
        const a: Answer = m.execute === 'guest-sync-delimited' ? { reply: { return: m.arguments?.id }, delayMs: 10 } : handle(m);
        if (a?.delayMs) await new Promise((r) => setTimeout(r, a.delayMs));
        busy--;
        if (a?.reply === undefined || sock.destroyed) return;
        const text = Buffer.from(JSON.stringify(a.reply) + '\n');
        sock.write(m.execute === 'guest-sync-delimited' ? Buffer.concat([Buffer.from([0xff]), text]) : text);
      });
    }, () => {
      // qemu-ga 7.2 answers the flush byte itself with a parse error, before the sync's reply.
      chain = chain.then(() => void sock.write(`{"error": {"class": "GenericError", "desc": "JSON parse error, stray '\\uFFFD'"}}\n`));
    });
    if (opts.upAfterMs) {
      sock.pause();
      setTimeout(() => sock.resume(), opts.upAfterMs);
    }
    sock.on('data', (c: Buffer) => splitter.push(c));
  });
  await new Promise<void>((r) => fake.server.listen(path, r));
  return fake;
}

const ok = (value: unknown): Answer => ({ reply: { return: value } });


describe('GuestAgentClient (fake agent)', () => {
  let dir: string;
  const servers: Server[] = [];
  const start = async (...args: Parameters<typeof fakeAgent> extends [string, ...infer R] ? R : never): Promise<FakeAgent> => {
    const f = await fakeAgent(dir, ...args);
    servers.push(f.server);
    return f;
  };
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'vmsnap-qga-'));
  });
  afterAll(() => {
    for (const s of servers) s.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('syncs past stale data at connect, then runs commands one at a time', async () => {
    const fake = await start((m) => (m.execute === 'guest-ping' ? { reply: { return: {} }, delayMs: 20 } : undefined), { greetStale: true });
    const agent = await GuestAgentClient.connect(fake.path, { timeoutMs: 2000 });
    const sync = fake.received[0]!;
    expect(sync.execute).toBe('guest-sync-delimited');
    expect(typeof sync.arguments?.id).toBe('number');
    await Promise.all([agent.ping(), agent.ping(), agent.ping(), agent.ping()]);
    expect(fake.received.filter((m) => m.execute === 'guest-ping')).toHaveLength(4);
    expect(fake.overlapped).toBe(0);
    await agent.close();
    expect(agent.closed).toBe(true);
  });

  it('turns error replies into GuestAgentCommandError', async () => {
    const fake = await start(() => ({ reply: { error: { class: 'CommandNotFound', desc: 'Command guest-nope has not been found' } } }));
    const agent = await GuestAgentClient.connect(fake.path);
    const e = await rejection(agent.execute('guest-nope'));
    expect(e).toBeInstanceOf(GuestAgentCommandError);
    expect(e).toMatchObject({ code: 'GUEST_AGENT_ERROR', errorClass: 'CommandNotFound' });
    expect(e.message).toContain("'guest-nope'");
    await agent.close();
  });

  it('after a timeout, resyncs so that the late reply is not taken for the next one', async () => {
    const fake = await start((m) => (m.execute === 'guest-slow' ? { reply: { return: 'late' }, delayMs: 300 } : ok('pong')));
    const agent = await GuestAgentClient.connect(fake.path);
    const e = await rejection(agent.execute('guest-slow', undefined, { timeoutMs: 100 }));
    expect(e.code).toBe('GUEST_AGENT_UNAVAILABLE');
    expect(e.message).toContain("'guest-slow'");
    expect(await agent.execute('guest-ping')).toBe('pong');
    expect(fake.received.map((m) => m.execute)).toEqual(['guest-sync-delimited', 'guest-slow', 'guest-sync-delimited', 'guest-ping']);
    await agent.close();
  });

  it('runs guest-exec and polls guest-exec-status until the process exits', async () => {
    let polls = 0;
    const fake = await start((m) => {
      if (m.execute === 'guest-exec') return ok({ pid: 42 });
      if (m.execute === 'guest-exec-status') {
        if (++polls < 3) return ok({ exited: false });
        return ok({
          exited: true,
          exitcode: 3,
          'out-data': Buffer.from('héllo\n').toString('base64'),
          'err-data': Buffer.from('oops').toString('base64'),
        });
      }
      return undefined;
    });
    const agent = await GuestAgentClient.connect(fake.path);
    const r = await agent.exec('/bin/sh', ['-c', 'cat; exit 3'], { input: 'in', env: { A: 'b' } });
    expect(r).toEqual({ exitCode: 3, stdout: 'héllo\n', stderr: 'oops' });
    const exec = fake.received.find((m) => m.execute === 'guest-exec')!;
    expect(exec.arguments).toEqual({ path: '/bin/sh', arg: ['-c', 'cat; exit 3'], 'capture-output': true, env: ['A=b'], 'input-data': 'aW4=' });
    expect(fake.received.filter((m) => m.execute === 'guest-exec-status').every((m) => m.arguments?.pid === 42)).toBe(true);
    expect(polls).toBe(3);
    await agent.close();
  });

  it('reports a signal, and gives up on a process that runs too long', async () => {
    let which = 0;
    const fake = await start((m) => {
      if (m.execute === 'guest-exec') return ok({ pid: ++which });
      if (m.execute === 'guest-exec-status') return ok(m.arguments?.pid === 1 ? { exited: true, signal: 9 } : { exited: false });
      return undefined;
    });
    const agent = await GuestAgentClient.connect(fake.path);
    expect(await agent.exec('/bin/sleep', ['1'])).toEqual({ exitCode: 137, stdout: '', stderr: '', signal: 9 });
    const e = await rejection(agent.exec('/bin/sleep', ['1000'], { timeoutMs: 200 }));
    expect(e.code).toBe('GUEST_AGENT_ERROR');
    expect(e.message).toContain('pid 2');
    await agent.close();
  });

  it('reads and writes files in base64 chunks', async () => {
    const files = new Map<string, Buffer>();
    const handles = new Map<number, { path: string; pos: number }>();
    let nextHandle = 1000;
    const fake = await start((m) => {
      const a = m.arguments ?? {};
      const h = handles.get(a.handle as number);
      switch (m.execute) {
        case 'guest-file-open': {
          const path = a.path as string;
          if (a.mode === 'r' && !files.has(path)) return { reply: { error: { class: 'GenericError', desc: `failed to open file '${path}'` } } };
          if (a.mode === 'w') files.set(path, Buffer.alloc(0));
          handles.set(++nextHandle, { path, pos: 0 });
          return ok(nextHandle);
        }
        case 'guest-file-read': {
          const data = files.get(h!.path)!.subarray(h!.pos, h!.pos + (a.count as number));
          h!.pos += data.length;
          return ok({ count: data.length, 'buf-b64': data.toString('base64'), eof: h!.pos >= files.get(h!.path)!.length });
        }
        case 'guest-file-write': {
          const data = Buffer.from(a['buf-b64'] as string, 'base64');
          files.set(h!.path, Buffer.concat([files.get(h!.path)!, data]));
          return ok({ count: data.length, eof: false });
        }
        case 'guest-file-close':
          handles.delete(a.handle as number);
          return ok({});
      }
      return undefined;
    });
    const agent = await GuestAgentClient.connect(fake.path);
    const big = randomBytes(2.5 * 1024 * 1024);
    await agent.writeFile('/data/big', big);
    expect(files.get('/data/big')!.equals(big)).toBe(true);
    expect(fake.received.filter((m) => m.execute === 'guest-file-write')).toHaveLength(3);
    expect((await agent.readFile('/data/big')).equals(big)).toBe(true);
    await agent.writeFile('/data/small', 'hi\n');
    expect((await agent.readFile('/data/small')).toString()).toBe('hi\n');
    expect(handles.size).toBe(0);
    const e = await rejection(agent.readFile('/nope'));
    expect(e.code).toBe('GUEST_AGENT_ERROR');
    await agent.close();
  });

  it('passes fsfreeze results through', async () => {
    let frozen = false;
    const fake = await start((m) => {
      if (m.execute === 'guest-fsfreeze-freeze') return ((frozen = true), ok(2));
      if (m.execute === 'guest-fsfreeze-thaw') return ((frozen = false), ok(2));
      if (m.execute === 'guest-fsfreeze-status') return ok(frozen ? 'frozen' : 'thawed');
      return undefined;
    });
    const agent = await GuestAgentClient.connect(fake.path);
    expect(await agent.fsfreezeFreeze()).toBe(2);
    expect(await agent.fsfreezeStatus()).toBe('frozen');
    expect(await agent.fsfreezeThaw()).toBe(2);
    expect(await agent.fsfreezeStatus()).toBe('thawed');
    await agent.close();
  });

  it('treats no reply to guest-shutdown as success, and an error reply as an error', async () => {
    let fail = false;
    const fake = await start((m) => {
      if (m.execute === 'guest-shutdown') return fail ? { reply: { error: { class: 'GenericError', desc: 'no shutdown' } } } : undefined;
      return ok({});
    });
    const agent = await GuestAgentClient.connect(fake.path);
    await agent.shutdown('powerdown', { replyWaitMs: 100 });
    expect(fake.received.at(-1)).toEqual({ execute: 'guest-shutdown', arguments: { mode: 'powerdown' } });
    fail = true;
    expect((await rejection(agent.shutdown('halt', { replyWaitMs: 1000 }))).code).toBe('GUEST_AGENT_ERROR');
    await agent.ping();
    await agent.close();
  });

  it('waits for an agent that comes up late, skipping the answers to earlier syncs', async () => {
    const fake = await start(() => ok({}), { upAfterMs: 1500 });
    const t0 = Date.now();
    const agent = await GuestAgentClient.waitUntilReady(fake.path, { timeoutMs: 10_000 });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1400);
    const syncs = fake.received.filter((m) => m.execute === 'guest-sync-delimited');
    expect(syncs.length).toBeGreaterThanOrEqual(2); // the first try timed out
    expect(fake.received.at(-1)?.execute).toBe('guest-ping');
    await agent.close();
  });

  it('says GUEST_AGENT_UNAVAILABLE, with what to check, when nothing answers', async () => {
    const fake = await start(() => ok({}), { upAfterMs: 60_000 });
    const e = await rejection(GuestAgentClient.waitUntilReady(fake.path, { timeoutMs: 1500 }));
    expect(e.code).toBe('GUEST_AGENT_UNAVAILABLE');
    expect(e.hint).toMatch(/VM running.*serial log/);
    const e2 = await rejection(GuestAgentClient.connect(fake.path, { timeoutMs: 200 }));
    expect(e2.code).toBe('GUEST_AGENT_UNAVAILABLE');
    const missing = await rejection(GuestAgentClient.connect(join(dir, 'missing.sock'), { timeoutMs: 200 }));
    expect(missing.code).toBe('GUEST_AGENT_UNAVAILABLE');
  });

  it('fails a pending command when the connection closes', async () => {
    let sock: Socket | undefined;
    const fake = await start((m) => (m.execute === 'guest-hang' ? (sock?.destroy(), undefined) : ok({})));
    fake.server.on('connection', (s) => (sock = s));
    const agent = await GuestAgentClient.connect(fake.path);
    const e = await rejection(agent.execute('guest-hang'));
    expect(e.code).toBe('GUEST_AGENT_UNAVAILABLE');
    expect(e.message).toContain('closed');
    expect((await rejection(agent.ping())).code).toBe('GUEST_AGENT_UNAVAILABLE');
  });
});
