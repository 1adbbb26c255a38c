#!/usr/bin/env bash
# The small-file copy of bench/sync.sh over a slow link: bash bench/slow-link.sh [ROUNDS] [RATE]
# (default 3 rounds, 100mbit). Runs the benchmark in a network namespace of its own whose
# loopback tc's token bucket holds to RATE, and writes its own section of bench/RESULTS.md.
# Needs root and iproute2; installs rsync and GNU time like bench/sync.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
rate="${2:-100mbit}"
namespace="ferry-bench-$$"
if ! command -v tc >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null
fi
FERRY_BENCH_PREPARE_ONLY=1 bash bench/sync.sh
ip netns add "$namespace"
trap 'ip netns del "$namespace"' EXIT
# Loopback's 64 KiB frames would not fit the token bucket's burst.
ip -n "$namespace" link set lo mtu 1500 up
ip netns exec "$namespace" tc qdisc add dev lo root tbf rate "$rate" burst 32kb latency 50ms
ip netns exec "$namespace" env FERRY_BENCH_LINK="$rate" ./target/release/sync "$rounds" small
