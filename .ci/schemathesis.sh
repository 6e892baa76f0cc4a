#!/usr/bin/env bash
# Property-based API test: schemathesis reads the server's own /openapi.json and sends requests
# the document allows (each must be served) and requests it refuses (each must be refused), and
# checks every answer against the documented statuses, headers and schemas (--checks all).
# Must end with 0 failures.
#
# Installs schemathesis from PyPI into a venv (SCHEMATHESIS_VENV, default
# target/schemathesis-venv), starts clipserve (CLIPSERVE_BIN, default target/debug/clipserve,
# the binary `cargo test` builds) on 127.0.0.1 with the tiny test model, and runs for
# SCHEMATHESIS_SECONDS (default 180). Image fields are drawn from the committed fixture photos
# (.ci/schemathesis_hooks.py): whether bytes decode as an image is a rule JSON Schema cannot state.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bin=$(realpath -m "${CLIPSERVE_BIN:-target/debug/clipserve}")
venv=$(realpath -m "${SCHEMATHESIS_VENV:-target/schemathesis-venv}")
seconds="${SCHEMATHESIS_SECONDS:-180}"
version="${SCHEMATHESIS_VERSION:-4.32.5}"

if [ ! -x "$bin" ]; then
    echo "schemathesis: no clipserve binary at $bin (run cargo build or cargo test first)" >&2
    exit 1
fi
if [ ! -x "$venv/bin/schemathesis" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "schemathesis==$version"
fi
"$venv/bin/schemathesis" --version

log=$(mktemp)
RUST_LOG="warn,clipserve::app=info" "$bin" serve --model tests/fixtures/models/tiny --addr 127.0.0.1:0 \
    --set log.format=json >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -f "$log"' EXIT

addr=""
for _ in $(seq 1 600); do
    addr=$(sed -n 's/.*"message":"listening".*"addr":"\([^"]*\)".*/\1/p; s/.*"addr":"\([^"]*\)".*"message":"listening".*/\1/p' "$log" | head -n1)
    if [ -n "$addr" ] && curl -fsS "http://$addr/ready" >/dev/null 2>&1; then
        break
    fi
    kill -0 "$server" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
done
[ -n "$addr" ] || { echo "schemathesis: the server did not start" >&2; cat "$log" >&2; exit 1; }
echo "server on $addr"

# Run from a scratch folder under target/: schemathesis and hypothesis keep state in the cwd.
mkdir -p target/schemathesis
cd target/schemathesis
SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH="$root/.ci" SCHEMATHESIS_PHOTOS="$root/tests/fixtures/photos" \
    timeout $((seconds + 120)) "$venv/bin/schemathesis" \
    --config-file "$root/.ci/schemathesis.toml" \
    run "http://$addr/openapi.json" \
    --checks all \
    --max-time "$seconds" \
    --workers 2 \
    --seed "${SCHEMATHESIS_SEED:-1}"
