import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serve, type RunningServer } from '../src/api/server.js';
import type { Vmsnap } from '../src/vmsnap.js';
import { CHROMIUM, ensureWebBuilt, openBrowser, type BrowserSession } from './browser.js';
import { cleanupHome, cli, openLib, sh, skipBecause, tempHome, unavailable } from './helpers.js';

/** An appliance boot under TCG: 10 s idle, minutes on a loaded host (the library's own limit is raised to match). */
const APPLIANCE_MS = 900_000;
process.env.VMSNAP_GUESTFS_LAUNCH_TIMEOUT ??= '900';

describe.skipIf(unavailable(existsSync(CHROMIUM), 'ui.test.ts', `no Chromium at ${CHROMIUM} (bash scripts/install-deps.sh --test installs it)`))('web UI in a real browser over the demo guest', () => {
  let home: string;
  let lib: Vmsnap;
  let server: RunningServer;
  let session: BrowserSession;
  let page: Page;
  /** The archive the browser downloaded. */
  let archive: string;
  const snap = (name: string, expectText: (string | RegExp)[]) => session.screenshot(name, expectText);
  let libvirtDir: string;

  beforeAll(async () => {
    ensureWebBuilt();
    home = tempHome();
    lib = openLib(home);
    await lib.vms.create('ui', { image: 'demo', memoryMiB: 128 });
    await lib.vms.start('ui');
    await sh(lib, 'ui', 'echo base > /data/base && sync');
    // A libvirt domain's disk, in a dir the server lets requests name.
    libvirtDir = mkdtempSync(join(tmpdir(), 'vmsnap-ui-libvirt-'));
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(libvirtDir, 'disk.qcow2'), '16M']);
    server = await serve({ lib, host: '127.0.0.1', port: 0, watchIntervalMs: 500, allowPaths: [libvirtDir] });
    session = await openBrowser();
    page = session.page;
  });

  afterAll(async () => {
    await session?.close();
    await server?.close();
    lib?.close();
    if (home) cleanupHome(home);
    if (libvirtDir) rmSync(libvirtDir, { recursive: true, force: true });
  });

  it('shows the VM running, its (empty) tree with "you are here", and its storage', async () => {
    await page.goto(`${server.url}/`);
    await expect.poll(() => page.getByTestId('vm-title').textContent()).toBe('ui');
    await page.getByTestId('tree-here').waitFor();
    await expect.poll(() => page.getByTestId('conn').textContent()).toMatch(/live/);
    await snap('initial', ['You are here', 'Storage per snapshot', 'running']);
    expect(await page.getByTestId('details').textContent()).toMatch(/with no snapshot yet/);
  });

  it('takes a snapshot from the dialog and shows it in the tree', async () => {
    await page.getByTestId('action-take').click();
    const dialog = page.getByTestId('dialog-take');
    await dialog.getByTestId('snapshot-name').fill('first');
    await dialog.getByTestId('snapshot-description').fill('before the change');
    await snap('take-dialog', ['Take a snapshot of ui', 'Include memory and device state']);
    await dialog.getByTestId('confirm-take').click();

    await page.getByTestId('tree-node-first').waitFor({ timeout: 60_000 });
    await page.getByTestId('toast-ok').filter({ hasText: "Snapshot 'first' taken" }).waitFor({ timeout: 60_000 });
    const details = page.getByTestId('details');
    await expect.poll(() => details.textContent()).toMatch(/first.*current.*with memory.*before the change/s);
    expect(await page.getByTestId('tree-node-first').textContent()).toMatch(/first.*memory/s);
    expect(await page.getByTestId('storage-chart').textContent()).toMatch(/first/);
    await snap('snapshot-taken', ["Snapshot 'first' taken", 'before the change']);
    expect(lib.snapshots.list('ui').map((s) => s.name)).toEqual(['first']);
  });

  it('updates live when the CLI takes a snapshot in another process', async () => {
    await sh(lib, 'ui', 'echo changed > /data/changed && sync');
    const r = await cli(home, ['snapshot', 'create', 'ui', 'from-cli', '--no-memory']);
    expect(r.code, r.stderr).toBe(0);
    // No reload: the server's watcher sees it and the event stream carries it.
    await page.getByTestId('tree-node-from-cli').waitFor({ timeout: 20_000 });
    await snap('cli-snapshot-live', ['from-cli']);
  });

  it('reverts, after a confirmation that says what will be lost', async () => {
    await page.getByTestId('tree-node-first').click();
    await page.getByTestId('action-revert').click();
    const dialog = page.getByTestId('dialog-revert');
    await dialog.getByText('This discards the present state').waitFor();
    expect(await dialog.getByTestId('revert-lost').textContent()).toMatch(/running state of the VM.*writes to disk0/s);
    await snap('revert-dialog', ["Revert ui to 'first'?", 'This discards the present state', 'running state of the VM']);
    await dialog.getByTestId('confirm-revert').click();

    await page.getByTestId('toast-ok').filter({ hasText: "ui reverted to 'first': running" }).waitFor({ timeout: 60_000 });
    // The present state now hangs under 'first': the tree says so, not only the header.
    await expect.poll(() => page.getByText('current snapshot: first').isVisible()).toBe(true);
    await expect.poll(() => page.getByTestId('tree-node-first').getAttribute('class')).toMatch(/\bcurrent\b/);
    await expect.poll(() => page.getByTestId('tree-node-from-cli').getAttribute('class')).not.toMatch(/\bcurrent\b/);
    await snap('reverted', ["ui reverted to 'first'", 'current snapshot: first']);
    expect((await sh(lib, 'ui', 'ls /data | grep -v lost+found')).trim().split('\n')).toEqual(['base']);
  });

  // A libguestfs appliance boots on the server for the files dialog and another for the diff: 10 s idle, minutes on a loaded 2-core host.
  it("browses a snapshot's files, restores one into the running VM after asking, and diffs the snapshot against the present", async () => {
    await sh(lib, 'ui', 'echo mine > /data/base && sync');
    await page.getByTestId('tree-node-first').click();
    await page.getByTestId('action-files').click();
    const dialog = page.getByTestId('dialog-files');
    const table = dialog.getByTestId('files-table');
    await table.waitFor({ timeout: APPLIANCE_MS });
    await expect.poll(() => dialog.getByTestId('files-path').textContent()).toBe('/dev/vda');
    expect(await dialog.getByTestId('files-filesystems').textContent()).toMatch(/\/dev\/vda.*ext2/);
    await snap('files-dialog', ["Files of 'first' (ui)", 'base', 'Download', 'Restore']);

    // 'base' is in the present too: the dialog says what the restore would overwrite and writes nothing until told.
    await table.locator('tr', { hasText: 'base' }).getByTestId('files-restore').click();
    const confirm = dialog.getByTestId('restore-confirm');
    await confirm.waitFor({ timeout: APPLIANCE_MS });
    expect(await confirm.textContent()).toMatch(/overwrites in the VM:.*\/dev\/vda\/base/s);
    expect(await sh(lib, 'ui', 'cat /data/base')).toBe('mine\n');
    await snap('files-restore-confirm', ['overwrites in the VM', '/dev/vda/base']);
    await confirm.getByTestId('restore-force').click();
    await dialog.getByText(/Restored \/dev\/vda\/base through the guest agent: 1 file/).waitFor({ timeout: APPLIANCE_MS });
    expect(await sh(lib, 'ui', 'cat /data/base')).toBe('base\n');
    await dialog.locator('.modal-actions button', { hasText: 'Close' }).click();

    await sh(lib, 'ui', 'echo new > /data/new && sync');
    await page.getByTestId('action-diff').click();
    const diff = page.getByTestId('dialog-diff');
    await diff.getByTestId('diff-run').click();
    const report = diff.getByTestId('diff-report');
    await report.waitFor({ timeout: APPLIANCE_MS });
    expect(await report.textContent()).toMatch(/first.*present: 1 added, 0 removed/s);
    expect(await report.textContent()).toMatch(/A \/dev\/vda\/new/);
    await snap('diff-dialog', ["Diff of 'first' (ui)", '/dev/vda/new']);
    await diff.locator('.modal-actions button', { hasText: 'Close' }).click();
    expect((await lib.vms.status('ui')).state).toBe('running');
    await sh(lib, 'ui', 'rm /data/new && sync');
  }, APPLIANCE_MS * 2);

  it('deletes a snapshot, after a confirmation that says what is reclaimed', async (ctx) => {
    if (!('delete' in lib.snapshots)) {
      skipBecause(ctx, 'the library in this tree has no snapshots.delete yet');
      return;
    }
    await page.getByTestId('tree-node-from-cli').click();
    await page.getByTestId('action-delete').click();
    const dialog = page.getByTestId('dialog-delete');
    await dialog.getByText('What is lost and what is freed').waitFor();
    await snap('delete-dialog', ["Delete snapshot 'from-cli'?", 'reclaimed in all']);
    await dialog.getByTestId('confirm-delete').click();

    await page.getByTestId('toast-ok').filter({ hasText: "Deleted snapshot 'from-cli'" }).waitFor({ timeout: 60_000 });
    await expect.poll(() => page.getByTestId('tree-node-from-cli').count()).toBe(0);
    await snap('deleted', ["Deleted snapshot 'from-cli'", 'reclaimed']);
    expect(lib.snapshots.list('ui').map((s) => s.name)).toEqual(['first']);
  });

  it('clones a snapshot from its dialog: two linked clones appear as VMs', async () => {
    await page.getByTestId('tree-node-first').click();
    await page.getByTestId('action-clone').click();
    const dialog = page.getByTestId('dialog-clone');
    await dialog.getByTestId('clone-name').fill('twin');
    await dialog.getByTestId('clone-count').fill('2');
    await snap('clone-dialog', ["Clone 'first' of ui", 'New VMs: twin-1 … twin-2', 'Linked']);
    await dialog.getByTestId('confirm-clone').click();

    await page.getByTestId('toast-ok').filter({ hasText: "Cloned ui/first as 'twin-1', 'twin-2'" }).waitFor({ timeout: 60_000 });
    await page.getByTestId('vm-item-twin-1').waitFor();
    await page.getByTestId('vm-item-twin-2').waitFor();
    await snap('cloned', ["Cloned ui/first as 'twin-1', 'twin-2'", 'twin-2']);
    expect((await lib.vms.list()).map((v) => v.name).sort()).toEqual(['twin-1', 'twin-2', 'ui']);
    expect(lib.vms.get('twin-1').config.nics[0]!.mac).not.toBe(lib.vms.get('twin-2').config.nics[0]!.mac);
  });

  it('exports a snapshot and downloads the archive', async () => {
    await page.getByTestId('tree-node-first').click();
    await page.getByTestId('action-export').click();
    const dialog = page.getByTestId('dialog-export');
    await dialog.getByTestId('confirm-export').click();
    await dialog.getByTestId('export-download').waitFor({ timeout: 60_000 });
    await snap('export-ready', ["Export 'first' of ui", 'Ready: ui-first.vmsnap']);
    const [download] = await Promise.all([page.waitForEvent('download'), dialog.getByTestId('export-download').click()]);
    expect(download.suggestedFilename()).toBe('ui-first.vmsnap');
    archive = join(session.shots, 'ui-first.vmsnap');
    await download.saveAs(archive);
    // What the browser saved is the CLI's archive, every checksum intact.
    const check = await lib.transfer.check(archive);
    expect(check).toMatchObject({ hasMemory: true, source: { vm: 'ui', snapshot: 'first' } });
    await dialog.getByRole('button', { name: 'Close' }).click();
  });

  it('uploads the archive as a new VM', async () => {
    await page.getByTestId('action-import').click();
    const dialog = page.getByTestId('dialog-import');
    await dialog.getByTestId('import-file').setInputFiles(archive);
    await dialog.getByTestId('import-name').fill('restored');
    await snap('import-dialog', ['Import a VM from an archive', 'Upload and import']);
    await dialog.getByTestId('confirm-import').click();

    await page.getByTestId('toast-ok').filter({ hasText: "Imported VM 'restored'" }).waitFor({ timeout: 120_000 });
    // The page selects the VM it imported, with its one snapshot.
    await expect.poll(() => page.getByTestId('vm-title').textContent(), { timeout: 20_000 }).toBe('restored');
    await page.getByTestId('tree-node-first').waitFor();
    await snap('imported', ["Imported VM 'restored'", 'restored']);
    expect(lib.snapshots.list('restored').map((s) => [s.name, s.hasMemory, s.current])).toEqual([['first', true, true]]);
  });

  it('imports a libvirt domain: what it cannot carry over is listed first, then dropped when asked', async () => {
    // Its name sorts after the others: the token test below expects the first by name to be 'restored'.
    const xml = `<domain type='qemu'><name>virt-guest</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
      <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
      <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${join(libvirtDir, 'disk.qcow2')}'/><target dev='vda' bus='virtio'/></disk>
      <watchdog model='i6300esb' action='reset'/></devices></domain>`;
    await page.getByTestId('action-import-libvirt').click();
    const dialog = page.getByTestId('dialog-import-libvirt');
    await dialog.getByTestId('libvirt-xml').fill(xml);
    const errorsBefore = session.errors.length;
    await dialog.getByTestId('confirm-import-libvirt').click();
    await dialog.getByTestId('libvirt-unsupported').getByText('watchdog i6300esb', { exact: false }).waitFor({ timeout: 20_000 });
    // The refusal is a 400, which the browser logs as a console error: expected here, and only here.
    const logged = session.errors.splice(errorsBefore);
    expect(logged.every((e) => /status of 400/.test(e)), logged.join('\n')).toBe(true);
    await snap('libvirt-refused', ['vmsnap cannot carry over:', 'watchdog i6300esb']);
    expect((await lib.vms.list()).map((v) => v.name)).not.toContain('virt-guest');
    await dialog.getByTestId('libvirt-ignore').check();
    await dialog.getByTestId('confirm-import-libvirt').click();
    await page.getByTestId('toast-ok').filter({ hasText: "imported libvirt domain 'virt-guest'" }).waitFor({ timeout: 60_000 });
    await expect.poll(() => page.getByTestId('vm-title').textContent(), { timeout: 20_000 }).toBe('virt-guest');
    expect((await lib.vms.info('virt-guest')).diskChains[0]!.chain.map((l) => l.path)).toContain(join(libvirtDir, 'disk.qcow2'));
  });

  it("shows the doctor's warnings and selects the snapshot one names", async () => {
    // Every snapshot is "old" with this threshold.
    writeFileSync(join(home, 'config.json'), JSON.stringify({ health: { maxAgeHours: 0.0001 } }));
    try {
      await page.getByTestId('health-check').click();
      const warning = page.getByTestId('warning-old-snapshot-ui-first');
      await warning.waitFor({ timeout: 60_000 });
      expect(await warning.textContent()).toMatch(/snapshot 'first' of 'ui' is 0 h old/);
      await snap('health-warnings', ['warnings', "snapshot 'first' of 'ui'"]);
      // 'restored' is selected: the warning about ui/first takes the page there.
      await warning.click();
      await expect.poll(() => page.getByTestId('vm-title').textContent()).toBe('ui');
      await expect.poll(() => page.getByTestId('tree-node-first').getAttribute('class')).toMatch(/\bselected\b/);
      await expect.poll(() => page.getByTestId('details').textContent()).toMatch(/^first/);
      for (const vm of ['ui', 'restored', 'twin-1', 'twin-2']) await page.getByTestId(`usage-${vm}`).waitFor();
      await snap('warning-opened', ['Revert to this snapshot', 'Data dir']);
    } finally {
      rmSync(join(home, 'config.json'), { force: true });
    }
  });

  it('asks for the API token when the server requires one, and refuses a wrong one', async () => {
    const guarded = await serve({ lib, host: '127.0.0.1', port: 0, requireToken: true });
    try {
      const p = await session.browser.newPage();
      await p.goto(`${guarded.url}/`);
      const dialog = p.getByTestId('dialog-token');
      await dialog.waitFor();
      await dialog.locator('input').fill('not-the-token');
      await dialog.getByRole('button', { name: 'Connect' }).click();
      await dialog.getByText('wrong bearer token').waitFor();
      await session.screenshot('token-refused', [], p);
      await dialog.locator('input').fill(guarded.token!);
      await dialog.getByRole('button', { name: 'Connect' }).click();
      // The VMs load (the first by name is selected: the clones and the import came before 'ui').
      await p.getByTestId('vm-item-ui').waitFor();
      await expect.poll(() => p.getByTestId('vm-title').textContent()).toBe('restored');
      await expect.poll(() => p.getByTestId('conn').textContent()).toMatch(/live/);
      await p.close();
    } finally {
      await guarded.close();
    }
    // 401s of the refused token are the browser's console errors; nothing else may be.
    expect(session.errors.filter((e) => !/401/.test(e))).toEqual([]);
  });
});
