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

cargo build --workspace --bins --locked
cargo test --workspace --locked
