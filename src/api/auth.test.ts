import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Hono, type MiddlewareHandler } from 'hono';
import { afterAll, describe, expect, it } from 'vitest';
import { TOKEN_FILE, isLoopback, loadOrCreateToken, refuseCrossOrigin, requireBearer, requireLoopbackHost } from './auth.js';

/** A tiny app behind one middleware: 200 "ok" when it lets the request through. */
function behind(mw: MiddlewareHandler) {
  const app = new Hono();
  app.use('*', mw);
  app.all('*', (c) => c.text('ok'));
  return async (method: string, headers: Record<string, string> = {}) => {
    const r = await app.request('/api/vms', { method, headers });
    return { status: r.status, body: r.status === 200 ? await r.text() : ((await r.json()) as { error: { code: string; message: string } }).error, headers: r.headers };
  };
}

describe('isLoopback', () => {
  it('accepts loopback names and addresses only', () => {
    for (const h of ['localhost', 'LOCALHOST', 'app.localhost', '127.0.0.1', '127.1.2.3', '::1', '[::1]', '::ffff:127.0.0.1']) expect(isLoopback(h), h).toBe(true);
    for (const h of ['example.com', 'localhost.example.com', '10.0.0.1', '0.0.0.0', '128.0.0.1', '::', '::ffff:10.0.0.1', '127.0.0.1.nip.io', '']) expect(isLoopback(h), h).toBe(false);
  });
});

describe('requireLoopbackHost (no DNS rebinding without a token)', () => {
  const call = behind(requireLoopbackHost(['vmsnap.internal']));
  it('lets loopback Host headers through, with or without a port', async () => {
    for (const host of ['localhost', 'localhost:8080', '127.0.0.1:8080', '[::1]:8080', '[::1]', 'vmsnap.internal', 'VMSNAP.internal:443']) {
      expect((await call('GET', { Host: host })).status, host).toBe(200);
    }
  });

  it('refuses any other name with 403 FORBIDDEN naming it', async () => {
    for (const host of ['evil.example:8080', '10.0.0.5:8080', 'localhost.evil.example', '127.0.0.1.nip.io:8080']) {
      const r = await call('GET', { Host: host });
      expect(r.status, host).toBe(403);
      expect(r.body).toMatchObject({ code: 'FORBIDDEN', message: `unexpected Host header '${host.toLowerCase()}'` });
    }
  });
});

describe('requireBearer', () => {
  const token = 'a'.repeat(43);
  const call = behind(requireBearer(token));
  it('lets the right token through (the scheme in any case)', async () => {
    expect((await call('GET', { Authorization: `Bearer ${token}` })).status).toBe(200);
    expect((await call('POST', { Authorization: `bearer  ${token} ` })).status).toBe(200);
  });

  it('refuses a missing or wrong token with 401 and WWW-Authenticate', async () => {
    for (const auth of [undefined, '', `Basic ${token}`, 'Bearer', `Bearer ${token}x`, `Bearer ${token.slice(1)}`, `Bearer ${token} extra`]) {
      const r = await call('GET', auth === undefined ? {} : { Authorization: auth });
      expect(r.status, String(auth)).toBe(401);
      expect(r.body).toMatchObject({ code: 'UNAUTHORIZED' });
      expect(r.headers.get('www-authenticate')).toBe('Bearer realm="vmsnap"');
    }
  });
});

describe('refuseCrossOrigin (no CSRF)', () => {
  const call = behind(refuseCrossOrigin());
  it('lets reads through whatever their origin', async () => {
    for (const m of ['GET', 'HEAD', 'OPTIONS']) expect((await call(m, { 'Sec-Fetch-Site': 'cross-site', Origin: 'https://evil.example', Host: 'localhost:8080' })).status, m).toBe(200);
  });

  it('lets through writes from non-browser clients and from the server’s own pages', async () => {
    expect((await call('POST')).status).toBe(200);
    expect((await call('POST', { 'Sec-Fetch-Site': 'same-origin', Origin: 'http://localhost:8080', Host: 'localhost:8080' })).status).toBe(200);
    expect((await call('DELETE', { 'Sec-Fetch-Site': 'none' })).status).toBe(200);
    expect((await call('PATCH', { Origin: 'http://LOCALHOST:8080', Host: 'localhost:8080' })).status).toBe(200);
  });

  it('refuses writes from other sites, by Sec-Fetch-Site or by Origin', async () => {
    for (const site of ['cross-site', 'same-site']) {
      const r = await call('POST', { 'Sec-Fetch-Site': site });
      expect(r.status, site).toBe(403);
      expect(r.body).toMatchObject({ code: 'FORBIDDEN', message: `cross-origin request refused (Sec-Fetch-Site: ${site})` });
    }
    for (const origin of ['https://evil.example', 'http://localhost:9999', 'null', 'not a url']) {
      const r = await call('POST', { Origin: origin, Host: 'localhost:8080' });
      expect(r.status, origin).toBe(403);
      expect(r.body).toMatchObject({ code: 'FORBIDDEN' });
    }
    // An Origin with no Host to compare it with is refused too.
    expect((await call('PUT', { Origin: 'http://localhost:8080' })).status).toBe(403);
  });
});

describe('loadOrCreateToken', () => {
  const home = mkdtempSync(join(tmpdir(), 'vmsnap-token-'));
  afterAll(() => rmSync(home, { recursive: true, force: true }));
  const file = join(home, TOKEN_FILE);

  it('makes a random token once, mode 0600, and reads it back after', () => {
    const first = loadOrCreateToken(home);
    expect(first).toMatchObject({ created: true, file });
    expect(first.token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(readFileSync(file, 'utf8')).toBe(`${first.token}\n`);
    expect(loadOrCreateToken(home)).toEqual({ token: first.token, created: false, file });
  });

  it('tightens a loosened file, and replaces a token too short to be one', () => {
    const { token } = loadOrCreateToken(home);
    chmodSync(file, 0o644);
    expect(loadOrCreateToken(home).token).toBe(token);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    writeFileSync(file, 'short\n');
    const fresh = loadOrCreateToken(home);
    expect(fresh.created).toBe(true);
    expect(fresh.token).not.toBe(token);
    expect(fresh.token.length).toBeGreaterThanOrEqual(32);
  });
});
