import type { ApiEvent } from '../../src/contract/index.js';
import { authHeaders } from './api.js';

export type StreamEvent = ApiEvent | { type: 'resync'; data: Record<string, never> };
export type StreamStatus = 'connecting' | 'live' | 'offline' | 'unauthorized';

/** One message of a text/event-stream: its event type, data lines joined, and id, if any. */
export interface SseMessage {
  type: string;
  data?: string;
  id?: string;
}

/** The whole messages at the front of a stream's text, and what is left after them (the start of the next). */
export function takeSseMessages(text: string): { messages: SseMessage[]; rest: string } {
  const messages: SseMessage[] = [];
  let rest = text;
  let i: number;
  while ((i = rest.indexOf('\n\n')) >= 0) {
    const block = rest.slice(0, i);
    rest = rest.slice(i + 2);
    let type = 'message';
    const data: string[] = [];
    let id: string | undefined;
    for (const line of block.split('\n')) {
      if (line.startsWith('event:')) type = line.slice(6).trim();
      else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
      else if (line.startsWith('id:')) id = line.slice(3).trim();
    }
    messages.push({ type, ...(data.length ? { data: data.join('\n') } : {}), ...(id !== undefined ? { id } : {}) });
  }
  return { messages, rest };
}

/**
 * The server's event stream, read with fetch rather than EventSource so the
 * bearer token can go in a header. Reconnects with backoff and sends
 * Last-Event-ID, so nothing is missed across a blip; after a long gap the
 * server says "resync" and the app reloads everything.
 */
export function connectEvents(onEvent: (e: StreamEvent) => void, onStatus: (s: StreamStatus) => void): () => void {
  let stopped = false;
  let lastId: string | undefined;
  let ctrl: AbortController | undefined;
  let delay = 500;

  const run = async (): Promise<void> => {
    while (!stopped) {
      onStatus('connecting');
      ctrl = new AbortController();
      try {
        const res = await fetch('/api/events', {
          headers: { Accept: 'text/event-stream', ...authHeaders(), ...(lastId ? { 'Last-Event-ID': lastId } : {}) },
          signal: ctrl.signal,
        });
        if (res.status === 401) {
          onStatus('unauthorized');
          return;
        }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        const reconnected = lastId !== undefined;
        onStatus('live');
        delay = 500;
        if (reconnected) onEvent({ type: 'resync', data: {} });
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          const taken = takeSseMessages(buf + value);
          buf = taken.rest;
          for (const m of taken.messages) {
            if (m.id !== undefined) lastId = m.id;
            if (m.data === undefined || m.type === 'hello') continue;
            try {
              onEvent({ type: m.type, data: JSON.parse(m.data) } as StreamEvent);
            } catch {
              /* a malformed message is skipped, not fatal */
            }
          }
        }
      } catch {
        if (stopped) return;
      }
      onStatus('offline');
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10_000);
    }
  };
  void run();
  return () => {
    stopped = true;
    ctrl?.abort();
  };
}
