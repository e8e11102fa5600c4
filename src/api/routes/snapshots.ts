import { createRoute, z } from '@hono/zod-openapi';
import { VmsnapError } from '../../errors.js';
import { parseDuration } from '../../policy/duration.js';
import { protectedError } from '../../snapshot/protect.js';
import { buildTree, type TreeNode } from '../../snapshot/tree.js';
import type { SnapshotView } from '../../contract/views.js';
import { errors, jsonBody, jsonResponse, newRouter, refuseTakenName, type ApiDeps } from '../deps.js';
import { cloneNames } from '../../snapshot/clone.js';
import {
  AcceptedSchema,
  acceptedAs,
  CloneBody,
  CloneResultSchema,
  DeleteQuery,
  RevertBody,
  SnapshotParams,
  SnapshotSchema,
  SnapshotTreeSchema,
  TakeSnapshotBody,
  VmParams,
  type TreeNodeJson,
} from '../schemas.js';
import { accepted } from './accepted.js';
import { presentState } from './vms.js';

const tags = ['Snapshots'];

const toJson = (n: TreeNode<SnapshotView>): TreeNodeJson => ({
  id: n.snapshot.id,
  name: n.snapshot.name,
  current: n.snapshot.current,
  children: n.children.map(toJson),
});

/** Snapshots: take, list, tree, show, revert, delete, delete all, clone. */
export function snapshotRoutes(d: ApiDeps) {
  const { lib, tracker, watch } = d;
  const app = newRouter();

  app.openapi(
    createRoute({
      method: 'get',
      path: '/vms/{vm}/snapshots',
      operationId: 'listSnapshots',
      tags,
      summary: "List a VM's snapshots (oldest first)",
      request: { params: VmParams },
      responses: { 200: jsonResponse(z.array(SnapshotSchema), 'the snapshots'), 404: errors[404] },
    }),
    (c) => c.json(lib.snapshots.list(c.req.valid('param').vm), 200),
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/vms/{vm}/tree',
      operationId: 'getSnapshotTree',
      tags,
      summary: "A VM's snapshot tree, with where the VM is now",
      request: { params: VmParams },
      responses: { 200: jsonResponse(SnapshotTreeSchema, 'the tree'), 404: errors[404] },
    }),
    (c) => {
      const vm = lib.vms.get(c.req.valid('param').vm);
      const list = lib.snapshots.list(vm.id);
      return c.json(
        {
          vm: vm.name,
          current: list.find((s) => s.current)?.name ?? null,
          roots: buildTree(list).map(toJson),
          text: lib.snapshots.tree(vm.id),
        },
        200,
      );
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/vms/{vm}/snapshots/{snap}',
      operationId: 'getSnapshot',
      tags,
      summary: 'Show one snapshot',
      request: { params: SnapshotParams },
      responses: { 200: jsonResponse(SnapshotSchema, 'the snapshot'), 404: errors[404] },
    }),
    (c) => {
      const p = c.req.valid('param');
      return c.json(lib.snapshots.show(p.vm, p.snap), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/vms/{vm}/snapshots',
      operationId: 'takeSnapshot',
      'x-vmsnap-kinds': ['snapshot-create'],
      tags,
      summary: 'Take a snapshot: disks, memory (unless memory: false) and config (202: an operation)',
      request: { params: VmParams, body: jsonBody(TakeSnapshotBody, true) },
      responses: { 202: jsonResponse(AcceptedSchema, 'taking it in the background'), 400: errors[400], 404: errors[404], 409: errors[409], 423: errors[423] },
    }),
    (c) => {
      const vm = lib.vms.get(c.req.valid('param').vm);
      tracker.assertIdle(vm);
      const b = c.req.valid('json');
      // Refused here rather than in the operation: a name clash is the caller's to fix at once.
      if (lib.snapshots.list(vm.id).some((s) => s.name === b.name)) {
        throw new VmsnapError('ALREADY_EXISTS', `VM '${vm.name}' already has a snapshot named '${b.name}'`, {
          hint: 'snapshot names are unique per VM: choose another',
          details: { vm: vm.name, snapshot: b.name, field: 'name' },
        });
      }
      // A bad duration is the caller's to fix at once too (a 400), not a failed job.
      if (b.expire !== undefined) parseDuration(b.expire, 'expire');
      const op = tracker.start({ kind: 'snapshot-create', scope: { vm }, snapshot: b.name, title: `take snapshot ${b.name} of ${vm.name}` }, () =>
        lib.snapshots.create(vm.id, b.name, {
          ...(b.description !== undefined ? { description: b.description } : {}),
          ...(b.memory !== undefined ? { memory: b.memory } : {}),
          ...(b.expire !== undefined ? { expire: b.expire } : {}),
        }),
      );
      return accepted(c, op);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/vms/{vm}/snapshots/{snap}/revert',
      operationId: 'revertSnapshot',
      'x-vmsnap-kinds': ['snapshot-revert'],
      tags,
      summary: 'Revert to a snapshot (202: an operation)',
      description:
        'Without force, a revert that would discard the present state is refused at once with 409 WOULD_LOSE_DATA and `details.lost` listing what would be lost (see also GET /vms/{vm}/present-state).',
      request: { params: SnapshotParams, body: jsonBody(RevertBody) },
      responses: { 202: jsonResponse(AcceptedSchema, 'reverting in the background'), 404: errors[404], 409: errors[409], 423: errors[423] },
    }),
    async (c) => {
      const p = c.req.valid('param');
      const vm = lib.vms.get(p.vm);
      const snap = lib.snapshots.show(vm.id, p.snap);
      tracker.assertIdle(vm);
      const b = c.req.valid('json');
      if (!b.force) {
        const present = await presentState(d, vm.id);
        if (present.wouldLoseData) {
          const lost = present.lost;
          throw new VmsnapError('WOULD_LOSE_DATA', `reverting VM '${vm.name}' to '${snap.name}' would discard: ${lost.join('; ')}`, {
            hint: 'take a snapshot first to keep the present state, or send force: true to discard it',
            details: { vm: vm.name, snapshot: snap.name, lost },
          });
        }
      }
      const op = tracker.start({ kind: 'snapshot-revert', scope: { vm }, snapshot: snap.name, title: `revert ${vm.name} to ${snap.name}` }, () =>
        lib.snapshots.revert(vm.id, snap.id, { force: b.force ?? false, start: b.start ?? false }),
      );
      return accepted(c, op);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/vms/{vm}/snapshots/{snap}',
      operationId: 'deleteSnapshot',
      'x-vmsnap-kinds': ['snapshot-delete'],
      tags,
      summary: 'Delete a snapshot, merging its changes into what depends on it (202: an operation)',
      description:
        'A protected snapshot is refused (409) until unprotected. A snapshot that linked clones build on is refused (409) unless `detachClones=true`, which first copies its data into each clone.',
      request: { params: SnapshotParams, query: DeleteQuery },
      responses: { 202: jsonResponse(AcceptedSchema, 'deleting in the background'), 400: errors[400], 404: errors[404], 409: errors[409], 423: errors[423] },
    }),
    (c) => {
      const p = c.req.valid('param');
      const vm = lib.vms.get(p.vm);
      const snap = lib.snapshots.show(vm.id, p.snap);
      // A protected snapshot is refused at once (409), with the message every delete path gives.
      lib.snapshots.assertDeletable(vm.id, snap.id);
      const clones = c.req.valid('query').detachClones === 'true' ? ('detach' as const) : ('refuse' as const);
      const op = tracker.start({ kind: 'snapshot-delete', scope: { vm }, snapshot: snap.name, title: `delete snapshot ${snap.name} of ${vm.name}` }, () =>
        lib.snapshots.delete(vm.id, snap.id, { clones }),
      );
      return accepted(c, op);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/vms/{vm}/snapshots',
      operationId: 'deleteAllSnapshots',
      'x-vmsnap-kinds': ['snapshot-delete-all'],
      tags,
      summary: "Delete all of a VM's snapshots; the present state is kept (202: an operation)",
      description: 'Refused (409) while any snapshot is protected.',
      request: { params: VmParams, query: DeleteQuery },
      responses: { 202: jsonResponse(AcceptedSchema, 'deleting in the background'), 400: errors[400], 404: errors[404], 409: errors[409], 423: errors[423] },
    }),
    (c) => {
      const vm = lib.vms.get(c.req.valid('param').vm);
      const guarded = lib.snapshots.list(vm.id).filter((s) => s.protected);
      if (guarded.length > 0) throw protectedError(vm, guarded, true);
      const clones = c.req.valid('query').detachClones === 'true' ? ('detach' as const) : ('refuse' as const);
      const op = tracker.start({ kind: 'snapshot-delete-all', scope: { vm }, title: `delete all snapshots of ${vm.name}` }, () => lib.snapshots.deleteAll(vm.id, { clones }));
      return accepted(c, op);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/vms/{vm}/snapshots/{snap}/clone',
      operationId: 'cloneSnapshot',
      'x-vmsnap-kinds': ['clone'],
      tags,
      summary: 'Make new VMs from a snapshot: linked (instant) or full, optionally started (202: an operation)',
      description:
        "With `start`, a clone of a snapshot with memory carries on from that instant (a fork of the running machine) with a MAC address of its own. `count` N makes NAME-1 … NAME-N. A taken name is refused at once (409), before anything is written. The operation's result is a CloneResult.",
      request: { params: SnapshotParams, body: jsonBody(CloneBody, true) },
      responses: {
        202: jsonResponse(acceptedAs('clone', CloneResultSchema, 'Clone'), 'cloning in the background'),
        400: errors[400],
        404: errors[404],
        409: errors[409],
        423: errors[423],
      },
    }),
    (c) => {
      const p = c.req.valid('param');
      const vm = lib.vms.get(p.vm);
      const snap = lib.snapshots.show(vm.id, p.snap);
      tracker.assertIdle(vm);
      const b = c.req.valid('json');
      for (const name of cloneNames(b.name, b.count ?? 1)) refuseTakenName(d, name, 'choose another clone name');
      const op = tracker.start({ kind: 'clone', scope: { vm }, snapshot: snap.name, title: `clone ${vm.name}/${snap.name} as ${b.name}${(b.count ?? 1) > 1 ? ` ×${b.count}` : ''}` }, async () => {
        const r = await lib.snapshots.clone(vm.id, snap.id, b.name, { mode: b.mode ?? 'linked', count: b.count ?? 1, start: b.start ?? false });
        await Promise.all(r.clones.map((x) => watch.refresh(x.id)));
        return r;
      });
      return accepted(c, op);
    },
  );

  return app;
}
