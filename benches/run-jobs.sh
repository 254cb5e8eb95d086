#!/usr/bin/env bash
# Job benchmark: builds release binaries, runs map jobs on real clusters
# with real Docker and prints JSON with every figure measured in this one
# run. Record the results in docs/PERFORMANCE.md with the machine and date.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup
cargo build --release -p insitu -p insitu-benches
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM, $(uname -r), $(docker version --format 'docker {{.Server.Version}} API {{.Server.APIVersion}}')" >&2
scripts/build-task-tools
INSITU_BIN="$PWD/target/release/insitu" target/release/jobbench "$@"
