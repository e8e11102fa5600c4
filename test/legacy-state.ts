import { createHash } from 'node:crypto';
import { createWriteStream, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { VmsnapError } from '../src/errors.js';
import { fsyncFileAndDir } from '../src/util/files.js';

export interface StateSink {
  /** The migration URI to give QEMU. */
  uri: string;
  /** Resolves once QEMU closed the stream and the file is fsynced. */
  done: Promise<{ bytes: number; sha256: string }>;
  /** Stop listening (after done, or to give up). */
  close(): void;
}

/**
 * The state sink of vmsnap before split memory states, kept for the tests that make a
 * snapshot in the old one-file format (to prove such snapshots still revert).
 *
 * Receive a migration stream on a unix socket and write it to a file. QEMU
 * connects to it (no fork of the QEMU process, unlike an exec: URI, whose cost
 * would land in the guest's pause), and the stream is hashed on the way, so the
 * state file carries a checksum that is verified before it is ever loaded.
 */
export async function openStateSink(socketPath: string, filePath: string): Promise<StateSink> {
  rmSync(socketPath, { force: true });
  let server: Server | undefined;
  const done = new Promise<{ bytes: number; sha256: string }>((resolve, reject) => {
    server = createServer((conn) => {
      server?.close(); // one stream only
      // A deep write queue: with the default 16 KiB every socket chunk would wait for its disk write.
      const out = createWriteStream(filePath, { flags: 'w', mode: 0o600, highWaterMark: 16 * 1024 * 1024 });
      const hash = createHash('sha256');
      let bytes = 0;
      conn.on('data', (d: Buffer) => {
        hash.update(d);
        bytes += d.length;
        if (!out.write(d)) {
          conn.pause();
          out.once('drain', () => conn.resume());
        }
      });
      conn.on('end', () =>
        out.end(() => {
          try {
            fsyncFileAndDir(filePath);
            resolve({ bytes, sha256: hash.digest('hex') });
          } catch (e) {
            reject(e);
          }
        }),
      );
      conn.on('error', reject);
      out.on('error', (e: NodeJS.ErrnoException) =>
        reject(e.code === 'ENOSPC' ? new VmsnapError('NO_SPACE', `no space left to write the memory state file ${filePath}`, { cause: e }) : e),
      );
    });
    server.on('error', reject);
  });
  done.catch(() => undefined); // observed by the caller; never an unhandled rejection
  await new Promise<void>((resolve, reject) => {
    server!.once('error', reject);
    server!.listen(socketPath, () => resolve());
  });
  return {
    uri: `unix:${socketPath}`,
    done,
    close: () => {
      server?.close();
      rmSync(socketPath, { force: true });
    },
  };
}
