import { Command, CommanderError } from 'commander';
import { readFileSync } from 'node:fs';
import type { Vmsnap } from '../vmsnap.js';
import { reportError } from './output.js';
import { handleStdoutErrors, stdoutIsTerminal, writeOut } from './stdout.js';
import { registerVmCommands } from './commands/vm.js';
import { registerSnapshotCommands } from './commands/snapshot.js';
import { registerMaintenanceCommands } from './commands/maintenance.js';
import { registerHealthCommands } from './commands/health.js';
import { registerServeCommand } from './commands/serve.js';
import { registerTransferCommands } from './commands/transfer.js';
import { registerPolicyCommands } from './commands/policy.js';
import { registerFilesCommands } from './commands/files.js';

/**
 * How every command runs: open the library, do the work, close, and turn a
 * thrown VmsnapError into its message and stable exit code. An action may
 * return an exit code (exec passes the guest command's through).
 *
 * The library is imported here, when a command runs, not when the CLI starts:
 * building the command tree (and answering --help) loads only commander and
 * these small modules. Keep it so: a command module imports nothing heavy at
 * its top (the library, zod, hono, better-sqlite3, string-width, cli-progress);
 * its action imports what it needs.
 */
export type Run = (
  opts: { json?: boolean; [option: string]: unknown },
  action: (lib: Vmsnap, log: (line: string) => void) => Promise<number | void>,
) => Promise<void>;

const run: Run = async (opts, action) => {
  let lib: Vmsnap | undefined;
  // Human progress goes to stderr with --json, so stdout stays parseable.
  const log = (line: string): void => {
    if (opts.json) process.stderr.write(`${line}\n`);
    else writeOut(`${line}\n`);
  };
  try {
    // zod without its compiled parsers: see zod-jitless.ts.
    await import('./zod-jitless.js');
    const { Vmsnap } = await import('../vmsnap.js');
    lib = Vmsnap.open();
    const code = await action(lib, log);
    process.exitCode = typeof code === 'number' ? code : 0;
  } catch (e) {
    process.exitCode = reportError(e, opts.json ?? false);
  } finally {
    // The catalog backup owed for what this command changed (see catalog/backups.ts).
    await lib?.settle();
    lib?.close();
  }
};

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

export function buildProgram(): Command {
  const program = new Command('vmsnap')
    .description('live snapshots for QEMU/KVM virtual machines: take, list, revert, delete, clone')
    .version(version())
    .showHelpAfterError('(run with --help for usage)')
    .addHelpText(
      'after',
      `
Environment:
  VMSNAP_HOME         data dir (catalog, layers, state files); default ~/.local/share/vmsnap
  VMSNAP_ACCEL        auto|kvm|tcg: overrides the accelerator
  VMSNAP_IMAGE_CACHE  where the demo guest is built; default ~/.cache/vmsnap/images

Exit codes: 0 ok, 2 bad input, 3 not found, 4 already exists, 5 wrong state,
6 busy, 7 would lose data, 10-15 QEMU/guest agent errors, 16 no space,
17 catalog damaged or lost (see vmsnap recover --help).`,
    );
  registerVmCommands(program, run);
  registerSnapshotCommands(program, run);
  registerMaintenanceCommands(program, run);
  registerHealthCommands(program, run);
  registerTransferCommands(program, run);
  registerPolicyCommands(program, run);
  registerFilesCommands(program, run);
  registerServeCommand(program);
  return program;
}

/** Run the CLI: bin/vmsnap.cjs calls this with process.argv (this module does not run itself). */
export async function main(argv: string[]): Promise<void> {
  handleStdoutErrors();
  const program = buildProgram();
  const output = {
    writeOut,
    writeErr: (s: string) => process.stderr.write(s),
    // Commander's defaults read process.stdout.isTTY, which makes the stream (see stdout.ts); 80 is its width for a pipe.
    getOutHelpWidth: () => (stdoutIsTerminal() ? process.stdout.columns : 80),
    getOutHasColors: () => stdoutIsTerminal() && (process.stdout.hasColors?.() ?? false),
  };
  // Every command, not only the program: subcommands copied their settings when they were made.
  const override = (c: Command): void => {
    c.exitOverride();
    c.configureOutput(output);
    c.commands.forEach(override);
  };
  override(program);
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      // Help and version exit 0; usage errors exit 2 like other Unix tools.
      process.exitCode = e.exitCode === 0 ? 0 : 2;
      return;
    }
    process.exitCode = reportError(e, argv.includes('--json'));
  }
}
