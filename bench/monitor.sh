#!/usr/bin/env bash
# Real-time monitor latency, ferry against lsyncd: bash bench/monitor.sh [FILES] (default 50).
# Installs lsyncd when missing (Debian), builds release binaries, writes bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v lsyncd >/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lsyncd rsync >/dev/null
    else
        echo "bench/monitor.sh: install lsyncd first" >&2
        exit 1
    fi
fi
cargo build --release --locked --workspace --bins
exec ./target/release/monitor-latency "${1:-50}"
