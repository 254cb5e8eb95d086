#!/usr/bin/env bash
# Catalog lookups against the catalog's size (see benches/src/catalogscale.rs):
# the embedded rocksdb catalog filled with N object records, then read back by
# random key. Record the results in docs/PERFORMANCE.md with the machine and
# the date.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup
profile="${BENCH_PROFILE:-release}"
cargo build --profile "$profile" -p insitu-benches --bin catalogscale
dir=target/$([ "$profile" = dev ] && echo debug || echo "$profile")
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM, $(uname -r); profile $profile" >&2
"$dir/catalogscale" "$@"
