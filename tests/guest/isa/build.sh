#!/usr/bin/env bash
# Builds the ISA workload of tests/guest_isa.rs: isa.c compiled statically with the host's gcc
# into OUT (installing gcc and libc6-dev with apt-get if they are missing, as on a fresh CI
# machine), and OUT/initrd.cpio: BASE (the test initramfs of tests/guest/fetch.sh) followed by a
# second newc archive with /isa/isa, /isa/compat32 (compat32.S: a static 32-bit program, run
# by the 64-bit kernel's IA32 emulation), /isa/run (two copies of isa at once, then compat32)
# and this worktree's
# tests/guest/init as /init (Linux unpacks concatenated archives in order, later files
# replacing earlier ones, so the guest runs /isa/run between KRR-ISA-START and KRR-ISA-END
# whatever init the shared cache's initramfs was built from). Usage: build.sh OUT BASE. Prints
# the native binary's path, the initrd's, the 32-bit program's and that of OUT/compat32.cpio
# (BASE followed by an archive whose /isa/run runs only the 32-bit program), one a line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$1
base=$2
mkdir -p "$out"
exec 9>"$out/.build.lock"
flock 9
have_static_gcc() {
  command -v gcc >/dev/null 2>&1 && [ -f "$(gcc -print-file-name=libc.a)" ]
}
if ! have_static_gcc; then
  { apt-get install -y --no-install-recommends gcc libc6-dev >/dev/null 2>&1 ||
    { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends gcc libc6-dev >/dev/null 2>&1; }; } ||
    { echo "tests/guest/isa/build.sh: gcc/libc6-dev are missing and cannot be installed" >&2; exit 1; }
fi
# -mno-red-zone: the asm blocks push and pop RFLAGS.
gcc -static -O2 -mno-red-zone -Wall -Werror -o "$out/isa.new" "$here/isa.c" -lm
mv "$out/isa.new" "$out/isa"
# The 32-bit program: no C library, so binutils' 32-bit assembler and linker suffice.
as --32 -o "$out/compat32.o" "$here/compat32.S"
ld -m elf_i386 -static -o "$out/compat32.new" "$out/compat32.o"
mv "$out/compat32.new" "$out/compat32"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/isa"
cp "$out/isa" "$stage/isa/isa"
cp "$out/compat32" "$stage/isa/compat32"
# Two copies at once, so the kernel switches between two processes with different XMM and
# MXCSR state: the first's lines, then whether the second printed the same.
cat > "$stage/isa/run" <<'RUN'
#!/bin/sh
/isa/isa > /tmp/isa.a &
/isa/isa > /tmp/isa.b
wait
cat /tmp/isa.a
if cmp -s /tmp/isa.a /tmp/isa.b; then
  echo "concurrent: same"
else
  echo "concurrent: differs"
  sed 's/^/second: /' /tmp/isa.b
fi
/isa/compat32
RUN
cp "$here/../init" "$stage/init"
chmod +x "$stage/isa/run" "$stage/init"
(cd "$stage" && find . -mindepth 1 | cpio -o -H newc --quiet) > "$out/isa.cpio"
# Renamed into place: a krr already running keeps reading the archive it opened.
cat "$base" "$out/isa.cpio" > "$out/initrd.cpio.new"
mv "$out/initrd.cpio.new" "$out/initrd.cpio"
rm "$stage/isa/isa"
printf '#!/bin/sh\n/isa/compat32\n' > "$stage/isa/run"
(cd "$stage" && find . -mindepth 1 | cpio -o -H newc --quiet) > "$out/compat32-only.cpio"
cat "$base" "$out/compat32-only.cpio" > "$out/compat32.cpio.new"
mv "$out/compat32.cpio.new" "$out/compat32.cpio"
echo "$out/isa"
echo "$out/initrd.cpio"
echo "$out/compat32"
echo "$out/compat32.cpio"
