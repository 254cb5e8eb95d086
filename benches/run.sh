#!/usr/bin/env bash
# Object-store benchmark: builds release binaries, starts a 3-node cluster
# (R=1) and prints JSON with every figure measured in this one run.
# Record the results in docs/PERFORMANCE.md with the machine and the date.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup
cargo build --release -p insitu -p insitu-benches
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM, $(uname -r)" >&2
INSITU_BIN="$PWD/target/release/insitu" target/release/s3bench
