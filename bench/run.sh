#!/usr/bin/env bash
# The performance harness, in one command, from any checkout:
#
#   bench/run.sh                       # everything, on the full-size random-weight export
#   bench/run.sh --quick               # shorter runs (smoke test of the harness itself)
#   bench/run.sh --phases http         # only the HTTP load test (also: engines, baselines, jitter)
#
# 1. builds the release server and the `compare` bench (in $CARGO_TARGET_DIR, else the repo's
#    own target/);
# 2. starts the server on $CLIPSERVE_BENCH_MODEL, samples its RSS from /proc every 100 ms, times
#    start-to-ready;
# 3. drives it with wrk (image: the committed photos of tests/fixtures/photos between 100 and
#    900 KB, as raw bodies; text: one short multilingual query per request, unique and repeated)
#    at each concurrency in $BENCH_CONCURRENCY;
#    ONNX Runtime's image batch 32 is also timed right after the image cells (the server idle);
# 4. runs the encoders on fixed workloads through tract (benches/compare.rs), ONNX Runtime and
#    PyTorch OpenCLIP (bench/py_baselines.py), same weights, same inputs, same thread count
#    (tract also does for the image load's photos what the server does for a lone image request,
#    minus HTTP and the queue: decode, preprocess, embed alone); then times a fixed
#    register-only loop as long as one bare image run (bench/jitter.c), the spread of run times
#    this machine itself adds;
# 5. a full run writes bench/results/<stamp>/ (raw JSON), bench/results.png and the "Last run"
#    section of bench/RESULTS.md (bench/report.py); a --quick run writes only its own folder,
#    bench/out/quick-<stamp>/ (git-ignored), with the same summary.md.
#
# Settings (environment), each with a repo-relative default:
#   CLIPSERVE_BENCH_MODEL  the model folder (default: models/xlmr-b32-random in the repo, made by
#                          the full-size command of onnx/README.md)
#   BENCH_PYTHON           the Python with onnx/requirements.txt installed (default: .venv/bin/python
#                          in the repo, the venv of onnx/README.md)
#   CARGO_TARGET_DIR       cargo's target folder (default: target/ in the repo)
#   BENCH_PHOTOS           photo files for the image load and the encoders' photo workload (default:
#                          tests/fixtures/photos, 100-900 KB)
#   BENCH_OUT              where a run's folder goes (default: bench/results, or bench/out for --quick)
#   BENCH_DURATION, BENCH_CONCURRENCY, BENCH_BUDGET, BENCH_THREADS, BENCH_PORT, BENCH_VARIANTS
# Any CLIPSERVE_* variable set by the caller reaches the server (e.g.
# CLIPSERVE_BATCHING_IMAGE_WORKERS=1). Everything is bounded in time; the server is stopped at
# the end, or on error, by its pid.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${CLIPSERVE_BENCH_MODEL:-$REPO/models/xlmr-b32-random}
DURATION=${BENCH_DURATION:-15}
CONCURRENCY=${BENCH_CONCURRENCY:-"1 4 16 64"}
BUDGET=${BENCH_BUDGET:-8}
THREADS=${BENCH_THREADS:-2}
PORT=${BENCH_PORT:-18089}
PY=${BENCH_PYTHON:-$REPO/.venv/bin/python}
# cargo reads a relative CARGO_TARGET_DIR from the folder it runs in (the repo, below): make it
# absolute here so the binary is found where cargo put it.
export CARGO_TARGET_DIR=$(cd "$REPO" && realpath -m "${CARGO_TARGET_DIR:-target}")
PHASES="http engines baselines jitter"
LABEL=""
QUICK=""

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) DURATION=5; BUDGET=2; CONCURRENCY="1 16"; QUICK=1 ;;
    --phases) PHASES="$2"; shift ;;
    --label) LABEL="$2"; shift ;;
    *) echo "unknown argument $1 (see the head of $0)" >&2; exit 2 ;;
  esac
  shift
done

STAMP=$(date +%Y%m%d-%H%M%S)
if [ -n "$QUICK" ]; then
  OUT="${BENCH_OUT:-$REPO/bench/out}/quick-$STAMP"
else
  OUT="${BENCH_OUT:-$REPO/bench/results}/$STAMP"
fi
log() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }

# A relative model path is read from the current folder, else from the repo.
case "$MODEL" in /*) ;; *) [ -e "$MODEL" ] || MODEL=$REPO/$MODEL ;; esac
[ -f "$MODEL/config.json" ] || {
  log "no model folder at $MODEL: export it with the full-size command of onnx/README.md, or set CLIPSERVE_BENCH_MODEL"
  exit 1
}
MODEL=$(cd "$MODEL" && pwd)
[ -x "$PY" ] || {
  log "no Python at $PY: create the venv of onnx/README.md (python3.11 -m venv .venv, then pip install -r onnx/requirements.txt), or set BENCH_PYTHON"
  exit 1
}
# What the results record: the model's path inside the repo, or its folder name when it lives
# elsewhere, never a path of one machine.
case "$MODEL" in
  "$REPO"/*) MODEL_SHOWN=${MODEL#"$REPO"/} ;;
  *) MODEL_SHOWN="$(basename "$MODEL") (outside the repo)" ;;
esac
mkdir -p "$OUT"

# --- tools ----------------------------------------------------------------------------------
if ! command -v wrk >/dev/null; then
  log "installing wrk (Debian)"
  (apt-get install -y -qq wrk || (apt-get update -qq && apt-get install -y -qq wrk)) >/dev/null
fi
if ! "$PY" -c "import matplotlib, onnxruntime, torch, open_clip" 2>/dev/null; then
  log "installing Python packages into $PY's environment"
  "$PY" -m pip install -q -r "$REPO/onnx/requirements.txt" matplotlib
elif ! "$PY" -c "import matplotlib" 2>/dev/null; then
  "$PY" -m pip install -q matplotlib
fi

log "building (release, $CARGO_TARGET_DIR)"
(cd "$REPO" && cargo build --release --quiet --bin clipserve)
(cd "$REPO" && cargo bench --quiet --no-run --bench compare 2>/dev/null)
BIN="$CARGO_TARGET_DIR/release/clipserve"

cat >"$OUT/meta.json" <<EOF
{"stamp": "$STAMP", "label": "$LABEL", "model": "$MODEL_SHOWN", "commit": "$(cd "$REPO" && git rev-parse --short HEAD)",
 "dirty": $(cd "$REPO" && (git diff --quiet HEAD -- src Cargo.toml config && echo false || echo true)),
 "load_before": "$(cut -d' ' -f1-3 /proc/loadavg)", "nproc": $(nproc),
 "cpu": "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)",
 "duration_s": $DURATION, "concurrency": "$CONCURRENCY", "threads": $THREADS,
 "server_env": "$(env | grep '^CLIPSERVE_' | grep -v BENCH | tr '\n' ' ')"}
EOF

SERVER_PID=""
SAMPLER_PID=""
cleanup() {
  [ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null || true
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
}
trap cleanup EXIT

# The photos of the image load, also decoded and embedded bare by the encoders' phase.
PHOTOS=""
if [ -n "${BENCH_PHOTOS:-}" ]; then
  PHOTOS=" $BENCH_PHOTOS"
else
  for p in "$REPO"/tests/fixtures/photos/*.{jpg,png}; do
    [ -f "$p" ] || continue
    size=$(stat -c %s "$p")
    if [ "$size" -ge 100000 ] && [ "$size" -le 900000 ]; then PHOTOS="$PHOTOS $p"; fi
  done
fi
[ -n "$PHOTOS" ] || { log "no photos for the image load"; exit 1; }
log "photos:$(for p in $PHOTOS; do printf ' %s(%dKB)' "$(basename "$p")" $(($(stat -c %s "$p") / 1024)); done)"

# --- HTTP load test -------------------------------------------------------------------------
if [[ " $PHASES " == *" http "* ]]; then

  log "starting the server on $MODEL"
  start_ns=$(date +%s%N)
  CLIPSERVE_MODEL="$MODEL" CLIPSERVE_ADDR="127.0.0.1:$PORT" CLIPSERVE_LOG_LEVEL="${CLIPSERVE_LOG_LEVEL:-warn}" \
    "$BIN" >"$OUT/server.log" 2>&1 &
  SERVER_PID=$!
  (
    t0=$(date +%s%N)
    while [ -r "/proc/$SERVER_PID/status" ]; do
      awk -v t="$(( ($(date +%s%N) - t0) / 1000000 ))" '/^VmRSS/ {r=$2} /^VmHWM/ {h=$2} END {print t, r, h}' \
        "/proc/$SERVER_PID/status" 2>/dev/null || true
      sleep 0.1
    done
  ) >"$OUT/rss.tsv" &
  SAMPLER_PID=$!
  ready=""
  for _ in $(seq 1 1200); do
    if curl -fs "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$OUT/server.log" >&2; exit 1; }
    sleep 0.05
  done
  [ -n "$ready" ] || { log "the server did not become ready in 60 s"; exit 1; }
  ready_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
  sleep 3
  steady_kb=$(awk '/^VmRSS/ {print $2}' "/proc/$SERVER_PID/status")
  startup_peak_kb=$(awk '/^VmHWM/ {print $2}' "/proc/$SERVER_PID/status")
  log "ready in ${ready_ms} ms; RSS $((steady_kb / 1024)) MB, start-up peak $((startup_peak_kb / 1024)) MB"
  curl -fs "http://127.0.0.1:$PORT/info" >"$OUT/info.json" 2>/dev/null || true

  export BENCH_WRK_DIR="$REPO/bench/wrk" BENCH_PHOTOS="$PHOTOS"
  run_wrk() { # name script conc [env...]
    local name=$1 script=$2 conc=$3
    shift 3
    local threads=$(( conc < 2 ? 1 : 2 ))
    env "$@" BENCH_WRK_OUT="$OUT/wrk-$name-c$conc.json" \
      wrk -t"$threads" -c"$conc" -d"${DURATION}s" --timeout 30s -s "$REPO/bench/wrk/$script" \
      "http://127.0.0.1:$PORT" >"$OUT/wrk-$name-c$conc.txt"
    log "$name c=$conc: $(cat "$OUT/wrk-$name-c$conc.json")"
  }
  # Warm the paths once (first decode of each photo, the text cache stays cold for unique).
  scrape() { curl -fs "http://127.0.0.1:$PORT/metrics" >"$OUT/$1" 2>/dev/null || true; }
  for c in $CONCURRENCY; do
    # Around the lone-image cell, the server's own metrics: where a request's time goes
    # (decoding and preprocessing, the model run, the rest), for target 3 in bench/report.py.
    if [ "$c" = 1 ]; then scrape metrics-image-c1-before.txt; fi
    run_wrk image image.lua "$c"
    if [ "$c" = 1 ]; then scrape metrics-image-c1-after.txt; fi
  done
  # ONNX Runtime's image batch 32 once more, right after the image cells (the server idle
  # meanwhile): its figure moves between periods of this machine more than ours does, and
  # target 1 is judged against the better of this and the baselines' own (bench/report.py).
  if [[ " $PHASES " == *" baselines "* ]]; then
    log "ort image_b32 beside the HTTP image cells ($THREADS threads)"
    "$PY" "$REPO/bench/py_baselines.py" --runtime ort --model "$MODEL" --threads "$THREADS" \
      --budget "$BUDGET" --only image_b32 >"$OUT/ort_beside.json"
  fi
  for c in $CONCURRENCY; do run_wrk text text.lua "$c" BENCH_UNIQUE=1; done
  for c in $CONCURRENCY; do run_wrk text_repeated text.lua "$c" BENCH_UNIQUE=0; done
  scrape metrics.txt
  sleep 2
  end_kb=$(awk '/^VmRSS/ {print $2}' "/proc/$SERVER_PID/status")
  peak_kb=$(awk '/^VmHWM/ {print $2}' "/proc/$SERVER_PID/status")
  cat >"$OUT/server.json" <<EOF
{"ready_ms": $ready_ms, "rss_after_ready_mb": $((steady_kb / 1024)), "startup_peak_mb": $((startup_peak_kb / 1024)),
 "rss_after_load_mb": $((end_kb / 1024)), "peak_mb": $((peak_kb / 1024))}
EOF
  kill "$SERVER_PID"
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  kill "$SAMPLER_PID" 2>/dev/null || true
  SAMPLER_PID=""
fi

# --- encoders side by side ------------------------------------------------------------------
if [[ " $PHASES " == *" engines "* ]]; then
  log "tract encoders (benches/compare.rs)"
  (cd "$REPO" && CLIPSERVE_BENCH_MODEL="${MODEL#"$REPO"/}" cargo bench --quiet --bench compare -- \
    --variants "${BENCH_VARIANTS:-bucketed,symbolic,bucketed_intra2,bucketed_bf16,bucketed_bf16_intra2,bucketed_int8,bucketed_int8_intra2,bucketed_int16,bucketed_int16_intra2}" --budget "$BUDGET" --json "$OUT/tract.json" \
    --photos "$(echo $PHOTOS | tr ' ' ',')")
  # The encoders' JSON names the model as the rest of the run does, never by this machine's path.
  MODEL_SHOWN="$MODEL_SHOWN" "$PY" - "$OUT/tract.json" <<'PYEOF'
import json, os, sys
path = sys.argv[1]
data = json.load(open(path))
data["model"] = os.environ["MODEL_SHOWN"]
json.dump(data, open(path, "w"))
PYEOF
fi
if [[ " $PHASES " == *" baselines "* ]]; then
  for rt in ort torch; do
    log "$rt ($THREADS threads)"
    "$PY" "$REPO/bench/py_baselines.py" --runtime "$rt" --model "$MODEL" --threads "$THREADS" \
      --budget "$BUDGET" >"$OUT/$rt.json"
  done
fi

if [[ " $PHASES " == *" jitter "* ]]; then
  # As long as the bare encoder's lone image in this run (its 2-thread variant, in the image
  # tower's arithmetic), else 40 ms.
  JITTER_MS=$("$PY" - "$OUT/tract.json" "$OUT/info.json" 2>/dev/null <<'PYEOF' || echo 40
import json, sys
variants = {v["variant"]: v["workloads"] for v in json.load(open(sys.argv[1]))["variants"]}
try:
    info = json.load(open(sys.argv[2]))
except (OSError, ValueError):
    info = {}
# The arithmetic the server chose for its image tower, then the ones earlier runs chose.
chosen = ((info.get("precision") or {}).get("image") or {}).get("active", "f32")
first = [f"bucketed_{chosen}_intra2"] if chosen != "f32" else []
for name in first + ["bucketed_int8_intra2", "bucketed_bf16_intra2", "bucketed_intra2"]:
    if name in variants:
        print(round(variants[name]["image_b1"]["median_s"] * 1000, 1))
        break
else:
    print(40)
PYEOF
)
  JITTER_BIN=$(mktemp)
  if gcc -O2 -mavx512f -pthread "$REPO/bench/jitter.c" -o "$JITTER_BIN" 2>/dev/null; then
    log "machine jitter (bench/jitter.c: a fixed loop of $JITTER_MS ms, 300 times on $THREADS threads)"
    "$JITTER_BIN" "$JITTER_MS" 300 "$THREADS" >"$OUT/jitter.json"
  else
    log "no gcc with AVX-512 here: the jitter phase is skipped"
  fi
  rm -f "$JITTER_BIN"
fi

echo "\"$(cut -d' ' -f1-3 /proc/loadavg)\"" >"$OUT/load_after.json"
if [ -n "$QUICK" ]; then
  "$PY" "$REPO/bench/report.py" --summary-only "$OUT"
  log "results in $OUT (a --quick run leaves bench/RESULTS.md and bench/results.png alone)"
else
  "$PY" "$REPO/bench/report.py" "$OUT"
  log "results in $OUT, bench/RESULTS.md and bench/results.png"
fi
