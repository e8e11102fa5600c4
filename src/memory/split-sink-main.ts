/**
 * The split sink as a process of its own (spawned by split-sink-process.ts): QEMU's
 * migration stream must be read to its end even if the vmsnap process that started the
 * save is killed, because a background snapshot whose reader goes away can hang the guest
 * for good (QEMU 7.2 leaves guest RAM write-protected with nobody to serve the faults: see
 * README.md). This process is detached from vmsnap's; it reports on stdout, one JSON
 * line per event, and gives up (if no stream came yet) when its stdin closes.
 */
import { openSplitSink } from './split-files.js';
import { SinkArgsSchema, type SinkMessage } from './split-sink-process.js';
import { toVmsnapError } from '../errors.js';

function report(m: SinkMessage): void {
  // The parent may be gone (that is why this process exists): a closed pipe is not an error here.
  try {
    process.stdout.write(`${JSON.stringify(m)}\n`);
  } catch {
    // ignored
  }
}
process.stdout.on('error', () => undefined);
// Its stderr is a pipe to the parent too: a warning written after the parent is gone must not kill the reader mid-stream.
process.stderr.on('error', () => undefined);

const args = SinkArgsSchema.parse(JSON.parse(process.argv[2] ?? '{}'));
const sink = await openSplitSink(args.socket, args.ram, args.dev, { ...args.opts, onStarted: () => report({ type: 'started' }) });
process.stdin.on('data', () => undefined);
process.stdin.once('end', () => sink.close());
process.stdin.once('error', () => sink.close());
report({ type: 'listening', uri: sink.uri });
try {
  report({ type: 'done', result: await sink.done });
  process.exitCode = 0;
} catch (e) {
  report({ type: 'failed', error: toVmsnapError(e).toJSON() });
  process.exitCode = 1;
} finally {
  sink.close();
  // stdin may still be open (a live parent): nothing is left to do.
  process.stdin.destroy();
}
