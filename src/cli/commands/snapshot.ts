import type { Command } from 'commander';
import { VmsnapError } from '../../errors.js';
import type { SnapshotView } from '../../contract/views.js';
import { formatBytes } from '../../util/size.js';
import type { Run } from '../main.js';
import { ago, confirm, fingerprintInBackground, printJson, printTable, usageError } from '../output.js';
import { progressBar } from '../progress.js';
import { parseCount } from '../parse.js';

const pause = (s: SnapshotView): string => (s.pauseMs === null ? '-' : `${s.pauseMs.toFixed(1)} ms`);

function printShow(s: SnapshotView): void {
  const out = [
    `${s.name}${s.current ? '  (current: you are here)' : ''}`,
    `  id          ${s.id}`,
    `  taken       ${s.createdAt} (${ago(s.createdAt)}), VM was ${s.vmState}`,
    `  parent      ${s.parent ?? '-'}`,
    `  children    ${s.children.length ? s.children.join(', ') : '-'}`,
    `  memory      ${s.hasMemory ? `yes, state file ${formatBytes(s.stateBytes)}` : 'no (disk only)'}`,
    `  guest pause ${pause(s)}`,
    `  config      ${s.config.memoryMiB} MiB, ${s.config.cpus} CPU, ${s.config.disks.length} disk(s)`,
  ];
  if (s.description) out.push(`  description ${s.description}`);
  out.push(`  protected   ${s.protected ? `yes: nothing deletes it until 'vmsnap snapshot unprotect'` : 'no'}`);
  if (s.expiresAt) out.push(`  expires     ${s.expiresAt} (${Date.parse(s.expiresAt) <= Date.now() ? 'expired: the next prune deletes it' : `a prune deletes it after that`}${s.protected ? ', once unprotected' : ''})`);
  if (s.policy) out.push(`  taken by    ${s.policy.owned ? 'the policy' : 'a removed policy (no policy prunes it)'}${s.policy.slot ? `, for slot ${s.policy.slot}` : ' (policy run --now)'}`);
  for (const d of s.disks) out.push(`  ${d.slot.padEnd(11)} layer ${d.layerId}, delta ${formatBytes(d.bytes)}`);
  if (typeof s.meta.fallbackReason === 'string') out.push(`  note        memory saved with pre-copy: ${s.meta.fallbackReason}`);
  process.stdout.write(`${out.join('\n')}\n`);
}

export function registerSnapshotCommands(program: Command, run: Run): void {
  const snap = program.command('snapshot').alias('snap').description('take, list, show and revert snapshots');

  snap
    .command('create')
    .description('take a snapshot: disks, memory and device state (unless --no-memory), and the hardware config')
    .argument('<vm>')
    .argument('<name>', 'snapshot name, unique per VM')
    .option('--description <text>', 'what this snapshot is for')
    .option('--no-memory', 'disks only (the VM reverts powered off)')
    .option('--expire <duration>', "delete it in the first prune after this long, e.g. 12h, 7d, 2w, 1d12h (unless protected)")
    .option('--json', 'print the snapshot as JSON')
    .action((vm: string, name: string, o: { description?: string; memory: boolean; expire?: string; json?: boolean }) =>
      run(o, async (lib, log) => {
        const s = await lib.snapshots.create(vm, name, {
          ...(o.description !== undefined ? { description: o.description } : {}),
          ...(o.memory === false ? { memory: false } : {}),
          ...(o.expire !== undefined ? { expire: o.expire } : {}),
        });
        await fingerprintInBackground(vm);
        if (o.json) return printJson(s);
        const mem = s.hasMemory ? `memory ${formatBytes(s.stateBytes)}` : 'disk only';
        log(`took snapshot '${s.name}' of VM '${vm}' (${mem}, guest pause ${pause(s)})${s.expiresAt ? `; expires ${s.expiresAt}` : ''}`);
        if (typeof s.meta.fallbackReason === 'string') log(`note: memory was saved with a live pre-copy: ${s.meta.fallbackReason}`);
        for (const w of await lib.health.warningsFor(vm)) process.stderr.write(`warning: ${w.message}\n`);
      }),
    );

  snap
    .command('list')
    .alias('ls')
    .description("list a VM's snapshots")
    .argument('<vm>')
    .option('--json', 'print as JSON')
    .action((vm: string, o: { json?: boolean }) =>
      run(o, async (lib) => {
        const list = lib.snapshots.list(vm);
        if (o.json) return printJson(list);
        if (list.length === 0) {
          process.stdout.write(`VM '${vm}' has no snapshots: take one with 'vmsnap snapshot create ${vm} NAME'\n`);
          return;
        }
        const { snapshotFlags } = await import('../../contract/format.js');
        await printTable(
          ['', 'NAME', 'PARENT', 'TAKEN', 'MEMORY', 'PAUSE', 'DELTA', 'STATE FILE', 'FLAGS'],
          list.map((s) => [
            s.current ? '*' : '',
            s.name,
            s.parent ?? '-',
            ago(s.createdAt),
            s.hasMemory ? 'yes' : 'no',
            pause(s),
            formatBytes(s.deltaBytes),
            s.hasMemory ? formatBytes(s.stateBytes) : '-',
            snapshotFlags(s).map((f) => f.text).join(', ') || '-',
          ]),
        );
      }),
    );

  snap
    .command('tree')
    .description("draw a VM's snapshot tree, with where the VM is now")
    .argument('<vm>')
    .option('--json', 'print the snapshots with their parents and children as JSON')
    .action((vm: string, o: { json?: boolean }) =>
      run(o, async (lib) => {
        if (o.json) return printJson(lib.snapshots.list(vm));
        process.stdout.write(`${vm}\n${lib.snapshots.tree(vm)}\n`);
      }),
    );

  snap
    .command('show')
    .description('show one snapshot in detail')
    .argument('<vm>')
    .argument('<snapshot>')
    .option('--json', 'print as JSON')
    .action((vm: string, name: string, o: { json?: boolean }) =>
      run(o, async (lib) => {
        const s = lib.snapshots.show(vm, name);
        if (o.json) printJson(s);
        else printShow(s);
      }),
    );

  snap
    .command('revert')
    .description('go back to a snapshot: disks, config, and (with memory) the running guest')
    .argument('<vm>')
    .argument('<snapshot>')
    .option('--force', 'discard the present state without asking')
    .option('--start', 'boot the VM after reverting to a snapshot without memory')
    .option('--json', 'print the result as JSON')
    .action((vm: string, name: string, o: { force?: boolean; start?: boolean; json?: boolean }) =>
      run(o, async (lib, log) => {
        const go = (force: boolean) => lib.snapshots.revert(vm, name, { force, start: o.start ?? false });
        let r;
        try {
          r = await go(o.force ?? false);
        } catch (e) {
          if (!(e instanceof VmsnapError) || e.code !== 'WOULD_LOSE_DATA' || o.json) throw e;
          const lost = (e.details.lost as string[] | undefined) ?? [];
          process.stderr.write(`Reverting '${vm}' to '${name}' discards:\n${lost.map((l) => `  - ${l}`).join('\n')}\n`);
          if (!(await confirm('Discard the present state?'))) throw e;
          r = await go(true);
        }
        if (o.json) return printJson(r);
        const how = r.state === 'stopped' ? 'the VM is off' + (r.snapshot.hasMemory ? '' : ` (disk-only snapshot: 'vmsnap start ${vm}' boots it)`) : `the VM is ${r.state}`;
        log(`reverted '${vm}' to '${r.snapshot.name}': ${how}${r.resumeMs !== undefined ? ` (${Math.round(r.resumeMs)} ms)` : ''}`);
      }),
    );

  snap
    .command('delete')
    .alias('rm')
    .description("delete a snapshot (or --all): its delta is merged into what depends on it, online if the VM runs")
    .argument('<vm>')
    .argument('[snapshot]')
    .option('--all', 'delete every snapshot: all deltas merge into the present disks')
    .option('--detach-clones', 'if linked clones build on it, copy its data into them first (else the delete is refused)')
    .option('--json', 'print the result as JSON')
    .action((vm: string, name: string | undefined, o: { all?: boolean; detachClones?: boolean; json?: boolean }) =>
      run(o, async (lib, log) => {
        if (!o.all && name === undefined) throw usageError('name the snapshot to delete, or pass --all', `vmsnap snapshot delete ${vm} NAME`);
        if (o.all && name !== undefined) throw usageError('give a snapshot name or --all, not both');
        const bar = progressBar(!o.json);
        const opts = { onProgress: (done: number, total: number, what: string) => bar.update(done, total, what), clones: o.detachClones ? ('detach' as const) : ('refuse' as const) };
        let r;
        try {
          r = o.all ? await lib.snapshots.deleteAll(vm, opts) : await lib.snapshots.delete(vm, name!, opts);
        } finally {
          bar.stop();
        }
        if (o.json) return printJson(r);
        const what = r.deleted.length === 1 ? `snapshot '${r.deleted[0]}'` : `${r.deleted.length} snapshots`;
        const merged = r.merges.filter((m) => m.kind !== 'drop').length;
        log(`deleted ${what} of VM '${vm}': reclaimed ${formatBytes(r.reclaimedBytes)}${merged ? `, ${merged} layer merge${merged === 1 ? '' : 's'}` : ''}`);
      }),
    );

  for (const protect of [true, false]) {
    snap
      .command(protect ? 'protect' : 'unprotect')
      .description(
        protect
          ? 'protect a snapshot: nothing deletes it (delete, delete --all, prune, expiry, vmsnap rm) until it is unprotected'
          : 'unprotect a snapshot: it can be deleted again (and a passed expiry applies at the next prune)',
      )
      .argument('<vm>')
      .argument('<snapshot>')
      .option('--json', 'print the snapshot as JSON')
      .action((vm: string, name: string, o: { json?: boolean }) =>
        run(o, async (lib, log) => {
          const s = protect ? lib.snapshots.protect(vm, name) : lib.snapshots.unprotect(vm, name);
          if (o.json) return printJson(s);
          log(`snapshot '${s.name}' of VM '${vm}' is ${protect ? 'protected: nothing deletes it until it is unprotected' : 'no longer protected'}`);
        }),
      );
  }

  program
    .command('clone')
    .description('make new VMs from a snapshot: linked (instant, sharing its data) or full (independent)')
    .argument('<vm>')
    .argument('<snapshot>')
    .argument('<name>', 'the new VM; with --count N, NAME-1 … NAME-N')
    .option('--linked', 'empty overlays on the snapshot’s layers: instant, shares its data (default)')
    .option('--full', 'flattened, independent disks')
    .option('--count <n>', 'how many clones', '1')
    .option('--start', 'start each clone: from the snapshot’s memory when it has some (a fork of the running machine)')
    .option('--json', 'print the result as JSON')
    .action((vm: string, snapshot: string, name: string, o: { linked?: boolean; full?: boolean; count: string; start?: boolean; json?: boolean }) =>
      run(o, async (lib, log) => {
        if (o.linked && o.full) throw usageError('--linked and --full exclude each other');
        const r = await lib.snapshots.clone(vm, snapshot, name, { mode: o.full ? 'full' : 'linked', count: parseCount(o.count, 'count', 1, 64), start: o.start ?? false });
        if (o.json) return printJson(r);
        for (const c of r.clones) {
          const how = c.forked ? `running from '${r.snapshot}' memory` : c.state;
          log(`cloned '${c.name}' (${c.mode}) from ${r.source}/${r.snapshot}: ${how}, mac ${c.mac}`);
        }
      }),
    );
}
