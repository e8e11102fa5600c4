import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createSocket } from 'node:dgram';
import { createServer } from 'node:net';
import { join } from 'node:path';
import type { Context } from '../context.js';
import type { ForwardConfig, VmConfig } from '../contract/config.js';
import { formatForward, forwardsClash } from '../contract/network.js';
import type { VmEndpoints } from '../contract/views.js';
import { VmsnapError, type ErrorCode } from '../errors.js';
import { BRIDGE_HELPER, type RuntimeFiles } from '../qemu/launcher.js';
import { QmpClient } from '../qemu/qmp.js';

/**
 * The host side of a VM's network and screen: forwards and bridges are
 * checked before QEMU starts (QEMU would fail late and vaguely, or not at
 * all), free ports are picked for forwards that ask for one, and what the
 * VM can be reached on is written to its runtime folder for `info`.
 */

const forwardsOf = (config: VmConfig): ForwardConfig[] => config.nics.flatMap((n) => n.forwards ?? []);

/** Whether a host socket can be bound now (then released at once). */
export function canBind(f: Pick<ForwardConfig, 'proto' | 'hostAddr' | 'hostPort'>): Promise<{ ok: true } | { ok: false; why: string }> {
  return new Promise((resolve) => {
    const fail = (e: NodeJS.ErrnoException): void =>
      resolve({ ok: false, why: e.code === 'EADDRINUSE' ? 'is in use' : e.code === 'EADDRNOTAVAIL' ? 'is not an address of this host' : e.code === 'EACCES' ? 'needs privileges to bind' : e.message });
    if (f.proto === 'udp') {
      const s = createSocket('udp4');
      s.once('error', (e) => {
        s.close();
        fail(e);
      });
      s.bind({ address: f.hostAddr, port: f.hostPort, exclusive: true }, () => s.close(() => resolve({ ok: true })));
      return;
    }
    const srv = createServer();
    srv.once('error', fail);
    srv.listen({ host: f.hostAddr, port: f.hostPort, exclusive: true }, () => srv.close(() => resolve({ ok: true })));
  });
}

/** A port nothing listens on now (the kernel's pick). */
async function freePort(proto: 'tcp' | 'udp', hostAddr: string): Promise<number> {
  if (proto === 'udp') {
    return new Promise((resolve, reject) => {
      const s = createSocket('udp4');
      s.once('error', reject);
      s.bind({ address: hostAddr, port: 0 }, () => {
        const p = s.address().port;
        s.close(() => resolve(p));
      });
    });
  }
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen({ host: hostAddr, port: 0 }, () => {
      const a = srv.address();
      srv.close(() => resolve(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

/** Lines of /etc/qemu/bridge.conf (and the files it includes) that allow a bridge. */
function bridgeAllowed(bridge: string, file = '/etc/qemu/bridge.conf', depth = 0): boolean {
  if (depth > 4 || !existsSync(file)) return false;
  for (const raw of readFileSync(file, 'utf8').split('\n')) {
    const [word, arg] = raw.trim().split(/\s+/);
    if (word === 'allow' && (arg === bridge || arg === 'all')) return true;
    if (word === 'include' && arg && bridgeAllowed(bridge, arg, depth + 1)) return true;
  }
  return false;
}

/** Why a NIC cannot be put on this host bridge now (it is missing, no bridge, or qemu-bridge-helper may not use it), or nothing. */
export function bridgeProblem(bridge: string, code: ErrorCode = 'INVALID_ARGUMENT'): VmsnapError | undefined {
  if (!existsSync(join('/sys/class/net', bridge))) {
    return new VmsnapError(code, `bridge: no network interface '${bridge}' on this host`, {
      hint: `create it first (ip link add ${bridge} type bridge && ip link set ${bridge} up), or give an existing bridge`,
      details: { field: 'bridge', value: bridge },
    });
  }
  if (!existsSync(join('/sys/class/net', bridge, 'bridge'))) {
    return new VmsnapError(code, `bridge: '${bridge}' is a network interface but not a bridge`, {
      hint: 'give the name of a Linux bridge (ip -d link show type bridge lists them)',
      details: { field: 'bridge', value: bridge },
    });
  }
  if (!existsSync(BRIDGE_HELPER)) {
    return new VmsnapError(code, `bridge: ${BRIDGE_HELPER} is missing`, { hint: 'apt-get install qemu-system-common', details: { field: 'bridge' } });
  }
  if (!bridgeAllowed(bridge)) {
    return new VmsnapError(code, `bridge: qemu-bridge-helper may not use '${bridge}'`, {
      hint: `add the line 'allow ${bridge}' to /etc/qemu/bridge.conf`,
      details: { field: 'bridge', value: bridge },
    });
  }
  return undefined;
}

/**
 * Refuse a config whose network cannot work on this host, before anything is
 * written or QEMU starts: a bridge that does not exist or that
 * qemu-bridge-helper may not use, a forward listed twice, a host port another
 * VM forwards, a host port in use. `code` is INVALID_ARGUMENT for a request
 * (create, set), INVALID_STATE for a start.
 */
export async function checkNetwork(ctx: Context, vm: { id: string; name: string }, config: VmConfig, code: ErrorCode): Promise<void> {
  for (const nic of config.nics) {
    if (!nic.bridge) continue;
    if (nic.forwards?.length) {
      throw new VmsnapError('INVALID_ARGUMENT', `${nic.id}: a bridged NIC has no port forwards (the guest is on the bridge's network)`, { details: { field: 'forward', nic: nic.id } });
    }
    const problem = bridgeProblem(nic.bridge, code);
    if (problem) throw problem;
  }
  const mine = forwardsOf(config);
  mine.forEach((f, i) => {
    const twin = mine.slice(0, i).find((g) => forwardsClash(f, g));
    if (twin) {
      throw new VmsnapError('INVALID_ARGUMENT', `forward: ${formatForward(f)} takes the host port of ${formatForward(twin)} again`, {
        hint: 'give each forward its own host port',
        details: { field: 'forward', value: formatForward(f) },
      });
    }
  });
  for (const other of ctx.catalog.listVms()) {
    if (other.id === vm.id) continue;
    for (const f of mine) {
      const g = forwardsOf(other.config).find((x) => forwardsClash(f, x));
      if (g) {
        throw new VmsnapError(code, `forward: host port ${f.hostAddr}:${f.hostPort}/${f.proto} is already forwarded by VM '${other.name}' (${formatForward(g)})`, {
          hint: `choose another host port, or change that VM's forwards: vmsnap set ${other.name} --forward ...`,
          details: { field: 'forward', value: formatForward(f), vm: other.name },
        });
      }
    }
  }
  for (const f of mine.filter((x) => x.hostPort !== 0)) {
    const r = await canBind(f);
    if (!r.ok) {
      throw new VmsnapError(code, `forward: host port ${f.hostAddr}:${f.hostPort}/${f.proto} ${r.why}`, {
        hint: `choose another host port (${formatForward(f)}), or stop what listens there (ss -lntup)`,
        details: { field: 'forward', value: formatForward(f) },
      });
    }
  }
}

/** The config QEMU gets: forwards with host port 0 get a free port now. */
export async function resolvePorts(config: VmConfig): Promise<VmConfig> {
  if (!forwardsOf(config).some((f) => f.hostPort === 0)) return config;
  const nics = [];
  for (const nic of config.nics) {
    const forwards = [];
    for (const f of nic.forwards ?? []) forwards.push(f.hostPort === 0 ? { ...f, hostPort: await freePort(f.proto, f.hostAddr) } : f);
    nics.push(nic.forwards ? { ...nic, forwards } : nic);
  }
  return { ...config, nics };
}

const endpointsFile = (files: RuntimeFiles): string => join(files.dir, 'endpoints.json');

/**
 * Whether `next` forwards a host port that the QEMU in `files` (running `present`) listens
 * on: a QEMU for `next` cannot start beside it then, only once it is gone (its sockets
 * close with its last thread). Ports asked as 0 are picked afresh, so they never clash.
 */
export function holdsForwardsOf(files: RuntimeFiles, present: VmConfig, next: VmConfig): boolean {
  const held = readEndpoints(files)?.forwards ?? forwardsOf(present);
  return forwardsOf(next).some((f) => held.some((g) => forwardsClash(f, g)));
}

/** After QEMU started: where its forwards listen and, with a display, its VNC port (QEMU picked a free one). */
export async function recordEndpoints(files: RuntimeFiles, launched: VmConfig): Promise<VmEndpoints> {
  const endpoints: VmEndpoints = { forwards: forwardsOf(launched).map((f) => ({ ...f })) };
  if (launched.display === 'vnc') {
    // Not worth failing a start over: info then shows no port.
    const qmp = await QmpClient.connect(files.statusSocket, { timeoutMs: 5000, retryUntilMs: 3000 }).catch(() => undefined);
    try {
      const v = await qmp?.execute<{ enabled: boolean; host?: string; service?: string }>('query-vnc');
      if (v?.enabled && v.service) endpoints.vnc = { host: v.host ?? '127.0.0.1', port: Number(v.service) };
    } catch {
      /* no VNC port known */
    } finally {
      await qmp?.close().catch(() => undefined);
    }
  }
  // Only what there is to show, and never a reason to fail a start (a full disk must not stop a recovery's restart).
  if (endpoints.forwards.length > 0 || endpoints.vnc) {
    try {
      writeFileSync(endpointsFile(files), JSON.stringify(endpoints));
    } catch {
      /* info then shows the configured ports */
    }
  }
  return endpoints;
}

/** What a running VM can be reached on; undefined when it is not running (or was started before this was recorded). */
export function readEndpoints(files: RuntimeFiles): VmEndpoints | undefined {
  try {
    return JSON.parse(readFileSync(endpointsFile(files), 'utf8')) as VmEndpoints;
  } catch {
    return undefined;
  }
}
