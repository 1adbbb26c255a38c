#!/usr/bin/env bash
# A million small files, ferry's two agents against rsync --daemon: bash bench/million.sh [ROUNDS]
# (default 1: a round takes about ten minutes). The files are generated once into
# $FERRY_BENCH_DIR (default /var/tmp/ferry-bench, about 4 GiB) and kept; every copy needs about
# 4 GiB more in the temporary folder until the end. Installs rsync and GNU time when missing
# (Debian), builds release binaries, writes the section "sync-million" of bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY_BENCH_PREPARE_ONLY=1 bash bench/sync.sh
exec ./target/release/sync "${1:-1}" million
