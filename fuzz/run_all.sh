#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 600), JOBS at a time (default
# 2), each from its seeds in seeds/<target> plus a working corpus in
# corpus/<target>, and prints one summary line per target at the end.
#   RUSTC_BOOTSTRAP=1 cargo fuzz build            # once, from the crate root
#   bash fuzz/run_all.sh [SECONDS] [JOBS]
# Logs and any crash go to $FUZZ_LOGS (default fuzz/logs/). Exits non-zero
# if a target crashed. TARGET_DIR overrides where `cargo fuzz build` put the
# binaries (its default, fuzz/target).
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH="${1:-600}"
JOBS="${2:-2}"
LOGS="${FUZZ_LOGS:-$PWD/logs}"
BIN="${TARGET_DIR:-$PWD/target}/x86_64-unknown-linux-gnu/release"
mkdir -p "$LOGS"
mapfile -t TARGETS < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^otp-recovery-fuzz$')

run_one() {
    local t="$1"
    mkdir -p "corpus/$t" "seeds/$t" "$LOGS/artifacts/$t"
    # libFuzzer exits non-zero on a crash; the summary reads the log.
    nice -n 10 "$BIN/$t" "corpus/$t" "seeds/$t" -max_total_time="$SECONDS_EACH" \
        -print_final_stats=1 -artifact_prefix="$LOGS/artifacts/$t/" >"$LOGS/$t.log" 2>&1 || true
}

running=0
for t in "${TARGETS[@]}"; do
    run_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$JOBS" ]; then
        wait -n
        running=$((running - 1))
    fi
done
wait

status=0
for t in "${TARGETS[@]}"; do
    log="$LOGS/$t.log"
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    secs=$(sed -n 's/^stat::.*total_time.*: *//p; s/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\2/p' "$log" | tail -n 1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 | grep -oE 'cov: [0-9]+ ft: [0-9]+' || true)
    crashes=$(find "$LOGS/artifacts/$t" -type f | wc -l)
    printf '%-14s runs %-10s secs %-5s %-22s crashes %s\n' "$t" "${runs:-?}" "${secs:-?}" "${last:-?}" "$crashes"
    [ "$crashes" -eq 0 ] || status=1
done
exit "$status"
