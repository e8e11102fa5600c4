import type { Command } from 'commander';
import type { HealthSettings } from '../../health/index.js';
import { formatBytes } from '../../util/size.js';
import type { Run } from '../main.js';
import { ago, printJson, printTable, usageError } from '../output.js';
import { parseDiskSize } from '../parse.js';

function parseHours(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(h|d|w)?$/i.exec(text.trim());
  if (!m) throw usageError(`max-age: '${text}' is not a duration`, 'give hours, or a number with h, d or w: 72h, 3d, 2w');
  const n = Number(m[1]);
  return n * ({ h: 1, d: 24, w: 168 }[(m[2] ?? 'h').toLowerCase() as 'h' | 'd' | 'w']);
}

export function registerHealthCommands(program: Command, run: Run): void {
  program
    .command('df')
    .description('disk usage: per snapshot its delta, state file and what deleting it would free; per VM and for the data dir')
    .argument('[vm]', 'one VM (default: all)')
    .option('--json', 'print as JSON')
    .action((vm: string | undefined, o: { json?: boolean }) =>
      run(o, async (lib) => {
        const r = await lib.health.df(vm);
        if (o.json) return printJson(r);
        const d = r.dataDir;
        process.stdout.write(`data dir ${d.path}: vmsnap uses ${formatBytes(d.usedBytes)}${d.bootFilesBytes ? ` (boot files ${formatBytes(d.bootFilesBytes)})` : ''}, ${formatBytes(d.freeBytes)} free of ${formatBytes(d.totalBytes)}\n`);
        process.stdout.write(`  catalog ${formatBytes(d.catalogBytes)}, its backups ${formatBytes(d.backupsBytes)}, records beside the VMs ${formatBytes(d.recordsBytes)}\n`);
        process.stdout.write(
          d.reflinks
            ? '  memory states share the pages a snapshot did not change with its parent (reflinks)\n'
            : '  no reflinks on this file system: each memory state holds all the guest RAM in use (about its STATE FILE size)\n',
        );
        for (const h of d.heldByRunningVms) {
          process.stdout.write(`  ${formatBytes(h.bytes)} of deleted snapshots' RAM images are still mapped by ${h.vms.join(', ')}: free once ${h.vms.length > 1 ? 'they stop' : 'it stops'}\n`);
        }
        for (const v of r.vms) {
          const chains = v.disks.map((x) => `${x.slot} depth ${x.chainDepth}`).join(', ');
          process.stdout.write(`\n${v.vm}: ${formatBytes(v.totalBytes)} (layers ${formatBytes(v.layersBytes)}, state files ${formatBytes(v.statesBytes)}); ${chains}\n`);
          if (v.snapshots.length === 0) continue;
          await printTable(
            ['SNAPSHOT', 'AGE', 'DELTA', 'STATE FILE', 'DELETE FREES'],
            v.snapshots.map((s) => [
              s.name,
              ago(s.createdAt),
              formatBytes(s.deltaBytes),
              s.stateBytes ? `${formatBytes(s.stateBytes)}${s.stateSharedBytes ? ` (${formatBytes(s.stateSharedBytes)} shared)` : ''}` : '-',
              `${formatBytes(s.reclaimableBytes)}${s.stateMappedBy ? ` (+${formatBytes(s.freedWhenStoppedBytes ?? 0)} once ${s.stateMappedBy.join(', ')} stop)` : ''}`,
            ]),
          );
        }
      }),
    );

  program
    .command('doctor')
    .description('warn about the known risks: old snapshots, deep chains, large snapshots, low free space, what verify flags')
    .option('--max-age <duration>', 'flag snapshots older than this (default 72h; config.json health.maxAgeHours)')
    .option('--max-depth <n>', 'flag chains deeper than this (default 32)')
    .option('--max-share <fraction>', 'flag snapshots holding more than this share of the free space (default 0.5)')
    .option('--reserve <size>', 'free space under which new snapshots are refused (default 1G)')
    .option('--json', 'print as JSON')
    .action((o: { maxAge?: string; maxDepth?: string; maxShare?: string; reserve?: string; json?: boolean }) =>
      run(o, async (lib) => {
        const overrides: Partial<HealthSettings> = {};
        if (o.maxAge !== undefined) overrides.maxAgeHours = parseHours(o.maxAge);
        if (o.maxDepth !== undefined) {
          const n = Number(o.maxDepth);
          if (!Number.isInteger(n) || n < 1) throw usageError(`max-depth: '${o.maxDepth}' is not a whole number above 0`);
          overrides.maxChainDepth = n;
        }
        if (o.maxShare !== undefined) {
          const n = Number(o.maxShare);
          if (!(n > 0)) throw usageError(`max-share: '${o.maxShare}' is not a fraction above 0, such as 0.5`);
          overrides.maxShareOfFree = n;
        }
        if (o.reserve !== undefined) overrides.reserveBytes = /^0+$/.test(o.reserve) ? 0 : parseDiskSize(o.reserve, 'reserve');
        const r = await lib.health.doctor(overrides);
        if (o.json) printJson(r);
        else if (r.ok) process.stdout.write(`all well (${formatBytes(r.freeBytes)} free)\n`);
        else for (const w of r.warnings) process.stdout.write(`warning: ${w.message}\n`);
        return r.ok ? 0 : 1;
      }),
    );
}
