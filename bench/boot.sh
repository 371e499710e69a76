#!/usr/bin/env bash
# Boot-to-poweroff of the test guest (tests/guest: Debian's 6.1 cloud kernel + the busybox
# initramfs and its workload), side by side: `krr replay` of a recording of it (default and
# --singlestep), `krr run`, `krr run --singlestep`, QEMU TCG and
# QEMU TCG one instruction per block (Debian's qemu-system-x86, tests/guest/qemu-boot.sh: same
# kernel, initramfs, memory and command line, a CPU model made like krr's). The rows take turns,
# RUNS times (default 3), and every run must reach the workload's end marker.
#
# Prints, per row: median (and min-max) wall time, median max RSS, the guest instruction count
# (krr's last stderr line; QEMU does not count), MIPS (instructions / median wall time), and
# the wall-time ratio against both QEMU rows, and for krr the blocks compiled, their code
# bytes and the time spent compiling (median).
#
# Usage: bash bench/boot.sh [RUNS]. Logs go to bench/.cache/boot/.
#
# Each row is a function row_NAME OUT ERR that boots once with the console in OUT and stderr in
# ERR; it is listed in ROWS with its label.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
runs=${1:-3}
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "usage: bash bench/boot.sh [RUNS]" >&2; exit 2; }
logs="$here/.cache/boot"
mkdir -p "$logs"

# /usr/bin/time (GNU) measures wall time and max RSS; Debian's `time`, unpacked, if missing.
timer=/usr/bin/time
if [ ! -x "$timer" ]; then
  timer="$here/.cache/time/usr/bin/time"
  if [ ! -x "$timer" ]; then
    mkdir -p "$here/.cache/time-deb"
    (cd "$here/.cache/time-deb" && { apt-get download time >/dev/null 2>&1 \
      || { apt-get update >/dev/null 2>&1; apt-get download time >/dev/null 2>&1; }; }) \
      || { echo "bench/boot.sh: /usr/bin/time is missing and apt-get download time failed" >&2; exit 1; }
    dpkg-deb -x "$(ls "$here"/.cache/time-deb/time_*.deb | head -n 1)" "$here/.cache/time"
  fi
fi

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

# The trace the replay rows replay (recorded once, not timed).
trace="$logs/boot.trace"
"$krr" record --kernel "$kernel" --initrd "$initrd" -o "$trace" >"$logs/record.console" 2>"$logs/record.stderr" \
  || { echo "bench/boot.sh: krr record failed (see $logs/record.stderr)" >&2; exit 1; }
grep -q '^krr: guest powered off: ' "$logs/record.stderr" || {
  echo "bench/boot.sh: the recorded guest did not power off (see $logs/record.stderr)" >&2; exit 1; }

# Each row boots once, under "${measure[@]}" (the timer), console to stdout, log to stderr.
row_krr_replay() { "${measure[@]}" "$krr" replay "$trace"; }
row_krr_replay_singlestep() { "${measure[@]}" "$krr" replay "$trace" --singlestep; }
row_krr() { "${measure[@]}" "$krr" run --kernel "$kernel" --initrd "$initrd"; }
row_krr_singlestep() { "${measure[@]}" "$krr" run --kernel "$kernel" --initrd "$initrd" --singlestep; }
row_qemu() { "${measure[@]}" bash "$repo/tests/guest/qemu-boot.sh" "$kernel" "$initrd"; }
row_qemu_singlestep() {
  QEMU_ACCEL=$qemu_ss_accel "${measure[@]}" bash "$repo/tests/guest/qemu-boot.sh" "$kernel" "$initrd" \
    "${qemu_ss_args[@]}"
}
# name|label; the ratio columns divide by the rows named qemu and qemu_singlestep.
ROWS=(
  "krr_replay|krr replay"
  "krr_replay_singlestep|krr replay --singlestep"
  "krr|krr run"
  "krr_singlestep|krr run --singlestep"
  "qemu|QEMU TCG"
  "qemu_singlestep|QEMU TCG ${qemu_ss_args[*]:-one-insn-per-tb}"
)

# One boot of one row; sets w (wall seconds), m (max RSS KiB), n (instructions or -).
boot_once() {
  local name=$1 i=$2 out err t code=0
  out="$logs/$name.$i.console" err="$logs/$name.$i.stderr" t="$logs/$name.$i.time"
  measure=("$timer" -f '%e %M' -o "$t")
  "row_$name" >"$out" 2>"$err" || code=$?
  # Status 0 only: krr exits 2 when the guest halts with interrupts off, a hung guest.
  if [ "$code" -ne 0 ]; then
    echo "bench/boot.sh: $name run $i failed with status $code (see $err)" >&2; exit 1
  fi
  # krr run must end with the guest's power-off (not a halt, reset or instruction limit).
  case $name in krr|krr_singlestep)
    grep -q '^krr: guest powered off: ' "$err" || {
      echo "bench/boot.sh: $name run $i: the guest did not power off (see $err)" >&2; exit 1; }
  esac
  grep -q KRR-WORKLOAD-END "$out" || {
    echo "bench/boot.sh: $name run $i did not reach the end marker (see $out)" >&2; exit 1; }
  read -r w m < <(tail -n 1 "$t")
  n=$(tail -n 1 "$err" | sed -n 's/.* \([0-9][0-9]*\) instructions in .*/\1/p')
  # krr replay: the summary's lines.
  if [[ $name == krr_replay* ]]; then
    grep -q '^Verdict: matched' "$err" || {
      echo "bench/boot.sh: $name run $i did not match the recording (see $err)" >&2; exit 1; }
    n=$(sed -n 's/^Instructions: \([0-9]*\)$/\1/p' "$err")
  fi
  n=${n:--}
  # Compiled blocks, code bytes, compile seconds (krr's "N blocks compiled, B code bytes, S s compiling").
  c=$(grep -o '[0-9]* blocks compiled, [0-9]* code bytes, [0-9.]* s compiling' "$err" | tail -n 1 \
    | awk '{print $1 " " $4 " " $7}' || true)
  c=${c:-"- - -"}
}

median() { sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

declare -A walls=() rss=() insns=() blocks=() bytes=() csecs=()
for i in $(seq 1 "$runs"); do
  for row in "${ROWS[@]}"; do
    name=${row%%|*}
    boot_once "$name" "$i"
    echo "run $i ${row#*|}: ${w} s, ${m} KiB, ${n} instructions" >&2
    walls[$name]+="$w "
    rss[$name]+="$m "
    insns[$name]+="$n "
    read -r cb cy cs <<<"$c"
    blocks[$name]+="$cb " bytes[$name]+="$cy " csecs[$name]+="$cs "
  done
done

q=$(tr ' ' '\n' <<<"${walls[qemu]}" | grep . | median)
qs=$(tr ' ' '\n' <<<"${walls[qemu_singlestep]}" | grep . | median)
echo
echo "Boot to poweroff, $runs runs per row, taking turns ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
echo "$("$qemu" --version | head -n 1); krr $(git -C "$repo" rev-parse --short HEAD)"
printf '%-26s %9s %15s %9s %14s %7s %9s %10s %8s %11s %10s\n' row "wall (s)" "min-max (s)" "RSS (MiB)" instructions MIPS "vs QEMU" "vs QEMU 1" blocks "code bytes" "compile s"
for row in "${ROWS[@]}"; do
  name=${row%%|*}
  ws=$(tr ' ' '\n' <<<"${walls[$name]}" | grep .)
  w=$(median <<<"$ws")
  lo=$(sort -g <<<"$ws" | head -n 1) hi=$(sort -g <<<"$ws" | tail -n 1)
  m=$(tr ' ' '\n' <<<"${rss[$name]}" | grep . | median)
  n=$(tr ' ' '\n' <<<"${insns[$name]}" | grep . | sort -u)
  [ "$(wc -l <<<"$n")" -eq 1 ] || n="varies"
  if [[ "$n" =~ ^[0-9]+$ ]]; then mips=$(awk -v n="$n" -v w="$w" 'BEGIN {printf "%.1f", n / w / 1e6}'); else mips=-; fi
  med_or_dash() {
    local xs; xs=$(tr ' ' '\n' | grep -v '^-$' | grep . || true)
    if [ -n "$xs" ]; then median <<<"$xs"; else echo -; fi
  }
  printf '%-26s %9.2f %15s %9.0f %14s %7s %8.2fx %9.2fx %8s %11s %10s\n' "${row#*|}" "$w" "$lo-$hi" \
    "$(awk -v m="$m" 'BEGIN {print m / 1024}')" "$n" "$mips" \
    "$(awk -v a="$w" -v b="$q" 'BEGIN {print a / b}')" "$(awk -v a="$w" -v b="$qs" 'BEGIN {print a / b}')" \
    "$(med_or_dash <<<"${blocks[$name]}")" "$(med_or_dash <<<"${bytes[$name]}")" "$(med_or_dash <<<"${csecs[$name]}")"
done
echo "(vs QEMU: wall time / QEMU TCG's; vs QEMU 1: / QEMU TCG one instruction per block's. MIPS: guest instructions / median wall time, startup included.)"
