import type { Context } from 'hono';
import { streamSSE } from 'hono/streaming';
import type { ApiEvent } from '../contract/operations.js';

export type { ApiEvent } from '../contract/operations.js';

export interface StampedEvent {
  id: number;
  event: ApiEvent;
}

type Listener = (e: StampedEvent) => void;

/** Fan-out of events to SSE clients, with a short replay buffer for reconnects (Last-Event-ID). */
export class EventHub {
  private nextId = 1;
  private readonly recent: StampedEvent[] = [];
  private readonly listeners = new Set<Listener>();
  private readonly closers = new Set<() => void>();

  constructor(private readonly replaySize = 500) {}

  get subscribers(): number {
    return this.listeners.size;
  }

  publish(event: ApiEvent): void {
    const stamped = { id: this.nextId++, event };
    this.recent.push(stamped);
    if (this.recent.length > this.replaySize) this.recent.shift();
    for (const l of this.listeners) l(stamped);
  }

  /** Events after lastId that are still buffered; undefined when the gap is too old to replay. */
  since(lastId: number): StampedEvent[] | undefined {
    const first = this.recent[0];
    if (first && lastId < first.id - 1) return undefined;
    return this.recent.filter((e) => e.id > lastId);
  }

  subscribe(listener: Listener, onClose: () => void): () => void {
    this.listeners.add(listener);
    this.closers.add(onClose);
    return () => {
      this.listeners.delete(listener);
      this.closers.delete(onClose);
    };
  }

  /** End every open stream (server shutdown). */
  closeAll(): void {
    for (const close of [...this.closers]) close();
  }
}

/**
 * GET /api/events: a text/event-stream. Each message has `event: <type>`, JSON
 * `data`, and an `id` a reconnecting client sends back as Last-Event-ID to get
 * what it missed. A comment every 15 s keeps proxies from closing it.
 */
export function sseHandler(hub: EventHub, version: string, keepAliveMs = 15_000) {
  return (c: Context): Response =>
    streamSSE(c, async (stream) => {
      const queue: StampedEvent[] = [];
      let wake: (() => void) | undefined;
      let open = true;
      const unsubscribe = hub.subscribe(
        (e) => {
          queue.push(e);
          wake?.();
        },
        () => {
          open = false;
          wake?.();
        },
      );
      stream.onAbort(() => {
        open = false;
        wake?.();
      });
      try {
        await stream.writeSSE({ event: 'hello', data: JSON.stringify({ version, serverTime: new Date().toISOString() }) });
        const lastId = Number(c.req.header('Last-Event-ID') ?? c.req.query('lastEventId') ?? NaN);
        if (Number.isInteger(lastId) && lastId >= 0) {
          const missed = hub.since(lastId);
          // Too old to replay: tell the client to reload everything instead.
          if (missed === undefined) await stream.writeSSE({ event: 'resync', data: '{}' });
          else queue.unshift(...missed.filter((e) => !queue.some((q) => q.id === e.id)));
        }
        while (open) {
          while (queue.length > 0 && open) {
            const { id, event } = queue.shift()!;
            await stream.writeSSE({ id: String(id), event: event.type, data: JSON.stringify(event.data) });
          }
          if (!open) break;
          const woke = await new Promise<boolean>((resolve) => {
            const t = setTimeout(() => resolve(false), keepAliveMs);
            wake = () => {
              clearTimeout(t);
              resolve(true);
            };
          });
          wake = undefined;
          if (!woke && open) await stream.write(': keep-alive\n\n');
        }
      } finally {
        unsubscribe();
      }
    });
}
