#!/usr/bin/python3
# vmsnap's libguestfs helper: one libguestfs handle (one appliance VM) per process,
# driven by JSON lines on stdin; answers and events are JSON lines on stdout.
# It is started by src/files/guestfs.ts; see src/files/README.md for the design.
#
#   request:  {"id": 1, "op": "mount", "args": {...}}
#   answer:   {"id": 1, "ok": true, "result": ...}
#             {"id": 1, "ok": false, "error": {"kind": "...", "errno": "ENOENT", "message": "..."}}
#   event:    {"event": "hello" | "progress" | "fifo" | "log", ...}
#
# Guest bytes are only ever parsed inside the appliance (a separate VM): nothing
# here mounts anything on the host. Names that are not UTF-8 are passed as
# base64 in "rawName"/"rawPath" (the Python binding cannot pass them back in).
#
# Lifetime: the helper dies with its parent. stdin EOF while idle closes the
# handle cleanly; stdin EOF while a call runs (the parent died or gave up) kills
# the appliance at once. PR_SET_PDEATHSIG delivers SIGTERM when the parent dies.

import base64
import ctypes
import errno as errnomod
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import stat as statmod
import sys
import threading
import time

PROTOCOL = 1

_out_lock = threading.Lock()


def send(obj):
    line = json.dumps(obj, separators=(',', ':'), ensure_ascii=True) + '\n'
    with _out_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


def fatal(kind, message):
    send({'event': 'fatal', 'kind': kind, 'message': message})
    sys.exit(2)


try:
    import guestfs  # noqa: E402  (python3-guestfs, Debian)
except Exception as e:  # pragma: no cover - depends on the host
    fatal('missing-guestfs', 'cannot import the libguestfs Python binding (python3-guestfs): %s' % e)

# --- lifetime -----------------------------------------------------------------

STATE = {'busy': False, 'closing': False, 'qemu_pid': None, 'session_dir': os.environ.get('VMSNAP_GUESTFS_SESSION_DIR')}
_state_lock = threading.Lock()


def die_now(reason):
    """Kill the appliance and exit, without touching the (possibly busy) handle."""
    pid = STATE['qemu_pid']
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)  # reap it: some containers' init never reaps orphans
        except OSError:
            pass
    sd = STATE['session_dir']
    if sd:
        shutil.rmtree(sd, ignore_errors=True)
    try:
        sys.stderr.write('vmsnap-guestfs-helper: %s; appliance killed\n' % reason)
        sys.stderr.flush()
    except Exception:
        pass
    os._exit(3)


def set_pdeathsig():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:
        pass
    parent = os.environ.get('VMSNAP_GUESTFS_PARENT_PID')
    if parent and str(os.getppid()) != parent:
        die_now('the parent died before the helper started')


def on_sigterm(signum, _frame):
    die_now('signal %d' % signum)


set_pdeathsig()
signal.signal(signal.SIGTERM, on_sigterm)
signal.signal(signal.SIGHUP, on_sigterm)

requests = queue.Queue()


def reader():
    for line in sys.stdin.buffer:
        requests.put(line)
    # EOF: the parent closed stdin or died.
    with _state_lock:
        busy, closing = STATE['busy'], STATE['closing']
    if busy and not closing:
        die_now('stdin closed while a call was running')
    requests.put(None)


# --- device names ---------------------------------------------------------------
# The appliance sees drive i as /dev/sdX; the guest (virtio-blk, in config order)
# sees it as /dev/vdX. The API speaks guest names.

def letters(i):
    s = ''
    i += 1
    while i > 0:
        i -= 1
        s = chr(97 + i % 26) + s
        i //= 26
    return s


def index_of_letters(s):
    n = 0
    for ch in s:
        n = n * 26 + (ord(ch) - 96)
    return n - 1


class Names:
    def __init__(self, appliance_disks, guest_prefix):
        self.a2g = {}
        self.g2a = {}
        for i, d in enumerate(appliance_disks):
            gname = '/dev/%s%s' % (guest_prefix, letters(i))
            self.a2g[d] = gname
            self.g2a[gname] = d
        self.guest_prefix = guest_prefix

    @staticmethod
    def _swap(name, table):
        prefix = ''
        if name.startswith('btrfsvol:'):
            prefix, name = 'btrfsvol:', name[len('btrfsvol:'):]
        for src, dst in table.items():
            if name.startswith(src) and re.match(r'^\d*(/.*)?$', name[len(src):]):
                return prefix + dst + name[len(src):]
        return prefix + name

    def to_guest(self, name):
        return self._swap(name, self.a2g)

    def to_appliance(self, name):
        return self._swap(name, self.g2a)

    def drive_index(self, appliance_name):
        n = appliance_name[len('btrfsvol:'):] if appliance_name.startswith('btrfsvol:') else appliance_name
        for i, d in enumerate(self.a2g):
            if n.startswith(d) and re.match(r'^\d*(/.*)?$', n[len(d):]):
                return i
        return None


# --- the handle -----------------------------------------------------------------

g = None
names = None
drives = []           # launch args, per index
mounts = []           # [{'device': appliance name, 'mountpoint': str, 'ro': bool, 'scratch'?: True}]
fs_cache = None
tmp_counter = [0]
SCRATCH_BYTES = 16 * 1024 * 1024
SCRATCH = {'dev': None, 'formatted': False}


class OpError(Exception):
    def __init__(self, kind, message, err=None):
        Exception.__init__(self, message)
        self.kind = kind
        self.err = err


def tmpfile(tag):
    tmp_counter[0] += 1
    base = STATE['session_dir'] or os.environ.get('TMPDIR') or '/tmp'
    return os.path.join(base, 'h%d-%s' % (tmp_counter[0], tag))


def on_progress(event, event_handle, buf, array):
    # array = [proc_nr, serial, position, total]
    if len(array) >= 4:
        send({'event': 'progress', 'position': array[2], 'total': array[3]})


def need_handle():
    if g is None:
        raise OpError('invalid', 'the appliance is not launched')


def op_launch(a):
    global g, names, drives, fs_cache
    if g is not None:
        raise OpError('invalid', 'already launched')
    drives = a['drives']
    g = guestfs.GuestFS(python_return_dict=True, close_on_exit=False)
    if a.get('verbose'):
        g.set_verbose(True)
    if a.get('memsize'):
        g.set_memsize(int(a['memsize']))
    if a.get('smp'):
        g.set_smp(int(a['smp']))
    g.set_autosync(True)
    for d in drives:
        opts = {'format': d['format'], 'readonly': bool(d['readonly'])}
        if d.get('label'):
            opts['label'] = d['label']
        g.add_drive_opts(d['path'], **opts)
    # The root of the mount namespace when filesystems are mounted side by side
    # (/a, /b): the daemon refuses path calls until something is mounted on /, and
    # that must not be a guest filesystem (read-only, and no place for mount points).
    g.add_drive_scratch(SCRATCH_BYTES)
    g.set_event_callback(on_progress, guestfs.EVENT_PROGRESS)
    t = time.time()
    g.launch()
    STATE['qemu_pid'] = g.get_pid()
    devs = g.list_devices()
    SCRATCH['dev'] = devs[len(drives)]
    names = Names(devs[:len(drives)], a.get('guestPrefix', 'vd'))
    fs_cache = None
    ver = g.version()
    return {
        'launchMs': int((time.time() - t) * 1000),
        'qemuPid': STATE['qemu_pid'],
        'helperPid': os.getpid(),
        'version': '%d.%d.%d' % (ver['major'], ver['minor'], ver['release']),
        'devices': [names.to_guest(d) for d in devs[:len(drives)]],
    }


def mode_type(mode):
    if statmod.S_ISREG(mode):
        return 'file'
    if statmod.S_ISDIR(mode):
        return 'dir'
    if statmod.S_ISLNK(mode):
        return 'symlink'
    if statmod.S_ISCHR(mode):
        return 'chardev'
    if statmod.S_ISBLK(mode):
        return 'blockdev'
    if statmod.S_ISFIFO(mode):
        return 'fifo'
    if statmod.S_ISSOCK(mode):
        return 'socket'
    return 'unknown'


def entry_of(st):
    mode = st['st_mode']
    return {
        'type': mode_type(mode),
        'size': st['st_size'],
        'mode': mode & 0o7777,
        'mtime': st['st_mtime_sec'],
        'mtimeNsec': st['st_mtime_nsec'],
        'ctime': st['st_ctime_sec'],
        'ctimeNsec': st['st_ctime_nsec'],
        'uid': st['st_uid'],
        'gid': st['st_gid'],
        'ino': st['st_ino'],
        'nlink': st['st_nlink'],
    }


def decode_name(b):
    """(name for JSON, base64 of the raw bytes or None when the name is UTF-8)."""
    try:
        return b.decode('utf-8'), None
    except UnicodeDecodeError:
        return b.decode('utf-8', 'replace'), base64.b64encode(b).decode('ascii')


def read_nul_file(path):
    with open(path, 'rb') as f:
        data = f.read()
    os.unlink(path)
    return [x for x in data.split(b'\0') if x]


def join(d, n):
    return d.rstrip('/') + '/' + n if d != '/' else '/' + n


CHUNK = 1000


def stat_names(directory, name_list):
    """lstat names (str) of one directory in bulk; returns entries in order."""
    out = []
    for i in range(0, len(name_list), CHUNK):
        part = name_list[i:i + CHUNK]
        sts = g.lstatnslist(directory, part)
        ents = [entry_of(st) for st in sts]
        links = [k for k, e in enumerate(ents) if e['type'] == 'symlink']
        if links:
            targets = g.readlinklist(directory, [part[k] for k in links])
            for k, t in zip(links, targets):
                ents[k]['linkTarget'] = t
        for n, e in zip(part, ents):
            e['name'] = n
            out.append(e)
    return out


def op_list(a):
    need_handle()
    path = a['path']
    st = g.lstatns(path)
    if not statmod.S_ISDIR(st['st_mode']):
        raise OpError('invalid', '%s is not a directory' % path, 'ENOTDIR')
    try:
        plain = g.ls(path)
        raw = []
    except UnicodeDecodeError:
        f = tmpfile('ls0')
        g.ls0(path, f)
        plain, raw = [], []
        for b in read_nul_file(f):
            n, r = decode_name(b)
            (raw if r else plain).append((n, r) if r else n)
    ents = stat_names(path, plain)
    for n, r in raw:
        ents.append({'name': n, 'rawName': r, 'type': 'unknown', 'size': 0, 'mode': 0, 'mtime': 0,
                     'mtimeNsec': 0, 'uid': 0, 'gid': 0, 'ino': 0, 'nlink': 0, 'undecodable': True})
    return ents


def op_stat(a):
    need_handle()
    out = []
    for p in a['paths']:
        st = g.lstatns(p)
        e = entry_of(st)
        if e['type'] == 'symlink':
            e['linkTarget'] = g.readlink(p)
        e['path'] = p
        out.append(e)
    return out


def op_exists(a):
    need_handle()
    return [g.exists(p) for p in a['paths']]


def op_find(a):
    need_handle()
    root = a['path']
    st = g.lstatns(root)
    if not statmod.S_ISDIR(st['st_mode']):
        raise OpError('invalid', '%s is not a directory' % root, 'ENOTDIR')
    f = tmpfile('find0')
    g.find0(root, f)
    rels = read_nul_file(f)
    want_stat = a.get('stat', True)
    out = []
    by_dir = {}
    order = []
    for b in rels:
        b = b.lstrip(b'/')  # find0 writes '/a/b' relative to the directory
        rel, raw = decode_name(b)
        e = {'path': rel}
        if raw:
            e.update({'rawPath': raw, 'undecodable': True, 'type': 'unknown'})
        out.append(e)
        if want_stat and not raw:
            d, _, n = join(root, rel).rpartition('/')
            d = d or '/'
            if d not in by_dir:
                by_dir[d] = []
                order.append(d)
            by_dir[d].append((n, e))
    for d in order:
        items = by_dir[d]
        ents = stat_names(d, [n for n, _ in items])
        for (n, e), s in zip(items, ents):
            del s['name']
            e.update(s)
    return out


def op_checksum(a):
    need_handle()
    algo = a.get('algorithm', 'sha256')
    return [g.checksum(algo, p) for p in a['paths']]


HASH_CHUNK = 2 << 20


def op_hash_files(a):
    """SHA-256 of regular files by pread in the helper: ~2 ms a small file, where
    checksum costs a process start in the appliance (150-250 ms) per file."""
    need_handle()
    paths = a['paths']
    sizes = []
    for p in paths:
        try:
            st = g.lstatns(p)
            sizes.append(st['st_size'] if statmod.S_ISREG(st['st_mode']) else None)
        except RuntimeError:
            sizes.append(None)
    total = sum(x for x in sizes if x)
    done = 0
    out = []
    for p, size in zip(paths, sizes):
        if size is None:
            out.append(None)
            continue
        h = hashlib.sha256()
        off = 0
        while off < size:
            data = g.pread(p, min(HASH_CHUNK, size - off), off)
            if not data:
                break  # shrank: cannot happen on a frozen layer
            h.update(data)
            off += len(data)
            done += len(data)
            if total >= HASH_CHUNK:
                send({'event': 'progress', 'position': done, 'total': total})
        out.append({'sha256': h.hexdigest(), 'size': off})
    return out


def op_ranges(a):
    """Where each partition lies on its disk (bytes), for telling which filesystems a write touched."""
    need_handle()
    out = []
    tables = {}
    for p in g.list_partitions():
        if is_scratch(p):
            continue
        try:
            parent = g.part_to_dev(p)
            num = g.part_to_partnum(p)
            if parent not in tables:
                tables[parent] = g.part_list(parent)
            for part in tables[parent]:
                if part['part_num'] == num:
                    out.append({'device': names.to_guest(p), 'start': part['part_start'], 'size': part['part_size']})
        except RuntimeError:
            pass
    for d in g.list_devices():
        if is_scratch(d):
            continue
        try:
            out.append({'device': names.to_guest(d), 'start': 0, 'size': g.blockdev_getsize64(d)})
        except RuntimeError:
            pass
    return out


def parse_sum_line(line):
    # coreutils: "HASH  ./path"; a leading backslash means \\ and \n are escaped in the name.
    esc = line.startswith(b'\\')
    if esc:
        line = line[1:]
    h, _, name = line.partition(b'  ')
    if esc:
        name = name.replace(b'\\n', b'\n').replace(b'\\\\', b'\\')
    if name.startswith(b'./'):
        name = name[2:]
    return h.decode('ascii'), name


def op_checksum_tree(a):
    need_handle()
    algo = a.get('algorithm', 'sha256')
    f = tmpfile('sums')
    g.checksums_out(algo, a['path'], f)
    out = []
    with open(f, 'rb') as fh:
        for line in fh.read().split(b'\n'):
            if not line:
                continue
            h, name = parse_sum_line(line)
            n, raw = decode_name(name)
            e = {'path': n, 'checksum': h}
            if raw:
                e['rawPath'] = raw
            out.append(e)
    os.unlink(f)
    return out


def make_fifo(a):
    """For streams: a FIFO in the session dir, announced before the call blocks on it."""
    if a.get('hostPath'):
        return a['hostPath']
    f = tmpfile('fifo')
    os.mkfifo(f, 0o600)
    send({'event': 'fifo', 'id': CURRENT['id'], 'path': f})
    return f


def cleanup_fifo(a, f):
    if not a.get('hostPath'):
        try:
            os.unlink(f)
        except OSError:
            pass



def tar_opts(a):
    """The tar options both directions share: xattrs, ACLs, compression."""
    opts = {}
    if a.get('xattrs'):
        opts['xattrs'] = True
    if a.get('acls'):
        opts['acls'] = True
    if a.get('compress'):
        opts['compress'] = a['compress']
    return opts

def op_download(a):
    need_handle()
    path = a['path']
    st = g.lstatns(path)
    if statmod.S_ISLNK(st['st_mode']) and not a.get('followSymlinks', True):
        raise OpError('invalid', '%s is a symbolic link' % path, 'ELOOP')
    if not statmod.S_ISREG(g.statns(path)['st_mode']):
        raise OpError('invalid', '%s is not a regular file' % path, 'EISDIR')
    f = make_fifo(a)
    try:
        g.download(path, f)
    finally:
        cleanup_fifo(a, f)
    return entry_of(g.statns(path))


READ_MAX = 1 << 20


def op_read(a):
    """Bytes of a regular file in the answer itself: far cheaper than a download for small files."""
    need_handle()
    path = a['path']
    out = {}
    if a.get('withStat'):
        st = g.statns(path)
        if not statmod.S_ISREG(st['st_mode']):
            raise OpError('invalid', '%s is not a regular file' % path, 'EISDIR')
        out['stat'] = entry_of(st)
    length = min(int(a.get('length', READ_MAX)), READ_MAX)
    data = g.pread(path, length, int(a.get('offset', 0)))
    out['data'] = base64.b64encode(data).decode('ascii')
    return out


def op_tar_out(a):
    need_handle()
    path = a['path']
    if not statmod.S_ISDIR(g.statns(path)['st_mode']):
        raise OpError('invalid', '%s is not a directory' % path, 'ENOTDIR')
    f = make_fifo(a)
    opts = tar_opts(a)
    opts['numericowner'] = a.get('numericOwner', True)
    if a.get('excludes'):
        opts['excludes'] = a['excludes']
    try:
        g.tar_out(path, f, **opts)
    finally:
        cleanup_fifo(a, f)
    return None


def mount_of(path):
    best = None
    for m in mounts:
        mp = m['mountpoint']
        if path == mp or mp == '/' or path.startswith(mp.rstrip('/') + '/'):
            if best is None or len(mp) > len(best['mountpoint']):
                best = m
    return best


def need_writable(path):
    m = mount_of(path)
    if m is None or m.get('scratch'):
        raise OpError('invalid', '%s is not on a mounted guest filesystem' % path, 'ENOENT')
    if m['ro']:
        raise OpError('invalid', '%s is on %s, mounted read-only' % (path, names.to_guest(m['device'])), 'EROFS')


def apply_meta(path, a):
    if a.get('uid') is not None or a.get('gid') is not None:
        st = g.lstatns(path)
        uid = a['uid'] if a.get('uid') is not None else st['st_uid']
        gid = a['gid'] if a.get('gid') is not None else st['st_gid']
        g.lchown(uid, gid, path)
    if a.get('mode') is not None:
        g.chmod(int(a['mode']), path)
    if a.get('mtime') is not None:
        ns = int(a.get('mtimeNsec') or 0)
        g.utimens(path, int(a['mtime']), ns, int(a['mtime']), ns)


def op_upload(a):
    need_handle()
    path = a['path']
    need_writable(path)
    f = make_fifo(a)
    try:
        g.upload(f, path)
    finally:
        cleanup_fifo(a, f)
    apply_meta(path, a)
    return entry_of(g.lstatns(path))


def op_tar_in(a):
    need_handle()
    path = a['path']
    need_writable(path)
    f = make_fifo(a)
    try:
        g.tar_in(f, path, **tar_opts(a))
    finally:
        cleanup_fifo(a, f)
    return None


def op_set_meta(a):
    need_handle()
    need_writable(a['path'])
    apply_meta(a['path'], a)
    return entry_of(g.lstatns(a['path']))


def op_mkdir(a):
    need_handle()
    need_writable(a['path'])
    g.mkdir_p(a['path'])
    return None


def op_copy(a):
    """cp -a inside the appliance: from a (read-only) snapshot mount into a writable one."""
    need_handle()
    need_writable(a['dest'])
    g.cp_a(a['src'], a['dest'])
    return entry_of(g.lstatns(a['dest']))


def op_remove(a):
    need_handle()
    need_writable(a['path'])
    if a.get('recursive'):
        g.rm_rf(a['path'])
    else:
        g.rm(a['path'])
    return None


def op_sync(a):
    need_handle()
    g.sync()
    return None


# --- filesystems and mounts --------------------------------------------------------

def drive_readonly(appliance_dev):
    i = names.drive_index(appliance_dev)
    if i is not None:
        return bool(drives[i]['readonly'])
    # an LV: read-only if any of its volume group's PVs is on a read-only drive
    m = re.match(r'^/dev/([^/]+)/[^/]+$', appliance_dev)
    if m:
        try:
            uuids = set(g.vgpvuuids(m.group(1)))
            idx = [names.drive_index(p) for p in g.pvs() if g.pvuuid(p) in uuids]
            if idx and all(x is not None for x in idx):
                return any(drives[x]['readonly'] for x in idx)
        except RuntimeError:
            pass
    return any(d['readonly'] for d in drives)  # md or unknown: only when all are writable


def split_parts(path):
    return [p for p in path.split('/') if p]


def is_scratch(dev):
    sd = SCRATCH['dev']
    return sd is not None and (dev == sd or (dev.startswith(sd) and dev[len(sd):].isdigit()))


def ensure_ns_root():
    """Mount the scratch filesystem on / unless something is there already."""
    if any(m['mountpoint'] == '/' for m in mounts):
        return
    if not SCRATCH['formatted']:
        g.mkfs('ext2', SCRATCH['dev'])
        SCRATCH['formatted'] = True
    g.mount_options('', SCRATCH['dev'], '/')
    mounts.append({'device': SCRATCH['dev'], 'mountpoint': '/', 'ro': False, 'scratch': True})


def do_mount(dev, mountpoint, ro, fstype_hint=None):
    """Mount on /, or on a directory: of the scratch root (made here) or of a mounted guest tree."""
    if mountpoint == '/':
        root = [m for m in mounts if m['mountpoint'] == '/']
        if root and root[0].get('scratch') and len(mounts) == 1:
            g.umount('/')
            mounts.remove(root[0])
        elif root:
            raise OpError('invalid', 'filesystems are mounted already; unmount them before mounting one on /', 'EBUSY')
    else:
        ensure_ns_root()
        host = mount_of(mountpoint)
        if host is not None and host.get('scratch'):
            g.mkdir_p(mountpoint)
        elif not g.is_dir(mountpoint):
            raise OpError('invalid', 'no directory %s to mount on (in %s)' % (mountpoint, names.to_guest(host['device']) if host else '?'), 'ENOENT')
    options = 'ro' if ro else ''
    try:
        g.mount_options(options, dev, mountpoint)
    except RuntimeError as e:
        msg = str(e)
        if not device_exists(dev):
            raise OpError('not-found', 'no device %s' % names.to_guest(dev), 'ENOENT')
        typ = fstype_hint
        if typ is None:
            try:
                typ = g.vfs_type(dev)
            except RuntimeError:
                typ = ''
        if typ == 'xfs' and 'nouuid' not in options:
            # two snapshots of one XFS disk share a UUID: the kernel refuses the second
            g.mount_options((options + ',nouuid').lstrip(','), dev, mountpoint)
        elif typ == 'btrfs' and 'File exists' in msg:
            raise OpError('duplicate', 'cannot mount %s: a btrfs filesystem with the same UUID (another snapshot of the same disk?) is mounted in this appliance; the kernel allows one' % names.to_guest(dev), 'EEXIST')
        elif typ == 'swap':
            raise OpError('invalid', '%s is swap, not a filesystem' % names.to_guest(dev))
        elif not typ or typ == 'unknown':
            raise OpError('invalid', 'no filesystem that the appliance can read on %s (blank, encrypted or unknown)' % names.to_guest(dev))
        else:
            raise OpError('invalid', 'cannot mount %s (%s): %s' % (names.to_guest(dev), typ, msg))
    mounts.append({'device': dev, 'mountpoint': mountpoint, 'ro': ro})


def device_exists(dev):
    if dev.startswith('btrfsvol:'):
        return True
    try:
        if dev in set(g.list_devices()) | set(g.list_partitions()):
            return True
        if dev.startswith('/dev/md'):
            return dev in set(g.list_md_devices())
        if dev.count('/') == 3 or dev.startswith('/dev/mapper/'):
            return dev in set(g.lvs())  # an LVM scan: only for names that can be LVs
        return False
    except RuntimeError:
        return True


def do_umount(m):
    g.umount(m['mountpoint'])
    mounts.remove(m)


def unmount_everything(keep_scratch):
    for m in sorted(mounts, key=lambda m: -len(m['mountpoint'])):
        if keep_scratch and m.get('scratch'):
            continue
        do_umount(m)


def op_mount(a):
    need_handle()
    dev = names.to_appliance(a['device'])
    if is_scratch(dev):
        raise OpError('not-found', 'no device %s' % a['device'], 'ENOENT')
    mp = a.get('mountpoint', '/')
    if not mp.startswith('/'):
        raise OpError('invalid', 'mount point must be absolute: %s' % mp)
    ro = a.get('readonly', True)
    if any(m['mountpoint'] == mp and not m.get('scratch') for m in mounts):
        raise OpError('invalid', 'something is already mounted on %s' % mp, 'EBUSY')
    if not ro and drive_readonly(dev):
        raise OpError('invalid', '%s is on a drive opened read-only: it can only be mounted read-only' % a['device'], 'EROFS')
    typ = None
    if fs_cache is not None:
        for f in fs_cache:
            if f['device'] == a['device']:
                typ = f['type']
    do_mount(dev, mp, ro, typ)
    return None


def op_umount(a):
    need_handle()
    mp = a['mountpoint']
    for m in mounts:
        if m['mountpoint'] == mp and not m.get('scratch'):
            do_umount(m)
            return None
    raise OpError('not-found', 'nothing is mounted on %s' % mp, 'ENOENT')


def op_umount_all(a):
    need_handle()
    unmount_everything(keep_scratch=True)
    return None


def op_mounts(a):
    return [{'device': names.to_guest(m['device']), 'mountpoint': m['mountpoint'], 'readonly': m['ro']} for m in mounts if not m.get('scratch')]


NOT_ROOT_TYPES = {'swap', 'unknown', 'vfat', 'msdos', 'ntfs', 'exfat', 'iso9660', 'udf', 'squashfs', 'LVM2_member', 'crypto_LUKS', 'linux_raid_member'}


def parse_fstab(text):
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        f = line.split()
        if len(f) < 2:
            continue
        spec, mp = f[0], f[1].replace('\\040', ' ')
        vfstype = f[2] if len(f) > 2 else ''
        opts = f[3] if len(f) > 3 else ''
        if mp in ('none', 'swap') or not mp.startswith('/') or vfstype in ('swap', 'proc', 'sysfs', 'tmpfs', 'devpts', 'nfs', 'nfs4', 'cifs'):
            continue
        subvol = None
        for o in opts.split(','):
            if o.startswith('subvol='):
                subvol = o[len('subvol='):].lstrip('/')
        out.append((spec, mp, subvol))
    return out


def udev_unescape(s):
    return re.sub(r'\\x([0-9a-fA-F]{2})', lambda m: chr(int(m.group(1), 16)), s)


def resolve_spec(spec, subvol, infos, root_drive):
    """Appliance devices the fstab spec names, preferring those on the root's drive."""
    key = None
    if spec.startswith('UUID='):
        key = ('uuid', spec[5:].lower())
    elif spec.startswith('LABEL='):
        key = ('label', spec[6:])
    elif spec.startswith('PARTUUID='):
        key = ('partuuid', spec[9:].lower())
    elif spec.startswith('PARTLABEL='):
        key = ('partlabel', spec[10:])
    elif spec.startswith('/dev/disk/by-uuid/'):
        key = ('uuid', spec[len('/dev/disk/by-uuid/'):].lower())
    elif spec.startswith('/dev/disk/by-label/'):
        key = ('label', udev_unescape(spec[len('/dev/disk/by-label/'):]))
    elif spec.startswith('/dev/disk/by-partuuid/'):
        key = ('partuuid', spec[len('/dev/disk/by-partuuid/'):].lower())
    matches = []
    if key:
        for dev, inf in infos.items():
            v = inf.get(key[0])
            if v is not None and (v.lower() if key[0] in ('uuid', 'partuuid') else v) == key[1]:
                matches.append(dev)
    else:
        m = re.match(r'^/dev/(?:[svh]d|xvd)([a-z]+)(\d*)$', spec)
        if m:
            i = index_of_letters(m.group(1))
            disks = list(names.a2g)
            if i < len(disks):
                matches = [disks[i] + m.group(2)]
        else:
            m = re.match(r'^/dev/mapper/(.+)$', spec)
            if m:
                # VG-LV with '-' inside names doubled
                parts = re.split(r'(?<!-)-(?!-)', m.group(1))
                if len(parts) == 2:
                    matches = ['/dev/%s/%s' % (parts[0].replace('--', '-'), parts[1].replace('--', '-'))]
            else:
                matches = [spec]
    if subvol is not None:
        matches = ['btrfsvol:%s/%s' % (d, subvol) if ('btrfsvol:%s/%s' % (d, subvol)) in infos else d for d in matches]
    matches = [d for d in matches if d in infos]
    same = [d for d in matches if infos[d].get('drive') == root_drive and root_drive is not None]
    return same or matches


def probe_mount(dev, typ):
    try:
        g.mount_options('ro', dev, '/')
        return True
    except RuntimeError:
        if typ != 'xfs':
            return False
    try:
        g.mount_options('ro,nouuid', dev, '/')
        return True
    except RuntimeError:
        return False


def probe_fstabs(infos):
    """Mount points from the /etc/fstab of each root filesystem (one that has /etc/fstab)."""
    for dev, inf in list(infos.items()):
        if inf['type'] in NOT_ROOT_TYPES or not probe_mount(dev, inf['type']):
            continue
        try:
            if not g.is_file('/etc/fstab', followsymlinks=True):
                continue
            text = g.pread('/etc/fstab', 256 * 1024, 0).decode('utf-8', 'replace')
            found_root = False
            for spec, mp, subvol in parse_fstab(text):
                for d in resolve_spec(spec, subvol, infos, inf['drive']):
                    if 'mountpoint' not in infos[d] or d == dev:
                        infos[d]['mountpoint'] = mp
                        if d == dev and mp == '/':
                            found_root = True
            if not found_root and infos[dev].get('mountpoint') in (None, '/'):
                infos[dev]['mountpoint'] = '/'
        except RuntimeError:
            pass
        finally:
            g.umount('/')


def list_filesystems_slowly():
    devs = [d for d in g.list_devices() if not is_scratch(d)]
    parts = [p for p in g.list_partitions() if not is_scratch(p)]
    candidates = [d for d in devs if not any(p.startswith(d) for p in parts)] + parts
    try:
        candidates += g.lvs()
    except RuntimeError:
        pass
    try:
        candidates += g.list_md_devices()
    except RuntimeError:
        pass
    out = {}
    for d in candidates:
        try:
            t = g.vfs_type(d)
        except RuntimeError:
            t = ''
        if t in ('LVM2_member', 'linux_raid_member'):
            continue
        out[d] = t or 'unknown'
    return out


def op_filesystems(a):
    global fs_cache
    need_handle()
    if fs_cache is not None and not a.get('refresh'):
        return fs_cache
    try:
        listed = g.list_filesystems()
    except RuntimeError:
        # It fails as a whole when one of its inner mounts fails (two copies of one
        # btrfs filesystem: the kernel mounts one fsid once). Identify each device alone.
        listed = list_filesystems_slowly()
    infos = {}
    for dev, typ in listed.items():
        if typ == 'unknown' and not a.get('includeUnknown'):
            continue
        if is_scratch(dev):
            continue
        inf = {'type': typ, 'drive': names.drive_index(dev)}
        base = dev
        if dev.startswith('btrfsvol:'):
            m = re.match(r'^btrfsvol:(/dev/[^/]+(?:/[^/]+)?)/(.*)$', dev)
            # /dev/sda2 or /dev/VG/LV followed by the subvolume path
            inf['subvolume'] = m.group(2) if m else None
            base = m.group(1) if m else dev
        try:
            tags = g.blkid(base)
        except RuntimeError:
            tags = {}
        if tags.get('LABEL'):
            inf['label'] = tags['LABEL']
        if tags.get('UUID'):
            inf['uuid'] = tags['UUID']
        if tags.get('PART_ENTRY_UUID'):
            inf['partuuid'] = tags['PART_ENTRY_UUID']
        if tags.get('PART_ENTRY_NAME'):
            inf['partlabel'] = tags['PART_ENTRY_NAME']
        try:
            inf['size'] = g.blockdev_getsize64(base)
        except RuntimeError:
            pass
        infos[dev] = inf
    # Probing mounts each candidate read-only on / for a moment: our own mounts go
    # away meanwhile and come back after.
    btrfs_devs = [d for d, inf in infos.items() if inf['type'] == 'btrfs' and not d.startswith('btrfsvol:')]
    if btrfs_devs or a.get('fstab', True):
        saved = sorted(mounts, key=lambda m: len(m['mountpoint']))
        unmount_everything(keep_scratch=False)
        try:
            # btrfs subvolumes: list-filesystems leaves them out now and then (seen under
            # load), so they are listed here from a mount of each btrfs device.
            for dev in btrfs_devs:
                if not probe_mount(dev, infos[dev]['type']):
                    continue
                try:
                    for v in g.btrfs_subvolume_list('/'):
                        key = 'btrfsvol:%s/%s' % (dev, v['btrfssubvolume_path'])
                        if key not in infos:
                            inf = dict(infos[dev])
                            inf['subvolume'] = v['btrfssubvolume_path']
                            infos[key] = inf
                except RuntimeError:
                    pass
                finally:
                    g.umount('/')
            if a.get('fstab', True):
                probe_fstabs(infos)
        finally:
            for m in saved:
                if m.get('scratch'):
                    ensure_ns_root()
                else:
                    do_mount(m['device'], m['mountpoint'], m['ro'])
    out = []
    uuids = {}
    for dev, inf in infos.items():
        if inf.get('uuid') and not dev.startswith('btrfsvol:'):
            uuids.setdefault((inf['type'], inf['uuid']), []).append(dev)
    for dev, inf in infos.items():
        e = {'device': names.to_guest(dev), 'type': inf['type']}
        if len(uuids.get((inf['type'], inf.get('uuid')), [])) > 1:
            e['sharesUuid'] = True
        for k in ('label', 'uuid', 'size', 'mountpoint', 'subvolume', 'partuuid'):
            if inf.get(k) is not None:
                e[k] = inf[k]
        if inf['drive'] is not None:
            e['drive'] = inf['drive']
        out.append(e)
    fs_cache = out
    return out


def op_ping(a):
    if g is not None:
        g.ping_daemon()
    return {'pid': os.getpid()}


def op_raw(a):
    # Test hook: any libguestfs call by name (only when VMSNAP_GUESTFS_ALLOW_RAW=1).
    if os.environ.get('VMSNAP_GUESTFS_ALLOW_RAW') != '1':
        raise OpError('invalid', 'raw calls are disabled')
    need_handle()
    fn = getattr(g, a['name'])
    def conv(x):
        if isinstance(x, str) and x.startswith('/dev/'):
            return names.to_appliance(x)
        if isinstance(x, list):
            return [conv(y) for y in x]
        return x
    args = [conv(x) for x in a.get('args', [])]
    r = fn(*args, **a.get('kwargs', {}))
    global fs_cache
    fs_cache = None
    return r if isinstance(r, (str, int, float, bool, list, dict, type(None))) else str(r)


def op_close(a):
    global g
    with _state_lock:
        STATE['closing'] = True
    if g is not None:
        try:
            for m in sorted(mounts, key=lambda m: -len(m['mountpoint'])):
                try:
                    do_umount(m)
                except RuntimeError:
                    pass
            g.shutdown()  # syncs writable drives and waits for qemu to exit
        finally:
            g.close()
            g = None
    return None


OPS = {
    'launch': op_launch, 'filesystems': op_filesystems, 'mount': op_mount, 'umount': op_umount,
    'umountAll': op_umount_all, 'mounts': op_mounts, 'list': op_list, 'stat': op_stat,
    'exists': op_exists, 'find': op_find, 'checksum': op_checksum, 'checksumTree': op_checksum_tree,
    'hashFiles': op_hash_files, 'ranges': op_ranges,
    'download': op_download, 'read': op_read, 'tarOut': op_tar_out, 'upload': op_upload, 'tarIn': op_tar_in,
    'setMeta': op_set_meta, 'mkdir': op_mkdir, 'copy': op_copy, 'remove': op_remove, 'sync': op_sync,
    'ping': op_ping, 'raw': op_raw, 'close': op_close,
}

ERRNO_KINDS = {
    'ENOENT': 'not-found', 'ENOTDIR': 'not-found', 'ENXIO': 'not-found', 'ENODEV': 'not-found',
    'EISDIR': 'invalid', 'EINVAL': 'invalid', 'EROFS': 'invalid', 'ELOOP': 'invalid', 'ENOTSUP': 'invalid',
    'EOPNOTSUPP': 'invalid', 'EEXIST': 'exists', 'ENOTEMPTY': 'invalid', 'EBUSY': 'invalid', 'ENOSPC': 'no-space',
    'EDQUOT': 'no-space', 'EPIPE': 'cancelled', 'EINTR': 'cancelled', 'EACCES': 'invalid', 'EPERM': 'invalid',
}

CURRENT = {'id': None}


def classify(e):
    if isinstance(e, OpError):
        return {'kind': e.kind, 'errno': e.err, 'message': str(e)}
    if isinstance(e, UnicodeError):
        return {'kind': 'encoding', 'errno': None, 'message': 'a name is not UTF-8, which the libguestfs Python binding cannot pass: %s' % e}
    if isinstance(e, (KeyError, TypeError, ValueError)):
        return {'kind': 'bad-request', 'errno': None, 'message': '%s: %s' % (type(e).__name__, e)}
    msg = str(e)
    name = None
    if g is not None:
        try:
            n = g.last_errno()
            name = errnomod.errorcode.get(n) if n else None
        except Exception:
            name = None
    alive = True
    if g is not None:
        try:
            alive = bool(g.is_ready() or g.is_busy())
        except Exception:
            alive = False
    if not alive or 'child process died' in msg or 'appliance closed the connection' in msg or 'unexpected end of file' in msg:
        return {'kind': 'appliance', 'errno': name, 'message': msg}
    if name in ERRNO_KINDS:
        return {'kind': ERRNO_KINDS[name], 'errno': name, 'message': msg}
    if "you must call 'mount' first" in msg:
        return {'kind': 'invalid', 'errno': name, 'message': 'nothing is mounted: mount a filesystem first (%s)' % msg}
    if 'No such file or directory' in msg:
        return {'kind': 'not-found', 'errno': name or 'ENOENT', 'message': msg}
    if 'Not a directory' in msg:
        return {'kind': 'not-found', 'errno': name or 'ENOTDIR', 'message': msg}
    if 'user cancelled' in msg or 'Broken pipe' in msg:
        return {'kind': 'cancelled', 'errno': name, 'message': msg}
    return {'kind': 'failed', 'errno': name, 'message': msg}


def main():
    threading.Thread(target=reader, daemon=True).start()
    send({'event': 'hello', 'protocol': PROTOCOL, 'pid': os.getpid(), 'python': sys.version.split()[0]})
    while True:
        line = requests.get()
        if line is None:
            break
        try:
            req = json.loads(line)
        except ValueError as e:
            send({'id': None, 'ok': False, 'error': {'kind': 'bad-request', 'errno': None, 'message': 'not JSON: %s' % e}})
            continue
        rid = req.get('id')
        op = OPS.get(req.get('op'))
        if op is None:
            send({'id': rid, 'ok': False, 'error': {'kind': 'bad-request', 'errno': None, 'message': 'unknown op %r' % req.get('op')}})
            continue
        with _state_lock:
            STATE['busy'] = True
        CURRENT['id'] = rid
        t = time.time()
        try:
            result = op(req.get('args') or {})
            send({'id': rid, 'ok': True, 'result': result, 'ms': round((time.time() - t) * 1000, 1)})
        except Exception as e:  # every failure is an answer; the loop goes on
            send({'id': rid, 'ok': False, 'error': classify(e), 'ms': round((time.time() - t) * 1000, 1)})
        finally:
            with _state_lock:
                STATE['busy'] = False
        if req.get('op') == 'close':
            break
    # stdin closed while idle, or close: shut the appliance down cleanly.
    if g is not None:
        try:
            op_close({})
        except Exception:
            pass
    sd = STATE['session_dir']
    if sd:
        shutil.rmtree(sd, ignore_errors=True)


if __name__ == '__main__':
    main()
