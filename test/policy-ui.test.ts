import { existsSync } from 'node:fs';
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serve, type RunningServer } from '../src/api/server.js';
import type { Vmsnap } from '../src/vmsnap.js';
import { CHROMIUM, ensureWebBuilt, openBrowser, type BrowserSession } from './browser.js';
import { cleanupHome, cli, openLib, tempHome, unavailable } from './helpers.js';

/**
 * The policy side of the web UI in a real browser (test/ui.test.ts's style):
 * the badges on policy, protected and expiring snapshots in the tree and the
 * details, protect and unprotect, the policy dialog, a pass run from it, and
 * a prune with its dry run. A VM with a blank disk is enough: its snapshots
 * and deletes are real, and no guest needs to boot.
 */
describe.skipIf(unavailable(existsSync(CHROMIUM), 'policy-ui.test.ts', `no Chromium at ${CHROMIUM} (bash scripts/install-deps.sh --test installs it)`))('policies in the web UI', () => {
  let home: string;
  let lib: Vmsnap;
  let server: RunningServer;
  let session: BrowserSession;
  let page: Page;
  let auto = '';
  const snap = (name: string, expectText: (string | RegExp)[]) => session.screenshot(name, expectText);

  beforeAll(async () => {
    ensureWebBuilt();
    home = tempHome();
    lib = openLib(home);
    await lib.vms.create('uip', { disks: [{ sizeBytes: 16 * 1024 ** 2 }] });
    lib.policies.set('uip', { schedule: '0 3 * * *', timeZone: 'UTC', keepLast: 2 });
    auto = (await lib.policies.run('uip', { now: true })).snapshot!;
    await lib.snapshots.create('uip', 'guarded');
    lib.snapshots.protect('uip', 'guarded');
    await lib.snapshots.create('uip', 'temp', { expire: '7d' });
    // The scheduler is tested elsewhere; here nothing may change behind the browser's back.
    server = await serve({ lib, host: '127.0.0.1', port: 0, watchIntervalMs: 500, policies: false });
    session = await openBrowser();
    page = session.page;
  });

  afterAll(async () => {
    await session?.close();
    await server?.close();
    lib?.close();
    if (home) cleanupHome(home);
  });

  it('shows a badge on policy, protected and expiring snapshots in the tree and the details', async () => {
    await page.goto(`${server.url}/`);
    await expect.poll(() => page.getByTestId('vm-title').textContent()).toBe('uip');
    await expect.poll(() => page.getByTestId('conn').textContent()).toMatch(/live/);
    expect(await page.getByTestId(`badge-policy-${auto}`).textContent()).toBe('policy');
    expect(await page.getByTestId('badge-protected-guarded').textContent()).toBe('protected');
    expect(await page.getByTestId('badge-expires-temp').textContent()).toMatch(/^expires (7d|6d)$/);
    expect(await page.getByTestId('badge-policy-guarded').count()).toBe(0);
    expect(await page.getByTestId('badge-protected-temp').count()).toBe(0);
    expect(await page.getByTestId('vm-title').locator('..').textContent()).toMatch(/policy 0 3 \* \* \*/);

    await page.getByTestId('tree-node-guarded').click();
    const details = page.getByTestId('details');
    await expect.poll(() => details.getByTestId('detail-protected').textContent()).toMatch(/^yes/);
    expect(await details.getByTestId('detail-taken-by').textContent()).toBe('hand');
    expect(await page.getByTestId('action-delete').isDisabled()).toBe(true);
    await snap('badges', ['protected', 'policy', /expires/]);

    await page.getByTestId(`tree-node-${auto}`).click();
    await expect.poll(() => details.getByTestId('detail-taken-by').textContent()).toMatch(/^the policy — run now/);
    await page.getByTestId('tree-node-temp').click();
    await expect.poll(() => details.getByTestId('detail-expires').textContent()).toMatch(/\(in (7d|6d)\)/);
  });

  it('protects and unprotects from the details panel; the tree follows, and a CLI change shows live', async () => {
    await page.getByTestId('tree-node-guarded').click();
    await page.getByTestId('action-unprotect').click();
    await page.getByTestId('toast-ok').filter({ hasText: "Snapshot 'guarded' no longer protected" }).waitFor();
    await expect.poll(() => page.getByTestId('badge-protected-guarded').count()).toBe(0);
    expect(await page.getByTestId('action-delete').isDisabled()).toBe(false);
    expect(lib.snapshots.show('uip', 'guarded').protected).toBe(false);
    await page.getByTestId('action-protect').click();
    await expect.poll(() => page.getByTestId('badge-protected-guarded').count()).toBe(1);
    // From another process: the server's watcher notices and the stream carries it.
    const r = await cli(home, ['snapshot', 'protect', 'uip', 'temp']);
    expect(r.code, r.stderr).toBe(0);
    await page.getByTestId('badge-protected-temp').waitFor({ timeout: 20_000 });
    await snap('protected', ['protected']);
  });

  it('sets the policy in its dialog, takes one now, and prunes after a dry run that says why', async () => {
    await page.getByTestId('action-policy').click();
    const dialog = page.getByTestId('dialog-policy');
    await dialog.getByTestId('policy-keepLast').waitFor();
    expect(await dialog.getByTestId('policy-schedule').inputValue()).toBe('0 3 * * *');
    expect(await dialog.getByTestId('policy-keepLast').inputValue()).toBe('2');
    // A bad schedule: the server's refusal shows in the dialog, which stays open.
    await dialog.getByTestId('policy-schedule').fill('61 3 * * *');
    await dialog.getByTestId('policy-save').click();
    await dialog.getByText(/the minute field \(1st\) '61' is not valid/).waitFor();
    await snap('policy-refused', ['is not valid']);
    await dialog.getByTestId('policy-schedule').fill('@hourly');
    await dialog.getByTestId('policy-keepLast').fill('1');
    await dialog.getByTestId('policy-save').click();
    await dialog.waitFor({ state: 'detached' });
    expect(lib.policies.show('uip').spec).toMatchObject({ schedule: '@hourly', rules: { keepLast: 1 } });

    await page.getByTestId('action-policy').click();
    await page.getByTestId('dialog-policy').getByTestId('policy-run-now').click();
    await page.getByTestId('toast-ok').filter({ hasText: /Policy of uip: took '/ }).waitFor({ timeout: 60_000 });
    const taken = lib.policies.show('uip').lastRun!.snapshot!;
    await page.getByTestId(`badge-policy-${taken}`).waitFor();
    // keep-last 1: the pass pruned the older policy snapshot.
    await expect.poll(() => page.getByTestId(`tree-node-${auto}`).count()).toBe(0);

    // An expired snapshot for the prune to find: the dry run says which rule deletes it and what it frees.
    await lib.snapshots.create('uip', 'brief', { expire: '1s' });
    await expect.poll(() => Date.now() > Date.parse(lib.snapshots.show('uip', 'brief').expiresAt!)).toBe(true);
    await page.getByTestId('tree-root').click();
    await page.getByTestId('policy-summary').waitFor();
    expect(await page.getByTestId('policy-summary').textContent()).toMatch(/@hourly.*keep-last 1/s);
    await page.getByTestId('action-prune').click();
    const prune = page.getByTestId('dialog-prune');
    await prune.getByTestId('prune-delete').waitFor();
    expect(await prune.getByTestId('prune-delete').textContent()).toMatch(/Deletes 1 snapshot.*brief.*expired /s);
    await snap('prune-dry-run', ['Deletes 1 snapshot', 'brief']);
    await prune.getByTestId('confirm-prune').click();
    await page.getByTestId('toast-ok').filter({ hasText: 'Pruned 1 snapshot of uip' }).waitFor({ timeout: 60_000 });
    await expect.poll(() => page.getByTestId('tree-node-brief').count()).toBe(0);
    expect(lib.snapshots.list('uip').map((s) => s.name).sort()).toEqual(['guarded', 'temp', taken].sort());
    // The 400 of the refused schedule is the browser's console error; nothing else may be.
    expect(session.errors.filter((e) => !/status of 400/.test(e))).toEqual([]);
  });
});
