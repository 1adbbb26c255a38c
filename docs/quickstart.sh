#!/usr/bin/env bash
# Try ferry on this machine: SQLite and local folders, no server to install.
# Builds ferry, defines a mirror job with a schedule and a real-time monitor, and runs the
# scheduler in the foreground (Ctrl-C stops it). Usage: bash docs/quickstart.sh [DEMO_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins --locked
ferry="$PWD/target/release/ferry"
demo="$(realpath -m "${1:-$PWD/ferry-demo}")"
mkdir -p "$demo/source/reports"
[ -e "$demo/source/hello.txt" ] || echo "hello from ferry" >"$demo/source/hello.txt"
[ -e "$demo/source/reports/q1.txt" ] || echo "quarterly numbers" >"$demo/source/reports/q1.txt"
export FERRY_DB="$demo/ferry.db"
# Creates the database, or brings one an older ferry made up to this one's schema.
"$ferry" db migrate >/dev/null

"$ferry" job show demo >/dev/null 2>&1 ||
    "$ferry" job add demo --rule mirror --from "$demo/source" --to "$demo/backup" --exclude '*.tmp'
"$ferry" schedule show demo-every-minute >/dev/null 2>&1 ||
    "$ferry" schedule add demo-every-minute --job demo --cron '* * * * *'
"$ferry" monitor show demo-live >/dev/null 2>&1 ||
    "$ferry" monitor add demo-live --job demo

cat <<TEXT

ferry is replicating $demo/source to $demo/backup:
  a full mirror every minute, and every change within a fraction of a second.
Try, in another terminal:
  echo new >$demo/source/new.txt && ls $demo/backup
  FERRY_DB=$demo/ferry.db $ferry status
  FERRY_DB=$demo/ferry.db $ferry tail --follow
Ctrl-C stops the scheduler (its leases are released at once).

TEXT
exec "$ferry" scheduler run --name quickstart --allow "$demo"
