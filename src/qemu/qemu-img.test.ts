import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { VmsnapError } from '../errors.js';
import { isProcessAlive } from '../util/process.js';
import { checkImage, commitImage, imageInfo, progressParser, qemuImgFailure, qemuImgSpawnFailure, runQemuImg } from './qemu-img.js';

// No qemu-img here: fake ones (shell scripts) stand in for it, run by path or found on PATH.
let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vmsnap-qemu-img-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let n = 0;
function fake(script: string): string {
  const path = join(dir, `fake-${n++}`);
  writeFileSync(path, `#!/bin/sh\n${script}\n`);
  chmodSync(path, 0o755);
  return path;
}

async function rejection(p: Promise<unknown>): Promise<VmsnapError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(VmsnapError);
    return e as VmsnapError;
  }
  throw new Error('expected a rejection');
}

describe('progressParser', () => {
  it('reads a report split across chunks, and the latest of several in one chunk', () => {
    const seen: number[] = [];
    const feed = progressParser((f) => seen.push(f));
    feed('    (0.00/100%)\r');
    feed('    (12.3');
    expect(seen).toEqual([0]);
    feed('4/100%)\r    (20.00/100%)\r    (3');
    feed('0.50/100%)');
    feed('\r    (100.00/100%)\r\n');
    expect(seen).toEqual([0, 0.2, 0.305, 1]);
  });

  it('ignores other output and keeps fractions within 0..1', () => {
    const seen: number[] = [];
    const feed = progressParser((f) => seen.push(f));
    feed('Image committed.\n');
    feed('(250/100%)');
    expect(seen).toEqual([1]);
  });

  it('does not grow without bound on output without reports', () => {
    const seen: number[] = [];
    const feed = progressParser((f) => seen.push(f));
    for (let i = 0; i < 1000; i++) feed('x'.repeat(1000));
    feed('(50/100%)');
    expect(seen).toEqual([0.5]);
  });
});

describe('qemu-img error mapping', () => {
  it('names what failed with qemu-img’s own message, without its prefix', () => {
    const e = qemuImgFailure('cannot create image /x.qcow2', ['create', '/x.qcow2'], { code: 1, stderr: "qemu-img: /x.qcow2: Could not create '/x.qcow2': Permission denied\n" });
    expect(e.code).toBe('QEMU_FAILED');
    expect(e.message).toBe("cannot create image /x.qcow2: /x.qcow2: Could not create '/x.qcow2': Permission denied");
    expect(e.details).toMatchObject({ args: ['create', '/x.qcow2'], exitCode: 1 });
  });

  it('maps a full disk to NO_SPACE with a hint', () => {
    const e = qemuImgFailure('cannot merge a', ['commit', 'a'], { code: 1, stderr: 'qemu-img: error while writing sector 0: No space left on device' });
    expect(e.code).toBe('NO_SPACE');
    expect(e.message).toBe('cannot merge a: error while writing sector 0: No space left on device');
    expect(e.hint).toMatch(/free disk space/);
    expect(qemuImgFailure('w', [], { code: 1, stderr: 'No space left on device' }, 'free space where the archive goes').hint).toBe('free space where the archive goes');
  });

  it('says how qemu-img ended when it said nothing', () => {
    expect(qemuImgFailure('w', [], { code: 7, stderr: '' }).message).toBe('w: qemu-img exited with code 7');
    const killed = qemuImgFailure('w', [], { code: null, signal: 'SIGKILL', stderr: ' \n' });
    expect(killed.message).toBe('w: qemu-img was killed by SIGKILL');
    expect(killed.details).toMatchObject({ signal: 'SIGKILL' });
  });

  it('says qemu-img is not installed, with the package to install', () => {
    const enoent = Object.assign(new Error('spawn qemu-img ENOENT'), { code: 'ENOENT' });
    const e = qemuImgSpawnFailure('cannot read image x', enoent);
    expect(e).toMatchObject({ code: 'QEMU_FAILED', message: 'qemu-img is not installed', hint: 'apt-get install qemu-utils' });
    const eacces = Object.assign(new Error('spawn qemu-img EACCES'), { code: 'EACCES' });
    expect(qemuImgSpawnFailure('cannot read image x', eacces).message).toBe('cannot read image x: cannot run qemu-img: spawn qemu-img EACCES');
  });
});

describe('runQemuImg', () => {
  it('returns stdout and passes the arguments through', async () => {
    const r = await runQemuImg(['info', 'a b', '--output=json'], { what: 'w', command: fake('printf "%s|" "$@"') });
    expect(r).toEqual({ stdout: 'info|a b|--output=json|', stderr: '', code: 0 });
  });

  it('fails with the mapped error, and accepts okCodes', async () => {
    const failing = fake('echo "qemu-img: Could not open \'x\': No such file or directory" >&2; exit 1');
    const e = await rejection(runQemuImg(['info', 'x'], { what: 'cannot read image x', command: failing }));
    expect(e.message).toBe("cannot read image x: Could not open 'x': No such file or directory");
    const full = fake('echo "qemu-img: error while writing: No space left on device" >&2; exit 1');
    expect((await rejection(runQemuImg([], { what: 'w', command: full }))).code).toBe('NO_SPACE');
    const leaks = fake('echo \'{"leaks": 2}\'; echo "Leaked cluster 5" >&2; exit 3');
    expect(await runQemuImg([], { what: 'w', command: leaks, okCodes: [3] })).toEqual({ stdout: '{"leaks": 2}\n', stderr: 'Leaked cluster 5\n', code: 3 });
    expect((await rejection(runQemuImg([], { what: 'w', command: leaks, okCodes: [2] }))).details).toMatchObject({ exitCode: 3 });
  });

  it('says when the program is missing', async () => {
    const e = await rejection(runQemuImg(['info'], { what: 'w', command: join(dir, 'no-such-qemu-img') }));
    expect(e.message).toMatch(/no-such-qemu-img is not installed/);
    expect(e.hint).toBe('apt-get install qemu-utils');
  });

  it('reports -p progress as fractions and the pid as soon as it runs', async () => {
    const job = fake(`printf '    (0.00/100%%)\\r'; sleep 0.05; printf '    (4'; sleep 0.05; printf '2.00/100%%)\\r'; sleep 0.05; printf '    (100.00/100%%)\\r\\n'`);
    const seen: number[] = [];
    const pids: number[] = [];
    const r = await runQemuImg(['commit', '-p', 'x'], { what: 'w', command: job, onProgress: (f) => seen.push(f), onSpawn: (pid) => pids.push(pid) });
    expect(seen).toEqual([0, 0.42, 1]);
    expect(pids).toHaveLength(1);
    expect(r.stdout).toBe(''); // progress text is not kept
  });

  it('refuses more stdout than the limit', async () => {
    const chatty = fake('head -c 100000 /dev/zero; exec sleep 5');
    const t0 = Date.now();
    const e = await rejection(runQemuImg(['map'], { what: 'cannot map x', command: chatty, maxStdoutBytes: 1000 }));
    expect(e.message).toBe('cannot map x: qemu-img wrote more than 1000 bytes of output');
    expect(Date.now() - t0).toBeLessThan(4000);
  });

  describe('abort', () => {
    const pids: number[] = [];
    afterEach(() => {
      for (const pid of pids.splice(0)) if (isProcessAlive(pid)) process.kill(pid, 'SIGKILL');
    });

    it('stops qemu-img and rejects with INTERRUPTED once it is gone', async () => {
      const slow = fake('exec sleep 30');
      const ac = new AbortController();
      const run = runQemuImg(['convert', 'a', 'b'], { what: 'w', command: slow, signal: ac.signal, onSpawn: (pid) => pids.push(pid) });
      expect(pids).toHaveLength(1);
      ac.abort(new Error('Ctrl-C'));
      const e = await rejection(run);
      expect(e.code).toBe('INTERRUPTED');
      expect((e.cause as Error).message).toBe('Ctrl-C');
      expect(isProcessAlive(pids[0]!)).toBe(false);
    });

    it('kills a qemu-img that ignores SIGTERM', async () => {
      const stubborn = fake(`trap '' TERM; while :; do sleep 0.1; done`);
      const ac = new AbortController();
      const run = runQemuImg([], { what: 'w', command: stubborn, signal: ac.signal, onSpawn: (pid) => pids.push(pid), killGraceMs: 300 });
      // Abort only once the script ignores SIGTERM (bit 15 of its ignored-signals mask).
      const ignoresTerm = (): boolean => {
        const mask = /^SigIgn:\s*([0-9a-f]+)$/m.exec(readFileSync(`/proc/${pids[0]}/status`, 'utf8'))?.[1] ?? '0';
        return (BigInt(`0x${mask}`) & (1n << 14n)) !== 0n;
      };
      await vi.waitFor(() => expect(ignoresTerm()).toBe(true), { timeout: 5000, interval: 10 });
      const t0 = Date.now();
      ac.abort();
      expect((await rejection(run)).code).toBe('INTERRUPTED');
      expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
      expect(isProcessAlive(pids[0]!)).toBe(false);
    });

    it('does not start when already aborted', async () => {
      const ac = new AbortController();
      ac.abort();
      const spawned: number[] = [];
      const e = await rejection(runQemuImg([], { what: 'w', command: fake('exit 0'), signal: ac.signal, onSpawn: (p) => spawned.push(p) }));
      expect(e.code).toBe('INTERRUPTED');
      expect(spawned).toEqual([]);
    });
  });
});

describe('helpers run the qemu-img found on PATH', () => {
  const path = process.env.PATH;
  let bin: string;
  beforeAll(() => {
    bin = mkdtempSync(join(dir, 'bin-'));
    process.env.PATH = `${bin}:${path ?? ''}`;
  });
  afterAll(() => {
    process.env.PATH = path;
  });
  const install = (script: string): void => {
    writeFileSync(join(bin, 'qemu-img'), `#!/bin/sh\n${script}\n`);
    chmodSync(join(bin, 'qemu-img'), 0o755);
  };

  it('imageInfo parses the JSON', async () => {
    install(`echo '{"filename": "'"$3"'", "format": "qcow2", "virtual-size": 1048576, "actual-size": 200704, "backing-filename": "b.qcow2", "dirty-flag": false}'`);
    expect(await imageInfo('/d/a.qcow2')).toEqual({
      filename: '/d/a.qcow2',
      format: 'qcow2',
      virtualSize: 1048576,
      actualSize: 200704,
      backingFilename: 'b.qcow2',
      dirty: false,
      corrupt: false,
    });
  });

  it('checkImage reads the report of a check that found leaks (exit 3) or corruption (exit 2)', async () => {
    install(`echo '{"filename": "a", "check-errors": 0, "leaks": 4}'; exit 3`);
    expect(await checkImage('a')).toEqual({ filename: 'a', checkErrors: 0, corruptions: 0, leaks: 4, clean: false });
    install(`echo '{"filename": "a", "check-errors": 0, "corruptions": 1}'; exit 2`);
    expect((await checkImage('a')).corruptions).toBe(1);
    install(`echo "qemu-img: Could not open 'a': Failed to get shared \\"write\\" lock" >&2; exit 1`);
    expect((await rejection(checkImage('a'))).message).toBe(`qemu-img check a: Could not open 'a': Failed to get shared "write" lock`);
    install(`echo "qemu-img: a: unexpected" >&2; exit 2`);
    expect((await rejection(checkImage('a'))).message).toBe('qemu-img check a: a: unexpected');
  });

  it('commitImage runs with -p for progress, -q without, and reports its pid', async () => {
    install(`echo "$@" > ${join(bin, 'args')}; case "$2" in -p) printf '(50.00/100%%)\\r(100.00/100%%)\\r';; esac`);
    const seen: number[] = [];
    const pids: number[] = [];
    await commitImage('/d/top.qcow2', (f) => seen.push(f), (pid) => pids.push(pid));
    expect(seen.at(-1)).toBe(1);
    expect(pids).toHaveLength(1);
    expect(readFileSync(join(bin, 'args'), 'utf8').trim()).toBe('commit -p -d /d/top.qcow2');
    await commitImage('/d/top.qcow2');
    expect(readFileSync(join(bin, 'args'), 'utf8').trim()).toBe('commit -q -d /d/top.qcow2');
  });
});
