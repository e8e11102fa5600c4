import { existsSync, rmSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { LayerRecord, VmRecord } from '../catalog/catalog.js';
import { withVm, type Context } from '../context.js';
import { VmsnapError } from '../errors.js';
import { resolveAccelerator, type Accelerator } from '../qemu/accel.js';
import { GuestAgentClient } from '../qemu/guest-agent.js';
import { launchQemu, runtimeFiles, type LaunchDisk } from '../qemu/launcher.js';
import { createImage, imageInfo } from '../qemu/qemu-img.js';
import { newId, newLayerId, newMacAddress } from '../util/ids.js';
import { validateConfig, validateName, type VmConfig } from './config.js';
import { DEMO_APPEND, ensureDemoImage } from './demo-image.js';
import { cleanRuntime, connectQmp, killQemu, livePid, probeRuntime, waitForExit, type PowerState, type RuntimeStatus } from './runtime.js';

/** A disk to give a new VM: a blank one of a size, or an existing image imported as its base layer. */
export type DiskSpec = { sizeBytes: number } | { importPath: string };

export interface CreateVmOptions {
  memoryMiB?: number;
  cpus?: number;
  disks?: DiskSpec[];
  kernel?: string;
  initrd?: string;
  append?: string;
  /** 'demo': the project's tiny test guest (built on first use). */
  image?: 'demo';
}

export interface SetVmOptions {
  memoryMiB?: number;
  cpus?: number;
  addDisks?: number[];
}

export interface VmSummary {
  id: string;
  name: string;
  state: PowerState;
  pid?: number;
  qemuStatus?: string;
  memoryMiB: number;
  cpus: number;
  disks: number;
  snapshots: number;
  currentSnapshot: string | null;
  createdAt: string;
  /** Set when a dead QEMU's leftovers were cleaned up while looking. */
  staleCleaned?: boolean;
}

export interface LayerInfo {
  id: string;
  path: string;
  format: 'qcow2' | 'raw';
  frozen: boolean;
  external: boolean;
  /** Bytes the file takes on disk. */
  bytes: number;
}

export interface DiskInfo {
  slot: string;
  sizeBytes: number;
  /** Active layer first, base last. */
  chain: LayerInfo[];
}

export interface VmInfo extends VmSummary {
  config: VmConfig;
  /** Bytes this VM's own layers and state files take (imported images not counted). */
  diskUsageBytes: number;
  diskChains: DiskInfo[];
  runtimeDir: string;
}

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  signal?: number;
}

export interface StartOptions {
  accel?: Accelerator;
  paused?: boolean;
  log?: (line: string) => void;
}

const DEFAULT_DISK = 1024 ** 3;

export function layerPath(layersDir: string, layerId: string): string {
  return join(layersDir, `${layerId}.qcow2`);
}

export function fileBytes(path: string): number {
  try {
    return statSync(path).blocks * 512;
  } catch {
    return 0;
  }
}

/** VM lifecycle: create, start, stop, pause, resume, status, rm, exec, set. */
export class VmService {
  constructor(private readonly ctx: Context) {}

  private get catalog() {
    return this.ctx.catalog;
  }

  get(nameOrId: string): VmRecord {
    return this.catalog.getVm(nameOrId);
  }

  private emitState(vm: VmRecord, state: string): void {
    this.ctx.events.emitEvent({ type: 'vm-state', vm: vm.name, vmId: vm.id, state });
  }

  async create(name: string, opts: CreateVmOptions = {}): Promise<VmInfo> {
    validateName(name, 'VM');
    if (this.catalog.findVm(name)) {
      throw new VmsnapError('ALREADY_EXISTS', `a VM named '${name}' already exists`, {
        hint: 'choose another name, or remove the old VM with vmsnap rm',
        details: { vm: name },
      });
    }
    for (const [field, path] of [['kernel', opts.kernel], ['initrd', opts.initrd]] as const) {
      if (path !== undefined && !existsSync(path)) {
        throw new VmsnapError('NOT_FOUND', `${field}: no such file '${path}'`, { details: { field, path } });
      }
    }
    if (opts.image !== undefined && (opts.kernel !== undefined || opts.initrd !== undefined)) {
      throw new VmsnapError('INVALID_ARGUMENT', '--image demo brings its own kernel and initrd: drop --kernel/--initrd', {
        details: { field: 'image' },
      });
    }
    const specs = opts.disks ?? (opts.image === 'demo' ? [{ sizeBytes: DEFAULT_DISK }] : []);
    // Read every imported image before anything is written: a bad path fails here.
    const imports = new Map<number, { path: string; format: 'qcow2' | 'raw'; size: number }>();
    for (const [i, spec] of specs.entries()) {
      if ('importPath' in spec) {
        const path = resolve(spec.importPath);
        if (!existsSync(path)) {
          throw new VmsnapError('NOT_FOUND', `disk: no such image '${spec.importPath}'`, {
            hint: 'give a size such as 1G for a blank disk, or the path of an existing qcow2 or raw image',
            details: { field: 'disk', path: spec.importPath },
          });
        }
        const info = await imageInfo(path, { forceShare: true }).catch((e: unknown) => {
          throw new VmsnapError('INVALID_ARGUMENT', `disk: '${spec.importPath}' is not a readable disk image: ${(e as Error).message}`, {
            hint: 'vmsnap imports qcow2 or raw images',
            details: { field: 'disk', path: spec.importPath },
          });
        });
        if (info.format !== 'qcow2' && info.format !== 'raw') {
          throw new VmsnapError('INVALID_ARGUMENT', `disk: '${spec.importPath}' is ${info.format}; vmsnap imports qcow2 or raw`, {
            hint: `convert it first: qemu-img convert -O qcow2 ${spec.importPath} disk.qcow2`,
            details: { field: 'disk', path: spec.importPath },
          });
        }
        imports.set(i, { path, format: info.format, size: info.virtualSize });
      }
    }
    const config = validateConfig({
      memoryMiB: opts.memoryMiB ?? 256,
      cpus: opts.cpus ?? 1,
      machine: 'q35',
      boot: {
        ...(opts.image ? { image: opts.image, append: DEMO_APPEND } : {}),
        ...(opts.kernel ? { kernel: resolve(opts.kernel) } : {}),
        ...(opts.initrd ? { initrd: resolve(opts.initrd) } : {}),
        ...(opts.append !== undefined ? { append: opts.append } : {}),
      },
      disks: specs.map((s, i) => ({ slot: `disk${i}`, sizeBytes: imports.get(i)?.size ?? ('sizeBytes' in s ? s.sizeBytes : 0) })),
      nics: [{ id: 'net0', mac: newMacAddress() }],
    });
    if (opts.image === 'demo') await ensureDemoImage(this.ctx.paths.imageCache);

    const vm: VmRecord = { id: newId(), name, config, createdAt: new Date().toISOString(), currentSnapshotId: null };
    const layers: LayerRecord[] = [];
    const active: Record<string, string> = {};
    const now = vm.createdAt;
    config.disks.forEach((disk, i) => {
      const imp = imports.get(i);
      let backingId: string | null = null;
      if (imp) {
        // The imported file is the frozen base layer, never written: writes go to an overlay.
        backingId = newLayerId();
        layers.push({ id: backingId, vmId: vm.id, slot: disk.slot, path: imp.path, format: imp.format, backingId: null, frozen: true, external: true, createdAt: now });
      }
      const id = newLayerId();
      layers.push({ id, vmId: vm.id, slot: disk.slot, path: layerPath(this.ctx.paths.layers, id), format: 'qcow2', backingId, frozen: false, external: false, createdAt: now });
      active[disk.slot] = id;
    });
    await this.writeNewLayers('create-vm', vm.id, layers, config, () => {
      this.catalog.insertVm(vm);
      for (const l of layers) this.catalog.insertLayer(l);
      for (const [slot, id] of Object.entries(active)) this.catalog.setActiveLayer(vm.id, slot, id);
    });
    return this.info(vm.id);
  }

  /**
   * Create the files of new layers under the journal, then commit their
   * catalog rows (and `commit`'s) in the transaction that finishes the operation.
   * On failure every file created is removed.
   */
  private async writeNewLayers(kind: string, vmId: string, layers: LayerRecord[], config: VmConfig, commit: () => void): Promise<void> {
    const created = layers.filter((l) => !l.external);
    const op = this.ctx.journal.begin(kind, vmId, { createFiles: created.map((l) => l.path) });
    try {
      const byId = new Map(layers.map((l) => [l.id, l]));
      for (const l of created) {
        const backing = l.backingId ? byId.get(l.backingId) ?? this.catalog.getLayer(l.backingId) : undefined;
        const size = config.disks.find((d) => d.slot === l.slot)?.sizeBytes;
        await createImage(l.path, {
          format: 'qcow2',
          ...(backing ? { backing: backing.path, backingFormat: backing.format } : { sizeBytes: size }),
        });
      }
      this.ctx.journal.step(op, 1);
      this.ctx.journal.finish(op, 'done', undefined, commit);
    } catch (e) {
      for (const l of created) rmSync(l.path, { force: true });
      this.ctx.journal.finish(op, 'rolled_back', e);
      throw e;
    }
  }

  async status(nameOrId: string): Promise<VmSummary> {
    const vm = this.get(nameOrId);
    return this.summary(vm, await probeRuntime(this.ctx.paths.run, vm.id));
  }

  async list(): Promise<VmSummary[]> {
    const vms = this.catalog.listVms();
    return Promise.all(vms.map(async (vm) => this.summary(vm, await probeRuntime(this.ctx.paths.run, vm.id))));
  }

  private summary(vm: VmRecord, rt: RuntimeStatus): VmSummary {
    const snaps = this.catalog.listSnapshots(vm.id);
    const current = vm.currentSnapshotId ? snaps.find((s) => s.id === vm.currentSnapshotId)?.name ?? null : null;
    return {
      id: vm.id,
      name: vm.name,
      state: rt.state,
      ...(rt.pid !== undefined ? { pid: rt.pid } : {}),
      ...(rt.qemuStatus !== undefined ? { qemuStatus: rt.qemuStatus } : {}),
      memoryMiB: vm.config.memoryMiB,
      cpus: vm.config.cpus,
      disks: vm.config.disks.length,
      snapshots: snaps.length,
      currentSnapshot: current,
      createdAt: vm.createdAt,
      ...(rt.staleCleaned ? { staleCleaned: true } : {}),
    };
  }

  async info(nameOrId: string): Promise<VmInfo> {
    const vm = this.get(nameOrId);
    const summary = this.summary(vm, await probeRuntime(this.ctx.paths.run, vm.id));
    const active = this.catalog.activeLayers(vm.id);
    const diskChains = vm.config.disks.map((d) => ({
      slot: d.slot,
      sizeBytes: d.sizeBytes,
      chain: active[d.slot]
        ? this.catalog.chain(active[d.slot]!).map((l) => ({
            id: l.id,
            path: l.path,
            format: l.format,
            frozen: l.frozen,
            external: l.external,
            bytes: fileBytes(l.path),
          }))
        : [],
    }));
    const own = this.catalog.listLayers(vm.id).filter((l) => !l.external);
    const states = this.catalog.listSnapshots(vm.id).flatMap((s) => (s.stateFile ? [s.stateFile] : []));
    const diskUsageBytes = [...own.map((l) => l.path), ...states].reduce((a, p) => a + fileBytes(p), 0);
    return { ...summary, config: vm.config, diskUsageBytes, diskChains, runtimeDir: runtimeFiles(this.ctx.paths.run, vm.id).dir };
  }

  /** The disks as QEMU opens them: each slot's chain from its active layer down. */
  launchDisks(vm: VmRecord): LaunchDisk[] {
    const active = this.catalog.activeLayers(vm.id);
    return vm.config.disks.map((d) => {
      const top = active[d.slot];
      if (!top) throw new VmsnapError('CATALOG_ERROR', `VM '${vm.name}' has no active layer for ${d.slot}`, { hint: "run 'vmsnap verify'" });
      const chain = this.catalog.chain(top);
      for (const l of chain) {
        if (!existsSync(l.path)) {
          throw new VmsnapError('NOT_FOUND', `layer file of ${d.slot} is missing: ${l.path}`, {
            hint: "run 'vmsnap verify' and 'vmsnap recover'",
          });
        }
      }
      return { slot: d.slot, chain: chain.map((l) => ({ id: l.id, path: l.path, format: l.format })) };
    });
  }

  async start(nameOrId: string, opts: StartOptions = {}): Promise<VmSummary> {
    const vm = this.get(nameOrId);
    return withVm(this.ctx, vm, 'start', async () => {
      await this.startLocked(vm, opts);
      return this.status(vm.id);
    });
  }

  /** Start QEMU for a VM whose lock the caller holds. Used by start and by revert. */
  async startLocked(vm: VmRecord, opts: StartOptions & { incomingDefer?: boolean } = {}): Promise<number> {
    const rt = await probeRuntime(this.ctx.paths.run, vm.id);
    if (rt.state !== 'stopped') {
      throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' is already ${rt.state === 'unknown' ? 'started' : rt.state}`, {
        hint: rt.state === 'paused' ? `resume it with 'vmsnap resume ${vm.name}'` : `stop it first with 'vmsnap stop ${vm.name}'`,
        details: { vm: vm.name, state: rt.state },
      });
    }
    const boot = vm.config.boot;
    let kernel = boot.kernel;
    let initrd = boot.initrd;
    if (boot.image === 'demo') {
      const img = await ensureDemoImage(this.ctx.paths.imageCache, opts.log);
      kernel = img.kernel;
      initrd = img.initrd;
    }
    const { accel } = await resolveAccelerator(opts.accel ?? 'auto', {
      imageCache: this.ctx.paths.imageCache,
      cacheFile: join(this.ctx.paths.home, 'kvm-probe.json'),
    });
    const { pid } = await launchQemu({
      vmId: vm.id,
      vmName: vm.name,
      config: vm.config,
      ...(kernel ? { kernel } : {}),
      ...(initrd ? { initrd } : {}),
      disks: this.launchDisks(vm),
      accel,
      files: runtimeFiles(this.ctx.paths.run, vm.id),
      paused: opts.paused ?? false,
      incomingDefer: opts.incomingDefer ?? false,
    });
    this.emitState(vm, opts.incomingDefer ? 'restoring' : opts.paused ? 'paused' : 'running');
    return pid;
  }

  /**
   * Power off: ACPI power button, wait up to timeoutMs for the guest to shut
   * down, then quit QEMU. `force` quits at once (like pulling the plug, but
   * QEMU still flushes its caches to the layer files).
   */
  async stop(nameOrId: string, opts: { force?: boolean; timeoutMs?: number } = {}): Promise<VmSummary> {
    const vm = this.get(nameOrId);
    return withVm(this.ctx, vm, 'stop', async () => {
      await this.stopLocked(vm, opts);
      return this.status(vm.id);
    });
  }

  async stopLocked(vm: VmRecord, opts: { force?: boolean; timeoutMs?: number } = {}): Promise<void> {
    const files = runtimeFiles(this.ctx.paths.run, vm.id);
    const pid = livePid(files);
    if (pid === undefined) {
      cleanRuntime(files);
      throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' is not running`, { details: { vm: vm.name, state: 'stopped' } });
    }
    const qmp = await connectQmp(this.ctx.paths.run, vm).catch(() => undefined);
    try {
      if (qmp && !opts.force) {
        const s = await qmp.execute<{ running: boolean; status: string }>('query-status');
        // A paused guest cannot hear the power button: let it run to shut down cleanly.
        if (!s.running && s.status === 'paused') await qmp.execute('cont');
        await qmp.execute('system_powerdown');
        if (await waitForExit(pid, opts.timeoutMs ?? 60_000)) return;
      }
      if (qmp && !qmp.closed) await qmp.execute('quit', {}, { timeoutMs: 5000 }).catch(() => undefined);
      if (!(await waitForExit(pid, 10_000))) await killQemu(files);
    } finally {
      await qmp?.close().catch(() => undefined);
      cleanRuntime(files);
      this.emitState(vm, 'stopped');
    }
  }

  async pause(nameOrId: string): Promise<VmSummary> {
    return this.setRunning(nameOrId, false);
  }

  async resume(nameOrId: string): Promise<VmSummary> {
    return this.setRunning(nameOrId, true);
  }

  private async setRunning(nameOrId: string, run: boolean): Promise<VmSummary> {
    const vm = this.get(nameOrId);
    return withVm(this.ctx, vm, run ? 'resume' : 'pause', async () => {
      const qmp = await connectQmp(this.ctx.paths.run, vm);
      try {
        const s = await qmp.execute<{ running: boolean; status: string }>('query-status');
        if (s.running === run) {
          throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' is already ${run ? 'running' : 'paused'}`, {
            details: { vm: vm.name, state: s.status },
          });
        }
        if (run && s.status !== 'paused') {
          throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' cannot be resumed from QEMU state '${s.status}'`);
        }
        await qmp.execute(run ? 'cont' : 'stop');
      } finally {
        await qmp.close();
      }
      this.emitState(vm, run ? 'running' : 'paused');
      return this.status(vm.id);
    });
  }

  /** Remove a stopped VM: its snapshots, its layers and state files. Imported images are left alone. */
  async remove(nameOrId: string): Promise<void> {
    const vm = this.get(nameOrId);
    await withVm(this.ctx, vm, 'rm', async () => {
      const layers = this.catalog.listLayers(vm.id);
      // A layer another VM builds on (a linked clone) must stay.
      const cloneIds = new Set(layers.flatMap((l) => this.catalog.childrenOfLayer(l.id).filter((c) => c.vmId !== vm.id).map((c) => c.vmId)));
      if (cloneIds.size > 0) {
        const names = [...cloneIds].map((id) => this.catalog.findVm(id)?.name ?? id);
        throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' has linked clones that build on its disks: ${names.join(', ')}`, {
          hint: `remove the clones first, or make them independent: vmsnap snapshot delete ${vm.name} SNAPSHOT --detach-clones`,
          details: { vm: vm.name, clones: names },
        });
      }
      const rt = await probeRuntime(this.ctx.paths.run, vm.id);
      if (rt.state !== 'stopped') {
        throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' is ${rt.state}: stop it before removing it`, {
          hint: `vmsnap stop ${vm.name}`,
          details: { vm: vm.name, state: rt.state },
        });
      }
      // Layers of other VMs this one builds on (it is a linked clone): they may be mergeable once it is gone.
      const released = new Map<string, string[]>();
      for (const l of layers) {
        const below = l.backingId ? this.catalog.findLayer(l.backingId) : undefined;
        if (below && below.vmId !== vm.id) released.set(below.vmId, [...(released.get(below.vmId) ?? []), below.id]);
      }
      const snaps = this.catalog.listSnapshots(vm.id);
      const files = [
        ...layers.filter((l) => !l.external).map((l) => l.path),
        ...snaps.flatMap((s) => (s.stateFile ? [s.stateFile] : [])),
      ];
      // Catalog rows go first (so no row ever names a missing file), then files; recovery rolls forward.
      const op = this.ctx.journal.begin('rm-vm', vm.id, { removeFiles: files });
      this.ctx.journal.step(op, 1, () => {
        this.catalog.clearActiveLayers(vm.id);
        // Unlink the tree first: a snapshot's parent must not go while a child names it.
        for (const s of snaps) this.catalog.updateSnapshot(s.id, { parentId: null });
        for (const s of snaps) this.catalog.deleteSnapshot(s.id);
        // Children before parents: a layer's backing must outlive it in the table.
        for (const l of [...layers].reverse()) this.catalog.setLayerBacking(l.id, null);
        for (const l of layers) this.catalog.deleteLayer(l.id);
        this.catalog.deleteVm(vm.id);
      });
      for (const f of files) rmSync(f, { force: true });
      this.ctx.journal.finish(op, 'done');
      return released;
    }).then(async (released) => {
      for (const [owner, layerIds] of released) await this.ctx.layersReleased(owner, layerIds);
    });
  }

  /** Change the hardware config of a stopped VM. */
  async set(nameOrId: string, opts: SetVmOptions): Promise<VmInfo> {
    const vm = this.get(nameOrId);
    if (opts.memoryMiB === undefined && opts.cpus === undefined && !opts.addDisks?.length) {
      throw new VmsnapError('INVALID_ARGUMENT', 'nothing to change', { hint: 'give --memory, --cpus or --add-disk' });
    }
    return withVm(this.ctx, vm, 'set', async () => {
      const rt = await probeRuntime(this.ctx.paths.run, vm.id);
      if (rt.state !== 'stopped') {
        throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' is ${rt.state}: its hardware can only be changed while it is stopped`, {
          hint: `vmsnap stop ${vm.name}`,
          details: { vm: vm.name, state: rt.state },
        });
      }
      const fresh = this.get(vm.id);
      const used = new Set(fresh.config.disks.map((d) => d.slot));
      const added = (opts.addDisks ?? []).map((sizeBytes) => {
        let n = 0;
        while (used.has(`disk${n}`)) n++;
        used.add(`disk${n}`);
        return { slot: `disk${n}`, sizeBytes };
      });
      const config = validateConfig({
        ...fresh.config,
        ...(opts.memoryMiB !== undefined ? { memoryMiB: opts.memoryMiB } : {}),
        ...(opts.cpus !== undefined ? { cpus: opts.cpus } : {}),
        disks: [...fresh.config.disks, ...added],
      });
      const now = new Date().toISOString();
      const layers: LayerRecord[] = added.map((d) => {
        const id = newLayerId();
        return { id, vmId: vm.id, slot: d.slot, path: layerPath(this.ctx.paths.layers, id), format: 'qcow2', backingId: null, frozen: false, external: false, createdAt: now };
      });
      await this.writeNewLayers('set-vm', vm.id, layers, config, () => {
        this.catalog.updateVmConfig(vm.id, config);
        for (const l of layers) {
          this.catalog.insertLayer(l);
          this.catalog.setActiveLayer(vm.id, l.slot, l.id);
        }
      });
      return this.info(vm.id);
    });
  }

  /** Run a command in the guest through the guest agent (waits for the agent to come up). */
  async exec(nameOrId: string, argv: string[], opts: { timeoutMs?: number; input?: string; agentWaitMs?: number } = {}): Promise<ExecResult> {
    const vm = this.get(nameOrId);
    if (argv.length === 0) throw new VmsnapError('INVALID_ARGUMENT', 'exec needs a command', { hint: 'vmsnap exec VM -- CMD [ARGS...]' });
    const agent = await this.agent(vm, opts.agentWaitMs);
    try {
      const [cmd, ...args] = argv;
      return await agent.exec(cmd!, args, {
        ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
        ...(opts.input !== undefined ? { input: opts.input } : {}),
      });
    } finally {
      await agent.close();
    }
  }

  /** A connected guest-agent client for a running VM. The caller closes it. */
  async agent(vm: VmRecord, waitMs = 90_000): Promise<GuestAgentClient> {
    const rt = await probeRuntime(this.ctx.paths.run, vm.id);
    if (rt.state !== 'running') {
      throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' is ${rt.state}: the guest agent only answers while it runs`, {
        hint: rt.state === 'paused' ? `vmsnap resume ${vm.name}` : `vmsnap start ${vm.name}`,
        details: { vm: vm.name, state: rt.state },
      });
    }
    const files = runtimeFiles(this.ctx.paths.run, vm.id);
    return GuestAgentClient.waitUntilReady(files.agentSocket, { timeoutMs: waitMs });
  }

  /** The serial console's socket and log, for `vmsnap console`. */
  console(nameOrId: string): { socket: string; log: string } {
    const vm = this.get(nameOrId);
    const files = runtimeFiles(this.ctx.paths.run, vm.id);
    if (livePid(files) === undefined) {
      throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' is not running`, { hint: `vmsnap start ${vm.name}` });
    }
    return { socket: files.consoleSocket, log: files.serialLog };
  }
}
