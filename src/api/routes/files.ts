import { PassThrough, Readable } from 'node:stream';
import { createRoute } from '@hono/zod-openapi';
import type { FilesSession } from '../../files/service.js';
import type { Vmsnap } from '../../vmsnap.js';
import { errors, jsonBody, jsonResponse, newRouter, type ApiDeps } from '../deps.js';
import { DiffBody, DiffReportSchema, DirectoryListingSchema, FilesQuery, FilesystemsViewSchema, RestoreBody, RestoreResultSchema, SearchBody, SearchReportSchema } from '../files-schemas.js';
import { acceptedAs, SnapshotParams, VmParams } from '../schemas.js';
import { accepted } from './accepted.js';

const tags = ['Guest files'];

/** How long a browsed snapshot's appliance stays up after its last use. */
const IDLE_MS = 10 * 60_000;

/**
 * The snapshots the web UI is browsing, each open in its own appliance: booting
 * one costs 10 s to 2 min under TCG, a listing on an open one about 0.1 s. An
 * appliance is shut after IDLE_MS without use, and all of them when the server
 * stops; meanwhile its layers stay pinned (a delete defers its merge).
 */
export class BrowsedSnapshots {
  private readonly open = new Map<string, { session: Promise<FilesSession>; timer?: NodeJS.Timeout }>();

  constructor(private readonly lib: Vmsnap) {}

  /** The open session of a snapshot (opened on first use). */
  async get(vm: string, snap: string, onProgress?: (what: string, done: number, total: number) => void): Promise<{ session: FilesSession; label: string }> {
    const v = this.lib.vms.get(vm);
    const s = this.lib.snapshots.show(v.id, snap);
    const key = `${v.id}/${s.id}`;
    let e = this.open.get(key);
    if (!e) {
      e = { session: this.lib.files.open(v.id, [s.id], onProgress ? { onProgress } : {}) };
      this.open.set(key, e);
      e.session.catch(() => this.open.delete(key));
    }
    const session = await e.session;
    if (e.timer) clearTimeout(e.timer);
    e.timer = setTimeout(() => void this.close(key), IDLE_MS);
    e.timer.unref();
    return { session, label: s.name };
  }

  /** The session of a snapshot if it is open already (a restore then reads through it rather than booting another). */
  async opened(vmId: string, snapId: string): Promise<FilesSession | undefined> {
    return this.open.get(`${vmId}/${snapId}`)?.session.catch(() => undefined);
  }

  private async close(key: string): Promise<void> {
    const e = this.open.get(key);
    if (!e) return;
    this.open.delete(key);
    if (e.timer) clearTimeout(e.timer);
    await (await e.session.catch(() => undefined))?.close();
  }

  async closeAll(): Promise<void> {
    await Promise.all([...this.open.keys()].map((k) => this.close(k).catch(() => undefined)));
  }
}

/**
 * Guest files of snapshots: browse (an appliance kept open per browsed
 * snapshot), download a file or a tree, restore into the VM, diff, search.
 * Read in a libguestfs appliance, never mounted on the server's host.
 */
export function filesRoutes(d: ApiDeps, browsed: BrowsedSnapshots) {
  const { lib, tracker } = d;
  const app = newRouter();

  app.openapi(
    createRoute({
      method: 'post',
      path: '/vms/{vm}/snapshots/{snap}/files/open',
      operationId: 'openSnapshotFiles',
      'x-vmsnap-kinds': ['files-read'],
      tags,
      summary: "Open a snapshot's files for browsing: boot its reader and find its filesystems (202: an operation)",
      description:
        "Boots a libguestfs appliance for the snapshot (10 s idle, up to 2 minutes on a loaded host) and keeps it for the listing and download routes, which are then fast; it is shut after 10 minutes without use. The VM may run. The operation's result is a FilesystemsView.",
      request: { params: SnapshotParams },
      responses: { 202: jsonResponse(acceptedAs('files-read', FilesystemsViewSchema, 'FilesRead'), 'opening in the background'), 404: errors[404] },
    }),
    (c) => {
      const p = c.req.valid('param');
      const vm = lib.vms.get(p.vm);
      const snap = lib.snapshots.show(vm.id, p.snap);
      const op = tracker.start({ kind: 'files-read', scope: { none: true }, snapshot: snap.name, title: `open the files of ${vm.name}/${snap.name}` }, async () => {
        const { session, label } = await browsed.get(vm.id, snap.id);
        return session.filesystems(label);
      });
      return accepted(c, op);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/vms/{vm}/snapshots/{snap}/files',
      operationId: 'listSnapshotFilesystems',
      tags,
      summary: "A snapshot's filesystems (named by the guest's fstab mount point, else by device) and its unreadable disks",
      description: 'Answers at once when the snapshot is open (openSnapshotFiles); otherwise the request waits while its reader boots.',
      request: { params: SnapshotParams },
      responses: { 200: jsonResponse(FilesystemsViewSchema, "the snapshot's filesystems"), 404: errors[404] },
    }),
    async (c) => {
      const p = c.req.valid('param');
      const { session, label } = await browsed.get(p.vm, p.snap);
      return c.json(await session.filesystems(label), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/vms/{vm}/snapshots/{snap}/files/list',
      operationId: 'listSnapshotDirectory',
      tags,
      summary: 'A directory of a snapshot: name, type, size, mode, mtime, owner of each entry',
      request: { params: SnapshotParams, query: FilesQuery },
      responses: { 200: jsonResponse(DirectoryListingSchema, 'the directory'), 400: errors[400], 404: errors[404] },
    }),
    async (c) => {
      const p = c.req.valid('param');
      const { session, label } = await browsed.get(p.vm, p.snap);
      return c.json(await session.list(label, c.req.valid('query').path), 200);
    },
  );

  // In the document by hand: the answer is the file's bytes (or a tar of a directory), streamed.
  app.openAPIRegistry.registerPath({
    method: 'get',
    path: '/vms/{vm}/snapshots/{snap}/files/content',
    operationId: 'downloadSnapshotFile',
    tags,
    summary: 'Download a file of a snapshot (a directory comes as a tar)',
    description: 'What `vmsnap cp VM SNAP:PATH -` writes. Symlinks are followed inside the guest tree. Errors (no such path, not a file or directory) come as JSON before any byte.',
    request: { params: SnapshotParams, query: FilesQuery },
    responses: {
      200: {
        description: 'the content',
        content: { 'application/octet-stream': { schema: { type: 'string', format: 'binary' } }, 'application/x-tar': { schema: { type: 'string', format: 'binary' } } },
      },
      400: errors[400],
      404: errors[404],
    },
  });
  app.get('/vms/:vm/snapshots/:snap/files/content', async (c) => {
    const p = SnapshotParams.parse({ vm: c.req.param('vm'), snap: c.req.param('snap') });
    const { path } = FilesQuery.parse({ path: c.req.query('path') });
    const { session, label } = await browsed.get(p.vm, p.snap);
    const st = await session.stat(label, path);
    const body = new PassThrough();
    const name = (st.name || 'root').replace(/[^\w.+-]/g, '_');
    const dir = st.type === 'dir';
    void (dir ? session.tarTo(label, path, body) : session.readTo(label, path, body)).catch((e: unknown) => body.destroy(e as Error));
    return new Response(Readable.toWeb(body) as ReadableStream, {
      status: 200,
      headers: {
        'Content-Type': dir ? 'application/x-tar' : 'application/octet-stream',
        'Content-Disposition': `attachment; filename="${dir ? `${name}.tar` : name}"`,
        ...(dir ? {} : { 'Content-Length': String(st.size) }),
      },
    });
  });

  app.openapi(
    createRoute({
      method: 'post',
      path: '/vms/{vm}/snapshots/{snap}/files/restore',
      operationId: 'restoreSnapshotFile',
      'x-vmsnap-kinds': ['restore-file'],
      tags,
      summary: 'Put a file or a tree from a snapshot back into the VM (202: an operation)',
      description:
        "Through the guest agent while the VM runs, into its disk while it is off; journaled. Without `force` a restore that would overwrite anything fails with WOULD_LOSE_DATA and `details.overwrites` (ask the user, then send force); `dryRun` only says what it would do. The operation's result is a RestoreResult.",
      request: { params: SnapshotParams, body: jsonBody(RestoreBody, true) },
      responses: { 202: jsonResponse(acceptedAs('restore-file', RestoreResultSchema, 'RestoreFile'), 'restoring in the background'), 400: errors[400], 404: errors[404], 423: errors[423] },
    }),
    (c) => {
      const p = c.req.valid('param');
      const b = c.req.valid('json');
      const vm = lib.vms.get(p.vm);
      const snap = lib.snapshots.show(vm.id, p.snap);
      tracker.assertIdle(vm);
      const op = tracker.start({ kind: 'restore-file', scope: { vm }, snapshot: snap.name, title: `restore ${b.path} of ${vm.name}/${snap.name}` }, async (task) => {
        const o = {
          onProgress: (what: string, done: number, total: number) => task.progress(what, done, total),
          force: b.force ?? false,
          dryRun: b.dryRun ?? false,
          ...(b.to !== undefined ? { to: b.to } : {}),
        };
        const open = await browsed.opened(vm.id, snap.id);
        return open ? open.restore(snap.name, b.path, o) : lib.files.restore(vm.id, snap.id, b.path, o);
      });
      return accepted(c, op);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/vms/{vm}/diff',
      operationId: 'diffSnapshots',
      'x-vmsnap-kinds': ['diff'],
      tags,
      summary: 'What changed between two snapshots, or a snapshot and the present state (202: an operation)',
      description: "Per disk the bytes written in between (from the layers' allocation maps), per filesystem the files added, removed and changed. The operation's result is a DiffReport.",
      request: { params: VmParams, body: jsonBody(DiffBody, true) },
      responses: { 202: jsonResponse(acceptedAs('diff', DiffReportSchema, 'Diff'), 'comparing in the background'), 400: errors[400], 404: errors[404] },
    }),
    (c) => {
      const vm = lib.vms.get(c.req.valid('param').vm);
      const b = c.req.valid('json');
      lib.snapshots.show(vm.id, b.from);
      if (b.to !== undefined) lib.snapshots.show(vm.id, b.to);
      const op = tracker.start({ kind: 'diff', scope: { none: true }, title: `diff ${vm.name} ${b.from} ${b.to ?? 'present'}` }, (task) =>
        lib.files.diff(vm.id, b.from, b.to, { onProgress: (what, done, total) => task.progress(what, done, total), stat: b.stat ?? false, exact: b.exact ?? false }),
      );
      return accepted(c, op);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/vms/{vm}/search',
      operationId: 'searchSnapshots',
      'x-vmsnap-kinds': ['search'],
      tags,
      summary: 'Every snapshot holding a path that matches a glob, with size, mtime and SHA-256 in each (202: an operation)',
      description: "The operation's result is a SearchReport.",
      request: { params: VmParams, body: jsonBody(SearchBody, true) },
      responses: { 202: jsonResponse(acceptedAs('search', SearchReportSchema, 'Search'), 'searching in the background'), 400: errors[400], 404: errors[404] },
    }),
    (c) => {
      const vm = lib.vms.get(c.req.valid('param').vm);
      const { glob } = c.req.valid('json');
      const op = tracker.start({ kind: 'search', scope: { none: true }, title: `search ${vm.name} for ${glob}` }, (task) =>
        lib.files.search(vm.id, glob, { onProgress: (what, done, total) => task.progress(what, done, total) }),
      );
      return accepted(c, op);
    },
  );

  return app;
}
