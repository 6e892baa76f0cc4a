#!/usr/bin/env bash
# Soak run: steady load on the release server for minutes, RSS sampled every few seconds.
# Passes when no request failed and RSS, after warm-up, grew by less than the stated bound.
# Not part of CI (it runs for minutes); see docs/reliability.md for the last result.
#
#   bench/soak.sh                          # 10 minutes on the tiny test model
#   SOAK_MODEL=models/xlmr-b32-random SOAK_MINUTES=10 bench/soak.sh   # the full-size export
#
# Settings (environment):
#   SOAK_MODEL        model folder (default: tests/fixtures/models/tiny; the full-size export of
#                     onnx/README.md goes to models/xlmr-b32-random)
#   SOAK_MINUTES      length of the load phase (default 10)
#   SOAK_CLIENTS      concurrent client threads (default 4)
#   SOAK_PAUSE_MS     pause after each request per client, to keep the load steady and below
#                     capacity (default 20)
#   SOAK_SAMPLE_S     RSS sampling period (default 5)
#   SOAK_BOUND_MB     allowed RSS growth from the end of warm-up to the end (default 64)
#   SOAK_WARMUP_S     warm-up excluded from the growth bound (default 60)
#   SOAK_PORT         port on 127.0.0.1 (default 18097)
#   CARGO_TARGET_DIR  where the release binary is built (default: target/ in the repo)
# Output: bench/out/soak-<stamp>/{rss.csv,load.json,server.log,summary.txt} (git-ignored)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${SOAK_MODEL:-$REPO/tests/fixtures/models/tiny}
MINUTES=${SOAK_MINUTES:-10}
CLIENTS=${SOAK_CLIENTS:-4}
PAUSE_MS=${SOAK_PAUSE_MS:-20}
SAMPLE_S=${SOAK_SAMPLE_S:-5}
BOUND_MB=${SOAK_BOUND_MB:-64}
WARMUP_S=${SOAK_WARMUP_S:-60}
PORT=${SOAK_PORT:-18097}
# cargo reads a relative CARGO_TARGET_DIR from the folder it runs in (the repo): make it absolute.
export CARGO_TARGET_DIR=$(cd "$REPO" && realpath -m "${CARGO_TARGET_DIR:-target}")
# A relative model path is read from the current folder, else from the repo.
case "$MODEL" in /*) ;; *) [ -e "$MODEL" ] || MODEL=$REPO/$MODEL ;; esac
[ -f "$MODEL/config.json" ] || { echo "no model folder at $MODEL (SOAK_MODEL)"; exit 1; }
MODEL=$(cd "$MODEL" && pwd)
OUT=$REPO/bench/out/soak-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"

echo "== building the release server"
(cd "$REPO" && cargo build --release --quiet)
BIN=$CARGO_TARGET_DIR/release/clipserve

echo "== starting it on 127.0.0.1:$PORT with $MODEL"
"$BIN" --model "$MODEL" --addr "127.0.0.1:$PORT" >"$OUT/server.log" 2>&1 &
PID=$!
trap 'kill "$PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1 && break
  kill -0 "$PID" 2>/dev/null || { echo "server exited"; tail -20 "$OUT/server.log"; exit 1; }
  sleep 0.5
done
curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null || { echo "server not ready"; exit 1; }

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$PID/status"; }
echo "seconds,rss_kb" >"$OUT/rss.csv"
START=$(date +%s)
(
  while kill -0 "$PID" 2>/dev/null; do
    echo "$(( $(date +%s) - START )),$(rss_kb)" >>"$OUT/rss.csv"
    sleep "$SAMPLE_S"
  done
) &
SAMPLER=$!

echo "== load: $CLIENTS clients, ${PAUSE_MS} ms pause, $MINUTES min"
python3 - "$PORT" "$CLIENTS" "$PAUSE_MS" "$((MINUTES * 60))" "$REPO" >"$OUT/load.json" <<'PY'
"""Steady closed-loop load with the standard library: texts (unique and repeated, several
languages), images (raw bodies and base64 JSON), similarity and classify; counts every answer."""
import base64, collections, http.client, json, sys, threading, time
from pathlib import Path

port, clients, pause, seconds, repo = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) / 1000, int(sys.argv[4]), Path(sys.argv[5])
photos = [p.read_bytes() for p in sorted((repo / "tests/fixtures/photos").glob("*.jpg"))[:4]]
photos += [p.read_bytes() for p in sorted((repo / "tests/fixtures/photos").glob("*.png"))[:2]]
b64 = [base64.b64encode(p).decode() for p in photos]
words = ["a photo of a cat", "una foto de un gato", "猫の写真", "фотография кошки", "a dog on a beach"]
counts, latencies, lock = collections.Counter(), [], threading.Lock()

def request(i):
    k = i % 10
    if k < 5:
        texts = [f"{words[(i + j) % len(words)]} #{i % 500}" for j in range(1 + i % 8)]
        return "POST", "/v1/embed/text", json.dumps({"texts": texts}), "application/json"
    if k < 7:
        return "POST", "/v1/embed/image", photos[i % len(photos)], "image/jpeg"
    if k < 8:
        return "POST", "/v1/embed/image", json.dumps({"images": [b64[i % len(b64)], b64[(i + 1) % len(b64)]]}), "application/json"
    if k < 9:
        return "POST", "/v1/similarity", json.dumps({"images": [b64[i % len(b64)]], "texts": words}), "application/json"
    return "POST", "/v1/classify", json.dumps({"images": [b64[i % len(b64)]], "labels": ["cat", "dog", "rocket"]}), "application/json"

def client(n):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    end, i = time.time() + seconds, n
    while time.time() < end:
        method, path, body, ct = request(i)
        i += clients
        t = time.time()
        try:
            conn.request(method, path, body=body, headers={"content-type": ct})
            r = conn.getresponse()
            r.read()
            key = str(r.status)
        except Exception as e:  # a dropped connection counts as an error
            key = type(e).__name__
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        with lock:
            counts[key] += 1
            latencies.append(time.time() - t)
        time.sleep(pause)

threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
for t in threads: t.start()
for t in threads: t.join()
latencies.sort()
q = lambda p: round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 1) if latencies else None
print(json.dumps({"requests": sum(counts.values()), "by_status": counts, "seconds": seconds,
                  "rate": round(sum(counts.values()) / seconds, 1), "p50_ms": q(0.5), "p99_ms": q(0.99)}))
PY
kill "$SAMPLER" 2>/dev/null || true
echo "$(( $(date +%s) - START )),$(rss_kb)" >>"$OUT/rss.csv"

python3 - "$OUT" "$WARMUP_S" "$BOUND_MB" <<'PY' | tee "$OUT/summary.txt"
import csv, json, sys
out, warmup, bound = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rows = [(int(r["seconds"]), int(r["rss_kb"])) for r in csv.DictReader(open(f"{out}/rss.csv")) if r["rss_kb"]]
load = json.load(open(f"{out}/load.json"))
after = [kb for s, kb in rows if s >= warmup] or [rows[-1][1]]
base, last, peak = after[0], after[-1], max(kb for _, kb in rows)
growth_mb = (last - base) / 1024
errors = {k: v for k, v in load["by_status"].items() if k != "200"}
print(f"requests {load['requests']} ({load['rate']}/s, p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms); not 200: {errors or 'none'}")
print(f"RSS at start {rows[0][1] / 1024:.1f} MB, after warm-up {base / 1024:.1f} MB, at end {last / 1024:.1f} MB, peak {peak / 1024:.1f} MB; growth after warm-up {growth_mb:+.1f} MB (bound {bound} MB); {len(rows)} samples")
ok = not errors and growth_mb < bound
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
