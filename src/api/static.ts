import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { extname, join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Context } from 'hono';

/** web/dist of this checkout or package: src/api and dist/api are both two levels below the root. */
export const DEFAULT_WEB_DIST = fileURLToPath(new URL('../../web/dist', import.meta.url));

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.json': 'application/json',
  '.woff2': 'font/woff2',
  '.txt': 'text/plain; charset=utf-8',
};

interface Asset {
  body: Buffer;
  type: string;
  immutable: boolean;
}

/**
 * The built web UI. The files are listed once, so a request path is only ever
 * a key into that list and never reaches the filesystem.
 */
export class WebAssets {
  private assets = new Map<string, Asset>();

  constructor(private readonly dir: string = DEFAULT_WEB_DIST) {
    this.load();
  }

  get built(): boolean {
    return this.assets.has('/index.html');
  }

  private load(): void {
    const assets = new Map<string, Asset>();
    const walk = (d: string): void => {
      for (const name of readdirSync(d)) {
        const p = join(d, name);
        if (statSync(p).isDirectory()) walk(p);
        else {
          const url = `/${relative(this.dir, p).split(sep).join('/')}`;
          // Vite puts content-hashed names under /assets: those never change.
          assets.set(url, { body: readFileSync(p), type: TYPES[extname(p)] ?? 'application/octet-stream', immutable: url.startsWith('/assets/') });
        }
      }
    };
    if (existsSync(this.dir)) walk(this.dir);
    this.assets = assets;
  }

  handle(c: Context): Response {
    if (!this.built) this.load();
    const path = c.req.path === '/' ? '/index.html' : c.req.path;
    // Unknown paths get the app (client-side routes); unknown /assets stay 404s.
    const asset = this.assets.get(path) ?? (path.startsWith('/assets/') ? undefined : this.assets.get('/index.html'));
    if (!asset) {
      if (!this.built) {
        return c.html(
          '<!doctype html><meta charset="utf-8"><title>vmsnap</title><body style="font-family:sans-serif;padding:2em"><h1>vmsnap</h1><p>The web UI is not built. Run <code>npm run build:web</code> and reload. The API is at <a href="/openapi.json">/openapi.json</a>.</p>',
          503,
        );
      }
      return c.text('not found', 404);
    }
    return c.body(new Uint8Array(asset.body), 200, {
      'Content-Type': asset.type,
      'Cache-Control': asset.immutable ? 'public, max-age=31536000, immutable' : 'no-cache',
    });
  }
}
