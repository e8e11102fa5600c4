import { statSync, readFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isLoopback } from '../src/api/auth.js';
import type { Operation } from '../src/api/operations.js';
import { NAME_PATTERN } from '../src/api/schemas.js';
import { serve, type RunningServer } from '../src/api/server.js';
import { acquireVmLock } from '../src/catalog/lock.js';
import { validateName } from '../src/contract/config.js';
import type { PolicyRunResult } from '../src/contract/views.js';
import type { Vmsnap } from '../src/vmsnap.js';
import { cleanupHome, openLib, tempHome, waitFor } from './helpers.js';
import { apiClient } from './http.js';

interface SseEvent {
  id?: string;
  event: string;
  data: unknown;
}

/** A minimal event-stream reader over fetch, as a non-browser client would write it. */
function openEvents(url: string, headers: Record<string, string> = {}) {
  const events: SseEvent[] = [];
  const ctrl = new AbortController();
  const waiters: { pred: (e: SseEvent) => boolean; resolve: (e: SseEvent) => void }[] = [];
  const ready = fetch(url, { headers: { Accept: 'text/event-stream', ...headers }, signal: ctrl.signal }).then(async (res) => {
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/text\/event-stream/);
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    void (async () => {
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) return;
          buf += value;
          let i: number;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            const e: SseEvent = { event: 'message', data: null };
            const data: string[] = [];
            for (const line of block.split('\n')) {
              if (line.startsWith('event:')) e.event = line.slice(6).trim();
              else if (line.startsWith('data:')) data.push(line.slice(5).trim());
              else if (line.startsWith('id:')) e.id = line.slice(3).trim();
            }
            if (data.length === 0) continue;
            e.data = JSON.parse(data.join('\n'));
            events.push(e);
            for (const w of [...waiters]) {
              if (w.pred(e)) {
                waiters.splice(waiters.indexOf(w), 1);
                w.resolve(e);
              }
            }
          }
        }
      } catch {
        /* aborted */
      }
    })();
  });
  return {
    events,
    ready,
    close: () => ctrl.abort(),
    waitFor(pred: (e: SseEvent) => boolean, timeoutMs = 30_000): Promise<SseEvent> {
      const seen = events.find(pred);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('timed out waiting for an event')), timeoutMs);
        waiters.push({ pred, resolve: (e) => (clearTimeout(t), resolve(e)) });
      });
    },
  };
}

/** fetch will not send a Host header of our choosing; node:http will. */
function statusWithHost(url: string, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers: { Host: host } }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
}

describe('HTTP API over the demo guest', () => {
  let home: string;
  let lib: Vmsnap;
  let server: RunningServer;
  let base: string;
  let sse: ReturnType<typeof openEvents>;

  const { call, refused, finish } = apiClient(() => base);
  const exec = async (script: string) => {
    // The guest's agent answers once it has booted: on a loaded machine that can take longer than one exec waits (30 s).
    const r = await waitFor(
      async () => {
        const res = await call('POST', '/api/vms/api/exec', { argv: ['/bin/sh', '-c', script] });
        return res.status === 503 && res.json.error?.code === 'GUEST_AGENT_UNAVAILABLE' ? undefined : res;
      },
      { what: 'the guest agent of VM api', timeoutMs: 100_000, intervalMs: 1000 },
    ).then((res) => res!);
    expect(r.status, JSON.stringify(r.json)).toBe(200);
    expect(r.json.exitCode, r.json.stderr).toBe(0);
    return r.json.stdout as string;
  };

  beforeAll(async () => {
    home = tempHome();
    lib = openLib(home);
    // The server runs the VMs' policies; here it looks every second rather than every 30 s.
    server = await serve({ lib, host: '127.0.0.1', port: 0, watchIntervalMs: 500, policies: { intervalMs: 1000 } });
    base = server.url;
    sse = openEvents(`${base}/api/events`);
    await sse.ready;
  });
  afterAll(async () => {
    sse?.close();
    await server?.close();
    lib?.close();
    cleanupHome(home);
  });

  it('validates requests: a bad body is a 400 naming the field, unknown ids are 404s', async () => {
    await refused('POST', '/api/vms', { name: 'bad name' }, 400, 'INVALID_ARGUMENT', 'name');
    await refused('POST', '/api/vms', { name: 'ok', memoryMiB: 'lots' }, 400, 'INVALID_ARGUMENT', 'memoryMiB');
    await refused('POST', '/api/vms', { name: 'ok', disks: [{ sizeBytes: 5 }] }, 400, 'INVALID_ARGUMENT', 'disks.0.sizeBytes');
    await refused('POST', '/api/vms', { name: 'ok', colour: 'red' }, 400, 'INVALID_ARGUMENT', 'colour');
    await refused('POST', '/api/vms', {}, 400, 'INVALID_ARGUMENT', 'name');
    await refused('POST', '/api/vms', [1, 2], 400, 'INVALID_ARGUMENT', 'body');
    // Host paths are refused unless the server was started with --allow-path.
    await refused('POST', '/api/vms', { name: 'ok', kernel: '/etc/passwd' }, 403, 'FORBIDDEN', 'kernel');
    await refused('POST', '/api/vms', { name: 'ok', disks: [{ importPath: '/etc/shadow' }] }, 403, 'FORBIDDEN', 'disks.0.importPath');
    expect((await call('GET', '/api/vms')).json).toEqual([]);

    // A body that is not JSON.
    const text = await fetch(`${base}/api/vms`, { method: 'POST', body: 'name=x', headers: { 'Content-Type': 'text/plain' } });
    expect(text.status).toBe(415);
    expect(((await text.json()) as { error: { code: string } }).error.code).toBe('UNSUPPORTED_MEDIA_TYPE');
    const broken = await fetch(`${base}/api/vms`, { method: 'POST', body: '{"name":', headers: { 'Content-Type': 'application/json' } });
    expect(broken.status).toBe(400);

    // Names in paths go through the same rule before anything looks them up.
    await refused('GET', '/api/vms/..%2Fetc', undefined, 400, 'INVALID_ARGUMENT', 'vm');
    await refused('GET', '/api/vms/nope', undefined, 404, 'NOT_FOUND');
    await refused('POST', '/api/vms/nope/start', {}, 404, 'NOT_FOUND');
    await refused('GET', '/api/vms/nope/snapshots', undefined, 404, 'NOT_FOUND');
    await refused('GET', '/api/operations/op-0123456789abcdef', undefined, 404, 'NOT_FOUND');
    await refused('GET', '/api/vms/a%2Fb', undefined, 400, 'INVALID_ARGUMENT', 'vm');
    await refused('GET', '/api/operations/nope', undefined, 400, 'INVALID_ARGUMENT', 'id');
    await refused('GET', '/api/no-such-route', undefined, 404, 'NOT_FOUND');

    // The API's name rule is the library's.
    for (const n of ['a', 'demo', 'A.b_c-d', '0x', 'x'.repeat(63), 'x'.repeat(64), '-a', '.a', 'a b', 'a/b', '', 'é', 'a\n']) {
      let lib = true;
      try {
        validateName(n, 'VM');
      } catch {
        lib = false;
      }
      expect(NAME_PATTERN.test(n), n).toBe(lib);
    }
  });

  it('serves an OpenAPI document generated from the route schemas', async () => {
    const doc = (await call('GET', '/openapi.json')).json;
    expect(doc.openapi).toBe('3.1.0');
    for (const p of ['/api/vms', '/api/vms/{vm}', '/api/vms/{vm}/start', '/api/vms/{vm}/snapshots', '/api/vms/{vm}/snapshots/{snap}/revert', '/api/vms/{vm}/tree', '/api/operations/{id}', '/api/events']) {
      expect(doc.paths[p], p).toBeDefined();
    }
    expect(doc.paths['/api/vms/{vm}/snapshots/{snap}'].delete.responses['202']).toBeDefined();
    expect(doc.components.schemas.TakeSnapshot.properties.name.pattern).toBe(NAME_PATTERN.source);
    expect(doc.components.schemas.Error).toBeDefined();
  });

  it('creates a VM and starts it: 202, then the operation to follow', async () => {
    const created = await call('POST', '/api/vms', { name: 'api', image: 'demo', memoryMiB: 128 });
    expect(created.status, JSON.stringify(created.json)).toBe(201);
    expect(created.json).toMatchObject({ name: 'api', state: 'stopped', memoryMiB: 128, disks: 1 });
    await refused('POST', '/api/vms', { name: 'api', image: 'demo' }, 409, 'ALREADY_EXISTS');

    const start = await call('POST', '/api/vms/api/start', {});
    expect(start.json.operation).toMatchObject({ kind: 'vm-start', vm: 'api', status: 'running', result: null, error: null });
    const op = await finish(start);
    expect(op).toMatchObject({ status: 'succeeded', result: { name: 'api', state: 'running' } });
    expect(op.durationMs).toBeGreaterThan(0);
    await refused('POST', '/api/vms/api/start', {}, 409, 'INVALID_STATE');
    expect((await call('GET', '/api/vms/api')).json).toMatchObject({ state: 'running', config: { memoryMiB: 128 } });
    // The stream saw the operation run and finish, and the VM come up.
    await sse.waitFor((e) => e.event === 'operation' && (e.data as { operation: Operation }).operation.id === op.id && (e.data as { operation: Operation }).operation.status === 'succeeded');
    await sse.waitFor((e) => e.event === 'vm-state' && (e.data as { state: string }).state === 'running');
  });

  it('takes a snapshot, refusing a second operation on the busy VM with 423', async () => {
    await exec('echo A > /data/A && sync');
    const take = await call('POST', '/api/vms/api/snapshots', { name: 's1', description: 'first one' });
    expect(take.status).toBe(202);
    const busy = await refused('POST', '/api/vms/api/snapshots', { name: 's-other' }, 423, 'BUSY');
    expect(busy.details.operationId).toBe(take.json.operation.id);
    await refused('POST', '/api/vms/api/pause', undefined, 423, 'BUSY');
    await refused('POST', '/api/vms/api/stop', { force: true }, 423, 'BUSY');
    const op = await finish(take);
    expect(op.status, JSON.stringify(op.error)).toBe('succeeded');
    expect(op.result).toMatchObject({ name: 's1', description: 'first one', hasMemory: true, current: true, vmState: 'running' });

    await refused('POST', '/api/vms/api/snapshots', { name: 's1' }, 409, 'ALREADY_EXISTS', 'name');
    await refused('POST', '/api/vms/api/snapshots', { name: 'x', description: 'd'.repeat(5000) }, 400, 'INVALID_ARGUMENT', 'description');
    await refused('POST', '/api/vms/api/snapshots', { name: 'x', memory: 'yes' }, 400, 'INVALID_ARGUMENT', 'memory');

    const list = (await call('GET', '/api/vms/api/snapshots')).json;
    expect(list).toHaveLength(1);
    expect(list[0]).toMatchObject({ name: 's1', current: true, hasMemory: true });
    expect(list[0].stateBytes).toBeGreaterThan(0);
    const show = (await call('GET', '/api/vms/api/snapshots/s1')).json;
    expect(show).toMatchObject({ name: 's1', parent: null, children: [] });
    expect((await call('GET', `/api/vms/api/snapshots/${show.id}`)).json.name).toBe('s1');
    await refused('GET', '/api/vms/api/snapshots/nope', undefined, 404, 'NOT_FOUND');
    const tree = (await call('GET', '/api/vms/api/tree')).json;
    expect(tree).toMatchObject({ vm: 'api', current: 's1', roots: [{ name: 's1', current: true, children: [] }] });
    expect(tree.text).toMatch(/s1[^\n]*\n\s+└─ ● you are here/);
    await sse.waitFor((e) => e.event === 'snapshots' && (e.data as { vm: string }).vm === 'api');
  }, 240_000); // its first exec waits for the guest to boot: slow on a loaded machine

  it('refuses a revert that would lose data unless forced, then reverts', async () => {
    await exec('echo B > /data/B && sync');
    const present = (await call('GET', '/api/vms/api/present-state')).json;
    expect(present.wouldLoseData).toBe(true);
    expect(present.lost.join('\n')).toMatch(/running state/);
    const e = await refused('POST', '/api/vms/api/snapshots/s1/revert', {}, 409, 'WOULD_LOSE_DATA');
    expect(e.details.lost).toEqual(present.lost);
    await refused('POST', '/api/vms/api/snapshots/nope/revert', { force: true }, 404, 'NOT_FOUND');

    const op = await finish(await call('POST', '/api/vms/api/snapshots/s1/revert', { force: true }));
    expect(op.status, JSON.stringify(op.error)).toBe('succeeded');
    expect(op.result).toMatchObject({ state: 'running', snapshot: { name: 's1' } });
    expect((await exec('ls /data | grep -v lost+found')).trim()).toBe('A');
  });

  it('answers 423 when another process holds the VM (the library lock)', async () => {
    const other = openLib(home);
    const vm = other.vms.get('api');
    const lock = await acquireVmLock(other.ctx.catalog, vm.id, vm.name, 'a test holding the VM');
    const wait = process.env.VMSNAP_LOCK_WAIT_MS;
    process.env.VMSNAP_LOCK_WAIT_MS = '200';
    try {
      const e = await refused('POST', '/api/vms/api/pause', undefined, 423, 'BUSY');
      expect(e.message).toMatch(/a test holding the VM/);
    } finally {
      if (wait === undefined) delete process.env.VMSNAP_LOCK_WAIT_MS;
      else process.env.VMSNAP_LOCK_WAIT_MS = wait;
      lock.release();
      other.close();
    }
    expect((await call('POST', '/api/vms/api/pause')).json.state).toBe('paused');
    await sse.waitFor((e) => e.event === 'vm-state' && (e.data as { state: string }).state === 'paused');
    expect((await call('POST', '/api/vms/api/resume')).json.state).toBe('running');
  });

  it('deletes snapshots, with progress on the event stream', async () => {
    expect((await call('GET', '/api/health')).json.operations).toContain('snapshot-delete');
    await exec('dd if=/dev/urandom of=/data/big bs=1M count=8 2>/dev/null && sync');
    expect((await finish(await call('POST', '/api/vms/api/snapshots', { name: 's2', memory: false }))).status).toBe('succeeded');
    await exec('echo C > /data/C && sync');

    const op = await finish(await call('DELETE', '/api/vms/api/snapshots/s1'));
    expect(op.status, JSON.stringify(op.error)).toBe('succeeded');
    expect(op.result).toMatchObject({ deleted: ['s1'] });
    expect((op.result as { reclaimedBytes: number }).reclaimedBytes).toBeGreaterThan(0);
    const progress = sse.events.filter((e) => e.event === 'progress' && (e.data as { operationId: string }).operationId === op.id);
    expect(progress.length, 'progress events of the delete').toBeGreaterThan(0);
    expect(progress.at(-1)!.data).toMatchObject({ vm: 'api', done: expect.any(Number), total: expect.any(Number) });
    expect((await call('GET', '/api/vms/api/snapshots')).json.map((s: { name: string }) => s.name)).toEqual(['s2']);
    // Deleting keeps the present state: what the guest wrote is still there.
    expect((await exec('ls /data | grep -v lost+found')).trim().split('\n').sort()).toEqual(['A', 'C', 'big']);
    await refused('DELETE', '/api/vms/api/snapshots/s1', undefined, 404, 'NOT_FOUND');

    const all = await finish(await call('DELETE', '/api/vms/api/snapshots'));
    expect(all.status, JSON.stringify(all.error)).toBe('succeeded');
    expect(all.result).toMatchObject({ deleted: ['s2'] });
    expect((await call('GET', '/api/vms/api/snapshots')).json).toEqual([]);
  });

  it('verifies a VM through an operation', async () => {
    const op = await finish(await call('POST', '/api/vms/api/verify', {}));
    expect(op.status, JSON.stringify(op.error)).toBe('succeeded');
    expect(op.result).toMatchObject({ ok: true, problems: [] });
    await refused('POST', '/api/vms/api/verify', { deep: 'yes' }, 400, 'INVALID_ARGUMENT', 'deep');
  });

  it('refuses cross-origin writes and foreign Host names', async () => {
    const evil = await call('POST', '/api/vms/api/pause', undefined, { Origin: 'http://evil.example' });
    expect(evil.status).toBe(403);
    expect(evil.json.error.code).toBe('FORBIDDEN');
    expect((await call('POST', '/api/vms/api/pause', undefined, { 'Sec-Fetch-Site': 'cross-site' })).status).toBe(403);
    expect((await call('POST', '/api/vms/api/pause', undefined, { Origin: 'null' })).status).toBe(403);
    // Reads carry no CORS grant, so another site's page cannot see the answer.
    const read = await call('GET', '/api/vms', undefined, { Origin: 'http://evil.example' });
    expect(read.status).toBe(200);
    expect(read.headers.get('access-control-allow-origin')).toBeNull();
    // DNS rebinding: a foreign name pointing at 127.0.0.1 is refused.
    expect(await statusWithHost(`${base}/api/vms`, 'evil.example:8080')).toBe(403);
    expect(await statusWithHost(`${base}/api/vms`, `localhost:${server.port}`)).toBe(200);
    // The server's own page may write.
    const same = await call('POST', '/api/vms/api/pause', undefined, { Origin: base, 'Sec-Fetch-Site': 'same-origin' });
    expect(same.status, JSON.stringify(same.json)).toBe(200);
    expect((await call('POST', '/api/vms/api/resume')).status).toBe(200);
  });

  it('requires the bearer token when bound off loopback', async () => {
    expect([isLoopback('127.0.0.1'), isLoopback('127.0.0.2'), isLoopback('::1'), isLoopback('localhost')]).toEqual([true, true, true, true]);
    expect([isLoopback('0.0.0.0'), isLoopback('::'), isLoopback('192.168.1.10'), isLoopback('example.com')]).toEqual([false, false, false, false]);

    const lines: string[] = [];
    const guarded = await serve({ lib, host: '127.0.0.1', port: 0, requireToken: true, log: (l) => lines.push(l) });
    try {
      const file = join(home, 'api-token');
      expect(statSync(file).mode & 0o777).toBe(0o600);
      const token = readFileSync(file, 'utf8').trim();
      expect(token).toBe(guarded.token);
      expect(token.length).toBeGreaterThanOrEqual(40);
      expect(lines.join('\n')).toContain(token);

      const none = await fetch(`${guarded.url}/api/vms`);
      expect(none.status).toBe(401);
      expect(none.headers.get('www-authenticate')).toMatch(/^Bearer/);
      expect(((await none.json()) as { error: { code: string } }).error.code).toBe('UNAUTHORIZED');
      expect((await fetch(`${guarded.url}/api/vms`, { headers: { Authorization: 'Bearer wrong' } })).status).toBe(401);
      expect((await fetch(`${guarded.url}/api/vms/api/start`, { method: 'POST', headers: { Authorization: `Basic ${token}` } })).status).toBe(401);
      expect((await fetch(`${guarded.url}/api/events`, { headers: { Authorization: 'Bearer wrong' } })).status).toBe(401);
      const ok = await fetch(`${guarded.url}/api/vms`, { headers: { Authorization: `Bearer ${token}` } });
      expect(ok.status).toBe(200);
      // The UI's files hold no data: they load without the token, and the page asks for it.
      expect((await fetch(`${guarded.url}/`)).status).not.toBe(401);
    } finally {
      await guarded.close();
    }
    // A second start reuses the token and does not print it again.
    const again: string[] = [];
    const second = await serve({ lib, host: '127.0.0.1', port: 0, requireToken: true, log: (l) => again.push(l) });
    expect(second.token).toBe(readFileSync(join(home, 'api-token'), 'utf8').trim());
    expect(again.join('\n')).not.toContain(second.token!);
    await second.close();
  });

  it('sets, shows, runs and removes a policy; prunes with a dry run; protects; and runs the policies itself (expiry)', async () => {
    await refused('GET', '/api/vms/api/policy', undefined, 404, 'NOT_FOUND');
    await refused('PUT', '/api/vms/api/policy', { keepLast: 3 }, 400, 'INVALID_ARGUMENT', 'schedule');
    await refused('PUT', '/api/vms/api/policy', { schedule: '@daily', keepLast: -1 }, 400, 'INVALID_ARGUMENT', 'keepLast');
    await refused('PUT', '/api/vms/api/policy', { schedule: '@daily', keep: 1 }, 400, 'INVALID_ARGUMENT', 'keep');
    expect((await refused('PUT', '/api/vms/api/policy', { schedule: '61 3 * * *' }, 400, 'INVALID_ARGUMENT')).message).toMatch(/the minute field \(1st\) '61' is not valid/);
    await refused('POST', '/api/vms/api/policy/run', { now: true }, 404, 'NOT_FOUND');

    const set = await call('PUT', '/api/vms/api/policy', { schedule: '@daily', timeZone: 'UTC', keepLast: 1, memory: false, namePattern: 'web-{HH}{mm}{ss}' });
    expect(set.status, JSON.stringify(set.json)).toBe(200);
    expect(set.json).toMatchObject({ vm: 'api', timeZone: 'UTC', rulesText: 'keep-last 1', spec: { schedule: '@daily', memory: false }, lastRun: null, snapshots: 0 });
    expect(set.json.nextRuns[0]).toMatch(/T00:00:00\.000Z$/);
    expect((await call('GET', '/api/policies')).json.map((p: { vm: string }) => p.vm)).toEqual(['api']);
    expect((await call('GET', '/api/vms')).json[0]).toMatchObject({ name: 'api', policy: '@daily', protectedSnapshots: 0 });

    // Two passes at once: the policy's snapshots, the second pass prunes the first (keep-last 1).
    const runs: Operation[] = [];
    for (let i = 0; i < 2; i++) runs.push(await finish(await call('POST', '/api/vms/api/policy/run', { now: true })));
    for (const r of runs) expect(r, JSON.stringify(r.error)).toMatchObject({ kind: 'policy-run', status: 'succeeded', result: { status: 'ok', trigger: 'now' } });
    const [first, second] = runs.map((r) => (r.result as PolicyRunResult).snapshot!) as [string, string];
    expect((runs[1]!.result as PolicyRunResult).prune!.deleted.map((d) => [d.name, d.reason])).toEqual([[first, 'no rule keeps it (keep-last 1)']]);
    expect((await call('GET', `/api/vms/api/snapshots/${second}`)).json).toMatchObject({ protected: false, expiresAt: null, policy: { slot: null, owned: true }, hasMemory: false });
    expect((await call('GET', '/api/vms/api/policy')).json.lastRun).toMatchObject({ status: 'ok', trigger: 'now', snapshot: second, deleted: [first] });

    // Protection: refused deletes (409, at once), and delete-all refuses as a whole.
    expect((await finish(await call('POST', '/api/vms/api/snapshots', { name: 'kept', memory: false }))).status).toBe('succeeded');
    const prot = await call('POST', '/api/vms/api/snapshots/kept/protect', {});
    expect(prot.status, JSON.stringify(prot.json)).toBe(200);
    expect(prot.json).toMatchObject({ name: 'kept', protected: true, policy: null });
    const e = await refused('DELETE', '/api/vms/api/snapshots/kept', undefined, 409, 'INVALID_STATE');
    expect(e).toMatchObject({ message: expect.stringMatching(/snapshot 'kept' of VM 'api' is protected/), hint: 'vmsnap snapshot unprotect api kept' });
    await refused('DELETE', '/api/vms/api/snapshots', undefined, 409, 'INVALID_STATE');
    await refused('POST', '/api/vms/api/snapshots/nope/protect', {}, 404, 'NOT_FOUND');
    await refused('POST', '/api/vms/api/snapshots', { name: 'x', expire: '1mo' }, 400, 'INVALID_ARGUMENT', 'expire');
    expect((await call('GET', '/api/vms/api/snapshots')).json.map((x: { name: string }) => x.name)).toEqual([second, 'kept']);

    // A snapshot that expires in a second: the dry run names the rule, and the server's own scheduler prunes it.
    const brief = await finish(await call('POST', '/api/vms/api/snapshots', { name: 'brief', memory: false, expire: '1s' }));
    expect(brief.result).toMatchObject({ name: 'brief', expiresAt: expect.any(String), protected: false });
    const pass = await sse.waitFor((ev) => {
      const op = (ev.data as { operation?: Operation }).operation;
      // The server's own pass (not one of the two above, which the API ran with now: true).
      return ev.event === 'operation' && op?.kind === 'policy-run' && op.status === 'succeeded' && (op.result as PolicyRunResult).trigger === 'schedule';
    }, 60_000);
    const pruned = ((pass.data as { operation: Operation }).operation.result as PolicyRunResult).prune!;
    expect(pruned.deleted.map((d) => [d.name, d.cause])).toEqual([['brief', 'expired']]);
    const dry = (await call('GET', '/api/vms/api/prune')).json;
    expect(dry).toMatchObject({ dryRun: true, rules: 'keep-last 1', deleted: [] });
    expect(dry.kept.map((k: { name: string; reasons: string[] }) => [k.name, k.reasons])).toEqual([
      ['kept', ['protected']],
      [second, ['last 1 of 1']],
    ]);
    const prune = await finish(await call('POST', '/api/vms/api/prune'));
    expect(prune).toMatchObject({ kind: 'prune', status: 'succeeded', result: { dryRun: false, deleted: [] } });
    // A pass over every VM (`policy run` without a VM): a task over the whole data dir, one result per VM.
    const all = await finish(await call('POST', '/api/policies/run', {}));
    expect(all, JSON.stringify(all.error)).toMatchObject({ kind: 'policy-run-all', vm: null, status: 'succeeded' });
    expect((all.result as PolicyRunResult[]).map((r) => [r.vm, r.status, r.snapshot])).toEqual([['api', 'ok', null]]);

    // Removing the policy leaves its snapshot, which no policy prunes any more.
    expect((await call('DELETE', '/api/vms/api/policy')).json).toEqual({ vm: 'api', snapshotsLeft: 1 });
    expect((await call('GET', `/api/vms/api/snapshots/${second}`)).json.policy).toEqual({ slot: null, owned: false });
    expect((await call('POST', '/api/vms/api/snapshots/kept/unprotect', {})).json.protected).toBe(false);
    const doc = (await call('GET', '/openapi.json')).json;
    for (const p of ['/api/policies', '/api/policies/run', '/api/vms/{vm}/policy', '/api/vms/{vm}/policy/run', '/api/vms/{vm}/prune', '/api/vms/{vm}/snapshots/{snap}/protect', '/api/vms/{vm}/snapshots/{snap}/unprotect']) {
      expect(doc.paths[p], p).toBeDefined();
    }
  });

  it('stops the VM through an operation; the stream reports it', async () => {
    const op = await finish(await call('POST', '/api/vms/api/stop', { force: true }));
    expect(op).toMatchObject({ kind: 'vm-stop', status: 'succeeded', result: { state: 'stopped' } });
    await sse.waitFor((e) => e.event === 'vm-state' && (e.data as { state: string }).state === 'stopped');
    await refused('POST', '/api/vms/api/stop', {}, 409, 'INVALID_STATE');
    const ops = (await call('GET', '/api/operations?vm=api')).json as Operation[];
    expect(ops[0]!.id).toBe(op.id);
    expect(ops.every((o) => o.status !== 'running')).toBe(true);
    // Event ids let a client that reconnects catch up on what it missed.
    const ids = sse.events.map((e) => Number(e.id)).filter((n) => !Number.isNaN(n));
    expect(ids).toEqual([...ids].sort((a, b) => a - b));
    const replay = openEvents(`${base}/api/events`, { 'Last-Event-ID': String(ids.at(-3)) });
    await replay.ready;
    await replay.waitFor((e) => e.id === String(ids.at(-1)), 5000);
    replay.close();

    const set = await call('PATCH', '/api/vms/api', { memoryMiB: 192 });
    expect(set.status, JSON.stringify(set.json)).toBe(200);
    expect(set.json.config.memoryMiB).toBe(192);
    expect((await call('DELETE', '/api/vms/api')).json).toEqual({ removed: 'api' });
    await sse.waitFor((e) => e.event === 'vm-removed' && (e.data as { vm: string }).vm === 'api');
  });
});
