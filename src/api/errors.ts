import type { Context } from 'hono';
import { HTTPException } from 'hono/http-exception';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import type { ZodError } from 'zod';
import { API_ONLY_STATUSES, type ApiErrorBody, type ApiErrorCode, type ApiOnlyErrorCode } from '../contract/operations.js';
import { HTTP_STATUSES, toVmsnapError, type ErrorCode } from '../errors.js';

export { API_ONLY_STATUSES, type ApiErrorBody, type ApiErrorCode } from '../contract/operations.js';
export type ApiOnlyCode = ApiOnlyErrorCode;

/** An error of the HTTP layer itself; library errors stay VmsnapErrors. */
export class ApiError extends Error {
  override readonly name = 'ApiError';
  constructor(
    readonly code: ApiOnlyCode,
    message: string,
    readonly hint?: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
  }

  get status(): number {
    return API_ONLY_STATUSES[this.code];
  }
}

export function statusOf(code: ApiErrorCode): number {
  return code in API_ONLY_STATUSES ? API_ONLY_STATUSES[code as ApiOnlyCode] : HTTP_STATUSES[code as ErrorCode];
}

/** Everything thrown, as the one error body the API ever answers with. */
export function errorBody(e: unknown): { status: number; body: ApiErrorBody } {
  if (e instanceof ApiError) {
    return { status: e.status, body: { code: e.code, message: e.message, ...(e.hint ? { hint: e.hint } : {}), details: e.details } };
  }
  if (e instanceof HTTPException) {
    // Hono's own refusals: a body without a JSON content type, a malformed JSON body.
    if (e.status === 415) return errorBody(new ApiError('UNSUPPORTED_MEDIA_TYPE', e.message || 'unsupported media type', 'send the body as JSON with Content-Type: application/json'));
    if (e.status === 413) return errorBody(new ApiError('PAYLOAD_TOO_LARGE', 'request body too large'));
    if (e.status === 400) {
      return { status: 400, body: { code: 'INVALID_ARGUMENT', message: `body: ${e.message || 'malformed request'}`, hint: 'send a JSON object (an empty body is not one: send {})', details: { field: 'body' } } };
    }
    const status = e.status >= 400 ? e.status : 500;
    return { status, body: { code: status >= 500 ? 'INTERNAL' : 'INVALID_ARGUMENT', message: e.message || 'request refused', details: {} } };
  }
  const err = toVmsnapError(e);
  return { status: err.httpStatus, body: err.toJSON() };
}

export function sendError(c: Context, e: unknown): Response {
  const { status, body } = errorBody(e);
  const headers: Record<string, string> = {};
  if (body.code === 'UNAUTHORIZED') headers['WWW-Authenticate'] = 'Bearer realm="vmsnap"';
  return c.json({ error: body }, status as ContentfulStatusCode, headers);
}

const LOCATIONS: Record<string, string> = { json: 'body', param: 'path', query: 'query', header: 'header' };

/**
 * A schema refusal as a 400 that names the field, in the same shape as the
 * library's own INVALID_ARGUMENT errors (details.field), so clients handle both alike.
 */
export function validationError(c: Context, error: ZodError, target: string): Response {
  const where = LOCATIONS[target] ?? target;
  const issues = error.issues.map((i) => {
    // An unknown key is reported on its object; name the key itself, which is what the caller must fix.
    const path = i.code === 'unrecognized_keys' ? [...i.path, i.keys[0] ?? ''] : i.path;
    return { field: path.map(String).join('.') || where, message: i.message };
  });
  const first = issues[0] ?? { field: where, message: 'invalid' };
  // "body" on its own is the whole body: a wrong type, or missing when required.
  const message = first.field === where ? `${where}: ${first.message}` : `${first.field}: ${first.message}`;
  return c.json({ error: { code: 'INVALID_ARGUMENT', message, details: { field: first.field, in: where, issues } } satisfies ApiErrorBody }, 400);
}
