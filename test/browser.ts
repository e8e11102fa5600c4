import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { expect } from 'vitest';

/** What the browser tests share: Debian's chromium, a built web UI, and checked screenshots. */

export const CHROMIUM = '/usr/bin/chromium';
const PNG = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

export { ensureWebBuilt } from './web-build.js';

export interface BrowserSession {
  browser: BrowserContext;
  page: Page;
  /** Where the screenshots go (VMSNAP_UI_SCREENSHOTS keeps them). */
  shots: string;
  /** The page's uncaught errors and console errors. */
  errors: string[];
  /** A screenshot of a step, checked: a real PNG of some size, taken once every text is on the page. */
  screenshot(name: string, expectText?: (string | RegExp)[], page?: Page): Promise<string>;
  close(): Promise<void>;
}

/** Headless chromium at 1280×800 with a fresh profile (nothing cached or remembered from an earlier run). */
export async function openBrowser(): Promise<BrowserSession> {
  const keepShots = process.env.VMSNAP_UI_SCREENSHOTS !== undefined;
  const shots = keepShots ? process.env.VMSNAP_UI_SCREENSHOTS! : mkdtempSync(join(tmpdir(), 'vmsnap-ui-'));
  mkdirSync(shots, { recursive: true });
  const profile = mkdtempSync(join(tmpdir(), 'vmsnap-chromium-'));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 800 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = browser.pages()[0] ?? (await browser.newPage());
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
  let step = 0;
  return {
    browser,
    page,
    shots,
    errors,
    async screenshot(name, expectText = [], on = page) {
      for (const t of expectText) await on.getByText(t).filter({ visible: true }).first().waitFor({ timeout: 20_000 });
      const file = join(shots, `${String(++step).padStart(2, '0')}-${name}.png`);
      await on.screenshot({ path: file });
      const png = readFileSync(file);
      expect(png.subarray(0, 8).equals(PNG), `${file} is a PNG`).toBe(true);
      expect(png.length, `${file} has content`).toBeGreaterThan(on === page ? 20_000 : 1000);
      // Width and height from the IHDR chunk: the viewport the test asked for.
      expect([png.readUInt32BE(16), png.readUInt32BE(20)]).toEqual([1280, 800]);
      return file;
    },
    async close() {
      await browser.close();
      rmSync(profile, { recursive: true, force: true });
      if (!keepShots) rmSync(shots, { recursive: true, force: true });
    },
  };
}
