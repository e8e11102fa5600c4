import type { Command } from 'commander';
import type { PolicyPatch, PolicyRunResult, PolicyView, PruneResult } from '../../contract/views.js';
import { VmsnapError } from '../../errors.js';
import { formatBytes, parseSize } from '../../util/size.js';
import type { Run } from '../main.js';
import { fingerprintInBackground, printJson, printTable } from '../output.js';
import { progressBar } from '../progress.js';

type SetOptions = {
  schedule?: string;
  tz?: string;
  memory?: boolean;
  namePattern?: string;
  keepLast?: string;
  keepHourly?: string;
  keepDaily?: string;
  keepWeekly?: string;
  keepMonthly?: string;
  keepYearly?: string;
  maxBytes?: string;
  json?: boolean;
};

const KEEP_OPTIONS = ['keepLast', 'keepHourly', 'keepDaily', 'keepWeekly', 'keepMonthly', 'keepYearly'] as const;
const optionName = (key: string): string => `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;

/** A keep count as given: a whole number (0 turns the rule off; the library refuses the rest, naming the option). */
function parseKeep(text: string, key: string): number {
  if (!/^\s*[-+]?\d+\s*$/.test(text)) {
    throw new VmsnapError('INVALID_ARGUMENT', `${optionName(key)}: '${text}' is not a whole number`, {
      hint: `1 or more keeps that many; 0 turns the rule off (e.g. ${optionName(key)} 7)`,
      details: { field: key, value: text },
    });
  }
  return Number(text);
}

/** The options given, as a patch of the policy (what is not given stays as it is). */
export function patchOf(o: SetOptions): PolicyPatch {
  const patch: PolicyPatch = {};
  if (o.schedule !== undefined) patch.schedule = o.schedule;
  if (o.tz !== undefined) patch.timeZone = o.tz;
  if (o.memory !== undefined) patch.memory = o.memory;
  if (o.namePattern !== undefined) patch.namePattern = o.namePattern;
  for (const key of KEEP_OPTIONS) {
    const v = o[key];
    if (v !== undefined) patch[key] = parseKeep(v, key);
  }
  if (o.maxBytes !== undefined) patch.maxBytes = /^\s*0+\s*$/.test(o.maxBytes) ? 0 : parseSize(o.maxBytes, '--max-bytes');
  return patch;
}

/** A time as the policy's zone reads it: "2026-11-25 03:00". */
function local(iso: string, timeZone: string): string {
  return new Date(iso).toLocaleString('sv-SE', { timeZone, hour12: false }).slice(0, 16);
}

function inAbout(iso: string): string {
  const s = Math.round((Date.parse(iso) - Date.now()) / 1000);
  if (s < 0) return 'due';
  if (s < 90) return `in ${s}s`;
  if (s < 5400) return `in ${Math.round(s / 60)}m`;
  if (s < 129_600) return `in ${Math.round(s / 3600)}h`;
  return `in ${Math.round(s / 86_400)}d`;
}

function lastRunText(p: PolicyView): string {
  const r = p.lastRun;
  if (!r) return 'never';
  const when = `${local(r.at, p.timeZone)}${r.trigger === 'schedule' ? '' : ` (${r.trigger === 'now' ? '--now' : 'finished by recovery'})`}`;
  if (r.status === 'failed') return `FAILED ${when}: ${r.error?.code ?? ''} ${r.error?.message ?? ''}${r.snapshot ? ` (took '${r.snapshot}')` : ''}`;
  const took = r.snapshot ? `took '${r.snapshot}'` : 'took nothing';
  return `ok ${when}: ${took}${r.deleted.length ? `, pruned ${r.deleted.length}` : ''}${r.missed ? `, ${r.missed} missed slot(s) caught up once` : ''}`;
}

function printPolicy(p: PolicyView): void {
  const s = p.spec;
  const out = [
    `policy of ${p.vm}`,
    `  schedule    ${s.schedule} in ${p.timeZone}${s.timeZone === null ? " (the host's zone)" : ''}`,
    `  keeps       ${p.rulesText}`,
    `  memory      ${s.memory === false ? 'no (disk only)' : 'yes, when the VM runs'}`,
    `  names       ${s.namePattern}`,
    `  next runs   ${p.nextRuns.map((r) => `${local(r, p.timeZone)} (${inAbout(r)})`).join(', ') || 'none'}`,
    `  last slot   ${p.lastSlot ? local(p.lastSlot, p.timeZone) : '-'}`,
    `  last run    ${lastRunText(p)}`,
    `  snapshots   ${p.snapshots} taken by it`,
    `  since       ${local(p.since, p.timeZone)} (slots before it are never taken)`,
  ];
  process.stdout.write(`${out.join('\n')}\n`);
}

async function printPrune(r: PruneResult): Promise<void> {
  const verb = r.dryRun ? 'would delete' : 'deleted';
  process.stdout.write(`${r.vm}: ${r.rules} (periods in ${r.timeZone})${r.dryRun ? ' — dry run: nothing is deleted' : ''}\n`);
  if (r.deleted.length > 0) {
    process.stdout.write(`\n${r.dryRun ? 'To delete' : 'Deleted'} (${r.deleted.length}), oldest first:\n`);
    await printTable(
      ['SNAPSHOT', 'TAKEN', 'WHY', r.dryRun ? 'FREES (ABOUT)' : 'FREED'],
      r.deleted.map((d) => [d.name, local(d.createdAt, r.timeZone), d.reason, formatBytes(d.bytes)]),
    );
  }
  if (r.skipped.length > 0) {
    process.stdout.write(`\nNot deleted, though no rule keeps them (${r.skipped.length}):\n`);
    await printTable(['SNAPSHOT', 'WHY NOT'], r.skipped.map((s) => [s.name, s.reason]));
  }
  if (r.kept.length > 0) {
    process.stdout.write(`\nKept (${r.kept.length}), newest first:\n`);
    await printTable(['SNAPSHOT', 'TAKEN', 'WHY'], r.kept.map((k) => [k.name, local(k.createdAt, r.timeZone), k.reasons.join(', ')]));
  }
  for (const w of r.warnings) process.stderr.write(`warning: ${w}\n`);
  const freed = r.deleted.length > 0 ? `, ${r.dryRun ? 'freeing about' : 'freed'} ${formatBytes(r.freedBytes)}` : '';
  process.stdout.write(`\n${verb} ${r.deleted.length} snapshot${r.deleted.length === 1 ? '' : 's'}${freed}; kept ${r.kept.length}\n`);
}

function runLine(r: PolicyRunResult): string {
  if (r.status === 'busy') return `${r.vm}: busy: ${r.error?.message ?? ''} (the next pass tries again)`;
  if (r.status === 'failed') return `${r.vm}: FAILED: ${r.error?.code ?? ''} ${r.error?.message ?? ''}`;
  const parts: string[] = [];
  if (r.snapshot) parts.push(`took '${r.snapshot}'${r.slot ? ` for slot ${r.slot}` : ''}${r.missed ? ` (${r.missed} missed slot${r.missed === 1 ? '' : 's'} caught up once)` : ''}`);
  else parts.push(r.note ?? 'nothing to take');
  const deleted = r.prune?.deleted ?? [];
  if (deleted.length) parts.push(`pruned ${deleted.map((d) => `'${d.name}' (${d.reason})`).join(', ')}, freed ${formatBytes(r.prune!.freedBytes)}`);
  for (const s of r.prune?.skipped ?? []) parts.push(`left '${s.name}': ${s.reason}`);
  if (r.nextRun) parts.push(`next slot ${r.nextRun}`);
  return `${r.vm}: ${parts.join('; ')}`;
}

export function registerPolicyCommands(program: Command, run: Run): void {
  const policy = program.command('policy').description('snapshot policies: a schedule, and retention rules that delete only what the policy took');

  policy
    .command('set')
    .description("set a VM's policy, or change the options given of the one it has")
    .argument('<vm>')
    .option('--schedule <cron>', "when to take snapshots: 5 cron fields ('0 3 * * *', '*/15 * * * *') or @hourly, @daily, @weekly, @monthly, @yearly")
    .option('--tz <zone>', "the schedule's and the retention periods' time zone (IANA, e.g. Europe/Berlin); default the host's ('host')")
    .option('--memory', 'include memory when the VM runs (the default)')
    .option('--no-memory', 'disk-only snapshots')
    .option('--name-pattern <pattern>', 'snapshot names: {yyyy} {yy} {MM} {dd} {HH} {mm} {ss} (default auto-{yyyy}{MM}{dd}-{HH}{mm})')
    .option('--keep-last <n>', 'keep the n newest policy snapshots (0: rule off)')
    .option('--keep-hourly <n>', 'keep the newest of each of the n latest hours that have one (0: off)')
    .option('--keep-daily <n>', 'keep the newest of each of the n latest days that have one (0: off)')
    .option('--keep-weekly <n>', 'keep the newest of each of the n latest ISO weeks that have one (0: off)')
    .option('--keep-monthly <n>', 'keep the newest of each of the n latest months that have one (0: off)')
    .option('--keep-yearly <n>', 'keep the newest of each of the n latest years that have one (0: off)')
    .option('--max-bytes <size>', 'then prune the oldest policy snapshots while the snapshots would free more than this (0: off)')
    .option('--json', 'print the policy as JSON')
    .action((vm: string, o: SetOptions) =>
      run(o, async (lib, log) => {
        const had = lib.policies.find(vm) !== null;
        const p = lib.policies.set(vm, patchOf(o));
        if (o.json) return printJson(p);
        log(`${had ? 'changed' : 'set'} the policy of '${vm}': ${p.spec.schedule} (${p.timeZone}), ${p.rulesText}; next snapshot ${p.nextRuns[0] ?? 'never'}`);
      }),
    );

  policy
    .command('show')
    .description("show a VM's policy: schedule, rules, next runs, last result")
    .argument('<vm>')
    .option('--json', 'print as JSON')
    .action((vm: string, o: { json?: boolean }) =>
      run(o, async (lib) => {
        const p = lib.policies.show(vm);
        if (o.json) return printJson(p);
        printPolicy(p);
      }),
    );

  policy
    .command('list')
    .alias('ls')
    .description('every policy')
    .option('--json', 'print as JSON')
    .action((o: { json?: boolean }) =>
      run(o, async (lib) => {
        const list = lib.policies.list();
        if (o.json) return printJson(list);
        if (list.length === 0) {
          process.stdout.write("no policies: set one with 'vmsnap policy set VM --schedule @daily --keep-daily 7'\n");
          return;
        }
        await printTable(
          ['VM', 'SCHEDULE', 'ZONE', 'RULES', 'NEXT RUN', 'LAST RUN', 'SNAPSHOTS'],
          list.map((p) => [
            p.vm,
            p.spec.schedule,
            p.timeZone,
            p.rulesText,
            p.nextRuns[0] ? local(p.nextRuns[0], p.timeZone) : '-',
            p.lastRun ? `${p.lastRun.status} ${local(p.lastRun.at, p.timeZone)}` : 'never',
            p.snapshots,
          ]),
        );
      }),
    );

  policy
    .command('rm')
    .description("remove a VM's policy (the snapshots it took stay, and nothing prunes them any more)")
    .argument('<vm>')
    .option('--json', 'print the result as JSON')
    .action((vm: string, o: { json?: boolean }) =>
      run(o, async (lib, log) => {
        const r = lib.policies.remove(vm);
        if (o.json) return printJson(r);
        log(`removed the policy of '${vm}'${r.snapshotsLeft ? `: its ${r.snapshotsLeft} snapshot${r.snapshotsLeft === 1 ? '' : 's'} stay` : ''}`);
      }),
    );

  policy
    .command('run')
    .description('one pass, for cron or a systemd timer: take the snapshot that is due, then prune (all VMs, or one)')
    .argument('[vm]', 'one VM (default: every VM with a policy or an expired snapshot)')
    .option('--now', 'take a policy snapshot at once, whatever the schedule, then prune')
    .option('--json', 'print the results as JSON')
    .action((vm: string | undefined, o: { now?: boolean; json?: boolean }) =>
      run(o, async (lib, log) => {
        const bar = progressBar(!o.json);
        const opts = { now: o.now ?? false, onProgress: (done: number, total: number, what: string) => bar.update(done, total, what) };
        let results: PolicyRunResult[];
        try {
          results = vm === undefined ? await lib.policies.runAll(opts) : [await lib.policies.run(vm, opts)];
        } finally {
          bar.stop();
        }
        for (const r of results) if (r.snapshot !== null) await fingerprintInBackground(r.vm);
        if (o.json) printJson(vm === undefined ? results : results[0]);
        else if (results.length === 0) log('no VM has a policy or an expired snapshot');
        else for (const r of results) log(runLine(r));
        // One VM asked for and busy: say so in the exit code; a timer's pass over all VMs just tries again next time.
        const failed = results.find((r) => r.status === 'failed' || (vm !== undefined && r.status === 'busy'));
        if (failed?.error) return new VmsnapError(failed.error.code, failed.error.message).exitCode;
        return 0;
      }),
    );

  program
    .command('prune')
    .description('delete what the policy no longer keeps and what has expired, saying why (which rule)')
    .argument('<vm>')
    .option('--dry-run', 'only show what would be deleted, why, and about how much it would free')
    .option('--json', 'print the result as JSON')
    .action((vm: string, o: { dryRun?: boolean; json?: boolean }) =>
      run(o, async (lib) => {
        let r: PruneResult;
        if (o.dryRun) r = await lib.policies.prunePlan(vm);
        else {
          const bar = progressBar(!o.json);
          try {
            r = await lib.policies.prune(vm, { onProgress: (done, total, what) => bar.update(done, total, what) });
          } finally {
            bar.stop();
          }
        }
        if (o.json) return printJson(r);
        await printPrune(r);
      }),
    );
}
