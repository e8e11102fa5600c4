/**
 * Reading (and, for a stopped VM's active layer, writing) guest filesystems
 * through libguestfs. A session is one long-lived helper process
 * (guestfs-helper.py, python3-guestfs) holding one libguestfs handle, i.e. one
 * appliance VM, with every drive of the session attached; calls are JSON lines
 * over its stdin/stdout. Guest bytes are only parsed inside the appliance
 * (DESIGN.md invariant 9): nothing here mounts anything on the host.
 *
 * Cost (see src/files/README.md): opening a session boots the appliance
 * (10–25 s under TCG); after that a call costs about 1 ms plus what the
 * appliance does, so a caller should open one session per command and make
 * many calls on it.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import {
  closeSync,
  constants as fsConstants,
  createReadStream,
  createWriteStream,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { chmod, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { isAbsolute, join, resolve as resolvePath } from 'node:path';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { type ErrorCode, VmsnapError } from '../errors.js';
import { isProcessAlive } from '../util/process.js';
import { scanTar, type TarEntry } from './tar-scan.js';

export type { TarEntry } from './tar-scan.js';

export type DriveFormat = 'qcow2' | 'raw';

export interface GuestFsDrive {
  /** The top file of the disk (a qcow2 layer opens its whole backing chain). */
  path: string;
  format: DriveFormat;
  /**
   * Read-only drives get a throw-away overlay inside libguestfs: the file is
   * opened read-only and never written (journal replay at mount goes to the overlay).
   */
  readonly: boolean;
  /** A name for the drive in messages (and /dev/disk/guestfs/LABEL in the appliance). */
  label?: string;
}

export interface GuestFsProgress {
  phase: 'starting' | 'launching' | 'ready' | 'transfer';
  /** The call a transfer belongs to. */
  op?: string;
  position?: number;
  total?: number;
}

export interface GuestFsOpenOptions {
  signal?: AbortSignal;
  onProgress?: (p: GuestFsProgress) => void;
  /**
   * 'tcg' forces software emulation (safe everywhere, the default: on hosts where
   * KVM stalls an appliance would hang); 'auto' lets libguestfs use KVM when
   * /dev/kvm exists (pass it when the project's KVM probe says KVM works).
   */
  accel?: 'tcg' | 'auto';
  /** Per-call timeout, ms (default 120 s). Transfers and launch have their own. */
  timeoutMs?: number;
  /** Appliance boot timeout, ms (default 300 s: TCG on a loaded host is slow). */
  launchTimeoutMs?: number;
  /** Timeout of download/upload/tar calls, ms (default 1 h). */
  transferTimeoutMs?: number;
  /** Appliance memory, MiB (libguestfs' default is 1280). */
  memsizeMb?: number;
  /** Device names: 'vd' (virtio-blk, vmsnap's default) gives /dev/vda, /dev/vdb2, … */
  guestPrefix?: string;
  /** The Python that has python3-guestfs (default $VMSNAP_GUESTFS_PYTHON or /usr/bin/python3). */
  python?: string;
  /** The helper script (default: found next to this module or in src/files). */
  helper?: string;
  /** libguestfs' appliance cache (default $LIBGUESTFS_CACHEDIR or /var/tmp). */
  cacheDir?: string;
  /** Where session directories go (default the OS temp dir). */
  tmpDir?: string;
  /** libguestfs debug output to the helper's stderr (kept in error details). */
  verbose?: boolean;
  /** Test hook: allow raw libguestfs calls through `rawCall`. */
  allowRaw?: boolean;
}

export interface Filesystem {
  /** Guest name: /dev/vda2, /dev/vdb (a whole-disk filesystem), /dev/VG/LV, btrfsvol:/dev/vda2/@home. */
  device: string;
  /** ext4, xfs, btrfs, vfat, ntfs, swap, … */
  type: string;
  label?: string;
  uuid?: string;
  /** Size of the device holding it, bytes. */
  size?: number;
  /** Where the guest mounts it, from /etc/fstab of a root filesystem of the session. */
  mountpoint?: string;
  /** Index of the drive it is on (undefined for LVM/md devices). */
  drive?: number;
  /** btrfs subvolume path. */
  subvolume?: string;
  /**
   * Another filesystem of the session has the same type and UUID (two snapshots of
   * one disk). ext2/3/4 and vfat mount side by side, XFS too (nouuid is added), but
   * only one copy of a btrfs filesystem mounts per appliance, and LVM hides
   * duplicated volume groups: open such snapshots in separate sessions.
   */
  sharesUuid?: boolean;
}

export type FileType = 'file' | 'dir' | 'symlink' | 'chardev' | 'blockdev' | 'fifo' | 'socket' | 'unknown';

export interface FileStat {
  type: FileType;
  size: number;
  /** Permission bits with setuid/setgid/sticky (no type bits). */
  mode: number;
  mtime: Date;
  /** The nanoseconds of mtime (for exact comparison and restore). */
  mtimeNsec: number;
  /** Inode change time (set by the kernel on every write or chmod; no user call sets it back). */
  ctime?: Date;
  ctimeNsec?: number;
  uid: number;
  gid: number;
  ino: number;
  nlink: number;
  linkTarget?: string;
}

export interface DirEntry extends FileStat {
  name: string;
  /** The name's bytes (base64) when they are not UTF-8; such an entry has no stat. */
  rawName?: string;
  undecodable?: boolean;
}

export interface FindEntry extends Partial<FileStat> {
  /** Relative to the directory searched. */
  path: string;
  rawPath?: string;
  undecodable?: boolean;
}

export interface MountInfo {
  device: string;
  mountpoint: string;
  readonly: boolean;
}

export interface FileMeta {
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: Date;
  mtimeNsec?: number;
}

export interface CallOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

const INSTALL_HINT =
  'install libguestfs: apt-get install --no-install-recommends python3-guestfs libguestfs-tools linux-image-cloud-amd64 (and libguestfs-xfs for XFS)';

/** The helper ships with the package: next to this module under src/, or in src/files when running from dist/. */
const HELPER_CANDIDATES = [
  fileURLToPath(new URL('./guestfs-helper.py', import.meta.url)),
  fileURLToPath(new URL('../../src/files/guestfs-helper.py', import.meta.url)),
];

export function findHelper(explicit?: string): string {
  const candidates = [explicit, process.env.VMSNAP_GUESTFS_HELPER, ...HELPER_CANDIDATES].filter((c): c is string => !!c);
  for (const c of candidates) if (existsSync(c)) return c;
  throw new VmsnapError('INTERNAL', `the libguestfs helper script is missing (looked for ${candidates.join(', ')})`, {
    hint: 'reinstall vmsnap: src/files/guestfs-helper.py must ship with the package',
  });
}

interface HelperError {
  kind: string;
  errno: string | null;
  message: string;
}

interface Answer {
  id: number | null;
  ok: boolean;
  result?: unknown;
  error?: HelperError;
  ms?: number;
}

interface HelperEvent {
  event: string;
  id?: number;
  path?: string;
  position?: number;
  total?: number;
  kind?: string;
  message?: string;
}

interface Pending {
  id: number;
  op: string;
  resolve: (v: unknown) => void;
  reject: (e: VmsnapError) => void;
  onFifo?: (path: string) => void;
  fifo?: string;
}

/** A stat as the helper sends it: times in seconds. */
type RawStat = Omit<FileStat, 'mtime' | 'ctime'> & { mtime: number; ctime?: number };

const secondsToDate = (sec: number, nsec: number | undefined): Date => new Date(sec * 1000 + Math.floor((nsec ?? 0) / 1e6));

function toStat<T extends RawStat>(r: T): Omit<T, 'mtime' | 'ctime'> & { mtime: Date; ctime?: Date } {
  const { ctime, mtime, ...rest } = r;
  return { ...rest, mtime: secondsToDate(mtime, r.mtimeNsec), ...(ctime !== undefined ? { ctime: secondsToDate(ctime, r.ctimeNsec) } : {}) };
}

/**
 * A streaming call's answer once its FIFO's pipe has ended too. On a failure the
 * pipe is let unwind (or, when the helper never opened the FIFO, `unopened` runs).
 */
async function answered(answer: Promise<unknown>, piping: () => Promise<void> | undefined, unopened?: () => void): Promise<unknown> {
  try {
    const r = await answer;
    await piping();
    return r;
  } catch (e) {
    const p = piping();
    if (p) await p.catch(() => undefined);
    else unopened?.();
    throw e;
  }
}

/** VMSNAP_GUESTFS_LAUNCH_TIMEOUT (seconds): how long an appliance may take to boot (a loaded TCG host can need more than the default 300). */
function launchTimeoutFromEnv(): number | undefined {
  const s = Number(process.env.VMSNAP_GUESTFS_LAUNCH_TIMEOUT);
  return Number.isFinite(s) && s > 0 ? s * 1000 : undefined;
}

const SESSION_PREFIX = 'vmsnap-guestfs-';
/** Bytes per 'read' answer (base64 in JSON; libguestfs' message limit is 4 MiB). */
const READ_CHUNK = 1024 * 1024;

/** The helper's error kinds (see classify() in guestfs-helper.py). */
const KIND_CODES: Record<string, ErrorCode> = {
  'not-found': 'NOT_FOUND',
  invalid: 'INVALID_ARGUMENT',
  encoding: 'INVALID_ARGUMENT',
  duplicate: 'INVALID_ARGUMENT',
  exists: 'ALREADY_EXISTS',
  'no-space': 'NO_SPACE',
  cancelled: 'INTERRUPTED',
  'bad-request': 'INTERNAL',
  appliance: 'QEMU_FAILED',
  failed: 'QEMU_FAILED',
};

/** Remove session dirs left by processes that died hard (kill -9). */
function sweepStaleSessions(base: string): void {
  let names: string[];
  try {
    names = readdirSync(base).filter((n) => n.startsWith(SESSION_PREFIX));
  } catch {
    return;
  }
  for (const n of names) {
    const dir = join(base, n);
    try {
      const owner = Number(readFileSync(join(dir, 'owner'), 'utf8'));
      if (owner > 0 && isProcessAlive(owner)) continue;
      if (Date.now() - statSync(dir).mtimeMs < 60_000 && !(owner > 0)) continue; // being created
      rmSync(dir, { recursive: true, force: true });
    } catch {
      /* racing with its owner: leave it */
    }
  }
}


function isQemu(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('qemu');
  } catch {
    return false;
  }
}

/** Open the other end of a FIFO so that a blocked open() on it returns. */
function unblockFifo(path: string): void {
  try {
    closeSync(openSync(path, fsConstants.O_RDWR | fsConstants.O_NONBLOCK));
  } catch {
    /* gone already */
  }
}

export class GuestFs {
  private readonly child: ChildProcess;
  private readonly opts: GuestFsOpenOptions;
  private readonly sessionDir: string;
  private readonly drives: GuestFsDrive[];
  private nextId = 1;
  private current: Pending | undefined;
  private chain: Promise<unknown> = Promise.resolve();
  private stderrTail = '';
  private dead: VmsnapError | undefined;
  private qemuPid: number | undefined;
  private readonly exited: Promise<void>;
  private onHello: ((e: HelperEvent) => void) | undefined;
  private readonly abortListener: () => void;
  /** What the appliance reported at launch. */
  info: { version: string; launchMs: number; devices: string[]; helperPid: number; qemuPid: number } | undefined;

  private constructor(child: ChildProcess, drives: GuestFsDrive[], opts: GuestFsOpenOptions, sessionDir: string) {
    this.child = child;
    this.drives = drives;
    this.opts = opts;
    this.sessionDir = sessionDir;
    // 'close' (not 'exit'): stdout is fully read by then, so no answer is lost.
    this.exited = new Promise((res) => child.once('close', () => res()));
    child.once('close', (code, signal) => {
      this.fail(
        new VmsnapError('QEMU_FAILED', `the libguestfs helper exited (${signal ?? `code ${code}`})${this.tailMessage()}`, {
          hint: 'run libguestfs-test-tool to check libguestfs; open the files again',
          details: { stderr: this.stderrTail },
        }),
      );
      this.killAppliance();
      rmSync(this.sessionDir, { recursive: true, force: true });
    });
    child.stderr?.on('data', (d: Buffer) => {
      this.stderrTail = (this.stderrTail + d.toString()).slice(-16_384);
    });
    // A request written after the helper died (killed, crashed) fails with EPIPE here; the
    // call it carried is failed by 'close' above, with what the helper said last. Any other
    // failure to write leaves a helper that will never get the request: stop it.
    child.stdin?.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code !== 'EPIPE') this.destroy(new VmsnapError('QEMU_FAILED', `cannot write to the libguestfs helper: ${e.message}`, { cause: e }));
    });
    let buf = '';
    child.stdout?.setEncoding('utf8');
    child.stdout?.on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) !== -1) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.trim()) this.onLine(line);
      }
    });
    this.abortListener = () => this.destroy(new VmsnapError('INTERRUPTED', 'reading the guest filesystems was aborted'));
    opts.signal?.addEventListener('abort', this.abortListener, { once: true });
  }

  /**
   * Boot one appliance with these drives. Every drive must exist; a qcow2 drive
   * brings its backing chain. Never pass the active layer of a running VM.
   */
  static async open(drives: GuestFsDrive[], opts: GuestFsOpenOptions = {}): Promise<GuestFs> {
    if (drives.length === 0) throw new VmsnapError('INVALID_ARGUMENT', 'no drives to open');
    const resolved = drives.map((d, i) => {
      if (d.format !== 'qcow2' && d.format !== 'raw') {
        throw new VmsnapError('INVALID_ARGUMENT', `drive ${i}: format must be qcow2 or raw, not '${String(d.format)}'`, {
          details: { field: `drives[${i}].format` },
        });
      }
      const path = resolvePath(d.path);
      if (!existsSync(path)) throw new VmsnapError('NOT_FOUND', `drive ${i}: no such image: ${path}`, { details: { path } });
      if (d.label !== undefined && !/^[A-Za-z0-9_]{1,20}$/.test(d.label)) {
        throw new VmsnapError('INVALID_ARGUMENT', `drive ${i}: label must be 1–20 letters, digits or _`, { details: { field: `drives[${i}].label` } });
      }
      return { ...d, path };
    });
    opts.signal?.throwIfAborted();
    const python = opts.python ?? process.env.VMSNAP_GUESTFS_PYTHON ?? '/usr/bin/python3';
    if (isAbsolute(python) && !existsSync(python)) {
      throw new VmsnapError('QEMU_FAILED', `libguestfs is not installed (no ${python})`, { hint: INSTALL_HINT });
    }
    const helper = findHelper(opts.helper);
    const base = opts.tmpDir ?? tmpdir();
    mkdirSync(base, { recursive: true });
    sweepStaleSessions(base);
    const sessionDir = mkdtempSync(join(base, SESSION_PREFIX));
    writeFileSync(join(sessionDir, 'owner'), String(process.pid));
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      LIBGUESTFS_BACKEND: process.env.LIBGUESTFS_BACKEND ?? 'direct',
      LIBGUESTFS_CACHEDIR: opts.cacheDir ?? process.env.LIBGUESTFS_CACHEDIR ?? '/var/tmp',
      // libguestfs' sockets and read-only overlays go into the session dir
      TMPDIR: sessionDir,
      VMSNAP_GUESTFS_SESSION_DIR: sessionDir,
      VMSNAP_GUESTFS_PARENT_PID: String(process.pid),
      PYTHONDONTWRITEBYTECODE: '1',
      PYTHONUNBUFFERED: '1',
    };
    if ((opts.accel ?? 'tcg') === 'tcg') env.LIBGUESTFS_BACKEND_SETTINGS = 'force_tcg';
    else if (env.LIBGUESTFS_BACKEND_SETTINGS === 'force_tcg') delete env.LIBGUESTFS_BACKEND_SETTINGS;
    if (opts.allowRaw) env.VMSNAP_GUESTFS_ALLOW_RAW = '1';
    opts.onProgress?.({ phase: 'starting' });
    const child = spawn(python, [helper], { stdio: ['pipe', 'pipe', 'pipe'], env });
    const g = new GuestFs(child, resolved, opts, sessionDir);
    try {
      await g.hello(python);
      opts.onProgress?.({ phase: 'launching' });
      const info = (await g.call(
        'launch',
        {
          drives: resolved.map((d) => ({ path: d.path, format: d.format, readonly: d.readonly, ...(d.label ? { label: d.label } : {}) })),
          guestPrefix: opts.guestPrefix ?? 'vd',
          ...(opts.memsizeMb ? { memsize: opts.memsizeMb } : {}),
          ...(opts.verbose ? { verbose: true } : {}),
        },
        { timeoutMs: opts.launchTimeoutMs ?? launchTimeoutFromEnv() ?? 300_000 },
      )) as NonNullable<GuestFs['info']>;
      g.info = info;
      g.qemuPid = info.qemuPid;
      opts.onProgress?.({ phase: 'ready' });
      return g;
    } catch (e) {
      g.destroy();
      await g.exited;
      throw e;
    }
  }

  private hello(python: string): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const onError = (e: NodeJS.ErrnoException): void => {
        clearTimeout(timer);
        reject(
          e.code === 'ENOENT'
            ? new VmsnapError('QEMU_FAILED', `libguestfs is not installed (cannot run ${python})`, { hint: INSTALL_HINT })
            : new VmsnapError('QEMU_FAILED', `cannot start the libguestfs helper: ${e.message}`, { cause: e }),
        );
      };
      this.child.once('error', onError);
      const onExit = (): void => reject(this.dead ?? new VmsnapError('QEMU_FAILED', `the libguestfs helper exited at start${this.tailMessage()}`));
      this.child.once('close', onExit);
      const timer = setTimeout(() => {
        this.destroy(new VmsnapError('QEMU_FAILED', `the libguestfs helper did not start in 60 s${this.tailMessage()}`));
      }, 60_000);
      this.onHello = (e) => {
        this.child.off('error', onError);
        this.child.off('close', onExit);
        clearTimeout(timer);
        this.onHello = undefined;
        if (e.event === 'hello') resolve();
        else if (e.kind === 'missing-guestfs') {
          reject(new VmsnapError('QEMU_FAILED', `libguestfs is not installed for ${python}: ${e.message ?? ''}`, { hint: INSTALL_HINT }));
        } else reject(new VmsnapError('QEMU_FAILED', `the libguestfs helper failed at start: ${e.message ?? ''}`));
      };
    });
  }

  private tailMessage(): string {
    const lines = this.stderrTail.trim().split('\n').filter(Boolean);
    return lines.length ? `: ${lines.slice(-3).join(' | ')}` : '';
  }

  private onLine(line: string): void {
    let msg: Answer & HelperEvent;
    try {
      msg = JSON.parse(line) as Answer & HelperEvent;
    } catch {
      this.stderrTail = (this.stderrTail + `stdout: ${line}\n`).slice(-16_384);
      return;
    }
    if (msg.event) {
      if (msg.event === 'hello' || msg.event === 'fatal') this.onHello?.(msg);
      else if (msg.event === 'progress') {
        this.opts.onProgress?.({
          phase: 'transfer',
          ...(this.current ? { op: this.current.op } : {}),
          position: msg.position ?? 0,
          total: msg.total ?? 0,
        });
      } else if (msg.event === 'fifo' && msg.path && this.current && msg.id === this.current.id) {
        this.current.fifo = msg.path;
        this.current.onFifo?.(msg.path);
      }
      return;
    }
    const p = this.current;
    if (!p || msg.id !== p.id) return;
    this.current = undefined;
    if (msg.ok) p.resolve(msg.result ?? null);
    else p.reject(this.mapError(p.op, msg.error ?? { kind: 'failed', errno: null, message: 'unknown error' }));
  }

  private mapError(op: string, e: HelperError): VmsnapError {
    const details = { op, kind: e.kind, errno: e.errno };
    const code: ErrorCode = KIND_CODES[e.kind] ?? 'QEMU_FAILED';
    let hint: string | undefined;
    const m = e.message;
    if (op === 'launch') {
      if (/suitable kernel|supermin/i.test(m)) hint = `libguestfs needs a kernel for its appliance: apt-get install linux-image-cloud-amd64 (${INSTALL_HINT})`;
      else if (/lock/i.test(m)) hint = 'a running QEMU holds this image for writing: open a frozen layer instead (take a disk-only snapshot first)';
      else hint = 'run `LIBGUESTFS_BACKEND=direct libguestfs-test-tool` to see why the appliance does not start';
    } else if (code === 'NOT_FOUND') hint = 'check the path with `vmsnap files`';
    else if (code === 'NO_SPACE') hint = 'the guest filesystem is full';
    else if (e.kind === 'encoding') hint = 'copy its parent directory instead (a tar keeps any name)';
    else if (e.kind === 'duplicate') hint = 'read each snapshot of a btrfs or LVM disk in its own session';
    else if (code === 'QEMU_FAILED') hint = 'the libguestfs appliance failed; open the files again (LIBGUESTFS_DEBUG=1 shows why)';
    return new VmsnapError(code, m, { details, ...(hint ? { hint } : {}) });
  }

  /** Serialize calls: the helper runs one at a time, and a call's timeout starts when it is sent. */
  private call(op: string, args: Record<string, unknown>, co: CallOptions & { onFifo?: (path: string) => void } = {}): Promise<unknown> {
    const run = (): Promise<unknown> =>
      new Promise<unknown>((resolve, reject) => {
        if (this.dead) return reject(this.dead);
        co.signal?.throwIfAborted();
        const id = this.nextId++;
        const timeoutMs = co.timeoutMs ?? this.opts.timeoutMs ?? 120_000;
        let timer: NodeJS.Timeout | undefined;
        const onAbort = (): void =>
          this.destroy(new VmsnapError('INTERRUPTED', `'${op}' was aborted; the libguestfs session is closed`));
        const done = (): void => {
          if (timer) clearTimeout(timer);
          co.signal?.removeEventListener('abort', onAbort);
        };
        this.current = {
          id,
          op,
          resolve: (v) => {
            done();
            resolve(v);
          },
          reject: (e) => {
            done();
            reject(e);
          },
          ...(co.onFifo ? { onFifo: co.onFifo } : {}),
        };
        timer = setTimeout(() => {
          this.destroy(
            new VmsnapError('QEMU_FAILED', `libguestfs did not finish '${op}' in ${Math.round(timeoutMs / 1000)} s; its appliance was stopped`, {
              hint: 'the host may be overloaded (TCG); try again, or raise the timeout (VMSNAP_GUESTFS_LAUNCH_TIMEOUT, seconds)',
              details: { op, timeoutMs },
            }),
          );
        }, timeoutMs);
        co.signal?.addEventListener('abort', onAbort, { once: true });
        this.child.stdin?.write(JSON.stringify({ id, op, args }) + '\n');
      });
    const p = this.chain.then(run, run);
    this.chain = p.catch(() => undefined);
    return p;
  }

  private fail(e: VmsnapError): void {
    if (!this.dead) this.dead = e;
    const p = this.current;
    this.current = undefined;
    if (p) {
      if (p.fifo) unblockFifo(p.fifo);
      p.reject(this.dead);
    }
  }

  private killAppliance(): void {
    const pid = this.qemuPid;
    if (pid && isProcessAlive(pid) && isQemu(pid)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }

  /**
   * Stop at once: the helper kills its appliance when its stdin closes in the middle
   * of a call; after 3 s it and the appliance are killed from here.
   */
  private destroy(reason?: VmsnapError): void {
    this.fail(reason ?? new VmsnapError('INTERRUPTED', 'the libguestfs session was closed'));
    this.opts.signal?.removeEventListener('abort', this.abortListener);
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.stdin?.end();
    const t = setTimeout(() => {
      try {
        this.child.kill('SIGKILL');
      } catch {
        /* gone */
      }
      this.killAppliance();
    }, 3000);
    t.unref();
    void this.exited.then(() => clearTimeout(t));
  }

  /** Shut the appliance down (writable drives are synced), end the helper. */
  async close(): Promise<void> {
    this.opts.signal?.removeEventListener('abort', this.abortListener);
    if (!this.dead) {
      try {
        await this.call('close', {}, { timeoutMs: 60_000 });
      } catch {
        /* destroyed below */
      }
      this.fail(new VmsnapError('INVALID_STATE', 'the libguestfs session is closed'));
    }
    this.child.stdin?.end();
    const t = setTimeout(() => this.destroy(), 5000);
    await this.exited;
    clearTimeout(t);
    rmSync(this.sessionDir, { recursive: true, force: true });
  }

  /** The helper's and the appliance's process ids (for tests and diagnostics). */
  get pids(): { helper: number | undefined; qemu: number | undefined } {
    return { helper: this.child.pid, qemu: this.qemuPid };
  }

  get closed(): boolean {
    return this.dead !== undefined;
  }

  // --- filesystems and mounts ---------------------------------------------------

  /**
   * Every filesystem the appliance can identify on the session's drives
   * (partitions, whole disks, LVM LVs, btrfs subvolumes; blank devices are left
   * out), with mount points from the /etc/fstab of root filesystems. Cached per
   * session; the fstab probe mounts each candidate read-only for a moment.
   */
  async filesystems(o: { refresh?: boolean; fstab?: boolean } = {}): Promise<Filesystem[]> {
    return (await this.call('filesystems', { refresh: o.refresh ?? false, fstab: o.fstab ?? true })) as Filesystem[];
  }

  /**
   * Mount a filesystem in the appliance (never on the host). Several filesystems
   * can be mounted side by side (/a, /b) when nothing is mounted on '/'.
   * Read-write only on a writable drive.
   */
  async mount(device: string, mountpoint = '/', o: { readonly?: boolean } = {}): Promise<void> {
    await this.call('mount', { device, mountpoint, readonly: o.readonly ?? true });
  }

  async umount(mountpoint: string): Promise<void> {
    await this.call('umount', { mountpoint });
  }

  async umountAll(): Promise<void> {
    await this.call('umountAll', {});
  }

  async mounts(): Promise<MountInfo[]> {
    return (await this.call('mounts', {})) as MountInfo[];
  }

  // --- reading ------------------------------------------------------------------

  /** A directory's entries with their lstat (bulk: three appliance calls per 1000 entries). */
  async list(path: string, co?: CallOptions): Promise<DirEntry[]> {
    const raw = (await this.call('list', { path }, co)) as (RawStat & { name: string; rawName?: string; undecodable?: boolean })[];
    return raw.map((r) => toStat(r));
  }

  /** lstat of one path (symlinks are not followed; linkTarget is set). */
  async stat(path: string, co?: CallOptions): Promise<FileStat & { path: string }> {
    const [r] = await this.statMany([path], co);
    if (!r) throw new VmsnapError('INTERNAL', 'stat returned nothing');
    return r;
  }

  async statMany(paths: string[], co?: CallOptions): Promise<(FileStat & { path: string })[]> {
    const raw = (await this.call('stat', { paths }, co)) as (RawStat & { path: string })[];
    return raw.map((r) => toStat(r));
  }

  async exists(path: string, co?: CallOptions): Promise<boolean> {
    const [r] = (await this.call('exists', { paths: [path] }, co)) as boolean[];
    return r ?? false;
  }

  /**
   * Every path under a directory (relative to it), with lstat unless `stat: false`.
   * About 0.2 ms per entry for names and 0.25 ms per entry for the stats under TCG.
   */
  async find(path: string, o: { stat?: boolean } & CallOptions = {}): Promise<FindEntry[]> {
    const raw = (await this.call('find', { path, stat: o.stat ?? true }, o)) as (Partial<RawStat> & { path: string })[];
    return raw.map((r) => (r.mtime === undefined ? (r as FindEntry) : (toStat(r as RawStat & { path: string }) as FindEntry)));
  }

  /**
   * Checksums computed in the appliance, one file at a time. Each file costs a
   * process start in the appliance (~0.2 s under TCG): for many files use
   * `scan(dir, { hash: true })`, which hashes a tar stream on the host.
   */
  async checksum(paths: string[], algorithm: 'md5' | 'sha1' | 'sha256' | 'sha512' = 'sha256', co?: CallOptions): Promise<{ path: string; checksum: string }[]> {
    const sums = (await this.call('checksum', { paths, algorithm }, co)) as string[];
    return paths.map((path, i) => ({ path, checksum: sums[i] ?? '' }));
  }

  /**
   * SHA-256 of regular files, read by `pread` in the helper (about 2 ms for a
   * small file, where `checksum` costs a process start in the appliance per
   * file); null for a path that is missing or not a regular file. Progress
   * comes as 'transfer' events with bytes hashed of the total.
   */
  async hashFiles(paths: string[], co?: CallOptions): Promise<({ sha256: string; size: number } | null)[]> {
    if (paths.length === 0) return [];
    return (await this.call('hashFiles', { paths }, { timeoutMs: this.opts.transferTimeoutMs ?? 3_600_000, ...co })) as ({ sha256: string; size: number } | null)[];
  }

  /** Where each partition (and each whole disk) lies on its drive, in bytes. */
  async ranges(co?: CallOptions): Promise<{ device: string; start: number; size: number }[]> {
    return (await this.call('ranges', {}, co)) as { device: string; start: number; size: number }[];
  }

  /** Checksums of every regular file under a directory, computed in the appliance. */
  async checksumTree(path: string, algorithm: 'md5' | 'sha1' | 'sha256' | 'sha512' = 'sha256', co?: CallOptions): Promise<{ path: string; checksum: string; rawPath?: string }[]> {
    return (await this.call('checksumTree', { path, algorithm }, { timeoutMs: this.opts.transferTimeoutMs ?? 3_600_000, ...co })) as {
      path: string;
      checksum: string;
      rawPath?: string;
    }[];
  }

  /**
   * Copy a regular file to a host path (symlinks are followed inside the guest's
   * tree). With `preserve` (the default) the host file gets the guest file's mode
   * and mtime. Resolves with the guest file's stat.
   */
  async download(path: string, hostPath: string, o: { preserve?: boolean } & CallOptions = {}): Promise<FileStat> {
    const target = resolvePath(hostPath);
    let st: FileStat;
    const small = await this.readSmall(path, o);
    if (small) {
      await writeFile(target, small.data);
      st = small.stat;
    } else {
      st = toStat((await this.call('download', { path, hostPath: target }, { timeoutMs: this.opts.transferTimeoutMs ?? 3_600_000, ...o })) as RawStat);
    }
    if (o.preserve ?? true) {
      await chmod(target, st.mode & 0o7777);
      await utimes(target, st.mtime, st.mtime);
    }
    return st;
  }

  /**
   * A file of at most READ_CHUNK bytes comes back in the answer itself (a download
   * costs ~0.3 s of fixed overhead in libguestfs; a read ~2 ms). Undefined for bigger files.
   */
  private async readSmall(path: string, co: CallOptions): Promise<{ data: Buffer; stat: FileStat } | undefined> {
    const r = (await this.call('read', { path, offset: 0, length: READ_CHUNK, withStat: true }, co)) as { data: string; stat: RawStat };
    const data = Buffer.from(r.data, 'base64');
    if (r.stat.size > data.length) return undefined;
    return { data, stat: toStat(r.stat) };
  }

  /**
   * A regular file's whole content in memory, read in 1 MiB answers (no transfer
   * channel): for small files. Refuses files over `maxBytes` (default 64 MiB).
   */
  async readFile(path: string, o: { maxBytes?: number } & CallOptions = {}): Promise<Buffer> {
    const first = (await this.call('read', { path, offset: 0, length: READ_CHUNK, withStat: true }, o)) as { data: string; stat: RawStat };
    const size = first.stat.size;
    const max = o.maxBytes ?? 64 * 1024 * 1024;
    if (size > max) {
      throw new VmsnapError('INVALID_ARGUMENT', `${path} is ${size} bytes, more than ${max} to read into memory`, { hint: 'download it to a file instead' });
    }
    const parts = [Buffer.from(first.data, 'base64')];
    let have = parts[0]?.length ?? 0;
    while (have < size) {
      const r = (await this.call('read', { path, offset: have, length: READ_CHUNK }, o)) as { data: string };
      const b = Buffer.from(r.data, 'base64');
      if (b.length === 0) break; // shrank meanwhile (cannot happen on a frozen layer)
      parts.push(b);
      have += b.length;
    }
    return Buffer.concat(parts);
  }

  /** Stream a regular file's content into `dest` (e.g. process.stdout); `dest` is ended unless `end: false`. */
  async downloadTo(path: string, dest: Writable, o: { end?: boolean } & CallOptions = {}): Promise<FileStat> {
    const small = await this.readSmall(path, o);
    if (small) {
      await new Promise<void>((res, rej) => {
        const cb = (e?: Error | null): void => (e ? rej(e) : res());
        if (o.end ?? true) dest.end(small.data, cb);
        else dest.write(small.data, cb);
      });
      return small.stat;
    }
    const r = await this.streamOut('download', { path }, dest, o);
    return toStat(r as RawStat);
  }

  /** A readable stream of a file's content; `done` settles when the transfer has finished. */
  readStream(path: string, o: CallOptions = {}): { stream: Readable; done: Promise<FileStat> } {
    const pass = new PassThrough();
    const done = this.downloadTo(path, pass, o);
    done.catch((e: unknown) => pass.destroy(e instanceof Error ? e : new Error(String(e))));
    return { stream: pass, done };
  }

  /**
   * A directory tree as an uncompressed tar (numeric owners, modes and mtimes kept;
   * xattrs/ACLs on request) into a host file or a stream.
   */
  async tarOut(
    path: string,
    dest: string | Writable,
    o: { excludes?: string[]; xattrs?: boolean; acls?: boolean; end?: boolean } & CallOptions = {},
  ): Promise<void> {
    const args: Record<string, unknown> = { path, numericOwner: true, excludes: o.excludes ?? [], xattrs: o.xattrs ?? false, acls: o.acls ?? false };
    if (typeof dest === 'string') {
      await this.call('tarOut', { ...args, hostPath: resolvePath(dest) }, { timeoutMs: this.opts.transferTimeoutMs ?? 3_600_000, ...o });
      return;
    }
    await this.streamOut('tarOut', args, dest, o);
  }

  /**
   * Every member under a directory, from a tar-out stream parsed on the host: names
   * (byte-exact), types, sizes, modes, mtimes (seconds), owners, link targets and,
   * with `hash`, the SHA-256 of each regular file. One appliance call; cost is the
   * bytes moved (about 10 MB/s under TCG) plus ~0.4 ms per member.
   */
  async scan(path: string, o: { hash?: boolean; excludes?: string[] } & CallOptions = {}): Promise<TarEntry[]> {
    const out: TarEntry[] = [];
    const pass = new PassThrough({ highWaterMark: 1 << 20 });
    const parsing = scanTar(pass, (e) => out.push(e), { hash: o.hash ?? false });
    parsing.catch(() => pass.resume());
    const co: CallOptions = {};
    if (o.timeoutMs !== undefined) co.timeoutMs = o.timeoutMs;
    if (o.signal) co.signal = o.signal;
    await Promise.all([this.tarOut(path, pass, { ...co, ...(o.excludes ? { excludes: o.excludes } : {}) }), parsing]);
    return out;
  }

  private async streamOut(op: string, args: Record<string, unknown>, dest: Writable, o: { end?: boolean } & CallOptions): Promise<unknown> {
    let piping: Promise<void> | undefined;
    const answer = this.call(op, args, {
      timeoutMs: this.opts.transferTimeoutMs ?? 3_600_000,
      ...o,
      onFifo: (fifo) => {
        const src = createReadStream(fifo, { highWaterMark: 1 << 20 });
        piping = pipeline(src, dest, { end: o.end ?? true });
      },
    });
    return answered(answer, () => piping);
  }

  // --- writing (a stopped VM's active layer only) ----------------------------------

  /**
   * Write a host file or a stream to a path on a filesystem mounted read-write,
   * then set its mode/owner/mtime when given.
   */
  async upload(src: string | Readable, path: string, meta: FileMeta = {}, co: CallOptions = {}): Promise<FileStat> {
    const args: Record<string, unknown> = { path, ...metaArgs(meta) };
    const r = await this.streamIn('upload', args, src, co);
    return toStat(r as RawStat);
  }

  /**
   * Unpack an uncompressed tar (host file or stream) into a directory mounted
   * read-write. A child process's stdout must be passed before the child exits
   * (Node discards unread output of an exited child).
   */
  async tarIn(src: string | Readable, path: string, o: { xattrs?: boolean; acls?: boolean } & CallOptions = {}): Promise<void> {
    await this.streamIn('tarIn', { path, xattrs: o.xattrs ?? false, acls: o.acls ?? false }, src, o);
  }

  private async streamIn(op: string, args: Record<string, unknown>, src: string | Readable, co: CallOptions): Promise<unknown> {
    const timeoutMs = co.timeoutMs ?? this.opts.transferTimeoutMs ?? 3_600_000;
    if (typeof src === 'string') {
      const hostPath = resolvePath(src);
      if (!existsSync(hostPath)) throw new VmsnapError('NOT_FOUND', `no such host file: ${hostPath}`);
      return this.call(op, { ...args, hostPath }, { ...co, timeoutMs });
    }
    // Read the source at once: Node resumes (and discards) an unread child process
    // stdout when the child exits, which would hand the appliance an empty stream.
    const pass = new PassThrough({ highWaterMark: 1 << 20 });
    src.on('error', (e) => pass.destroy(e));
    src.pipe(pass);
    let piping: Promise<void> | undefined;
    const answer = this.call(op, args, {
      ...co,
      timeoutMs,
      onFifo: (fifo) => {
        piping = pipeline(pass, createWriteStream(fifo));
      },
    });
    return answered(answer, () => piping, () => {
      src.unpipe(pass);
      pass.destroy();
    });
  }

  async setMeta(path: string, meta: FileMeta, co?: CallOptions): Promise<FileStat> {
    return toStat((await this.call('setMeta', { path, ...metaArgs(meta) }, co)) as RawStat);
  }

  async mkdir(path: string, co?: CallOptions): Promise<void> {
    await this.call('mkdir', { path }, co);
  }

  /** `cp -a` inside the appliance, e.g. from a read-only snapshot mount to a read-write one. */
  async copy(src: string, dest: string, co?: CallOptions): Promise<FileStat> {
    return toStat((await this.call('copy', { src, dest }, { timeoutMs: this.opts.transferTimeoutMs ?? 3_600_000, ...co })) as RawStat);
  }

  async remove(path: string, o: { recursive?: boolean } & CallOptions = {}): Promise<void> {
    await this.call('remove', { path, recursive: o.recursive ?? false }, o);
  }

  async sync(co?: CallOptions): Promise<void> {
    await this.call('sync', {}, co);
  }

  /** Round trip to the appliance's daemon (measures per-call overhead). */
  async ping(co?: CallOptions): Promise<void> {
    await this.call('ping', {}, co);
  }

  /** Test hook (needs `allowRaw`): any libguestfs call by name; /dev/ arguments use guest names. */
  async rawCall(name: string, args: unknown[] = [], kwargs: Record<string, unknown> = {}, co?: CallOptions): Promise<unknown> {
    return this.call('raw', { name, args, kwargs }, co);
  }

  /** Drives as given to open (resolved paths). */
  get driveList(): readonly GuestFsDrive[] {
    return this.drives;
  }
}

function metaArgs(m: FileMeta): Record<string, unknown> {
  const a: Record<string, unknown> = {};
  if (m.mode !== undefined) a.mode = m.mode & 0o7777;
  if (m.uid !== undefined) a.uid = m.uid;
  if (m.gid !== undefined) a.gid = m.gid;
  if (m.mtime !== undefined) {
    const ms = m.mtime.getTime();
    a.mtime = Math.floor(ms / 1000);
    a.mtimeNsec = m.mtimeNsec ?? (ms % 1000) * 1e6;
  }
  return a;
}
