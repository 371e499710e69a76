#!/usr/bin/env bash
# Boots the test guest under QEMU TCG (Debian's qemu-system-x86, from fetch-qemu.sh) the way
# `krr run` boots it: same kernel, initramfs, memory and kernel command line, console on
# stdout. Usage: qemu-boot.sh KERNEL INITRD [extra QEMU options, e.g. -singlestep]
#
# With acpi=off the kernel cannot power the machine off: `poweroff -f` ends in
# "reboot: System halted" and a halt with interrupts disabled, where QEMU would wait forever
# (krr stops there: "guest halted with interrupts disabled"). So this script reads the console
# and stops QEMU as soon as the kernel prints that line, and exits 0. After "reboot: Power down"
# (ACPI S5, which ends QEMU by itself) it waits up to 5 s for QEMU to exit on its own, so that
# the guest runs to its power-off and QEMU's exit handlers (e.g. a -plugin's) run, printing
# whatever QEMU still writes, then stops it if need be and exits 0. A QEMU that exits by itself
# otherwise (e.g. a reset under -no-reboot) gives its own status. Exits 124 after
# QEMU_BOOT_TIMEOUT seconds (default 600). QEMU_APPEND_EXTRA adds kernel parameters. QEMU_ACCEL replaces `-accel tcg` (e.g.
# tcg,one-insn-per-tb=on on QEMU 8.1 and later, where 7.2's -singlestep has moved).
#
# The CPU is qemu64 made into krr's `--cpu max,-pcid,-x2apic,-tsc-deadline,-vme,-fsrm`
# (runtime/src/cpuid.rs, src/cpu_model.rs), so that the kernel takes the same paths (unknown
# vendor: generic init, page-table isolation on; no huge pages): vendor KrrKrrKrrKrr, family 6
# model 0x55 stepping 4, krr's brand string, no hypervisor bit (as on krr; with it Linux also
# assumes the BHI bug), highest extended leaf 0x80000008; leaf 1 EDX as qemu64's, which is
# krr's without VME (FPU DE PSE TSC MSR PAE MCE CX8 APIC SEP MTRR PGE MCA CMOV PAT PSE36 CLFSH
# MMX FXSR SSE SSE2); leaf 1 ECX SSE3 PCLMULQDQ SSSE3 CX16 SSE4.1 SSE4.2 MOVBE POPCNT AES XSAVE;
# leaf 7 FSGSBASE BMI1 SMEP BMI2 ERMS ADX SMAP;
# XSAVEOPT; ARAT; LAHF/SAHF and LZCNT, SYSCALL NX RDTSCP LM (no SVM). The guest's
# /proc/cpuinfo flags are then the same on both. What stays QEMU's: its cache and TLB
# descriptor leaves (2, 4, 0x80000005/6; krr has none), its MCE banks (krr's MCG_CAP has none)
# and its TSC rate (the host's; krr's is 1 GHz).
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
# QEMU_APPEND_EXTRA adds parameters (bench/boot.sh's `krr_long=N`, as krr gets them in --append).
append+="${QEMU_APPEND_EXTRA:+ $QEMU_APPEND_EXTRA}"
# krr's default model (--cpu max) also reports PCID, x2APIC, the TSC-deadline timer, VME and
# FSRM, which QEMU 7.2's TCG does not implement; `krr --cpu max,-pcid,-x2apic,-tsc-deadline,-vme,-fsrm`
# leaves them out (bench/boot.sh and bench/compare-qemu.sh compare krr with QEMU that way).
cpu="qemu64,vendor=KrrKrrKrrKrr,family=6,model=85,stepping=4,model-id=krr virtual x86-64 CPU"
cpu+=",-hypervisor,xlevel=0x80000008,+xsave,+xsaveopt,+sse3,+pclmulqdq,+ssse3,+sse4.1,+sse4.2"
cpu+=",+aes,-svm,+cx16,+popcnt,+movbe"
cpu+=",+fsgsbase,+bmi1,+bmi2,+erms,+adx,+smep,+smap,+abm,+rdtscp,+arat"

coproc QEMU {
  exec timeout "${QEMU_BOOT_TIMEOUT:-600}" "$qemu" -accel "${QEMU_ACCEL:-tcg}" -cpu "$cpu" -m 512M \
    -nodefaults -no-user-config -display none -serial stdio -no-reboot \
    -kernel "$kernel" -initrd "$initrd" -append "$append" "$@" </dev/null 2>&1
}
qpid=$QEMU_PID
# Bash drops the coproc's descriptors once QEMU has exited: read a copy.
exec {qfd}<&"${QEMU[0]}"
halted=no
while IFS= read -r line <&"$qfd"; do
  printf '%s\n' "$line"
  case $line in
    *"reboot: System halted"*)
      halted=yes
      break
      ;;
    *"reboot: Power down"*)
      halted=yes
      # QEMU exits by itself at ACPI S5: the rest of its output, up to 5 s of it.
      while IFS= read -r -t 5 line <&"$qfd"; do printf '%s\n' "$line"; done
      break
      ;;
  esac
done
if [ "$halted" = yes ]; then
  kill "$qpid" 2>/dev/null || true
fi
status=0
wait "$qpid" || status=$?
if [ "$halted" = yes ]; then
  exit 0
fi
exit "$status"
