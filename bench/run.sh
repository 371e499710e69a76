#!/usr/bin/env bash
# Runs the guest-loop benchmark (bench/src/main.rs): krr's interpreter, tiered JIT and JIT
# single-step side by side with the same loop natively and under QEMU TCG user mode (Debian's
# 7.2 qemu-user-static, fetched with apt-get download + dpkg-deb -x into bench/.cache, nothing
# installed). Every row is a whole process timed the same way (wall and CPU time, see main.rs).
# Usage: bash bench/run.sh [--runs N] [--iterations N] [--interpreter-only]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache="$here/.cache"
qemu="$cache/usr/bin/qemu-x86_64-static"
if [ ! -x "$qemu" ]; then
  mkdir -p "$cache/deb"
  (cd "$cache/deb" && apt-get download qemu-user-static >/dev/null 2>&1) || {
    echo "bench/run.sh: cannot download qemu-user-static with apt-get" >&2; exit 1; }
  dpkg-deb -x "$cache"/deb/qemu-user-static_*.deb "$cache"
fi
cd "$here/.."
cargo build --release -p krr-bench
KRR_QEMU_USER="$qemu" ./target/release/krr-bench "$@"
