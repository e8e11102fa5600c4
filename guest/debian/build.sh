#!/usr/bin/env bash
# Build vmsnap's real Debian 12 test guest: one root tree, two bootable GPT disks.
#
#   guest/debian/build.sh OUTDIR
#
# Produces, in OUTDIR:
#   debian-uefi.qcow2  GPT: ESP (FAT32, systemd-boot, kernel, initrd) + ext4 root; boots with OVMF
#   debian-bios.qcow2  GPT: FAT /boot (syslinux, gptmbr.bin in the MBR) + ext4 root; boots with SeaBIOS
#   manifest.json      versions, kernel, sizes, sha256, build date, build script version
# Nothing is mounted on the host: the root tree is made with debootstrap, the root
# filesystem with `mkfs.ext4 -d`, the FAT partitions with mkfs.vfat/mtools on plain files.
# Needs root (debootstrap, chroot) and apt-get (Debian 12). See guest/debian/README.md.
set -euo pipefail

# Bump when the images change in a way users of the cache must pick up
# (src/vm/debian-image.ts has the same number in DEBIAN_IMAGE_VERSION).
BUILD_VERSION=1

export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf 'debian-guest-build: %s\n' "$*" >&2; }
die() { printf 'debian-guest-build: error: %s\n' "$*" >&2; exit 1; }

[ $# -eq 1 ] && [ -n "$1" ] || die "usage: $0 OUTDIR"
OUT=$1
MIRROR=${VMSNAP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${VMSNAP_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SUITE=bookworm
DISK_MIB=4096         # virtual size of each disk
BOOT_MIB=128          # the FAT partition (ESP or /boot) at 1 MiB
ROOT_LABEL=debian-root
HOSTNAME_DEFAULT=vmsnap-debian
# rw and fstab pass 0: no fsck of the root at boot (ext4's journal recovers a crash).
CMDLINE="root=LABEL=$ROOT_LABEL rw console=ttyS0"
# Fixed partition GUIDs, so both images and every build name their partitions alike.
BOOT_PARTUUID=5d4f0a63-2a61-4a55-9d1e-76d5a0b10001
ROOT_PARTUUID=5d4f0a63-2a61-4a55-9d1e-76d5a0b10002
ESP_TYPE=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
LINUXFS_TYPE=0FC63DAF-8483-4772-8E79-3D69D8477DE4
ROOT_X86_64_TYPE=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709

# Packages installed into the guest (no Recommends).
# dbus + libpam-systemd: logind, hostnamectl, and `shutdown +0` (qemu-ga's guest-shutdown)
# need them; systemd-resolved: cloud-init's networkd renderer restarts it, and DNS.
GUEST_PKGS="systemd-sysv udev dbus libpam-systemd systemd-resolved kmod initramfs-tools zstd
  linux-image-cloud-amd64 qemu-guest-agent cloud-init cloud-guest-utils openssh-server sudo
  iproute2 procps e2fsprogs less"

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")

manifest_version() { # the buildScriptVersion in an existing manifest, or nothing
  sed -n 's/^ *"buildScriptVersion": *\([0-9]*\).*/\1/p' "$1" 2>/dev/null | head -n1
}
have_all() {
  [ -s "$OUT/debian-uefi.qcow2" ] && [ -s "$OUT/debian-bios.qcow2" ] && [ -s "$OUT/manifest.json" ] &&
    [ "$(manifest_version "$OUT/manifest.json")" = "$BUILD_VERSION" ]
}

if have_all; then
  log "up to date: $OUT/debian-uefi.qcow2 $OUT/debian-bios.qcow2 $OUT/manifest.json"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap and chroot)"
command -v apt-get >/dev/null 2>&1 || die "apt-get not found (needs Debian 12)"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# Serialize concurrent builds into the same OUTDIR.
exec 9>"$OUT/.build.lock"
flock 9
if have_all; then
  log "up to date (built concurrently): $OUT/debian-uefi.qcow2 $OUT/debian-bios.qcow2"
  exit 0
fi

T0=$(date +%s)

UPDATED=0
apt_update_once() {
  [ "$UPDATED" -eq 0 ] || return 1
  log "apt-get update"
  apt-get update -qq >&2 || die "apt-get update failed"
  UPDATED=1
}

# --- host build tools --------------------------------------------------------
ensure_tools() { # ensure_tools PATH-OR-COMMAND:PACKAGE ...
  local spec what pkgs=()
  for spec in "$@"; do
    what=${spec%%:*}
    if [ "${what#/}" != "$what" ]; then [ -e "$what" ] && continue
    else command -v "$what" >/dev/null 2>&1 && continue; fi
    pkgs+=("${spec#*:}")
  done
  [ ${#pkgs[@]} -gt 0 ] || return 0
  log "installing host tools: ${pkgs[*]}"
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2 ||
    { apt_update_once && apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2; } ||
    die "apt-get install ${pkgs[*]} failed"
}
ensure_tools debootstrap:debootstrap mkfs.ext4:e2fsprogs mcopy:mtools mkfs.vfat:dosfstools \
  sfdisk:fdisk syslinux:syslinux /usr/lib/syslinux/mbr/gptmbr.bin:syslinux-common \
  /usr/lib/systemd/boot/efi/systemd-bootx64.efi:systemd-boot-efi qemu-img:qemu-utils \
  flock:util-linux sha256sum:coreutils

# --- work dir and cleanup (never remove anything while something is mounted) --
WORK=$(mktemp -d "${VMSNAP_BUILD_TMPDIR:-/var/tmp}/vmsnap-debian.XXXXXX")
ROOT=$WORK/root
unmount_all() {
  local mp
  for mp in "$ROOT/sys" "$ROOT/proc"; do
    if mountpoint -q "$mp" 2>/dev/null; then umount "$mp" || umount -l "$mp" || true; fi
  done
}
cleanup() {
  unmount_all
  if findmnt -rn -o TARGET | grep -q "^$WORK"; then
    log "something is still mounted under $WORK: left in place"
  else
    rm -rf "$WORK"
  fi
  rm -rf "$OUT/.new.$$" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. root tree --------------------------------------------------------------
# VMSNAP_DEBIAN_TREE_CACHE=DIR (for work on this script): keep the tree as it is
# after debootstrap and apt-get install in DIR/tree.tar and start from it next time.
TREE_CACHE=${VMSNAP_DEBIAN_TREE_CACHE:-}
if [ -n "$TREE_CACHE" ] && [ -s "$TREE_CACHE/tree.tar" ]; then
  log "root tree from $TREE_CACHE/tree.tar (VMSNAP_DEBIAN_TREE_CACHE)"
  mkdir -p "$ROOT"
  tar -C "$ROOT" --numeric-owner --xattrs --xattrs-include='*' -xpf "$TREE_CACHE/tree.tar"
  TREE_FROM_CACHE=1
else
  TREE_FROM_CACHE=0
  log "debootstrap --variant=minbase $SUITE from $MIRROR (about 2 minutes)"
  debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$ROOT" "$MIRROR" \
    >"$WORK/debootstrap.log" 2>&1 || { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
fi

# apt in the chroot resolves names with the host's resolver (systemd-resolved's
# postinst replaces /etc/resolv.conf with its stub link; set again at the end).
host_dns() { rm -f "$ROOT/etc/resolv.conf"; cp /etc/resolv.conf "$ROOT/etc/resolv.conf"; }
in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  DEBIAN_FRONTEND=noninteractive LC_ALL=C HOME=/root "$@"; }

mount -t proc proc "$ROOT/proc"
mount -t sysfs sysfs "$ROOT/sys"

# No services start inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"

cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
cat >"$ROOT/etc/apt/apt.conf.d/90vmsnap" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
EOF
# Keep docs, man pages and translations out of the image.
cat >"$ROOT/etc/dpkg/dpkg.cfg.d/90vmsnap-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF

# initramfs: zstd; only the modules a root disk needs (virtio, SCSI, SATA, NVMe).
mkdir -p "$ROOT/etc/initramfs-tools/conf.d"
cat >"$ROOT/etc/initramfs-tools/conf.d/90vmsnap" <<'EOF'
MODULES=list
COMPRESS=zstd
EOF

if [ "$TREE_FROM_CACHE" -eq 0 ]; then
  log "installing guest packages"
  host_dns
  in_root apt-get update -qq >"$WORK/apt.log" 2>&1 || { tail -n 30 "$WORK/apt.log" >&2; die "apt-get update in the guest failed"; }
  in_root apt-get -y -q dist-upgrade >>"$WORK/apt.log" 2>&1 ||
    { tail -n 30 "$WORK/apt.log" >&2; die "apt-get dist-upgrade failed"; }
  # initramfs-tools first, so its module list is in place before the kernel's first initrd.
  in_root apt-get install -y -q initramfs-tools >>"$WORK/apt.log" 2>&1 ||
    { tail -n 30 "$WORK/apt.log" >&2; die "apt-get install initramfs-tools failed"; }
  cat >>"$ROOT/etc/initramfs-tools/modules" <<'EOF'
# vmsnap: root disk drivers (ext4 is built into the cloud kernel)
virtio_pci
virtio_blk
virtio_scsi
sd_mod
ahci
nvme
EOF
  # shellcheck disable=SC2086
  in_root apt-get install -y -q $GUEST_PKGS >>"$WORK/apt.log" 2>&1 ||
    { tail -n 30 "$WORK/apt.log" >&2; die "apt-get install failed"; }
  if [ -n "$TREE_CACHE" ]; then
    mkdir -p "$TREE_CACHE"
    unmount_all
    tar -C "$ROOT" --numeric-owner --xattrs --xattrs-include='*' -cf "$TREE_CACHE/tree.tar.tmp" .
    mv -f "$TREE_CACHE/tree.tar.tmp" "$TREE_CACHE/tree.tar"
    mount -t proc proc "$ROOT/proc"
    mount -t sysfs sysfs "$ROOT/sys"
  fi
fi

KVER=$(cd "$ROOT/boot" && ls vmlinuz-* | sed 's/^vmlinuz-//' | sort -V | tail -n1)
[ -n "$KVER" ] && [ -s "$ROOT/boot/initrd.img-$KVER" ] || die "no kernel/initrd in the guest's /boot"
log "kernel $KVER"

# --- 2. guest configuration ------------------------------------------------------
log "configuring the guest"
echo "$HOSTNAME_DEFAULT" >"$ROOT/etc/hostname"
cat >"$ROOT/etc/hosts" <<EOF
127.0.0.1	localhost
127.0.1.1	$HOSTNAME_DEFAULT
::1		localhost ip6-localhost ip6-loopback
EOF
# systemd-resolved's stub (DNS from DHCP), not the host's resolver that debootstrap copied.
ln -sfn ../run/systemd/resolve/stub-resolv.conf "$ROOT/etc/resolv.conf"

cat >"$ROOT/etc/fstab" <<EOF
# vmsnap Debian test guest
LABEL=$ROOT_LABEL	/	ext4	errors=remount-ro	0	0
EOF

# A machine-id per clone: empty means "make one at first boot".
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"

# DHCP on every wired NIC whatever it is called; cloud-init's own network config
# (10-cloud-init-*.network) sorts first and wins when a seed brings one.
mkdir -p "$ROOT/etc/systemd/network"
cat >"$ROOT/etc/systemd/network/80-vmsnap-dhcp.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
in_root systemctl enable systemd-networkd.service systemd-resolved.service >/dev/null 2>&1
# Do not hold boot for a network that may not exist (a VM without a NIC).
in_root systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1
# Timers that wake up and churn the disk/CPU in a test guest.
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer; do
  in_root systemctl mask "$u" >/dev/null 2>&1 || true
done

# qemu-guest-agent: udev starts Debian's unit when the virtio port appears, but with
# default dependencies it waits for sysinit.target, and so for cloud-init's first two
# stages (30-40 s of Python under TCG). It needs only a writable root.
mkdir -p "$ROOT/etc/systemd/system/qemu-guest-agent.service.d"
cat >"$ROOT/etc/systemd/system/qemu-guest-agent.service.d/vmsnap-early.conf" <<'EOF'
# vmsnap: answer as soon as the root filesystem is writable, not after cloud-init.
# So an answering agent does not mean cloud-init has finished: ask `cloud-init status --wait`.
[Unit]
DefaultDependencies=no
After=local-fs.target
Before=shutdown.target
Conflicts=shutdown.target
EOF

# udev would load kvm/kvm_amd (QEMU's TCG CPU models offer svm): no use in a test
# guest, and every module load costs time under TCG.
cat >"$ROOT/etc/modprobe.d/vmsnap-blacklist.conf" <<'EOF'
blacklist kvm
blacklist kvm_amd
blacklist kvm_intel
EOF

# Serial console: root logged in on ttyS0 (the getty comes from console=ttyS0).
mkdir -p "$ROOT/etc/systemd/system/serial-getty@ttyS0.service.d"
cat >"$ROOT/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM
EOF
# Root has no password (locked): console autologin and SSH keys only.
in_root passwd -l root >/dev/null

# SSH: no host keys in the image. cloud-init makes them per instance; this unit
# makes them when cloud-init did not run (or made none).
rm -f "$ROOT"/etc/ssh/ssh_host_*
mkdir -p "$ROOT/etc/ssh/sshd_config.d"
cat >"$ROOT/etc/ssh/sshd_config.d/50-vmsnap.conf" <<'EOF'
# vmsnap test guest: root only with a key, never with a password
PermitRootLogin prohibit-password
UseDNS no
EOF
cat >"$ROOT/etc/systemd/system/vmsnap-ssh-hostkeys.service" <<'EOF'
[Unit]
Description=Make SSH host keys if cloud-init made none
After=cloud-init.service
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -N "" -t ed25519 -f /etc/ssh/ssh_host_ed25519_key
ExecStart=/bin/sh -c 'test -e /etc/ssh/ssh_host_ecdsa_key || exec /usr/bin/ssh-keygen -q -N "" -t ecdsa -f /etc/ssh/ssh_host_ecdsa_key'

[Install]
WantedBy=ssh.service
EOF
in_root systemctl enable vmsnap-ssh-hostkeys.service >/dev/null 2>&1

# cloud-init: NoCloud seed (a disk labelled cidata) or nothing; runs also when no
# seed is found, with the None datasource (host keys, default user, fallback network).
cat >"$ROOT/etc/cloud/cloud.cfg.d/90_vmsnap.cfg" <<'EOF'
# vmsnap test guest
datasource_list: [ NoCloud, None ]
# C.UTF-8 is built into libc: no locale-gen at first boot
locale: C.UTF-8
# Host keys per instance: ed25519 and ecdsa only (RSA and DSA keygen cost many
# seconds under TCG; OpenSSH 9 does not use DSA anyway).
ssh_genkeytypes: [ ed25519, ecdsa ]
# Debian's module lists without the ones that cost time and do nothing here
# (grub-dpkg, apt-configure, apt-pipelining, snap, byobu, keyboard, ntp, rsyslog,
# fan, landscape, lxd, puppet, chef, mcollective, salt-minion, rightscale, rmc), and
# without growpart + resizefs: they run at every boot (15 s under TCG on a busy host)
# to grow a disk that vmsnap did not resize; `growpart /dev/vda 2 && resize2fs /dev/vda2`
# (cloud-guest-utils is installed) does it on demand.
cloud_init_modules:
 - migrator
 - seed_random
 - bootcmd
 - write-files
 - disk_setup
 - mounts
 - set_hostname
 - update_hostname
 - update_etc_hosts
 - ca-certs
 - users-groups
 - ssh
cloud_config_modules:
 - ssh-import-id
 - locale
 - set-passwords
 - timezone
 - disable-ec2-metadata
 - runcmd
cloud_final_modules:
 - package-update-upgrade-install
 - write-files-deferred
 - scripts-vendor
 - scripts-per-once
 - scripts-per-boot
 - scripts-per-instance
 - scripts-user
 - ssh-authkey-fingerprints
 - keys-to-console
 - install-hotplug
 - phone-home
 - final-message
 - power-state-change
EOF
cat >"$ROOT/etc/cloud/ds-identify.cfg" <<'EOF'
policy: search,found=all,maybe=all,notfound=enabled
EOF
echo 'LANG=C.UTF-8' >"$ROOT/etc/default/locale"

# Nothing host-specific or cached stays in the image.
in_root apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/debconf/*-old \
  "$ROOT"/var/log/*.log "$ROOT"/var/log/apt/* "$ROOT"/tmp/* "$ROOT"/var/tmp/* \
  "$ROOT"/root/.bash_history "$ROOT/usr/sbin/policy-rc.d"
find "$ROOT/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete 2>/dev/null || true
find "$ROOT/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/*
find "$ROOT/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true

# Package versions for the manifest.
in_root dpkg-query -W -f '${Package}\t${Version}\n' | sort >"$WORK/packages.tsv"
unmount_all
[ -z "$(ls -A "$ROOT/proc")" ] || die "$ROOT/proc still mounted"
ROOT_BYTES=$(du -sb "$ROOT" | cut -f1)
log "root tree: $((ROOT_BYTES / 1048576)) MiB, $(wc -l <"$WORK/packages.tsv") packages"

# --- 3. disks ------------------------------------------------------------------
SECTOR=512
BOOT_START=2048
BOOT_SECTORS=$((BOOT_MIB * 2048))
ROOT_START=$((BOOT_START + BOOT_SECTORS))
DISK_SECTORS=$((DISK_MIB * 2048))
# The backup GPT takes the last 33 sectors; the root partition ends 1 MiB before
# the end of the disk, on a 1 MiB boundary, well clear of it.
ROOT_SECTORS=$((DISK_SECTORS - 2048 - ROOT_START))

log "root filesystem (ext4, mkfs.ext4 -d)"
mkfs.ext4 -q -F -L "$ROOT_LABEL" -b 4096 -E lazy_itable_init=0,lazy_journal_init=0 \
  -d "$ROOT" "$WORK/root.ext4" "$((ROOT_SECTORS / 8))" >/dev/null || die "mkfs.ext4 -d failed"

make_fat() { # make_fat FILE LABEL: a FAT32 filesystem the size of the boot partition
  rm -f "$1"
  # -h: hidden sectors = partition start, as a partition's boot sector must say
  mkfs.vfat -F 32 -s 1 -S 512 -h "$BOOT_START" -n "$2" -C "$1" $((BOOT_SECTORS / 2)) >/dev/null ||
    die "mkfs.vfat failed"
}
KERNEL=$ROOT/boot/vmlinuz-$KVER
INITRD=$ROOT/boot/initrd.img-$KVER

# UEFI: ESP with systemd-boot as the removable-media loader.
log "ESP (systemd-boot)"
make_fat "$WORK/esp.fat" ESP
export MTOOLS_SKIP_CHECK=1
mmd -i "$WORK/esp.fat" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries ::/debian
mcopy -i "$WORK/esp.fat" /usr/lib/systemd/boot/efi/systemd-bootx64.efi ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$WORK/esp.fat" "$KERNEL" ::/debian/vmlinuz
mcopy -i "$WORK/esp.fat" "$INITRD" ::/debian/initrd.img
printf 'default debian.conf\ntimeout 0\neditor no\n' >"$WORK/loader.conf"
printf 'title Debian 12 (vmsnap test guest)\nversion %s\nlinux /debian/vmlinuz\ninitrd /debian/initrd.img\noptions %s\n' \
  "$KVER" "$CMDLINE" >"$WORK/debian.conf"
mcopy -i "$WORK/esp.fat" "$WORK/loader.conf" ::/loader/loader.conf
mcopy -i "$WORK/esp.fat" "$WORK/debian.conf" ::/loader/entries/debian.conf

# BIOS: FAT /boot with syslinux (installed with its mtools installer).
log "boot partition (syslinux)"
make_fat "$WORK/boot.fat" BOOT
mmd -i "$WORK/boot.fat" ::/syslinux
mcopy -i "$WORK/boot.fat" "$KERNEL" ::/vmlinuz
mcopy -i "$WORK/boot.fat" "$INITRD" ::/initrd.img
cat >"$WORK/syslinux.cfg" <<EOF
SERIAL 0 115200
DEFAULT debian
PROMPT 0
TIMEOUT 0
LABEL debian
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND $CMDLINE
EOF
mcopy -i "$WORK/boot.fat" "$WORK/syslinux.cfg" ::/syslinux/syslinux.cfg
syslinux --install --directory /syslinux "$WORK/boot.fat" >&2 || die "syslinux --install failed"

make_disk() { # make_disk RAW FATFILE BOOT-TYPE [ATTRS]
  local raw=$1
  rm -f "$raw"
  truncate -s "$((DISK_SECTORS * SECTOR))" "$raw"
  sfdisk -q --no-reread --no-tell-kernel "$raw" >&2 <<EOF || die "sfdisk failed"
label: gpt
unit: sectors
first-lba: 2048
start=$BOOT_START, size=$BOOT_SECTORS, type=$3, uuid=$BOOT_PARTUUID, name="${5:-boot}"${4:+, attrs="$4"}
start=$ROOT_START, size=$ROOT_SECTORS, type=$ROOT_X86_64_TYPE, uuid=$ROOT_PARTUUID, name="root"
EOF
  dd if="$2" of="$raw" bs=1M seek=$((BOOT_START / 2048)) conv=notrunc,sparse status=none
  dd if="$WORK/root.ext4" of="$raw" bs=1M seek=$((ROOT_START / 2048)) conv=notrunc,sparse status=none
}

log "disk images"
make_disk "$WORK/uefi.raw" "$WORK/esp.fat" "$ESP_TYPE" "" "esp"
make_disk "$WORK/bios.raw" "$WORK/boot.fat" "$LINUXFS_TYPE" "LegacyBIOSBootable" "boot"
# SeaBIOS runs the MBR's code: syslinux's GPT MBR boots the partition marked
# LegacyBIOSBootable. Only the 440 code bytes: the protective MBR's table stays.
dd if=/usr/lib/syslinux/mbr/gptmbr.bin of="$WORK/bios.raw" bs=440 count=1 conv=notrunc status=none

NEW=$OUT/.new.$$
mkdir -p "$NEW"
# Compressed with zstd: 145 MB instead of 377 MB a disk; reading all of it back costs
# about 0.6 s more CPU than an uncompressed file, of which a boot reads a fraction.
# (Writes go to the overlays, uncompressed.) zlib where qemu-img lacks zstd.
COMPRESSION=zstd
qemu-img create -f qcow2 -o help /dev/null 2>/dev/null | grep -q compression_type || COMPRESSION=zlib
for fw in uefi bios; do
  if [ "$COMPRESSION" = zstd ]; then
    qemu-img convert -c -f raw -O qcow2 -o cluster_size=65536,compression_type=zstd "$WORK/$fw.raw" "$NEW/debian-$fw.qcow2" ||
      die "qemu-img convert failed"
  else
    qemu-img convert -c -f raw -O qcow2 -o cluster_size=65536 "$WORK/$fw.raw" "$NEW/debian-$fw.qcow2" ||
      die "qemu-img convert failed"
  fi
  rm -f "$WORK/$fw.raw"
done

# --- 4. manifest -----------------------------------------------------------------
json_str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }
pkgver() { awk -F'\t' -v p="$1" '$1 == p {print $2}' "$WORK/packages.tsv"; }
image_json() { # image_json FILE FIRMWARE
  local f=$1
  printf '{"file": "%s", "firmware": "%s", "virtualSize": %s, "fileSize": %s, "sha256": "%s"}' \
    "${f##*/}" "$2" \
    "$(qemu-img info --output=json "$f" | sed -n 's/^ *"virtual-size": *\([0-9]*\).*/\1/p' | head -n1)" \
    "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -d' ' -f1)"
}
T1=$(date +%s)
{
  printf '{\n'
  printf '  "name": "vmsnap-debian",\n'
  printf '  "buildScriptVersion": %s,\n' "$BUILD_VERSION"
  printf '  "buildScriptSha256": "%s",\n' "$(sha256sum "$SCRIPT_PATH" | cut -d' ' -f1)"
  printf '  "builtAt": "%s",\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  printf '  "buildSeconds": %s,\n' "$((T1 - T0))"
  printf '  "suite": "%s",\n' "$SUITE"
  printf '  "debianVersion": %s,\n' "$(json_str "$(cat "$ROOT/etc/debian_version")")"
  printf '  "kernelVersion": "%s",\n' "$KVER"
  printf '  "kernelCmdline": %s,\n' "$(json_str "$CMDLINE")"
  printf '  "rootLabel": "%s",\n' "$ROOT_LABEL"
  printf '  "partitions": {"boot": {"number": 1, "partuuid": "%s", "startSector": %s, "sectors": %s}, "root": {"number": 2, "partuuid": "%s", "startSector": %s, "sectors": %s}},\n' \
    "$BOOT_PARTUUID" "$BOOT_START" "$BOOT_SECTORS" "$ROOT_PARTUUID" "$ROOT_START" "$ROOT_SECTORS"
  printf '  "rootTreeBytes": %s,\n' "$ROOT_BYTES"
  printf '  "qcow2Compression": "%s",\n' "$COMPRESSION"
  printf '  "images": {\n    "uefi": %s,\n    "bios": %s\n  },\n' \
    "$(image_json "$NEW/debian-uefi.qcow2" uefi)" "$(image_json "$NEW/debian-bios.qcow2" bios)"
  printf '  "keyPackages": {'
  sep=
  for p in linux-image-$KVER systemd cloud-init qemu-guest-agent openssh-server systemd-boot-efi syslinux; do
    v=$(pkgver "$p")
    [ -n "$v" ] || v=$(dpkg-query -W -f '${Version}' "$p" 2>/dev/null || true)   # host-side boot loaders
    printf '%s\n    "%s": "%s"' "$sep" "$p" "$v"
    sep=,
  done
  printf '\n  },\n  "packages": {'
  sep=
  while IFS=$'\t' read -r p v; do
    printf '%s\n    "%s": "%s"' "$sep" "$p" "$v"
    sep=,
  done <"$WORK/packages.tsv"
  printf '\n  }\n}\n'
} >"$NEW/manifest.json"

# Move into place; manifest.json last, so a killed build is never taken as complete.
rm -f "$OUT/manifest.json"
mv -f "$NEW/debian-uefi.qcow2" "$OUT/debian-uefi.qcow2"
mv -f "$NEW/debian-bios.qcow2" "$OUT/debian-bios.qcow2"
mv -f "$NEW/manifest.json" "$OUT/manifest.json"
rmdir "$NEW"
log "built in $((T1 - T0)) s: $OUT/debian-uefi.qcow2 ($(du -m "$OUT/debian-uefi.qcow2" | cut -f1) MiB)," \
  "$OUT/debian-bios.qcow2 ($(du -m "$OUT/debian-bios.qcow2" | cut -f1) MiB), $OUT/manifest.json"
