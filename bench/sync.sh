#!/usr/bin/env bash
# Sync speed and bytes on the wire, ferry (two agents) against rsync --daemon:
# bash bench/sync.sh [ROUNDS] (default 3). Installs rsync and GNU time when missing (Debian),
# builds release binaries, writes bench/RESULTS.md. Needs about 1.4 GiB in the temp folder, plus
# 1.2 GiB per round: every copy stays until the end (mass deletions slow some disks for minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in rsync:rsync /usr/bin/time:time; do
    if ! command -v "${tool%%:*}" >/dev/null; then
        if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${tool##*:}" >/dev/null
        else
            echo "bench/sync.sh: install ${tool##*:} first" >&2
            exit 1
        fi
    fi
done
cargo build --release --locked --workspace --bins
# bench/slow-link.sh prepares through this script, then runs the benchmark itself.
[ -n "${FERRY_BENCH_PREPARE_ONLY:-}" ] && exit 0
exec ./target/release/sync "${1:-3}"
