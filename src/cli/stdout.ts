import { fstatSync, writeSync } from 'node:fs';
import { createRequire } from 'node:module';

/**
 * The CLI's output, written straight to fd 1. Node builds `process.stdout` on first
 * use (for a pipe, a net.Socket: about 10 ms of a 100 ms start), so what `--help`,
 * `list` and `--json` print goes out with write(2) instead; the stream is made only
 * if a write would block (a non-blocking pipe that is full), and from then on carries
 * the rest so that the order holds (as it does once anything else made the stream).
 */
let stream: NodeJS.WriteStream | undefined;

/** `vmsnap list | head`: a closed pipe is the reader's choice, not an error. */
function onStdoutError(e: NodeJS.ErrnoException): void {
  if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw e;
}

export function writeOut(text: string): void {
  if (stream) {
    stream.write(text);
    return;
  }
  const buf = Buffer.from(text);
  let off = 0;
  try {
    while (off < buf.length) off += writeSync(1, buf, off);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EPIPE') process.exit(process.exitCode ?? 0);
    if (code !== 'EAGAIN') throw e;
    stream = process.stdout;
    stream.write(buf.subarray(off));
  }
}

/**
 * Commands that print through `process.stdout` get the EPIPE handling too, hooked in
 * when the stream is first made (Node defines it as a lazy getter) rather than by
 * making it at every start.
 */
export function handleStdoutErrors(): void {
  const desc = Object.getOwnPropertyDescriptor(process, 'stdout');
  const get = desc?.get;
  if (!desc || !get || !desc.configurable) {
    process.stdout.on('error', onStdoutError);
    return;
  }
  Object.defineProperty(process, 'stdout', {
    ...desc,
    get(): NodeJS.WriteStream {
      const s = get.call(process) as NodeJS.WriteStream;
      Object.defineProperty(process, 'stdout', { ...desc, get: () => s });
      s.on('error', onStdoutError);
      // Once the stream exists (a command printed through it), writeOut goes through it too: one queue, one order.
      stream = s;
      return s;
    },
  });
}

/**
 * Whether stdout is a terminal (`isatty(1)`), without loading node:tty when it is a pipe or a
 * file, as it is under scripts: node:tty loads net and the streams, about 5 ms of the start.
 * Only a character device can be a terminal; /dev/null is one too, so that case still asks.
 */
export function stdoutIsTerminal(): boolean {
  try {
    if (!fstatSync(1).isCharacterDevice()) return false;
  } catch {
    return false;
  }
  // A require of its own: output.ts's requireLazily would make the two modules import each other.
  const { isatty } = createRequire(import.meta.url)('node:tty') as typeof import('node:tty');
  return isatty(1);
}
