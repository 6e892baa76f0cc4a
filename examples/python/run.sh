#!/usr/bin/env bash
# Runs the Python examples against a local clipserve serving the tiny test model.
#
#   examples/python/run.sh
#
# PYTHON          an interpreter to use as is (default: a venv in examples/python/.venv)
# CLIPSERVE_BIN   the server binary (default: `cargo build --locked --bin clipserve`, then
#                 $CARGO_TARGET_DIR/debug/clipserve, target/ by default; CI passes the one
#                 `cargo test` built)
# CLIPSERVE_MODEL the model folder (default: tests/fixtures/models/tiny)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

if [[ -z "${PYTHON:-}" ]]; then
    if [[ ! -x "$here/.venv/bin/python" ]]; then
        python3 -m venv "$here/.venv"
    fi
    PYTHON="$here/.venv/bin/python"
fi
"$PYTHON" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"

if [[ -z "${CLIPSERVE_BIN:-}" ]]; then
    cargo build --locked --bin clipserve
    CLIPSERVE_BIN="$(cd "${CARGO_TARGET_DIR:-target}/debug" && pwd)/clipserve"
fi
model="${CLIPSERVE_MODEL:-$root/tests/fixtures/models/tiny}"

# A free port: the OS picks one, then it is released for the server to bind.
port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
log="$(mktemp)"
"$CLIPSERVE_BIN" --model "$model" --addr "127.0.0.1:$port" >"$log" 2>&1 &
server=$!
cleanup() {
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    rm -f "$log"
}
trap cleanup EXIT

url="http://127.0.0.1:$port"
echo "clipserve (pid $server) on $url, model $model"
ready=0
for _ in $(seq 1 600); do
    if ! kill -0 "$server" 2>/dev/null; then
        echo "clipserve exited before it was ready:" >&2
        cat "$log" >&2
        exit 1
    fi
    if "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
        "$url/ready" 2>/dev/null; then
        ready=1
        break
    fi
    sleep 0.2
done
if [[ $ready -ne 1 ]]; then
    echo "clipserve was not ready within 120 s:" >&2
    cat "$log" >&2
    exit 1
fi

status=0
echo "== openai_langchain.py"
"$PYTHON" "$here/openai_langchain.py" --base-url "$url/v1" || status=1
echo "== client.py"
"$PYTHON" "$here/client.py" --url "$url" || status=1
echo "== tei_client.py"
"$PYTHON" "$here/tei_client.py" --url "$url" || status=1
if [[ $status -ne 0 ]]; then
    echo "server log (last 40 lines):" >&2
    tail -n 40 "$log" >&2
fi
exit $status
