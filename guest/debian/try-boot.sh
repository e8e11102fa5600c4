#!/usr/bin/env bash
# Boot the Debian test guest and check it, on a throw-away overlay (the image is never written).
#
#   guest/debian/try-boot.sh IMAGE bios|uefi [--quick]
#
# --quick: one boot without a seed, timed to the guest agent, then power off.
# Otherwise three boots of the same overlay (and, for uefi, the same VARS file):
#   1. no seed:                  agent answers; sshd has host keys (cloud-init's None datasource)
#   2. NoCloud seed, instance A: `ssh vmsnap@127.0.0.1 true` through the port forward;
#                                uefi: a new variable written under /sys/firmware/efi/efivars
#                                shows up in the VARS file on the host
#   3. NoCloud seed, instance B: new SSH host keys (ssh-keyscan fingerprints differ from boot 2);
#                                uefi: the variable is still there after the power cycle, and
#                                can be rewritten after `chattr -i`
#   4. no seed, cloud-init disabled (/etc/cloud/cloud-init.disabled), host keys and cloud-init's
#      network file deleted: vmsnap-ssh-hostkeys.service makes keys, 80-vmsnap-dhcp.network
#      gets the address, ssh vmsnap@ still works
# Prints one RESULT line per boot and PASS/FAIL per check; exits non-zero if a check fails.
# Env: MEM (MiB, default 512), TIMEOUT (s per wait, default 600), KEEP=1 keeps the work dir.
set -euo pipefail

die() { printf 'try-boot: error: %s\n' "$*" >&2; exit 2; }
say() { printf 'try-boot: %s\n' "$*" >&2; }

[ $# -ge 2 ] || die "usage: $0 IMAGE bios|uefi [--quick]"
IMAGE=$(readlink -f "$1")
FW=$2
QUICK=0
[ "${3:-}" = --quick ] && QUICK=1
[ -f "$IMAGE" ] || die "no image $1"
case $FW in bios | uefi) ;; *) die "firmware must be bios or uefi" ;; esac
MEM=${MEM:-512}
TIMEOUT=${TIMEOUT:-600}
OVMF_CODE=${OVMF_CODE:-/usr/share/OVMF/OVMF_CODE_4M.fd}
OVMF_VARS=${OVMF_VARS:-/usr/share/OVMF/OVMF_VARS_4M.fd}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
QGA="node $HERE/qga.mjs"
EFI_GUID=3b2d9f5e-8c1a-4e6b-9f2d-5a6c7e8f9a0b
EFI_VAR=/sys/firmware/efi/efivars/VmsnapTest-$EFI_GUID

for c in qemu-system-x86_64 qemu-img node ssh ssh-keygen ssh-keyscan mkfs.vfat mcopy; do
  command -v "$c" >/dev/null || die "$c not found"
done
[ "$FW" = bios ] || [ -r "$OVMF_CODE" ] || die "no $OVMF_CODE (apt-get install ovmf)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/vmsnap-try.XXXXXX")
QEMU_PID=
cleanup() {
  if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then kill "$QEMU_PID" 2>/dev/null || true; wait "$QEMU_PID" 2>/dev/null || true; fi
  if [ "${KEEP:-0}" = 1 ]; then say "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
FAILS=0
check() { # check NAME CONDITION-RESULT(0/1)
  if [ "$2" -eq 0 ]; then printf 'PASS %s\n' "$1"; else printf 'FAIL %s\n' "$1"; FAILS=$((FAILS + 1)); fi
}

qemu-img create -q -f qcow2 -b "$IMAGE" -F qcow2 "$WORK/disk.qcow2"
[ "$FW" = uefi ] && cp "$OVMF_VARS" "$WORK/vars.fd"
ssh-keygen -q -t ed25519 -N '' -C vmsnap-try -f "$WORK/id_ed25519"
PORT=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')

make_seed() { # make_seed INSTANCE-ID -> $WORK/seed-ID.img (vfat labelled CIDATA, made with mtools)
  local iid=$1 d=$WORK/seed-$1
  mkdir -p "$d"
  printf 'instance-id: %s\nlocal-hostname: vmsnap-%s\n' "$iid" "$iid" >"$d/meta-data"
  cat >"$d/user-data" <<EOF
#cloud-config
users:
  - default
  - name: vmsnap
    shell: /bin/bash
    sudo: "ALL=(ALL) NOPASSWD:ALL"
    ssh_authorized_keys:
      - $(cat "$WORK/id_ed25519.pub")
EOF
  mkfs.vfat -n CIDATA -C "$WORK/seed-$iid.img" 1024 >/dev/null
  MTOOLS_SKIP_CHECK=1 mcopy -i "$WORK/seed-$iid.img" "$d/meta-data" "$d/user-data" ::/
}

start_vm() { # start_vm [SEED-IMAGE]
  local args=(qemu-system-x86_64 -machine q35 -accel tcg -m "$MEM" -smp 1
    -nodefaults -no-user-config -display none)
  if [ "$FW" = uefi ]; then
    args+=(-drive "if=pflash,format=raw,unit=0,readonly=on,file=$OVMF_CODE"
      -drive "if=pflash,format=raw,unit=1,file=$WORK/vars.fd")
  fi
  args+=(-drive "if=none,id=disk0,file=$WORK/disk.qcow2,format=qcow2"
    -device virtio-blk-pci,drive=disk0,bootindex=0)
  if [ -n "${1:-}" ]; then
    args+=(-drive "if=none,id=seed0,file=$1,format=raw,readonly=on" -device virtio-blk-pci,drive=seed0)
  fi
  args+=(-netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$PORT-:22"
    -device virtio-net-pci,netdev=net0,romfile=
    -device virtio-serial-pci,id=vser0
    -chardev "socket,id=qga0,path=$WORK/qga.sock,server=on,wait=off"
    -device virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0
    -chardev "file,id=ser0,path=$WORK/serial-$BOOT.log" -serial chardev:ser0
    -qmp "unix:$WORK/qmp.sock,server=on,wait=off")
  say "boot $BOOT: ${args[*]}"
  T0=$(now)
  "${args[@]}" >"$WORK/qemu-$BOOT.log" 2>&1 &
  QEMU_PID=$!
}

cpu_s() { # CPU seconds QEMU has used so far (user + system): boot cost independent of host load
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.1f", ($14 + $15) / hz }' "/proc/$QEMU_PID/stat" 2>/dev/null || echo "?"
}
wait_agent() {
  local s
  s=$($QGA wait "$WORK/qga.sock" "$TIMEOUT") || { tail -n 20 "$WORK/serial-$BOOT.log" >&2; die "boot $BOOT: no guest agent after ${TIMEOUT}s"; }
  AGENT_S=$(since "$T0")
  AGENT_CPU=$(cpu_s)
  say "boot $BOOT: guest agent answers after ${AGENT_S}s (QEMU used ${AGENT_CPU}s CPU; load $(cut -d' ' -f1 /proc/loadavg))"
}
ssh_run() { ssh -q -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
  -o ConnectTimeout=20 -o LogLevel=ERROR -i "$WORK/id_ed25519" -p "$PORT" vmsnap@127.0.0.1 "$@"; }
wait_ssh() { # wait_ssh: until `ssh vmsnap@ true` works
  local end=$(($(date +%s) + TIMEOUT))
  until ssh_run true 2>/dev/null; do
    [ "$(date +%s)" -lt "$end" ] || { SSH_S=never; SSH_CPU=never; return 1; }
    sleep 1
  done
  SSH_S=$(since "$T0")
  SSH_CPU=$(cpu_s)
  say "boot $BOOT: ssh vmsnap@127.0.0.1 -p $PORT works after ${SSH_S}s (QEMU CPU ${SSH_CPU}s)"
}
fingerprint() { # the ed25519 host key's fingerprint through the forward, or nothing (a few tries)
  local i fp
  for i in 1 2 3; do
    fp=$(ssh-keyscan -T 30 -p "$PORT" -t ed25519 127.0.0.1 2>/dev/null | ssh-keygen -lf - 2>/dev/null | awk '{print $2}') || true
    [ -n "$fp" ] && { echo "$fp"; return 0; }
    sleep 2
  done
  return 0
}
wait_hostkey() {
  local end=$(($(date +%s) + TIMEOUT)) fp=
  until fp=$(ssh-keyscan -T 30 -p "$PORT" -t ed25519 127.0.0.1 2>/dev/null | ssh-keygen -lf - 2>/dev/null | awk '{print $2}') && [ -n "$fp" ]; do
    [ "$(date +%s)" -lt "$end" ] || { SSH_S=never; SSH_CPU=never; return 1; }
    sleep 1
  done
  SSH_S=$(since "$T0")
  SSH_CPU=$(cpu_s)
  FP=$fp
  say "boot $BOOT: sshd offers host key $fp after ${SSH_S}s"
}
gexec() { $QGA exec "$WORK/qga.sock" "$@"; }
power_off() { # guest-shutdown through the agent; QMP quit if the guest does not power off
  local t=$(now) i=0
  $QGA shutdown "$WORK/qga.sock" powerdown || true
  while kill -0 "$QEMU_PID" 2>/dev/null && [ $i -lt 240 ]; do sleep 0.5; i=$((i + 1)); done
  if kill -0 "$QEMU_PID" 2>/dev/null; then
    check "boot $BOOT: guest-shutdown powers the guest off" 1
    $QGA qmp "$WORK/qmp.sock" quit || kill "$QEMU_PID"
  else
    say "boot $BOOT: powered off $(since "$t")s after guest-shutdown"
  fi
  wait "$QEMU_PID" 2>/dev/null || true
  QEMU_PID=
}
efivar_in_vars_file() { # efivar_in_vars_file VALUE: the variable's name followed by VALUE is in vars.fd
  node -e '
    const d = require("fs").readFileSync(process.argv[1]);
    const i = d.indexOf(Buffer.concat([Buffer.from("VmsnapTest\0", "utf16le"), Buffer.from(process.argv[2])]));
    process.exit(i >= 0 ? 0 : 1);' "$WORK/vars.fd" "$1"
}

# --- boot 1: no seed --------------------------------------------------------------
BOOT=1
start_vm
wait_agent
AGENT1=$AGENT_S
if [ "$QUICK" -eq 1 ]; then
  printf 'RESULT firmware=%s boot=1 seed=none agent=%ss agent-cpu=%ss\n' "$FW" "$AGENT1" "$AGENT_CPU"
  power_off
  exit "$FAILS"
fi
wait_hostkey && FP1=$FP || FP1=
check "boot 1 (no seed): sshd has host keys" "$([ -n "$FP1" ] && echo 0 || echo 1)"
DS=$(gexec cloud-init status --long 2>/dev/null | tr '\n' ' ' || true)
say "boot 1: cloud-init: $DS"
printf 'RESULT firmware=%s boot=1 seed=none agent=%ss agent-cpu=%ss sshd-keys=%ss sshd-keys-cpu=%ss\n' "$FW" "$AGENT1" "$AGENT_CPU" "$SSH_S" "$SSH_CPU"
power_off

# --- boot 2: seed, instance A -------------------------------------------------------
BOOT=2
make_seed iid-a
start_vm "$WORK/seed-iid-a.img"
wait_agent
AGENT2=$AGENT_S
AGENT_CPU2=$AGENT_CPU
wait_ssh && r=0 || r=$?
check "boot 2 (seed iid-a): ssh -p $PORT -i key vmsnap@127.0.0.1 true" "$r"
SSH2=$SSH_S
SSH_CPU2=$SSH_CPU
FP2=$(fingerprint)
HN2=$(ssh_run hostname 2>/dev/null || true)
check "boot 2: hostname from meta-data is vmsnap-iid-a (got '$HN2')" "$([ "$HN2" = vmsnap-iid-a ] && echo 0 || echo 1)"
check "boot 2: new instance, new host key (boot 1 $FP1, boot 2 $FP2)" "$([ -n "$FP2" ] && [ "$FP2" != "$FP1" ] && echo 0 || echo 1)"
if [ "$FW" = uefi ]; then
  gexec bash -c "printf '\\x07\\x00\\x00\\x00vmsnap-iid-a' > $EFI_VAR" && r=0 || r=$?
  check "boot 2: write $EFI_VAR" "$r"
  efivar_in_vars_file vmsnap-iid-a && r=0 || r=$?
  check "boot 2: the variable is in the VARS file on the host at once" "$r"
fi
# where the time went, as the guest saw it (informational)
gexec sh -c 'cloud-init status --wait >/dev/null; systemd-analyze; systemd-analyze critical-chain ssh.service | sed -n "3,6p"; cloud-init analyze show | grep -E "^Finished stage|^Total"' 2>/dev/null |
  sed "s/^/try-boot: boot 2: guest: /" >&2 || true
printf 'RESULT firmware=%s boot=2 seed=iid-a agent=%ss agent-cpu=%ss ssh=%ss ssh-cpu=%ss\n' "$FW" "$AGENT2" "$AGENT_CPU2" "$SSH2" "$SSH_CPU2"
power_off

# --- boot 3: seed, instance B -------------------------------------------------------
BOOT=3
make_seed iid-b
start_vm "$WORK/seed-iid-b.img"
wait_agent
AGENT3=$AGENT_S
AGENT_CPU3=$AGENT_CPU
wait_ssh && r=0 || r=$?
check "boot 3 (seed iid-b): ssh vmsnap@127.0.0.1 true" "$r"
SSH3=$SSH_S
SSH_CPU3=$SSH_CPU
FP3=$(fingerprint)
check "boot 3: new instance-id, new SSH host key (boot 2 $FP2, boot 3 $FP3)" "$([ -n "$FP3" ] && [ "$FP3" != "$FP2" ] && echo 0 || echo 1)"
if [ "$FW" = uefi ]; then
  # (the first 4 bytes are the attributes; `tail -c +5` inside the guest reads nothing from efivarfs)
  V=$(gexec cat "$EFI_VAR" 2>/dev/null | tail -c +5 || true)
  check "boot 3: the variable survived the power cycle (read '$V')" "$([ "$V" = vmsnap-iid-a ] && echo 0 || echo 1)"
  gexec bash -c "printf '\\x07\\x00\\x00\\x00vmsnap-x' > $EFI_VAR" 2>/dev/null && r=0 || r=$?
  check "boot 3: rewriting it without chattr -i is refused (immutable)" "$([ "$r" -ne 0 ] && echo 0 || echo 1)"
  gexec bash -c "chattr -i $EFI_VAR && printf '\\x07\\x00\\x00\\x00vmsnap-iid-b' > $EFI_VAR" && r=0 || r=$?
  check "boot 3: chattr -i, then rewrite" "$r"
  efivar_in_vars_file vmsnap-iid-b && r=0 || r=$?
  check "boot 3: the new value is in the VARS file" "$r"
fi
printf 'RESULT firmware=%s boot=3 seed=iid-b agent=%ss agent-cpu=%ss ssh=%ss ssh-cpu=%ss\n' "$FW" "$AGENT3" "$AGENT_CPU3" "$SSH3" "$SSH_CPU3"
gexec sh -c 'touch /etc/cloud/cloud-init.disabled && rm -f /etc/ssh/ssh_host_* /etc/systemd/network/10-cloud-init-*.network' && r=0 || r=$?
check "boot 3: disable cloud-init, delete host keys and cloud-init's network file" "$r"
power_off

# --- boot 4: no seed, no cloud-init --------------------------------------------------
BOOT=4
start_vm
wait_agent
AGENT4=$AGENT_S
AGENT_CPU4=$AGENT_CPU
wait_ssh && r=0 || r=$?
check "boot 4 (cloud-init disabled): DHCP by 80-vmsnap-dhcp.network, ssh vmsnap@127.0.0.1 true" "$r"
FP4=$(fingerprint)
check "boot 4: vmsnap-ssh-hostkeys.service made new host keys (boot 3 $FP3, boot 4 $FP4)" "$([ -n "$FP4" ] && [ "$FP4" != "$FP3" ] && echo 0 || echo 1)"
printf 'RESULT firmware=%s boot=4 seed=none cloud-init=disabled agent=%ss agent-cpu=%ss ssh=%ss ssh-cpu=%ss\n' "$FW" "$AGENT4" "$AGENT_CPU4" "$SSH_S" "$SSH_CPU"
power_off

[ "$FAILS" -eq 0 ] && echo "ALL PASS ($FW)" || echo "$FAILS check(s) FAILED ($FW)"
exit "$FAILS"
