#!/usr/bin/env bash
# The test command (README, .ci/run): builds the binaries the end-to-end tests run as processes,
# then runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# The ACME tests run against Let's Encrypt's test CA, Pebble (Debian package `pebble`, with
# pebble-challtestsrv). Installed when missing; quiet and idempotent.
if ! command -v pebble >/dev/null 2>&1 || ! command -v pebble-challtestsrv >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    if ! $sudo apt-get install -y -qq pebble >/dev/null 2>&1; then
        $sudo apt-get update -qq >/dev/null
        $sudo apt-get install -y -qq pebble >/dev/null
    fi
fi

# TLS session resumption is checked with an independent client, OpenSSL's `s_client`
# (tests/tests/tls_resumption.rs): Debian's `openssl`, installed when missing.
if ! command -v openssl >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    if ! $sudo apt-get install -y -qq openssl >/dev/null 2>&1; then
        $sudo apt-get update -qq >/dev/null
        $sudo apt-get install -y -qq openssl >/dev/null
    fi
fi

# The fleet tests (tests/tests/fleet.rs) run a three-member etcd cluster on loopback: Debian's
# `etcd-server`, installed when missing. Where systemd runs, the package starts its own etcd on
# 127.0.0.1:2379; the tests use ports of their own, and that service is stopped and disabled again
# when this script is what installed it.
if ! command -v etcd >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    if ! $sudo apt-get install -y -qq etcd-server >/dev/null 2>&1; then
        $sudo apt-get update -qq >/dev/null
        $sudo apt-get install -y -qq etcd-server >/dev/null
    fi
    if [ -d /run/systemd/system ]; then
        $sudo systemctl disable --now etcd >/dev/null 2>&1 || true
    fi
fi

# The independent-client tests (tests/tests/clients.rs) drive controld's API from Python's grpcio
# with grpcio-reflection (tests/clients/admin_client.py). Installed from PyPI when missing or too
# old; quiet and idempotent. A Python that refuses pip installs (PEP 668) gets them all the same:
# this is a test machine.
python_grpc_ok() {
    python3 -c 'import grpc, grpc_reflection, google.protobuf as p
assert tuple(map(int, p.__version__.split(".")[:2])) >= (5, 26)' >/dev/null 2>&1
}
if ! python_grpc_ok; then
    packages=('grpcio>=1.60' 'grpcio-reflection>=1.60' 'protobuf>=5.26')
    pip=(python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore)
    if ! "${pip[@]}" "${packages[@]}" 2>/dev/null; then
        "${pip[@]}" --break-system-packages "${packages[@]}"
    fi
fi

# A debug build of the workspace and its tests takes about 5 GiB under target/. When the disk
# fills during a link, the linker dies of SIGBUS ("ld terminated with signal 7 [Bus error]"),
# which names neither the disk nor the space: say it first.
target_dir=${CARGO_TARGET_DIR:-target}
mkdir -p "$target_dir"
free_kib=$(df -Pk "$target_dir" 2>/dev/null | awk 'NR == 2 {print $4}') || free_kib=
if [ -n "$free_kib" ] && [ "$free_kib" -lt $((6 * 1024 * 1024)) ]; then
    echo "scripts/test.sh: warning: only $((free_kib / 1024)) MiB free for $target_dir/" \
        "(a full test build needs about 5 GiB); a linker that runs out of disk dies with" \
        "SIGBUS (\"Bus error\"). Free space or set CARGO_TARGET_DIR." >&2
fi

# The real-systemd suite (tests/tests/systemd_units.rs) boots systemd in a container: it needs
# systemd-container and debootstrap (installed when missing) and a Debian root filesystem, built
# once per machine into /var/cache/proxy-systemd-box (about a minute). It needs root; without
# it, the suite says it was skipped.
if [ "$(id -u)" -eq 0 ]; then
    bash tests/systemd/box.sh prepare
else
    echo "scripts/test.sh: not root: the real-systemd suite will be skipped" >&2
fi

cargo build --workspace --bins --locked
cargo test --workspace --locked
