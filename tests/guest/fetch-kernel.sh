#!/usr/bin/env bash
# Fetches the current Debian kernel of a suite and flavour and prints the path of its vmlinuz.
#
#   tests/guest/fetch-kernel.sh SUITE FLAVOUR
#
# SUITE is a Debian suite on deb.debian.org (bookworm, bookworm-backports, trixie, ...);
# FLAVOUR is `cloud` (linux-image-cloud-amd64) or `generic` (linux-image-amd64). The script
# reads the suite's InRelease (checked with gpgv against Debian's archive keyring when both are
# installed), its main/binary-amd64/Packages.xz (checked against InRelease's SHA256), finds
# the kernel package the meta-package depends on, downloads that .deb from the pool (checked
# against the Packages entry's SHA256) and extracts its /boot with dpkg-deb (nothing is
# installed). Everything is cached under tests/guest/cache/kernels/SUITE-FLAVOUR/; a second
# run prints the cached kernel without going to the network (KRR_KERNEL_REFRESH=1 resolves
# the meta-package again and fetches a newer kernel if there is one). Fails with a message on
# stderr and a non-zero exit status when anything is unavailable.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
die() {
  echo "tests/guest/fetch-kernel.sh: $*" >&2
  exit 1
}
[ $# -eq 2 ] || die "usage: fetch-kernel.sh SUITE FLAVOUR (FLAVOUR: cloud or generic)"
suite=$1
flavour=$2
case "$suite" in
  '' | *[!a-z0-9.-]*) die "not a suite name: '$suite'" ;;
esac
case "$flavour" in
  cloud) meta=linux-image-cloud-amd64 ;;
  generic) meta=linux-image-amd64 ;;
  *) die "unknown flavour '$flavour' (cloud or generic)" ;;
esac
mirror=${KRR_DEBIAN_MIRROR:-https://deb.debian.org/debian}
cache="$here/cache/kernels"
dir="$cache/$suite-$flavour"
mkdir -p "$cache"
# Tests boot kernels in parallel: one fetch at a time (the others then find the cache).
exec 9>"$cache/.fetch.lock"
flock 9

cached_kernel() {
  [ -f "$dir/package" ] || return 1
  local k
  for k in "$dir"/root/boot/vmlinuz-*; do
    [ -f "$k" ] || return 1
    echo "$k"
    return 0
  done
}
if [ "${KRR_KERNEL_REFRESH:-0}" != 1 ] && k=$(cached_kernel); then
  echo "$k"
  exit 0
fi

for tool in curl xz dpkg-deb tar sha256sum awk; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing"
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fetch() { # URL FILE
  curl -sSfL --retry 3 --connect-timeout 30 -o "$2" "$1" || die "cannot download $1"
}

# The suite's signed index, then its package list.
fetch "$mirror/dists/$suite/InRelease" "$work/InRelease"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
if command -v gpgv >/dev/null 2>&1 && [ -f "$keyring" ]; then
  gpgv --keyring "$keyring" "$work/InRelease" >/dev/null 2>&1 \
    || die "the signature of $mirror/dists/$suite/InRelease does not verify against $keyring"
else
  echo "tests/guest/fetch-kernel.sh: warning: gpgv or $keyring missing; InRelease not verified" >&2
fi
packages=main/binary-amd64/Packages.xz
want=$(awk -v f="$packages" '
  /^SHA256:/ { in_sha = 1; next }
  /^[^ ]/ { in_sha = 0 }
  in_sha && $3 == f { print $1; exit }' "$work/InRelease")
[ -n "$want" ] || die "$suite's InRelease lists no $packages"
fetch "$mirror/dists/$suite/$packages" "$work/Packages.xz"
echo "$want  $work/Packages.xz" | sha256sum -c --quiet >/dev/null 2>&1 \
  || die "$mirror/dists/$suite/$packages does not match the SHA256 in InRelease"
xz -dc "$work/Packages.xz" > "$work/Packages" || die "cannot decompress $packages of $suite"

# FIELD of PACKAGE's entry (the last one if the list has several versions).
field() { # PACKAGE FIELD
  awk -v p="$1" -v f="$2" '
    /^Package: / { cur = ($2 == p) }
    cur && index($0, f ": ") == 1 { v = substr($0, length(f) + 3) }
    END { if (v != "") print v }' "$work/Packages"
}
deps=$(field "$meta" Depends)
[ -n "$deps" ] || die "$suite has no $meta in $packages"
kpkg=$(echo "$deps" | tr ',' '\n' | sed -n 's/^ *\(linux-image-[0-9][^ ]*\).*/\1/p' | head -n 1)
[ -n "$kpkg" ] || die "$meta in $suite depends on no linux-image-<version> package: $deps"
version=$(field "$kpkg" Version)
filename=$(field "$kpkg" Filename)
sha=$(field "$kpkg" SHA256)
if [ -z "$filename" ] || [ -z "$sha" ] || [ -z "$version" ]; then
  die "$suite's $packages has no complete entry for $kpkg (required by $meta)"
fi

if [ -f "$dir/package" ] && [ "$(cat "$dir/package")" = "${kpkg}_$version" ] && k=$(cached_kernel); then
  echo "$k"
  exit 0
fi
deb="$work/$(basename "$filename")"
fetch "$mirror/$filename" "$deb"
echo "$sha  $deb" | sha256sum -c --quiet >/dev/null 2>&1 \
  || die "$mirror/$filename does not match the SHA256 in $suite's $packages"
rm -rf "$dir.new"
mkdir -p "$dir.new/root"
# Only /boot (the kernel, its config and System.map): the modules are not used.
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir.new/root" ./boot \
  || die "cannot extract ./boot from $deb (dpkg-deb --fsys-tarfile | tar)"
ls "$dir.new"/root/boot/vmlinuz-* >/dev/null 2>&1 || die "$kpkg $version has no /boot/vmlinuz-*"
echo "${kpkg}_$version" > "$dir.new/package"
rm -rf "$dir"
mv "$dir.new" "$dir"
cached_kernel || die "no kernel in $dir after extraction"
