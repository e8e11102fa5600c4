import type { Command } from 'commander';
import type { VerifyReport } from '../../snapshot/verify.js';
import type { Run } from '../main.js';
import { printJson } from '../output.js';

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
    .description('finish operations that a killed vmsnap left half done, and remove orphaned files')
    .option('--json', 'print what was done as JSON')
    .action((o: { json?: boolean }) =>
      run(o, async (lib, log) => {
        const r = await lib.recover();
        if (o.json) return printJson(r);
        if (r.operations.length === 0 && r.orphansRemoved.length === 0) return log('nothing to recover');
        for (const op of r.operations) {
          log(`${op.kind} of ${op.vm ?? '(removed VM)'}: ${op.outcome.replace('_', ' ')}${op.note ? ` — ${op.note}` : ''}`);
        }
        for (const f of r.orphansRemoved) log(`removed orphan file ${f}`);
      }),
    );

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
