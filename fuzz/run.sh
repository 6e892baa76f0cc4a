#!/usr/bin/env bash
# Runs one fuzz target for a while, one job, from the committed seeds, and keeps its log.
#
#   fuzz/run.sh TARGET [SECONDS] [extra libFuzzer flags...]
#
# New inputs go to fuzz/grown/TARGET (git-ignored; libFuzzer writes into the first corpus
# directory, so the seeds in fuzz/corpus/TARGET stay as committed); the log goes to
# fuzz/grown/TARGET.log; a crash goes to fuzz/artifacts/TARGET/. Every run uses the same
# build flags, so `cargo fuzz run` never rebuilds with others:
# - nightly (cargo-fuzz passes -Z flags), address sanitizer (the default);
# - 16 codegen units: cargo-fuzz's default of 1 made the first build take 94 min here.
# The build's dependencies come from the main crate's Cargo.lock (copied, so that the fuzzed
# axum, multer, image and tokenizers are the versions the server ships).
set -euo pipefail

target=${1:?usage: fuzz/run.sh TARGET [SECONDS] [libFuzzer flags...]}
seconds=${2:-1200}
shift $(($# < 2 ? $# : 2))

fuzz_dir=$(cd "$(dirname "$0")" && pwd)
cd "$fuzz_dir"
[ -f Cargo.lock ] || cp ../Cargo.lock Cargo.lock
mkdir -p "grown/$target"

cargo +nightly fuzz run --codegen-units 16 "$target" "grown/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=60 -print_final_stats=1 "$@" \
    2>&1 | tee "grown/$target.log"
