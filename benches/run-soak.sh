#!/usr/bin/env bash
# Soak test (see benches/src/soakbench.rs): 30 minutes of mixed S3 traffic
# and jobs while a storage node is killed and restarted every 3 minutes.
# Prints a JSON report; fails if anything acknowledged was lost, a job
# failed, or any process panicked. Record the figures in
# docs/PERFORMANCE.md with the machine and the date.
# SOAK_SECS, SOAK_KILL_EVERY_SECS and SOAK_CLIENTS change the run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup
profile="${BENCH_PROFILE:-dev}"
cargo build --profile "$profile" -p insitu -p insitu-benches
dir=target/$([ "$profile" = dev ] && echo debug || echo "$profile")
log=$(mktemp /tmp/insitu-soak.XXXXXX.log)
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM, $(uname -r); profile $profile; log $log" >&2
status=0
INSITU_BIN="$PWD/$dir/insitu" INSITU_LOG=warn "$dir/soakbench" 2>"$log" || status=$?
panics=$(grep -c "panicked" "$log" || true)
echo "{\"panics_in_log\": $panics}"
grep "^soak:" "$log" | tail -20 >&2 || true
if [ "$panics" != 0 ]; then
    grep -m5 -A3 "panicked" "$log" >&2
    exit 1
fi
exit "$status"
