#!/usr/bin/env bash
# shellcheck disable=SC2317
# krr and QEMU TCG side by side on the same kernel, initramfs, memory and kernel command line
# (krr's default, `console=ttyS0 nokaslr panic=-1`, read from src/run.rs as
# tests/guest/qemu-boot.sh does): boot to power-off of the test guest (tests/guest: the busybox
# initramfs and its workload; by default Debian's 6.1 cloud kernel from tests/guest/fetch.sh).
# Rows:
#   krr record --cpu max                          krr's own CPU model
#   krr replay of that trace
#   krr record --cpu max,-pcid,-x2apic,-tsc-deadline,-vme,-fsrm   the CPU QEMU 7.2's TCG can offer
#   krr replay of that trace
#   QEMU TCG                                      tests/guest/qemu-boot.sh (QEMU's own APICs)
#   QEMU TCG -icount shift=0,sleep=off            QEMU's deterministic clock (1 insn = 1 ns)
#   the same with -machine hpet=off               QEMU's PC without its HPET, which krr's lacks
# Per row: median wall and CPU time over RUNS runs (user + system of all threads, GNU time, as
# bench/boot.sh), retired guest instructions, how many of them ran before the kernel's first
# instruction at a kernel-half address (firmware, real-mode setup and the decompressor: QEMU
# boots through SeaBIOS, krr enters the decompressor's 64-bit entry directly), the guest's own
# interrupt counts per kind (its /proc/interrupts, which tests/guest/init prints after the
# workload's end marker; a kind no row counts is left out, `-` is a line the guest did not
# print: no handler), and whether the workload's lines (between KRR-WORKLOAD-START and
# KRR-WORKLOAD-END, kernel log lines left out) are those of `krr record --cpu max`.
#
# Instruction counts: krr's are its retired-instruction count (a REP string instruction is one
# instruction, a faulting one none). QEMU's come from a TCG plugin (bench/qemu-insn-count.c,
# built with cc into tests/guest/cache/qemu-plugin/), in a separate, untimed counting run per
# QEMU row and run (the plugin's instrumentation would slow the timed runs): every executed
# instruction, minus the re-executions of a REP string instruction's further iterations (QEMU
# runs each iteration as a block of its own), so the same definition up to instructions that
# fault and are re-executed (counted twice by QEMU) and a REP instruction interrupted between
# iterations. The split at the first kernel-half instruction is the plugin's for QEMU and,
# for krr, found by bisection with `krr replay TRACE --stop-at N` (the RIP there).
# Below the table: krr's trace events (`krr info TRACE`): event counts, interrupts injected by
# vector, device accesses; then ratios (krr / QEMU) of time and instructions.
#
# Usage: bash bench/compare-qemu.sh [-n RUNS] [KERNEL]   (RUNS default 1, taking turns)
# Logs (consoles, stderr, times, traces, counts) go to bench/.cache/compare-qemu/.
set -euo pipefail
# Every timed krr run compiles its blocks (cold): the persistent code cache stays off.
export KRR_CODE_CACHE=off
# The whole script is one compound command, read before it runs (safe to edit meanwhile).
{
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
usage() { echo "usage: bash bench/compare-qemu.sh [-n RUNS] [KERNEL]" >&2; exit 2; }
runs=1 kernel_arg=
while [ $# -gt 0 ]; do
  case $1 in
    -n) [ $# -ge 2 ] || usage; runs=$2; shift 2 ;;
    -h | --help) usage ;;
    -*) usage ;;
    *) [ -z "$kernel_arg" ] || usage; kernel_arg=$1; shift ;;
  esac
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || usage
logs="$here/.cache/compare-qemu"
mkdir -p "$logs"
rm -f "$logs"/*.console "$logs"/*.stderr "$logs"/*.time "$logs"/*.count "$logs"/*.trace

# GNU time measures wall and CPU time and max RSS (bench/gnu-time.sh).
timer=$(bash "$here/gnu-time.sh")

mapfile -t guest < <(bash "$repo/tests/guest/fetch.sh")
kernel=${kernel_arg:-${guest[0]}} initrd=${guest[1]} qemu=${guest[2]}
[ -f "$kernel" ] || { echo "bench/compare-qemu.sh: no kernel $kernel" >&2; exit 2; }
(cd "$repo" && cargo build --release --bin krr >&2)
krr="$repo/target/release/krr"
append=$(sed -n 's/.*"\(console=ttyS0[^"]*\)".*/\1/p' "$repo/src/run.rs" | head -n 1)

# The instruction-counting plugin, if this QEMU takes plugins (Debian's 7.2 does).
plugin=
if grep -q '^-plugin' <<<"$("$qemu" -help)"; then
  pdir="$repo/tests/guest/cache/qemu-plugin"
  plugin="$pdir/libqemu-insn-count.so"
  if [ ! -f "$plugin" ] || [ "$here/qemu-insn-count.c" -nt "$plugin" ]; then
    mkdir -p "$pdir"
    cc -O2 -Wall -Wextra -shared -fPIC -fvisibility=hidden -o "$plugin.tmp" "$here/qemu-insn-count.c" \
      || { echo "bench/compare-qemu.sh: cannot build the QEMU plugin" >&2; exit 1; }
    mv "$plugin.tmp" "$plugin"
  fi
else
  echo "bench/compare-qemu.sh: this QEMU has no -plugin: no instruction counts for QEMU" >&2
fi

qcpu=max,-pcid,-x2apic,-tsc-deadline,-vme,-fsrm
boot=(--kernel "$kernel" --initrd "$initrd")
# One row = row_NAME RUN: one boot with the console on stdout, the log on stderr, under
# "${measure[@]}" (the timer). (Called as "row_$name": shellcheck's SC2317 is a false alarm.)
row_krr_rec_max() { "${measure[@]}" "$krr" record "${boot[@]}" --cpu max -o "$logs/max.$1.trace"; }
row_krr_rep_max() { "${measure[@]}" "$krr" replay "$logs/max.$1.trace"; }
row_krr_rec_q() { "${measure[@]}" "$krr" record "${boot[@]}" --cpu "$qcpu" -o "$logs/q.$1.trace"; }
row_krr_rep_q() { "${measure[@]}" "$krr" replay "$logs/q.$1.trace"; }
row_qemu() { "${measure[@]}" bash "$repo/tests/guest/qemu-boot.sh" "$kernel" "$initrd" "${plugin_args[@]}"; }
row_qemu_icount() {
  "${measure[@]}" bash "$repo/tests/guest/qemu-boot.sh" "$kernel" "$initrd" -icount shift=0,sleep=off \
    "${plugin_args[@]}"
}
row_qemu_nohpet() {
  "${measure[@]}" bash "$repo/tests/guest/qemu-boot.sh" "$kernel" "$initrd" -icount shift=0,sleep=off \
    -machine hpet=off "${plugin_args[@]}"
}
# name|label
ROWS=(
  "krr_rec_max|krr record --cpu max"
  "krr_rep_max|krr replay (max)"
  "krr_rec_q|krr record --cpu q"
  "krr_rep_q|krr replay (q)"
  "qemu|QEMU TCG"
  "qemu_icount|QEMU TCG -icount 0"
  "qemu_nohpet|QEMU -icount 0 hpet=off"
)
ref=krr_rec_max

# The workload's lines: between the markers, kernel log lines ("[   1.234] ...") left out.
workload() {
  tr -d '\r' <"$1" | awk '/KRR-WORKLOAD-END/ {exit} on && !/^\[ *[0-9]+\.[0-9]+\] / {sub(/[ \t]+$/, ""); print}
    /KRR-WORKLOAD-START/ {on = 1}'
}
# The guest's /proc/interrupts after the end marker, as "kind count" lines: "N:name" for an IRQ
# line (its handler's name), the three-letter name for the others.
interrupts() {
  tr -d '\r' <"$1" | awk '/KRR-WORKLOAD-END/ {on = 1; next} !on || /^\[ *[0-9]+\.[0-9]+\] / {next}
    $1 ~ /^[0-9]+:$/ {print $1 $NF, $2; next} $1 ~ /^[A-Z][A-Z][A-Z]:$/ {print substr($1, 1, 3), $2}'
}

# One boot of one row, timed; sets w, u (CPU s) and n (instructions or -).
boot_once() {
  local name=$1 i=$2 out err t code=0 us sy
  out="$logs/$name.$i.console" err="$logs/$name.$i.stderr" t="$logs/$name.$i.time"
  measure=("$timer" -f '%e %U %S' -o "$t") plugin_args=()
  "row_$name" "$i" >"$out" 2>"$err" || code=$?
  if [ "$code" -ne 0 ]; then
    echo "bench/compare-qemu.sh: $name run $i failed with status $code (see $err)" >&2; exit 1
  fi
  case $name in
    krr_rec*) grep -q '^krr: guest powered off: ' "$err" || {
      echo "bench/compare-qemu.sh: $name run $i: the guest did not power off (see $err)" >&2; exit 1; } ;;
    krr_rep*) grep -q '^Verdict: matched' "$err" || {
      echo "bench/compare-qemu.sh: $name run $i did not match the recording (see $err)" >&2; exit 1; } ;;
  esac
  grep -q KRR-WORKLOAD-END "$out" || {
    echo "bench/compare-qemu.sh: $name run $i did not reach the end marker (see $out)" >&2; exit 1; }
  read -r w us sy < <(tail -n 1 "$t")
  u=$(awk -v a="$us" -v b="$sy" 'BEGIN {printf "%.2f", a + b}')
  n=$(sed -n 's/^Instructions: \([0-9]*\)$/\1/p' "$err")
  n=${n:--}
}

# One untimed QEMU boot with the counting plugin; sets n and k (instructions, before the kernel).
count_once() {
  local name=$1 i=$2 out err c code=0
  out="$logs/$name.count.$i.console" err="$logs/$name.count.$i.stderr" c="$logs/$name.$i.count"
  measure=("$timer" -f '%e %U %S' -o "$logs/$name.count.$i.time") plugin_args=(-plugin "$plugin,out=$c")
  "row_$name" "$i" >"$out" 2>"$err" || code=$?
  if [ "$code" -ne 0 ] || [ ! -s "$c" ]; then
    echo "bench/compare-qemu.sh: $name counting run $i failed (status $code, see $out)" >&2; exit 1
  fi
  n=$(sed -n 's/.* instructions \([0-9]*\) .*/\1/p' "$c")
  k=$(sed -n 's/.* before-kernel \([0-9]*\).*/\1/p' "$c")
}

# krr: the count at the first kernel-half instruction of a trace, by bisection over --stop-at
# (below: the first event at a kernel-half RIP; the RIP stays in the kernel half from there).
kernel_entry() {
  local trace=$1 lo=0 hi mid rip
  hi=$("$krr" info "$trace" --events 0..1000 2>/dev/null \
    | awk '/^event / {for (f = 1; f < NF; f++) if ($f == "instruction") c = $(f + 1);
           for (f = 1; f < NF; f++) if ($f == "RIP" && $(f + 1) ~ /^0xffffffff[89a-f]/) {print c; exit}}' || true)
  [ -n "$hi" ] || { echo -; return; }
  while [ $((hi - lo)) -gt 1 ]; do
    mid=$(((lo + hi) / 2))
    rip=$("$krr" replay "$trace" -q --stop-at "$mid" 2>&1 \
      | sed -n 's/^next instruction [0-9]* RIP \(0x[0-9a-f]*\).*/\1/p' || true)
    [ -n "$rip" ] || { echo -; return; }
    if [[ $rip == 0xffffffff[89a-f]* ]] && [ ${#rip} -eq 18 ]; then hi=$mid; else lo=$mid; fi
  done
  echo "$hi"
}

median() { sort -g | awk -v OFMT=%.15g '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
# The median of a space-separated list, "-" entries left out ("-" if nothing is left).
med() {
  local xs; xs=$(tr ' ' '\n' <<<"$1" | grep -v '^-$' | grep . || true)
  if [ -n "$xs" ]; then median <<<"$xs"; else echo -; fi
}

# How quiet the machine was: the CPU time all processes used during the runs (/proc/stat),
# less this script's children's (bash's `times`), as a share of all cores' time.
busy_total() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
# (`times` runs in this shell, not in a subshell, which would have no children of its own.)
children_cpu() { awk 'NR == 2 {split($1, u, /[ms]/); split($2, s, /[ms]/); print u[1] * 60 + u[2] + s[1] * 60 + s[2]}' "$1"; }
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
read -r busy0 total0 < <(busy_total)
times >"$logs/times.start"
declare -A walls=() cpus=() insns=() before=() same=() irq=()
for i in $(seq 1 "$runs"); do
  for row in "${ROWS[@]}"; do
    name=${row%%|*}
    boot_once "$name" "$i"
    k=-
    if [[ $name == qemu* ]] && [ -n "$plugin" ]; then
      count_once "$name" "$i"
      cmp -s <(workload "$logs/$name.count.$i.console") <(workload "$logs/$ref.1.console") \
        || same[$name]+="x"
    fi
    echo "run $i ${row#*|}: ${w} s wall, ${u} s CPU, ${n} instructions" >&2
    walls[$name]+="$w " cpus[$name]+="$u " insns[$name]+="$n " before[$name]+="$k "
    cmp -s <(workload "$logs/$name.$i.console") <(workload "$logs/$ref.1.console") || same[$name]+="x"
    while read -r kind c; do irq[$name/$kind]+="$c "; done < <(interrupts "$logs/$name.$i.console")
  done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
read -r busy1 total1 < <(busy_total)
times >"$logs/times.end"
others=$(awk -v b="$((busy1 - busy0))" -v t="$((total1 - total0))" -v o="$(children_cpu "$logs/times.end")" \
  -v o0="$(children_cpu "$logs/times.start")" \
  -v hz="$(getconf CLK_TCK)" 'BEGIN {x = (b / hz - (o - o0)) / (t / hz) * 100; printf "%.0f%%", x < 0 ? 0 : x}')
# krr: instructions before the kernel (the same in every run and in the replay).
for v in max q; do
  k=$(kernel_entry "$logs/$v.1.trace")
  before[krr_rec_$v]=$k before[krr_rep_$v]=$k
done

# The interrupt kinds some row counted (median above 0): IRQ lines by number, then the others
# in /proc/interrupts' order.
counted=$(for key in "${!irq[@]}"; do [ "$(med "${irq[$key]}")" = 0 ] || echo "${key#*/}"; done | sort -u)
kinds="$(grep ':' <<<"$counted" | sort -t: -k1,1n || true)"
for o in NMI LOC SPU PMI IWI RTR RES CAL TLB TRM ERR MIS PIN NPI PIW; do
  if grep -qx "$o" <<<"$counted"; then kinds+=" $o"; fi
done

declare -A label=()
for row in "${ROWS[@]}"; do label[${row%%|*}]=${row#*|}; done
echo
echo "Boot to power-off, krr and QEMU TCG side by side; $runs run(s) per row, taking turns; medians"
echo "kernel $(basename "$kernel"), initramfs $(basename "$initrd"), 512 MiB, command line \"$append\""
echo "$("$qemu" --version | head -n 1); krr $(git -C "$repo" rev-parse --short HEAD); q = $qcpu"
echo "-icount 0 = -icount shift=0,sleep=off; $(nproc) cores; load average at start $load_start, at end $load_end;"
echo "other processes used $others of all cores' time during the runs"
hdr=$(printf '%-24s %7s %7s %11s %10s' row "wall s" "CPU s" instructions "pre-kernel")
for kind in $kinds; do hdr+=$(printf ' %8s' "$kind"); done
echo "$hdr workload"
for row in "${ROWS[@]}"; do
  name=${row%%|*}
  n=$(tr ' ' '\n' <<<"${insns[$name]}" | grep . | sort -u)
  [ "$(wc -l <<<"$n")" -eq 1 ] || n=$(med "${insns[$name]}")
  line=$(printf '%-24s %7.2f %7.2f %11s %10s' "${label[$name]}" "$(med "${walls[$name]}")" \
    "$(med "${cpus[$name]}")" "$n" "$(med "${before[$name]}")")
  for kind in $kinds; do line+=$(printf ' %8s' "$(med "${irq[$name/$kind]:-}")"); done
  if [ "$name" = "$ref" ]; then wl=reference; elif [ -z "${same[$name]:-}" ]; then wl=same; else wl="DIFFERS(${#same[$name]})"; fi
  echo "$line $wl"
done
echo "(wall, CPU: one whole process, CPU = user + system of all threads; instructions: krr's retired count,"
echo " QEMU's from the plugin in separate counting runs, median; pre-kernel: before the first kernel-half"
echo " instruction; interrupts: the guest's /proc/interrupts after the workload; workload: the same lines as"
echo " krr record --cpu max, or DIFFERS(number of runs, counting runs included))"
for name in qemu qemu_icount qemu_nohpet; do
  [ -n "$plugin" ] || break
  echo "${label[$name]}: instructions per counting run: ${insns[$name]% }; counting runs' wall s (with the plugin):" \
    "$(for i in $(seq 1 "$runs"); do read -r cw _ < "$logs/$name.count.$i.time"; printf '%s ' "$cw"; done)"
done
# krr's trace events (`krr info`): event counts, interrupts injected per vector, device accesses.
for v in max q; do
  "$krr" info "$logs/$v.1.trace" >"$logs/$v.info"
  # The "name: count" lines of one "=== TITLE ===" section matching $2, joined, "name$3count".
  section() {
    awk -F': ' -v want="$1" -v keep="$2" -v mid="$3" '/^=== / {on = ($0 == "=== " want " ==="); next}
      on && NF == 2 && $1 ~ keep {printf "%s%s%s%s", sep, $1, mid, $2; sep = ", "}' "$logs/$v.info"
  }
  echo "krr trace, --cpu ${v/q/$qcpu}: $(section "Event Stats" '^(Interrupt|NMI|IO|MMIO|MSR|RDTSC)' ' ')"
  echo "  interrupts by vector: $(section "Interrupts by vector" . ' x');" \
    "device accesses: $(section "Device accesses" . ' ')"
done
echo
printf '%-48s %7s %7s %13s %11s\n' "ratio (below 1: krr less)" wall CPU instructions "from kernel"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2fx", a / b}'; }
for pair in krr_rec_q/qemu krr_rec_q/qemu_icount krr_rec_q/qemu_nohpet krr_rep_q/qemu krr_rep_q/qemu_icount \
  krr_rec_max/qemu_icount krr_rec_max/krr_rec_q; do
  a=${pair%/*} b=${pair#*/}
  na=$(med "${insns[$a]}") nb=$(med "${insns[$b]}") ka=$(med "${before[$a]}") kb=$(med "${before[$b]}")
  fa=- fb=-
  [ "$na" != - ] && [ "$ka" != - ] && fa=$((na - ka))
  [ "$nb" != - ] && [ "$kb" != - ] && fb=$((nb - kb))
  printf '%-48s %7s %7s %13s %11s\n' "${label[$a]} / ${label[$b]}" \
    "$(ratio "$(med "${walls[$a]}")" "$(med "${walls[$b]}")")" "$(ratio "$(med "${cpus[$a]}")" "$(med "${cpus[$b]}")")" \
    "$(ratio "$na" "$nb")" "$(ratio "$fa" "$fb")"
done
exit
}
