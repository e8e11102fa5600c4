import { describe, expect, it, vi } from 'vitest';

// events.ts imports api.ts, which reads the page's URL and session storage when loaded.
vi.stubGlobal('window', { location: { hash: '', pathname: '/', search: '' } });
vi.stubGlobal('sessionStorage', { getItem: () => null, setItem: () => undefined, removeItem: () => undefined });
const { takeSseMessages } = await import('./events.js');

describe('takeSseMessages', () => {
  it('splits whole messages off and keeps the start of the next one', () => {
    const { messages, rest } = takeSseMessages('event: hello\ndata: {"version":"0.1.0"}\n\nid: 7\nevent: vm-state\ndata: {"vm":"a"}\n\nid: 8\nevent: vm');
    expect(messages).toEqual([
      { type: 'hello', data: '{"version":"0.1.0"}' },
      { type: 'vm-state', data: '{"vm":"a"}', id: '7' },
    ]);
    expect(rest).toBe('id: 8\nevent: vm');
    const next = takeSseMessages(`${rest}-removed\ndata: {"vm":"a","vmId":"x"}\n\n`);
    expect(next).toEqual({ messages: [{ type: 'vm-removed', data: '{"vm":"a","vmId":"x"}', id: '8' }], rest: '' });
  });

  it('reads a message fed one character at a time', () => {
    const text = 'id: 3\nevent: progress\ndata: {"done":1,\ndata: "total":2}\n\n';
    let buf = '';
    const got: { type: string; data?: string; id?: string }[] = [];
    for (const ch of text) {
      const t = takeSseMessages(buf + ch);
      buf = t.rest;
      got.push(...t.messages);
    }
    expect(got).toEqual([{ type: 'progress', data: '{"done":1,\n"total":2}', id: '3' }]);
    expect(buf).toBe('');
  });

  it('gives comments (keep-alives) and data-less messages no data; the default type is message', () => {
    expect(takeSseMessages(': keep-alive\n\nevent: resync\ndata: {}\n\ndata:x\n\n').messages).toEqual([
      { type: 'message' },
      { type: 'resync', data: '{}' },
      { type: 'message', data: 'x' },
    ]);
  });
});
