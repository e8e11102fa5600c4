import { createRoute, z } from '@hono/zod-openapi';
import type { ForwardConfig } from '../../contract/config.js';
import { VmsnapError } from '../../errors.js';
import { parseSshKeys } from '../../vm/seed.js';
import type { CreateVmOptions, DiskSpec } from '../../vm/service.js';
import { errorContent, errors, jsonBody, jsonResponse, newRouter, type ApiDeps } from '../deps.js';
import {
  AcceptedSchema,
  CreateVmBody,
  ExecBody,
  ExecResultSchema,
  ImportLibvirtBody,
  LibvirtImportResultSchema,
  PresentStateSchema,
  SetVmBody,
  StartBody,
  StopBody,
  VerifyBody,
  VmInfoSchema,
  VmParams,
  VmSummarySchema,
} from '../schemas.js';
import { accepted } from './accepted.js';

const tags = ['VMs'];

/** VMs: list, create, show, change, remove, and their power lifecycle. */
export function vmRoutes(d: ApiDeps) {
  const { lib, tracker, watch } = d;
  const app = newRouter();

  app.openapi(
    createRoute({
      method: 'get',
      path: '/vms',
      operationId: 'listVms',
      tags,
      summary: 'List VMs with their power state',
      responses: { 200: jsonResponse(z.array(VmSummarySchema), 'every VM') },
    }),
    async (c) => c.json(await lib.vms.list(), 200),
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/vms',
      operationId: 'createVm',
      'x-vmsnap-kinds': ['vm-create'],
      tags,
      summary: 'Create a VM',
      description: "Blank disks are created empty; `image: 'demo'` gives the built-in test guest. Host paths (kernel, initrd, importPath) are accepted only under the server's --allow-path dirs.",
      request: { body: jsonBody(CreateVmBody, true) },
      responses: { 201: jsonResponse(VmInfoSchema, 'the new VM'), 400: errors[400], 403: errors[403], 409: errors[409] },
    }),
    async (c) => {
      const b = c.req.valid('json');
      const disks: DiskSpec[] | undefined = b.disks?.map((s, i) =>
        'importPath' in s ? { importPath: d.hostPaths.check(s.importPath, `disks.${i}.importPath`) } : { sizeBytes: s.sizeBytes },
      );
      const opts: CreateVmOptions = {
        ...(b.image ? { image: b.image } : {}),
        ...(b.memoryMiB !== undefined ? { memoryMiB: b.memoryMiB } : {}),
        ...(b.cpus !== undefined ? { cpus: b.cpus } : {}),
        ...(disks ? { disks } : {}),
        ...(b.kernel !== undefined ? { kernel: d.hostPaths.check(b.kernel, 'kernel') } : {}),
        ...(b.initrd !== undefined ? { initrd: d.hostPaths.check(b.initrd, 'initrd') } : {}),
        ...(b.append !== undefined ? { append: b.append } : {}),
        ...(b.firmware !== undefined ? { firmware: b.firmware } : {}),
        ...(b.forwards !== undefined ? { forwards: b.forwards.map(forwardOf) } : {}),
        ...(b.bridge !== undefined ? { bridge: b.bridge } : {}),
        ...(b.display !== undefined ? { display: b.display } : {}),
        ...(b.userData !== undefined ? { userData: b.userData } : {}),
        ...(b.sshKeys !== undefined ? { sshKeys: parseSshKeys(b.sshKeys.join('\n'), 'sshKeys') } : {}),
        ...(b.hostname !== undefined ? { hostname: b.hostname } : {}),
      };
      const info = await lib.vms.create(b.name, opts);
      void watch.refresh(info.id, { snapshots: true });
      return c.json(info, 201, { Location: `/api/vms/${encodeURIComponent(info.name)}` });
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/vms/import-libvirt',
      operationId: 'importLibvirtDomain',
      'x-vmsnap-kinds': ['import-libvirt'],
      tags,
      summary: 'Make a VM of a libvirt domain (its virsh dumpxml)',
      description:
        "Memory, vCPUs, kernel boot, disks (their images and backing chains adopted read-only as base layers, never written) and NICs with their MACs. Refused (400, each item in `details.unsupported`) while anything cannot be carried over, unless `ignoreUnsupported`. Every file the XML names must be under one of the server's --allow-path dirs.",
      request: { body: jsonBody(ImportLibvirtBody, true) },
      responses: { 201: jsonResponse(LibvirtImportResultSchema, 'the new VM and what was not carried over'), 400: errors[400], 403: errors[403], 409: errors[409] },
    }),
    async (c) => {
      const b = c.req.valid('json');
      const r = await lib.vms.importLibvirt(b.xml, {
        ...(b.name !== undefined ? { name: b.name } : {}),
        ...(b.ignoreUnsupported !== undefined ? { ignoreUnsupported: b.ignoreUnsupported } : {}),
        checkPath: (path, field) => {
          d.hostPaths.check(path, field);
        },
      });
      void watch.refresh(r.vm.id, { snapshots: true });
      return c.json(r, 201, { Location: `/api/vms/${encodeURIComponent(r.vm.name)}` });
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/vms/{vm}',
      operationId: 'getVm',
      tags,
      summary: 'Show a VM: state, config, disk chains',
      request: { params: VmParams },
      responses: { 200: jsonResponse(VmInfoSchema, 'the VM'), 404: errors[404] },
    }),
    async (c) => c.json(await lib.vms.info(c.req.valid('param').vm), 200),
  );

  app.openapi(
    createRoute({
      method: 'patch',
      path: '/vms/{vm}',
      operationId: 'setVm',
      'x-vmsnap-kinds': ['vm-set'],
      tags,
      summary: "Change a stopped VM's hardware (memory, CPUs, added disks)",
      request: { params: VmParams, body: jsonBody(SetVmBody, true) },
      responses: { 200: jsonResponse(VmInfoSchema, 'the changed VM'), 400: errors[400], 404: errors[404], 409: errors[409], 423: errors[423] },
    }),
    async (c) => {
      const vm = lib.vms.get(c.req.valid('param').vm);
      tracker.assertIdle(vm);
      const b = c.req.valid('json');
      const info = await lib.vms.set(vm.id, {
        ...(b.memoryMiB !== undefined ? { memoryMiB: b.memoryMiB } : {}),
        ...(b.cpus !== undefined ? { cpus: b.cpus } : {}),
        ...(b.addDisks !== undefined ? { addDisks: b.addDisks } : {}),
        ...(b.firmware !== undefined ? { firmware: b.firmware } : {}),
        ...(b.forwards !== undefined ? { forwards: b.forwards.map(forwardOf) } : {}),
        ...(b.bridge !== undefined ? { bridge: b.bridge } : {}),
        ...(b.display !== undefined ? { display: b.display } : {}),
      });
      void watch.refresh(vm.id);
      return c.json(info, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/vms/{vm}',
      operationId: 'removeVm',
      'x-vmsnap-kinds': ['vm-rm'],
      tags,
      summary: 'Remove a stopped VM with all its snapshots and files',
      request: { params: VmParams },
      responses: { 200: jsonResponse(z.object({ removed: z.string() }), 'removed'), 404: errors[404], 409: errors[409], 423: errors[423] },
    }),
    async (c) => {
      const vm = lib.vms.get(c.req.valid('param').vm);
      tracker.assertIdle(vm);
      await lib.vms.remove(vm.id);
      watch.removed(vm.id);
      return c.json({ removed: vm.name }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/vms/{vm}/start',
      operationId: 'startVm',
      'x-vmsnap-kinds': ['vm-start'],
      tags,
      summary: 'Start a VM (202: an operation)',
      request: { params: VmParams, body: jsonBody(StartBody) },
      responses: { 202: jsonResponse(AcceptedSchema, 'started in the background; follow the operation'), 404: errors[404], 409: errors[409], 423: errors[423] },
    }),
    async (c) => {
      const vm = lib.vms.get(c.req.valid('param').vm);
      tracker.assertIdle(vm);
      const b = c.req.valid('json');
      const s = await lib.vms.status(vm.id);
      if (s.state !== 'stopped') {
        throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' is already ${s.state === 'unknown' ? 'started' : s.state}`, {
          hint: s.state === 'paused' ? 'resume it instead' : 'stop it first',
          details: { vm: vm.name, state: s.state },
        });
      }
      const op = tracker.start({ kind: 'vm-start', scope: { vm }, title: `start ${vm.name}` }, () =>
        lib.vms.start(vm.id, { paused: b.paused ?? false, ...(b.accel ? { accel: b.accel } : {}) }),
      );
      return accepted(c, op);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/vms/{vm}/stop',
      operationId: 'stopVm',
      'x-vmsnap-kinds': ['vm-stop'],
      tags,
      summary: 'Power a VM off: ACPI shutdown, forced after the timeout (202: an operation)',
      request: { params: VmParams, body: jsonBody(StopBody) },
      responses: { 202: jsonResponse(AcceptedSchema, 'stopping in the background'), 404: errors[404], 409: errors[409], 423: errors[423] },
    }),
    async (c) => {
      const vm = lib.vms.get(c.req.valid('param').vm);
      tracker.assertIdle(vm);
      const b = c.req.valid('json');
      const s = await lib.vms.status(vm.id);
      if (s.state === 'stopped') {
        throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' is not running`, { details: { vm: vm.name, state: 'stopped' } });
      }
      const op = tracker.start({ kind: 'vm-stop', scope: { vm }, title: `${b.force ? 'power off' : 'shut down'} ${vm.name}` }, () =>
        lib.vms.stop(vm.id, { force: b.force ?? false, timeoutMs: (b.timeoutSeconds ?? 60) * 1000 }),
      );
      return accepted(c, op);
    },
  );

  for (const action of ['pause', 'resume'] as const) {
    app.openapi(
      createRoute({
        method: 'post',
        path: `/vms/{vm}/${action}`,
        operationId: `${action}Vm`,
        tags,
        summary: action === 'pause' ? "Pause a VM's vCPUs" : 'Resume a paused VM',
        request: { params: VmParams },
        responses: { 200: jsonResponse(VmSummarySchema, 'the VM now'), 404: errors[404], 409: errors[409], 423: errors[423] },
      }),
      async (c) => {
        const vm = lib.vms.get(c.req.valid('param').vm);
        tracker.assertIdle(vm);
        const s = action === 'pause' ? await lib.vms.pause(vm.id) : await lib.vms.resume(vm.id);
        void watch.refresh(vm.id);
        return c.json(s, 200);
      },
    );
  }

  app.openapi(
    createRoute({
      method: 'post',
      path: '/vms/{vm}/exec',
      operationId: 'execInVm',
      tags,
      summary: 'Run a command in the guest through its guest agent',
      description: 'argv goes to the guest agent of the VM, never to a host shell.',
      request: { params: VmParams, body: jsonBody(ExecBody, true) },
      responses: { 200: jsonResponse(ExecResultSchema, "the command's exit code and output"), 400: errors[400], 404: errors[404], 409: errors[409] },
    }),
    async (c) => {
      const vm = lib.vms.get(c.req.valid('param').vm);
      const b = c.req.valid('json');
      const r = await lib.vms.exec(vm.id, b.argv, {
        ...(b.input !== undefined ? { input: b.input } : {}),
        ...(b.timeoutSeconds !== undefined ? { timeoutMs: b.timeoutSeconds * 1000 } : {}),
        agentWaitMs: 30_000,
      });
      return c.json(r, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/vms/{vm}/present-state',
      operationId: 'getPresentState',
      tags: ['Snapshots'],
      summary: 'What a revert would discard now (for confirmation dialogs)',
      request: { params: VmParams },
      responses: { 200: jsonResponse(PresentStateSchema, 'the present state'), 404: errors[404] },
    }),
    async (c) => {
      const vm = lib.vms.get(c.req.valid('param').vm);
      return c.json(await presentState(d, vm.id), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/vms/{vm}/verify',
      operationId: 'verifyVm',
      'x-vmsnap-kinds': ['verify'],
      tags,
      summary: "Check a VM's catalog rows, files and backing chains (202: an operation)",
      request: { params: VmParams, body: jsonBody(VerifyBody) },
      responses: { 202: jsonResponse(AcceptedSchema, 'verifying in the background'), 404: errors[404], 423: errors[423] },
    }),
    async (c) => {
      const vm = lib.vms.get(c.req.valid('param').vm);
      const b = c.req.valid('json');
      const op = tracker.start({ kind: 'verify', scope: { vm }, title: `verify ${vm.name}${b.deep ? ' (deep)' : ''}` }, () =>
        lib.verify(vm.id, { deep: b.deep ?? false }),
      );
      return accepted(c, op);
    },
  );

  const wsRoutes = [
    {
      kind: 'console',
      operationId: 'openConsole',
      summary: "The VM's serial console as a WebSocket",
      description:
        "Upgrade to a WebSocket (binary frames both ways): the bytes of the VM's serial console, starting with up to 8 KiB of its recent output, and keystrokes to it. Same rules as the rest of the API: without a token only loopback Host names; with one, `Authorization: Bearer` or, from a browser, the WebSocket subprotocol `vmsnap.token.<token>` offered beside `vmsnap` (the server chooses `vmsnap`). A browser's Origin must be this server's. QEMU serves one console client at a time: a second waits until the first leaves. 409 when the VM is not running.",
    },
    {
      kind: 'vnc',
      operationId: 'openVnc',
      summary: "The VM's screen (VNC/RFB) as a WebSocket",
      description:
        "Upgrade to a WebSocket carrying the RFB protocol of the VM's VNC screen (what noVNC speaks), for a VM created or set with `display: vnc`; the same token and Origin rules as /console. 409 when the VM has no screen or is not running.",
    },
  ] as const;
  for (const w of wsRoutes) {
    app.openapi(
      createRoute({
        method: 'get',
        path: `/vms/{vm}/${w.kind}`,
        operationId: w.operationId,
        tags,
        summary: w.summary,
        description: w.description,
        request: { params: VmParams },
        responses: {
          101: { description: 'switching to the WebSocket protocol' },
          401: errors[401],
          403: errors[403],
          404: errors[404],
          409: errors[409],
          426: errorContent('a plain HTTP request: this endpoint is a WebSocket (send Upgrade: websocket)'),
        },
      }),
      // Upgrades are taken by the HTTP server before they get here (src/api/consoles.ts).
      (c) => c.json({ error: { code: 'UPGRADE_REQUIRED', message: `${c.req.path} is a WebSocket: connect with Upgrade: websocket`, details: {} } }, 426),
    );
  }

  return app;
}

/** A forward as the API takes it, with the CLI's defaults (tcp, 127.0.0.1); the config schema checks the rest. */
function forwardOf(f: { proto?: 'tcp' | 'udp' | undefined; hostAddr?: string | undefined; hostPort: number; guestPort: number }): ForwardConfig {
  return { proto: f.proto ?? 'tcp', hostAddr: f.hostAddr ?? '127.0.0.1', hostPort: f.hostPort, guestPort: f.guestPort };
}

/** What a revert would discard now, and whether a revert without force is refused. */
export async function presentState(d: ApiDeps, vmId: string) {
  const p = await d.lib.snapshots.presentStateChanges(vmId);
  return { running: p.running, lost: p.lost, wouldLoseData: p.wouldLoseData };
}
