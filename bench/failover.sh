#!/usr/bin/env bash
# Failover benchmark: bash bench/failover.sh [REPETITIONS]  (default 20, about 4 minutes).
# Builds release binaries, starts a private PostgreSQL and three schedulers, and writes the
# results to bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --workspace --bins
exec ./target/release/failover "${1:-20}"
