#!/usr/bin/env bash
# Prints the path of GNU time (/usr/bin/time, which the benchmarks time every row with: wall,
# CPU and max RSS); when it is missing, Debian's `time` package is downloaded and unpacked
# under bench/.cache (nothing is installed).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ -x /usr/bin/time ]; then
  echo /usr/bin/time
  exit 0
fi
timer="$here/.cache/time/usr/bin/time"
if [ ! -x "$timer" ]; then
  mkdir -p "$here/.cache/time-deb"
  (cd "$here/.cache/time-deb" && { apt-get download time >/dev/null 2>&1 \
    || { apt-get update >/dev/null 2>&1; apt-get download time >/dev/null 2>&1; }; }) \
    || { echo "bench/gnu-time.sh: /usr/bin/time is missing and apt-get download time failed" >&2; exit 1; }
  debs=("$here"/.cache/time-deb/time_*.deb)
  dpkg-deb -x "${debs[0]}" "$here/.cache/time"
fi
echo "$timer"
