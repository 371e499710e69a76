#!/usr/bin/env bash
# The whole test suite (the README's test command). Everything the tests need is built or
# fetched here. KRR_DIFF_CASES sets the random cases per encoding form of the differential
# tests against this CPU (CI runs a bounded number; set it higher for a full sweep).
set -euo pipefail
cd "$(dirname "$0")/.."
export KRR_DIFF_CASES="${KRR_DIFF_CASES:-40}"
# A fixed seed keeps CI reproducible; KRR_DIFF_SEED=random sweeps with a fresh seed (printed,
# with the exact environment that reproduces a failure), e.g.
#   KRR_DIFF_SEED=random KRR_DIFF_CASES=2000 cargo test --release --test diff_cpu -- --nocapture
export KRR_DIFF_SEED="${KRR_DIFF_SEED:-0x18ec49bc1bd6f318}"
# Tools the tests drive: gdb (tests/gdb_stub.rs, tests/gdb_krr.rs), e2fsprogs (the disk tests'
# images), GNU parallel (tests/parallel_replay.rs, as a batch system fans segments out).
for tool in gdb:gdb mkfs.ext4:e2fsprogs debugfs:e2fsprogs parallel:parallel; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || apt-get install -y --no-install-recommends "${tool#*:}" >/dev/null 2>&1 \
    || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends "${tool#*:}" >/dev/null; }
done
cargo build --release --workspace
mkdir -p target
# --nocapture so the differential harness's coverage line shows; the log keeps everything.
# --no-fail-fast: one failing test binary must not hide the others' results.
status=0
cargo test --workspace --no-fail-fast -- --nocapture 2>&1 | tee target/test.log || status=$?
if [ "$status" -ne 0 ]; then
  # The log is long and a CI report keeps only its tail: repeat each failed test's panic
  # message last.
  echo "=== failed tests and their panic messages (all output: target/test.log) ==="
  sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' target/test.log | sort -u | while read -r name; do
    echo "--- $name"
    grep -F -A 400 "thread '$name'" target/test.log | grep -v -E '^ +([0-9]+: |at )' | head -20
    grep -F -A 400 "thread '$name'" target/test.log | grep -E "assertion|left:|right:" | cut -c1-400 | head -10
  done
  exit "$status"
fi
./target/release/krr demo
