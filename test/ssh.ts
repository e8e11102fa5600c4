import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * SSH into a test guest through a port forward, as a user would: the Debian
 * test guest's default user `debian`, with a key given to cloud-init's seed.
 */

/** A host port nothing listens on now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => resolve(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

/** A new ed25519 key pair in its own temp dir: `key` is the private key, `${key}.pub` the public one. */
export function newSshKey(): { dir: string; key: string } {
  const dir = mkdtempSync(join(tmpdir(), 'vmsnap-key-'));
  const key = join(dir, 'id_ed25519');
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', key]);
  return { dir, key };
}

export interface GuestSsh {
  args(port: number, cmd: string): string[];
  /** Run a command in the guest; rejects with ssh's stderr on failure. */
  run(port: number, cmd: string): Promise<string>;
  /** A session that keeps a counter in /tmp/counter going (ignoring the hangup a revert's cut connection gives it). */
  startCounter(port: number): ChildProcess;
  counter(port: number): Promise<number>;
}

export function guestSsh(key: string): GuestSsh {
  const args = (port: number, cmd: string): string[] => [
    '-p', String(port), '-i', key, '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'BatchMode=yes',
    '-o', 'ConnectTimeout=90', '-o', 'LogLevel=ERROR', 'debian@127.0.0.1', cmd,
  ];
  const run = (port: number, cmd: string): Promise<string> =>
    new Promise((resolve, reject) => {
      const c = spawn('ssh', args(port, cmd), { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      c.stdout.on('data', (d: Buffer) => (out += d.toString()));
      c.stderr.on('data', (d: Buffer) => (err += d.toString()));
      const t = setTimeout(() => c.kill('SIGKILL'), 180_000);
      c.on('close', (code) => {
        clearTimeout(t);
        if (code === 0) resolve(out);
        else reject(new Error(`ssh exited ${code}: ${err.trim()}`));
      });
    });
  return {
    args,
    run,
    startCounter: (port) => spawn('ssh', args(port, `trap '' HUP; i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.2; done`), { stdio: 'ignore' }),
    counter: async (port) => Number((await run(port, 'cat /tmp/counter')).trim()),
  };
}
