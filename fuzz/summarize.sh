#!/usr/bin/env bash
# The figures docs/reliability.md records, from the logs fuzz/run.sh keeps:
#
#   fuzz/summarize.sh [TARGET...]      (default: every fuzz/grown/*.log)
#
# Per target: seeds loaded and coverage at start (INITED), coverage and corpus at the end
# (DONE), executions, exec/s, new inputs, peak RSS, and crashes (libFuzzer's crash / leak /
# timeout / oom reports in the log and files in fuzz/artifacts/TARGET).
set -euo pipefail

fuzz_dir=$(cd "$(dirname "$0")" && pwd)
cd "$fuzz_dir"
if [ $# -eq 0 ]; then
    set -- $(ls grown/*.log 2>/dev/null | sed 's|grown/||; s|\.log$||')
fi

for target in "$@"; do
    log=grown/$target.log
    [ -f "$log" ] || { echo "$target: no log ($log)"; continue; }
    stat() { grep -m1 "^stat::$1:" "$log" | awk '{print $2}' || true; }
    inited=$(grep -m1 -P '\tINITED ' "$log" || true)
    done_line=$(grep -P '\tDONE ' "$log" | tail -1 || true)
    reports=$(grep -cE '^==[0-9]+==ERROR|deadly signal|libFuzzer: (timeout|out-of-memory)|panicked at' "$log" || true)
    artifacts=$(find "artifacts/$target" -type f 2>/dev/null | wc -l || true)
    echo "$target"
    echo "  start: ${inited:-none}"
    echo "  end:   ${done_line:-none (run did not finish)}"
    echo "  execs $(stat number_of_executed_units), exec/s $(stat average_exec_per_sec)," \
        "new inputs $(stat new_units_added), peak RSS $(stat peak_rss_mb) MB," \
        "slowest input $(stat slowest_unit_time_sec) s"
    echo "  crash reports in log: $reports; files in artifacts/$target: $artifacts"
done
