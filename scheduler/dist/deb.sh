#!/usr/bin/env bash
# Builds ferry's Debian package (both binaries, the systemd units, example settings in
# /etc/ferry and a system user `ferry`) from a cargo build:
#   cargo build --release --locked && bash scheduler/dist/deb.sh
#   bash scheduler/dist/deb.sh --profile debug --out DIR     (what the tests check)
set -euo pipefail
cd "$(dirname "$0")/../.."

profile=release
out=target/deb
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "deb.sh: unknown argument $1 (--profile release|debug, --out DIR)" >&2; exit 2 ;;
    esac
done

bin=target/$profile
for b in ferry ferry-agent; do
    [ -x "$bin/$b" ] || { echo "deb.sh: $bin/$b is missing: cargo build --$profile first" >&2; exit 1; }
done
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

dist=scheduler/dist
install -D -m 0755 "$bin/ferry" "$stage/usr/bin/ferry"
install -D -m 0755 "$bin/ferry-agent" "$stage/usr/bin/ferry-agent"
install -D -m 0644 "$dist/ferry-scheduler.service" "$stage/lib/systemd/system/ferry-scheduler.service"
install -D -m 0644 "$dist/ferry-agent.service" "$stage/lib/systemd/system/ferry-agent.service"
install -D -m 0644 "$dist/scheduler.toml" "$stage/etc/ferry/scheduler.toml"
install -D -m 0644 "$dist/agent.toml" "$stage/etc/ferry/agent.toml"
install -D -m 0640 "$dist/ferry.env" "$stage/etc/ferry/ferry.env"
# Man pages and completions, from the binaries themselves.
"$bin/ferry" man "$stage/usr/share/man/man1"
"$bin/ferry-agent" man "$stage/usr/share/man/man1"
gzip -9n "$stage"/usr/share/man/man1/*.1
for b in ferry ferry-agent; do
    install -d "$stage/usr/share/bash-completion/completions" "$stage/usr/share/zsh/vendor-completions" \
        "$stage/usr/share/fish/vendor_completions.d"
    "$bin/$b" completions bash >"$stage/usr/share/bash-completion/completions/$b"
    "$bin/$b" completions zsh >"$stage/usr/share/zsh/vendor-completions/_$b"
    "$bin/$b" completions fish >"$stage/usr/share/fish/vendor_completions.d/$b.fish"
done
for doc in README.md docs/SQL.md docs/SECURITY.md docs/alerts.yml docs/grafana-dashboard.json; do
    [ -f "$doc" ] && install -D -m 0644 "$doc" "$stage/usr/share/doc/ferry/$(basename "$doc")"
done

mkdir -p "$stage/DEBIAN"
cat >"$stage/DEBIAN/control" <<CONTROL
Package: ferry
Version: $version
Architecture: $arch
Maintainer: ferry developers <ferry@example.invalid>
Depends: libc6, passwd
Section: admin
Priority: optional
Homepage: https://example.invalid/ferry
Description: high-availability file replication
 Schedules and real-time monitors shared by several schedulers through one
 SQL database (PostgreSQL or SQLite), with agents on file servers doing
 delta transfers over mutual TLS. Installs ferry (CLI and scheduler),
 ferry-agent, and their systemd units (not enabled).
CONTROL
printf '%s\n' /etc/ferry/scheduler.toml /etc/ferry/agent.toml /etc/ferry/ferry.env >"$stage/DEBIAN/conffiles"
install -m 0755 "$dist/postinst" "$stage/DEBIAN/postinst"
install -m 0755 "$dist/postrm" "$stage/DEBIAN/postrm"
install -m 0755 "$dist/prerm" "$stage/DEBIAN/prerm"

mkdir -p "$out"
deb="$out/ferry_${version}_${arch}.deb"
# Debug binaries (what the tests package) are large and only installed once: pack them fast.
compress=(-Zxz)
[ "$profile" = release ] || compress=(-Zgzip -z1)
dpkg-deb --root-owner-group "${compress[@]}" --build "$stage" "$deb" >/dev/null
echo "$deb"
