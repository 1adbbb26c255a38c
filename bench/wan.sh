#!/usr/bin/env bash
# The re-syncs of bench/sync.sh across a WAN's round trip: bash bench/wan.sh [ROUNDS] [RTT_MS]
# (default 3 rounds, 10 ms). The counting relay between the two ends holds every byte half the
# round trip each way; writes its own section of bench/RESULTS.md. Installs rsync and GNU time
# like bench/sync.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
rtt_ms="${2:-10}"
if [ $((rtt_ms % 2)) -ne 0 ] || [ "$rtt_ms" -lt 2 ]; then
    echo "bench/wan.sh: the round trip must be an even number of milliseconds, 2 or more" >&2
    exit 1
fi
FERRY_BENCH_PREPARE_ONLY=1 bash bench/sync.sh
FERRY_BENCH_DELAY_MS=$((rtt_ms / 2)) exec ./target/release/sync "$rounds" wan
