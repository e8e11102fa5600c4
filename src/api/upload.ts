import { createWriteStream, rmSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as NodeReadableStream } from 'node:stream/web';
import type { Context } from 'hono';
import { formatBytes } from '../contract/format.js';
import { VmsnapError } from '../errors.js';
import { scratchDir } from '../transfer/io.js';
import { ApiError } from './errors.js';

/** Media types an archive may be uploaded as (a browser sends a File without one as octet-stream). */
const ARCHIVE_TYPES = new Set(['application/octet-stream', 'application/x-tar', 'application/x-vmsnap']);

export interface Upload {
  /** The scratch folder holding it: remove it when done. */
  dir: string;
  file: string;
  bytes: number;
}

/**
 * An archive sent as the raw request body, written to a scratch folder in
 * $VMSNAP_HOME/tmp as it arrives (never held in memory). Refused before a
 * byte is read: no Content-Length (411), another media type (415), and a
 * body that would not fit: `copies` times its length must be free in the
 * data dir (an import needs room for the upload and for the files it
 * becomes). An upload cut short is removed and refused.
 */
export async function receiveUpload(c: Context, home: string, copies: number): Promise<Upload> {
  const type = (c.req.header('Content-Type') ?? 'application/octet-stream').split(';')[0]!.trim().toLowerCase();
  if (!ARCHIVE_TYPES.has(type)) {
    throw new ApiError('UNSUPPORTED_MEDIA_TYPE', `an archive is uploaded as the raw body, not as ${type}`, 'send the file itself with Content-Type: application/octet-stream (curl --data-binary @FILE)');
  }
  const header = c.req.header('Content-Length');
  if (header === undefined || !/^\d+$/.test(header)) {
    throw new ApiError('LENGTH_REQUIRED', 'the upload needs a Content-Length', 'send the archive as a file (curl --data-binary @FILE), not as a chunked stream: its size is checked against the free space first');
  }
  const length = Number(header);
  const body = c.req.raw.body;
  if (length === 0 || !body) throw new VmsnapError('INVALID_ARGUMENT', 'body: the upload is empty', { hint: "send a file written by 'vmsnap export'", details: { field: 'body' } });
  const fs = statfsSync(home);
  const free = fs.bavail * fs.bsize;
  if (copies * length > free) {
    throw new VmsnapError('NO_SPACE', `the upload of ${formatBytes(length)} needs ${formatBytes(copies * length)} free in the data dir, which has ${formatBytes(free)}`, {
      hint: 'free space in the data dir first; nothing was written',
      details: { needBytes: copies * length, freeBytes: free },
    });
  }
  const dir = await scratchDir(home, 'upload');
  const file = join(dir, 'upload.vmsnap');
  let received = 0;
  const count = new Transform({
    transform(chunk: Buffer, _enc, done) {
      received += chunk.length;
      done(received > length ? new Error('more bytes than Content-Length') : null, chunk);
    },
  });
  try {
    // The DOM's and Node's ReadableStream types differ only on paper.
    await pipeline(Readable.fromWeb(body as NodeReadableStream<Uint8Array>), count, createWriteStream(file, { flags: 'wx', mode: 0o600 }));
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    if ((e as NodeJS.ErrnoException).code === 'ENOSPC') throw new VmsnapError('NO_SPACE', 'the data dir filled up during the upload; nothing was written', { cause: e });
    throw cutShort(received, length, e);
  }
  if (received !== length) {
    rmSync(dir, { recursive: true, force: true });
    throw cutShort(received, length);
  }
  return { dir, file, bytes: received };
}

const cutShort = (received: number, length: number, cause?: unknown): VmsnapError =>
  new VmsnapError('INVALID_ARGUMENT', `body: the upload ended after ${received} of ${length} bytes; nothing was written`, {
    hint: 'send the whole archive again',
    details: { field: 'body', receivedBytes: received, expectedBytes: length },
    ...(cause !== undefined ? { cause } : {}),
  });
