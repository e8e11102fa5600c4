import type { Command } from 'commander';
import type { CatalogRepairReport, RecoveryReport } from '../../contract/views.js';
import type { VerifyReport } from '../../snapshot/verify.js';
import type { Run } from '../main.js';
import { printJson, reportError, usageError } from '../output.js';

interface RecoverOptions {
  rebuildCatalog?: boolean;
  fromBackup?: boolean;
  dryRun?: boolean;
  json?: boolean;
}

function printRecovery(r: RecoveryReport, log: (line: string) => void): void {
  if (r.operations.length === 0 && r.orphansRemoved.length === 0 && !r.recordsRewritten) return log('nothing to recover');
  for (const op of r.operations) {
    log(`${op.kind} of ${op.vm ?? '(removed VM)'}: ${op.outcome.replace('_', ' ')}${op.note ? ` — ${op.note}` : ''}`);
  }
  if (r.recordsRewritten) log(`rewrote the records of ${r.recordsRewritten} VM${r.recordsRewritten === 1 ? '' : 's'}`);
  for (const f of r.orphansRemoved) log(`removed orphan file ${f}`);
}

function printRepair(r: CatalogRepairReport, log: (line: string) => void): void {
  const how = r.mode === 'rebuild' ? 'from the records beside the VMs and the layer files' : `from the backup of ${r.backup?.takenAt ?? '?'} (${r.backup?.path ?? ''}), reconciled with the records beside the VMs`;
  log(r.dryRun ? `dry run: a new catalog would be built ${how}; nothing was changed` : `built a new catalog ${how}`);
  if (r.oldCatalog) log(`  the old catalog is kept as ${r.oldCatalog}`);
  for (const v of r.vms) {
    const snaps = v.snapshots.length === 0 ? 'no snapshots' : `${v.snapshots.length} snapshot${v.snapshots.length === 1 ? '' : 's'} (${v.snapshots.join(', ')})`;
    const ops = v.unfinishedOperations ? `, ${v.unfinishedOperations} unfinished operation${v.unfinishedOperations === 1 ? '' : 's'}` : '';
    log(`  VM ${v.name}: ${snaps}, current: ${v.current ?? 'none'}, ${v.layers} layers${ops}${v.source === 'backup' ? ' — from the backup (its records could not be used)' : ''}`);
  }
  if (r.vms.length === 0) log('  no VMs found');
  for (const b of r.badRecords) log(`  record not used: ${b.path} ${b.problem}`);
  for (const m of r.missingFiles) log(`  missing file: ${m.vm}: ${m.what}: ${m.path}`);
  for (const l of r.leftOut) log(`  left out: ${l.vm ? `${l.vm}: ` : ''}${l.what}: ${l.reason}`);
  for (const b of r.backingMismatches) log(`  backing mismatch: layer ${b.layer} (${b.path}) backs onto ${b.file ?? 'nothing'}, its record says ${b.recorded ?? 'nothing'}`);
  for (const u of r.unrecordedFiles) {
    const where = u.movedTo ? `kept as ${u.movedTo}` : r.dryRun ? 'would be kept in lost+found' : 'left in place';
    log(`  no record names ${u.path}${u.backing ? ` (backs onto ${u.backing})` : ''}: ${where}`);
  }
  if (r.lostFound) log(`  what was set aside is listed in ${r.lostFound}/found.json`);
  if (r.recovery) printRecovery(r.recovery, (line) => log(`  ${line}`));
}

/** recover --rebuild-catalog / --from-backup: runs without opening the catalog it replaces. */
async function repairCatalog(o: RecoverOptions): Promise<void> {
  const log = (line: string): void => void (o.json ? process.stderr : process.stdout).write(`${line}\n`);
  try {
    if (o.rebuildCatalog && o.fromBackup) throw usageError('give --rebuild-catalog or --from-backup, not both');
    if (!o.rebuildCatalog && !o.fromBackup) throw usageError('--dry-run goes with --rebuild-catalog or --from-backup', 'plain vmsnap recover changes only what a killed vmsnap left half done');
    const { Vmsnap } = await import('../../vmsnap.js');
    const r = await Vmsnap.repairCatalog({ mode: o.rebuildCatalog ? 'rebuild' : 'from-backup', dryRun: o.dryRun ?? false });
    if (o.json) printJson(r);
    else printRepair(r, log);
    // Like verify: 1 when something needs a look (a record not used, a file missing or without a record).
    const findings = r.badRecords.length + r.missingFiles.length + r.leftOut.length + r.backingMismatches.length + r.unrecordedFiles.length;
    process.exitCode = findings > 0 ? 1 : 0;
  } catch (e) {
    process.exitCode = reportError(e, o.json ?? false);
  }
}

function printReport(r: VerifyReport): void {
  const fp = r.fingerprintsVerified || r.fingerprintsRecorded ? `, ${r.fingerprintsVerified} snapshot fingerprints verified` : '';
  process.stdout.write(`${r.vm}: ${r.ok ? 'ok' : 'PROBLEMS'} (${r.layersChecked} layers, ${r.snapshotsChecked} snapshots checked${fp})\n`);
  for (const p of r.problems) process.stdout.write(`  ${p.severity}: ${p.message}\n`);
}

export function registerMaintenanceCommands(program: Command, run: Run): void {
  program
    .command('verify')
    .description('check that catalog, layer files and backing chains agree; --deep re-hashes every snapshot')
    .argument('[vm]', 'one VM (default: all)')
    .option('--deep', "recompute each snapshot's content fingerprint and compare it with the one taken when it was frozen")
    .option('--json', 'print the report as JSON')
    .action((vm: string | undefined, o: { deep?: boolean; json?: boolean }) =>
      run(o, async (lib) => {
        const reports = vm === undefined ? await lib.verifyAll({ deep: o.deep ?? false }) : [await lib.verify(vm, { deep: o.deep ?? false })];
        if (o.json) printJson(vm === undefined ? reports : reports[0]);
        else if (reports.length === 0) process.stdout.write('no VMs to verify\n');
        else reports.forEach(printReport);
        return reports.every((r) => r.ok) ? 0 : 1;
      }),
    );

  program
    .command('recover')
    .description('finish operations that a killed vmsnap left half done, and remove orphaned files; or replace a lost or damaged catalog')
    .option('--rebuild-catalog', 'build a new catalog from the records beside the VMs and the layer files (the old one is kept aside)')
    .option('--from-backup', 'restore the newest sound catalog backup, reconciled with the records beside the VMs (the old one is kept aside)')
    .option('--dry-run', 'with --rebuild-catalog or --from-backup: only say what would be done')
    .option('--json', 'print what was done as JSON')
    .action((o: RecoverOptions) => {
      if (o.rebuildCatalog || o.fromBackup || o.dryRun) return repairCatalog(o);
      return run({ ...o }, async (lib, log) => {
        const r = await lib.recover();
        if (o.json) return printJson(r);
        printRecovery(r, log);
      });
    });

  program
    .command('fingerprint')
    .description("hash the content of a VM's snapshots that have no fingerprint yet (done in the background after each snapshot)")
    .argument('<vm>')
    .option('--quiet', 'print nothing')
    .action((vm: string, o: { quiet?: boolean }) =>
      run({}, async (lib, log) => {
        const n = await lib.fingerprint(vm);
        if (!o.quiet) log(`fingerprinted ${n} snapshot${n === 1 ? '' : 's'}`);
      }),
    );
}
