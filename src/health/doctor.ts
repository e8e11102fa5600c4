import type { VmRecord } from '../catalog/catalog.js';
import type { Context } from '../context.js';
import { formatBytes } from '../contract/format.js';
import type { HealthReport, HealthSettings, HealthWarning } from '../contract/views.js';
import { nextRun } from '../policy/schedule.js';
import { zoneOf } from '../policy/timezone.js';
import { healthSettings, now } from '../settings.js';
import { verifyVm } from '../snapshot/verify.js';
import { memoryStateFiles } from '../paths.js';
import { fileBytes, filesBytes } from '../util/files.js';
import { dataDirUsage } from './storage.js';

/** Checks of one VM's snapshots and chains (cheap: no qemu-img check). */
export function vmWarnings(ctx: Context, vm: VmRecord, settings: HealthSettings, freeBytes: number): HealthWarning[] {
  const out: HealthWarning[] = [];
  const t = now();
  for (const s of ctx.catalog.listSnapshots(vm.id).filter((x) => x.status === 'ready')) {
    const hours = (t - Date.parse(s.createdAt)) / 3600_000;
    if (hours > settings.maxAgeHours) {
      out.push({
        kind: 'old-snapshot',
        vm: vm.name,
        snapshot: s.name,
        message: `snapshot '${s.name}' of '${vm.name}' is ${Math.floor(hours)} h old (threshold ${settings.maxAgeHours} h): snapshots are not backups, and old ones keep growing what they hold`,
      });
    }
    const bytes = Object.values(s.layers).reduce((a, id) => a + fileBytes(ctx.catalog.findLayer(id)?.path ?? ''), 0) + filesBytes(memoryStateFiles(s.stateFile));
    if (bytes > settings.maxShareOfFree * freeBytes) {
      out.push({
        kind: 'large-snapshot',
        vm: vm.name,
        snapshot: s.name,
        message: `snapshot '${s.name}' of '${vm.name}' holds ${formatBytes(bytes)}, more than ${Math.round(settings.maxShareOfFree * 100)}% of the free space (${formatBytes(freeBytes)})`,
      });
    }
  }
  for (const [slot, id] of Object.entries(ctx.catalog.activeLayers(vm.id))) {
    const depth = ctx.catalog.chain(id).length;
    if (depth > settings.maxChainDepth) {
      out.push({
        kind: 'deep-chain',
        vm: vm.name,
        message: `${vm.name}/${slot} has a chain of ${depth} layers (threshold ${settings.maxChainDepth}): reads may slow down; delete snapshots you no longer need`,
      });
    }
  }
  return out;
}

/** A slot due longer than this means nothing runs the policy (no `vmsnap serve`, no timer). */
const OVERDUE_MS = 15 * 60_000;

/** A VM's policy: its last pass failed, or its schedule is overdue (nothing runs it). */
export function policyWarnings(ctx: Context, vm: VmRecord): HealthWarning[] {
  const p = ctx.catalog.findPolicy(vm.id);
  if (!p) return [];
  const out: HealthWarning[] = [];
  const run = p.lastRun;
  if (run?.status === 'failed') {
    out.push({
      kind: 'policy',
      vm: vm.name,
      message: `the policy of '${vm.name}' failed at ${run.at}${run.slot ? ` (slot ${run.slot})` : ''}: ${run.error?.code ?? ''} ${run.error?.message ?? ''}`.trimEnd(),
    });
  }
  // The first slot no pass has taken yet: overdue once it is older than a quarter of an hour.
  const t = now();
  const after = Math.max(p.lastSlot === null ? -Infinity : Date.parse(p.lastSlot), Date.parse(p.since) - 1);
  const first = nextRun(p.spec.schedule, zoneOf(p.spec), new Date(after));
  if (first && t - first.getTime() > OVERDUE_MS) {
    out.push({
      kind: 'policy',
      vm: vm.name,
      message: `the policy of '${vm.name}' has taken no snapshot since its slot ${first.toISOString()} was due: is 'vmsnap serve' or a 'vmsnap policy run' timer running?`,
    });
  }
  return out;
}

export function freeSpaceWarning(freeBytes: number, settings: HealthSettings): HealthWarning | undefined {
  if (freeBytes >= settings.reserveBytes) return undefined;
  return {
    kind: 'low-free-space',
    message: `only ${formatBytes(freeBytes)} free in the data dir, under the reserve of ${formatBytes(settings.reserveBytes)}: new snapshots are refused until space is freed`,
  };
}

export async function doctor(ctx: Context, overrides: Partial<HealthSettings> = {}, opts: { verify?: boolean } = {}): Promise<HealthReport> {
  const settings = healthSettings(ctx.paths.home, overrides);
  // A catalog that fails SQLite's integrity check is an error, as for every command: nothing it says can be trusted.
  ctx.catalog.assertSound({ full: true });
  const { freeBytes } = dataDirUsage(ctx);
  const warnings: HealthWarning[] = [];
  for (const issue of ctx.catalog.records.check()) warnings.push({ kind: 'records', message: issue.message });
  const low = freeSpaceWarning(freeBytes, settings);
  if (low) warnings.push(low);
  for (const vm of ctx.catalog.listVms()) {
    warnings.push(...vmWarnings(ctx, vm, settings, freeBytes), ...policyWarnings(ctx, vm));
    if (opts.verify !== false) {
      const v = await verifyVm(ctx, vm);
      // Records are checked above, for the whole home.
      for (const p of v.problems.filter((x) => x.kind !== 'record-mismatch')) warnings.push({ kind: 'verify', vm: vm.name, ...(p.snapshot ? { snapshot: p.snapshot } : {}), message: `${p.severity}: ${p.message}` });
    }
  }
  // Orphans and unfinished operations are data-dir wide: report each once.
  const seen = new Set<string>();
  const unique = warnings.filter((w) => (seen.has(w.message) ? false : (seen.add(w.message), true)));
  return { ok: unique.length === 0, settings, freeBytes, warnings: unique };
}
