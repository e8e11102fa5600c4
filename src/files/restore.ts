import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { z } from 'zod';
import type { SnapshotRecord, VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import type { RestorePlanView, RestoreResult } from '../contract/files.js';
import { VmsnapError } from '../errors.js';
import { defineOperation } from '../operations/define.js';
import { removeUnreferenced } from '../operations/recovery.js';
import { runOperation, withVm } from '../operations/runner.js';
import type { GuestAgentClient } from '../qemu/guest-agent.js';
import { commitImage } from '../qemu/qemu-img.js';
import { probeRuntime } from '../qemu/runtime.js';
import { createOverlayFiles, OverlaySwitchSchema, planOverlays } from '../snapshot/overlays.js';
import { resolveSnapshot } from '../snapshot/views.js';
import { guestAgent } from '../vm/guest.js';
import type { FilesOptions } from './copy-out.js';
import type { FindEntry } from './guestfs.js';
import { baseName, type NamedFilesystem, normalizePath, parentOf, resolvePath } from './namespace.js';
import { diskLayers, readerPoint, snapshotPoint } from './read-op.js';
import { FilesReader, type Located } from './reader.js';

/**
 * Put a file or a tree from a snapshot back into the present VM.
 *
 * - While it runs: through its guest agent, never behind the guest's back. The
 *   content is written beside the target (a hidden staging file, or a tar
 *   unpacked into a staging directory), then renamed into place (a directory
 *   is merged into an existing one: files added since are kept).
 * - While it is off: into its active layers, through a writable appliance.
 *   The writes go to temporary overlays on the active layers (the snapshot's
 *   layers are opened read-only beside them), which are committed into the
 *   active layers once the copy is complete and synced: killed before that,
 *   the VM is exactly as before.
 *
 * First it says what it would overwrite; without `force` a restore that would
 * replace anything is refused (WOULD_LOSE_DATA, with the paths). The VM's lock
 * is held throughout (it writes the present state).
 */

const RestorePlan = z.object({
  via: z.enum(['guest-agent', 'offline']),
  snapshotId: z.string(),
  source: z.string(),
  target: z.string(),
  /** Offline: the temporary overlays on the active layers. */
  switches: z.array(OverlaySwitchSchema),
  createFiles: z.array(z.string()),
  /** Online: guest paths of the staging file, directory and tar. */
  staging: z.array(z.string()),
});
type RestorePlan = z.infer<typeof RestorePlan>;

/**
 * Steps: 1 = the content is complete beside the target (online: staged in the
 * guest; offline: written into the overlays and synced), 2 = in place
 * (online: renamed; offline: committed into the active layers).
 */
export const restoreFileOp = defineOperation({
  kind: 'restore-file',
  plan: RestorePlan,
  steps: 2,
  faults: [],
  onFailure: 'rollback',
  files: (p) => p.createFiles,
  async recover(ctx, op, vm) {
    const plan = op.plan;
    if (plan.via === 'offline') {
      if (op.step >= 1 && vm) {
        // The overlays hold the whole restore: commit again (idempotent) so the active layers have it all.
        for (const s of plan.switches) if (existsSync(s.newPath)) await commitImage(s.newPath);
        removeUnreferenced(ctx, plan.createFiles);
        op.finish('done');
        return { outcome: 'rolled_forward' };
      }
      removeUnreferenced(ctx, plan.createFiles);
      op.finish('rolled_back');
      return { outcome: 'rolled_back' };
    }
    const note = vm ? await removeStaging(ctx, vm, plan.staging) : 'VM gone';
    const outcome = op.step >= 2 ? 'rolled_forward' : 'rolled_back';
    op.finish(outcome === 'rolled_forward' ? 'done' : 'rolled_back', note);
    return { outcome, ...(note ? { note } : {}) };
  },
});

/** Remove staging files from the guest, if it runs; else say where they are. */
async function removeStaging(ctx: Context, vm: VmRecord, staging: string[]): Promise<string | undefined> {
  if (staging.length === 0) return undefined;
  if ((await probeRuntime(ctx.paths.run, vm.id)).state === 'running') {
    try {
      const agent = await guestAgent(ctx, vm, 30_000);
      try {
        await guestSh(agent, 'rm -rf -- "$@"', staging);
        return undefined;
      } finally {
        await agent.close();
      }
    } catch {
      /* said below */
    }
  }
  return `staging files may be left in the guest: ${staging.join(', ')}`;
}

export interface RestoreOptions extends FilesOptions {
  /** Where to put it in the present state (default: where it was). */
  to?: string;
  /** Replace what exists there. */
  force?: boolean;
  /** Only say what would be done. */
  dryRun?: boolean;
  /** Asked (with the appliance open) when the restore would overwrite something and `force` is not set. */
  confirm?: (view: RestorePlanView) => Promise<boolean>;
  /** An open reader holding the snapshot (a files session): a running VM's restore reads from it instead of booting another appliance. */
  session?: { reader: FilesReader; point: number };
}

async function guestSh(agent: GuestAgentClient, script: string, args: string[] = [], timeoutMs = 600_000): Promise<string> {
  const r = await agent.exec('/bin/sh', ['-c', script, 'vmsnap', ...args], { timeoutMs });
  if (r.exitCode !== 0) {
    throw new VmsnapError('GUEST_AGENT_ERROR', `in the guest: ${r.stderr.trim() || r.stdout.trim() || `exit code ${r.exitCode}`}`, { details: { exitCode: r.exitCode } });
  }
  return r.stdout;
}

type PresentType = 'file' | 'dir' | 'symlink' | 'none';
interface PresentState {
  type: PresentType;
  parentIsDir: boolean;
  /** Under a directory target: paths relative to it, with whether each is a directory. */
  entries: { path: string; dir: boolean }[];
}

/** What a restore of `source` (with its tree) onto `present` would replace. Pure; unit-tested. */
export function overwritesOf(target: string, sourceType: 'file' | 'dir' | 'symlink', tree: { path: string; dir: boolean }[], present: PresentState): string[] {
  if (present.type === 'none') return [];
  if (sourceType !== 'dir' || present.type !== 'dir') return [present.type === 'dir' ? `${target}/ (a directory, with everything in it)` : target];
  const there = new Map(present.entries.map((e) => [e.path, e.dir]));
  const out: string[] = [];
  for (const e of tree) {
    const dir = there.get(e.path);
    if (dir === undefined) continue;
    if (!e.dir) out.push(dir ? `${target}/${e.path}/ (a directory, with everything in it)` : `${target}/${e.path}`);
    else if (!dir) out.push(`${target}/${e.path}`);
  }
  return out.sort();
}

const PROBE = `T="$1"
if [ -L "$T" ]; then echo "T symlink"; elif [ -d "$T" ]; then echo "T dir"; elif [ -e "$T" ]; then echo "T file"; else echo "T none"; fi
P="\${T%/*}"; [ -n "$P" ] || P=/
if [ -d "$P" ]; then echo "P dir"; else echo "P none"; fi
if [ -d "$T" ] && [ ! -L "$T" ]; then
  find "$T" -mindepth 1 -type d | while IFS= read -r p; do printf 'd %s\\n' "\${p#"$T"/}"; done
  find "$T" -mindepth 1 ! -type d | while IFS= read -r p; do printf 'f %s\\n' "\${p#"$T"/}"; done
fi`;

function parseProbe(out: string): PresentState {
  const st: PresentState = { type: 'none', parentIsDir: false, entries: [] };
  for (const line of out.split('\n')) {
    if (line.startsWith('T ')) st.type = line.slice(2) as PresentType;
    else if (line.startsWith('P ')) st.parentIsDir = line.slice(2) === 'dir';
    else if (line.startsWith('d ') || line.startsWith('f ')) st.entries.push({ path: line.slice(2), dir: line[0] === 'd' });
  }
  return st;
}

/** Mount points of a running guest by device, from its /proc/mounts. */
export function parseMounts(text: string): { device: string; mountpoint: string }[] {
  const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return text
    .split('\n')
    .map((l) => l.split(' '))
    .filter((f) => f.length >= 2)
    .map((f) => ({ device: unescape(f[0]!), mountpoint: unescape(f[1]!) }));
}

/** Where a path of a filesystem is in the running guest. */
function guestPathOf(fs: NamedFilesystem, inner: string, mounts: { device: string; mountpoint: string }[], target: string): string {
  const mp = fs.mountpoint && fs.name === fs.mountpoint ? (mounts.some((m) => m.mountpoint === fs.mountpoint) ? fs.mountpoint : undefined) : mounts.find((m) => m.device === fs.device)?.mountpoint;
  if (mp === undefined) {
    throw new VmsnapError('INVALID_STATE', `the running guest has ${fs.name} (${fs.device}) mounted nowhere, so ${target} cannot be written through its agent`, {
      hint: 'mount it in the guest, or stop the VM: a stopped VM is restored into its disk directly',
      details: { filesystem: fs.name, device: fs.device },
    });
  }
  return mp === '/' ? inner : inner === '/' ? mp : `${mp}${inner}`;
}

function sourceTree(entries: FindEntry[]): { path: string; dir: boolean }[] {
  return entries.filter((e) => !e.undecodable).map((e) => ({ path: e.path, dir: e.type === 'dir' }));
}

function refuseOverwrite(view: RestorePlanView): void {
  if (view.overwrites.length === 0) return;
  const shown = view.overwrites.slice(0, 10).join(', ');
  throw new VmsnapError('WOULD_LOSE_DATA', `restoring ${view.source} from '${view.snapshot}' to ${view.target} would overwrite: ${shown}${view.overwrites.length > 10 ? ` and ${view.overwrites.length - 10} more` : ''}`, {
    hint: 'pass --force to replace them, or restore elsewhere with --to',
    details: { overwrites: view.overwrites, target: view.target },
  });
}

export async function restoreFromSnapshot(ctx: Context, vmName: string, snapName: string, path: string, o: RestoreOptions = {}): Promise<RestoreResult> {
  const source = normalizePath(path, 'path');
  const target = normalizePath(o.to ?? path, 'to');
  const vm0 = ctx.catalog.getVm(vmName);
  resolveSnapshot(ctx, vm0, snapName);
  return withVm(ctx, vm0, `restore-file ${source}`, async () => {
    const t0 = performance.now();
    const vm = ctx.catalog.getVm(vm0.id);
    const snap = resolveSnapshot(ctx, vm, snapName);
    const rt = await probeRuntime(ctx.paths.run, vm.id);
    if (rt.state === 'paused' || rt.state === 'unknown') {
      throw new VmsnapError('INVALID_STATE', `VM '${vm.name}' is ${rt.state}: a file is restored through the guest agent while it runs, or into its disk while it is off`, {
        hint: rt.state === 'paused' ? `vmsnap resume ${vm.name}` : `vmsnap status ${vm.name}`,
      });
    }
    const view = await (rt.state === 'running' ? restoreOnline(ctx, vm, snap, source, target, o) : restoreOffline(ctx, vm, snap, source, target, o));
    return { ...view, ms: performance.now() - t0 };
  });
}

/** The source: must exist in the snapshot, and be a file, a directory or a symlink. */
async function locateSource(reader: FilesReader, k: number, snap: SnapshotRecord, source: string): Promise<{ type: 'file' | 'dir' | 'symlink'; at: Located; size: number; linkTarget?: string; tree: FindEntry[] }> {
  const { entry, at } = await reader.stat(k, source);
  if (entry.type !== 'file' && entry.type !== 'dir' && entry.type !== 'symlink') {
    throw new VmsnapError('INVALID_ARGUMENT', `${source} in '${snap.name}' is a ${entry.type}: only files, directories and symlinks are restored`, { details: { path: source } });
  }
  const tree = entry.type === 'dir' ? await reader.walk(k, at.fs, { under: at.inner }) : [];
  return { type: entry.type, at, size: entry.size, tree, ...(entry.linkTarget !== undefined ? { linkTarget: entry.linkTarget } : {}) };
}

function planView(vm: VmRecord, snap: SnapshotRecord, source: string, target: string, src: Awaited<ReturnType<typeof locateSource>>, via: RestorePlanView['via'], overwrites: string[], guestPath?: string): RestorePlanView {
  const files = src.type === 'dir' ? src.tree.filter((e) => e.type !== 'dir').length : 1;
  const bytes = src.type === 'dir' ? src.tree.reduce((n, e) => n + (e.type === 'file' ? (e.size ?? 0) : 0), 0) : src.type === 'file' ? src.size : 0;
  return { vm: vm.name, snapshot: snap.name, source, target, ...(guestPath !== undefined ? { guestPath } : {}), type: src.type === 'dir' ? 'dir' : 'file', via, files, bytes, overwrites };
}

const FILE_META = `export TZ=UTC
chown -h "$2" "$1" && { [ -L "$1" ] || chmod "$3" "$1"; } && { [ -L "$1" ] || touch -d "@$4" "$1" 2>/dev/null || touch -d "$5" "$1"; }`;
const PLACE_FILE = `S="$1"; T="$2"
if [ -d "$T" ] && [ ! -L "$T" ]; then rm -rf -- "$T"; fi
mv -f -- "$S" "$T" && sync`;
const UNPACK = `mkdir -- "$1" && tar -x -f "$2" -C "$1" && rm -f -- "$2"`;
const PLACE_DIR = `S="$1"; T="$2"
if [ -d "$T" ] && [ ! -L "$T" ]; then cp -a "$S/." "$T/" && rm -rf -- "$S"; else rm -f -- "$T" && mv -- "$S" "$T"; fi
sync`;

async function restoreOnline(ctx: Context, vm: VmRecord, snap: SnapshotRecord, source: string, target: string, o: RestoreOptions): Promise<RestorePlanView> {
  const agent = await guestAgent(ctx, vm, 30_000);
  const own = o.session ? undefined : FilesReader.open([readerPoint(ctx, snapshotPoint(snap))], o);
  const reader = o.session?.reader ?? own!;
  const k = o.session?.point ?? 0;
  try {
    const src = await locateSource(reader, k, snap, source);
    const hit = resolvePath(await reader.filesystems(k), target);
    if (!hit) throw new VmsnapError('NOT_FOUND', `to: no filesystem of the guest holds ${target}`, { details: { field: 'to', path: target } });
    const guestPath = guestPathOf(hit.fs, hit.inner, parseMounts(await guestSh(agent, 'cat /proc/mounts')), target);
    const present = parseProbe(await guestSh(agent, PROBE, [guestPath]));
    if (!present.parentIsDir) {
      throw new VmsnapError('NOT_FOUND', `to: ${parentOf(target)} is not a directory in the running guest`, { hint: 'restore its parent directory first, or choose another place with --to', details: { field: 'to', path: target } });
    }
    const view = planView(vm, snap, source, target, src, 'guest-agent', overwritesOf(target, src.type, sourceTree(src.tree), present), guestPath);
    if (o.dryRun) return view;
    if (!o.force && view.overwrites.length > 0 && !(o.confirm && (await o.confirm(view)))) refuseOverwrite(view);
    const parent = guestPath.slice(0, guestPath.lastIndexOf('/')) || '';
    const stage = `${parent}/.vmsnap-restore-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
    const plan: RestorePlan = { via: 'guest-agent', snapshotId: snap.id, source, target, switches: [], createFiles: [], staging: [stage, `${stage}.tar`] };
    await runOperation(ctx, restoreFileOp, { vm, plan }, async (op) => {
      let moved = 0;
      const onBytes = (n: number): void => {
        moved += n;
        o.onProgress?.('restoring', moved, view.bytes);
        op.progress('restoring', moved, view.bytes);
      };
      if (src.type === 'dir') {
        const pipe = new PassThrough({ highWaterMark: 1 << 20 });
        await Promise.all([reader.tarTo(k, source, pipe), agent.writeStream(`${stage}.tar`, pipe, onBytes)]);
        await guestSh(agent, UNPACK, [stage, `${stage}.tar`]);
        op.done(1);
        await guestSh(agent, PLACE_DIR, [stage, guestPath]);
      } else {
        const st = await reader.stat(k, source);
        if (src.type === 'symlink') await guestSh(agent, 'ln -s -- "$2" "$1"', [stage, src.linkTarget ?? '']);
        else {
          const pipe = new PassThrough({ highWaterMark: 1 << 20 });
          await Promise.all([reader.readTo(k, source, pipe), agent.writeStream(stage, pipe, onBytes)]);
        }
        const m = st.stat.mtime;
        const stamp = `${Math.floor(m.getTime() / 1000)}.${String(st.stat.mtimeNsec).padStart(9, '0')}`;
        const human = m.toISOString().slice(0, 19).replace('T', ' ');
        await guestSh(agent, FILE_META, [stage, `${st.stat.uid}:${st.stat.gid}`, (st.stat.mode & 0o7777).toString(8), stamp, human]);
        op.done(1);
        await guestSh(agent, PLACE_FILE, [stage, guestPath]);
      }
      op.done(2);
    });
    return view;
  } finally {
    await own?.close().catch(() => undefined);
    await agent.close();
  }
}

async function restoreOffline(ctx: Context, vm: VmRecord, snap: SnapshotRecord, source: string, target: string, o: RestoreOptions): Promise<RestorePlanView> {
  const { slots, layers } = diskLayers(vm.config.disks, ctx.catalog.activeLayers(vm.id));
  const switches = planOverlays(ctx, layers);
  const plan: RestorePlan = { via: 'offline', snapshotId: snap.id, source, target, switches, createFiles: switches.map((s) => s.newPath), staging: [] };
  const snapPoint = snapshotPoint(snap);
  let view: RestorePlanView | undefined;
  await runOperation(ctx, restoreFileOp, { vm, plan }, async (op) => {
    await createOverlayFiles(ctx, switches);
    const reader = FilesReader.open(
      [
        readerPoint(ctx, snapPoint),
        { label: 'present', drives: slots.map((slot) => ({ slot, path: switches.find((s) => s.slot === slot)!.newPath, format: 'qcow2' as const, readonly: false })) },
      ],
      o,
    );
    try {
      const src = await locateSource(reader, 0, snap, source);
      const presentFss = await reader.filesystems(1);
      const hit = resolvePath(presentFss, target);
      if (!hit) throw new VmsnapError('NOT_FOUND', `to: no filesystem of the present state holds ${target}`, { details: { field: 'to', path: target } });
      const present = await presentOf(reader, hit.fs, hit.inner, target);
      if (!present.parentIsDir) {
        throw new VmsnapError('NOT_FOUND', `to: ${parentOf(target)} is not a directory in the present state`, { hint: 'restore its parent directory first, or choose another place with --to', details: { field: 'to', path: target } });
      }
      view = planView(vm, snap, source, target, src, 'offline', overwritesOf(target, src.type, sourceTree(src.tree), present));
      if (o.dryRun) {
        await reader.close();
        removeUnreferenced(ctx, plan.createFiles);
        op.finish('rolled_back', 'dry run');
        return;
      }
      if (!o.force && view.overwrites.length > 0 && !(o.confirm && (await o.confirm(view)))) refuseOverwrite(view);
      await writeOffline(reader, src.at, target, present.type, src.type);
      // Closing the appliance syncs the overlays: from here they hold the whole restore.
      await reader.close();
      op.done(1);
      for (const s of switches) await commitImage(s.newPath);
      op.done(2);
      removeUnreferenced(ctx, plan.createFiles);
    } finally {
      await reader.close().catch(() => undefined);
    }
  });
  return view!;
}

/** What is at a target of the present state (offline), like the probe does in a running guest. */
async function presentOf(reader: FilesReader, fs: NamedFilesystem, inner: string, target: string): Promise<PresentState> {
  const parentOk = await reader
    .stat(1, parentOf(target))
    .then((s) => s.entry.type === 'dir')
    .catch(() => false);
  let type: PresentType = 'none';
  try {
    const { entry } = await reader.stat(1, target);
    type = entry.type === 'dir' || entry.type === 'symlink' ? entry.type : 'file';
  } catch (e) {
    if (!(e instanceof VmsnapError && e.code === 'NOT_FOUND')) throw e;
  }
  const entries = type === 'dir' ? (await reader.walk(1, fs, { under: inner })).map((e) => ({ path: e.path, dir: e.type === 'dir' })) : [];
  return { type, parentIsDir: parentOk || inner === '/', entries };
}

/** Copy inside the appliance when both sides are in one (cp -a), else through a host temp file. */
async function writeOffline(reader: FilesReader, src: Located, target: string, presentType: PresentType, srcType: 'file' | 'dir' | 'symlink'): Promise<void> {
  const dst = await reader.locate(1, target);
  const g = dst.session;
  if (presentType !== 'none' && !(srcType === 'dir' && presentType === 'dir')) await g.remove(dst.appPath, { recursive: presentType === 'dir' });
  const merge = srcType === 'dir' && presentType === 'dir';
  if (src.session === g) {
    await g.copy(merge ? `${src.appPath}/.` : src.appPath, dst.appPath);
    return;
  }
  // Another appliance (two copies of one btrfs or LVM): through the host.
  const tmp = mkdtempSync(join(process.env.TMPDIR ?? '/tmp', 'vmsnap-restore-'));
  try {
    if (srcType === 'dir') {
      const tar = join(tmp, 'tree.tar');
      await src.session.tarOut(src.appPath, tar);
      if (!merge) await g.mkdir(dst.appPath);
      await g.tarIn(tar, dst.appPath);
    } else {
      const file = join(tmp, baseName(target) || 'file');
      const st = await src.session.download(src.appPath, file);
      await g.upload(file, dst.appPath, { mode: st.mode, uid: st.uid, gid: st.gid, mtime: st.mtime, mtimeNsec: st.mtimeNsec });
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}
