#!/usr/bin/env bash
# krr-qemu-traps.sh RECORDING_DIR [KRR_QEMU_SRC]: compile the recorded kernel's trap points
# into KRR's QEMU. KRR's replayer has them as #defines in include/sysemu/kernel-rr.h
# (KRR's kernel_rr/generate_symbol.sh rewrites them with gdb from a Linux vmlinux, by symbol
# and by Linux source lines); this does the same for any vmlinux krr can resolve, e.g. the
# synthetic kernel of tests/krr_synth, then rebuilds (`ninja qemu-system-x86_64` in build/,
# incremental: about a minute).
#
# RECORDING_DIR holds the snapshot (test1) and the vmlinux. Values:
# - the trap points krr's replayer uses, as `krr info --krr test1 --vmlinux vmlinux` resolves
#   them (symbols, PF_EXEC_END's branch, the exec-lock points);
# - the other macros by the symbol KRR's rr_gen_replay_symbols.py reads (nm), when the
#   vmlinux has it;
# - anything else (Linux source lines, functions the kernel lacks): a distinct address below
#   the kernel image that no code runs at (KRR's switch statements need distinct values).
# The header gets a `// krr-qemu-traps: <sha256 of the vmlinux>` line; when it already names
# this vmlinux nothing is rewritten (the build still runs, a no-op when up to date).
# KRR_QEMU_SRC defaults to /work/krr-qemu-src. KRR_BIN as in krr-crosscheck.sh.
set -euo pipefail
rec=${1:?usage: $0 RECORDING_DIR [KRR_QEMU_SRC]}
src=${2:-/work/krr-qemu-src}
KRR_BIN=${KRR_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/krr}
hdr=$src/include/sysemu/kernel-rr.h
[ -f "$hdr" ] || { echo "krr-qemu-traps: $hdr: not KRR's QEMU source" >&2; exit 2; }
vml=$rec/vmlinux
sum=$(sha256sum "$vml" | cut -d' ' -f1)
if grep -q "^// krr-qemu-traps: $sum" "$hdr"; then
    echo "krr-qemu-traps: $hdr already has $vml's trap points"
else
    "$KRR_BIN" info --krr "$rec/test1" --vmlinux "$vml" > "$rec/traps.txt"
    nm "$vml" > "$rec/nm.txt"
    python3 - "$hdr" "$rec/traps.txt" "$rec/nm.txt" "$sum" <<'PY'
import re, sys
hdr, traps, nmf, sha = sys.argv[1:5]
resolved = {}
on = False
for l in open(traps):
    if l.startswith('trap points:'):
        on = True; continue
    m = re.match(r'^\s+([A-Z0-9_]+)\s+(0x[0-9a-f]+)', l)
    if on and m: resolved[m.group(1)] = m.group(2)
    elif on and not l.startswith(' '): on = False
syms = {}
for l in open(nmf):
    p = l.split()
    if len(p) == 3: syms.setdefault(p[2], '0x' + p[0])
# rr_gen_replay_symbols.py's symbols (its source-line macros have none).
by_symbol = {
    'RR_GFU_BEGIN': 'rr_gfu_begin', 'STRNCPY_FROM_USER': 'strncpy_from_user',
    'STRNLEN_USER': 'strnlen_user', 'RANDOM_GEN': 'rr_record_random',
    'PF_EXEC': 'exc_page_fault', 'GP_EXEC': 'exc_general_protection',
    'RR_CFU_BEGIN': 'rr_cfu_begin', 'RR_RECORD_CFU': 'rr_record_cfu',
    'PF_ENTRY': 'asm_exc_page_fault', 'RR_PTE_CLEAR': 'rr_record_pte_clear',
    'RR_PTE_READ': 'rr_read_pte', 'RR_PTE_READ_ONCE': 'rr_read_pte_once',
    'RR_PAGE_MAP': 'rr_record_page_map', 'SYSCALL_ENTRY': 'entry_SYSCALL_64',
    'SYSCALL_EXIT': 'syscall_exit_to_user_mode', 'PF_ASM_EXC': 'asm_exc_page_fault',
    'INT_ASM_EXC': 'asm_exc_int3', 'INT_ASM_DEBUG': 'asm_exc_debug',
    'IRQ_ENTRY': 'irqentry_enter', 'IRQ_EXIT': 'irqentry_exit',
    'RR_IO_URING_BEGIN': 'rr_begin_record_io_uring',
    'RR_IO_URING_RECORD_ENTRY': 'rr_record_io_uring_entry',
    'RR_RECORD_SYSCALL': 'rr_record_syscall', 'RR_HANDLE_SYSCALL': 'rr_handle_syscall',
    'LOCK_RELEASE': 'rr_release_smp_exec',
}
lines = open(hdr).read().split('\n')
out, used, spare, report = [], set(), 0xffffffff80e00000, []
for l in lines:
    if l.startswith('// krr-qemu-traps:'):
        continue
    m = re.match(r'^#define ([A-Z0-9_]+) (0xffffffff[0-9a-f]+)(.*)$', l)
    if m:
        name = m.group(1)
        v = resolved.get(name) or syms.get(by_symbol.get(name, ''))
        how = 'krr' if name in resolved else 'nm' if v else 'none'
        if not v or int(v, 16) in used and how != 'krr':
            v = hex(spare); spare += 0x10; how = 'unused'
        used.add(int(v, 16))
        report.append('%-26s %s (%s)' % (name, v, how))
        l = '#define %s %s%s' % (name, v, m.group(3))
    out.append(l)
i = next(k for k, l in enumerate(out) if l.startswith('#define'))
out.insert(i, '// krr-qemu-traps: %s' % sha)
open(hdr, 'w').write('\n'.join(out))
print('\n'.join(report))
PY
fi
echo "krr-qemu-traps: building KRR's QEMU in $src/build"
ninja -C "$src/build" qemu-system-x86_64 | tail -2
