import { randomBytes, timingSafeEqual, createHash } from 'node:crypto';
import { chmodSync, existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import type { MiddlewareHandler } from 'hono';
import { ApiError, sendError } from './errors.js';

export const TOKEN_FILE = 'api-token';

/** 127.0.0.0/8, ::1 and localhost: only processes on this machine can connect. */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost' || h.endsWith('.localhost')) return true;
  if (h === '::1') return true;
  const v4 = h.startsWith('::ffff:') ? h.slice(7) : h;
  return isIP(v4) === 4 && v4.startsWith('127.');
}

/**
 * The bearer token for a server reachable from other machines: made once with
 * crypto.randomBytes, kept mode 0600 in $VMSNAP_HOME. `created` tells the
 * caller to print it (the only time it is shown).
 */
export function loadOrCreateToken(home: string): { token: string; created: boolean; file: string } {
  const file = join(home, TOKEN_FILE);
  if (existsSync(file)) {
    // Tighten a file someone loosened: the token is as good as a password.
    if ((statSync(file).mode & 0o077) !== 0) chmodSync(file, 0o600);
    const token = readFileSync(file, 'utf8').trim();
    if (token.length >= 32) return { token, created: false, file };
  }
  const token = randomBytes(32).toString('base64url');
  writeFileSync(file, `${token}\n`, { mode: 0o600 });
  chmodSync(file, 0o600);
  return { token, created: true, file };
}

const digest = (s: string) => createHash('sha256').update(s).digest();

/** Bearer auth on /api: constant-time comparison (of digests, so lengths never leak either). */
export function requireBearer(token: string): MiddlewareHandler {
  const want = digest(token);
  return async (c, next) => {
    const header = c.req.header('Authorization') ?? '';
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!m) {
      return sendError(c, new ApiError('UNAUTHORIZED', 'this server requires a bearer token', `send 'Authorization: Bearer <token>'; the token is in $VMSNAP_HOME/${TOKEN_FILE}`));
    }
    if (!timingSafeEqual(digest(m[1]!), want)) {
      return sendError(c, new ApiError('UNAUTHORIZED', 'wrong bearer token', `the token is in $VMSNAP_HOME/${TOKEN_FILE} on the server`));
    }
    await next();
  };
}

const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

/**
 * Refuse writes a browser makes on behalf of another site (CSRF): the
 * browser's Sec-Fetch-Site says so, and Origin must be this server's own.
 * Requests without either header (curl, scripts) are not from a browser page.
 */
export function refuseCrossOrigin(): MiddlewareHandler {
  return async (c, next) => {
    if (SAFE_METHODS.has(c.req.method)) return next();
    const site = c.req.header('Sec-Fetch-Site');
    if (site !== undefined && site !== 'same-origin' && site !== 'none') {
      return sendError(c, new ApiError('FORBIDDEN', `cross-origin request refused (Sec-Fetch-Site: ${site})`, 'the API accepts writes only from its own web UI or from non-browser clients'));
    }
    const origin = c.req.header('Origin');
    if (origin !== undefined) {
      let originHost: string | undefined;
      try {
        originHost = new URL(origin).host;
      } catch {
        originHost = undefined;
      }
      const host = c.req.header('Host');
      if (originHost === undefined || host === undefined || originHost.toLowerCase() !== host.toLowerCase()) {
        return sendError(c, new ApiError('FORBIDDEN', `cross-origin request refused (Origin: ${origin})`, 'the API accepts writes only from its own web UI or from non-browser clients'));
      }
    }
    await next();
  };
}

/**
 * Without a token, only loopback names are accepted in the Host header. This
 * stops DNS rebinding: a web page whose name is made to resolve to 127.0.0.1
 * would otherwise be "same origin" with this server in the browser's eyes.
 */
export function requireLoopbackHost(extraHosts: string[] = []): MiddlewareHandler {
  const extra = new Set(extraHosts.map((h) => h.toLowerCase()));
  return async (c, next) => {
    const host = (c.req.header('Host') ?? '').toLowerCase();
    const name = host.startsWith('[') ? host.slice(0, host.indexOf(']') + 1) : host.replace(/:\d+$/, '');
    if (!isLoopback(name) && !extra.has(name) && !extra.has(host)) {
      return sendError(c, new ApiError('FORBIDDEN', `unexpected Host header '${host}'`, 'this server answers only to localhost names; bind it to another address (with a token) to reach it otherwise', { host }));
    }
    await next();
  };
}
