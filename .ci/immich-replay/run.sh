#!/usr/bin/env bash
# Replays immich's machine-learning client against clipserve (see replay.mjs). Needs Node 18 or
# later (its own fetch, FormData and Blob; no npm packages) and a built clipserve binary:
# target/debug/clipserve, which `cargo test` builds, unless CLIPSERVE_BIN names another.
# Everything listens on 127.0.0.1 and the run is bounded (REPLAY_TIMEOUT, default 300 s).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CLIPSERVE_BIN="${CLIPSERVE_BIN:-target/debug/clipserve}"
export CLIPSERVE_MODEL="${CLIPSERVE_MODEL:-tests/fixtures/models/tiny}"
if [ ! -x "$CLIPSERVE_BIN" ]; then
    echo "immich replay: no clipserve binary at $CLIPSERVE_BIN (run cargo build or cargo test first)" >&2
    exit 1
fi
node --version
exec timeout "${REPLAY_TIMEOUT:-300}" node .ci/immich-replay/replay.mjs
