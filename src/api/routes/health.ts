import { createRoute } from '@hono/zod-openapi';
import type { HealthSettings } from '../../contract/views.js';
import { errors, jsonBody, jsonResponse, newRouter, type ApiDeps } from '../deps.js';
import {
  acceptedAs,
  CatalogRepairBody,
  CatalogRepairReportSchema,
  DfReportSchema,
  DoctorQuery,
  FingerprintResultSchema,
  HealthReportSchema,
  RecoveryReportSchema,
  VerifyAllSchema,
  VerifyBody,
  VmParams,
} from '../schemas.js';
import { accepted } from './accepted.js';

const tags = ['Storage and health'];

/** Storage accounting, the doctor's warnings, and the data dir's maintenance: verify, recover, fingerprint. */
export function healthRoutes(d: ApiDeps) {
  const { lib, tracker, watch } = d;
  const app = newRouter();

  app.openapi(
    createRoute({
      method: 'get',
      path: '/storage',
      operationId: 'getStorage',
      tags,
      summary: 'Disk usage of every VM and snapshot, and of the data dir against its free space (`vmsnap df`)',
      responses: { 200: jsonResponse(DfReportSchema, 'the storage report') },
    }),
    async (c) => c.json(await lib.health.df(), 200),
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/vms/{vm}/storage',
      operationId: 'getVmStorage',
      tags,
      summary: "One VM's disk usage: per snapshot its delta, state file and what deleting it would free (`vmsnap df VM`)",
      request: { params: VmParams },
      responses: { 200: jsonResponse(DfReportSchema, 'the storage report, with this VM only'), 400: errors[400], 404: errors[404] },
    }),
    async (c) => c.json(await lib.health.df(lib.vms.get(c.req.valid('param').vm).id), 200),
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/doctor',
      operationId: 'runDoctor',
      tags,
      summary: 'Warnings about the known risks of snapshots: old ones, deep chains, large ones, low free space, what verify flags (`vmsnap doctor`)',
      description:
        "Thresholds come from $VMSNAP_HOME/config.json and the query overrides them, as the CLI's flags do. Each warning names the VM and, when it is about one, the snapshot. `verify=false` leaves out verify's checks (qemu-img check of every layer), for a quick look.",
      request: { query: DoctorQuery },
      responses: { 200: jsonResponse(HealthReportSchema, 'the findings'), 400: errors[400] },
    }),
    async (c) => {
      const q = c.req.valid('query');
      const overrides: Partial<HealthSettings> = {
        ...(q.maxAgeHours !== undefined ? { maxAgeHours: q.maxAgeHours } : {}),
        ...(q.maxChainDepth !== undefined ? { maxChainDepth: q.maxChainDepth } : {}),
        ...(q.maxShareOfFree !== undefined ? { maxShareOfFree: q.maxShareOfFree } : {}),
        ...(q.reserveBytes !== undefined ? { reserveBytes: q.reserveBytes } : {}),
      };
      return c.json(await lib.health.doctor(overrides, { verify: q.verify !== 'false' }), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/verify',
      operationId: 'verifyAll',
      'x-vmsnap-kinds': ['verify-all'],
      tags,
      summary: 'Check every VM: catalog rows, files and backing chains (202: an operation over the whole data dir)',
      description: "Runs alone: refused (423) while the server runs another operation. The operation's result is a list of VerifyReports. One VM: POST /vms/{vm}/verify.",
      request: { body: jsonBody(VerifyBody) },
      responses: { 202: jsonResponse(acceptedAs('verify-all', VerifyAllSchema, 'VerifyAll'), 'verifying in the background'), 400: errors[400], 423: errors[423] },
    }),
    (c) => {
      const deep = c.req.valid('json').deep ?? false;
      return accepted(c, tracker.start({ kind: 'verify-all', scope: { dataDir: true }, title: `verify every VM${deep ? ' (deep)' : ''}` }, () => lib.verifyAll({ deep })));
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/recover',
      operationId: 'recover',
      'x-vmsnap-kinds': ['recover'],
      tags,
      summary: 'Finish what a killed vmsnap left half done, and remove orphaned files (202: an operation over the whole data dir)',
      description:
        "What `vmsnap recover` does. Runs alone: refused (423) while the server runs another operation, so it never takes this server's own work for a dead process's. The operation's result is a RecoveryReport.",
      responses: { 202: jsonResponse(acceptedAs('recover', RecoveryReportSchema, 'Recover'), 'recovering in the background'), 423: errors[423] },
    }),
    (c) =>
      accepted(
        c,
        tracker.start({ kind: 'recover', scope: { dataDir: true }, title: 'recover unfinished operations' }, async () => {
          const r = await lib.recover();
          await watch.refreshAll();
          return r;
        }),
      ),
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/catalog/repair',
      operationId: 'repairCatalog',
      'x-vmsnap-kinds': ['catalog-repair'],
      tags,
      summary: 'Replace a damaged catalog: rebuild it from the records beside the VMs, or restore the newest sound backup (202: an operation over the whole data dir)',
      description:
        "What `vmsnap recover --rebuild-catalog` and `--from-backup` do: the old catalog is kept aside, never deleted; then recovery finishes what the records carried. `dryRun` only reports. The server stays up through a damaged catalog (every other route answers CATALOG_ERROR) and reopens the new one; a missing catalog stops the server from starting, so that case is the CLI's. Runs alone: refused (423) while the server runs another operation. The operation's result is a CatalogRepairReport.",
      request: { body: jsonBody(CatalogRepairBody) },
      responses: { 202: jsonResponse(acceptedAs('catalog-repair', CatalogRepairReportSchema, 'CatalogRepair'), 'repairing in the background'), 400: errors[400], 423: errors[423] },
    }),
    (c) => {
      const { mode, dryRun = false } = c.req.valid('json');
      const title = `${dryRun ? 'dry run: ' : ''}${mode === 'rebuild' ? 'rebuild the catalog from the records' : 'restore the catalog from its newest backup'}`;
      return accepted(
        c,
        tracker.start({ kind: 'catalog-repair', scope: { dataDir: true }, title }, async () => {
          const r = await lib.repairOwnCatalog({ mode, dryRun });
          if (!dryRun) await watch.refreshAll();
          return r;
        }),
      );
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/vms/{vm}/fingerprint',
      operationId: 'fingerprintVm',
      'x-vmsnap-kinds': ['fingerprint'],
      tags,
      summary: "Fingerprint the content of a VM's snapshots that have none yet (202: an operation)",
      description: "Normally done in the background after each snapshot; `verify` with deep compares against these. The operation's result is a FingerprintResult.",
      request: { params: VmParams },
      responses: { 202: jsonResponse(acceptedAs('fingerprint', FingerprintResultSchema, 'Fingerprint'), 'fingerprinting in the background'), 404: errors[404], 423: errors[423] },
    }),
    (c) => {
      const vm = lib.vms.get(c.req.valid('param').vm);
      const op = tracker.start({ kind: 'fingerprint', scope: { vm }, title: `fingerprint the snapshots of ${vm.name}` }, async () => ({
        vm: vm.name,
        fingerprinted: await lib.fingerprint(vm.id),
      }));
      return accepted(c, op);
    },
  );

  return app;
}
