#!/usr/bin/env bash
# Runs the browser test of clipserve's web page: Debian's Chromium (apt-get install chromium)
# driven by playwright-core from npm (no browser download; `npm ci` here on first use).
#
# CLIPSERVE_BIN  the server binary (default: `cargo build --locked --bin clipserve`, then
#                $CARGO_TARGET_DIR/debug/clipserve, target/ by default; CI passes the one
#                `cargo test` built)
# CHROMIUM       the browser (default: /usr/bin/chromium)
# SCREENSHOT     where the screenshot goes (default: docs/screenshot.png)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
if [[ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]]; then
  echo "no Chromium at ${CHROMIUM:-/usr/bin/chromium}: apt-get install -y chromium" >&2
  exit 1
fi
if [[ -z "${CLIPSERVE_BIN:-}" ]]; then
  cd "$root"
  cargo build --locked --bin clipserve
  CLIPSERVE_BIN="$(cd "${CARGO_TARGET_DIR:-target}/debug" && pwd)/clipserve"
fi
export CLIPSERVE_BIN
cd "$here"
# Installs again only when package-lock.json is newer than what npm last installed.
if [[ ! -d node_modules/playwright-core || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
exec npm test --silent
