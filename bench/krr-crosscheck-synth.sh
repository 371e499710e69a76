#!/usr/bin/env bash
# krr-crosscheck-synth.sh: the cross-check against KRR's own replayer (issue 15 item 8) on the
# test suite's synthetic recordings (tests/krr_synth).
#
#   KRR_QEMU=/path/to/build/qemu-system-x86_64 bench/krr-crosscheck-synth.sh [-n RUNS]
#       [--scenarios small,large,large-ring16] [--out DIR] [--krr-args "..."]
#
# Scenarios: NAME[-gp][-interp][-ring16] (tests/krr_synth_qemu.rs): Scenario::NAME without user
# #GPs (KRR's replayer aborts at one), -gp with them, -ring16 with a 16 MiB ring (no rotations).
# 1. Makes the recordings: `cargo test --release --test krr_synth_qemu -- --ignored
#    write_krr_qemu_recordings` with KRR_SYNTH_OUT=DIR (default target/krr-crosscheck-synth):
#    per scenario DIR/NAME/{test1,kernel_rr.log,vmlinux,recorded.txt}, the recorder's state
#    rebuilt on a stream Debian's QEMU 7.2 wrote of KRR's machine (tests/krr_synth/from_qemu.rs),
#    checked there to replay in krr to the recorded state.
# 2. Compiles the synthetic kernel's trap points into KRR's QEMU (bench/krr-qemu-traps.sh;
#    KRR_QEMU_SRC, default KRR_QEMU's ../.., must be KRR's source tree with that build/).
# 3. Per scenario, RUNS times (default 3): bench/krr-crosscheck.sh (KRR's QEMU and `krr replay
#    --krr`, timed; final count, RIP and registers and the last 64 instructions' states
#    compared) and `krr replay --krr --singlestep`, timed the same way (one process, wall).
#    Prints per scenario whether the replays agree, the medians and the ratios.
# Exit status 0 when every run of every scenario agrees.
set -uo pipefail
cd "$(dirname "$0")/.."
RUNS=3 scen=small,large,large-ring16 out=target/krr-crosscheck-synth kargs=""
while [ $# -gt 0 ]; do
    case "$1" in
    -n) RUNS=$2; shift 2 ;;
    --scenarios) scen=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --krr-args) kargs=$2; shift 2 ;;
    -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "${KRR_QEMU:-}" ] || { echo "set KRR_QEMU (see bench/krr-crosscheck.sh)" >&2; exit 2; }
KRR_QEMU_SRC=${KRR_QEMU_SRC:-$(cd "$(dirname "$KRR_QEMU")/.." && pwd)}
mkdir -p "$out" && out=$(cd "$out" && pwd)
cargo build --release -q || exit 2
KRR_SYNTH_OUT=$out KRR_SYNTH_SCENARIOS=$scen \
    cargo test --release -q --test krr_synth_qemu -- --ignored write_krr_qemu_recordings \
    --nocapture > "$out/make.log" 2>&1 || { tail -30 "$out/make.log"; exit 2; }
first=${scen%%,*}
for s in ${scen//,/ }; do
    cmp -s "$out/$first/vmlinux" "$out/$s/vmlinux" ||
        { echo "$s: another vmlinux than $first's: one KRR build cannot replay both" >&2; exit 2; }
done
bench/krr-qemu-traps.sh "$out/$first" "$KRR_QEMU_SRC" > "$out/traps.log" 2>&1 ||
    { tail -20 "$out/traps.log"; exit 2; }

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }
all_ok=0
for s in ${scen//,/ }; do
    d=$out/$s
    echo "== $s: $(head -1 "$d/recorded.txt")"
    kt=() dt=() st=() own=() verdicts=()
    for i in $(seq "$RUNS"); do
        w=$d/xchk-$i
        rm -rf "$w"
        # shellcheck disable=SC2086
        KRR_ARGS="$kargs" bash bench/krr-crosscheck.sh --work "$w" "$d/test1" > "$d/xchk-$i.out" 2>&1
        rc=$?
        [ $rc = 0 ] || all_ok=1
        verdicts+=("$(grep -m1 '^verdict' "$d/xchk-$i.out" || echo "exit $rc")")
        kt+=("$(sed -nE 's/^wall time: KRR ([0-9.]+)s, krr ([0-9.]+)s.*/\1/p' "$d/xchk-$i.out")")
        dt+=("$(sed -nE 's/^wall time: KRR ([0-9.]+)s, krr ([0-9.]+)s.*/\2/p' "$d/xchk-$i.out")")
        own+=("$(sed -nE "s/.*its own 'Replay executed in ([0-9.]+) seconds.*/\1/p" "$d/xchk-$i.out")")
        t0=$(now)
        # shellcheck disable=SC2086
        ev=(); [ -f "$w/krr-events.log" ] && ev=(--krr-events "$w/krr-events.log")
        target/release/krr replay --krr "$d/test1" --vmlinux "$d/vmlinux" -q --singlestep $kargs "${ev[@]}" \
            > /dev/null 2> "$d/singlestep-$i.err"
        t1=$(now)
        st+=("$(echo "$t1 - $t0" | bc)")
    done
    [ $i = 1 ] && sed -n '/^recording:/,$p' "$d/xchk-1.out" | grep -E '^(krr:|KRR:|event stats|end of replay|registers|instruction window|KRR final)' | sed 's/^/  /'
    end() {
        grep -q '^verdict: replayed to the end' "$1" || return 0
        echo "count $(sed -nE 's/.*\(KRR count ([0-9]+)\).*/\1/p' "$1" | tail -1)" \
            "RIP $(sed -nE 's/.*final RIP (0x[0-9a-f]+).*/\1/p' "$1" | tail -1)" \
            "$(grep -A1 '^verdict: replayed to the end' "$1" | tail -1)"
    }
    de=$(end "$d/xchk-1/krr.err") se=$(end "$d/singlestep-1.err")
    if [ -n "$de" ] && [ "$de" = "$se" ]; then
        echo "  krr default and --singlestep end alike: ${de%% rax=*} (same GPRs and RFLAGS)"
    else
        all_ok=1
        echo "  krr default ends at: ${de:-?}"
        echo "  krr --singlestep at: ${se:-?}: DIFFERENT"
    fi
    echo "  recorder: $(sed -n 2p "$d/recorded.txt")"
    printf '  verdicts: %s\n' "$(printf '%s; ' "${verdicts[@]}")"
    K=$(printf '%s\n' "${kt[@]}" | median) D=$(printf '%s\n' "${dt[@]}" | median)
    S=$(printf '%s\n' "${st[@]}" | median) O=$(printf '%s\n' "${own[@]}" | median)
    echo "  wall, median of $RUNS: KRR ${K}s (its own CPU-time figure ${O}s), krr ${D}s, krr --singlestep ${S}s"
    echo "  KRR/krr = $(echo "scale=2; $K / $D" | bc), KRR/krr-singlestep = $(echo "scale=2; $K / $S" | bc), singlestep/default = $(echo "scale=2; $S / $D" | bc)"
done
exit $all_ok
