#!/usr/bin/env bash
# Gateway and node memory against a job's input count (see
# benches/src/memcurve.rs): N objects of 1 byte, a map `true` over their
# prefix, peak RSS sampled while it plans and runs. Arguments are the
# counts (default 10000 100000). Prints JSON; record the figures in
# docs/PERFORMANCE.md with the machine and the date.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup
cargo build --release -p insitu -p insitu-benches
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM, $(uname -r)" >&2
scripts/build-task-tools
INSITU_BIN="$PWD/target/release/insitu" INSITU_LOG=warn target/release/memcurve "$@"
