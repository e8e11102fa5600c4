/**
 * The libguestfs reading layer against real images, in real appliances (TCG).
 * Images are made with host tools that never mount anything (sfdisk, mkfs -d,
 * mtools, mkfs.btrfs --rootdir, qemu-img); everything else is written from inside
 * an appliance. Three appliance boots in all: a writable session that prepares
 * the overlay/XFS/btrfs/LVM drives, one read-only session shared by the reading
 * tests, and a child process killed with -9 mid-call.
 *
 *   VMSNAP_SKIP_IMAGE=1 npx vitest run test/guestfs.test.ts
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmsnapError } from '../src/errors.js';
import { type Filesystem, GuestFs, type GuestFsDrive } from '../src/files/guestfs.js';
import { scanTar } from '../src/files/tar-scan.js';
import { isProcessAlive } from '../src/util/process.js';

const HAVE_LIBGUESTFS =
  existsSync('/usr/lib/python3/dist-packages/guestfs.py') &&
  (() => {
    try {
      return readdirSync('/boot').some((f) => f.startsWith('vmlinuz'));
    } catch {
      return false;
    }
  })();
const HAVE_TOOLS = ['sfdisk', 'mkfs.fat', 'mcopy', 'mkfs.xfs', 'mkfs.btrfs', 'qemu-img'].every((t) => {
  try {
    execFileSync('sh', ['-c', `command -v ${t}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
});

const SECTOR = 512;
const T1 = new Date('2021-03-04T05:06:07Z');
const T2 = new Date('2022-01-02T03:04:05Z');
const T3 = new Date('2023-06-07T08:09:10Z');
const LATIN1_NAME = Buffer.concat([Buffer.from('caf'), Buffer.from([0xe9]), Buffer.from('-latin1.txt')]);

const run = (cmd: string, args: string[], input?: string): void => {
  execFileSync(cmd, args, { stdio: ['pipe', 'ignore', 'pipe'], ...(input === undefined ? {} : { input }) });
};
const sha256 = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');
const fileSha = (p: string): string => sha256(readFileSync(p));

function write(path: string, content: string | Buffer, mode = 0o644, mtime = T1): void {
  mkdirSync(join(path, '..'), { recursive: true });
  writeFileSync(path, content);
  chmodSync(path, mode);
  utimesSync(path, mtime, mtime);
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return e instanceof VmsnapError ? e.code : `not a VmsnapError: ${String(e)}`;
  }
  return 'resolved';
}

interface Images {
  dir: string;
  os: string;
  gpt: string;
  base: string;
  overlay: string;
  blank: string;
  xfs: string;
  xfsOverlay: string;
  btrfs: string;
  lvm: string;
  rootUuid: string;
  gptSrc: string;
}

/** Every image, with host tools that never mount anything. */
function makeImages(dir: string): Images {
  const src = join(dir, 'src');
  // GPT disk: p1 vfat (mkfs.fat --offset + mtools), p2 ext4 (mkfs.ext4 -d -E offset)
  const gptSrc = join(src, 'gpt-data');
  write(join(gptSrc, 'hello.txt'), 'hello from ext4\n', 0o640, T1);
  write(join(gptSrc, 'dir', 'a.txt'), 'a\n');
  write(join(gptSrc, 'dir', 'b.txt'), 'bb\n', 0o600);
  write(join(gptSrc, 'dir', 'sub', 'c.txt'), 'ccc\n', 0o755);
  for (let i = 0; i < 50; i++) write(join(gptSrc, 'many', `m${i}.txt`), `many ${i}\n`.repeat(i + 1));
  write(join(gptSrc, 'big.bin'), randomBytes(3 * 1024 * 1024 + 123));
  write(join(gptSrc, 'café.txt'), 'utf-8 name\n');
  writeFileSync(Buffer.concat([Buffer.from(gptSrc + '/'), LATIN1_NAME]), 'latin-1 name\n');
  symlinkSync('hello.txt', join(gptSrc, 'link'));
  const gpt = join(dir, 'gpt.raw');
  run('truncate', ['-s', '64M', gpt]);
  run('sfdisk', ['-q', gpt], 'label: gpt\nstart=2048, size=32768, type=U, name="esp"\nstart=34816, size=81920, type=L, name="data"\n');
  run('mkfs.fat', ['--offset', '2048', '-n', 'ESP', gpt, String(32768 / 2)]);
  const esp = `${gpt}@@${2048 * SECTOR}`;
  run('mmd', ['-i', esp, '::/EFI', '::/EFI/BOOT']);
  write(join(src, 'esp-hello.txt'), 'hello from vfat\n');
  run('mcopy', ['-m', '-i', esp, join(src, 'esp-hello.txt'), '::/EFI/BOOT/hello.txt']);
  run('mkfs.ext4', ['-q', '-F', '-L', 'data', '-d', gptSrc, '-E', `offset=${34816 * SECTOR}`, gpt, '40M']);

  // An OS disk (qcow2): p1 root ext4 with /etc/fstab, p2 vfat BOOT, p3 ext4 /srv (named /dev/vda3 in fstab)
  const rootUuid = randomUUID();
  const rootSrc = join(src, 'os-root');
  write(
    join(rootSrc, 'etc', 'fstab'),
    `# made by the vmsnap guestfs test\nUUID=${rootUuid} / ext4 errors=remount-ro 0 1\nLABEL=BOOT /boot vfat umask=0077 0 1\n/dev/vda3 /srv ext4 defaults 0 2\n/swapfile none swap sw 0 0\nproc /proc proc defaults 0 0\n`,
  );
  write(join(rootSrc, 'etc', 'hostname'), 'testguest\n');
  mkdirSync(join(rootSrc, 'boot'));
  mkdirSync(join(rootSrc, 'srv'));
  const srvSrc = join(src, 'os-srv');
  write(join(srvSrc, 'www', 'index.html'), '<h1>srv</h1>\n');
  const osRaw = join(dir, 'os.raw');
  run('truncate', ['-s', '96M', osRaw]);
  run('sfdisk', ['-q', osRaw], 'label: gpt\nstart=2048, size=81920, type=L\nstart=83968, size=32768, type=U\nstart=116736, size=49152, type=L\n');
  run('mkfs.ext4', ['-q', '-F', '-L', 'root', '-U', rootUuid, '-d', rootSrc, '-E', `offset=${2048 * SECTOR}`, osRaw, '40M']);
  run('mkfs.fat', ['--offset', '83968', '-n', 'BOOT', osRaw, String(32768 / 2)]);
  write(join(src, 'loader.conf'), 'timeout 3\n');
  run('mcopy', ['-m', '-i', `${osRaw}@@${83968 * SECTOR}`, join(src, 'loader.conf'), '::/loader.conf']);
  run('mkfs.ext4', ['-q', '-F', '-L', 'srv', '-d', srvSrc, '-E', `offset=${116736 * SECTOR}`, osRaw, '24M']);
  const os = join(dir, 'os.qcow2');
  run('qemu-img', ['convert', '-O', 'qcow2', osRaw, os]);
  rmSync(osRaw);

  // The demo guest's data disk: ext2 on the whole disk (busybox mke2fs -m 0 -L vda), no partition table
  const baseSrc = join(src, 'base');
  write(join(baseSrc, 'note.txt'), 'v1\n', 0o644, T1);
  write(join(baseSrc, 'keep.txt'), 'same\n', 0o644, T1);
  const baseRaw = join(dir, 'base.raw');
  run('truncate', ['-s', '32M', baseRaw]);
  run('mke2fs', ['-q', '-F', '-t', 'ext2', '-m', '0', '-L', 'vda', '-d', baseSrc, baseRaw]);
  const base = join(dir, 'base.qcow2');
  run('qemu-img', ['convert', '-O', 'qcow2', baseRaw, base]);
  rmSync(baseRaw);
  const overlay = join(dir, 'overlay.qcow2');
  run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', overlay]);

  const blank = join(dir, 'blank.qcow2');
  run('qemu-img', ['create', '-q', '-f', 'qcow2', blank, '16M']);

  const xfs = join(dir, 'xfs.raw');
  run('truncate', ['-s', '300M', xfs]);
  run('mkfs.xfs', ['-q', '-f', '-L', 'xfsdata', xfs]);

  const btrfsSrc = join(src, 'btrfs');
  write(join(btrfsSrc, 'b.txt'), 'btrfs file\n', 0o644, T2);
  const btrfs = join(dir, 'btrfs.raw');
  run('truncate', ['-s', '128M', btrfs]);
  run('mkfs.btrfs', ['-q', '-f', '-L', 'btr', '--rootdir', btrfsSrc, btrfs]);

  const lvm = join(dir, 'lvm.raw');
  run('truncate', ['-s', '64M', lvm]);
  return { dir, os, gpt, base, overlay, blank, xfs, xfsOverlay: join(dir, 'xfs-overlay.qcow2'), btrfs, lvm, rootUuid, gptSrc };
}

const describeAppliance = describe.skipIf(!HAVE_LIBGUESTFS || !HAVE_TOOLS);
let img: Images;
const workDir = mkdtempSync(join(tmpdir(), 'vmsnap-gfs-test-'));
const progress: string[] = [];

beforeAll(() => {
  if (HAVE_LIBGUESTFS && HAVE_TOOLS) img = makeImages(workDir);
});
afterAll(() => {
  if (process.env.VMSNAP_KEEP_TEST_DIR === '1') console.log(`kept ${workDir}`);
  else rmSync(workDir, { recursive: true, force: true });
});

describeAppliance('writing into writable drives (a stopped VM\'s active layer)', () => {
  let g: GuestFs;
  let baseHash: string;
  beforeAll(async () => {
    baseHash = fileSha(img.base);
    g = await GuestFs.open(
      [
        { path: img.overlay, format: 'qcow2', readonly: false },
        { path: img.xfs, format: 'raw', readonly: false },
        { path: img.btrfs, format: 'raw', readonly: false },
        { path: img.lvm, format: 'raw', readonly: false },
        { path: img.base, format: 'qcow2', readonly: true }, // the overlay's own backing file, read-only beside it
      ],
      { allowRaw: true, onProgress: (p) => progress.push(p.phase) },
    );
  }, 300_000);
  afterAll(async () => {
    await g?.close();
  });

  it('reports its launch', () => {
    expect(progress).toEqual(expect.arrayContaining(['starting', 'launching', 'ready']));
    expect(g.info?.devices).toEqual(['/dev/vda', '/dev/vdb', '/dev/vdc', '/dev/vdd', '/dev/vde']);
  });

  it('uploads a file with mode and mtime, unpacks a tar stream, copies inside the appliance', async () => {
    await g.mount('/dev/vda', '/ov', { readonly: false });
    const st = await g.upload(Readable.from([Buffer.from('v2\n')]), '/ov/note.txt', { mode: 0o600, mtime: T2 });
    expect(st.mode).toBe(0o600);
    expect(st.mtime.getTime()).toBe(T2.getTime());
    const tarSrc = join(workDir, 'src', 'tarin');
    write(join(tarSrc, 'added', 'one.txt'), 'one\n', 0o755, T3);
    const tar = spawn('tar', ['-C', tarSrc, '--numeric-owner', '-cf', '-', 'added'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let tarErr = '';
    tar.stderr.on('data', (d: Buffer) => (tarErr += d.toString()));
    await g.tarIn(tar.stdout, '/ov').catch((e: unknown) => {
      throw new Error(`${String(e)}; tar said: ${tarErr}`);
    });
    await g.mkdir('/ov/made/deep');
    const copied = await g.copy('/ov/keep.txt', '/ov/made/deep/keep-copy.txt');
    expect(copied.mtime.getTime()).toBe(T1.getTime()); // cp -a keeps it
    const hostFile = join(workDir, 'host-upload.txt');
    write(hostFile, 'from a host file\n');
    await g.upload(hostFile, '/ov/made/from-host.txt', { uid: 1000, gid: 1000 });
    expect((await g.stat('/ov/made/from-host.txt')).uid).toBe(1000);
  });

  it('restores a file from a snapshot (read-only drive) into the active layer (writable drive) inside one appliance', async () => {
    await g.mount('/dev/vde', '/snap'); // same ext2 UUID as /ov: both mount
    const restored = await g.copy('/snap/keep.txt', '/ov/restored.txt');
    expect(restored.mtime.getTime()).toBe(T1.getTime());
    expect(await codeOf(g.mount('/dev/vde', '/snap-rw', { readonly: false }))).toBe('INVALID_ARGUMENT');
    await g.umount('/snap');
  });

  it('writes XFS, a btrfs subvolume and an LVM volume', async () => {
    await g.mount('/dev/vdb', '/x', { readonly: false });
    await g.upload(Readable.from([Buffer.from('xfs file\n')]), '/x/x.txt', { mtime: T3 });
    await g.mount('/dev/vdc', '/btr', { readonly: false });
    await g.rawCall('btrfs_subvolume_create', ['/btr/@home']);
    await g.upload(Readable.from([Buffer.from('in a subvolume\n')]), '/btr/@home/h.txt');
    await g.rawCall('pvcreate', ['/dev/vdd']);
    await g.rawCall('vgcreate', ['vmsnapvg', ['/dev/vdd']]);
    await g.rawCall('lvcreate', ['data', 'vmsnapvg', 32]);
    await g.rawCall('mkfs', ['ext4', '/dev/vmsnapvg/data']);
    await g.mount('/dev/vmsnapvg/data', '/lvm', { readonly: false });
    await g.upload(Readable.from([Buffer.from('on a logical volume\n')]), '/lvm/lv.txt');
    await g.sync();
  });

  it('refuses to write where it must not', async () => {
    expect(await codeOf(g.upload(Readable.from([Buffer.from('x')]), '/nowhere/x'))).toBe('INVALID_ARGUMENT');
  });

  it('closes cleanly; the writes are in the overlay, the backing file is untouched', async () => {
    await g.close();
    expect(g.closed).toBe(true);
    expect(fileSha(img.base)).toBe(baseHash);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', img.xfs, '-F', 'raw', img.xfsOverlay]);
  });
});

describeAppliance('reading (one read-only appliance for every image)', () => {
  let g: GuestFs;
  let fss: Filesystem[];
  const hashesBefore = new Map<string, string>();
  const fs = (device: string): Filesystem | undefined => fss.find((f) => f.device === device);

  beforeAll(async () => {
    const drives: GuestFsDrive[] = [
      { path: img.os, format: 'qcow2', readonly: true, label: 'os' }, // vda: the guest's first disk
      { path: img.gpt, format: 'raw', readonly: true }, // vdb
      { path: img.base, format: 'qcow2', readonly: true }, // vdc
      { path: img.overlay, format: 'qcow2', readonly: true }, // vdd
      { path: img.blank, format: 'qcow2', readonly: true }, // vde
      { path: img.xfs, format: 'raw', readonly: true }, // vdf
      { path: img.xfsOverlay, format: 'qcow2', readonly: true }, // vdg (same XFS UUID as vdf)
      { path: img.btrfs, format: 'raw', readonly: true }, // vdh
      { path: img.lvm, format: 'raw', readonly: true }, // vdi
    ];
    for (const d of drives) hashesBefore.set(d.path, fileSha(d.path));
    g = await GuestFs.open(drives, { timeoutMs: 180_000 });
    fss = await g.filesystems();
  }, 300_000);
  afterAll(async () => {
    if (g && !g.closed) await g.close();
  });

  it('finds every filesystem by itself, with guest device names, labels, UUIDs and fstab mount points', (ctx) => {
    ctx.onTestFailed(() => console.log(JSON.stringify(fss, null, 1)));
    expect(fs('/dev/vda1')).toMatchObject({ type: 'ext4', label: 'root', uuid: img.rootUuid, mountpoint: '/', drive: 0 });
    expect(fs('/dev/vda2')).toMatchObject({ type: 'vfat', label: 'BOOT', mountpoint: '/boot' });
    expect(fs('/dev/vda3')).toMatchObject({ type: 'ext4', label: 'srv', mountpoint: '/srv' });
    expect(fs('/dev/vdb1')).toMatchObject({ type: 'vfat', label: 'ESP', drive: 1 });
    expect(fs('/dev/vdb2')).toMatchObject({ type: 'ext4', label: 'data' });
    expect(fs('/dev/vdb2')?.mountpoint).toBeUndefined();
    expect(fs('/dev/vdc')).toMatchObject({ type: 'ext2', label: 'vda' }); // whole disk, like the demo guest
    expect(fs('/dev/vdd')).toMatchObject({ type: 'ext2', label: 'vda' });
    expect(fs('/dev/vde')).toBeUndefined(); // blank
    expect(fs('/dev/vdf')).toMatchObject({ type: 'xfs', label: 'xfsdata' });
    expect(fs('/dev/vdg')?.uuid).toBe(fs('/dev/vdf')?.uuid);
    expect(fs('/dev/vdh')).toMatchObject({ type: 'btrfs', label: 'btr' });
    expect(fs('btrfsvol:/dev/vdh/@home')).toMatchObject({ type: 'btrfs', subvolume: '@home' });
    expect(fs('/dev/vmsnapvg/data')).toMatchObject({ type: 'ext4' });
    expect(fs('/dev/vmsnapvg/data')?.drive).toBeUndefined();
    expect(fs('/dev/vda1')?.size).toBe(40 * 1024 * 1024);
  });

  it('mounts filesystems side by side and lists a directory with modes, mtimes, owners and link targets', async () => {
    await g.mount('/dev/vdb2', '/gpt');
    await g.mount('/dev/vdb1', '/esp');
    const ents = await g.list('/gpt');
    const by = new Map(ents.map((e) => [e.name, e]));
    expect(by.get('hello.txt')).toMatchObject({ type: 'file', size: 16, mode: 0o640, uid: 0, gid: 0 });
    expect(by.get('hello.txt')?.mtime.getTime()).toBe(T1.getTime());
    expect(by.get('dir')?.type).toBe('dir');
    expect(by.get('link')).toMatchObject({ type: 'symlink', linkTarget: 'hello.txt' });
    expect(by.get('café.txt')?.type).toBe('file');
    const odd = ents.find((e) => e.rawName !== undefined);
    expect(odd && Buffer.from(odd.rawName ?? '', 'base64').equals(LATIN1_NAME)).toBe(true);
    expect(odd?.undecodable).toBe(true);
    expect((await g.list('/esp/EFI/BOOT')).map((e) => e.name)).toEqual(['hello.txt']);
    expect(await g.mounts()).toEqual([
      { device: '/dev/vdb2', mountpoint: '/gpt', readonly: true },
      { device: '/dev/vdb1', mountpoint: '/esp', readonly: true },
    ]);
  });

  it('maps errors to codes: missing path, not a directory, blank disk, unknown device, rw on a read-only drive', async () => {
    expect(await codeOf(g.stat('/gpt/nope'))).toBe('NOT_FOUND');
    expect(await codeOf(g.list('/gpt/nope'))).toBe('NOT_FOUND');
    expect(await codeOf(g.list('/gpt/hello.txt'))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(g.download('/gpt/dir', join(workDir, 'x')))).toBe('INVALID_ARGUMENT');
    const blank = await g.mount('/dev/vde', '/blank').catch((e: unknown) => e);
    expect(blank).toBeInstanceOf(VmsnapError);
    expect((blank as VmsnapError).code).toBe('INVALID_ARGUMENT');
    expect((blank as VmsnapError).message).toMatch(/no filesystem.*\/dev\/vde/);
    expect(await codeOf(g.mount('/dev/vdz', '/z'))).toBe('NOT_FOUND');
    expect(await codeOf(g.mount('/dev/vdb2', '/rw', { readonly: false }))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(g.upload(Readable.from([Buffer.from('x')]), '/gpt/new.txt'))).toBe('INVALID_ARGUMENT');
    // the session survives its errors
    expect((await g.stat('/gpt/hello.txt')).size).toBe(16);
  });

  it('reads files: to a host file with mode and mtime, to a stream, into memory', async () => {
    const out = join(workDir, 'hello.out');
    const st = await g.download('/gpt/hello.txt', out);
    expect(readFileSync(out, 'utf8')).toBe('hello from ext4\n');
    expect(statSync(out).mode & 0o7777).toBe(0o640);
    expect(statSync(out).mtime.getTime()).toBe(T1.getTime());
    expect(st.size).toBe(16);
    const big = join(workDir, 'big.out');
    await g.download('/gpt/big.bin', big); // over 1 MiB: the transfer path
    expect(fileSha(big)).toBe(fileSha(join(img.gptSrc, 'big.bin')));
    const chunks: Buffer[] = [];
    const sink = new Writable({
      write: (c: Buffer, _e, cb) => {
        chunks.push(c);
        cb();
      },
    });
    await g.downloadTo('/gpt/big.bin', sink);
    expect(sha256(Buffer.concat(chunks))).toBe(fileSha(big));
    expect((await g.readFile('/gpt/link')).toString()).toBe('hello from ext4\n'); // follows the link in the guest tree
    expect(sha256(await g.readFile('/gpt/big.bin'))).toBe(fileSha(big));
    const { stream, done } = g.readStream('/gpt/dir/a.txt');
    const parts: Buffer[] = [];
    for await (const c of stream) parts.push(c as Buffer);
    await done;
    expect(Buffer.concat(parts).toString()).toBe('a\n');
  });

  it('finds a tree with stats, checksums it in the appliance and by tar-out on the host', async () => {
    const found = await g.find('/gpt/dir');
    expect(found.map((e) => e.path).sort()).toEqual(['a.txt', 'b.txt', 'sub', 'sub/c.txt']);
    expect(found.find((e) => e.path === 'sub/c.txt')).toMatchObject({ type: 'file', mode: 0o755, size: 4 });
    const names = await g.find('/gpt', { stat: false });
    expect(names.some((e) => e.undecodable && Buffer.from(e.rawPath ?? '', 'base64').equals(LATIN1_NAME))).toBe(true);
    const [one] = await g.checksum(['/gpt/many/m3.txt']);
    expect(one?.checksum).toBe(fileSha(join(img.gptSrc, 'many', 'm3.txt')));
    const tree = await g.checksumTree('/gpt/many');
    expect(tree).toHaveLength(50);
    for (const t of tree) expect(t.checksum).toBe(fileSha(join(img.gptSrc, 'many', t.path)));
    const scanned = await g.scan('/gpt', { hash: true });
    const byPath = new Map(scanned.map((e) => [e.path, e]));
    expect(byPath.get('')?.type).toBe('dir');
    expect(byPath.get('dir/sub/c.txt')).toMatchObject({ type: 'file', size: 4, mode: 0o755, uid: 0 });
    expect(byPath.get('hello.txt')?.mtime.getTime()).toBe(T1.getTime());
    expect(byPath.get('link')).toMatchObject({ type: 'symlink', linkTarget: 'hello.txt' });
    for (let i = 0; i < 50; i++) expect(byPath.get(`many/m${i}.txt`)?.sha256).toBe(fileSha(join(img.gptSrc, 'many', `m${i}.txt`)));
    const raw = scanned.find((e) => e.rawPath !== undefined);
    expect(raw && Buffer.from(raw.rawPath ?? '', 'base64').equals(LATIN1_NAME)).toBe(true);
  });

  it('tars a directory out to a host file keeping modes and mtimes', async () => {
    const tarPath = join(workDir, 'dir.tar');
    await g.tarOut('/gpt/dir', tarPath);
    const listing = execFileSync('tar', ['-tvf', tarPath, '--numeric-owner', '--full-time']).toString();
    expect(listing).toMatch(/-rwxr-xr-x 0\/0\s+4 \S+ \S+ \.\/sub\/c\.txt/);
    const entries: { path: string; mode: number }[] = [];
    const { createReadStream } = await import('node:fs');
    await scanTar(createReadStream(tarPath), (e) => entries.push({ path: e.path, mode: e.mode }));
    expect(entries.find((e) => e.path === 'b.txt')?.mode).toBe(0o600);
  });

  it('reads a qcow2 chain: the overlay shows what was written into it, the base does not', async () => {
    await g.mount('/dev/vdc', '/base'); // same ext2 UUID as the overlay: both mount
    await g.mount('/dev/vdd', '/ov');
    expect((await g.readFile('/base/note.txt')).toString()).toBe('v1\n');
    expect((await g.readFile('/ov/note.txt')).toString()).toBe('v2\n');
    const note = await g.stat('/ov/note.txt');
    expect(note.mode).toBe(0o600);
    expect(note.mtime.getTime()).toBe(T2.getTime());
    expect(await g.stat('/ov/added/one.txt')).toMatchObject({ mode: 0o755, size: 4 });
    expect((await g.stat('/ov/added/one.txt')).mtime.getTime()).toBe(T3.getTime());
    expect(await codeOf(g.stat('/base/added/one.txt'))).toBe('NOT_FOUND');
    expect((await g.readFile('/ov/made/deep/keep-copy.txt')).toString()).toBe('same\n');
    expect((await g.stat('/ov/made/from-host.txt')).uid).toBe(1000);
    expect((await g.readFile('/ov/restored.txt')).toString()).toBe('same\n');
    expect(fs('/dev/vdc')?.sharesUuid).toBe(true);
    expect(fs('/dev/vdb2')?.sharesUuid).toBeUndefined();
  });

  it('reads XFS (twice, same UUID), btrfs with a subvolume, and an LVM logical volume', async () => {
    await g.mount('/dev/vdf', '/xfs1');
    await g.mount('/dev/vdg', '/xfs2'); // needs nouuid: added by itself
    expect((await g.readFile('/xfs1/x.txt')).toString()).toBe('xfs file\n');
    expect((await g.readFile('/xfs2/x.txt')).toString()).toBe('xfs file\n');
    await g.mount('/dev/vdh', '/btr');
    expect((await g.readFile('/btr/b.txt')).toString()).toBe('btrfs file\n');
    expect((await g.readFile('/btr/@home/h.txt')).toString()).toBe('in a subvolume\n');
    await g.mount('btrfsvol:/dev/vdh/@home', '/home');
    expect((await g.list('/home')).map((e) => e.name)).toEqual(['h.txt']);
    await g.mount('/dev/vmsnapvg/data', '/lvm');
    expect((await g.readFile('/lvm/lv.txt')).toString()).toBe('on a logical volume\n');
  });

  it("mounts a guest's tree as its fstab says (root, then /boot and /srv)", async () => {
    await g.umountAll();
    expect(await g.mounts()).toEqual([]);
    const order = fss.filter((f) => f.drive === 0 && f.mountpoint).sort((a, b) => (a.mountpoint ?? '').length - (b.mountpoint ?? '').length);
    for (const f of order) await g.mount(f.device, f.mountpoint);
    expect((await g.readFile('/etc/hostname')).toString()).toBe('testguest\n');
    expect((await g.list('/boot')).map((e) => e.name)).toContain('loader.conf');
    expect((await g.readFile('/srv/www/index.html')).toString()).toBe('<h1>srv</h1>\n');
  });

  it('never wrote to a read-only drive', async () => {
    await g.umountAll();
    for (const [path, h] of hashesBefore) expect(fileSha(path), path).toBe(h);
  });

  it('when the helper is killed, calls fail with QEMU_FAILED and the appliance is gone', async () => {
    const { helper, qemu } = g.pids;
    expect(helper && qemu && isProcessAlive(qemu)).toBeTruthy();
    process.kill(helper ?? 0, 'SIGKILL');
    expect(await codeOf(g.stat('/etc/hostname'))).toBe('QEMU_FAILED');
    await waitDead(qemu ?? 0, 10_000);
    expect(isProcessAlive(qemu ?? 0)).toBe(false);
  });
});


async function waitDead(pid: number, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (isProcessAlive(pid) && Date.now() < end) await new Promise((r) => setTimeout(r, 200));
}

describeAppliance('no orphan appliance', () => {
  it('kill -9 of the Node process in the middle of a call takes the helper and its appliance down', async () => {
    const script = join(workDir, 'child.mts');
    const mod = pathToFileURL(fileURLToPath(new URL('../src/files/guestfs.ts', import.meta.url))).href;
    writeFileSync(
      script,
      `import { GuestFs } from ${JSON.stringify(mod)};
const g = await GuestFs.open([{ path: ${JSON.stringify(img.gpt)}, format: 'raw', readonly: true }]);
await g.mount('/dev/vda2');
console.log(JSON.stringify(g.pids));
await g.checksumTree('/');
setInterval(() => {}, 1000);
`,
    );
    const repo = fileURLToPath(new URL('..', import.meta.url));
    const child = spawn(process.execPath, ['--import', 'tsx', script], { cwd: repo, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const pids = await new Promise<{ helper: number; qemu: number }>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        const line = out.split('\n').find((l) => l.startsWith('{'));
        if (line) resolve(JSON.parse(line) as { helper: number; qemu: number });
      });
      child.on('exit', () => reject(new Error(`the child exited: ${err}`)));
    });
    await new Promise((r) => setTimeout(r, 300)); // into checksumTree
    expect(isProcessAlive(pids.helper) && isProcessAlive(pids.qemu)).toBe(true);
    child.kill('SIGKILL');
    await waitDead(pids.qemu, 15_000);
    await waitDead(pids.helper, 5_000);
    expect(isProcessAlive(pids.qemu)).toBe(false);
    expect(isProcessAlive(pids.helper)).toBe(false);
  }, 300_000);
});
