import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { VmsnapError } from '../errors.js';
import { isProcessAlive } from '../util/process.js';
import { spawnSplitSink } from './split-sink-process.js';
import { PAGE, StreamBuilder, pageOf, q35Blocks, type PageRecord } from './stream-builder.js';

const RAM = 16 * 1024 * 1024;

function stream(): ReturnType<StreamBuilder['build']> {
  const b = new StreamBuilder({ blocks: q35Blocks(RAM) }).header().ramStart();
  const recs: PageRecord[] = [];
  for (let p = 0; p < RAM / PAGE; p++) recs.push(p % 7 === 0 ? { block: 'pc.ram', offset: p * PAGE, data: pageOf(p) } : { block: 'pc.ram', offset: p * PAGE, zero: true });
  b.ramSection('part', recs.slice(0, 2000)).ramSection('part', recs.slice(2000));
  b.devices([{ idstr: 'timer', payload: Buffer.alloc(100, 1) }]);
  return b.build();
}

/** Writes `bufs` to the sink's unix socket one after another, calling `between` after the first. */
async function send(socket: string, bufs: Buffer[], between: () => void = () => undefined): Promise<void> {
  const conn = connect(socket);
  await new Promise<void>((resolve, reject) => conn.once('connect', resolve).once('error', reject));
  for (const [i, b] of bufs.entries()) {
    await new Promise<void>((resolve, reject) => conn.write(b, (e) => (e ? reject(e) : resolve())));
    if (i === 0) between();
  }
  await new Promise<void>((resolve) => conn.end(resolve));
}

// The split sink runs as a process of its own (so a killed vmsnap cannot leave QEMU without a reader).
describe('spawnSplitSink', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'vs-sink-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('splits a stream in its own process and reports the result; started is reported', async () => {
    const x = stream();
    let started = 0;
    const sink = await spawnSplitSink(join(dir, 's.sock'), join(dir, 'ram'), join(dir, 'dev'), { snapshotId: 'snap-1', onStarted: () => started++ });
    expect(sink.uri).toBe(`unix:${join(dir, 's.sock')}`);
    expect(sink.pid).not.toBe(process.pid);
    await send(join(dir, 's.sock'), [x.stream]);
    const r = await sink.done;
    expect(started).toBe(1);
    expect(r.deviceState.bytes).toBe(x.device.length);
    expect(readFileSync(join(dir, 'ram')).subarray(0, RAM).equals(x.ram)).toBe(true);
    expect(readFileSync(join(dir, 'dev')).equals(x.device)).toBe(true);
  }, 30_000);

  it('reads a stream to its end after its parent lets go (close mid-stream): the files are whole', async () => {
    const x = stream();
    const sink = await spawnSplitSink(join(dir, 's.sock'), join(dir, 'ram'), join(dir, 'dev'), { snapshotId: 'snap-2' });
    const half = x.stream.length >> 1;
    await send(join(dir, 's.sock'), [x.stream.subarray(0, half), x.stream.subarray(half)], () => sink.close());
    const r = await sink.done;
    expect(r.ramImage.ramBytes).toBe(RAM);
    expect(readFileSync(join(dir, 'dev')).equals(x.device)).toBe(true);
  }, 30_000);

  it('gives up when closed before any stream came: done rejects, the process exits, no file is made', async () => {
    const sink = await spawnSplitSink(join(dir, 's.sock'), join(dir, 'ram'), join(dir, 'dev'));
    sink.close();
    await expect(sink.done).rejects.toBeInstanceOf(VmsnapError);
    for (let i = 0; i < 100 && isProcessAlive(sink.pid); i++) await new Promise((r) => setTimeout(r, 20));
    expect(isProcessAlive(sink.pid)).toBe(false);
    expect(existsSync(join(dir, 'ram')) || existsSync(join(dir, 'dev')) || existsSync(join(dir, 's.sock'))).toBe(false);
  }, 30_000);

  it('a truncated stream: the error comes back with its code and the files are removed', async () => {
    const x = stream();
    const sink = await spawnSplitSink(join(dir, 's.sock'), join(dir, 'ram'), join(dir, 'dev'), { snapshotId: 'snap-3' });
    await send(join(dir, 's.sock'), [x.stream.subarray(0, 100_000)]);
    const e: unknown = await sink.done.catch((err: unknown) => err);
    expect(e).toBeInstanceOf(VmsnapError);
    expect((e as VmsnapError).code).toBe('INVALID_ARGUMENT');
    expect((e as VmsnapError).message).toMatch(/truncated/);
    expect(existsSync(join(dir, 'ram')) || existsSync(join(dir, 'dev'))).toBe(false);
  }, 30_000);
});
