import type { Context, TypedResponse } from 'hono';
import type { JSONParsed } from 'hono/utils/types';
import type { Task } from '../../contract/operations.js';

/** What `accepted` answers: typed by the task's kind, so each route's 202 schema is checked against the task's result type. */
export type Accepted<T extends Task> = Response & TypedResponse<JSONParsed<{ operation: T }>, 202, 'json'>;

/** 202 with the operation, and where to follow it. */
export function accepted<T extends Task>(c: Context, op: T): Accepted<T> {
  // Spelled out because the inferred type is too large to emit; c.json's generic constraint hides that it is this very type.
  return c.json({ operation: op }, 202, { Location: `/api/operations/${op.id}` }) as unknown as Accepted<T>;
}
