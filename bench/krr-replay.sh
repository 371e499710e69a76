#!/usr/bin/env bash
# krr-replay.sh [-n RUNS]: the replay speed of KRR recordings. Builds the largest synthetic
# KRR recording (tests/krr_synth, Scenario::large: a small kernel with KRR's guest agent,
# thousands of syscalls, interrupts inside REP MOVSB, ring rotations) and replays it with
# `krr replay --krr` in multi-instruction blocks and with --singlestep, RUNS times each
# (default 3), printing each mode's median wall time, kernel MIPS and the ratio.
# With KRR_QEMU=/path/to/KRR's qemu-system-x86_64 the same scenario is also replayed by KRR's
# own replayer against krr in both modes (bench/krr-crosscheck-synth.sh --scenarios
# large-ring16: Scenario::large without user #GPs, which KRR's replayer aborts at, and with a
# 16 MiB ring, whose rotations it does not replay as recorded); with KRR_RECORDING=another
# recording KRR's QEMU loads, bench/krr-crosscheck.sh runs on it too. Quote ratios, not
# seconds: machines are shared.
set -euo pipefail
# Every timed krr run compiles its blocks (cold): the persistent code cache stays off.
export KRR_CODE_CACHE=off
cd "$(dirname "$0")/.."
RUNS=3
if [ "${1:-}" = "-n" ]; then RUNS=$2; fi
cargo build --release -q
cargo test --release -q --test krr_synth_record -- --ignored large_recording --nocapture 2>&1 |
    grep -E "events|replayed" || true
R=target/tmp/krr-synth-large
[ -f "$R/test1" ] || { echo "no recording at $R" >&2; exit 1; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
run_mode() {
    local name=$1; shift
    local times=() line=""
    for _ in $(seq "$RUNS"); do
        local t0 t1
        t0=$(date +%s.%N)
        line=$(target/release/krr replay -q --krr "$R/test1" --vmlinux "$R/vmlinux" \
            --profile host "$@" 2>&1 >/dev/null | grep -E "events replayed" || true)
        t1=$(date +%s.%N)
        times+=("$(echo "$t1 - $t0" | bc -l)")
    done
    local m
    m=$(printf '%s\n' "${times[@]}" | median)
    echo "$name $m"
    echo "  $line" >&2
}
blocks=$(run_mode blocks)
single=$(run_mode singlestep --singlestep)
b=$(echo "$blocks" | awk '{print $2}')
s=$(echo "$single" | awk '{print $2}')
printf 'krr replay --krr, median of %s: blocks %.3f s, --singlestep %.3f s, singlestep/blocks %.2fx\n' \
    "$RUNS" "$b" "$s" "$(echo "$s / $b" | bc -l)"
if [ -n "${KRR_QEMU:-}" ]; then
    bash bench/krr-crosscheck-synth.sh -n "$RUNS" --scenarios large-ring16 || true
    if [ -n "${KRR_RECORDING:-}" ]; then
        bash bench/krr-crosscheck.sh "$KRR_RECORDING"
    fi
fi
