import { VmsnapError } from '../errors.js';
import type { ForwardConfig } from './config.js';

/** The forms `--forward` takes: `[HOSTADDR:]HOSTPORT:GUESTPORT[/udp]`. */
export const FORWARD_FORM = '[HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|/udp], e.g. 2222:22 or 0.0.0.0:8080:80 or 5353:53/udp';

function badForward(spec: string, why: string): VmsnapError {
  return new VmsnapError('INVALID_ARGUMENT', `forward: '${spec}' ${why}`, {
    hint: `a forward is ${FORWARD_FORM}; HOSTADDR defaults to 127.0.0.1, HOSTPORT 0 picks a free port at each start`,
    details: { field: 'forward', value: spec },
  });
}

function port(spec: string, s: string, what: string, min: number): number {
  if (!/^\d{1,5}$/.test(s) || Number(s) < min || Number(s) > 65535) throw badForward(spec, `has no valid ${what} ('${s}': ${min}-65535)`);
  return Number(s);
}

/** Parse one `--forward` value. */
export function parseForward(spec: string): ForwardConfig {
  const m = /^(?:(.+):)?([^:/]+):([^:/]+)(?:\/(tcp|udp))?$/i.exec(spec.trim());
  if (!m) throw badForward(spec, 'is not a forward');
  const hostAddr = m[1] ?? '127.0.0.1';
  const octets = hostAddr.split('.');
  if (octets.length !== 4 || octets.some((o) => !/^\d{1,3}$/.test(o) || Number(o) > 255)) {
    throw badForward(spec, `has a host address '${hostAddr}' that is not IPv4 (QEMU's user-mode network forwards from IPv4 addresses)`);
  }
  return {
    proto: (m[4]?.toLowerCase() ?? 'tcp') as 'tcp' | 'udp',
    hostAddr,
    hostPort: port(spec, m[2]!, 'host port', 0),
    guestPort: port(spec, m[3]!, 'guest port', 1),
  };
}

/** `127.0.0.1:2222 -> 22/tcp`, as info and errors show it. */
export function formatForward(f: ForwardConfig): string {
  return `${f.hostAddr}:${f.hostPort === 0 ? 'auto' : f.hostPort} -> ${f.guestPort}/${f.proto}`;
}

/** Whether two forwards would listen on the same host socket (0.0.0.0 takes the port on every address). */
export function forwardsClash(a: ForwardConfig, b: ForwardConfig): boolean {
  if (a.proto !== b.proto || a.hostPort === 0 || a.hostPort !== b.hostPort) return false;
  return a.hostAddr === b.hostAddr || a.hostAddr === '0.0.0.0' || b.hostAddr === '0.0.0.0';
}
