#!/usr/bin/env bash
# Install what vmsnap and its tests need on Debian/Ubuntu: QEMU, qemu-img, and
# the tools that build the demo guest, and chromium for the web UI's browser
# tests. Idempotent: installs only what is missing.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

PACKAGES=(qemu-system-x86 qemu-utils busybox-static cpio gzip xz-utils zstd kmod e2fsprogs xorriso)
# --test: also what the test suite needs (Chromium drives the web UI's browser tests).
# libvirt (domain XML written by a real libvirtd), OVMF (UEFI guests), debootstrap and
# friends (the Debian test guest), libguestfs (reading guest filesystems).
if [ "${1:-}" = --test ]; then
  PACKAGES+=(chromium libvirt-daemon-system libvirt-clients ovmf iproute2 util-linux openssh-client)
  # libguestfs reads guest filesystems (vmsnap files/cp/restore-file/diff/search; its appliance
  # boots Debian's cloud kernel); the rest make the test images without mounting anything.
  PACKAGES+=(python3-guestfs libguestfs-tools linux-image-cloud-amd64 libguestfs-xfs fdisk dosfstools mtools xfsprogs btrfs-progs lvm2)
fi
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "installing: ${missing[*]}" >&2
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v qemu-system-x86_64 >/dev/null && command -v qemu-img >/dev/null
