import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { serve as serveNode } from '@hono/node-server';
import { OpenAPIHono } from '@hono/zod-openapi';
import { bodyLimit } from 'hono/body-limit';
import { VmsnapError } from '../errors.js';
import { PolicyScheduler } from '../scheduler/loop.js';
import { Vmsnap } from '../vmsnap.js';
import { attachConsoles } from './consoles.js';
import { isLoopback, loadOrCreateToken, refuseCrossOrigin, requireBearer, requireLoopbackHost } from './auth.js';
import type { ApiDeps } from './deps.js';
import { Downloads } from './downloads.js';
import { ApiError, sendError } from './errors.js';
import { EventHub } from './events.js';
import { OperationTracker } from './operations.js';
import { HostPathPolicy } from './paths.js';
import { BrowsedSnapshots, filesRoutes } from './routes/files.js';
import { healthRoutes } from './routes/health.js';
import { operationRoutes } from './routes/operations.js';
import { policyRoutes } from './routes/policies.js';
import { snapshotRoutes } from './routes/snapshots.js';
import { transferRoutes } from './routes/transfer.js';
import { vmRoutes } from './routes/vms.js';
import { WebAssets } from './static.js';
import { VmWatch } from './watch.js';

export interface AppOptions {
  /** When set, every /api request must carry it as a bearer token. */
  token?: string;
  /** Host header names accepted besides loopback ones when no token is required. */
  allowedHosts?: string[];
  /** Dirs whose files requests may name (kernel, initrd, disk images to import). */
  allowPaths?: string[];
  /** The built web UI; default web/dist of this checkout. */
  webDist?: string;
  /** How often the server looks at VMs for changes made outside it, while clients listen. */
  watchIntervalMs?: number;
  /** Where to say what the server does (operations started and ended). */
  log?: (line: string) => void;
  /** Run the VMs' snapshot policies: how often to look for due slots and expired snapshots (default 30 s); false: not at all. */
  policies?: { intervalMs?: number } | false;
}

export interface ApiApp {
  app: OpenAPIHono;
  tracker: OperationTracker;
  hub: EventHub;
  /** Stop watching and end event streams; waits for running operations to finish. */
  close(): Promise<void>;
}

export function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

/** Routes whose body is an uploaded archive. */
const UPLOAD_PATHS = new Set(['/api/imports', '/api/archives/check']);

const CSP = [
  "default-src 'self'",
  "img-src 'self' data:",
  "style-src 'self' 'unsafe-inline'",
  "connect-src 'self'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
  "form-action 'self'",
].join('; ');

/**
 * The HTTP API and web UI over one open library. Thin: routes validate the
 * request, call the library, and map its errors; long calls become operations.
 */
export function createApp(lib: Vmsnap, opts: AppOptions = {}): ApiApp {
  const version = packageVersion();
  const hub = new EventHub();
  let watch: VmWatch | undefined;
  const tracker = new OperationTracker(hub, (op) => {
    if (op.status === 'running') {
      opts.log?.(`${op.id} ${op.title}: started`);
      return;
    }
    const how = op.status === 'succeeded' ? `done in ${op.durationMs} ms` : `failed after ${op.durationMs} ms: ${op.error?.code} ${op.error?.message}`;
    opts.log?.(`${op.id} ${op.title}: ${how}`);
    if (op.vmId !== null) void watch?.refresh(op.vmId, { snapshots: op.kind.startsWith('snapshot-') || op.kind === 'import' || op.kind === 'policy-run' || op.kind === 'prune' });
  });
  watch = new VmWatch(lib, hub, () => tracker.runningCount === 0, opts.watchIntervalMs);
  const unsubscribe = lib.onEvent((e) => {
    if (e.type === 'vm-state') hub.publish({ type: 'vm-state', data: { vm: e.vm, vmId: e.vmId, state: e.state } });
    else if (e.type === 'policy') hub.publish({ type: 'policy', data: { vm: e.vm, vmId: e.vmId, status: e.status, record: e.record } });
    else if (e.type === 'snapshots-changed') void watch?.refresh(e.vmId, { snapshots: true });
    else tracker.onLibraryEvent(e);
  });
  watch.start();
  // The policies run in the server as its own jobs: the UI shows them, and other work on that VM is refused meanwhile.
  const scheduler =
    opts.policies === false
      ? undefined
      : new PolicyScheduler(lib.ctx, {
          ...(opts.policies?.intervalMs !== undefined ? { intervalMs: opts.policies.intervalMs } : {}),
          log: (line) => opts.log?.(line),
          run: (vm, title, pass) =>
            new Promise((resolve, reject) => {
              try {
                tracker.start({ kind: 'policy-run', scope: { vm }, title }, () =>
                  pass().then(
                    (r) => (resolve(r), r),
                    (e: unknown) => {
                      reject(e);
                      throw e;
                    },
                  ),
                );
              } catch (e) {
                reject(e);
              }
            }),
        });
  scheduler?.start();

  const downloads = new Downloads(lib.home);
  const deps: ApiDeps = {
    lib,
    tracker,
    hub,
    watch,
    hostPaths: new HostPathPolicy(opts.allowPaths ?? []),
    downloads,
    version,
    tokenRequired: opts.token !== undefined,
  };

  const app = new OpenAPIHono();
  app.use('*', async (c, next) => {
    await next();
    c.header('X-Content-Type-Options', 'nosniff');
    c.header('X-Frame-Options', 'DENY');
    c.header('Referrer-Policy', 'no-referrer');
    c.header('Content-Security-Policy', CSP);
    if (c.req.path.startsWith('/api/')) c.header('Cache-Control', 'no-store');
  });
  // Without a token the server trusts "on this machine"; only loopback Host names prove it.
  if (opts.token === undefined) app.use('*', requireLoopbackHost(opts.allowedHosts));
  if (opts.token !== undefined) {
    const bearer = requireBearer(opts.token);
    // A download's URL is its own secret (made by an authorized export), so a browser can fetch it as a plain link.
    app.use('/api/*', (c, next) => (c.req.method === 'GET' && c.req.path.startsWith('/api/downloads/') ? next() : bearer(c, next)));
  }
  app.use('/api/*', refuseCrossOrigin());
  const jsonLimit = bodyLimit({ maxSize: 1024 * 1024, onError: (c) => sendError(c, new ApiError('PAYLOAD_TOO_LARGE', 'request body over 1 MiB')) });
  // Uploaded archives are streamed to disk and limited by the free space instead (src/api/upload.ts).
  app.use('/api/*', (c, next) => (UPLOAD_PATHS.has(c.req.path) ? next() : jsonLimit(c, next)));

  app.route('/api', vmRoutes(deps));
  app.route('/api', snapshotRoutes(deps));
  app.route('/api', transferRoutes(deps));
  app.route('/api', healthRoutes(deps));
  app.route('/api', operationRoutes(deps));
  app.route('/api', policyRoutes(deps));
  const browsed = new BrowsedSnapshots(lib);
  app.route('/api', filesRoutes(deps, browsed));

  app.openAPIRegistry.registerComponent('securitySchemes', 'bearer', {
    type: 'http',
    scheme: 'bearer',
    description: `required when the server is bound to a non-loopback address; the token is in $VMSNAP_HOME/api-token`,
  });
  app.doc31('/openapi.json', {
    openapi: '3.1.0',
    info: {
      title: 'vmsnap API',
      version,
      description:
        'Live snapshots for QEMU VMs: everything the vmsnap CLI does. Long operations answer 202 with an Operation; follow it at /api/operations/{id} or on the /api/events stream; `x-vmsnap-kinds` on a route names the operation kinds it starts. Errors are `{ error: { code, message, hint?, details } }` with stable codes.',
    },
    servers: [{ url: '/' }],
    security: opts.token === undefined ? [] : [{ bearer: [] }],
  });

  app.all('/api/*', (c) => sendError(c, new VmsnapError('NOT_FOUND', `no route ${c.req.method} ${c.req.path}`, { hint: 'see /openapi.json' })));
  const assets = new WebAssets(opts.webDist);
  app.get('*', (c) => assets.handle(c));
  app.onError((e, c) => sendError(c, e));

  return {
    app,
    tracker,
    hub,
    async close() {
      await scheduler?.stop();
      watch?.stop();
      unsubscribe();
      hub.closeAll();
      await tracker.settle();
      await browsed.closeAll();
      downloads.close();
    },
  };
}

export interface ServeOptions extends Omit<AppOptions, 'token'> {
  /** Data dir; default $VMSNAP_HOME or the XDG data dir. Ignored when lib is given. */
  home?: string;
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  /** Require the token even on loopback (default: required exactly when bound off loopback). */
  requireToken?: boolean;
  /** Use this library instance (tests); otherwise the server opens and closes its own. */
  lib?: Vmsnap;
  log?: (line: string) => void;
}

export interface RunningServer {
  url: string;
  host: string;
  port: number;
  /** The bearer token when one is required. */
  token: string | undefined;
  lib: Vmsnap;
  api: ApiApp;
  /** Stop listening, end event streams, let running operations finish, close the library if the server opened it. */
  close(): Promise<void>;
}

/** Start `vmsnap serve`: one library instance, one HTTP server. */
export async function serve(opts: ServeOptions = {}): Promise<RunningServer> {
  const host = opts.host ?? '127.0.0.1';
  const port = opts.port ?? 8080;
  const log = opts.log ?? (() => {});
  const ownLib = opts.lib === undefined;
  const lib = opts.lib ?? Vmsnap.open(opts.home !== undefined ? { home: opts.home } : {});
  try {
    const tokenRequired = opts.requireToken ?? !isLoopback(host);
    let token: string | undefined;
    if (tokenRequired) {
      const t = loadOrCreateToken(lib.home);
      token = t.token;
      if (t.created) {
        log(`created the API token (shown only this once; it is kept in ${t.file}, mode 0600):`);
        log(`  ${t.token}`);
      } else {
        log(`API token required: it is in ${t.file}`);
      }
    }
    const api = createApp(lib, { ...opts, ...(token !== undefined ? { token } : {}) });
    const server = await new Promise<Server>((resolve, reject) => {
      // No limit on a whole request's time (Node's default is 5 min): an upload of a large archive takes longer. Headers still must come within 60 s.
      const s = serveNode({ fetch: api.app.fetch, hostname: host, port, serverOptions: { requestTimeout: 0 } }) as Server;
      s.once('listening', () => resolve(s));
      s.once('error', (e: NodeJS.ErrnoException) => {
        void api.close();
        if (e.code === 'EADDRINUSE') {
          reject(new VmsnapError('INVALID_ARGUMENT', `port ${port} on ${host} is in use`, { hint: 'choose another with --port', details: { field: 'port', value: port } }));
        } else if (e.code === 'EADDRNOTAVAIL' || e.code === 'ENOTFOUND') {
          reject(new VmsnapError('INVALID_ARGUMENT', `cannot listen on ${host}: ${e.message}`, { details: { field: 'host', value: host } }));
        } else reject(e);
      });
    });
    const closeConsoles = attachConsoles(server, lib, { ...(token !== undefined ? { token } : {}), ...(opts.allowedHosts ? { allowedHosts: opts.allowedHosts } : {}) });
    const addr = server.address() as AddressInfo;
    const shown = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
    const url = `http://${shown}:${addr.port}`;
    let closing: Promise<void> | undefined;
    return {
      url,
      host,
      port: addr.port,
      token,
      lib,
      api,
      close() {
        closing ??= (async () => {
          const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
          closeConsoles();
          await api.close();
          server.closeIdleConnections();
          // Event streams were ended above; anything still open after a grace period is cut.
          const grace = setTimeout(() => server.closeAllConnections(), 2000);
          await stopped;
          clearTimeout(grace);
          if (ownLib) {
            await lib.settle();
            lib.close();
          }
        })();
        return closing;
      },
    };
  } catch (e) {
    if (ownLib) lib.close();
    throw e;
  }
}
