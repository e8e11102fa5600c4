import type { Context } from 'hono';
import type { Task } from '../../contract/operations.js';

/** 202 with the operation, and where to follow it. */
export function accepted(c: Context, op: Task) {
  return c.json({ operation: op }, 202, { Location: `/api/operations/${op.id}` });
}
