#!/usr/bin/env bash
# Boots the test guest under QEMU TCG (Debian's qemu-system-x86, from fetch-qemu.sh) the way
# `krr run` boots it: same kernel, initramfs, memory and kernel command line, console on
# stdout. Usage: qemu-boot.sh KERNEL INITRD [extra QEMU options, e.g. -singlestep]
#
# With acpi=off the kernel cannot power the machine off: `poweroff -f` ends in
# "reboot: System halted" and a halt with interrupts disabled, where QEMU would wait forever
# (krr stops there: "guest halted with interrupts disabled"). So this script reads the console
# and stops QEMU as soon as the kernel prints that line (or "reboot: Power down"), and exits 0;
# a QEMU that exits by itself (e.g. a reset under -no-reboot) gives its own status. Exits 124
# after QEMU_BOOT_TIMEOUT seconds (default 600). QEMU_ACCEL replaces `-accel tcg` (e.g.
# tcg,one-insn-per-tb=on on QEMU 8.1 and later, where 7.2's -singlestep has moved).
#
# The CPU is qemu64 made into krr's model (runtime/src/cpuid.rs), so that the kernel takes the
# same paths (unknown vendor: generic init, page-table isolation on; no huge pages): vendor
# KrrKrrKrrKrr, family 6 model 0x55 stepping 4, SSE2 without SSE3, XSAVE and XSAVEOPT (x87 + SSE
# state), DE, no PSE PSE36 MCE MCA SVM,
# plus CX16 POPCNT MOVBE FSGSBASE BMI1 BMI2 ADX SMEP SMAP LZCNT RDTSCP.
#
# QEMU's clocks follow the host's, so the kernel's PIT calibration of the TSC sometimes fails
# under TCG (more often on a loaded host); the kernel then runs on jiffies. The workload's
# results do not depend on it, the boot time somewhat does.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 KERNEL INITRD [QEMU options]" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
kernel=$1 initrd=$2
shift 2
qemu=$(bash "$here/fetch-qemu.sh")
# The same command line as `krr run` (src/run.rs DEFAULT_APPEND).
append=$(sed -n 's/.*"\(console=ttyS0[^"]*\)".*/\1/p' "$here/../../src/run.rs" | head -n 1)
[ -n "$append" ] || { echo "$0: cannot read DEFAULT_APPEND from src/run.rs" >&2; exit 2; }
# krr's default model (--cpu max) also reports PCID, x2APIC and the TSC-deadline timer, which
# QEMU 7.2's TCG does not implement; `krr --cpu max,-pcid,-x2apic,-tsc-deadline` leaves them
# out (bench/boot.sh compares krr with QEMU that way).
cpu=qemu64,vendor=KrrKrrKrrKrr,family=6,model=85,stepping=4,+xsave,+xsaveopt,-sse3,-svm,+cx16,+popcnt,+movbe,+fsgsbase,+bmi1,+bmi2,+adx,+smep,+smap,+abm,+rdtscp,+arat

coproc QEMU {
  exec timeout "${QEMU_BOOT_TIMEOUT:-600}" "$qemu" -accel "${QEMU_ACCEL:-tcg}" -cpu "$cpu" -m 512M \
    -nodefaults -no-user-config -display none -serial stdio -no-reboot \
    -kernel "$kernel" -initrd "$initrd" -append "$append" "$@" </dev/null 2>&1
}
qpid=$QEMU_PID
halted=no
while IFS= read -r line <&"${QEMU[0]}"; do
  printf '%s\n' "$line"
  case $line in
    *"reboot: System halted"* | *"reboot: Power down"*)
      halted=yes
      kill "$qpid" 2>/dev/null || true
      break
      ;;
  esac
done
status=0
wait "$qpid" || status=$?
if [ "$halted" = yes ]; then
  exit 0
fi
exit "$status"
