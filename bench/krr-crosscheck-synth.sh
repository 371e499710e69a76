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
# 3. Per scenario, RUNS times (default 3): bench/krr-crosscheck.sh (KRR's QEMU under gdb and
#    `krr replay --krr`: final RIP, GPRs and RFLAGS and the last 64 instructions' states
#    compared), then three timed processes (wall; CPU = user + system from GNU time): KRR's
#    QEMU alone (the cross-check's command without gdb and instruction log; its start-up and
#    snapshot load included), `krr replay --krr` and `krr replay --krr --singlestep`, krr on
#    the events KRR's loader reads. Prints per scenario the comparison, whether krr's two
#    modes end alike, the medians and the ratios.
# Exit status 0 when every run of every scenario agrees.
# Every timed krr run compiles its blocks (cold): the persistent code cache stays off.
export KRR_CODE_CACHE=off
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
# One timed process: prints "WALL CPU" (seconds; CPU = user + system of it and its children).
timed() {
    local t0 t1
    t0=$(date +%s.%N)
    /usr/bin/time -f "%U %S" -o "$tf" "$@" >> "$log" 2>&1
    t1=$(date +%s.%N)
    # (a process killed by a signal has "Command terminated by signal N" first)
    tail -1 "$tf" | awk -v w="$(echo "$t1 - $t0" | bc)" '{printf "%.3f %.2f\n", w, $1 + $2}'
}
tf=$(mktemp)
all_ok=0
for s in ${scen//,/ }; do
    d=$out/$s
    echo "== $s: $(head -1 "$d/recorded.txt")"
    verdicts=() kw=() kc=() dw=() dc=() sw=() sc=()
    for i in $(seq "$RUNS"); do
        w=$d/xchk-$i
        rm -rf "$w"
        KRR_ARGS="$kargs" bash bench/krr-crosscheck.sh --work "$w" "$d/test1" > "$d/xchk-$i.out" 2>&1
        rc=$?
        [ $rc = 0 ] || all_ok=1
        verdicts+=("$(sed -nE 's/^verdict: ([A-Z]+).*/\1/p' "$d/xchk-$i.out" | tail -1)")
        # The timed runs: KRR's QEMU alone (no gdb, no instruction log), krr default and
        # --singlestep, each on the events KRR's loader reads.
        kcmd=$(sed -nE 's/^KRR: \(cd [^ ]+ && (.*)\)$/\1/p' "$d/xchk-$i.out" | sed -E 's/ -D [^ ]+ -replay-log-bound [^ ]+//')
        ev=(); [ -f "$w/krr-events.log" ] && ev=(--krr-events "$w/krr-events.log")
        log=$d/timed-krr-qemu-$i.log
        : > "$log"
        rm -f "$w/ivshmem"
        # shellcheck disable=SC2086
        read -r a b < <(cd "$w" && timed $kcmd)
        kw+=("$a") kc+=("$b")
        grep -q '^Replay finished' "$log" ||
            echo "  run $i: KRR's timed replay did not finish (its time is to where it stopped)"
        log=$d/timed-krr-$i.log
        : > "$log"
        # shellcheck disable=SC2086
        read -r a b < <(timed target/release/krr replay --krr "$d/test1" --vmlinux "$d/vmlinux" -q $kargs "${ev[@]}")
        dw+=("$a") dc+=("$b")
        # shellcheck disable=SC2086
        read -r a b < <(timed target/release/krr replay --krr "$d/test1" --vmlinux "$d/vmlinux" -q --singlestep $kargs "${ev[@]}")
        sw+=("$a") sc+=("$b")
        target/release/krr replay --krr "$d/test1" --vmlinux "$d/vmlinux" -q --singlestep $kargs "${ev[@]}" \
            > /dev/null 2> "$d/singlestep-$i.err"
    done
    grep -E '^(krr:|KRR: exit|  note|event stats|end of replay|registers|instruction window)' "$d/xchk-1.out" | sed 's/^/  /'
    end() {
        grep -q '^verdict: replayed to the end' "$1" || return 0
        echo "count $(sed -nE 's/.*\(KRR count ([0-9]+)\).*/\1/p' "$1" | tail -1)" \
            "RIP $(sed -nE 's/.*final RIP (0x[0-9a-f]+).*/\1/p' "$1" | tail -1)" \
            "$(grep -A1 '^verdict: replayed to the end' "$1" | tail -1)"
    }
    de=$(end "$d/xchk-1/krr.err") se=$(end "$d/singlestep-1.err")
    if [ -n "$de" ] && [ "$de" = "$se" ]; then
        echo "  krr default and --singlestep end alike: ${de%% rax=*}, same GPRs and RFLAGS"
    else
        all_ok=1
        echo "  krr default ends at: ${de:-?}"
        echo "  krr --singlestep at: ${se:-?}: DIFFERENT"
    fi
    echo "  $(sed -n 2p "$d/recorded.txt") (krr reached it, checked when the recording was written)"
    echo "  cross-check verdicts: ${verdicts[*]}"
    m() { printf '%s\n' "$@" | median; }
    K=$(m "${kw[@]}") KC=$(m "${kc[@]}") D=$(m "${dw[@]}") DC=$(m "${dc[@]}") S=$(m "${sw[@]}") SC=$(m "${sc[@]}")
    echo "  median of $RUNS, wall (CPU) seconds: KRR $K ($KC), krr $D ($DC), krr --singlestep $S ($SC)"
    r() { if [ "$(echo "$2 > 0" | bc)" = 1 ]; then echo "scale=1; $1 / $2" | bc; else echo "-"; fi; }
    echo "  KRR/krr: wall $(r "$K" "$D"), CPU $(r "$KC" "$DC"); KRR/krr --singlestep: wall $(r "$K" "$S"), CPU $(r "$KC" "$SC"); krr singlestep/default: wall $(r "$S" "$D")"
done
rm -f "$tf"
exit $all_ok
