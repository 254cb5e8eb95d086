#!/usr/bin/env bash
# Catalog benchmark: the embedded rocksdb catalog, PostgreSQL with one
# gateway and PostgreSQL with two, in one run (see benches/src/catalogbench.rs).
# Record the results in docs/PERFORMANCE.md with the machine and the date.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup
profile="${BENCH_PROFILE:-release}"
cargo build --profile "$profile" -p insitu -p insitu-benches
dir=target/$([ "$profile" = dev ] && echo debug || echo "$profile")
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM, $(uname -r); profile $profile" >&2
INSITU_BIN="$PWD/$dir/insitu" INSITU_LOG=error "$dir/catalogbench"
