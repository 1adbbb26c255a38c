#!/usr/bin/env bash
# ferry's whole test suite, from a fresh machine: installs PostgreSQL's server binaries when they
# are missing (the tests start their own private server from them), builds the binaries the
# end-to-end tests run, then runs every test of every crate.
set -euo pipefail
cd "$(dirname "$0")/.."

have_postgres() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }

if ! have_postgres; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "tests/run.sh: installing PostgreSQL (the tests run a private server of their own)"
        # The tests start their own server; the package's default cluster is not needed.
        mkdir -p /etc/postgresql-common/createcluster.d
        echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/ferry-tests.conf
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
        echo "tests/run.sh: PostgreSQL's server binaries are missing and cannot be installed here;" \
            "install your distribution's postgresql package (tests on PostgreSQL are skipped, or fail under CI=true)" >&2
    fi
fi

# The clock-skew test runs a scheduler under libfaketime.
if [ ! -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "tests/run.sh: installing libfaketime (for the clock-skew test)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libfaketime >/dev/null
fi

# The agent tests compare replicas with rsync; the sync benchmark runs it as a daemon.
if ! command -v rsync >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "tests/run.sh: installing rsync (the agent tests check replicas with it)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync >/dev/null
fi

# The fidelity tests set ACLs and extended attributes on the trees they sync.
if { ! command -v setfacl >/dev/null || ! command -v setfattr >/dev/null; } && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "tests/run.sh: installing acl and attr (the fidelity tests set ACLs and extended attributes)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq acl attr >/dev/null
fi

# A slow-link test runs agents in a network namespace of its own, rate-limited with tc.
if { ! command -v ip >/dev/null || ! command -v tc >/dev/null; } && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "tests/run.sh: installing iproute2 (a test runs agents on a slow link of its own)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null
fi

# The crates' one-way dependencies (docs/ARCHITECTURE.md): the engine knows nothing of networks,
# databases or async runtimes, and the scheduler does not build the agent service.
engine_deps=$(cargo tree --locked -p ferry-engine -e normal --prefix none)
if grep -E '^(tokio|tokio-rustls|rustls|sqlx|socket2|mio|hyper|ferry-wire) ' <<<"$engine_deps"; then
    echo "tests/run.sh: ferry-engine must not depend on the crates above" >&2
    exit 1
fi
if cargo tree --locked -p ferry-scheduler -e normal --prefix none | grep -E '^ferry-agent '; then
    echo "tests/run.sh: the scheduler must not depend on the agent service (ferry-agent)" >&2
    exit 1
fi

# The upgrade test runs the previous release beside this one: its binaries are built once, from
# its commit in this checkout's history, in a target folder of their own.
previous=6718e32989b0620dbd703e9292560929684eb8e2 # ferry 0.1.0 (tag v0.1.0)
release=target/previous-release
if [ "$(cat "$release/commit" 2>/dev/null)" != "$previous" ]; then
    if git cat-file -e "$previous^{commit}" 2>/dev/null; then
        echo "tests/run.sh: building ferry 0.1.0 for the upgrade test"
        rm -rf "$release/src" "$release/commit" && mkdir -p "$release/src"
        git archive "$previous" | tar -x -C "$release/src"
        (cd "$release/src" && CARGO_TARGET_DIR="$PWD/../target" cargo build --locked --bins -q -p ferry-scheduler -p ferry-agent)
        cp "$release/target/debug/ferry" "$release/target/debug/ferry-agent" "$release/"
        echo "$previous" >"$release/commit"
    else
        echo "tests/run.sh: ferry 0.1.0 ($previous) is not in this checkout's history (a shallow clone?): the upgrade test cannot run" >&2
    fi
fi

cargo build --workspace --bins --locked
bash tests/packaging.sh
cargo test --workspace --locked
