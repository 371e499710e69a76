#!/usr/bin/env bash
# krr-crosscheck.sh: replay one KRR recording with KRR's own replayer (its QEMU 7.0 fork) and
# with `krr replay --krr`, and print both wall times, their ratio and whether the final states
# agree (issue 15 item 8).
#
#   KRR_QEMU=/path/to/qemu-system-x86_64 bench/krr-crosscheck.sh [options] RECORDING
#
# RECORDING is the snapshot file (e.g. DIR/test1) or the directory holding it. Beside it:
# kernel_rr.log (required), kernel_rr_dma-*.log, kernel_rr_network.log, checkpoint-* (optional)
# and the recorded kernel's vmlinux (or --vmlinux FILE).
#
# Options:
#   --vmlinux FILE     the recorded kernel's image with symbols (default RECORDING_DIR/vmlinux)
#   --tail N           instructions logged by both replayers at the end, compared (default 64)
#   --cpu MODEL        KRR's -cpu (default Broadwell, as KRR's documentation replays)
#   --qemu-args "..."  extra hardware for KRR's QEMU, so it matches the recording (e.g. the
#                      disk: "-hda disk.img"); the script adds -machine/-m/-smp/-no-hpet and the
#                      ivshmem device itself
#   --no-strip         give KRR the snapshot as it is, even if it holds ivshmem's RAM (see below)
#   --all-events       give krr every event of kernel_rr.log (default: the ones KRR's loader
#                      reads, the final header's count - 1, so both end at the same event)
#   --full             also compare every instruction of the replay (both log all of them,
#                      untimed; about 480 bytes per instruction each: small recordings only)
#   --timeout SECS     per replayer run (default 3600)
#   --work DIR         where KRR runs (its working directory) and the logs go (default mktemp)
# Environment: KRR_QEMU (required), KRR_BIN (default target/release/krr of this checkout; must have
# `krr replay --krr`), KRR_ARGS (more options for every `krr replay --krr` run, e.g.
# "--profile host").
# Exit status: 0 both replayed to the end and agree; 1 they disagree (or one failed to replay);
# 3 KRR's QEMU cannot load the recording (the reason is printed); 2 usage / missing files.
#
# How KRR's replay is driven (read from krr-io/krr-qemu 6e8add9ac; see krr-spec.md 2.1, 3.1):
# - `-kernel-replay NAME` (softmmu/vl.c:3731) makes qmp_x_exit_preconfig (vl.c:2785) call
#   rr_load_snapshot(NAME) (migration/savevm.c:2891): one qemu_loadvm_state on the file NAME,
#   relative to the working directory; any load error exits with "An IO error has occurred"
#   after QEMU's own message (e.g. "Unknown savevm section", "Unknown ramblock", "block ...
#   should not be migrated !").
# - kernel_rr.log is opened relative to the working directory (kernel_rr/kernel_rr.c:37,2267),
#   when the vCPU thread is created (accel/tcg/tcg-accel-ops-mttcg.c:109 ->
#   rr_num_instr_before_next_interrupt, kernel_rr.c:3277), i.e. even before the snapshot is
#   loaded; a missing log crashes QEMU (fread on NULL). So KRR runs in a work directory holding
#   links to the recording's files.
# - replay_ready() (kernel_rr.c:2525, called at vl.c:3909) copies the log's first header into
#   the ivshmem BAR2 RAM registered by hw/misc/ivshmem.c:927: without an ivshmem-plain device
#   it dereferences NULL. The device must sit at the recorded PCI address (its vmstate section is
#   named after it); its backend is a shared file of the ring's size (a fresh one here, never
#   /dev/shm/ivshmem, which a live KRR session may own).
# - ivshmem's BAR2 RAM is non-migratable in KRR's QEMU (hw/misc/ivshmem.c:919): a stream that
#   lists it (every upstream QEMU writes it, e.g. Debian's 7.2 `migrate "exec:cat > FILE"`) is
#   refused by ram_load: "block 0000:00:0N.0/ID should not be migrated !" (migration/ram.c:4052)
#   when the memory-backend ids match, "Unknown ramblock" (ram.c:4090) when they do not.
#   Unless --no-strip, the script copies such a snapshot without that RAM block (the ring is
#   restored from kernel_rr.log anyway) and says so.
# - -krr-autostart (vl.c:2820) starts the vCPUs without the monitor's `cont`; -singlestep is
#   required by KRR's instruction counting. The replay ends with `Replay finished`, `Replay
#   executed in S seconds` (CPU time) and `=== Event Stats ===`, exit(0) (kernel_rr.c:643) as
#   soon as the event list is empty at the next instruction boundary (kernel_rr.c:498-556).
# - Final state: KRR prints no registers, so its QEMU runs under gdb (if installed), which
#   reads the vCPU (count, RIP, RFLAGS, GPRs, CRs, segment bases) at exit(); krr's end is its
#   final count and RIP. Both replayers also log the instructions before the end with KRR's own
#   log items (`-replay-log-bound start=S -D FILE` logs each instruction whose count, itself
#   included, is > S, accel/tcg/cpu-exec.c:92-124,984; krr: `--log-bound start=S+1,end=E
#   --log-format krr -D FILE`), compared record by record (RIP, count, GPRs, RFLAGS, gs bases,
#   CR2: the state before each instruction). S is placed from krr's final count; when the two
#   replays end at different counts KRR is run a second time (untimed) with S at its own end.
#   KRR's wall time includes gdb's and QEMU's start-up (about 1 s here); KRR's own figure
#   (`Replay executed in`, process CPU time from its first vCPU start) is printed beside it.
# - KRR's QEMU cannot run a guest under TCG outside replay (the vCPU loop ends with `Replay
#   finished` as soon as the event list is empty, kernel_rr.c:498-556), so synthetic snapshots
#   come from another QEMU (Debian's 7.2 with -machine pc-i440fx-7.0 -no-hpet, ivshmem-plain)
#   or from KRR's QEMU under KVM (`-accel kvm -cpu qemu64`; `-cpu host` fails on this nested
#   KVM: MSR 0x10a) with the monitor's `rr_savevm NAME` (KRR's own two-stream format).
#
# Building KRR's QEMU (what worked here, Debian 12, 2 cores, shared machine):
#   git clone https://github.com/krr-io/krr-qemu krr-qemu-src   # HEAD 6e8add9ac
#     # a few blobs under roms/edk2 and roms/skiboot are absent from the mirror; git reports a
#     # failed checkout, `git restore --source=HEAD :/` + `git reset -q` leave all other files
#     # in place and roms/ is not needed
#   apt-get install -y --no-install-recommends ninja-build meson libglib2.0-dev \
#       libpixman-1-dev flex bison python3-venv libfdt-dev zlib1g-dev libslirp-dev gdb
#     # (never `apt install qemu-system-x86`: it would replace the image's newer qemu-utils)
#   mkdir krr-qemu-src/build && cd krr-qemu-src/build
#   ../configure --target-list=x86_64-softmmu --disable-docs --disable-werror \
#       --disable-install-blobs --disable-capstone --disable-gtk --disable-sdl --disable-vnc \
#       --disable-opengl --disable-virglrenderer --disable-spice --disable-curl \
#       --disable-libusb --disable-usb-redir --disable-xkbcommon
#   ninja -j2 qemu-system-x86_64        # -> build/qemu-system-x86_64 (firmware from pc-bios/)
#     # configure: 25 s; ninja -j2: 15 min wall / 5.3 min user on this busy 2-core machine
# Trap points (include/sysemu/kernel-rr.h:22-69) are compiled in: for another vmlinux run
#   kernel_rr/generate_symbol.sh VMLINUX krr-qemu-src   (gdb + rr_gen_replay_symbols.py
#   rewrite the #defines in place, then it runs `make -j$(nproc)` in build/; `ninja -j2
#   qemu-system-x86_64` in build/ does the same). The script evaluates init_uts_ns.name first
#   and fails unless every symbol/line it knows resolves (see the macro table in the script).
#   KRR's QEMU must be rebuilt per kernel build; this script cannot check which vmlinux a
#   KRR_QEMU was built for (a stale header makes KRR trap at the wrong addresses).
#   bench/krr-qemu-traps.sh DIR does it for any vmlinux krr resolves (no gdb script, no Linux
#   source lines) and stamps the header with the vmlinux's hash.
# What KRR's replayer does that this comparison allows for or reports (seen on the synthetic
# recordings, bench/krr-crosscheck-synth.sh):
# - its loader reads the final header's current_pos - 1 events (krr gets those, see above);
# - its count runs one behind after a port input: rr_do_replay_io_input (kernel_rr.c) sets
#   the count, which already includes the IN, to the recorded one taken before the IN, when
#   they are within 2; so counts are reported, not required equal;
# - a debug stop (a mismatch, "cause_debug") without a gdb attached crashes in the gdb stub
#   (gdb_get_cpu_pid, gdbstub.c:735, from cpu_handle_guest_debug, softmmu/cpus.c:321); the
#   script then reads KRR's count, RIP and head event where it stopped;
# - a user-mode #GP aborts the replay: rr_do_replay_exception pops it at injection
#   (kernel_rr.c:2758), then the GP_EXEC trap finds no EXCEPTION at the head and aborts
#   (kernel_rr.c:2797);
# - its host-side ring appends rotate the ring first at the guest's threshold
#   (append_to_queue, kernel_rr.c:3672), where KVM at record never rotated: near a full ring
#   the guest then skips its recorded rotation (hypercall 102) and KRR's count leaves the
#   recording (an interrupt is missed, then a debug stop); with that condition changed to
#   `current_byte + size + 4 > total_size + header_size` KRR replays such a recording and
#   agrees with krr;
# - with QEMU's PIT ticking (its IRQ masked at the 8259; each tick kicks the vCPU thread,
#   cpu_exit), a CFU/GFU trap point is now and then handled twice: the second time the head
#   is the next event (debug stop), at a different event in every run. Likely cause: the trap
#   is dispatched before its TB runs (accel/tcg/cpu-exec.c:1198-1255), and a kick makes the
#   TB exit at its start, so it is looked up and dispatched again. With the PIT stopped (the
#   synthetic snapshots) the replays are repeatable.
# Every timed krr run compiles its blocks (cold): the persistent code cache stays off.
export KRR_CODE_CACHE=off

set -u
KRR_BIN=${KRR_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/krr}
vmlinux="" tail_n=64 cpu=Broadwell qemu_args="" strip=1 timeout_s=3600 work="" rec="" all_events=0 full=0

die() { echo "krr-crosscheck: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
    --vmlinux) vmlinux=$2; shift 2 ;;
    --tail) tail_n=$2; shift 2 ;;
    --cpu) cpu=$2; shift 2 ;;
    --qemu-args) qemu_args=$2; shift 2 ;;
    --no-strip) strip=0; shift ;;
    --all-events) all_events=1; shift ;;
    --full) full=1; shift ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    -h | --help) sed -n '2,30p' "$0"; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) [ -z "$rec" ] || die "one recording only"; rec=$1; shift ;;
    esac
done
[ -n "$rec" ] || die "usage: KRR_QEMU=... $0 [options] RECORDING (see --help)"
[ -n "${KRR_QEMU:-}" ] || die "set KRR_QEMU to KRR's qemu-system-x86_64 (build recipe at the top of $0)"
[ -x "$KRR_QEMU" ] || die "KRR_QEMU=$KRR_QEMU is not an executable"
[ -x "$KRR_BIN" ] || die "KRR_BIN=$KRR_BIN is not an executable"
"$KRR_BIN" replay --help 2>&1 | grep -q -- '--krr' ||
    die "$KRR_BIN has no \`replay --krr\`: rebuild it (cargo build --release) or set KRR_BIN"
"$KRR_QEMU" --help 2>&1 | grep -q -- '-kernel-replay' ||
    die "$KRR_QEMU has no -kernel-replay: not KRR's QEMU"

# The snapshot: the file named, or the one QEMU stream (magic QEVM) in the directory.
is_stream() { [ "$(head -c 4 "$1" 2>/dev/null | od -An -tx1 | tr -d ' \n')" = 5145564d ]; }
if [ -d "$rec" ]; then
    dir=$(cd "$rec" && pwd)
    snaps=()
    for f in "$dir"/*; do
        case "$(basename "$f")" in replay-snapshot*|kernel_rr*|checkpoint-*|vmlinux) continue ;; esac
        [ -f "$f" ] && is_stream "$f" && snaps+=("$f")
    done
    [ ${#snaps[@]} -eq 1 ] || die "$dir: expected one QEMU snapshot, found ${#snaps[@]}: ${snaps[*]:-none} (name the file)"
    snap=${snaps[0]}
else
    [ -f "$rec" ] || die "$rec: no such file"
    snap=$(cd "$(dirname "$rec")" && pwd)/$(basename "$rec")
    dir=$(dirname "$snap")
    is_stream "$snap" || die "$snap: not a QEMU migration stream"
fi
name=$(basename "$snap")
[ -f "$dir/kernel_rr.log" ] || die "$dir/kernel_rr.log: missing (KRR's replayer crashes without it)"
[ -n "$vmlinux" ] || vmlinux=$dir/vmlinux
[ -f "$vmlinux" ] || die "$vmlinux: no vmlinux (name it with --vmlinux)"
vmlinux=$(cd "$(dirname "$vmlinux")" && pwd)/$(basename "$vmlinux")
if [ -z "$work" ]; then work=$(mktemp -d /tmp/krr-crosscheck.XXXXXX); fi
mkdir -p "$work" && work=$(cd "$work" && pwd)

# The recording's machine, from krr's reader.
"$KRR_BIN" info --krr "$snap" > "$work/info.txt" 2>&1 ||
    { cat "$work/info.txt"; die "krr cannot read $snap"; }
machine_line=$(grep -m1 '^machine: ' "$work/info.txt")
machine=$(sed -E 's/^machine: ([^,]+),.*/\1/' <<< "$machine_line")
mem_mib=$(sed -E 's/^machine: [^,]+, ([0-9]+) MiB RAM.*/\1/' <<< "$machine_line")
ncpu=$(sed -E 's/.* ([0-9]+) vCPU\(s\).*/\1/' <<< "$machine_line")
iv_id=$(sed -nE 's/^ivshmem: ([0-9a-f:.]+)\/ivshmem-plain BAR2.*/\1/p' "$work/info.txt")
ring=$(sed -nE 's/^ring: ([0-9]+) bytes.*/\1/p' "$work/info.txt")
others=$(sed -n 's/^other RAM blocks (not used): //p' "$work/info.txt")
echo "recording: $snap"
echo "  $machine_line"
echo "  ivshmem: ${iv_id:-absent}, ring ${ring:-?} bytes; vmlinux $vmlinux"

cannot_load() {
    echo "KRR: CANNOT LOAD this recording: $*"
    echo "verdict: not cross-checked (KRR's replayer cannot load the recording)"
    exit 3
}
# KRR's QEMU is 7.0: it knows pc-i440fx-7.0 and older machine versions only.
"$KRR_QEMU" -machine help 2>/dev/null | awk '{print $1}' | grep -qx "$machine" ||
    cannot_load "machine type $machine is unknown to KRR's QEMU 7.0 (write the snapshot with -machine pc-i440fx-7.0, as KRR's recordings are)"
[ -n "$iv_id" ] || cannot_load "the snapshot has no ivshmem-plain device; KRR's replay copies the ring header into its BAR2 (kernel_rr.c:2529) and krr refuses such a recording too"
[ -n "$ring" ] || ring=$((4096 << 20))
slot=$(sed -E 's/^[0-9a-f]+:[0-9a-f]+:([0-9a-f]+)\.([0-7])$/0x\1.\2/' <<< "$iv_id")

# KRR's loader reads one event fewer than the log's final header counts (krr-spec open
# question 12, kernel_rr.c rr_load_events); krr replays every event in the file. Unless
# --all-events, krr gets the events KRR reads (the log cut after them), so both end alike.
krr_ev=()
loaded=$(sed -nE "s/^KRR's loader: reads ([0-9]+) of the ([0-9]+) events, ending at byte ([0-9]+)$/\1 \2 \3/p" "$work/info.txt")
if [ -n "$loaded" ] && [ $all_events = 0 ]; then
    read -r n_ev m_ev at_byte <<< "$loaded"
    head -c "$at_byte" "$dir/kernel_rr.log" > "$work/krr-events.log"
    krr_ev=(--krr-events "$work/krr-events.log")
    echo "  note: KRR's loader reads $n_ev of the log's $m_ev events; krr replays the same $n_ev (--all-events: all)"
fi

# The working directory KRR replays in: links to the recording's files, the snapshot as NAME.
for f in "$dir"/kernel_rr*.log "$dir"/checkpoint-*; do
    [ -e "$f" ] && ln -sf "$f" "$work/$(basename "$f")"
done
rm -f "$work/$name"
ivblock=$(tr ',' '\n' <<< "$others" | sed -E 's/^ *//; s/ \(.*//' | grep -F "$iv_id/" | head -1)
if [ -n "$ivblock" ] && [ $strip = 1 ]; then
    echo "  note: the snapshot holds ivshmem's BAR2 RAM ($ivblock), which KRR's QEMU refuses (non-migratable there); giving KRR a copy without it"
    python3 - "$snap" "$work/$name" "$ivblock" <<'EOF' || cannot_load "could not strip ivshmem's RAM block from the snapshot"
# Copy a QEMU migration stream (v3) without one RAM block: its entry in the RAM_SAVE_FLAG_MEM_SIZE
# list (and the list's total) and its page records. Everything after the RAM sections is copied.
import struct, sys
src, dst, drop = sys.argv[1], sys.argv[2], sys.argv[3].encode()
b = open(src, 'rb').read(); o = bytearray(); p = 0
def take(n):
    global p
    r = b[p:p + n]; p += n
    if len(r) != n: sys.exit("truncated stream")
    return r
o += take(8)
s = b.find(b'\x03ram\x00\x00\x00\x00\x00\x00\x00\x04')       # "ram", instance 0, version 4
if s < 5 or b[s - 5] != 0x01: sys.exit("no RAM section start")
o += b[p:s - 5]; p = s - 5
ram_id = None; cur = None; dropped = 0
while b[p] in (1, 2, 3):                                   # SECTION_START / PART / END
    t = b[p]; o += take(1); sid = take(4); o += sid
    if t == 1:
        n = b[p]; nm = take(1 + n); o += nm + take(8)
        if nm[1:] != b'ram': sys.exit("iterative section %r" % nm[1:])
        ram_id = sid
    elif sid != ram_id: sys.exit("iterative section other than ram")
    while True:
        (w,) = struct.unpack('>Q', take(8)); fl = w & 0xfff
        if fl & 0x04:                                      # MEM_SIZE: the block list
            total = w & ~0xfff; blocks = []
            while total:
                n = b[p]; i = take(1 + n)[1:]; (ln,) = struct.unpack('>Q', take(8))
                blocks.append((i, ln)); total -= ln
            keep = [(i, l) for i, l in blocks if i != drop]
            o += struct.pack('>Q', sum(l for _, l in keep) | 0x04)
            for i, l in keep: o += bytes([len(i)]) + i + struct.pack('>Q', l)
            continue
        if fl & 0x10: o += struct.pack('>Q', w); break     # EOS
        h = struct.pack('>Q', w)
        if not fl & 0x20:                                  # a block name follows
            n = b[p]; nb = take(1 + n); h += nb; cur = nb[1:]
        if fl & 0x02: body = take(1)                       # ZERO
        elif fl & 0x08: body = take(4096)                  # PAGE
        else: sys.exit("RAM record flags %#x" % fl)
        if cur != drop: o += h + body
        else: dropped += 1
    if b[p] == 0x7e: o += take(5)                          # section footer
o += b[p:]
open(dst, 'wb').write(o)
print("  (dropped %s and %d of its page records)" % (drop.decode(), dropped))
EOF
else
    ln -s "$snap" "$work/$name"
fi

# The stream's device sections (from its VM description), to match KRR's machine to them.
python3 - "$snap" > "$work/sections.txt" 2>/dev/null <<'EOF'
import json, sys
b = open(sys.argv[1], 'rb').read()
i = b.rfind(b'{"page_size"')
d = json.JSONDecoder().raw_decode(b[i:].decode('latin-1'))[0]
print(' '.join('%s/%d' % (x['name'], x['instance_id']) for x in d['devices']))
EOF
# KRR opens a DMA log per registered DMA device (kernel_rr_dma-<devfn>.log: IDE, NVMe) and
# kernel_rr_network.log unconditionally (kernel_rr/dma.c:664-671 freads a NULL FILE * when one
# is missing); an empty file is an empty log. Recordings made outside KRR lack them.
[ -e "$work/kernel_rr_network.log" ] || { : > "$work/kernel_rr_network.log"; echo "  note: no kernel_rr_network.log: KRR gets an empty one"; }
for d in $(grep -oE '0000:00:[0-9a-f]{2}\.[0-7]/' "$work/sections.txt" | sort -u); do
    devfn=$(( 16#$(cut -d: -f3 <<< "$d" | cut -d. -f1) * 8 + $(cut -d. -f2 <<< "$d" | tr -d /) ))
    [ -e "$work/kernel_rr_dma-$devfn.log" ] || : > "$work/kernel_rr_dma-$devfn.log"
done

now() { date +%s.%N; }
# 1. krr, timed: its final KRR count places the instruction window both replayers log.
t0=$(now)
timeout "$timeout_s" "$KRR_BIN" replay --krr "$work/$name" --vmlinux "$vmlinux" -q ${KRR_ARGS:-} "${krr_ev[@]}" \
    > "$work/krr.out" 2> "$work/krr.err"
krr_rc=$?
t1=$(now)
krr_wall=$(echo "$t1 - $t0" | bc)
krr_count=$(sed -nE 's/.*\(KRR count ([0-9]+)\).*/\1/p' "$work/krr.err" | tail -1)
krr_rip=$(sed -nE 's/.*final RIP (0x[0-9a-f]+).*/\1/p; s/^verdict: stopped .* RIP (0x[0-9a-f]+)$/\1/p' "$work/krr.err" | tail -1)
echo "krr: exit $krr_rc in ${krr_wall}s; $(grep -m1 '^verdict' "$work/krr.err" || tail -1 "$work/krr.err")"

# 2. KRR's QEMU, timed, under gdb (if present) to read the vCPU at its exit() (after the last
#    instruction: KRR prints no registers), with KRR's instruction log over the window.
qemu=("$KRR_QEMU" -accel tcg -machine "$machine" -cpu "$cpu" -m "${mem_mib}M" -smp "$ncpu"
    -display none -monitor none -serial "file:$work/krr-qemu.serial"
    -object "memory-backend-file,id=hostmem,size=$ring,share=on,mem-path=$work/ivshmem"
    -device "ivshmem-plain,memdev=hostmem,addr=$slot")
# KRR records and replays with -no-hpet; keep an HPET only if the snapshot has one.
grep -qw 'hpet/0' "$work/sections.txt" || qemu+=(-no-hpet)
# No VGA RAM in the stream: the recording was made without default devices.
grep -q 'vga.vram' <<< "$others" || qemu+=(-nodefaults)
# shellcheck disable=SC2206
[ -n "$qemu_args" ] && qemu+=($qemu_args)
qemu+=(-kernel-replay "$name" -singlestep -krr-autostart)
win=""
if [ -n "$krr_count" ]; then
    win=$((krr_count > tail_n ? krr_count - tail_n : 1))
    # Logged: every instruction whose count (itself included) is > win (the `end` bound is broken).
    qemu+=(-D "$work/krr-qemu.log" -replay-log-bound "start=$win")
fi
cat > "$work/final.gdb" <<'EOF'
set pagination off
set confirm off
set startup-with-shell off
handle SIGUSR1 SIGUSR2 SIGPIPE nostop noprint pass
break exit
run
if $_siginfo.si_signo != 5
  printf "KRR-CRASH signal %d\n", $_siginfo.si_signo
  printf "KRR-STOPPED count=%lu rip=0x%lx head_type=%d head_count=%lu head_rip=0x%lx replayed=%d\n", cpus.tqh_first->rr_executed_inst, ((X86CPU *)cpus.tqh_first)->env.eip, rr_event_log_head->type, rr_event_log_head->inst_cnt, rr_event_log_head->rip, replayed_event_num
  bt 12
  kill
  quit 1
end
printf "KRR-EXIT %d\n", $rdi
if current_cpu != 0
  set $e = &((X86CPU *)current_cpu)->env
  printf "KRR-FINAL count=%lu rip=0x%lx rflags=0x%lx\n", current_cpu->rr_executed_inst, $e->eip, $e->eflags | cpu_cc_compute_all($e, $e->cc_op) | ($e->df == -1 ? 0x400 : 0)
  printf "KRR-FINAL rax=0x%lx rbx=0x%lx rcx=0x%lx rdx=0x%lx rsi=0x%lx rdi=0x%lx rbp=0x%lx rsp=0x%lx\n", $e->regs[0], $e->regs[3], $e->regs[1], $e->regs[2], $e->regs[6], $e->regs[7], $e->regs[5], $e->regs[4]
  printf "KRR-FINAL r8=0x%lx r9=0x%lx r10=0x%lx r11=0x%lx r12=0x%lx r13=0x%lx r14=0x%lx r15=0x%lx\n", $e->regs[8], $e->regs[9], $e->regs[10], $e->regs[11], $e->regs[12], $e->regs[13], $e->regs[14], $e->regs[15]
  printf "KRR-FINAL cr0=0x%lx cr2=0x%lx cr3=0x%lx cr4=0x%lx cs=0x%x ss=0x%x fs.base=0x%lx gs.base=0x%lx kernel_gs_base=0x%lx\n", $e->cr[0], $e->cr[2], $e->cr[3], $e->cr[4], $e->segs[1].selector, $e->segs[2].selector, $e->segs[4].base, $e->segs[5].base, $e->kernelgsbase
end
continue
EOF
rm -f "$work/ivshmem" "$work/krr-qemu.log"
run=("${qemu[@]}")
if command -v gdb > /dev/null; then
    run=(gdb -batch -nx -x "$work/final.gdb" --args "${qemu[@]}")
else
    echo "  note: no gdb: KRR's final registers cannot be read (apt-get install gdb)"
fi
echo "KRR: (cd $work && ${qemu[*]})"
t0=$(now)
(cd "$work" && timeout "$timeout_s" "${run[@]}" > "$work/krr-qemu.out" 2>&1 < /dev/null)
krrq_rc=$?
t1=$(now)
krrq_wall=$(echo "$t1 - $t0" | bc)
grep -q '^KRR-EXIT' "$work/krr-qemu.out" && krrq_rc=$(sed -nE 's/^KRR-EXIT (-?[0-9]+)/\1/p' "$work/krr-qemu.out" | tail -1)
if ! grep -q '^Loaded snapshot' "$work/krr-qemu.out"; then
    reason=$(grep -v -E '^(ram size=|loading snapshot|ivshmem will be out|Host addr|Header info|total_pos|rr_endabled|=== Event|[A-Za-z ()]+: [0-9.]+$|Loaded events|dma entry|Did not find|Initialized replay|Total events)|warning: TCG doesn|^\[(New |Thread |Inferior)|libthread_db|^Breakpoint|exit.c|^KRR-' "$work/krr-qemu.out" | tail -12)
    cannot_load "exit $krrq_rc, before the snapshot was loaded; its output:
$reason
(the snapshot's device sections: $(cat "$work/sections.txt" 2>/dev/null || echo unknown))"
fi
krr_cpu=$(sed -nE 's/^Replay executed in ([0-9.]+) seconds/\1/p' "$work/krr-qemu.out" | tail -1)
if grep -q '^Replay finished' "$work/krr-qemu.out"; then
    echo "KRR: exit $krrq_rc in ${krrq_wall}s wall (its own 'Replay executed in ${krr_cpu:-?} seconds', CPU time)"
else
    echo "KRR: exit $krrq_rc in ${krrq_wall}s wall, did NOT finish the replay; last lines:"
    grep -v -E 'warning: TCG doesn|^\[(New |Thread )' "$work/krr-qemu.out" | tail -12 | sed 's/^/  /'
fi
ratio=$(echo "scale=1; $krrq_wall / $krr_wall" | bc 2>/dev/null)
echo "wall time: KRR ${krrq_wall}s, krr ${krr_wall}s: KRR/krr = ${ratio}"
kcount=$(sed -nE 's/^KRR-FINAL count=([0-9]+) rip=(0x[0-9a-f]+).*/\1/p' "$work/krr-qemu.out" | tail -1)
krip=$(sed -nE 's/^KRR-FINAL count=([0-9]+) rip=(0x[0-9a-f]+).*/\2/p' "$work/krr-qemu.out" | tail -1)

# 3. When the replays end at different places (RIP), KRR once more (untimed) with its window at
#    its own end; then krr over the same window in KRR's log format, and its registers after
#    KRR's last instruction when krr runs past it. (The same RIP at counts a little apart is
#    KRR's count running behind: it sets its count to the recorded one at port inputs.)
if [ -n "$kcount" ] && [ "$krip" != "${krr_rip:-}" ]; then
    win=$((kcount > tail_n ? kcount - tail_n : 1))
    echo "  the replays end at different places: KRR again with its instruction log from count $win"
    again=()
    for a in "${qemu[@]}"; do
        case "$a" in -D | -replay-log-bound) skip=1; continue ;; esac
        [ "${skip:-0}" = 1 ] && { skip=0; continue; }
        again+=("$a")
    done
    again+=(-D "$work/krr-qemu.log" -replay-log-bound "start=$win")
    rm -f "$work/ivshmem" "$work/krr-qemu.log"
    (cd "$work" && timeout "$timeout_s" "${again[@]}" > "$work/krr-qemu-2.out" 2>&1 < /dev/null)
fi
if [ -n "$win" ]; then
    end=$(( ${kcount:-0} > ${krr_count:-0} ? ${kcount:-0} + 1 : ${krr_count:-0} + 1 ))
    [ "$end" -gt $((win + 1)) ] || end=$((win + 2))
    timeout "$timeout_s" "$KRR_BIN" replay --krr "$work/$name" --vmlinux "$vmlinux" -q ${KRR_ARGS:-} "${krr_ev[@]}" \
        --log-bound "start=$((win + 1)),end=$end" --log-format krr -D "$work/krr.log" > /dev/null 2>&1
fi
if [ -n "$kcount" ] && [ -n "$krr_count" ] && [ "$krr_count" -gt "$kcount" ] && [ "$krip" != "${krr_rip:-}" ]; then
    timeout "$timeout_s" "$KRR_BIN" replay --krr "$work/$name" --vmlinux "$vmlinux" -q ${KRR_ARGS:-} "${krr_ev[@]}" \
        --stop-at "$kcount" > /dev/null 2> "$work/krr-stop.err"
fi

python3 - "$work" "${krr_count:-}" "${krr_rip:-}" <<'EOF'
import os, re, sys
w, krr_count, krr_rip = sys.argv[1], sys.argv[2], sys.argv[3]
def read(name):
    try: return open(os.path.join(w, name), errors='replace').read()
    except OSError: return ''
ok = True
# Event stats: KRR's last block vs krr's.
def stats(text):
    block = text.rsplit('=== Event Stats ===', 1)
    if len(block) < 2: return {}
    d = {}
    for l in block[1].splitlines()[:20]:
        m = re.match(r'^([A-Za-z ()]+): (\S+)$', l.strip())
        if m and m.group(1) not in ('Time(s)', 'DMA Buf Size'): d[m.group(1)] = m.group(2)
    return d
sk, sr = stats(read('krr-qemu.out')), stats(read('krr.out'))
if 'Replay finished' not in read('krr-qemu.out'):
    sk = {}  # what KRR printed is its loader's block, not the replay's
diff = [k for k in sorted(set(sk) & set(sr)) if sk[k] != sr[k]]
print("event stats: " + ("same (%s)" % ', '.join('%s %s' % (k, v) for k, v in sk.items() if v != '0')
                          if sk and not diff else "DIFFER: " + ', '.join('%s KRR %s krr %s' % (k, sk.get(k), sr.get(k)) for k in diff) if diff else "KRR printed none at the end of a replay"))
ok &= bool(sk) and not diff
# Where each replay ended.
kf = {}
for l in read('krr-qemu.out').splitlines():
    if l.startswith('KRR-FINAL '):
        kf.update((k, int(v, 16) if v.startswith('0x') else int(v)) for k, v in re.findall(r'([\w.]+)=(0x[0-9a-f]+|\d+)', l))
GPRS = ('rax','rbx','rcx','rdx','rsi','rdi','rbp','rsp','r8','r9','r10','r11','r12','r13','r14','r15')
# krr's registers after its last instruction (the line after its verdict).
m = re.search(r'^verdict: replayed to the end.*\n(.*)$', read('krr.err'), re.M)
kr = dict((k, int(v, 16)) for k, v in re.findall(r'(\w+)=(0x[0-9a-f]+)', m.group(1))) if m else {}
if kf:
    same_rip = bool(krr_rip) and int(krr_rip, 16) == kf['rip']
    d = [k for k in GPRS + ('rflags',) if k in kr and kr[k] != kf[k]]
    regs = ("registers not printed by krr" if not kr else "GPRs and RFLAGS DIFFER: " +
            ', '.join('%s KRR %#x krr %#x' % (k, kf[k], kr[k]) for k in d) if d else "same GPRs and RFLAGS")
    print("end of replay: KRR at RIP %#x after its count %d; krr at RIP %s after count %s: %s, %s%s"
          % (kf['rip'], kf['count'], krr_rip or '?', krr_count or '?',
             "same RIP" if same_rip else "DIFFERENT RIP", regs,
             "" if not krr_count or int(krr_count) == kf['count'] else
             " (KRR's count is %+d from krr's: it overwrites its count with the recorded one at port inputs, kernel_rr.c rr_do_replay_io_input)" % (kf['count'] - int(krr_count))))
    ok &= same_rip and bool(kr) and not d
else:
    m = re.search(r'^KRR-STOPPED count=(\d+) rip=(0x[0-9a-f]+) head_type=(-?\d+) head_count=(\d+) head_rip=(0x[0-9a-f]+) replayed=(\d+)', read('krr-qemu.out'), re.M)
    if m:
        print("end of replay: KRR stopped (debug stop or crash) at its count %s, RIP %s, after %s events, its next event of type %s recorded at count %s, RIP %s; krr: %s"
              % (m.group(1), m.group(2), m.group(6), m.group(3), m.group(4), m.group(5),
                 "replayed to the end (RIP %s, count %s)" % (krr_rip, krr_count) if kr else "see krr.err"))
    else:
        print("end of replay: KRR's final registers were not read")
    ok = False
# krr's registers at KRR's last count, when krr went on past it.
st = read('krr-stop.err')
m = re.search(r'^verdict: stopped before KRR count (\d+).*\n(.*)$', st, re.M)
if kf and m:
    rl = dict((k.lower(), int(v, 16)) for k, v in re.findall(r'([A-Za-z0-9.]+)[=: ]+(?:0x)?([0-9a-fA-F]+)\b', m.group(2)))
    keys = [k for k in ('rax','rbx','rcx','rdx','rsi','rdi','rbp','rsp','r8','r9','r10','r11','r12','r13','r14','r15','rip') if k in rl]
    d = [k for k in keys if rl[k] != kf[k]]
    print("registers after KRR's last instruction (krr --stop-at %d): %s" % (kf['count'], "same (%d compared)" % len(keys) if keys and not d else "DIFFER: " + ', '.join('%s KRR %#x krr %#x' % (k, kf[k], rl[k]) for k in d) if d else "not parsed: " + m.group(2)))
# The window both logged, in KRR's format: state before each instruction.
def records(text):
    out, regs = [], None
    for l in text.splitlines():
        if l.startswith('Regs: '):
            regs = dict((k.strip(), int(v, 16)) for k, v in re.findall(r'([\w.]+)=(0x[0-9a-f]+)', l))
        m = re.match(r'\[cpu (\d+)\](0x[0-9a-f]+), inst_cnt=(\d+)', l)
        # One record per instruction: KRR logs each iteration of a REP string instruction
        # (one TB each, same count), krr an instruction at a trap point twice; the first is
        # the state before the instruction.
        if m and regs is not None and not (out and out[-1][:3] == (int(m.group(1)), int(m.group(2), 16), int(m.group(3)))):
            out.append((int(m.group(1)), int(m.group(2), 16), int(m.group(3)), regs))
        if m: regs = None
    return out
a, b = records(read('krr-qemu.log')), records(read('krr.log'))
# Compared from the end (both end at the same instruction when they agree), without the
# counts, which KRR's port-input resyncs shift; the count offsets are reported.
n = min(len(a), len(b))
a, b = a[len(a) - n:], b[len(b) - n:]
offs = sorted(set(x[2] - y[2] for x, y in zip(a, b)))
if a or b:
    first = None
    for i, (x, y) in enumerate(zip(a, b)):
        if (x[0], x[1], x[3]) != (y[0], y[1], y[3]):
            ks = [k for k in sorted(set(x[3]) | set(y[3])) if x[3].get(k) != y[3].get(k)]
            first = ("record %d: KRR cpu %d RIP %#x count %d, krr cpu %d RIP %#x count %d; registers: %s"
                     % (i, x[0], x[1], x[2], y[0], y[1], y[2],
                        ', '.join('%s KRR %#x krr %#x' % (k, x[3].get(k, -1), y[3].get(k, -1)) for k in ks) or 'same'))
            break
    print("instruction window (state before each, the last %d of both): %s%s"
          % (n, "same" if first is None else "first difference at " + first,
             "" if offs == [0] else "; KRR's count minus krr's: %s" % offs))
    ok &= first is None and len(a) == len(b) and len(a) > 0
else:
    print("instruction window: neither replayer logged anything in it")
if kf:
    print("KRR final state: " + ' '.join('%s=%#x' % (k, v) for k, v in kf.items() if k != 'count'))
sys.exit(0 if ok else 1)
EOF
agree=$?

# 4. --full: every instruction, KRR (its log from count 2: -replay-log-bound start=1) against
#    krr (from count 2 to its end), one record per instruction, aligned by RIP with a short
#    resynchronisation where one log has a record the other has not; the state differences are
#    counted by kind.
if [ $full = 1 ] && [ -n "${krr_count:-}" ]; then
    rm -f "$work/ivshmem" "$work/full-krr-qemu.log"
    full_cmd=()
    for a in "${qemu[@]}"; do
        case "$a" in -D | -replay-log-bound) skip=1; continue ;; esac
        [ "${skip:-0}" = 1 ] && { skip=0; continue; }
        full_cmd+=("$a")
    done
    (cd "$work" && timeout "$timeout_s" "${full_cmd[@]}" -D "$work/full-krr-qemu.log" -replay-log-bound start=1 \
        > "$work/krr-qemu-full.out" 2>&1 < /dev/null)
    timeout "$timeout_s" "$KRR_BIN" replay --krr "$work/$name" --vmlinux "$vmlinux" -q ${KRR_ARGS:-} "${krr_ev[@]}" \
        --log-bound "start=2,end=$((krr_count + 1))" --log-format krr -D "$work/full-krr.log" > /dev/null 2>&1
    python3 - "$work/full-krr-qemu.log" "$work/full-krr.log" <<'EOF'
import collections, re, sys
def records(fn):
    out, regs = [], None
    for l in open(fn, errors='replace'):
        if l.startswith('Regs: '):
            regs = dict(re.findall(r'([\w.]+)=(0x[0-9a-f]+)', l))
        m = re.match(r'\[cpu (\d+)\](0x[0-9a-f]+), inst_cnt=(\d+)', l)
        if m and regs is not None:
            rip, c = int(m.group(2), 16), int(m.group(3))
            if c >= 2 and not (out and out[-1][:2] == (rip, c)):
                out.append((rip, c, regs))
        if m: regs = None
    return out
a, b = records(sys.argv[1]), records(sys.argv[2])
i = j = 0
kinds, first, extra = collections.Counter(), {}, collections.Counter()
while i < len(a) and j < len(b):
    x, y = a[i], b[j]
    if x[0] != y[0]:
        found = next(((di, dj) for di in range(6) for dj in range(6) if (di or dj)
                      and i + di + 1 < len(a) and j + dj + 1 < len(b)
                      and a[i + di][0] == b[j + dj][0] and a[i + di + 1][0] == b[j + dj + 1][0]), None)
        if not found:
            print("full comparison: lost the alignment at KRR record %d (RIP %#x, count %d), krr record %d (RIP %#x, count %d)" % (i, x[0], x[1], j, y[0], y[1]))
            break
        key = ("KRR only: " + ' '.join('%#x' % r[0] for r in a[i:i + found[0]]) if found[0] else '') + \
              ("krr only: " + ' '.join('%#x' % r[0] for r in b[j:j + found[1]]) if found[1] else '')
        extra[key] += 1
        i += found[0]; j += found[1]
        continue
    d = tuple(sorted(k for k in set(x[2]) | set(y[2]) if x[2].get(k) != y[2].get(k)))
    if d:
        kinds[d] += 1
        first.setdefault(d, (i, x[0], x[1], {k: (x[2].get(k), y[2].get(k)) for k in d}))
    i += 1; j += 1
print("full comparison: %d KRR records, %d krr records, compared to %d / %d" % (len(a), len(b), i, j))
for k, v in extra.most_common(8):
    print("  %d times a record in one log only: %s" % (v, k))
if not kinds:
    print("  every compared record has the same registers")
for d, v in kinds.most_common(8):
    f = first[d]
    print("  %d records differ in %s; first at KRR record %d, RIP %#x, KRR count %d: %s"
          % (v, ','.join(d), f[0], f[1], f[2], ', '.join('%s KRR %s krr %s' % (k, p, q) for k, (p, q) in f[3].items())))
EOF
fi
if [ $agree = 0 ] && [ "$krr_rc" = 0 ] && [ "$krrq_rc" = 0 ] && grep -q '^Replay finished' "$work/krr-qemu.out"; then
    echo "verdict: AGREE (outputs and logs in $work)"
    exit 0
fi
echo "verdict: DISAGREE or incomplete (outputs and logs in $work)"
exit 1
