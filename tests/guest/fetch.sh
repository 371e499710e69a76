#!/usr/bin/env bash
# Fetches Debian's 6.1 cloud kernel and busybox-static with apt-get download + dpkg-deb -x
# (nothing is installed) into tests/guest/cache, and builds the test initramfs; then Debian's
# QEMU for comparison (fetch-qemu.sh). Prints the paths of the kernel, the initramfs and the
# qemu-system-x86_64 wrapper, one a line. Re-running reuses the cache.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache="$here/cache"
mkdir -p "$cache/deb" "$cache/root"
# Tests boot the guest in parallel: one fetch at a time (the others then find the cache).
exec 9>"$cache/.fetch.lock"
flock 9
command -v cpio >/dev/null 2>&1 || apt-get install -y --no-install-recommends cpio >/dev/null 2>&1 || { echo "tests/guest/fetch.sh: cpio is missing and cannot be installed" >&2; exit 1; }
cd "$cache/deb"
find_kernel_package() {
  apt-cache depends linux-image-cloud-amd64 2>/dev/null \
    | sed -n 's/.*Depends: \(linux-image-6\.1\.[^ ]*-cloud-amd64\)$/\1/p' | head -n 1
}
kpkg=$(find_kernel_package)
if [ -z "$kpkg" ]; then
  apt-get update >/dev/null 2>&1 || true
  kpkg=$(find_kernel_package)
fi
if [ -z "$kpkg" ]; then
  echo "tests/guest/fetch.sh: cannot find the linux-image-6.1 cloud package (apt-get update?)" >&2
  exit 1
fi
if ! ls "$kpkg"_*.deb >/dev/null 2>&1; then
  apt-get download "$kpkg" >/dev/null 2>&1 || { echo "tests/guest/fetch.sh: apt-get download $kpkg failed" >&2; exit 1; }
fi
if ! ls busybox-static_*.deb >/dev/null 2>&1; then
  apt-get download busybox-static >/dev/null 2>&1 || { echo "tests/guest/fetch.sh: apt-get download busybox-static failed" >&2; exit 1; }
fi
kernel_deb=$(ls -t "$kpkg"_*.deb | head -n 1)
busybox_deb=$(ls busybox-static_*.deb | head -n 1)
# The unpacked kernel follows the package: when Debian publishes a new 6.1 kernel (a fresh CI
# machine fetches that one), the cache moves to it too.
if [ ! -d "$cache/root/kernel" ] || [ "$(cat "$cache/root/kernel.package" 2>/dev/null)" != "$kernel_deb" ]; then
  rm -rf "$cache/root/kernel"
  dpkg-deb -x "$kernel_deb" "$cache/root/kernel"
  echo "$kernel_deb" > "$cache/root/kernel.package"
  rm -f "$cache/initramfs.cpio"
fi
if [ ! -d "$cache/root/busybox" ]; then
  dpkg-deb -x "$busybox_deb" "$cache/root/busybox"
fi
kernel=$(ls "$cache"/root/kernel/boot/vmlinuz-* | head -n 1)
initramfs="$cache/initramfs.cpio"
if [ ! -f "$initramfs" ] || [ "$here/init" -nt "$initramfs" ] || [ "$here/fetch.sh" -nt "$initramfs" ]; then
  stage=$(mktemp -d)
  mkdir -p "$stage"/{bin,dev,proc,sys,tmp}
  cp "$cache/root/busybox/bin/busybox" "$stage/bin/busybox"
  cp "$here/init" "$stage/init"
  # The virtio modules the init loads when krr has a disk (the cloud kernel builds them as modules).
  kver=$(basename "$(ls -d "$cache"/root/kernel/lib/modules/*/ | head -n 1)")
  mods="$cache/root/kernel/lib/modules/$kver/kernel"
  mkdir -p "$stage/lib/modules/$kver"
  for m in drivers/virtio/virtio drivers/virtio/virtio_ring drivers/virtio/virtio_pci_modern_dev \
           drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci drivers/block/virtio_blk; do
    cp "$mods/$m.ko" "$stage/lib/modules/$kver/"
  done
  chmod +x "$stage/init"
  (cd "$stage" && find . | cpio -o -H newc --quiet) > "$initramfs"
  rm -rf "$stage"
fi
qemu=$(bash "$here/fetch-qemu.sh")
echo "$kernel"
echo "$initramfs"
echo "$qemu"
