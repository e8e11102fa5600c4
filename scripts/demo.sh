#!/usr/bin/env bash
# One command from a fresh Debian/Ubuntu machine to a running demo VM:
# installs what is missing (QEMU, npm dependencies), builds the demo guest,
# creates and starts the VM 'demo', and shows it running.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
[ -d node_modules ] || npm install --no-audit --no-fund
# Build dist/ now rather than in the first vmsnap command (a no-op when it is up to date).
npm run --silent build:dist
VMSNAP="bin/vmsnap"
VM=${1:-demo}

if ! $VMSNAP status "$VM" >/dev/null 2>&1; then
  $VMSNAP create "$VM" --image demo --memory 256M
fi
state=$($VMSNAP status "$VM" --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).state))')
[ "$state" = stopped ] && $VMSNAP start "$VM"
[ "$state" = paused ] && $VMSNAP resume "$VM"

echo
$VMSNAP status "$VM"
echo
echo "the guest says: $($VMSNAP exec "$VM" -- uname -a)"
cat <<TXT

Try it:
  $VMSNAP exec $VM -- sh -c 'echo hello > /data/hello.txt; sync'
  $VMSNAP snapshot create $VM first --description "with hello.txt"
  $VMSNAP exec $VM -- rm /data/hello.txt
  $VMSNAP snapshot revert $VM first --force
  $VMSNAP exec $VM -- cat /data/hello.txt
  $VMSNAP snapshot tree $VM
  $VMSNAP console $VM        (Ctrl-] to detach)
TXT

# With SERVE=1 (scripts/serve-demo.sh) or --serve: bring up the web UI and the HTTP API
# over this VM. HOST and PORT choose where it listens (loopback, port 8080 by default;
# any other address needs the API token, which the server prints on its first start).
if [ "${SERVE:-0}" = 1 ] || [[ " $* " == *" --serve "* ]]; then
  npm run --silent build:web >/dev/null
  echo
  echo "web UI: open http://127.0.0.1:${PORT:-8080}/#/vm/$VM (from another machine: ssh -L ${PORT:-8080}:127.0.0.1:${PORT:-8080} this-host)"
  exec $VMSNAP serve --host "${HOST:-127.0.0.1}" --port "${PORT:-8080}"
fi
