#!/usr/bin/env bash
# Runs the browser test of clipserve's web page: Debian's Chromium (apt-get install chromium)
# driven by playwright-core from npm (no browser download). Builds the debug binary unless
# CLIPSERVE_BIN names one. Writes docs/screenshot.png (SCREENSHOT=path to write elsewhere).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
if [[ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]]; then
  echo "no Chromium at ${CHROMIUM:-/usr/bin/chromium}: apt-get install -y chromium" >&2
  exit 1
fi
if [[ -z "${CLIPSERVE_BIN:-}" ]]; then
  (cd "$root" && cargo build --locked --bin clipserve)
  export CLIPSERVE_BIN="$root/target/debug/clipserve"
fi
cd "$here"
if [[ ! -d node_modules/playwright-core ]]; then
  npm ci --no-audit --no-fund
fi
exec npm test
