#!/usr/bin/env bash
# The initial copy of many small files on one machine: `ferry-agent sync` against `rsync -a` and
# `rsync -a --fsync`, each copy onto a fresh ext4 file system of its own (a loop device), so no
# tool pays for the one before it (ext4 slows down for minutes after mass deletions).
#
#   bash bench/many-files.sh [FILES] [ROUNDS]      (default 200000 files, 3 rounds)
#
# Files of one byte, 500 to a folder, generated once into $FERRY_BENCH_DIR (default
# /var/tmp/ferry-bench) and kept between runs. Needs root (mount), rsync, GNU time; builds the
# release binaries; writes the section "many-files-FILES" of bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
files=${1:-200000}
rounds=${2:-3}
work=${FERRY_BENCH_DIR:-/var/tmp/ferry-bench}
source="$work/source-$files"
image="$work/destination.img"
mnt="$work/mnt"

[ "$(id -u)" = 0 ] || { echo "bench/many-files.sh: run as root (it mounts a file system)" >&2; exit 1; }
for tool in rsync:rsync /usr/bin/time:time mkfs.ext4:e2fsprogs; do
    if ! command -v "${tool%%:*}" >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${tool##*:}" >/dev/null
    fi
done
cargo build --release --locked -p ferry-agent --bin ferry-agent
ferry=$PWD/target/release/ferry-agent

mkdir -p "$work" "$mnt"
if [ ! -d "$source" ]; then
    echo "generating $files files in $source"
    python3 - "$source" "$files" <<'EOF'
import os, sys
root, files = sys.argv[1], int(sys.argv[2])
os.makedirs(root + ".partial", exist_ok=True)
for i in range(files):
    folder = f"{root}.partial/d{i // 500:05}"
    if i % 500 == 0:
        os.makedirs(folder, exist_ok=True)
    with open(f"{folder}/f{i % 500:03}", "wb") as f:
        f.write(b"x")
os.rename(root + ".partial", root)
EOF
fi

# A copy with `$@` onto a fresh file system: "wall-seconds flush-seconds max-rss-KiB cpu-seconds".
measure() {
    umount "$mnt" 2>/dev/null || true
    rm -f "$image" && truncate -s $((files / 1000 * 8 + 2048))M "$image"
    mkfs.ext4 -q -F -N $((files * 2 + 10000)) "$image" && mount -o loop "$image" "$mnt"
    sync && echo 3 >/proc/sys/vm/drop_caches
    find "$source" -type f -print0 | xargs -0 cat >/dev/null # the source in the page cache, for every tool
    /usr/bin/time -o "$work/time" -f "%e %M %U %S" "$@" "$source/" "$mnt/copy" >/dev/null
    local began ended
    began=$(date +%s.%N) && sync && ended=$(date +%s.%N)
    local count
    count=$(find "$mnt/copy" -name .ferry -prune -o -type f -print | wc -l)
    [ "$count" = "$files" ] || { echo "bench/many-files.sh: $* copied $count files of $files" >&2; exit 1; }
    umount "$mnt"
    read -r wall rss user sys <"$work/time"
    echo "$wall $(echo "$ended - $began" | bc) $rss $(echo "$user + $sys" | bc)"
}

tools=("ferry-agent sync" "rsync -a" "rsync -a --fsync")
commands=("$ferry sync" "rsync -a" "rsync -a --fsync")
samples="$work/samples"
: >"$samples"
for round in $(seq "$rounds"); do
    # Each round starts with another tool, so none always runs on the coolest disk.
    for k in 0 1 2; do
        i=$(((k + round) % 3))
        echo "round $round: ${tools[$i]}"
        echo "$i $(measure ${commands[$i]})" >>"$samples"
    done
done
rm -f "$image"

python3 - "$samples" "$files" "$rounds" "$(nproc)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" \
    "$(rsync --version | head -1)" "${tools[@]}" <<'EOF'
import datetime, re, statistics, sys
samples, files, rounds, cores, cpu, rsync = sys.argv[1:7]
tools = sys.argv[7:]
by_tool = {}
for line in open(samples):
    i, wall, flush, rss, cpu_s = line.split()
    by_tool.setdefault(int(i), []).append((float(wall), float(flush), int(rss), float(cpu_s)))
def cell(values, fmt):
    values = sorted(values)
    return f"{fmt(statistics.median(values))} ({fmt(values[0])}-{fmt(values[-1])})"
rows = []
for i, tool in enumerate(tools):
    s = by_tool[i]
    seconds = lambda v: f"{v:.2f}"
    rows.append(f"| {tool} | {cell([w for w, *_ in s], seconds)} | {cell([w + f for w, f, *_ in s], seconds)} "
                f"| {cell([c for *_, c in s], seconds)} | {cell([r / 1024 for _, _, r, _ in s], lambda v: f'{v:.0f}')} |")
n = f"{int(files):,}"
section = f"""<!-- many-files-{files}:start -->
## Initial copy of {n} small files on one machine (bench/many-files.sh)

`bash bench/many-files.sh {files} {rounds}` on {datetime.date.today()}, {cores} cores ({cpu}), {" ".join(rsync.split(" protocol")[0].split())}: {n} files of one byte, 500 to a folder, copied from the page cache onto a fresh ext4 file system (a loop device) each time; median (min-max) of {rounds} round{"s" if int(rounds) > 1 else ""}. "Until on disk" adds the `sync` after the tool exits: plain rsync leaves its writes in the page cache, ferry and `rsync --fsync` have made every file durable before they exit.

| tool | wall time, s | until on disk, s | CPU, s | peak memory, MiB |
| --- | --- | --- | --- | --- |
{chr(10).join(rows)}

ferry writes each file under a temporary name, makes a batch of them durable with one `syncfs` (on another thread, while the next batch is written) and only then renames them into place, so a crash never leaves a short or empty file under a real name; `rsync --fsync` pays an fsync per file for the same guarantee.
<!-- many-files-{files}:end -->"""
path = "bench/RESULTS.md"
text = open(path).read()
pattern = re.compile(rf"<!-- many-files-{files}:start -->.*?<!-- many-files-{files}:end -->", re.S)
text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
open(path, "w").write(text)
print(section)
EOF
