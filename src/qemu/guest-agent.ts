import type { Socket } from 'node:net';
import { GuestAgentCommandError, VmsnapError } from '../errors.js';
import { JsonObjectSplitter, connectUnixSocket, isRecord } from './qmp.js';

/**
 * A client for qemu-ga, the QEMU guest agent, over the virtio-serial chardev socket
 * that QEMU serves on the host. The protocol is QMP-like but has no greeting and no
 * command ids: replies come in order, one command at a time. A client that times
 * out cannot tell a late reply from the next one, so it resyncs with
 * guest-sync-delimited (docs/interop/qemu-ga-ref): send 0xFF (flushes the agent's
 * parser), then the sync with a fresh id; the agent prefixes its reply with 0xFF;
 * everything before the reply carrying our id is stale and dropped.
 */

export interface GuestExecOptions {
  /** Written to the process's stdin. */
  input?: string;
  /** How long the process may run. Default 60 s. */
  timeoutMs?: number;
  /** Extra environment, as NAME: value. */
  env?: Record<string, string>;
}

export interface GuestExecResult {
  /** The exit status; 128 + signal when a signal killed the process (as shells report it). */
  exitCode: number;
  stdout: string;
  stderr: string;
  signal?: number;
}

export interface GuestAgentOptions {
  timeoutMs?: number;
}

type Message = Record<string, unknown>;

const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;
const FILE_CHUNK = 1 << 20;
const UNAVAILABLE_HINT =
  'is the VM running? did the guest boot and start qemu-ga (see the VM serial log)? only one client can use the agent socket at a time';

const noop = (): void => {};
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class GuestAgentClient {
  private queue: Promise<unknown> = Promise.resolve();
  /** The one reader of incoming messages while a request waits for its reply. */
  private reader: { onMessage: (m: Message) => void; onClose: () => void } | undefined;
  private needSync = true;
  private nextSyncId = Math.floor(Math.random() * 0x3fffffff);
  private isClosed = false;

  private constructor(
    private readonly socket: Socket,
    readonly socketPath: string,
    private readonly commandTimeoutMs: number,
  ) {
    // Any 0xFF resets the splitter, so a partial stale message never corrupts the next one.
    const splitter = new JsonObjectSplitter((m) => {
      if (isRecord(m)) this.reader?.onMessage(m);
    });
    socket.on('data', (chunk: Buffer) => splitter.push(chunk));
    socket.on('error', noop); // 'close' follows
    socket.on('close', () => {
      this.isClosed = true;
      this.reader?.onClose();
    });
  }

  /** Connects and syncs; fails with GUEST_AGENT_UNAVAILABLE if the agent does not answer within timeoutMs (default 10 s). */
  static async connect(socketPath: string, opts: GuestAgentOptions = {}): Promise<GuestAgentClient> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const client = await GuestAgentClient.open(socketPath, timeoutMs);
    try {
      await client.enqueue(() => client.sync(timeoutMs));
      return client;
    } catch (e) {
      await client.close();
      throw e;
    }
  }

  /**
   * Waits until the agent answers (it starts only once the guest has booted): syncs with
   * a ~1 s timeout per try until one succeeds or timeoutMs (default 90 s) has passed.
   */
  static async waitUntilReady(socketPath: string, opts: GuestAgentOptions = {}): Promise<GuestAgentClient> {
    const timeoutMs = opts.timeoutMs ?? 90_000;
    const deadline = Date.now() + timeoutMs;
    const client = await GuestAgentClient.open(socketPath, timeoutMs);
    try {
      for (;;) {
        const left = deadline - Date.now();
        try {
          await client.enqueue(() => client.sync(Math.max(1, Math.min(1000, left))));
          break;
        } catch (e) {
          // A closed connection will not come back: only a silent agent is worth more tries.
          if (client.isClosed || !(e instanceof VmsnapError && e.code === 'GUEST_AGENT_UNAVAILABLE')) throw e;
          if (Date.now() >= deadline) {
            throw new VmsnapError('GUEST_AGENT_UNAVAILABLE', `the guest agent at ${socketPath} did not answer within ${timeoutMs} ms`, {
              hint: UNAVAILABLE_HINT,
              details: { socket: socketPath, timeoutMs },
              cause: e,
            });
          }
        }
      }
      await client.ping();
      return client;
    } catch (e) {
      await client.close();
      throw e;
    }
  }

  private static async open(socketPath: string, retryMs: number): Promise<GuestAgentClient> {
    try {
      return new GuestAgentClient(await connectUnixSocket(socketPath, retryMs), socketPath, DEFAULT_COMMAND_TIMEOUT_MS);
    } catch (e) {
      throw new VmsnapError('GUEST_AGENT_UNAVAILABLE', `cannot connect to the guest agent socket ${socketPath}: ${(e as Error).message}`, {
        hint: 'is the VM running?',
        details: { socket: socketPath },
        cause: e,
      });
    }
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Runs `fn` after every request queued before it: the protocol allows one at a time. */
  private enqueue<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn);
    this.queue = run.catch(noop);
    return run;
  }

  /** Writes `payload` and resolves with the first message `accept`ed, or undefined on timeout. */
  private request(payload: Buffer, accept: (m: Message) => boolean, timeoutMs: number, what: string): Promise<Message | undefined> {
    if (this.isClosed) return Promise.reject(this.closedError(what));
    return new Promise<Message | undefined>((resolve, reject) => {
      const finish = (): void => {
        clearTimeout(timer);
        this.reader = undefined;
      };
      const timer = setTimeout(() => {
        finish();
        resolve(undefined);
      }, timeoutMs);
      this.reader = {
        onMessage: (m) => {
          if (!accept(m)) return;
          finish();
          resolve(m);
        },
        onClose: () => {
          finish();
          reject(this.closedError(what));
        },
      };
      this.socket.write(payload);
    });
  }

  private closedError(what: string): VmsnapError {
    return new VmsnapError('GUEST_AGENT_UNAVAILABLE', `guest agent connection closed while waiting for '${what}'`, {
      hint: UNAVAILABLE_HINT,
      details: { command: what, socket: this.socketPath },
    });
  }

  private timeoutError(what: string, timeoutMs: number): VmsnapError {
    return new VmsnapError('GUEST_AGENT_UNAVAILABLE', `the guest agent did not answer '${what}' within ${timeoutMs} ms`, {
      hint: UNAVAILABLE_HINT,
      details: { command: what, socket: this.socketPath, timeoutMs },
    });
  }

  private async sync(timeoutMs: number): Promise<void> {
    const id = this.nextSyncId++;
    const payload = Buffer.concat([
      Buffer.from([0xff]),
      Buffer.from(JSON.stringify({ execute: 'guest-sync-delimited', arguments: { id } }) + '\n'),
    ]);
    const reply = await this.request(payload, (m) => m.return === id, timeoutMs, 'guest-sync-delimited');
    if (!reply) throw this.timeoutError('guest-sync-delimited', timeoutMs);
    this.needSync = false;
  }

  /** Runs one guest-agent command; resyncs first if an earlier one timed out. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: { timeoutMs?: number } = {}): Promise<T> {
    const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
    return this.enqueue(async () => {
      if (this.needSync) await this.sync(timeoutMs);
      const payload = Buffer.from(JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}) }) + '\n');
      const reply = await this.request(payload, () => true, timeoutMs, command);
      if (!reply) {
        this.needSync = true; // a late reply may still come: drop it at the next sync
        throw this.timeoutError(command, timeoutMs);
      }
      return unwrap<T>(command, reply);
    });
  }

  async ping(): Promise<void> {
    await this.execute('guest-ping');
  }

  /** Runs a program in the guest (no shell: use `sh -c` for one) and waits for it to exit. */
  async exec(path: string, args: string[] = [], opts: GuestExecOptions = {}): Promise<GuestExecResult> {
    const timeoutMs = opts.timeoutMs ?? 60_000;
    const { pid } = await this.execute<{ pid: number }>('guest-exec', {
      path,
      arg: args,
      'capture-output': true,
      ...(opts.env ? { env: Object.entries(opts.env).map(([k, v]) => `${k}=${v}`) } : {}),
      ...(opts.input !== undefined ? { 'input-data': Buffer.from(opts.input).toString('base64') } : {}),
    });
    const deadline = Date.now() + timeoutMs;
    for (let delay = 10; ; delay = Math.min(delay * 2, 250)) {
      const s = await this.execute<ExecStatus>('guest-exec-status', { pid });
      if (s.exited) {
        return {
          exitCode: s.exitcode ?? (s.signal !== undefined ? 128 + s.signal : -1),
          stdout: decode(s['out-data']),
          stderr: decode(s['err-data']),
          ...(s.signal !== undefined ? { signal: s.signal } : {}),
        };
      }
      if (Date.now() >= deadline) {
        // guest-exec has no way to kill the process: say which one is left running.
        throw new VmsnapError('GUEST_AGENT_ERROR', `'${[path, ...args].join(' ')}' did not exit within ${timeoutMs} ms (pid ${pid} still runs in the guest)`, {
          details: { path, pid, timeoutMs },
        });
      }
      await sleep(Math.min(delay, Math.max(0, deadline - Date.now())));
    }
  }

  async readFile(path: string): Promise<Buffer> {
    const handle = await this.execute<number>('guest-file-open', { path, mode: 'r' });
    try {
      const parts: Buffer[] = [];
      for (;;) {
        const r = await this.execute<{ count: number; 'buf-b64': string; eof: boolean }>('guest-file-read', { handle, count: FILE_CHUNK });
        parts.push(Buffer.from(r['buf-b64'], 'base64'));
        if (r.eof || r.count === 0) break;
      }
      return Buffer.concat(parts);
    } finally {
      await this.execute('guest-file-close', { handle }).catch(noop);
    }
  }

  async writeFile(path: string, data: Buffer | string): Promise<void> {
    await this.writeStream(path, [typeof data === 'string' ? Buffer.from(data) : data]);
  }

  /**
   * Writes a stream to a file in the guest (created or truncated), 1 MiB per
   * guest-file-write; resolves with the bytes written. The file is closed (and
   * flushed) before it resolves; on a failure it is closed and left as it is.
   */
  async writeStream(path: string, source: AsyncIterable<Buffer | string> | Iterable<Buffer | string>, onBytes?: (n: number) => void): Promise<number> {
    const handle = await this.execute<number>('guest-file-open', { path, mode: 'w' });
    let closed = false;
    let total = 0;
    try {
      let pending = Buffer.alloc(0);
      const flush = async (all: boolean): Promise<void> => {
        while (pending.length >= FILE_CHUNK || (all && pending.length > 0)) {
          const chunk = pending.subarray(0, FILE_CHUNK);
          const r = await this.execute<{ count: number }>('guest-file-write', { handle, 'buf-b64': chunk.toString('base64') });
          if (r.count <= 0) throw new VmsnapError('GUEST_AGENT_ERROR', `writing ${path} in the guest made no progress at byte ${total}`);
          pending = pending.subarray(r.count);
          total += r.count;
          onBytes?.(r.count);
        }
      };
      for await (const c of source) {
        pending = Buffer.concat([pending, typeof c === 'string' ? Buffer.from(c) : c]);
        await flush(false);
      }
      await flush(true);
      closed = true;
      await this.execute('guest-file-close', { handle });
    } finally {
      if (!closed) await this.execute('guest-file-close', { handle }).catch(noop);
    }
    return total;
  }

  /** Freezes the guest's filesystems; resolves with how many were frozen. */
  async fsfreezeFreeze(opts: { timeoutMs?: number } = {}): Promise<number> {
    return this.execute<number>('guest-fsfreeze-freeze', undefined, opts);
  }

  /** Thaws them; resolves with how many were thawed. */
  async fsfreezeThaw(opts: { timeoutMs?: number } = {}): Promise<number> {
    return this.execute<number>('guest-fsfreeze-thaw', undefined, opts);
  }

  async fsfreezeStatus(): Promise<'thawed' | 'frozen'> {
    return this.execute<'thawed' | 'frozen'>('guest-fsfreeze-status');
  }

  /**
   * Asks the guest to shut down. qemu-ga sends no reply on success, only on error, so
   * this waits `replyWaitMs` (default 1 s) for an error and otherwise assumes success.
   */
  shutdown(mode: 'powerdown' | 'halt' | 'reboot' = 'powerdown', opts: { replyWaitMs?: number } = {}): Promise<void> {
    const waitMs = opts.replyWaitMs ?? 1000;
    return this.enqueue(async () => {
      if (this.needSync) await this.sync(this.commandTimeoutMs);
      const payload = Buffer.from(JSON.stringify({ execute: 'guest-shutdown', arguments: { mode } }) + '\n');
      let reply: Message | undefined;
      try {
        reply = await this.request(payload, () => true, waitMs, 'guest-shutdown');
      } catch {
        return; // the connection closed: the guest is going down
      }
      if (!reply) {
        this.needSync = true;
        return;
      }
      unwrap(`guest-shutdown`, reply);
    });
  }

  async close(): Promise<void> {
    if (this.isClosed) return;
    const closed = new Promise<void>((r) => this.socket.once('close', () => r()));
    this.socket.destroy();
    await closed;
  }
}

interface ExecStatus {
  exited: boolean;
  exitcode?: number;
  signal?: number;
  'out-data'?: string;
  'err-data'?: string;
}

function unwrap<T>(command: string, reply: Message): T {
  if (isRecord(reply.error)) {
    throw new GuestAgentCommandError(command, String(reply.error.class ?? 'GenericError'), String(reply.error.desc ?? ''));
  }
  return reply.return as T;
}

function decode(b64: string | undefined): string {
  return b64 === undefined ? '' : Buffer.from(b64, 'base64').toString('utf8');
}
