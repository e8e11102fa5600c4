import type { Command } from 'commander';
import type { DiffReport, FileChange, SearchReport } from '../../contract/files.js';
import { formatBytes } from '../../util/size.js';
import type { Run } from '../main.js';
import { confirm, interruptible, printJson, printTable, usageError } from '../output.js';
import { progressBar } from '../progress.js';

/**
 * Guest files of snapshots: files (browse), cp, restore-file, diff, search.
 * Each command boots one libguestfs appliance (10 s idle, up to a minute on a
 * loaded host) for everything it reads; its phases are told on stderr.
 */

/** Progress bar and phase lines (on a terminal), and Ctrl-C. */
function feedback(json: boolean | undefined) {
  const bar = progressBar(!json);
  const tty = !json && process.stderr.isTTY;
  return {
    bar,
    opts: {
      onProgress: (what: string, done: number, total: number) => bar.update(done, total, what),
      onPhase: (text: string) => {
        if (tty) process.stderr.write(`${text}…\n`);
      },
    },
  };
}

const when = (iso: string): string => iso.slice(0, 19).replace('T', ' ');
const plural = (n: number, what: string): string => `${n} ${what}${n === 1 ? '' : 's'}`;

function printDiff(r: DiffReport, stat: boolean): void {
  const out: string[] = [];
  const p = r.present ? ` (frozen at ${when(r.present.frozenAt)}, guest I/O pause ${r.present.pauseMs.toFixed(1)} ms${r.present.quiesced ? ', quiesced' : ''})` : '';
  out.push(`diff of VM '${r.vm}': ${r.from} → ${r.to}${p}`);
  for (const d of r.disks) {
    out.push(
      d.status === 'compared'
        ? `${d.slot}: ${formatBytes(d.changedBytes)} written in between (${plural(d.layers, 'layer')} mapped)`
        : `${d.slot}: ${d.status === 'added' ? 'added' : 'removed'} (${formatBytes(d.virtualSize)})`,
    );
  }
  const mark: Record<FileChange['change'], string> = { added: 'A', removed: 'D', changed: 'M' };
  for (const f of r.filesystems) {
    const head = `${f.name} (${f.type}${f.device !== f.name ? ` on ${f.device}` : ''})`;
    if (f.status === 'unchanged') out.push(`${head}: unchanged (no write touched it)`);
    else if (f.status === 'unreadable') out.push(`${head}: unreadable: ${f.note ?? ''}`);
    else out.push(`${head}${f.status !== 'compared' ? ` ${f.status}` : ''}: ${f.added} added, ${f.removed} removed, ${f.changed} changed`);
    if (stat) continue;
    for (const c of f.changes ?? []) {
      const detail =
        c.change === 'changed'
          ? `  (${(c.aspects ?? []).join(', ')}${c.sizeBefore !== c.size ? `; ${formatBytes(c.sizeBefore ?? 0)} → ${formatBytes(c.size)}` : ''})`
          : c.type === 'file'
            ? `  (${formatBytes(c.size)})`
            : `  (${c.type})`;
      out.push(`  ${mark[c.change]} ${c.path}${detail}`);
    }
  }
  const t = r.totals;
  out.push(`total: ${t.added} added, ${t.removed} removed, ${t.changed} changed; ${formatBytes(t.changedBytes)} written on disk; ${(r.ms / 1000).toFixed(1)} s`);
  process.stdout.write(`${out.join('\n')}\n`);
}

function printSearch(r: SearchReport): void {
  if (r.snapshots.length === 0) {
    process.stdout.write(`VM '${r.vm}' has no snapshots to search\n`);
    return;
  }
  const out: string[] = [];
  for (const m of r.matches) {
    out.push(`${m.path}  (in ${m.versions.length} of ${r.snapshots.length} snapshots, ${plural(m.distinct, 'distinct version')})`);
    const w = Math.max(...m.versions.map((v) => v.snapshot.length));
    for (const v of m.versions) {
      const what = v.type === 'file' ? `${formatBytes(v.size).padStart(9)}  ${when(v.mtime)}  sha256:${v.sha256?.slice(0, 16) ?? '?'}` : `${v.type.padStart(9)}  ${when(v.mtime)}`;
      out.push(`  ${v.snapshot.padEnd(w)}  ${what}`);
    }
    if (m.missingIn.length) out.push(`  not in: ${m.missingIn.join(', ')}`);
  }
  for (const u of r.unreadable) out.push(`warning: ${u.snapshot}: ${u.filesystem} could not be read: ${u.reason}`);
  out.push(`${plural(r.matches.length, 'path')} match '${r.glob}' in ${plural(r.snapshots.length, 'snapshot')} (${(r.ms / 1000).toFixed(1)} s)`);
  process.stdout.write(`${out.join('\n')}\n`);
}

export function registerFilesCommands(program: Command, run: Run): void {
  program
    .command('files')
    .description("list a snapshot's filesystems, or a directory of one (read in an appliance; the VM may run)")
    .argument('<vm>')
    .argument('<snapshot>')
    .argument('[path]', 'a directory: /etc, or /dev/vda/… for a filesystem the guest has no fstab entry for')
    .option('--json', 'print as JSON')
    .action((vm: string, snapshot: string, path: string | undefined, o: { json?: boolean }) =>
      run(o, async (lib) => {
        const f = feedback(o.json);
        try {
          if (path === undefined) {
            const v = await interruptible((signal) => lib.files.filesystems(vm, snapshot, { ...f.opts, signal }));
            if (o.json) return printJson(v);
            if (v.filesystems.length) {
              await printTable(
                ['NAME', 'DEVICE', 'DISK', 'TYPE', 'SIZE', 'LABEL'],
                v.filesystems.map((x) => [x.name, x.device, x.slot ?? '-', x.type, x.sizeBytes !== undefined ? formatBytes(x.sizeBytes) : '-', x.label ?? '']),
              );
            } else process.stdout.write(`snapshot '${v.snapshot}' has no filesystem that can be read\n`);
            for (const u of v.unreadable) process.stdout.write(`${u.slot} (${u.device}): ${u.reason}\n`);
            return;
          }
          const l = await interruptible((signal) => lib.files.list(vm, snapshot, path, { ...f.opts, signal }));
          if (o.json) return printJson(l);
          await printTable(
            ['MODE', 'OWNER', 'SIZE', 'MODIFIED', 'NAME'],
            l.entries.map((e) => [e.modeText, `${e.uid}:${e.gid}`, e.type === 'dir' ? '-' : formatBytes(e.size), when(e.mtime), `${e.name}${e.type === 'dir' ? '/' : ''}${e.linkTarget !== undefined ? ` -> ${e.linkTarget}` : ''}`]),
          );
        } finally {
          f.bar.stop();
        }
      }),
    );

  program
    .command('cp')
    .description('copy a file or a directory tree out of a snapshot (modes and mtimes kept); DEST - writes to stdout')
    .argument('<vm>')
    .argument('<source>', 'SNAPSHOT:PATH, e.g. before-upgrade:/etc/nginx')
    .argument('<dest>', 'a host path (a directory: into it), or - for stdout (a directory comes as a tar)')
    .option('--force', 'replace an existing file at DEST')
    .option('--json', 'print the result as JSON (on stderr with DEST -)')
    .action((vm: string, source: string, dest: string, o: { force?: boolean; json?: boolean }) =>
      run(o, async (lib, log) => {
        const i = source.indexOf(':');
        if (i <= 0) throw usageError(`source: '${source}' is not SNAPSHOT:PATH`, `vmsnap cp ${vm} SNAPSHOT:/path/in/guest ${dest}`);
        const f = feedback(o.json || dest === '-');
        let r;
        try {
          r = await interruptible((signal) => lib.files.copyOut(vm, source.slice(0, i), source.slice(i + 1), dest, { ...f.opts, signal, force: o.force ?? false }));
        } finally {
          f.bar.stop();
        }
        if (dest === '-') {
          if (o.json) process.stderr.write(`${JSON.stringify(r)}\n`);
          return;
        }
        if (o.json) return printJson(r);
        log(`copied ${r.source} from '${r.snapshot}' to ${r.dest}: ${r.type === 'dir' ? plural(r.files, 'file') + ', ' : ''}${formatBytes(r.bytes)} in ${(r.ms / 1000).toFixed(1)} s`);
        for (const s of r.skipped) process.stderr.write(`skipped ${s.path}: ${s.reason}\n`);
      }),
    );

  program
    .command('restore-file')
    .description('put a file or a tree from a snapshot back into the VM: through its guest agent while it runs, into its disk while it is off')
    .argument('<vm>')
    .argument('<snapshot>')
    .argument('<path>', 'the file or directory in the snapshot')
    .option('--to <path>', 'where to put it (default: where it was)')
    .option('--force', 'overwrite what is there without asking')
    .option('--dry-run', 'say what would be written and overwritten; write nothing')
    .option('--json', 'print the result as JSON')
    .action((vm: string, snapshot: string, path: string, o: { to?: string; force?: boolean; dryRun?: boolean; json?: boolean }) =>
      run(o, async (lib, log) => {
        const f = feedback(o.json);
        let r;
        try {
          r = await interruptible((signal) =>
            lib.files.restore(vm, snapshot, path, {
              ...f.opts,
              signal,
              force: o.force ?? false,
              dryRun: o.dryRun ?? false,
              ...(o.to !== undefined ? { to: o.to } : {}),
              ...(o.json
                ? {}
                : {
                    confirm: async (v) => {
                      f.bar.stop();
                      process.stderr.write(`Restoring ${v.source} from '${v.snapshot}' overwrites:\n${v.overwrites.map((w) => `  - ${w}`).join('\n')}\n`);
                      return confirm('Overwrite them?');
                    },
                  }),
            }),
          );
        } finally {
          f.bar.stop();
        }
        if (o.json) return printJson(r);
        const what = `${r.source} from '${r.snapshot}' to ${r.target}${r.guestPath && r.guestPath !== r.target ? ` (${r.guestPath} in the guest)` : ''}`;
        const size = `${r.type === 'dir' ? `${plural(r.files, 'file')}, ` : ''}${formatBytes(r.bytes)}`;
        const via = r.via === 'guest-agent' ? 'through the guest agent' : 'into the stopped VM’s disk';
        if (o.dryRun) {
          log(`would restore ${what} ${via}: ${size}`);
          log(r.overwrites.length ? `would overwrite:\n${r.overwrites.map((w) => `  - ${w}`).join('\n')}` : 'would overwrite nothing');
          return;
        }
        log(`restored ${what} ${via}: ${size}${r.overwrites.length ? `, ${plural(r.overwrites.length, 'path')} overwritten` : ''} in ${(r.ms / 1000).toFixed(1)} s`);
      }),
    );

  program
    .command('diff')
    .description('what changed between two snapshots (or one and the present state): bytes per disk, files added, removed and changed per filesystem')
    .argument('<vm>')
    .argument('<from>', 'a snapshot')
    .argument('[to]', 'another snapshot (default: the present state, frozen for the read without stopping the guest)')
    .option('--stat', 'totals only')
    .option('--exact', 'hash every file of equal size on both sides, whatever its metadata says')
    .option('--json', 'print the report as JSON')
    .action((vm: string, from: string, to: string | undefined, o: { stat?: boolean; exact?: boolean; json?: boolean }) =>
      run(o, async (lib) => {
        const f = feedback(o.json);
        let r;
        try {
          r = await interruptible((signal) => lib.files.diff(vm, from, to, { ...f.opts, signal, stat: o.stat ?? false, exact: o.exact ?? false }));
        } finally {
          f.bar.stop();
        }
        if (o.json) return printJson(r);
        printDiff(r, o.stat ?? false);
      }),
    );

  program
    .command('search')
    .description('every snapshot holding a path that matches GLOB, with its size, mtime and SHA-256 in each')
    .argument('<vm>')
    .argument('<glob>', "'*.conf' (a name anywhere), 'nginx/*.conf' (at any depth), '/etc/**/hosts' (from the top); quote it")
    .option('--json', 'print the report as JSON')
    .action((vm: string, glob: string, o: { json?: boolean }) =>
      run(o, async (lib) => {
        const f = feedback(o.json);
        let r;
        try {
          r = await interruptible((signal) => lib.files.search(vm, glob, { ...f.opts, signal }));
        } finally {
          f.bar.stop();
        }
        if (o.json) return printJson(r);
        printSearch(r);
      }),
    );
}
