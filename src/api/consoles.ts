import { createHash, timingSafeEqual } from 'node:crypto';
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import type { IncomingMessage, Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { VmsnapError } from '../errors.js';
import type { Vmsnap } from '../vmsnap.js';
import { isLoopback, TOKEN_FILE } from './auth.js';

/**
 * The web UI's consoles: a VM's serial console and its VNC screen as
 * WebSockets (binary frames both ways), bridged to QEMU's serial socket and
 * its loopback VNC port. Under the API's rules: the Host check without a
 * token, the token with one (a browser cannot set headers on a WebSocket, so
 * it may come as the subprotocol `vmsnap.token.<token>`, offered beside `vmsnap`, which the server chooses), and the page's
 * Origin must be this server's own (no cross-site WebSocket hijacking).
 */

export const CONSOLE_PATH = /^\/api\/vms\/([^/]+)\/(console|vnc)$/;
/** The subprotocol a browser offers to carry the token; the server echoes `vmsnap`. */
export const TOKEN_PROTOCOL_PREFIX = 'vmsnap.token.';
/** How much of the serial log a new console client gets first, so it sees where the guest is. */
const LOG_TAIL = 8192;

export interface ConsoleOptions {
  token?: string;
  allowedHosts?: string[];
}

const digest = (s: string) => createHash('sha256').update(s).digest();

function refuse(socket: Duplex, status: number, message: string): void {
  const body = JSON.stringify({ error: { code: status === 401 ? 'UNAUTHORIZED' : status === 403 ? 'FORBIDDEN' : status === 404 ? 'NOT_FOUND' : 'INVALID_STATE', message, details: {} } });
  socket.end(`HTTP/1.1 ${status} ${status === 401 ? 'Unauthorized' : status === 403 ? 'Forbidden' : status === 404 ? 'Not Found' : 'Conflict'}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
}

/** Why a WebSocket upgrade is refused, or undefined when it may go on. */
export function checkUpgrade(req: IncomingMessage, opts: ConsoleOptions): { status: number; message: string } | undefined {
  const host = (req.headers.host ?? '').toLowerCase();
  if (opts.token === undefined) {
    const name = host.startsWith('[') ? host.slice(0, host.indexOf(']') + 1) : host.replace(/:\d+$/, '');
    const extra = (opts.allowedHosts ?? []).map((h) => h.toLowerCase());
    if (!isLoopback(name) && !extra.includes(name) && !extra.includes(host)) return { status: 403, message: `unexpected Host header '${host}'` };
  }
  const origin = req.headers.origin;
  if (origin !== undefined) {
    let originHost: string | undefined;
    try {
      originHost = new URL(origin).host.toLowerCase();
    } catch {
      originHost = undefined;
    }
    if (originHost !== host) return { status: 403, message: `cross-origin console refused (Origin: ${origin})` };
  }
  if (opts.token !== undefined) {
    const bearer = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '')?.[1];
    const offered = (req.headers['sec-websocket-protocol'] ?? '').split(',').map((p) => p.trim());
    const fromProtocol = offered.find((p) => p.startsWith(TOKEN_PROTOCOL_PREFIX))?.slice(TOKEN_PROTOCOL_PREFIX.length);
    const given = bearer ?? fromProtocol;
    if (given === undefined) return { status: 401, message: `this server requires a bearer token (the token is in $VMSNAP_HOME/${TOKEN_FILE})` };
    if (!timingSafeEqual(digest(given), digest(opts.token))) return { status: 401, message: 'wrong bearer token' };
  }
  return undefined;
}

function logTail(file: string): Buffer {
  try {
    const size = statSync(file).size;
    const n = Math.min(size, LOG_TAIL);
    const buf = Buffer.alloc(n);
    const fd = openSync(file, 'r');
    try {
      readSync(fd, buf, 0, n, size - n);
    } finally {
      closeSync(fd);
    }
    return buf;
  } catch {
    return Buffer.alloc(0);
  }
}

/** Pipe a WebSocket and a socket into each other until either ends. */
function bridge(ws: WebSocket, sock: Socket): void {
  sock.on('data', (d: Buffer) => ws.readyState === ws.OPEN && ws.send(d));
  ws.on('message', (d: Buffer | ArrayBuffer | Buffer[]) => {
    if (!sock.writable) return;
    if (Array.isArray(d)) for (const b of d) sock.write(b);
    else sock.write(Buffer.isBuffer(d) ? d : Buffer.from(d));
  });
  const end = (): void => {
    sock.destroy();
    if (ws.readyState === ws.OPEN || ws.readyState === ws.CONNECTING) ws.close(1000);
  };
  sock.on('close', end);
  sock.on('error', end);
  ws.on('close', end);
  ws.on('error', end);
}

/** Where a console connects: the VM's serial socket (plus its recent output), or its VNC port. */
async function target(lib: Vmsnap, vm: string, kind: 'console' | 'vnc'): Promise<{ socket: Socket; first?: Buffer }> {
  if (kind === 'console') {
    const c = await lib.vms.console(vm);
    return { socket: connect(c.socket), first: logTail(c.log) };
  }
  const info = await lib.vms.info(vm);
  const vnc = info.endpoints?.vnc;
  if (!vnc) {
    throw new VmsnapError('INVALID_STATE', `VM '${info.name}' has no screen${info.state === 'stopped' ? ' (it is stopped)' : ''}`, {
      hint: `give it one: vmsnap set ${info.name} --display vnc (while stopped)`,
    });
  }
  return { socket: connect(vnc.port, vnc.host) };
}

/** Serve the console WebSockets on an HTTP server. Returns a function that closes every open console. */
export function attachConsoles(server: Server, lib: Vmsnap, opts: ConsoleOptions): () => void {
  const wss = new WebSocketServer({
    noServer: true,
    // Choose the plain `vmsnap` the client offers beside its token, never echo the token (a browser fails a choice it did not offer).
    handleProtocols: (protocols) => (protocols.has('vmsnap') ? 'vmsnap' : false),
  });
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const m = CONSOLE_PATH.exec(url.pathname);
    if (!m) return refuse(socket, 404, `no WebSocket at ${url.pathname}`);
    const denied = checkUpgrade(req, opts);
    if (denied) return refuse(socket, denied.status, denied.message);
    const vm = decodeURIComponent(m[1]!);
    const kind = m[2] as 'console' | 'vnc';
    target(lib, vm, kind).then(
      ({ socket: sock, first }) => {
        sock.once('error', () => undefined);
        wss.handleUpgrade(req, socket, head, (ws) => {
          if (first?.length) ws.send(first);
          bridge(ws, sock);
        });
      },
      (e: unknown) => refuse(socket, e instanceof VmsnapError && e.code === 'NOT_FOUND' ? 404 : 409, (e as Error).message),
    );
  });
  return () => {
    for (const ws of wss.clients) ws.terminate();
    wss.close();
  };
}
