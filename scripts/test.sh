#!/usr/bin/env bash
# The test command: installs what the tests need on Debian/Ubuntu (QEMU, the tools
# that build the demo guest, Chromium for the browser tests, npm dependencies),
# then type-checks and runs every test (`npm test`). Extra arguments go to vitest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --test
# npm install, not npm ci: npm 11 leaves other platforms' optional packages (rollup's)
# out of the lock file, and npm ci then refuses the lock as out of sync.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm install --no-audit --no-fund
fi
# npm test builds web/dist and dist/ first (pretest), then type-checks and runs vitest.
npm test -- "$@"
