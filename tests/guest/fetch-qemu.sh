#!/usr/bin/env bash
# Fetches Debian's qemu-system-x86 (QEMU TCG, for comparison with krr) WITHOUT installing it:
# `apt-get download` of the package, its TCG accelerator module (qemu-system-common:
# accel-tcg-x86_64.so; Debian builds TCG as a module), its firmware (qemu-system-data:
# linuxboot_dma.bin and the other option ROMs; seabios: bios-256k.bin) and those of its
# shared-library dependencies (followed transitively) that are not installed on this machine,
# then `dpkg-deb -x` of each into tests/guest/cache/qemu/root. Writes the wrapper
# tests/guest/cache/qemu/qemu-system-x86_64 (LD_LIBRARY_PATH, QEMU_MODULE_DIR and -L set to the
# unpacked tree) and prints its path. Re-running reuses the cache and downloads nothing. (`apt-get install qemu-system-x86` would replace this image's
# newer qemu-utils, hence the unpacking.)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
qcache="$here/cache/qemu"
wrapper="$qcache/qemu-system-x86_64"
die() { echo "tests/guest/fetch-qemu.sh: $*" >&2; exit 1; }

# A wrapper is written only once QEMU has been checked to run; one older than this script
# is remade (from the cached packages).
if [ -x "$wrapper" ] && [ "$wrapper" -nt "$0" ] && "$wrapper" --version >/dev/null 2>&1; then
  echo "$wrapper"
  exit 0
fi

mkdir -p "$qcache/deb"
# One fetch at a time (tests run in parallel); the others then find the wrapper.
exec 9>"$qcache/.fetch.lock"
flock 9
if [ -x "$wrapper" ] && [ "$wrapper" -nt "$0" ] && "$wrapper" --version >/dev/null 2>&1; then
  echo "$wrapper"
  exit 0
fi
updated=no
apt_update() {
  [ "$updated" = yes ] && return 0
  updated=yes
  apt-get update >/dev/null 2>&1 || echo "tests/guest/fetch-qemu.sh: apt-get update failed (going on with the old lists)" >&2
}
# A fresh machine may have no package lists yet.
apt-cache show qemu-system-x86 >/dev/null 2>&1 || apt_update
apt-cache show qemu-system-x86 >/dev/null 2>&1 || die "apt-cache knows no qemu-system-x86 package (apt-get update failed?)"

installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}
# Names of the packages that $1 depends on (Depends and Pre-Depends; virtual names skipped).
depends_of() {
  apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
      --no-enhances "$1" 2>/dev/null \
    | sed -n 's/^ *|\{0,1\}\(Pre\)\{0,1\}Depends: \([^<][^ ]*\)$/\2/p' | sed 's/:any$//'
}

# The packages to unpack: QEMU, its modules (the same build: modules check QEMU's version),
# its firmware, and the missing libraries it needs. Only the TCG module of qemu-system-common
# is used, so its own dependencies (audio, display and USB modules) are not followed.
version=$(apt-cache policy qemu-system-x86 | sed -n 's/^ *Candidate: //p')
[ -n "$version" ] && [ "$version" != "(none)" ] || die "no candidate version of qemu-system-x86"
wanted=(qemu-system-x86 qemu-system-common qemu-system-data seabios)
declare -A seen=() pin=([qemu-system-x86]="=$version" [qemu-system-common]="=$version")
queue=(qemu-system-x86)
while [ ${#queue[@]} -gt 0 ]; do
  pkg=${queue[0]}
  queue=("${queue[@]:1}")
  for dep in $(depends_of "$pkg"); do
    case "$dep" in lib*|zlib*) ;; *) continue ;; esac
    [ -n "${seen[$dep]:-}" ] && continue
    seen[$dep]=1
    installed "$dep" && continue
    wanted+=("$dep")
    queue+=("$dep")
  done
done

# The file name of a pinned package carries its version (an epoch's ':' written as %3a).
deb_glob() {
  local v=${pin[$1]:-}
  if [ -n "$v" ]; then v=${v#=}; echo "$qcache/deb/$1_${v/:/%3a}_"*.deb; else echo "$qcache/deb/$1_"*.deb; fi
}
download() {
  local pkg=$1 tmp
  ls $(deb_glob "$pkg") >/dev/null 2>&1 && return 0
  tmp=$(mktemp -d "$qcache/deb/.dl.XXXXXX")
  if ! (cd "$tmp" && apt-get download "$pkg${pin[$pkg]:-}" >"$tmp/log" 2>&1); then
    # Stale lists name versions the mirror no longer has: update once and try again.
    apt_update
    (cd "$tmp" && apt-get download "$pkg${pin[$pkg]:-}" >"$tmp/log" 2>&1) || {
      cat "$tmp/log" >&2; rm -rf "$tmp"; die "apt-get download $pkg failed"; }
  fi
  mv "$tmp"/*.deb "$qcache/deb/"
  rm -rf "$tmp"
}
for pkg in "${wanted[@]}"; do
  download "$pkg"
done

# Unpack into a fresh tree and move it into place (a half-unpacked tree is never used).
stage=$(mktemp -d "$qcache/.root.XXXXXX")
trap 'rm -rf "$stage" "$wrapper.tmp"' EXIT
for pkg in "${wanted[@]}"; do
  deb=$(ls $(deb_glob "$pkg") | head -n 1)
  dpkg-deb -x "$deb" "$stage" || die "dpkg-deb -x $deb failed"
done
# Only the TCG module is used; the others need libraries not fetched (and QEMU would try to
# load them all for `-device help` and the like).
find "$stage/usr/lib/x86_64-linux-gnu/qemu" -name '*.so' ! -name 'accel-tcg-*' -delete
rm -rf "$qcache/root"
mv "$stage" "$qcache/root"
chmod 755 "$qcache/root"

root="$qcache/root"
libs="$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu"
tcg="$root/usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so"
[ -e "$tcg" ] || die "the TCG module accel-tcg-x86_64.so is not in qemu-system-common"
missing=$(LD_LIBRARY_PATH="$libs" ldd "$root/usr/bin/qemu-system-x86_64" "$tcg" | grep 'not found' || true)
[ -z "$missing" ] || die "qemu-system-x86_64 still misses libraries:
$missing"
# Debian's build looks for firmware in /usr/share/qemu and /usr/share/seabios: -L gives both.
for rom in qemu/linuxboot_dma.bin seabios/bios-256k.bin; do
  [ -e "$root/usr/share/$rom" ] || die "firmware $rom is not in the unpacked packages"
done

# The wrapper finds the tree beside itself, so the cache can be moved or shared.
cat >"$wrapper.tmp" <<'EOF'
#!/bin/sh
# Debian's qemu-system-x86_64, unpacked by tests/guest/fetch-qemu.sh (not installed).
r="$(dirname "$(readlink -f "$0")")/root"
QEMU_MODULE_DIR="$r/usr/lib/x86_64-linux-gnu/qemu" \
LD_LIBRARY_PATH="$r/usr/lib/x86_64-linux-gnu:$r/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  exec "$r/usr/bin/qemu-system-x86_64" -L "$r/usr/share/qemu" -L "$r/usr/share/seabios" "$@"
EOF
chmod +x "$wrapper.tmp"
# It runs, and its TCG accelerator loads (a machine with nothing in it, quit at once).
out=$(echo quit | timeout 60 "$wrapper.tmp" -accel tcg -machine none -nodefaults -no-user-config \
  -display none -monitor stdio 2>&1) || die "the unpacked qemu-system-x86_64 does not run:
$out"
mv "$wrapper.tmp" "$wrapper"
echo "$wrapper"
