import { createRoute, z } from '@hono/zod-openapi';
import type { PolicyPatch } from '../../contract/views.js';
import { errors, jsonBody, jsonResponse, newRouter, type ApiDeps } from '../deps.js';
import { acceptedAs, PolicyBody, PolicyRunAllSchema, PolicyRunResultSchema, PolicySchema, PruneSchema, RunPolicyBody, SnapshotParams, SnapshotSchema, VmParams } from '../schemas.js';
import { accepted } from './accepted.js';

const tags = ['Policies'];

/** Snapshot policies (set, show, list, remove, run), prune, and protection of snapshots. */
export function policyRoutes(d: ApiDeps) {
  const { lib, tracker, watch } = d;
  const app = newRouter();

  app.openapi(
    createRoute({
      method: 'get',
      path: '/policies',
      operationId: 'listPolicies',
      tags,
      summary: 'Every VM’s snapshot policy',
      responses: { 200: jsonResponse(z.array(PolicySchema), 'the policies') },
    }),
    (c) => c.json(lib.policies.list(), 200),
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/vms/{vm}/policy',
      operationId: 'getPolicy',
      tags,
      summary: "A VM's policy: schedule, rules, next runs, last result",
      request: { params: VmParams },
      responses: { 200: jsonResponse(PolicySchema, 'the policy'), 404: errors[404] },
    }),
    (c) => c.json(lib.policies.show(c.req.valid('param').vm), 200),
  );

  app.openapi(
    createRoute({
      method: 'put',
      path: '/vms/{vm}/policy',
      operationId: 'setPolicy',
      tags,
      summary: "Set a VM's policy, or change the fields given of the one it has",
      description:
        'A new policy needs a schedule. Fields left out keep their value; a keep rule (or maxBytes) of 0 or null is removed. A new or changed schedule never fires for a slot before it.',
      request: { params: VmParams, body: jsonBody(PolicyBody, true) },
      responses: { 200: jsonResponse(PolicySchema, 'the policy now'), 400: errors[400], 404: errors[404] },
    }),
    (c) => {
      const vm = lib.vms.get(c.req.valid('param').vm);
      const b = c.req.valid('json');
      const patch: PolicyPatch = {};
      for (const [k, v] of Object.entries(b) as [keyof PolicyPatch, PolicyPatch[keyof PolicyPatch]][]) if (v !== undefined) Object.assign(patch, { [k]: v });
      const p = lib.policies.set(vm.id, patch);
      void watch.refresh(vm.id, { snapshots: true });
      return c.json(p, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/vms/{vm}/policy',
      operationId: 'removePolicy',
      tags,
      summary: "Remove a VM's policy (the snapshots it took stay; nothing prunes them any more)",
      request: { params: VmParams },
      responses: { 200: jsonResponse(z.object({ vm: z.string(), snapshotsLeft: z.number().int() }), 'removed'), 404: errors[404] },
    }),
    (c) => {
      const vm = lib.vms.get(c.req.valid('param').vm);
      const r = lib.policies.remove(vm.id);
      void watch.refresh(vm.id, { snapshots: true });
      return c.json(r, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/vms/{vm}/policy/run',
      operationId: 'runPolicy',
      'x-vmsnap-kinds': ['policy-run'],
      tags,
      summary: 'One policy pass: take the snapshot due (or one at once with now: true), then prune (202: an operation)',
      description: "Without a policy only expired snapshots are pruned; with now: true a VM without a policy is a 404 at once. The operation's result is a PolicyRunResult. Every VM: POST /policies/run.",
      request: { params: VmParams, body: jsonBody(RunPolicyBody) },
      responses: { 202: jsonResponse(acceptedAs('policy-run', PolicyRunResultSchema, 'PolicyRun'), 'running in the background'), 404: errors[404], 423: errors[423] },
    }),
    (c) => {
      const vm = lib.vms.get(c.req.valid('param').vm);
      const b = c.req.valid('json');
      // With now, a VM without a policy is a 404 at once rather than a failed job.
      if (b.now) lib.policies.show(vm.id);
      const op = tracker.start({ kind: 'policy-run', scope: { vm }, title: `policy pass of ${vm.name}${b.now ? ' (now)' : ''}` }, () => lib.policies.run(vm.id, { now: b.now ?? false }));
      return accepted(c, op);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/policies/run',
      operationId: 'runAllPolicies',
      'x-vmsnap-kinds': ['policy-run-all'],
      tags,
      summary: 'One policy pass for every VM with a policy or an expired snapshot (202: an operation over the whole data dir)',
      description:
        "What `vmsnap policy run` without a VM does. Runs alone: refused (423) while the server runs another operation. One VM's failure does not stop the others: its entry says failed. The operation's result is a list of PolicyRunResults.",
      request: { body: jsonBody(RunPolicyBody) },
      responses: { 202: jsonResponse(acceptedAs('policy-run-all', PolicyRunAllSchema, 'PolicyRunAll'), 'running in the background'), 400: errors[400], 423: errors[423] },
    }),
    (c) => {
      const now = c.req.valid('json').now ?? false;
      return accepted(
        c,
        tracker.start({ kind: 'policy-run-all', scope: { dataDir: true }, title: `policy pass of every VM${now ? ' (now)' : ''}` }, async () => {
          const r = await lib.policies.runAll({ now });
          await watch.refreshAll();
          return r;
        }),
      );
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/vms/{vm}/prune',
      operationId: 'getPrunePlan',
      tags,
      summary: 'What a prune would delete now, why (which rule), and about how much it would free; changes nothing',
      request: { params: VmParams },
      responses: { 200: jsonResponse(PruneSchema, 'the dry run'), 404: errors[404] },
    }),
    async (c) => c.json(await lib.policies.prunePlan(c.req.valid('param').vm), 200),
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/vms/{vm}/prune',
      operationId: 'pruneVm',
      'x-vmsnap-kinds': ['prune'],
      tags,
      summary: 'Delete what the policy no longer keeps and what has expired (202: an operation)',
      description: "The operation's result is a Prune: what was deleted, why, and the bytes freed. GET first for the dry run.",
      request: { params: VmParams },
      responses: { 202: jsonResponse(acceptedAs('prune', PruneSchema, 'Prune'), 'pruning in the background'), 404: errors[404], 423: errors[423] },
    }),
    (c) => {
      const vm = lib.vms.get(c.req.valid('param').vm);
      const op = tracker.start({ kind: 'prune', scope: { vm }, title: `prune ${vm.name}` }, () => lib.policies.prune(vm.id));
      return accepted(c, op);
    },
  );

  for (const protect of [true, false]) {
    app.openapi(
      createRoute({
        method: 'post',
        path: `/vms/{vm}/snapshots/{snap}/${protect ? 'protect' : 'unprotect'}`,
        operationId: protect ? 'protectSnapshot' : 'unprotectSnapshot',
        tags: ['Snapshots'],
        summary: protect
          ? 'Protect a snapshot: nothing deletes it (delete, delete all, prune, expiry) until it is unprotected'
          : 'Unprotect a snapshot: it can be deleted again',
        description: 'Works while the VM is busy: it changes one flag, which every delete checks as it starts.',
        request: { params: SnapshotParams },
        responses: { 200: jsonResponse(SnapshotSchema, 'the snapshot'), 404: errors[404], 409: errors[409] },
      }),
      (c) => {
        const p = c.req.valid('param');
        const s = protect ? lib.snapshots.protect(p.vm, p.snap) : lib.snapshots.unprotect(p.vm, p.snap);
        return c.json(s, 200);
      },
    );
  }

  return app;
}
