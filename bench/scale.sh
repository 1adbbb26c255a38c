#!/usr/bin/env bash
# Scale benchmark: bash bench/scale.sh [MINUTES]  (default 2; about 10 minutes in all).
# Builds release binaries, starts a private PostgreSQL with 10,000 schedules and 1,000 monitors
# on three schedulers (then SQLite with 1,000 schedules on one), and writes the results to
# bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each monitor watches with an inotify instance of its own; the kernel's default allows 128 per user.
if [ "$(cat /proc/sys/fs/inotify/max_user_instances)" -lt 2048 ]; then
    sysctl -qw fs.inotify.max_user_instances=2048
fi
cargo build --release --locked --workspace --bins
exec ./target/release/scale "${1:-2}"
