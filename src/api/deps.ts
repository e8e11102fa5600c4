import { OpenAPIHono, z } from '@hono/zod-openapi';
import { VmsnapError } from '../errors.js';
import type { Vmsnap } from '../vmsnap.js';
import type { Downloads } from './downloads.js';
import { validationError } from './errors.js';
import type { EventHub } from './events.js';
import type { OperationTracker } from './operations.js';
import type { HostPathPolicy } from './paths.js';
import { ErrorSchema } from './schemas.js';
import type { VmWatch } from './watch.js';

/** What every route module gets: the one library instance and the server's shared parts. */
export interface ApiDeps {
  lib: Vmsnap;
  tracker: OperationTracker;
  hub: EventHub;
  watch: VmWatch;
  hostPaths: HostPathPolicy;
  /** Archives exported for download. */
  downloads: Downloads;
  version: string;
  tokenRequired: boolean;
}

/** A router whose schema refusals are all 400s naming the field. */
export function newRouter(): OpenAPIHono {
  return new OpenAPIHono({
    defaultHook: (result, c) => {
      if (!result.success) return validationError(c, result.error, result.target);
      return undefined;
    },
  });
}

export const errorContent = (description: string) => ({ description, content: { 'application/json': { schema: ErrorSchema } } });

/** The error answers a route may give, for the OpenAPI document (the one error handler produces them). */
export const errors = {
  400: errorContent('bad input: `error.details.field` names the field'),
  401: errorContent('bearer token missing or wrong (servers bound off loopback)'),
  403: errorContent('cross-origin write refused, or a host path outside the allowed dirs'),
  404: errorContent('no such VM, snapshot or operation'),
  409: errorContent('wrong state (INVALID_STATE), name taken (ALREADY_EXISTS), or the present state would be lost (WOULD_LOSE_DATA, `details.lost`)'),
  411: errorContent('an upload without a Content-Length (LENGTH_REQUIRED)'),
  415: errorContent('an upload of another media type than an archive (UNSUPPORTED_MEDIA_TYPE)'),
  423: errorContent('the VM is busy with another operation (BUSY)'),
  507: errorContent('not enough free space in the data dir (NO_SPACE); nothing was written'),
} as const;

export function jsonBody<T extends z.ZodType>(schema: T, required = false) {
  return { content: { 'application/json': { schema } }, required };
}

export function jsonResponse<T extends z.ZodType>(schema: T, description: string) {
  return { description, content: { 'application/json': { schema } } };
}

/**
 * Refuse a taken VM name at once, before anything is accepted or uploaded
 * (the library refuses it again under its journal, where it cannot race).
 */
export function refuseTakenName(d: ApiDeps, name: string, hint: string): void {
  if (d.lib.ctx.catalog.findVm(name) === undefined) return;
  throw new VmsnapError('ALREADY_EXISTS', `a VM named '${name}' already exists`, { hint, details: { vm: name, field: 'name' } });
}
