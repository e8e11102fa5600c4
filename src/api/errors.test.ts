import { Hono } from 'hono';
import { HTTPException } from 'hono/http-exception';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ERROR_CODES, HTTP_STATUSES, VmsnapError } from '../errors.js';
import { API_ONLY_STATUSES, ApiError, errorBody, sendError, statusOf, validationError, type ApiOnlyCode } from './errors.js';

describe('API error bodies', () => {
  it('answer every library code with its HTTP status and the error as the library serializes it', () => {
    for (const code of ERROR_CODES) {
      const e = new VmsnapError(code, `m ${code}`, { hint: 'h', details: { x: 1 } });
      expect(errorBody(e), code).toEqual({ status: HTTP_STATUSES[code], body: { code, message: `m ${code}`, hint: 'h', details: { x: 1 } } });
      expect(statusOf(code)).toBe(HTTP_STATUSES[code]);
    }
  });

  it('answer the API’s own codes with theirs', () => {
    const expected: Record<ApiOnlyCode, number> = { UNAUTHORIZED: 401, FORBIDDEN: 403, LENGTH_REQUIRED: 411, PAYLOAD_TOO_LARGE: 413, UNSUPPORTED_MEDIA_TYPE: 415, NOT_IMPLEMENTED: 501 };
    expect(API_ONLY_STATUSES).toEqual(expected);
    for (const code of Object.keys(expected) as ApiOnlyCode[]) {
      expect(errorBody(new ApiError(code, 'no', 'do this', { a: 1 }))).toEqual({ status: expected[code], body: { code, message: 'no', hint: 'do this', details: { a: 1 } } });
      expect(errorBody(new ApiError(code, 'no')).body).toEqual({ code, message: 'no', details: {} });
      expect(statusOf(code)).toBe(expected[code]);
    }
  });

  it('turn Hono’s refusals into the same shape', () => {
    expect(errorBody(new HTTPException(415, { message: 'wrong type' }))).toMatchObject({ status: 415, body: { code: 'UNSUPPORTED_MEDIA_TYPE', message: 'wrong type' } });
    expect(errorBody(new HTTPException(413))).toMatchObject({ status: 413, body: { code: 'PAYLOAD_TOO_LARGE' } });
    expect(errorBody(new HTTPException(400, { message: 'Malformed JSON in request body' }))).toEqual({
      status: 400,
      body: { code: 'INVALID_ARGUMENT', message: 'body: Malformed JSON in request body', hint: 'send a JSON object (an empty body is not one: send {})', details: { field: 'body' } },
    });
    expect(errorBody(new HTTPException(405, { message: 'nope' }))).toEqual({ status: 405, body: { code: 'INVALID_ARGUMENT', message: 'nope', details: {} } });
    expect(errorBody(new HTTPException(503))).toMatchObject({ status: 503, body: { code: 'INTERNAL' } });
  });

  it('answer anything else as INTERNAL 500, and a full disk as NO_SPACE 507', () => {
    expect(errorBody(new Error('bug'))).toEqual({ status: 500, body: { code: 'INTERNAL', message: 'bug', details: {} } });
    expect(errorBody(Object.assign(new Error('disk'), { code: 'ENOSPC' }))).toMatchObject({ status: 507, body: { code: 'NO_SPACE' } });
  });

  it('send the body as {error}, with WWW-Authenticate on a 401', async () => {
    const app = new Hono();
    app.get('/401', (c) => sendError(c, new ApiError('UNAUTHORIZED', 'who are you')));
    app.get('/404', (c) => sendError(c, new VmsnapError('NOT_FOUND', "no VM named 'x'")));
    const r401 = await app.request('/401');
    expect(r401.status).toBe(401);
    expect(r401.headers.get('www-authenticate')).toBe('Bearer realm="vmsnap"');
    expect(await r401.json()).toEqual({ error: { code: 'UNAUTHORIZED', message: 'who are you', details: {} } });
    const r404 = await app.request('/404');
    expect(r404.status).toBe(404);
    expect(r404.headers.get('www-authenticate')).toBeNull();
    expect(await r404.json()).toEqual({ error: { code: 'NOT_FOUND', message: "no VM named 'x'", details: {} } });
  });
});

describe('validationError (a schema refusal)', () => {
  const schema = z.object({ name: z.string(), disks: z.array(z.object({ sizeBytes: z.number().int() })).optional() }).strict();
  async function refuse(value: unknown, target = 'json'): Promise<{ status: number; error: { code: string; message: string; details: { field: string; in: string; issues: { field: string; message: string }[] } } }> {
    const parsed = schema.safeParse(value);
    if (parsed.success) throw new Error('expected a refusal');
    const app = new Hono();
    app.get('/', (c) => validationError(c, parsed.error, target));
    const r = await app.request('/');
    return { status: r.status, ...((await r.json()) as { error: never }) };
  }

  it('is a 400 INVALID_ARGUMENT naming the field, in the library’s shape (details.field)', async () => {
    const r = await refuse({ name: 3 });
    expect(r.status).toBe(400);
    expect(r.error.code).toBe('INVALID_ARGUMENT');
    expect(r.error.details).toMatchObject({ field: 'name', in: 'body' });
    expect(r.error.message).toMatch(/^name: /);
  });

  it('names a nested field by its path, and an unknown key by its own name', async () => {
    expect((await refuse({ name: 'a', disks: [{ sizeBytes: 1.5 }] })).error.details.field).toBe('disks.0.sizeBytes');
    const r = await refuse({ name: 'a', colour: 'red' });
    expect(r.error.details.field).toBe('colour');
    expect(r.error.message).toMatch(/^colour: /);
  });

  it('says "body" for a body that is not an object at all, and where the field was for path and query', async () => {
    const r = await refuse('text');
    expect(r.error.details.field).toBe('body');
    expect(r.error.message).toMatch(/^body: /);
    expect((await refuse({ name: 1 }, 'param')).error.details.in).toBe('path');
    expect((await refuse({ name: 1 }, 'query')).error.details.in).toBe('query');
  });

  it('lists every issue', async () => {
    const r = await refuse({ name: 1, colour: 'red' });
    expect(r.error.details.issues.map((i) => i.field).sort()).toEqual(['colour', 'name']);
  });
});
