#!/usr/bin/env bash
# Runs tests/shutdown.rs many times in a row with busy loops beside it, to show the drain
# holds under CPU contention (docs/reliability.md has the last result).
#
#   tests/shutdown-loop.sh                 # 50 runs, two `yes > /dev/null` loops beside them
#   RUNS=10 BUSY_LOOPS=4 tests/shutdown-loop.sh
#
# Failed runs' output is kept in $OUT (default target/shutdown-loop/). Exits 1 if any run failed.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-50}
BUSY_LOOPS=${BUSY_LOOPS:-2}
OUT=${OUT:-target/shutdown-loop}
mkdir -p "$OUT"
cargo test --locked --test shutdown --no-run >/dev/null 2>&1 || cargo test --locked --test shutdown --no-run
pids=()
cleanup() { [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq "$BUSY_LOOPS"); do
    yes >/dev/null &
    pids+=($!)
done
passed=0
failed=0
started=$(date +%s)
for i in $(seq "$RUNS"); do
    if cargo test --locked --test shutdown >"$OUT/run.log" 2>&1; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        cp "$OUT/run.log" "$OUT/failed-run-$i.log"
        echo "run $i failed: $OUT/failed-run-$i.log" >&2
    fi
done
echo "shutdown loop: $RUNS runs with $BUSY_LOOPS busy loops in $(( $(date +%s) - started )) s"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
