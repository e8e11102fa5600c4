#!/usr/bin/env bash
# The test command: installs what the tests need on Debian/Ubuntu (QEMU, the tools
# that build the demo guest, Chromium for the browser tests, npm dependencies),
# then type-checks and runs every test (`npm test`). Extra arguments go to vitest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --test
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npm test -- "$@"
