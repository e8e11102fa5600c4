import type { GuestFilesystemView, GuestFileType } from '../contract/files.js';
import { VmsnapError } from '../errors.js';
import type { Filesystem } from './guestfs.js';

/**
 * How paths name guest files (pure logic, unit-tested): each filesystem of a
 * point (a snapshot, or the present state) is named by its fstab mount point
 * when the guest's /etc/fstab says where it goes, else by its device as the
 * guest sees it; a path is that name followed by the path inside it.
 *
 * One appliance may hold several points: drive i of the session is
 * /dev/vd{a+i} there, and point k's drives start at its offset, so its guest
 * names are found by subtracting the offset.
 */

/** a, b, …, z, aa, ab, … (Linux's disk letters). */
export function letters(i: number): string {
  let s = '';
  for (let n = i + 1; n > 0; n = Math.floor((n - 1) / 26)) s = String.fromCharCode(97 + ((n - 1) % 26)) + s;
  return s;
}

export function indexOfLetters(s: string): number {
  let n = 0;
  for (const ch of s) n = n * 26 + (ch.charCodeAt(0) - 96);
  return n - 1;
}

const VD = /^(btrfsvol:)?\/dev\/vd([a-z]+)(.*)$/;

/** A session's device name (drive i = /dev/vd{letters(i)}) shifted by `delta` drives (negative: towards the point's own names). */
export function shiftDevice(device: string, delta: number): string {
  const m = VD.exec(device);
  if (!m) return device;
  return `${m[1] ?? ''}/dev/vd${letters(indexOfLetters(m[2]!) + delta)}${m[3]}`;
}

/** A filesystem of one point, named. */
export interface NamedFilesystem extends GuestFilesystemView {
  /** Its device in the session (what the helper is called with). */
  sessionDevice: string;
  point: number;
  /** Where it lies on its disk (partition or whole disk), when known: to tell whether a write touched it. */
  extent?: { start: number; length: number };
}

export interface PointLayout {
  /** The point's first drive in the session. */
  offset: number;
  /** Its disks, in the guest's order (drive offset + i is slots[i]). */
  slots: string[];
}

/**
 * Give each filesystem the session found its point and its name. Swap and
 * btrfs subvolumes the guest does not mount by fstab are left out (the top of
 * a btrfs filesystem shows its subvolumes as directories). A filesystem on no
 * drive (an LVM volume) belongs to the only point, or is `unplaced` when the
 * session holds several.
 */
export function nameFilesystems(
  found: Filesystem[],
  layouts: PointLayout[],
  ranges: { device: string; start: number; size: number }[],
): { points: NamedFilesystem[][]; unplaced: Filesystem[] } {
  const points: NamedFilesystem[][] = layouts.map(() => []);
  const unplaced: Filesystem[] = [];
  const extentOf = new Map(ranges.map((r) => [r.device, { start: r.start, length: r.size }]));
  for (const f of found) {
    if (f.type === 'swap') continue;
    if (f.subvolume !== undefined && !f.mountpoint) continue;
    let k = -1;
    if (f.drive !== undefined) k = layouts.findIndex((l) => f.drive! >= l.offset && f.drive! < l.offset + l.slots.length);
    else if (layouts.length === 1) k = 0;
    if (k < 0) {
      unplaced.push(f);
      continue;
    }
    const layout = layouts[k]!;
    const device = shiftDevice(f.device, -layout.offset);
    const extent = f.subvolume === undefined ? extentOf.get(f.device) : undefined;
    const named: NamedFilesystem = {
      name: device,
      device,
      slot: f.drive !== undefined ? (layout.slots[f.drive - layout.offset] ?? null) : null,
      type: f.type,
      sessionDevice: f.device,
      point: k,
      ...(f.label ? { label: f.label } : {}),
      ...(f.uuid ? { uuid: f.uuid } : {}),
      ...(f.size !== undefined ? { sizeBytes: f.size } : {}),
      ...(f.mountpoint ? { mountpoint: f.mountpoint } : {}),
      ...(extent ? { extent } : {}),
    };
    points[k]!.push(named);
  }
  for (const list of points) {
    // A mount point names one filesystem: a second one claiming it (two roots on one disk) keeps its device name.
    const taken = new Set<string>();
    for (const f of list.filter((x) => x.mountpoint).sort((a, b) => a.device.localeCompare(b.device))) {
      if (!taken.has(f.mountpoint!)) {
        f.name = f.mountpoint!;
        taken.add(f.name);
      }
    }
    list.sort((a, b) => a.name.localeCompare(b.name));
  }
  return { points, unplaced };
}

/**
 * A path as given by a user: absolute, '/'-separated, no '.' or '..' parts
 * (a path names one place, never a way out of a filesystem), no NUL.
 */
export function normalizePath(p: string, field = 'path'): string {
  if (typeof p !== 'string' || p === '') throw new VmsnapError('INVALID_ARGUMENT', `${field}: give a path, e.g. /etc/hostname`, { details: { field } });
  if (p.includes('\0')) throw new VmsnapError('INVALID_ARGUMENT', `${field}: a path cannot hold a NUL byte`, { details: { field } });
  if (!p.startsWith('/')) {
    throw new VmsnapError('INVALID_ARGUMENT', `${field}: '${p}' is not absolute: paths start with / (a mount point like /etc/hostname, or a device like /dev/vda/notes.txt)`, {
      details: { field, path: p },
    });
  }
  const parts = p.split('/').filter((x) => x !== '');
  if (parts.some((x) => x === '.' || x === '..')) {
    throw new VmsnapError('INVALID_ARGUMENT', `${field}: '${p}' has a '.' or '..' part: give the path itself`, { details: { field, path: p } });
  }
  return `/${parts.join('/')}`;
}

/** The filesystem a path is on, and the path inside it; undefined when none holds it. */
export function resolvePath<F extends { name: string }>(fss: F[], path: string): { fs: F; inner: string } | undefined {
  const within = (name: string): boolean => name === '/' || path === name || path.startsWith(`${name}/`);
  // Device names (/dev/vdb/…) first: they are not places in a guest tree.
  const byDevice = fss.filter((f) => f.name.startsWith('/dev/') && within(f.name)).sort((a, b) => b.name.length - a.name.length)[0];
  const fs = byDevice ?? fss.filter((f) => !f.name.startsWith('/dev/') && within(f.name)).sort((a, b) => b.name.length - a.name.length)[0];
  if (!fs) return undefined;
  const inner = fs.name === '/' ? path : path.slice(fs.name.length);
  return { fs, inner: inner === '' ? '/' : inner };
}

/** The path of `inner` (a path inside a filesystem) in the namespace. */
export function joinPath(fsName: string, inner: string): string {
  if (fsName === '/') return inner;
  return inner === '/' || inner === '' ? fsName : `${fsName}${inner.startsWith('/') ? '' : '/'}${inner}`;
}

export function parentOf(path: string): string {
  const i = path.lastIndexOf('/');
  return i <= 0 ? '/' : path.slice(0, i);
}

export function baseName(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

const TYPE_CHAR: Record<GuestFileType, string> = {
  file: '-',
  hardlink: '-',
  dir: 'd',
  symlink: 'l',
  chardev: 'c',
  blockdev: 'b',
  fifo: 'p',
  socket: 's',
  unknown: '?',
};

/** ls -l's mode column: drwxr-xr-x, -rwsr-xr-x, drwxrwxrwt. */
export function modeText(type: GuestFileType, mode: number): string {
  const rwx = (bits: number, special: boolean, s: string): string =>
    `${bits & 4 ? 'r' : '-'}${bits & 2 ? 'w' : '-'}${special ? (bits & 1 ? s : s.toUpperCase()) : bits & 1 ? 'x' : '-'}`;
  return (
    TYPE_CHAR[type] +
    rwx((mode >> 6) & 7, (mode & 0o4000) !== 0, 's') +
    rwx((mode >> 3) & 7, (mode & 0o2000) !== 0, 's') +
    rwx(mode & 7, (mode & 0o1000) !== 0, 't')
  );
}

/**
 * A glob over paths: `*` and `?` stay within a path part, `**` crosses parts,
 * `[…]` is a class. A glob without '/' matches a file's name anywhere
 * (`*.conf`); one with '/' but not starting with it matches at any depth
 * (`nginx/*.conf`); one starting with '/' is anchored (`/etc/**\/*.conf`).
 * `base` is the deepest directory the glob fixes, where a search can start.
 */
export function compileGlob(glob: string): { test: (path: string) => boolean; base: string } {
  if (glob === '' || glob.includes('\0')) throw new VmsnapError('INVALID_ARGUMENT', 'glob: give a pattern, e.g. *.conf or /etc/**/hosts', { details: { field: 'glob' } });
  const anchored = glob.startsWith('/');
  const nameOnly = !glob.includes('/');
  const full = anchored ? glob : `/**/${glob}`;
  const parts = full.split('/').filter((x) => x !== '');
  if (parts.some((x) => x === '.' || x === '..')) throw new VmsnapError('INVALID_ARGUMENT', `glob: '${glob}' has a '.' or '..' part`, { details: { field: 'glob' } });
  let re = '^';
  parts.forEach((part, i) => {
    const last = i === parts.length - 1;
    if (part === '**') {
      re += last ? '(?:/.*)?' : '(?:/[^/]+)*';
      return;
    }
    re += '/';
    for (let j = 0; j < part.length; j++) {
      const c = part[j]!;
      if (c === '*') re += part[j + 1] === '*' ? ((j += 1), '.*') : '[^/]*';
      else if (c === '?') re += '[^/]';
      else if (c === '[') {
        const end = part.indexOf(']', j + 2);
        if (end === -1) re += '\\[';
        else {
          let cls = part.slice(j + 1, end);
          if (cls.startsWith('!')) cls = `^${cls.slice(1)}`;
          re += `[${cls.replace(/\\/g, '\\\\')}]`;
          j = end;
        }
      } else re += c.replace(/[.+^${}()|\\]/g, '\\$&');
    }
  });
  re += '$';
  const rx = new RegExp(re, 's');
  const fixed: string[] = [];
  if (anchored) for (const p of parts.slice(0, -1)) if (/[*?[]/.test(p)) break; else fixed.push(p);
  return { test: (path) => rx.test(path), base: nameOnly || !anchored ? '/' : `/${fixed.join('/')}` };
}
