#!/usr/bin/env bash
# Build vmsnap's tiny test/demo guest from Debian packages only.
#
#   guest/build.sh OUTDIR
#
# Produces OUTDIR/vmlinuz, OUTDIR/initrd.img and OUTDIR/manifest.json.
# Boot it with:  -kernel OUTDIR/vmlinuz -initrd OUTDIR/initrd.img -append "console=ttyS0 quiet"
# See guest/README.md for what the guest does at boot.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C

log() { printf 'guest-build: %s\n' "$*" >&2; }
die() { printf 'guest-build: error: %s\n' "$*" >&2; exit 1; }

[ $# -eq 1 ] && [ -n "$1" ] || die "usage: $0 OUTDIR"
OUT=$1
KERNEL_META=${VMSNAP_GUEST_KERNEL_META:-linux-image-cloud-amd64}
# Kernel modules to load at boot, in this order (their dependencies are added
# automatically, before them).
WANTED_MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
  virtio_blk virtio_console virtio_net button evdev"

have_all() { [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ] && [ -s "$OUT/manifest.json" ]; }

if have_all; then
  log "up to date: $OUT/vmlinuz $OUT/initrd.img $OUT/manifest.json"
  exit 0
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# Serialize concurrent builds into the same OUTDIR.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$OUT/.build.lock"
  flock 9
  if have_all; then
    log "up to date (built concurrently): $OUT/vmlinuz $OUT/initrd.img $OUT/manifest.json"
    exit 0
  fi
fi

command -v apt-get >/dev/null 2>&1 || die "apt-get not found (needs Debian 12)"
command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found (needs Debian 12)"

UPDATED=0
apt_update_once() {
  if [ "$UPDATED" -eq 0 ]; then
    log "apt-get update (package lists missing or stale)"
    apt-get update -qq >&2 || die "apt-get update failed"
    UPDATED=1
    return 0
  fi
  return 1
}

# --- host build tools --------------------------------------------------------
ensure_tools() { # ensure_tools COMMAND:PACKAGE ...
  local spec pkgs=()
  for spec in "$@"; do
    command -v "${spec%%:*}" >/dev/null 2>&1 && continue
    dpkg -s "${spec#*:}" >/dev/null 2>&1 && continue
    pkgs+=("${spec#*:}")
  done
  [ ${#pkgs[@]} -gt 0 ] || return 0
  [ "$(id -u)" -eq 0 ] || die "missing host packages (${pkgs[*]}); run as root or install them"
  log "installing host tools: ${pkgs[*]}"
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2 ||
    { apt_update_once && apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2; } ||
    die "apt-get install ${pkgs[*]} failed"
}
ensure_tools cpio:cpio gzip:gzip

WORK=$(mktemp -d "${TMPDIR:-/tmp}/vmsnap-guest.XXXXXX")
cleanup() { rm -rf "$WORK"; rm -rf "$OUT"/.new.$$ 2>/dev/null || true; }
trap cleanup EXIT
chmod 755 "$WORK"
DEBS=$WORK/debs
SYSROOT=$WORK/sysroot   # every downloaded package, unpacked
ROOT=$WORK/initramfs    # what goes into the cpio
mkdir -p "$DEBS" "$SYSROOT" "$ROOT"
# apt-get download drops privileges to _apt when it can write the directory.
if [ "$(id -u)" -eq 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$DEBS"; fi

# --- resolve and download packages -------------------------------------------
apt_cache_depends() { # prints the names a package Depends on (first alternative)
  apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances --no-pre-depends "$@" 2>/dev/null |
    awk '$1 == "Depends:" && $2 !~ /^</ {print $2}'
}

if ! apt-cache show "$KERNEL_META" >/dev/null 2>&1; then
  apt_update_once || true
fi
KPKG=$(apt_cache_depends "$KERNEL_META" | grep -E '^linux-image-[0-9]' | head -n1 || true)
[ -n "$KPKG" ] || die "cannot resolve $KERNEL_META to a linux-image-<version> package"

# qemu-guest-agent's runtime library closure (only files ld.so asks for are kept).
LIBPKGS=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
  --no-breaks --no-replaces --no-enhances --no-pre-depends qemu-guest-agent 2>/dev/null |
  grep -v '^ ' | grep -v '^<' | grep -vx qemu-guest-agent | sort -u | tr '\n' ' ')
[ -n "$LIBPKGS" ] || die "cannot resolve qemu-guest-agent's dependencies"

PKGS="$KPKG busybox-static qemu-guest-agent $LIBPKGS"
log "downloading: $PKGS"
download() { (cd "$DEBS" && apt-get download -q "$@" >/dev/null 2>"$WORK/apt.err"); }
# shellcheck disable=SC2086
if ! download $PKGS; then
  apt_update_once || { cat "$WORK/apt.err" >&2; die "apt-get download failed"; }
  # shellcheck disable=SC2086
  download $PKGS || { cat "$WORK/apt.err" >&2; die "apt-get download failed"; }
fi

declare -A VERSIONS=()
for deb in "$DEBS"/*.deb; do
  name=$(dpkg-deb -f "$deb" Package)
  VERSIONS[$name]=$(dpkg-deb -f "$deb" Version)
  if [ "$name" = "$KPKG" ]; then
    dpkg-deb -x "$deb" "$WORK/kernel"
  else
    dpkg-deb -x "$deb" "$SYSROOT"
  fi
done

# --- kernel and modules ------------------------------------------------------
KVER=$(ls "$WORK/kernel/lib/modules" | head -n1)
[ -n "$KVER" ] || die "no modules in $KPKG"
[ -f "$WORK/kernel/boot/vmlinuz-$KVER" ] || die "no vmlinuz in $KPKG"
KMOD=$WORK/kernel/lib/modules/$KVER
log "kernel $KVER"

declare -A MODPATH=()
while IFS= read -r -d '' f; do
  b=${f##*/}; b=${b%%.ko*}; b=${b//-/_}
  MODPATH[$b]=$f
done < <(find "$KMOD" -name '*.ko*' -print0)

is_builtin() { grep -qE "/${1//_/[-_]}\.ko\$" "$KMOD/modules.builtin" 2>/dev/null; }

mod_plain() { # mod_plain FILE: uncompressed module content on stdout
  case $1 in
    *.ko) cat "$1" ;;
    *.ko.xz) xz -dc "$1" ;;
    *.ko.zst) zstd -qdc "$1" ;;
    *.ko.gz) gzip -dc "$1" ;;
    *) die "unknown module format: $1" ;;
  esac
}

# Compressed modules (.ko.xz/.ko.zst) are decompressed here, since busybox insmod
# may not load them.
if find "$KMOD" -name '*.ko.xz' | grep -q .; then ensure_tools xz:xz-utils; fi
if find "$KMOD" -name '*.ko.zst' | grep -q .; then ensure_tools zstd:zstd; fi

declare -A ADDED=()
LOAD_ORDER=()
add_module() {
  local m=${1//-/_} dep deps
  [ -n "${ADDED[$m]:-}" ] && return 0
  ADDED[$m]=1
  if [ -z "${MODPATH[$m]:-}" ]; then
    is_builtin "$m" && return 0
    die "kernel module $m not found in $KPKG"
  fi
  deps=$(mod_plain "${MODPATH[$m]}" | tr '\0' '\n' | grep -a '^depends=' | head -n1 | cut -d= -f2 | tr ',' ' ')
  for dep in $deps; do add_module "$dep"; done
  LOAD_ORDER+=("$m")
}
for m in $WANTED_MODULES; do add_module "$m"; done

mkdir -p "$ROOT/lib/modules/$KVER"
for m in "${LOAD_ORDER[@]}"; do
  mod_plain "${MODPATH[$m]}" >"$ROOT/lib/modules/$KVER/$m.ko"
done
printf '%s\n' "${LOAD_ORDER[@]}" >"$ROOT/lib/modules/$KVER/load-order"
log "modules: ${LOAD_ORDER[*]}"

# --- busybox -----------------------------------------------------------------
BB=$SYSROOT/bin/busybox
[ -x "$BB" ] || die "busybox-static did not provide /bin/busybox"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,data,mnt,root,var,lib64}
cp "$BB" "$ROOT/bin/busybox"
"$BB" --list-full | while read -r applet; do
  [ -e "$ROOT/$applet" ] || [ -L "$ROOT/$applet" ] || ln -s /bin/busybox "$ROOT/$applet"
done

# --- qemu-ga and its shared libraries ------------------------------------------
QGA=$SYSROOT/usr/sbin/qemu-ga
[ -x "$QGA" ] || die "qemu-guest-agent did not provide /usr/sbin/qemu-ga"
cp "$QGA" "$ROOT/usr/sbin/qemu-ga"
LDSO=$(find "$SYSROOT" -name 'ld-linux-x86-64.so.2' -type f | head -n1)
[ -n "$LDSO" ] || die "no dynamic loader in the downloaded libc6"
LIBDIRS=$SYSROOT/lib/x86_64-linux-gnu:$SYSROOT/usr/lib/x86_64-linux-gnu
"$LDSO" --library-path "$LIBDIRS" --list "$QGA" >"$WORK/ldd.txt" ||
  { cat "$WORK/ldd.txt" >&2; die "cannot resolve qemu-ga's libraries"; }
if grep -q 'not found' "$WORK/ldd.txt"; then
  cat "$WORK/ldd.txt" >&2; die "qemu-ga needs libraries not in: $LIBPKGS"
fi
copy_lib() { # copy_lib FILE DEST-PATH-IN-INITRAMFS
  mkdir -p "$ROOT${2%/*}"
  cp -L "$1" "$ROOT$2"
}
while read -r a b c _; do
  if [ "${a#/}" != "$a" ]; then
    # the interpreter the binary names: "/lib64/ld-linux-x86-64.so.2 [=> real path] (0x...)"
    copy_lib "$LDSO" "$a"
  elif [ "$b" = "=>" ] && [ "${c#"$SYSROOT"/}" != "$c" ]; then
    # "libfoo.so.1 => $SYSROOT/lib/x86_64-linux-gnu/libfoo.so.1 (0x...)"
    copy_lib "$c" "${c#"$SYSROOT"}"
  elif [ "$b" = "=>" ]; then
    cat "$WORK/ldd.txt" >&2; die "qemu-ga's $a resolved outside the downloaded packages"
  fi
done <"$WORK/ldd.txt"
[ -e "$ROOT/lib64/ld-linux-x86-64.so.2" ] || die "interpreter not copied"

# --- configuration and scripts -----------------------------------------------
ln -s /run "$ROOT/var/run"
ln -s /tmp "$ROOT/var/tmp"
mkdir -p "$ROOT/var/log" "$ROOT/etc/acpi/PWRF"
echo vmsnap-demo >"$ROOT/etc/hostname"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\n' >"$ROOT/etc/group"
printf '/bin/sh\n' >"$ROOT/etc/shells"
echo "$KVER" >"$ROOT/etc/vmsnap-kernel"

cat >"$ROOT/init" <<'EOF'
#!/bin/sh
# vmsnap guest: early mounts, then busybox init (/etc/inittab -> /etc/rc).
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mount -t devtmpfs -o mode=0755 devtmpfs /dev 2>/dev/null
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
exec /sbin/init
EOF

cat >"$ROOT/etc/inittab" <<'EOF'
::sysinit:/etc/rc
ttyS0::respawn:-/bin/sh
::ctrlaltdel:/sbin/poweroff
::shutdown:/etc/rc.shutdown
EOF

cat >"$ROOT/etc/profile" <<'EOF'
export PATH=/sbin:/usr/sbin:/bin:/usr/bin HOME=/root
PS1='vmsnap-demo:$PWD# '
EOF

cat >"$ROOT/etc/rc" <<'EOF'
#!/bin/sh
# vmsnap guest system init (run once by busybox init).
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
say() { echo "vmsnap-guest: $*" >/dev/console; }

[ -e /proc/self ] || mount -t proc proc /proc
[ -e /sys/kernel ] || mount -t sysfs sysfs /sys
[ -e /dev/null ] || mount -t devtmpfs -o mode=0755 devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
ln -sf /proc/self/mounts /etc/mtab

hostname -F /etc/hostname
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up

KVER=$(cat /etc/vmsnap-kernel)
while read -r m; do
  insmod "/lib/modules/$KVER/$m.ko" 2>/dev/null || say "insmod $m failed"
done <"/lib/modules/$KVER/load-order"

# virtio_blk registers its disks while it loads; wait briefly only if a virtio
# block device (id 2) exists but its disk has not shown up yet.
i=0
while [ ! -e /sys/block/vda ] && grep -qs '^0x0002$' /sys/bus/virtio/devices/*/device && [ $i -lt 20 ]; do
  sleep 0.1; i=$((i + 1))
done

# mount_disk DEV MOUNTPOINT: format if blank (first 64 KiB are zero), then mount.
mount_disk() {
  dev=$1 mp=$2 name=${1##*/}
  [ -e "/sys/block/$name/${name}1" ] && dev=${dev}1
  mkdir -p "$mp"
  if cmp -s -n 65536 "$dev" /dev/zero; then
    say "formatting blank disk $dev"
    mke2fs -m 0 -L "$name" "$dev" >/dev/null || { say "mke2fs $dev failed"; return 1; }
  fi
  if mount -o sync "$dev" "$mp"; then
    say "mounted $dev on $mp"
  else
    say "cannot mount $dev (unknown filesystem?), left alone"
    return 1
  fi
}

if [ -b /dev/vda ]; then
  mount_disk /dev/vda /data
else
  say "no /dev/vda: /data is not mounted"
fi
for b in /sys/block/vd*; do
  [ -e "$b" ] || continue
  n=${b##*/}
  [ "$n" = vda ] && continue
  mount_disk "/dev/$n" "/mnt/$n"
done

# ACPI power button (QMP system_powerdown) -> acpid -> /etc/acpi/PWRF/00000080 -> poweroff
acpid -c /etc/acpi -l /run/acpid.log -p /run/acpid.pid

# Guest agent on the virtio-serial port.
mkdir -p /dev/virtio-ports
for p in /sys/class/virtio-ports/*; do
  [ -r "$p/name" ] || continue
  ln -sf "../${p##*/}" "/dev/virtio-ports/$(cat "$p/name")"
done
QGA_PORT=/dev/virtio-ports/org.qemu.guest_agent.0
if [ -e "$QGA_PORT" ]; then
  mkdir -p /run/qemu-ga
  /usr/sbin/qemu-ga -m virtio-serial -p "$QGA_PORT" -t /run/qemu-ga \
    -l /run/qemu-ga.log -f /run/qemu-ga.pid -d
  # wait until the agent holds the port open
  i=0
  while [ $i -lt 50 ]; do
    pid=$(cat /run/qemu-ga.pid 2>/dev/null)
    [ -n "$pid" ] && ls -l "/proc/$pid/fd" 2>/dev/null | grep -q vport && break
    sleep 0.1; i=$((i + 1))
  done
  [ $i -lt 50 ] || say "qemu-ga did not open $QGA_PORT"
else
  say "no virtio-serial port org.qemu.guest_agent.0: qemu-ga not started"
fi

echo VMSNAP-GUEST-READY >/dev/console
EOF

cat >"$ROOT/etc/rc.shutdown" <<'EOF'
#!/bin/sh
# run by busybox init before it kills everything and powers off / reboots
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
for p in /run/qemu-ga.pid /run/acpid.pid; do
  [ -s "$p" ] && kill "$(cat "$p")" 2>/dev/null
done
mps=$(awk '$1 ~ /^\/dev\/vd/ {print $2}' /proc/mounts | sort -r)
# a filesystem left frozen (guest-fsfreeze-freeze without thaw) would hang sync
for mp in $mps; do fsfreeze --unfreeze "$mp" 2>/dev/null; done
sync
for mp in $mps; do
  umount "$mp" 2>/dev/null || mount -o remount,ro "$mp" 2>/dev/null
done
sync
echo "vmsnap-guest: shutting down" >/dev/console
EOF

# qemu-ga's guest-shutdown runs: /sbin/shutdown -h -P|-H|-r +0 "message"
cat >"$ROOT/sbin/shutdown" <<'EOF'
#!/bin/sh
act=poweroff
for a in "$@"; do
  case $a in
    -r) act=reboot ;;
    -H) act=halt ;;
    -P) act=poweroff ;;
  esac
done
exec /bin/busybox "$act"
EOF

cat >"$ROOT/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
exec /bin/busybox poweroff
EOF

chmod 755 "$ROOT/init" "$ROOT/etc/rc" "$ROOT/etc/rc.shutdown" "$ROOT/sbin/shutdown" \
  "$ROOT/etc/acpi/PWRF/00000080"
chmod 700 "$ROOT/root"
chmod 1777 "$ROOT/tmp"
if [ "$(id -u)" -eq 0 ]; then
  mknod -m 600 "$ROOT/dev/console" c 5 1
  mknod -m 666 "$ROOT/dev/null" c 1 3
fi

# --- pack --------------------------------------------------------------------
log "packing initramfs"
(cd "$ROOT" && find . -mindepth 1 | sort | cpio --quiet -o -H newc -R 0:0) | gzip -9 -n >"$WORK/initrd.img"

{
  printf '{\n  "kernelVersion": "%s",\n  "builtAt": "%s",\n  "packages": {' \
    "$KVER" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  sep=
  for name in $(printf '%s\n' "${!VERSIONS[@]}" | sort); do
    printf '%s\n    "%s": "%s"' "$sep" "$name" "${VERSIONS[$name]}"
    sep=,
  done
  printf '\n  }\n}\n'
} >"$WORK/manifest.json"

# Move into place; manifest.json last, so a killed build is never taken as complete.
NEW=$OUT/.new.$$
mkdir -p "$NEW"
cp "$WORK/kernel/boot/vmlinuz-$KVER" "$NEW/vmlinuz"
cp "$WORK/initrd.img" "$WORK/manifest.json" "$NEW/"
rm -f "$OUT/manifest.json"
mv -f "$NEW/vmlinuz" "$OUT/vmlinuz"
mv -f "$NEW/initrd.img" "$OUT/initrd.img"
mv -f "$NEW/manifest.json" "$OUT/manifest.json"
rmdir "$NEW"
log "built $OUT/vmlinuz ($(du -k "$OUT/vmlinuz" | cut -f1) KiB), $OUT/initrd.img ($(du -k "$OUT/initrd.img" | cut -f1) KiB), $OUT/manifest.json"
