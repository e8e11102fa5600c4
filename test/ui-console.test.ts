import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { WebSocket } from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serve, type RunningServer } from '../src/api/server.js';
import type { Vmsnap } from '../src/vmsnap.js';
import { ensureWebBuilt } from './browser.js';
import { cleanupHome, openLib, sh, tempHome, unavailable, waitFor } from './helpers.js';

const CHROMIUM = '/usr/bin/chromium';

/** How a WebSocket upgrade ends: opened (with the subprotocol the server chose) or refused with an HTTP status. */
function tryWs(url: string, opts: { protocols?: string[]; headers?: Record<string, string> } = {}): Promise<{ open: boolean; status?: number; protocol?: string; first?: Buffer }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, opts.protocols ?? [], { headers: opts.headers ?? {} });
    ws.once('unexpected-response', (_req, res) => {
      resolve({ open: false, status: res.statusCode ?? 0 });
      ws.terminate();
    });
    ws.once('open', () => {
      ws.once('message', (d: Buffer) => {
        resolve({ open: true, protocol: ws.protocol, first: d });
        ws.close();
      });
    });
    ws.once('error', () => resolve({ open: false }));
  });
}

describe.skipIf(unavailable(existsSync(CHROMIUM), 'ui-console.test.ts', `no Chromium at ${CHROMIUM}`))('the web console: serial console and screen of a VM', () => {
  let home: string;
  let lib: Vmsnap;
  let server: RunningServer;
  let browser: BrowserContext;
  let page: Page;
  let profile: string;

  beforeAll(async () => {
    ensureWebBuilt();
    home = tempHome();
    lib = openLib(home);
    await lib.vms.create('con', { image: 'demo', memoryMiB: 128, display: 'vnc' });
    await lib.vms.start('con');
    await sh(lib, 'con', 'true');
    server = await serve({ lib, host: '127.0.0.1', port: 0, watchIntervalMs: 500 });
    profile = mkdtempSync(join(tmpdir(), 'vmsnap-chromium-'));
    browser = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1280, height: 900 },
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    page = browser.pages()[0] ?? (await browser.newPage());
  }, 900_000);

  afterAll(async () => {
    await browser?.close();
    if (profile) rmSync(profile, { recursive: true, force: true });
    await server?.close();
    lib?.close();
    if (home) cleanupHome(home);
  });

  it('types a command into the serial console and reads its output', async () => {
    await page.goto(`${server.url}/#/vm/con`);
    await page.getByTestId('action-console').click();
    await page.getByText('serial console: connected').waitFor({ timeout: 30_000 });
    const term = page.getByTestId('serial-console');
    await term.click();
    // The demo guest has a shell on ttyS0; the answer is computed in the guest, so an echo of the keys alone would not match.
    await page.keyboard.type('echo vmsnap-$((6*7))-console');
    await page.keyboard.press('Enter');
    await waitFor(async () => ((await term.locator('.xterm-rows').textContent()) ?? '').includes('vmsnap-42-console'), {
      what: 'the command output in the browser terminal',
      timeoutMs: 60_000,
      intervalMs: 250,
    });
  });

  it("shows the VM's screen through noVNC", async () => {
    await page.getByTestId('console-tab-screen').click();
    await page.getByText('screen: connected').waitFor({ timeout: 60_000 });
    // noVNC draws the framebuffer into a canvas of the guest's screen size.
    const size = await page.getByTestId('vnc-screen').locator('canvas').evaluate((c: HTMLCanvasElement) => [c.width, c.height]);
    expect(size[0]).toBeGreaterThan(0);
    expect(size[1]).toBeGreaterThan(0);
  });

  it('the console WebSockets follow the API rules: Origin, Host, and the token', async () => {
    const base = server.url.replace('http:', 'ws:');
    const ok = await tryWs(`${base}/api/vms/con/vnc`, { headers: { Origin: server.url } });
    expect(ok.open).toBe(true);
    expect(ok.first!.toString('latin1')).toMatch(/^RFB 003\.00[38]\n/);
    expect((await tryWs(`${base}/api/vms/con/console`, { headers: { Origin: 'http://evil.example' } })).status).toBe(403);
    expect((await tryWs(`${base}/api/vms/con/console`, { headers: { Host: 'evil.example' } })).status).toBe(403);
    expect((await tryWs(`${base}/api/vms/nope/console`)).status).toBe(404);
    // A plain GET is told to upgrade.
    expect((await fetch(`${server.url}/api/vms/con/console`)).status).toBe(426);

    const guarded = await serve({ lib, host: '127.0.0.1', port: 0, requireToken: true });
    try {
      const gbase = guarded.url.replace('http:', 'ws:');
      expect((await tryWs(`${gbase}/api/vms/con/vnc`)).status).toBe(401);
      expect((await tryWs(`${gbase}/api/vms/con/vnc`, { protocols: ['vmsnap', 'vmsnap.token.wrong-token-wrong-token-wrong-token'] })).status).toBe(401);
      const byProtocol = await tryWs(`${gbase}/api/vms/con/vnc`, { protocols: ['vmsnap', `vmsnap.token.${guarded.token!}`] });
      expect(byProtocol.open).toBe(true);
      // The token is never echoed back.
      expect(byProtocol.protocol).toBe('vmsnap');
      expect((await tryWs(`${gbase}/api/vms/con/vnc`, { headers: { Authorization: `Bearer ${guarded.token!}` } })).open).toBe(true);
    } finally {
      await guarded.close();
    }
  });
});
