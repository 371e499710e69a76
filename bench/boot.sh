#!/usr/bin/env bash
# Boot-to-poweroff of the test guest (tests/guest: Debian's 6.1 cloud kernel + the busybox
# initramfs and its workload), side by side: `krr replay` of a recording of it (default and
# --singlestep), `krr run`, `krr run --singlestep`, QEMU TCG, QEMU TCG with
# `-icount shift=0,sleep=off` (QEMU's deterministic mode: one instruction is one virtual
# nanosecond and idle time is skipped, as krr's virtual clock does) and QEMU TCG one
# instruction per block (Debian's qemu-system-x86, tests/guest/qemu-boot.sh: same kernel,
# initramfs, memory and command line, a CPU model made like krr's). The rows take turns, RUNS
# times (default 3), and every run must reach the workload's end marker.
#
# Same CPU on both sides: QEMU 7.2's TCG has no PCID, no x2APIC and no TSC-deadline timer, so
# every krr row that is compared with QEMU runs `--cpu max,-pcid,-x2apic,-tsc-deadline,-vme,-fsrm` (the
# replay rows replay a recording made with it; the kernel then uses the local APIC timer in
# one-shot mode, as under QEMU); one extra row, `krr run, max`, shows krr's default model.
#
# Every row is one whole process measured by GNU time: wall time, and CPU time = user +
# system of all its threads and waited-for children (krr's compile thread, QEMU's I/O and RCU
# threads, and qemu-boot.sh's console reader). Prints, per row: median (and min-max) wall
# time, median CPU time, median max RSS, the guest instruction count (krr's last stderr line;
# QEMU does not count), MIPS (instructions / median wall time), and for krr the blocks
# compiled, their code bytes and the time spent compiling (median); then the like-for-like
# ratios (krr's time / QEMU's, wall and CPU): the default rows against QEMU TCG and QEMU
# -icount, the --singlestep rows against QEMU -singlestep.
#
# Two workloads: `boot` (boot to poweroff with the init's short workload) and `long` (the same
# boot with `krr_long=N` on the kernel command line: the init then compresses and checksums a
# few MB of text N times, KRR_BENCH_LONG, default 3: about 7 G instructions where steady-state
# speed dominates). Parallel replay rows (`--jobs 1`, `--jobs 2`) replay the same trace, whose
# snapshots the recorder wrote. The table is also written as bench/.cache/boot/table.tsv and
# drawn as bench/boot.svg (bench/chart.py), which the README shows.
#
# Usage: bash bench/boot.sh [RUNS]. Logs go to bench/.cache/boot/.
#
# Each row is a function row_NAME that boots once with the console on stdout and krr's log on
# stderr, under "${measure[@]}" (the timer); it is listed in ROWS with its label.
set -euo pipefail
# krr's persistent code cache stays off unless a row names a directory (the cold and warm
# rows below), so the other krr rows compile their blocks as before.
export KRR_CODE_CACHE=off
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
runs=${1:-3}
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "usage: bash bench/boot.sh [RUNS]" >&2; exit 2; }
logs="$here/.cache/boot"
mkdir -p "$logs"

# GNU time measures wall and CPU time and max RSS (bench/gnu-time.sh).
timer=$(bash "$here/gnu-time.sh")

mapfile -t guest < <(bash "$repo/tests/guest/fetch.sh")
kernel=${guest[0]} initrd=${guest[1]} qemu=${guest[2]}
(cd "$repo" && cargo build --release --bin krr >&2)
krr="$repo/target/release/krr"

# QEMU 7.2 has -singlestep; 8.1 and later have -accel tcg,one-insn-per-tb=on instead.
if "$qemu" -help | grep -q '^-singlestep'; then
  qemu_ss_args=(-singlestep) qemu_ss_accel=tcg
else
  qemu_ss_args=() qemu_ss_accel=tcg,one-insn-per-tb=on
fi

# krr's CPU as QEMU's where QEMU can: QEMU 7.2 TCG implements no PCID.
cpu_like_qemu=(--cpu max,-pcid,-x2apic,-tsc-deadline,-vme,-fsrm)

# The trace the replay rows replay (recorded once, not timed).
trace="$logs/boot.trace"
"$krr" record --kernel "$kernel" --initrd "$initrd" "${cpu_like_qemu[@]}" -o "$trace" \
  >"$logs/record.console" 2>"$logs/record.stderr" \
  || { echo "bench/boot.sh: krr record failed (see $logs/record.stderr)" >&2; exit 1; }
grep -q '^krr: guest powered off: ' "$logs/record.stderr" || {
  echo "bench/boot.sh: the recorded guest did not power off (see $logs/record.stderr)" >&2; exit 1; }

# The long workload's trace: the default command line (src/run.rs) plus krr_long=N.
long_n=${KRR_BENCH_LONG:-3}
append=$(sed -n 's/.*DEFAULT_APPEND: &str = "\([^"]*\)".*/\1/p' "$repo/src/run.rs")
[ -n "$append" ] || { echo "bench/boot.sh: cannot read DEFAULT_APPEND from src/run.rs" >&2; exit 1; }
long_trace="$logs/long.trace"
# (Not recorded when KRR_BENCH_ROWS names no long-workload row.)
rm -f "$long_trace"
if [ -z "${KRR_BENCH_ROWS:-}" ] || [[ $KRR_BENCH_ROWS == *long_* ]]; then
  "$krr" record --kernel "$kernel" --initrd "$initrd" "${cpu_like_qemu[@]}" \
    --append "$append krr_long=$long_n" -o "$long_trace" \
    >"$logs/long-record.console" 2>"$logs/long-record.stderr" \
    || { echo "bench/boot.sh: krr record (long) failed (see $logs/long-record.stderr)" >&2; exit 1; }
  grep -q KRR-LONG-END "$logs/long-record.console" || {
    echo "bench/boot.sh: the long workload did not finish (see $logs/long-record.console)" >&2; exit 1; }
fi

boot=(--kernel "$kernel" --initrd "$initrd")
# Code cache rows: cold = an empty cache directory every run (compiles and fills it), warm =
# a directory one untimed replay of each trace filled first (the second replay of a trace).
# The parallel rows use the warm one, so that neither needs the second core for compiling.
cold_cache="$logs/code-cache-cold" warm_cache="$logs/code-cache-warm"
rm -rf "$warm_cache"
"$krr" replay -q "$trace" --code-cache "$warm_cache" >/dev/null 2>&1
# Its own directory: every engine loads its cache file whole, and single-step blocks would
# make the other warm rows load more.
warm_ss_cache="$logs/code-cache-warm-singlestep"
rm -rf "$warm_ss_cache"
"$krr" replay -q "$trace" --singlestep --code-cache "$warm_ss_cache" >/dev/null 2>&1
[ -f "$long_trace" ] && "$krr" replay -q "$long_trace" --code-cache "$warm_cache" >/dev/null 2>&1
row_krr_replay() { "${measure[@]}" "$krr" replay "$trace"; }
row_krr_replay_cold() { rm -rf "$cold_cache"; "${measure[@]}" "$krr" replay "$trace" --code-cache "$cold_cache"; }
row_krr_replay_warm() { "${measure[@]}" "$krr" replay "$trace" --code-cache "$warm_cache"; }
row_krr_replay_jobs1() { "${measure[@]}" "$krr" replay "$trace" --jobs 1 --code-cache "$warm_cache"; }
row_krr_replay_jobs2() { "${measure[@]}" "$krr" replay "$trace" --jobs 2 --code-cache "$warm_cache"; }
row_long_krr_replay() { rm -rf "$cold_cache"; "${measure[@]}" "$krr" replay "$long_trace" --code-cache "$cold_cache"; }
row_long_krr_replay_warm() { "${measure[@]}" "$krr" replay "$long_trace" --code-cache "$warm_cache"; }
row_long_krr_replay_jobs1() { "${measure[@]}" "$krr" replay "$long_trace" --jobs 1 --code-cache "$warm_cache"; }
row_long_krr_replay_jobs2() { "${measure[@]}" "$krr" replay "$long_trace" --jobs 2 --code-cache "$warm_cache"; }
row_long_krr_replay_singlestep() { "${measure[@]}" "$krr" replay "$long_trace" --singlestep; }
row_long_qemu() {
  QEMU_APPEND_EXTRA="krr_long=$long_n" "${measure[@]}" bash "$repo/tests/guest/qemu-boot.sh" "$kernel" "$initrd"
}
row_long_qemu_icount() {
  QEMU_APPEND_EXTRA="krr_long=$long_n" "${measure[@]}" bash "$repo/tests/guest/qemu-boot.sh" \
    "$kernel" "$initrd" -icount shift=0,sleep=off
}
row_krr_replay_singlestep() { "${measure[@]}" "$krr" replay "$trace" --singlestep; }
row_krr_replay_singlestep_warm() {
  "${measure[@]}" "$krr" replay "$trace" --singlestep --code-cache "$warm_ss_cache"
}
row_krr() { "${measure[@]}" "$krr" run "${boot[@]}" "${cpu_like_qemu[@]}"; }
row_krr_singlestep() { "${measure[@]}" "$krr" run "${boot[@]}" "${cpu_like_qemu[@]}" --singlestep; }
row_krr_pcid() { "${measure[@]}" "$krr" run "${boot[@]}" --cpu max; }
row_qemu() { "${measure[@]}" bash "$repo/tests/guest/qemu-boot.sh" "$kernel" "$initrd"; }
row_qemu_icount() {
  "${measure[@]}" bash "$repo/tests/guest/qemu-boot.sh" "$kernel" "$initrd" -icount shift=0,sleep=off
}
row_qemu_singlestep() {
  QEMU_ACCEL=$qemu_ss_accel "${measure[@]}" bash "$repo/tests/guest/qemu-boot.sh" "$kernel" "$initrd" \
    "${qemu_ss_args[@]}"
}
# name|label (rows whose name starts with long_ run the long workload)
ROWS=(
  "krr_replay|krr replay, no code cache"
  "krr_replay_cold|krr replay, cold cache"
  "krr_replay_warm|krr replay, warm cache"
  "krr_replay_jobs1|krr replay --jobs 1, warm"
  "krr_replay_jobs2|krr replay --jobs 2, warm"
  "krr_replay_singlestep|krr replay --singlestep"
  "krr_replay_singlestep_warm|krr replay --singlestep, warm"
  "krr|krr run"
  "krr_singlestep|krr run --singlestep"
  "krr_pcid|krr run, max"
  "qemu|QEMU TCG"
  "qemu_icount|QEMU TCG -icount shift=0"
  "qemu_singlestep|QEMU TCG ${qemu_ss_args[*]:-one-insn-per-tb}"
  "long_krr_replay|long: krr replay, cold cache"
  "long_krr_replay_warm|long: krr replay, warm cache"
  "long_krr_replay_jobs1|long: krr replay --jobs 1, warm"
  "long_krr_replay_jobs2|long: krr replay --jobs 2, warm"
  "long_krr_replay_singlestep|long: krr replay --singlestep"
  "long_qemu|long: QEMU TCG"
  "long_qemu_icount|long: QEMU TCG -icount shift=0"
)
# KRR_BENCH_ROWS=name,name,...: only those rows (and the pairs among them), for a quick look
# at what one change moved; the chart is then not redrawn.
if [ -n "${KRR_BENCH_ROWS:-}" ]; then
  keep=()
  for row in "${ROWS[@]}"; do
    [[ ",$KRR_BENCH_ROWS," == *",${row%%|*},"* ]] && keep+=("$row")
  done
  [ ${#keep[@]} -gt 0 ] || { echo "bench/boot.sh: KRR_BENCH_ROWS matches no row" >&2; exit 1; }
  ROWS=("${keep[@]}")
fi
# Like with like: krr row|QEMU row (the last pair is krr against itself: what PCID changes).
PAIRS=(
  "krr_replay|qemu" "krr_replay|qemu_icount" "krr|qemu" "krr|qemu_icount"
  "krr_replay_singlestep|qemu_singlestep" "krr_replay_singlestep_warm|qemu_singlestep" "krr_singlestep|qemu_singlestep"
  "krr_pcid|krr"
  "krr_replay_cold|qemu" "krr_replay_warm|qemu" "krr_replay_jobs2|krr_replay_jobs1"
  "long_krr_replay|long_qemu" "long_krr_replay|long_qemu_icount" "long_krr_replay_warm|long_qemu"
  "long_krr_replay_jobs2|long_krr_replay_jobs1"
)

# One boot of one row; sets w (wall seconds), u (CPU seconds: user + system), m (max RSS KiB),
# n (instructions or -) and c (compiled blocks, code bytes, compile seconds, or "- - -").
boot_once() {
  local name=$1 i=$2 out err t code=0 us sy
  out="$logs/$name.$i.console" err="$logs/$name.$i.stderr" t="$logs/$name.$i.time"
  measure=("$timer" -f '%e %M %U %S' -o "$t")
  "row_$name" >"$out" 2>"$err" || code=$?
  # Status 0 only: krr exits 2 when the guest halts with interrupts off, a hung guest.
  if [ "$code" -ne 0 ]; then
    echo "bench/boot.sh: $name run $i failed with status $code (see $err)" >&2; exit 1
  fi
  # krr run must end with the guest's power-off (not a halt, reset or instruction limit).
  case $name in krr|krr_singlestep|krr_pcid)
    grep -q '^krr: guest powered off: ' "$err" || {
      echo "bench/boot.sh: $name run $i: the guest did not power off (see $err)" >&2; exit 1; }
  esac
  local marker=KRR-WORKLOAD-END
  [[ $name == long_* ]] && marker=KRR-LONG-END
  grep -q "$marker" "$out" || {
    echo "bench/boot.sh: $name run $i did not reach the end marker $marker (see $out)" >&2; exit 1; }
  read -r w m us sy < <(tail -n 1 "$t")
  u=$(awk -v a="$us" -v b="$sy" 'BEGIN {printf "%.2f", a + b}')
  n=$(tail -n 1 "$err" | sed -n 's/.* \([0-9][0-9]*\) instructions in .*/\1/p')
  # krr replay: the summary's lines.
  if [[ $name == krr_replay* || $name == long_krr_replay* ]]; then
    grep -q '^Verdict: matched' "$err" || {
      echo "bench/boot.sh: $name run $i did not match the recording (see $err)" >&2; exit 1; }
    n=$(sed -n 's/^Instructions: \([0-9]*\)$/\1/p' "$err")
  fi
  n=${n:--}
  # Compiled blocks, code bytes, compile seconds (krr's "N blocks compiled, B code bytes, S s compiling").
  c=$(grep -o '[0-9]* blocks compiled, [0-9]* code bytes, [0-9.]* s compiling' "$err" | tail -n 1 \
    | awk '{print $1 " " $4 " " $7}' || true)
  c=${c:-"- - -"}
  # Guest RAM the replay held at its end (its summary), to set RSS against.
  g=$(sed -n 's/^Guest RAM: \([0-9]*\) MiB resident of .*/\1/p' "$err" | tail -n 1)
  g=${g:--}
}

median() { sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
# The median of a space-separated list, "-" entries left out ("-" if nothing is left).
med() {
  local xs; xs=$(tr ' ' '\n' <<<"$1" | grep -v '^-$' | grep . || true)
  if [ -n "$xs" ]; then median <<<"$xs"; else echo -; fi
}

declare -A walls=() cpus=() rss=() insns=() blocks=() bytes=() csecs=() gram=()
for i in $(seq 1 "$runs"); do
  for row in "${ROWS[@]}"; do
    name=${row%%|*}
    boot_once "$name" "$i"
    echo "run $i ${row#*|}: ${w} s wall, ${u} s CPU, ${m} KiB, ${n} instructions" >&2
    walls[$name]+="$w " cpus[$name]+="$u " rss[$name]+="$m " insns[$name]+="$n " gram[$name]+="$g "
    read -r cb cy cs <<<"$c"
    blocks[$name]+="$cb " bytes[$name]+="$cy " csecs[$name]+="$cs "
  done
done

declare -A label=()
for row in "${ROWS[@]}"; do label[${row%%|*}]=${row#*|}; done
echo
echo "Boot to poweroff, $runs runs per row, taking turns ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
echo "$("$qemu" --version | head -n 1); krr $(git -C "$repo" rev-parse --short HEAD); krr rows --cpu ${cpu_like_qemu[1]} but the max row"
printf '%-26s %9s %13s %8s %9s %9s %12s %7s %7s %10s %9s\n' row "wall (s)" "min-max (s)" "CPU (s)" "RSS (MiB)" \
  "RAM (MiB)" instructions MIPS blocks "code bytes" "compile s"
for row in "${ROWS[@]}"; do
  name=${row%%|*}
  w=$(med "${walls[$name]}")
  ws=$(tr ' ' '\n' <<<"${walls[$name]}" | grep . | sort -g)
  lo=$(head -n 1 <<<"$ws") hi=$(tail -n 1 <<<"$ws")
  n=$(tr ' ' '\n' <<<"${insns[$name]}" | grep . | sort -u)
  [ "$(wc -l <<<"$n")" -eq 1 ] || n="varies"
  if [[ "$n" =~ ^[0-9]+$ ]]; then mips=$(awk -v n="$n" -v w="$w" 'BEGIN {printf "%.1f", n / w / 1e6}'); else mips=-; fi
  printf '%-26s %9.2f %13s %8.2f %9.0f %9s %12s %7s %7s %10s %9s\n' "${label[$name]}" "$w" "$lo-$hi" \
    "$(med "${cpus[$name]}")" "$(awk -v m="$(med "${rss[$name]}")" 'BEGIN {print m / 1024}')" \
    "$(med "${gram[$name]}")" "$n" "$mips" \
    "$(med "${blocks[$name]}")" "$(med "${bytes[$name]}")" "$(med "${csecs[$name]}")"
done
echo "(CPU: user + system of all threads. RAM: guest RAM resident at a replay's end, by its summary. MIPS:"
echo " guest instructions / median wall time, start-up included.)"
# The chart: wall and CPU time per row, per workload.
table="$logs/table.tsv"
: >"$table"
for row in "${ROWS[@]}"; do
  name=${row%%|*} lab=${label[$name]} work="boot to poweroff"
  if [[ $name == long_* ]]; then work="long workload (krr_long=$long_n)" lab=${lab#long: }; fi
  printf '%s\t%s\t%s\t%s\n' "$work" "$lab" "$(med "${walls[$name]}")" "$(med "${cpus[$name]}")" >>"$table"
done
# The largest KRR-format recording of the KRR-recordings work (tests/krr_synth's large
# scenario with a 16 MiB ring), beside KRR's own replayer when one is built (KRR_QEMU; see
# bench/krr-crosscheck-synth.sh, which also checks that both end alike).
if [ -n "${KRR_QEMU:-}" ]; then
  if bash "$here/krr-crosscheck-synth.sh" -n "$runs" --scenarios large-ring16 >"$logs/krr.out" 2>&1; then
    line=$(grep 'median of' "$logs/krr.out" | tail -n 1)
    echo
    echo "KRR recording (synthetic large-ring16): $line"
    read -r kw kc dw dc sw sc < <(sed -E 's/.*KRR ([0-9.]+) \(([0-9.]+)\), krr ([0-9.]+) \(([0-9.]+)\), krr --singlestep ([0-9.]+) \(([0-9.]+)\).*/\1 \2 \3 \4 \5 \6/' <<<"$line")
    work="KRR recording (synthetic, large-ring16)"
    printf '%s\t%s\t%s\t%s\n' "$work" "KRR's replayer" "$kw" "$kc" "$work" "krr replay --krr" "$dw" "$dc" \
      "$work" "krr replay --krr --singlestep" "$sw" "$sc" >>"$table"
  else
    echo "bench/boot.sh: the KRR cross-check failed (see $logs/krr.out); no KRR rows" >&2
  fi
else
  echo "(KRR's own replayer: set KRR_QEMU to add the KRR-recording rows)"
fi
if [ -z "${KRR_BENCH_ROWS:-}" ]; then
  python3 "$here/chart.py" "$table" "$here/boot.svg" && echo "chart: bench/boot.svg"
fi

echo
printf '%-52s %8s %8s\n' "like with like: time ratio (below 1: krr faster)" wall CPU
for pair in "${PAIRS[@]}"; do
  a=${pair%%|*} b=${pair#*|}
  [ -n "${label[$a]:-}" ] && [ -n "${label[$b]:-}" ] || continue
  printf '%-52s %7.2fx %7.2fx\n' "${label[$a]} / ${label[$b]}" \
    "$(awk -v a="$(med "${walls[$a]}")" -v b="$(med "${walls[$b]}")" 'BEGIN {print a / b}')" \
    "$(awk -v a="$(med "${cpus[$a]}")" -v b="$(med "${cpus[$b]}")" 'BEGIN {print a / b}')"
done
