import { createRoute, z } from '@hono/zod-openapi';
import { VmsnapError } from '../../errors.js';
import { errors, jsonResponse, newRouter, type ApiDeps } from '../deps.js';
import { sseHandler } from '../events.js';
import { OPERATION_KINDS } from '../../contract/operations.js';
import { HealthSchema, OperationParams, OperationSchema, OperationsQuery } from '../schemas.js';

/** Operations (the 202 jobs), the event stream, and the server's own description. */
export function operationRoutes(d: ApiDeps) {
  const app = newRouter();

  app.openapi(
    createRoute({
      method: 'get',
      path: '/operations',
      operationId: 'listOperations',
      tags: ['Operations'],
      summary: 'Recent operations, newest first',
      request: { query: OperationsQuery },
      responses: { 200: jsonResponse(z.array(OperationSchema), 'operations this server ran or runs'), 400: errors[400] },
    }),
    (c) => {
      const q = c.req.valid('query');
      return c.json(d.tracker.list({ ...(q.vm ? { vm: q.vm } : {}), ...(q.status ? { status: q.status } : {}) }), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/operations/{id}',
      operationId: 'getOperation',
      tags: ['Operations'],
      summary: "An operation's status, progress, result or error",
      request: { params: OperationParams },
      responses: { 200: jsonResponse(OperationSchema, 'the operation'), 400: errors[400], 404: errors[404] },
    }),
    (c) => {
      const { id } = c.req.valid('param');
      const op = d.tracker.get(id);
      if (!op) throw new VmsnapError('NOT_FOUND', `no operation '${id}'`, { hint: 'operations are kept in memory while the server runs', details: { operation: id } });
      return c.json(op, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/health',
      operationId: 'getServerHealth',
      tags: ['Server'],
      summary: 'Server version, whether a token is required, and the operations this build journals',
      responses: { 200: jsonResponse(HealthSchema, 'the server') },
    }),
    (c) => c.json({ ok: true as const, version: d.version, tokenRequired: d.tokenRequired, operations: [...OPERATION_KINDS] }, 200),
  );

  // Registered in the document by hand: a stream has no JSON schema to validate.
  app.openAPIRegistry.registerPath({
    method: 'get',
    path: '/events',
    operationId: 'events',
    tags: ['Operations'],
    summary: 'Server-sent events: operation lifecycle and progress, VM state and summary changes',
    description:
      "A text/event-stream. Event types: hello, vm-state, vm, vm-removed, snapshots (the VM's tree changed), operation (an Operation changed), progress (operationId, what, done, total), journal (the library's own operation records), resync (reload everything: too much was missed). Each message has an id; reconnecting with Last-Event-ID replays what was missed.",
    responses: { 200: { description: 'the stream', content: { 'text/event-stream': { schema: { type: 'string' } } } } },
  });
  app.get('/events', sseHandler(d.hub, d.version));

  return app;
}
