#!/usr/bin/env bash
# Builds the ISA workload of tests/guest_isa.rs: isa.c compiled statically with the host's gcc
# into OUT (installing gcc and libc6-dev with apt-get if they are missing, as on a fresh CI
# machine), and OUT/initrd.cpio: BASE (the test initramfs of tests/guest/fetch.sh) followed by a
# second newc archive with /isa/isa, /isa/run (two copies of it at once) and this worktree's
# tests/guest/init as /init (Linux unpacks concatenated archives in order, later files
# replacing earlier ones, so the guest runs /isa/run between KRR-ISA-START and KRR-ISA-END
# whatever init the shared cache's initramfs was built from). Usage: build.sh OUT BASE. Prints
# the native binary's path and the initrd's, one a line.
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
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/isa"
cp "$out/isa" "$stage/isa/isa"
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
RUN
cp "$here/../init" "$stage/init"
chmod +x "$stage/isa/run" "$stage/init"
(cd "$stage" && find . -mindepth 1 | cpio -o -H newc --quiet) > "$out/isa.cpio"
# Renamed into place: a krr already running keeps reading the archive it opened.
cat "$base" "$out/isa.cpio" > "$out/initrd.cpio.new"
mv "$out/initrd.cpio.new" "$out/initrd.cpio"
echo "$out/isa"
echo "$out/initrd.cpio"
