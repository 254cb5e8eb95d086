#!/usr/bin/env bash
# The planner simulation: 1,000,000 tasks of 5 tenants over 100 simulated
# nodes (R=3, skewed placement), the dispatcher's local-only placement
# against delay scheduling. No cluster: the planner's rules run by
# themselves. Prints JSON; record it in docs/PERFORMANCE.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p insitu-benches --bin plansim
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM, $(uname -r)" >&2
target/release/plansim "$@"
