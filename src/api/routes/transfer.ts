import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { createRoute, z } from '@hono/zod-openapi';
import type { Context } from 'hono';
import type { ArchiveProbe } from '../../transfer/index.js';
import { DOWNLOAD_ID } from '../downloads.js';
import { validationError } from '../errors.js';
import { validateName } from '../../contract/config.js';
import { errors, jsonResponse, newRouter, refuseTakenName, type ApiDeps } from '../deps.js';
import {
  acceptedAs,
  ArchiveCheckQuery,
  ArchiveCheckResultSchema,
  ExportResultSchema,
  ImportQuery,
  ImportResultSchema,
  SnapshotParams,
} from '../schemas.js';
import { receiveUpload } from '../upload.js';
import { accepted } from './accepted.js';

const tags = ['Export and import'];

const DownloadParams = z.object({
  id: z.string().regex(DOWNLOAD_ID, 'a download id is 32 characters of base64url').openapi({ param: { name: 'id', in: 'path' } }),
});

/** The archive as the request body: a raw upload, never multipart. */
const archiveBody = {
  content: { 'application/octet-stream': { schema: z.string().openapi({ format: 'binary', description: "a file written by 'vmsnap export' (or by the export route)" }) } },
  required: true,
};

/** How an upload may be refused: not an archive or cut short (400), no length (411), not raw bytes (415), no room (507). */
const uploadErrors = { 400: errors[400], 411: errors[411], 415: errors[415], 507: errors[507] };

/**
 * Export a snapshot as a download, import an uploaded archive, check one.
 * The archives are the CLI's: the library writes and reads them; the API only
 * moves the bytes.
 */
export function transferRoutes(d: ApiDeps) {
  const { lib, tracker, downloads } = d;
  const app = newRouter();

  /**
   * Receive an uploaded archive and make import's quick checks, then let `use`
   * start a task on it. The upload is removed when anything fails before the
   * task starts, and when the promise the task hands to `done` settles.
   */
  const onUpload = async <T>(c: Context, copies: number, label: string, use: (up: { file: string; probe: ArchiveProbe; done: <R>(p: Promise<R>) => Promise<R> }) => T): Promise<T> => {
    const up = await receiveUpload(c, lib.home, copies);
    const drop = (): void => rmSync(up.dir, { recursive: true, force: true });
    try {
      const probe = await lib.transfer.probe(up.file, { label });
      return use({ file: up.file, probe, done: (p) => p.finally(drop) });
    } catch (e) {
      drop();
      throw e;
    }
  };

  app.openapi(
    createRoute({
      method: 'post',
      path: '/vms/{vm}/snapshots/{snap}/export',
      operationId: 'exportSnapshot',
      'x-vmsnap-kinds': ['export'],
      tags,
      summary: 'Export a snapshot as one self-contained archive, for download (202: an operation)',
      description:
        "The library writes the archive as `vmsnap export` does (flattened disks, memory state, config, checksummed manifest; the guest never pauses) into the server's $VMSNAP_HOME/tmp. The operation's result (an ExportResult) names a download URL: GET it before it expires; the server removes its copy once it has been fetched whole.",
      request: { params: SnapshotParams },
      responses: {
        202: jsonResponse(acceptedAs('export', ExportResultSchema, 'Export'), 'exporting in the background'),
        404: errors[404],
        423: errors[423],
        507: errors[507],
      },
    }),
    async (c) => {
      const p = c.req.valid('param');
      const vm = lib.vms.get(p.vm);
      const snap = lib.snapshots.show(vm.id, p.snap);
      tracker.assertIdle(vm);
      const op = tracker.start({ kind: 'export', scope: { vm }, snapshot: snap.name, title: `export ${vm.name}/${snap.name}` }, async () => {
        const dir = await downloads.folder();
        try {
          const fileName = `${vm.name}-${snap.name}.vmsnap`;
          const { file: _onServer, ...r } = await lib.transfer.export(vm.id, snap.id, join(dir, fileName));
          return { ...r, download: downloads.offer(dir, join(dir, fileName), fileName) };
        } catch (e) {
          rmSync(dir, { recursive: true, force: true });
          throw e;
        }
      });
      return accepted(c, op);
    },
  );

  // In the document by hand: the answer is the archive's bytes, streamed, not JSON.
  app.openAPIRegistry.registerPath({
    method: 'get',
    path: '/downloads/{id}',
    operationId: 'downloadExport',
    tags,
    summary: 'Download an exported archive (the URL an export operation gave)',
    description:
      'No token is needed: the URL (32 random characters) is the secret, so a browser can download it as a link. The archive is streamed from disk; once read whole it is removed, and a second request is a 404.',
    request: { params: DownloadParams },
    responses: {
      200: { description: 'the archive (a tar)', content: { 'application/x-tar': { schema: { type: 'string', format: 'binary' } } } },
      400: errors[400],
      404: errors[404],
    },
  });
  app.get('/downloads/:id', (c) => {
    const parsed = DownloadParams.safeParse({ id: c.req.param('id') });
    // The same 400 as every route's schema refusals (the router's hook serves app.openapi routes only).
    if (!parsed.success) return validationError(c, parsed.error, 'param');
    return downloads.respond(parsed.data.id);
  });

  app.openapi(
    createRoute({
      method: 'post',
      path: '/imports',
      operationId: 'importArchive',
      'x-vmsnap-kinds': ['import'],
      tags,
      summary: 'Make a new VM from an uploaded archive (202: an operation)',
      description:
        "The body is the archive itself (`curl --data-binary @web.vmsnap -H 'Content-Type: application/octet-stream'`), streamed to disk in $VMSNAP_HOME/tmp; twice its length must be free in the data dir. Before anything is accepted, what `vmsnap import` refuses from an archive's headers and manifest is refused at once: not an archive, a newer format, a truncated or inconsistent one (400), a taken name (409). The operation then checks every checksum and each disk image before it creates the VM, exactly as `vmsnap import` does; its result is an ImportResult.",
      request: { query: ImportQuery, body: archiveBody },
      responses: {
        202: jsonResponse(acceptedAs('import', ImportResultSchema, 'Import'), 'importing in the background'),
        ...uploadErrors,
        409: errors[409],
        423: errors[423],
      },
    }),
    async (c) => {
      const q = c.req.valid('query');
      const label = q.filename ?? 'upload';
      const hint = 'give the imported VM another name: ?name=NEW';
      if (q.name !== undefined) refuseTakenName(d, q.name, hint);
      return onUpload(c, 2, label, ({ file, probe, done }) => {
        const name = q.name ?? probe.source.vm;
        validateName(name, 'VM');
        refuseTakenName(d, name, hint);
        const op = tracker.start({ kind: 'import', scope: { newVm: name, idOf: (r) => r.id }, title: `import ${name} from ${label}` }, () =>
          done(lib.transfer.import(file, { name, label })),
        );
        return accepted(c, op);
      });
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/archives/check',
      operationId: 'checkArchive',
      'x-vmsnap-kinds': ['archive-check'],
      tags,
      summary: 'Verify an uploaded archive completely; create nothing (202: an operation)',
      description: "What `vmsnap import FILE --check` does, for an upload: every checksum and each disk image. The upload is removed afterwards. The operation's result is an ArchiveCheckResult.",
      request: { query: ArchiveCheckQuery, body: archiveBody },
      responses: {
        202: jsonResponse(acceptedAs('archive-check', ArchiveCheckResultSchema, 'ArchiveCheck'), 'checking in the background'),
        ...uploadErrors,
      },
    }),
    async (c) => {
      const label = c.req.valid('query').filename ?? 'upload';
      return onUpload(c, 1, label, ({ file, done }) => {
        const op = tracker.start({ kind: 'archive-check', scope: { none: true }, title: `check ${label}` }, async (task) => {
          const { file: _onServer, ...r } = await done(lib.transfer.check(file, { label, onProgress: (n, total, what) => task.progress(what, n, total) }));
          return r;
        });
        return accepted(c, op);
      });
    },
  );

  return app;
}
