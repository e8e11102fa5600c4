import { Hono } from 'hono';
import { describe, expect, it } from 'vitest';
import { EventHub, sseHandler, type ApiEvent } from './events.js';

const vmState = (state: string): ApiEvent => ({ type: 'vm-state', data: { vm: 'a', vmId: 'id-a', state } });

describe('EventHub', () => {
  it('numbers events from 1 and hands them to every subscriber', () => {
    const hub = new EventHub();
    const seen: number[] = [];
    const off = hub.subscribe((e) => seen.push(e.id), () => undefined);
    hub.publish(vmState('running'));
    hub.publish(vmState('paused'));
    expect(seen).toEqual([1, 2]);
    expect(hub.subscribers).toBe(1);
    off();
    hub.publish(vmState('stopped'));
    expect(seen).toEqual([1, 2]);
    expect(hub.subscribers).toBe(0);
  });

  it('replays what came after a Last-Event-ID', () => {
    const hub = new EventHub();
    for (const s of ['a', 'b', 'c', 'd']) hub.publish(vmState(s));
    expect(hub.since(2)?.map((e) => e.id)).toEqual([3, 4]);
    expect(hub.since(4)).toEqual([]);
    expect(hub.since(0)?.map((e) => e.id)).toEqual([1, 2, 3, 4]);
    expect(hub.since(99)).toEqual([]);
  });

  it('says when the gap is older than its buffer, so the client reloads instead', () => {
    const hub = new EventHub(3);
    for (let i = 0; i < 6; i++) hub.publish(vmState(String(i)));
    // Buffered: 4, 5, 6.
    expect(hub.since(3)?.map((e) => e.id)).toEqual([4, 5, 6]);
    expect(hub.since(2)).toBeUndefined();
    expect(new EventHub(3).since(0)).toEqual([]);
  });

  it('closes every stream on shutdown', () => {
    const hub = new EventHub();
    let closed = 0;
    hub.subscribe(() => undefined, () => closed++);
    hub.subscribe(() => undefined, () => closed++);
    hub.closeAll();
    expect(closed).toBe(2);
  });
});

/** Read an SSE response until `until` matches what came so far (or 5 s pass), then hang up. */
async function readUntil(res: Response, until: RegExp): Promise<string> {
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let text = '';
  const deadline = Date.now() + 5000;
  try {
    while (!until.test(text)) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${until} in:\n${text}`);
      const r = await Promise.race([reader.read(), new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`timed out waiting for ${until} in:\n${text}`)), left))]);
      if (r.done) break;
      text += r.value;
    }
  } finally {
    await reader.cancel().catch(() => undefined);
  }
  return text;
}

describe('GET /api/events', () => {
  const app = (hub: EventHub) => new Hono().get('/api/events', sseHandler(hub, '9.9.9', 60_000));

  it('greets, then replays what a reconnecting client missed (Last-Event-ID), then streams', async () => {
    const hub = new EventHub();
    for (const s of ['a', 'b', 'c']) hub.publish(vmState(s));
    const res = await app(hub).request('/api/events', { headers: { 'Last-Event-ID': '1' } });
    expect(res.headers.get('content-type')).toMatch(/text\/event-stream/);
    setTimeout(() => hub.publish(vmState('d')), 50);
    const text = await readUntil(res, /id: 4\n/);
    expect(text).toMatch(/^event: hello\ndata: \{"version":"9\.9\.9","serverTime":"[^"]+"\}\n\n/);
    const ids = [...text.matchAll(/^id: (\d+)$/gm)].map((m) => Number(m[1]));
    expect(ids).toEqual([2, 3, 4]);
    expect(text).toContain('event: vm-state\ndata: {"vm":"a","vmId":"id-a","state":"b"}\nid: 2\n\n');
  });

  it('takes the last id from ?lastEventId too (EventSource cannot set headers on a first connect)', async () => {
    const hub = new EventHub();
    for (const s of ['a', 'b']) hub.publish(vmState(s));
    const text = await readUntil(await app(hub).request('/api/events?lastEventId=1'), /id: 2\n/);
    expect([...text.matchAll(/^id: (\d+)$/gm)].map((m) => Number(m[1]))).toEqual([2]);
  });

  it('tells a client whose gap is too old to resync', async () => {
    const hub = new EventHub(2);
    for (const s of ['a', 'b', 'c', 'd']) hub.publish(vmState(s));
    const text = await readUntil(await app(hub).request('/api/events', { headers: { 'Last-Event-ID': '1' } }), /event: resync/);
    expect(text).toContain('event: resync\ndata: {}\n\n');
  });

  it('replays nothing to a new client', async () => {
    const hub = new EventHub();
    hub.publish(vmState('a'));
    const res = await app(hub).request('/api/events');
    setTimeout(() => hub.publish(vmState('b')), 50);
    const text = await readUntil(res, /id: 2\n/);
    expect([...text.matchAll(/^id: (\d+)$/gm)].map((m) => Number(m[1]))).toEqual([2]);
  });
});
