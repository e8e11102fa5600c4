import { expect } from 'vitest';
import type { Operation } from '../src/api/operations.js';

export interface Answer {
  status: number;
  // Answers are checked by the assertions that read them, not by types: any stays in this helper.
  json: any; // eslint-disable-line @typescript-eslint/no-explicit-any
  headers: Headers;
}

/** A client of the HTTP API as a script would write one: JSON in and out, 202s followed by polling. */
export function apiClient(base: () => string) {
  const call = async (method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Answer> => {
    const res = await fetch(`${base()}${path}`, {
      method,
      headers: { ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}), ...headers },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    const text = await res.text();
    return { status: res.status, json: text ? JSON.parse(text) : undefined, headers: res.headers };
  };

  /** A request that must be refused with this status and code (and name the field, when given); returns the error body. */
  const refused = async (method: string, path: string, body: unknown, status: number, code: string, field?: string) => {
    const r = await call(method, path, body);
    return expectError(r, status, code, field);
  };

  /** Follow a 202 to the end by polling, as a script would. */
  const finish = async (r: Answer, timeoutMs = 120_000): Promise<Operation> => {
    expect(r.status, JSON.stringify(r.json)).toBe(202);
    const op0 = r.json.operation as Operation;
    expect(r.headers.get('location')).toBe(`/api/operations/${op0.id}`);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const op = (await call('GET', `/api/operations/${op0.id}`)).json as Operation;
      if (op.status !== 'running') return op;
      if (Date.now() > deadline) throw new Error(`operation ${op.id} still running`);
      await new Promise((res) => setTimeout(res, 100));
    }
  };

  /** A 202 that must succeed: its result. */
  const succeed = async (r: Answer, timeoutMs?: number) => {
    const op = await finish(r, timeoutMs);
    expect(op.status, JSON.stringify(op.error)).toBe('succeeded');
    return op;
  };

  return { call, refused, finish, succeed };
}

/** An error answer with this status and code (naming the field, when given); returns the error body. */
export function expectError(r: Answer, status: number, code: string, field?: string) {
  expect(r.status, JSON.stringify(r.json)).toBe(status);
  expect(r.json.error.code).toBe(code);
  if (field !== undefined) {
    expect(r.json.error.details.field).toBe(field);
    expect(r.json.error.message).toContain(field);
  }
  return r.json.error;
}
