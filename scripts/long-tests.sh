#!/usr/bin/env bash
# The long suites: every test marked `#[ignore = "long: ..."]`, which the default run
# (scripts/test.sh) skips. Installs the tools they need when missing, builds the binaries the
# end-to-end tests run as processes, then runs the ignored tests of the whole workspace.
# Extra arguments go to the test binaries, e.g. `scripts/long-tests.sh testssl`.
#
# A new long suite that needs a tool adds one `need_apt` or `need_pip` line below, with the
# suite that needs it.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=""

# need_apt COMMAND PACKAGE: installs Debian PACKAGE unless COMMAND is on the PATH.
need_apt() {
    if command -v "$1" >/dev/null 2>&1; then return; fi
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "$apt_updated" ] && ! as_root apt-get install -y -qq "$2" >/dev/null 2>&1; then
        as_root apt-get update -qq >/dev/null
        apt_updated=1
    fi
    command -v "$1" >/dev/null 2>&1 || as_root apt-get install -y -qq "$2" >/dev/null
}

# need_pip COMMAND PACKAGE: installs PyPI PACKAGE (a version spec is fine) unless COMMAND is on
# the PATH.
need_pip() {
    if command -v "$1" >/dev/null 2>&1; then return; fi
    python3 -m pip install --quiet "$2"
}

need_apt testssl testssl.sh # tests/tests/tls_scan.rs

cargo build --workspace --bins --locked
# --no-fail-fast: one failing long suite does not hide what the others find.
cargo test --workspace --locked --no-fail-fast -- --ignored "$@"
