import { connect as netConnect, type Socket } from 'node:net';
import { QmpCommandError, VmsnapError } from '../errors.js';

/**
 * A QMP client (QEMU Machine Protocol, docs/interop/qmp-spec). One JSON object per
 * message; commands carry an `id` that QEMU echoes in the reply, so commands may be
 * in flight concurrently; events (no id) arrive at any time in between.
 */

export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
}

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
  /** QEMU's timestamp in milliseconds since the epoch (host clock, microsecond precision). */
  timeMs: number;
}

export interface QmpConnectOptions {
  /** How long to wait for the greeting and the capabilities negotiation. Default 10 s. */
  timeoutMs?: number;
  /** Keep retrying for this long while the socket does not exist yet or refuses (QEMU creates it asynchronously). Default 0. */
  retryUntilMs?: number;
  /** Default timeout of each command. Default 30 s. */
  commandTimeoutMs?: number;
}

export interface WaitForEventOptions {
  predicate?: (e: QmpEvent) => boolean;
  /** No timeout unless given; the wait always ends when the connection closes. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;
const noop = (): void => {};

/**
 * Splits a byte stream into top-level JSON objects without relying on newlines
 * (QMP ends messages with CRLF, the guest agent with LF, and a 0xFF byte — never
 * valid in UTF-8 — is the guest agent's resync sentinel: it discards any partial
 * message). Byte-wise scanning is safe for UTF-8: multi-byte sequences never
 * contain ASCII bytes.
 */
export class JsonObjectSplitter {
  private parts: Buffer[] = [];
  private depth = 0;
  private inString = false;
  private escaped = false;

  constructor(
    private readonly onObject: (value: unknown) => void,
    private readonly onSentinel: () => void = noop,
  ) {}

  push(chunk: Buffer): void {
    let start = -1; // where the current object begins in this chunk, if it began here
    if (this.depth > 0) start = 0;
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i]!;
      if (b === 0xff) {
        this.reset();
        start = -1;
        this.onSentinel();
        continue;
      }
      if (this.depth === 0) {
        if (b === 0x7b /* { */) {
          this.depth = 1;
          start = i;
        }
        continue; // whitespace and stray bytes between objects
      }
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (b === 0x5c /* \ */) this.escaped = true;
        else if (b === 0x22 /* " */) this.inString = false;
        continue;
      }
      if (b === 0x22) this.inString = true;
      else if (b === 0x7b || b === 0x5b) this.depth++;
      else if (b === 0x7d || b === 0x5d) {
        this.depth--;
        if (this.depth === 0) {
          this.parts.push(chunk.subarray(start, i + 1));
          const text = Buffer.concat(this.parts).toString('utf8');
          this.parts = [];
          start = -1;
          let value: unknown;
          try {
            value = JSON.parse(text);
          } catch {
            continue; // garbage from a previous, interrupted session: skip it
          }
          this.onObject(value);
        }
      }
    }
    if (this.depth > 0 && start >= 0) this.parts.push(chunk.subarray(start));
  }

  reset(): void {
    this.parts = [];
    this.depth = 0;
    this.inString = false;
    this.escaped = false;
  }
}

export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Connects to a unix socket, retrying while it does not exist yet or refuses, until `retryUntilMs` have passed. */
export async function connectUnixSocket(path: string, retryUntilMs = 0): Promise<Socket> {
  const deadline = Date.now() + retryUntilMs;
  for (;;) {
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const s = netConnect(path);
        s.once('connect', () => {
          s.removeListener('error', reject);
          resolve(s);
        });
        s.once('error', reject);
      });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      const retryable = code === 'ENOENT' || code === 'ECONNREFUSED';
      if (!retryable || Date.now() >= deadline) throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

interface Pending {
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class QmpClient {
  private greetingMsg: QmpGreeting | undefined;
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private readonly eventListeners = new Set<(e: QmpEvent) => void>();
  private readonly closeListeners = new Set<() => void>();
  private greetingWaiter: ((g: unknown) => void) | undefined;
  private isClosed = false;

  private constructor(
    private readonly socket: Socket,
    readonly socketPath: string,
    private readonly commandTimeoutMs: number,
  ) {
    const splitter = new JsonObjectSplitter((msg) => this.dispatch(msg));
    socket.on('data', (chunk: Buffer) => splitter.push(chunk));
    socket.on('error', noop); // 'close' follows and does the cleanup
    socket.on('close', () => this.handleClose());
  }

  static async connect(socketPath: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    let socket: Socket;
    try {
      socket = await connectUnixSocket(socketPath, opts.retryUntilMs ?? 0);
    } catch (e) {
      throw new VmsnapError('QMP_DISCONNECTED', `cannot connect to QMP socket ${socketPath}: ${(e as Error).message}`, {
        hint: 'is the VM running?',
        details: { socket: socketPath },
        cause: e,
      });
    }
    const client = new QmpClient(socket, socketPath, opts.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS);
    try {
      client.greetingMsg = await client.readGreeting(timeoutMs);
      await client.execute('qmp_capabilities', undefined, { timeoutMs });
      return client;
    } catch (e) {
      await client.close();
      throw e;
    }
  }

  /** The greeting QEMU sent: its version and capabilities. */
  get greeting(): QmpGreeting {
    if (!this.greetingMsg) throw new VmsnapError('INTERNAL', 'QMP greeting read before connect() finished');
    return this.greetingMsg;
  }

  /** "7.2.22" */
  get qemuVersion(): string {
    const v = this.greeting.version.qemu;
    return `${v.major}.${v.minor}.${v.micro}`;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  private readGreeting(timeoutMs: number): Promise<QmpGreeting> {
    return new Promise<QmpGreeting>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.greetingWaiter = undefined;
        unsubscribe();
        reject(
          new VmsnapError('QMP_TIMEOUT', `no QMP greeting on ${this.socketPath} within ${timeoutMs} ms`, {
            // QEMU serves one client per QMP socket; a second one waits unanswered.
            hint: 'another client may hold this QMP socket (QEMU serves one at a time)',
            details: { socket: this.socketPath, timeoutMs },
          }),
        );
      }, timeoutMs);
      const onClose = (): void => {
        clearTimeout(timer);
        reject(new VmsnapError('QMP_DISCONNECTED', `QMP socket ${this.socketPath} closed before the greeting (did QEMU exit?)`));
      };
      const unsubscribe = this.onClose(onClose);
      this.greetingWaiter = (g) => {
        clearTimeout(timer);
        unsubscribe();
        this.greetingWaiter = undefined;
        const qmp = isRecord(g) ? g.QMP : undefined;
        if (!isRecord(qmp) || !isRecord(qmp.version)) {
          reject(new VmsnapError('QMP_ERROR', `${this.socketPath} did not greet like QMP: ${JSON.stringify(g)}`));
          return;
        }
        resolve(qmp as unknown as QmpGreeting);
      };
    });
  }

  private dispatch(msg: unknown): void {
    if (!isRecord(msg)) return;
    if (this.greetingWaiter && 'QMP' in msg) {
      this.greetingWaiter(msg);
      return;
    }
    if (typeof msg.event === 'string') {
      const ts = isRecord(msg.timestamp) ? msg.timestamp : {};
      const seconds = typeof ts.seconds === 'number' ? ts.seconds : 0;
      const microseconds = typeof ts.microseconds === 'number' ? ts.microseconds : 0;
      const event: QmpEvent = {
        event: msg.event,
        data: isRecord(msg.data) ? msg.data : {},
        timestamp: { seconds, microseconds },
        timeMs: seconds * 1000 + microseconds / 1000,
      };
      for (const l of [...this.eventListeners]) l(event);
      return;
    }
    // Replies without an id (QEMU's answer to unparsable input) cannot be matched: we never send such input.
    if (typeof msg.id !== 'string') return;
    const p = this.pending.get(msg.id);
    if (!p) return; // the command already timed out
    this.pending.delete(msg.id);
    clearTimeout(p.timer);
    if (isRecord(msg.error)) {
      p.reject(new QmpCommandError(p.command, String(msg.error.class ?? 'GenericError'), String(msg.error.desc ?? '')));
    } else {
      p.resolve(msg.return);
    }
  }

  private disconnectedError(command: string): VmsnapError {
    return new VmsnapError('QMP_DISCONNECTED', `QMP connection closed while waiting for '${command}' (did QEMU exit?)`, {
      details: { command, socket: this.socketPath },
    });
  }

  /** Runs one command. Rejects with QmpCommandError on an error reply, QMP_TIMEOUT, or QMP_DISCONNECTED. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: { timeoutMs?: number } = {}): Promise<T> {
    if (this.isClosed) return Promise.reject(this.disconnectedError(command));
    const id = `vmsnap-${this.nextId++}`;
    const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(
          new VmsnapError('QMP_TIMEOUT', `QEMU did not answer '${command}' within ${timeoutMs} ms`, {
            hint: 'QEMU may be hung or very busy; check that the VM process is alive',
            details: { command, timeoutMs },
          }),
        );
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      const msg = { execute: command, ...(args === undefined ? {} : { arguments: args }), id };
      this.socket.write(JSON.stringify(msg) + '\n');
    });
  }

  async queryStatus(): Promise<{ status: string; running: boolean }> {
    return this.execute<{ status: string; running: boolean }>('query-status');
  }

  /** Calls `listener` for every event until the returned function is called. */
  onEvent(listener: (e: QmpEvent) => void): () => void {
    this.eventListeners.add(listener);
    return () => this.eventListeners.delete(listener);
  }

  /**
   * Resolves with the next event named `name` (matching `predicate`). The listener is
   * in place when this returns, so call it BEFORE the command that causes the event:
   *   const done = qmp.waitForEvent('STOP'); await qmp.execute('stop'); await done;
   * Rejects with QMP_TIMEOUT, QMP_DISCONNECTED, or INTERRUPTED (signal). A rejection
   * nobody awaits does not count as unhandled.
   */
  waitForEvent(name: string, opts: WaitForEventOptions = {}): Promise<QmpEvent> {
    const p = new Promise<QmpEvent>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const cleanup = (): void => {
        unsubscribe();
        unClose();
        if (timer) clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
      };
      const unsubscribe = this.onEvent((e) => {
        if (e.event !== name || (opts.predicate && !opts.predicate(e))) return;
        cleanup();
        resolve(e);
      });
      const unClose = this.onClose(() => {
        cleanup();
        reject(this.disconnectedError(`event ${name}`));
      });
      const onAbort = (): void => {
        cleanup();
        reject(new VmsnapError('INTERRUPTED', `stopped waiting for QMP event ${name}`, { cause: opts.signal?.reason }));
      };
      if (opts.timeoutMs !== undefined) {
        timer = setTimeout(() => {
          cleanup();
          reject(new VmsnapError('QMP_TIMEOUT', `no QMP event ${name} within ${opts.timeoutMs} ms`, { details: { event: name } }));
        }, opts.timeoutMs);
      }
      if (opts.signal?.aborted) onAbort();
      else opts.signal?.addEventListener('abort', onAbort, { once: true });
    });
    p.catch(noop);
    return p;
  }

  /** All events from now on, buffered until read; the iteration ends when the connection closes. */
  events(): AsyncIterableIterator<QmpEvent> {
    const buffer: QmpEvent[] = [];
    let wake: (() => void) | undefined;
    let done = this.isClosed;
    const stop = (): void => {
      done = true;
      unsubscribe();
      unClose();
      wake?.();
    };
    const unsubscribe = this.onEvent((e) => {
      buffer.push(e);
      wake?.();
    });
    const unClose = this.onClose(stop);
    const iterator: AsyncIterableIterator<QmpEvent> = {
      async next(): Promise<IteratorResult<QmpEvent>> {
        while (buffer.length === 0 && !done) await new Promise<void>((r) => (wake = r));
        wake = undefined;
        const e = buffer.shift();
        return e ? { value: e, done: false } : { value: undefined, done: true };
      },
      async return(): Promise<IteratorResult<QmpEvent>> {
        stop();
        buffer.length = 0;
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]() {
        return iterator;
      },
    };
    return iterator;
  }

  /** Called once when the connection closes (by us, by QEMU, or by an error). */
  onClose(listener: () => void): () => void {
    if (this.isClosed) {
      queueMicrotask(listener);
      return noop;
    }
    this.closeListeners.add(listener);
    return () => this.closeListeners.delete(listener);
  }

  private handleClose(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      clearTimeout(p.timer);
      p.reject(this.disconnectedError(p.command));
    }
    for (const l of [...this.closeListeners]) l();
    this.closeListeners.clear();
    this.eventListeners.clear();
  }

  async close(): Promise<void> {
    if (this.isClosed) return;
    const closed = new Promise<void>((r) => this.socket.once('close', () => r()));
    this.socket.end();
    // end() waits for QEMU to close its side; destroy if it does not within a moment.
    const t = setTimeout(() => this.socket.destroy(), 1000);
    await closed;
    clearTimeout(t);
    this.handleClose();
  }
}
