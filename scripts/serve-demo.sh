#!/usr/bin/env bash
# The demo VM in the web UI: scripts/demo.sh (install, build the demo guest, create and
# start the VM 'demo'), then `vmsnap serve` on http://127.0.0.1:8080/.
# HOST=0.0.0.0 PORT=9000 bash scripts/serve-demo.sh listens elsewhere (with a token).
set -euo pipefail
cd "$(dirname "$0")/.."
SERVE=1 exec bash scripts/demo.sh "$@"
