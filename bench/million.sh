#!/usr/bin/env bash
# A million small files, ferry's two agents against rsync --daemon: bash bench/million.sh [ROUNDS]
# (default 1: a round takes about ten minutes). The files are generated once into
# $FERRY_BENCH_DIR (default /var/tmp/ferry-bench, about 4 GiB) and kept. Each tool copies onto a
# fresh ext4 file system of its own (a loop device over a sparse 8 GiB image there), so none pays
# for another's files or deletions. Needs root (mount); installs rsync and GNU time
# when missing (Debian), builds release binaries, writes the section "sync-million" of
# bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-1}
work=${FERRY_BENCH_DIR:-/var/tmp/ferry-bench}
[ "$(id -u)" = 0 ] || { echo "bench/million.sh: run as root (it mounts file systems)" >&2; exit 1; }
command -v mkfs.ext4 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq e2fsprogs >/dev/null; }
FERRY_BENCH_PREPARE_ONLY=1 bash bench/sync.sh
mkdir -p "$work"
FERRY_BENCH_DIR="$work" ./target/release/sync "$rounds" million
