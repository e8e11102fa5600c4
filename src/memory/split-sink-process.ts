/**
 * The split sink in a process of its own (split-sink-main.ts), so QEMU's stream is read to
 * its end even when the vmsnap process that started a save is killed: a background
 * snapshot whose reader goes away can leave the guest hung in userfaultfd (README.md,
 * Pitfalls). `recover` then finds the save finished or failed, never stuck.
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { ERROR_CODES, VmsnapError } from '../errors.js';
import { ownNodeEnv } from '../util/process.js';
import type { SplitFilesResult, SplitSink, SplitToFilesOptions } from './split-files.js';

/** What the sink process is started with (one JSON argument). */
export const SinkArgsSchema = z.object({
  socket: z.string(),
  ram: z.string(),
  dev: z.string(),
  opts: z.object({
    ramBlock: z.string().optional(),
    snapshotId: z.string().optional(),
    hashRamImage: z.boolean().optional(),
    baseImage: z.string().optional(),
  }),
});
export type SinkArgs = z.infer<typeof SinkArgsSchema>;

const SinkMessageSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('listening'), uri: z.string() }),
  z.object({ type: z.literal('started') }),
  // The result is made by this same build's split-files.ts on the other side of the pipe.
  z.object({ type: z.literal('done'), result: z.custom<SplitFilesResult>((v) => typeof v === 'object' && v !== null) }),
  z.object({
    type: z.literal('failed'),
    error: z.object({ code: z.enum(ERROR_CODES), message: z.string(), hint: z.string().optional(), details: z.record(z.string(), z.unknown()) }),
  }),
]);
export type SinkMessage = z.infer<typeof SinkMessageSchema>;

/** The sink's script: beside this module once built; from the sources, the checkout's dist/ (rebuilt if stale). */
async function sinkScript(): Promise<string> {
  const here = import.meta.url;
  if (!here.endsWith('.ts')) return fileURLToPath(new URL('../memory/split-sink-main.js', here));
  const build = new URL('../../scripts/dist.mjs', here).href;
  const { ensureDist } = (await import(build)) as { ensureDist: () => Promise<void> };
  await ensureDist();
  return fileURLToPath(new URL('../../dist/memory/split-sink-main.js', here));
}

/**
 * Like openSplitSink, but the stream is read and split by a detached process: it outlives
 * this one and exits once the stream has ended (or, if no stream came, once `close()` is
 * called or this process is gone).
 */
export async function spawnSplitSink(
  socketPath: string,
  ramImagePath: string,
  deviceStatePath: string,
  opts: Omit<SplitToFilesOptions, 'maxRunBytes' | 'highWaterMark'> = {},
): Promise<SplitSink & { pid: number }> {
  const { onStarted, ...rest } = opts;
  const args: SinkArgs = { socket: socketPath, ram: ramImagePath, dev: deviceStatePath, opts: rest };
  // detached: a signal to vmsnap's process group (a terminal's ^C) does not reach it either;
  // vmsnap stops a save it gives up on through QEMU (migrate_cancel), which ends the stream.
  const child = spawn(process.execPath, [await sinkScript(), JSON.stringify(args)], { detached: true, stdio: ['pipe', 'pipe', 'pipe'], env: ownNodeEnv() });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    stderr = (stderr + d).slice(-4000);
  });
  child.stdin.on('error', () => undefined);
  const exited = new Promise<string>((resolve) => {
    child.once('error', (e) => resolve(e.message));
    // 'close', not 'exit': its stdout is read to the end first, so its last report is in.
    child.once('close', (code, signal) => resolve(`it exited (${signal ?? `code ${code}`})${stderr ? `: ${stderr.trim()}` : ''}`));
  });
  let listening: (uri: string) => void = () => undefined;
  let settle: { resolve: (r: SplitFilesResult) => void; reject: (e: unknown) => void } | undefined;
  const up = new Promise<string>((resolve) => {
    listening = resolve;
  });
  const done = new Promise<SplitFilesResult>((resolve, reject) => {
    settle = { resolve, reject };
  });
  done.catch(() => undefined); // observed by the caller
  createInterface({ input: child.stdout }).on('line', (line) => {
    let m;
    try {
      m = SinkMessageSchema.safeParse(JSON.parse(line));
    } catch {
      return;
    }
    if (!m.success) return;
    const msg = m.data;
    if (msg.type === 'listening') listening(msg.uri);
    else if (msg.type === 'started') onStarted?.();
    else if (msg.type === 'done') settle?.resolve(msg.result);
    else settle?.reject(new VmsnapError(msg.error.code, msg.error.message, { ...(msg.error.hint ? { hint: msg.error.hint } : {}), details: msg.error.details }));
  });
  void exited.then((why) => settle?.reject(new VmsnapError('INTERNAL', `the memory state's split process stopped before the save ended: ${why}`)));
  const uri = await Promise.race([up, exited.then((why) => Promise.reject(new VmsnapError('INTERNAL', `cannot start the memory state's split process: ${why}`)))]);
  if (child.pid === undefined) throw new VmsnapError('INTERNAL', 'the memory state split process has no pid');
  return {
    uri,
    done,
    pid: child.pid,
    close: () => {
      child.stdin.end();
    },
  };
}
