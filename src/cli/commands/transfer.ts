import type { Command } from 'commander';
import { formatBytes } from '../../util/size.js';
import type { Run } from '../main.js';
import { interruptible, printJson } from '../output.js';
import { progressBar } from '../progress.js';


const rate = (bytes: number, ms: number): string => `${formatBytes(bytes / Math.max(ms / 1000, 0.001))}/s`;

export function registerTransferCommands(program: Command, run: Run): void {
  program
    .command('export')
    .description('write a snapshot as one self-contained archive (flattened disks, memory state, config, checksums); the guest keeps running')
    .argument('<vm>')
    .argument('<snapshot>')
    .argument('<file>', 'the archive to write, e.g. web-before.vmsnap')
    .option('--force', 'replace FILE if it exists')
    .option('--json', 'print the result (with the manifest) as JSON')
    .action((vm: string, snapshot: string, file: string, o: { force?: boolean; json?: boolean }) =>
      run(o, async (lib, log) => {
        const bar = progressBar(!o.json);
        let r;
        try {
          r = await interruptible((signal) =>
            lib.transfer.export(vm, snapshot, file, { force: o.force ?? false, signal, onProgress: (done, total, what) => bar.update(done, total, what) }),
          );
        } finally {
          bar.stop();
        }
        if (o.json) return printJson(r);
        const parts = [`${r.disks.length} disk${r.disks.length === 1 ? '' : 's'}`, r.state ? `memory ${formatBytes(r.state.bytes)}` : 'disk only'];
        log(`exported snapshot '${r.snapshot}' of VM '${r.vm}' to ${r.file}: ${formatBytes(r.bytes)} (${parts.join(', ')}) in ${(r.ms / 1000).toFixed(1)} s, ${rate(r.bytes, r.ms)}`);
      }),
    );

  program
    .command('import')
    .description('make a new VM from an archive written by export; every checksum is verified first, and a damaged archive creates nothing')
    .argument('<file>')
    .argument('[name]', "the new VM's name (default: the exported VM's)")
    .option('--check', 'only verify the archive (every checksum, the disk images); create nothing')
    .option('--json', 'print the result as JSON')
    .action((file: string, name: string | undefined, o: { check?: boolean; json?: boolean }) =>
      run(o, async (lib, log) => {
        const bar = progressBar(!o.json);
        const onProgress = (done: number, total: number, what: string): void => bar.update(done, total, what);
        if (o.check) {
          let c;
          try {
            c = await interruptible((signal) => lib.transfer.check(file, { signal, onProgress }));
          } finally {
            bar.stop();
          }
          if (o.json) return printJson(c);
          log(`${file}: ok — snapshot '${c.source.snapshot}' of VM '${c.source.vm}', exported ${c.source.exportedAt}, ${c.disks.length} disk(s)${c.hasMemory ? ', memory' : ''}; every checksum matches`);
          return;
        }
        let r;
        try {
          r = await interruptible((signal) => lib.transfer.import(file, { ...(name !== undefined ? { name } : {}), signal, onProgress }));
        } finally {
          bar.stop();
        }
        if (o.json) return printJson(r);
        log(`imported VM '${r.vm}' from ${file} (${formatBytes(r.bytes)} in ${(r.ms / 1000).toFixed(1)} s): snapshot '${r.snapshot}' of '${r.source.vm}', ${r.hasMemory ? 'with memory' : 'disk only'}, mac ${r.mac}`);
        for (const w of r.warnings) process.stderr.write(`warning: ${w}\n`);
        log(
          r.hasMemory
            ? `resume it where it was: vmsnap snapshot revert ${r.vm} ${r.snapshot}   (or boot it: vmsnap start ${r.vm})`
            : `boot it: vmsnap start ${r.vm}`,
        );
      }),
    );
}
