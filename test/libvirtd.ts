/**
 * A private libvirtd for a test: qemu:///system as root, but in its own mount and
 * network namespace, with private copies of /etc/libvirt, /var/lib/libvirt,
 * /var/log/libvirt and /run/libvirt (bind-mounted over the real ones inside the
 * namespace only). It neither sees nor disturbs a system libvirtd, the host's
 * domains, networks or firewall, and leaves nothing behind when stopped.
 *
 * Clients reach it through its socket: `virsh -c URI` with the `uri` it returns,
 * or any libvirt client with LIBVIRT_DEFAULT_URI from `env`. No systemd is needed.
 *
 * Paths libvirt picks itself (NVRAM files under /var/lib/libvirt/qemu/nvram, logs)
 * are inside the private copies: `hostPath` turns them into paths on the host.
 * Paths a domain names elsewhere (disk images in a temp dir) are the host's own.
 *
 * Needs root, `unshare` and `ip` (util-linux, iproute2) and Debian's
 * libvirt-daemon-system + libvirt-clients (see test/fixtures/libvirt/README.md).
 */
import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import { appendFileSync, closeSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface PrivateLibvirtd {
  /** qemu+unix:///system?socket=… — qemu:///system of this daemon. */
  readonly uri: string;
  /** LIBVIRT_DEFAULT_URI=uri, for clients started without -c. */
  readonly env: Record<string, string>;
  /** libvirtd's pid (unshare execs into sh, sh execs into libvirtd). */
  readonly pid: number;
  /** The private state: etc/, lib/, log/, run/ (the socket is run/libvirt-sock), libvirtd.log. */
  readonly root: string;
  /** How long it took from spawn to a first answer on the socket, in ms. */
  readonly startupMs: number;
  /** A path as libvirtd sees it, as a path on the host. */
  hostPath(path: string): string;
  /** `virsh -q -c URI ARGS…`, its stdout. */
  virsh(args: string[]): Promise<string>;
  /** `virsh define` of this XML (written to a file first: virsh cannot open a socket as /dev/stdin). */
  define(xml: string): Promise<void>;
  /** Destroy running domains, stop libvirtd (SIGTERM, then SIGKILL), remove the private state. */
  stop(): Promise<void>;
}

export interface PrivateLibvirtdOptions {
  /**
   * Folder for libvirt's QEMU capabilities cache, shared between runs: a cold
   * cache costs about 4 s at the first define (libvirt probes qemu-system-x86_64).
   * null: a fresh cache inside the private state. Default: $TMPDIR/vmsnap-libvirtd-cache.
   */
  cacheDir?: string | null;
  /** Bridges to create inside the namespace (for domains with `<interface type='bridge'>` that are started). */
  bridges?: string[];
  /** Give up waiting for the socket after this many ms. Default 30 000. */
  timeoutMs?: number;
}

/** Why a private libvirtd cannot run here, or undefined when it can. */
export function libvirtdUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root';
  for (const tool of ['libvirtd', 'virsh', 'unshare', 'ip']) {
    try {
      execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
    } catch {
      return `${tool} is not installed (apt-get install libvirt-daemon-system libvirt-clients)`;
    }
  }
  return undefined;
}

/** Mounted over these, inside the namespace, from ROOT/<key>. */
const PRIVATE_DIRS = {
  etc: '/etc/libvirt',
  lib: '/var/lib/libvirt',
  cache: '/var/cache/libvirt',
  log: '/var/log/libvirt',
  run: '/run/libvirt',
} as const;

// $1 = ROOT, $2 = cache dir, $3… = bridges. `exec` keeps the pid: spawn's child is libvirtd.
const NAMESPACE_SCRIPT = `
set -e
root=$1; cache=$2; shift 2
mount --bind "$root/etc" ${PRIVATE_DIRS.etc}
mount --bind "$root/lib" ${PRIVATE_DIRS.lib}
mount --bind "$cache" ${PRIVATE_DIRS.cache}
mount --bind "$root/log" ${PRIVATE_DIRS.log}
mount --bind "$root/run" ${PRIVATE_DIRS.run}
ip link set lo up
for br in "$@"; do ip link add "$br" type bridge; ip link set "$br" up; done
exec libvirtd --pid-file "$root/libvirtd.pid"
`;

function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')}: ${(stderr || err.message).trim()}`));
      else resolve(stdout);
    });
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

export async function startPrivateLibvirtd(options: PrivateLibvirtdOptions = {}): Promise<PrivateLibvirtd> {
  const why = libvirtdUnavailable();
  if (why !== undefined) throw new Error(`cannot start a private libvirtd: ${why}`);
  const timeoutMs = options.timeoutMs ?? 30_000;
  const root = mkdtempSync(join(tmpdir(), 'vmsnap-libvirtd-'));
  const cacheDir = options.cacheDir === null ? join(root, 'cache') : (options.cacheDir ?? join(tmpdir(), 'vmsnap-libvirtd-cache'));
  for (const d of ['etc', 'lib', 'log', 'run']) mkdirSync(join(root, d));
  mkdirSync(cacheDir, { recursive: true });
  // The mount points must exist on the host; libvirt's packages make all but /run/libvirt.
  for (const d of Object.values(PRIVATE_DIRS)) mkdirSync(d, { recursive: true });
  // The daemons' settings (*.conf) only: not the host's domains, networks, pools,
  // secrets or hooks, which a copy of /etc/libvirt would bring (and autostart).
  for (const f of readdirSync('/etc/libvirt')) {
    if (f.endsWith('.conf')) copyFileSync(join('/etc/libvirt', f), join(root, 'etc', f));
  }
  // QEMU's output to a file, so a started domain needs no virtlogd.
  appendFileSync(join(root, 'etc', 'qemu.conf'), '\nstdio_handler = "file"\n');
  // libvirt's NAT network 'default', defined (not started, not autostarted).
  mkdirSync(join(root, 'etc', 'qemu', 'networks'), { recursive: true });
  copyFileSync('/usr/share/libvirt/networks/default.xml', join(root, 'etc', 'qemu', 'networks', 'default.xml'));

  const logPath = join(root, 'libvirtd.log');
  const log = openSync(logPath, 'a');
  const started = Date.now();
  const child = spawn('unshare', ['-m', '-n', '--propagation', 'private', 'sh', '-c', NAMESPACE_SCRIPT, 'sh', root, cacheDir, ...(options.bridges ?? [])], {
    stdio: ['ignore', log, log],
  });
  closeSync(log);
  const pid = child.pid;
  if (pid === undefined) throw new Error('could not spawn unshare');
  const killOnExit = (): void => {
    if (!exited(child)) child.kill('SIGKILL');
  };
  process.once('exit', killOnExit);

  const socket = join(root, 'run', 'libvirt-sock');
  const uri = `qemu+unix:///system?socket=${socket}`;
  const virsh = (args: string[]): Promise<string> => run('virsh', ['-q', '-c', uri, ...args]);
  let defines = 0;
  const define = async (xml: string): Promise<void> => {
    const file = join(root, `define-${defines++}.xml`);
    writeFileSync(file, xml);
    await virsh(['define', file]);
  };

  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    if (!exited(child)) {
      // QEMU processes outlive libvirtd: destroy running domains first.
      try {
        const names = (await virsh(['list', '--name'])).split('\n').filter((n) => n.trim() !== '');
        for (const n of names) await virsh(['destroy', n]).catch(() => undefined);
      } catch {
        // not answering: stop it anyway
      }
      child.kill('SIGTERM');
      for (let i = 0; i < 100 && !exited(child); i++) await sleep(100);
      if (!exited(child)) {
        child.kill('SIGKILL');
        for (let i = 0; i < 50 && !exited(child); i++) await sleep(100);
      }
    }
    process.removeListener('exit', killOnExit);
    rmSync(root, { recursive: true, force: true });
  };

  try {
    for (;;) {
      if (exited(child)) throw new Error(`libvirtd exited (${child.exitCode ?? child.signalCode ?? '?'})`);
      if (Date.now() - started > timeoutMs) throw new Error(`libvirtd did not answer within ${timeoutMs} ms`);
      if (existsSync(socket)) {
        try {
          await virsh(['uri']);
          break;
        } catch {
          // socket there, daemon not ready yet
        }
      }
      await sleep(50);
    }
  } catch (e) {
    const tail = existsSync(logPath) ? readFileSync(logPath, 'utf8').split('\n').slice(-20).join('\n') : '';
    await stop();
    throw new Error(`${(e as Error).message}\n${tail}`);
  }
  const startupMs = Date.now() - started;

  const hostPath = (path: string): string => {
    for (const [key, dir] of Object.entries(PRIVATE_DIRS)) {
      if (path === dir || path.startsWith(`${dir}/`)) {
        const base = key === 'cache' ? cacheDir : join(root, key);
        return base + path.slice(dir.length);
      }
    }
    return path;
  };

  return { uri, env: { LIBVIRT_DEFAULT_URI: uri }, pid, root, startupMs, hostPath, virsh, define, stop };
}
