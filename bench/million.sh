#!/usr/bin/env bash
# A million small files, ferry's two agents against rsync --daemon: bash bench/million.sh [ROUNDS]
# (default 1: a round takes about ten minutes). The files are generated once into
# $FERRY_BENCH_DIR (default /var/tmp/ferry-bench, about 4 GiB) and kept. The copies go to a fresh
# ext4 file system (a loop device, 8 GiB a round), so no tool pays for deletions before it (ext4
# slows down for minutes after mass deletions). Needs root (mount); installs rsync and GNU time
# when missing (Debian), builds release binaries, writes the section "sync-million" of
# bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-1}
work=${FERRY_BENCH_DIR:-/var/tmp/ferry-bench}
image="$work/million.img"
mnt="$work/million-mnt"
[ "$(id -u)" = 0 ] || { echo "bench/million.sh: run as root (it mounts a file system)" >&2; exit 1; }
command -v mkfs.ext4 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq e2fsprogs >/dev/null; }
FERRY_BENCH_PREPARE_ONLY=1 bash bench/sync.sh
mkdir -p "$work" "$mnt"
umount "$mnt" 2>/dev/null || true
rm -f "$image" && truncate -s $((rounds * 8 + 4))G "$image"
mkfs.ext4 -q -F -N $((rounds * 2200000 + 100000)) "$image"
mount -o loop "$image" "$mnt"
trap 'umount "$mnt"; rm -f "$image"' EXIT
TMPDIR="$mnt" ./target/release/sync "$rounds" million
