#!/usr/bin/env bash
# Checks what ferry ships beside its binaries (tests/run.sh runs it after the build):
# - the systemd units verify (`systemd-analyze verify` prints nothing about them);
# - the .deb builds (from the debug binaries) and installs into a scratch root: files in
#   place, the user ferry made, the binaries run;
# - docker-compose.yml validates against the compose specification's JSON schema (the one
#   docker-compose 1.29.2 ships, from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."

missing() {
    if [ "${CI:-}" = true ]; then
        echo "tests/packaging.sh: $1 is missing" >&2
        exit 1
    fi
    echo "tests/packaging.sh: SKIPPED the packaging checks: $1 is missing" >&2
    exit 0
}
command -v dpkg-deb >/dev/null || missing dpkg-deb
command -v systemd-analyze >/dev/null || missing systemd-analyze

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

deb=$(bash scheduler/dist/deb.sh --profile debug --out "$work")
root="$work/root"
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/etc"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
echo 'root:x:0:0:root:/root:/bin/bash' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"
echo 'root:*:19000:0:99999:7:::' >"$root/etc/shadow"
echo 'root:*::' >"$root/etc/gshadow"
# Nothing of the host is installed into the scratch root, so its dependencies are not there.
dpkg --root="$root" --force-script-chrootless --force-depends --log=/dev/null -i "$deb" >/dev/null 2>&1 ||
    { echo "tests/packaging.sh: installing $deb into a scratch root failed" >&2; exit 1; }
dpkg --root="$root" -s ferry | grep -q '^Status: install ok installed'
for f in usr/bin/ferry usr/bin/ferry-agent lib/systemd/system/ferry-scheduler.service \
    lib/systemd/system/ferry-agent.service etc/ferry/scheduler.toml etc/ferry/agent.toml etc/ferry/ferry.env \
    usr/share/man/man1/ferry.1.gz usr/share/man/man1/ferry-job-add.1.gz usr/share/man/man1/ferry-agent.1.gz \
    usr/share/bash-completion/completions/ferry usr/share/bash-completion/completions/ferry-agent; do
    [ -e "$root/$f" ] || { echo "tests/packaging.sh: the package did not install /$f" >&2; exit 1; }
done
grep -q '^ferry:x:[0-9]*:[0-9]*:.*:/var/lib/ferry:/usr/sbin/nologin$' "$root/etc/passwd" ||
    { echo "tests/packaging.sh: the package made no system user ferry" >&2; exit 1; }
[ "$(stat -c %a "$root/etc/ferry/ferry.env")" = 640 ] ||
    { echo "tests/packaging.sh: /etc/ferry/ferry.env (the database password) is readable by all" >&2; exit 1; }
"$root/usr/bin/ferry" --version | grep -q '^ferry '
"$root/usr/bin/ferry-agent" --version | grep -q '^ferry-agent '

# The units as installed, their programs where the scratch root has them.
units="$work/units"
mkdir -p "$units"
for unit in "$root"/lib/systemd/system/ferry-*.service; do
    sed "s#=/usr/bin/#=$root/usr/bin/#" "$unit" >"$units/$(basename "$unit")"
done
verdict=$(systemd-analyze verify "$units"/*.service 2>&1) || true
if [ -n "$verdict" ]; then
    echo "tests/packaging.sh: systemd-analyze verify:" >&2
    echo "$verdict" >&2
    exit 1
fi

schema="target/compose-spec/compose/config/compose_spec.json"
if [ ! -f "$schema" ]; then
    mkdir -p target/compose-spec
    python3 -m pip download -q --no-deps -d target/compose-spec docker-compose==1.29.2
    (cd target/compose-spec && python3 -m zipfile -e docker_compose-1.29.2-py2.py3-none-any.whl .)
fi
python3 -c 'import jsonschema, yaml' 2>/dev/null || python3 -m pip install -q jsonschema pyyaml
python3 - "$schema" docker-compose.yml <<'PY'
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
compose = yaml.safe_load(open(sys.argv[2]))
errors = list(jsonschema.Draft7Validator(schema).iter_errors(compose))
for e in errors:
    print(f"docker-compose.yml: {'/'.join(map(str, e.path))}: {e.message[:300]}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY
# Every metric the alert rules and the dashboard use is one the code records.
for name in $(grep -ohE 'ferry_[a-z_]+' docs/alerts.yml docs/grafana-dashboard.json |
    sed -E 's/_(bucket|count|sum)$//' | sort -u); do
    grep -rqF "\"$name\"" scheduler/src agent/ ||
        { echo "tests/packaging.sh: docs name the metric $name, which nothing records" >&2; exit 1; }
done

echo "tests/packaging.sh: units verify, the .deb installs, docker-compose.yml validates, the docs' metrics exist"
