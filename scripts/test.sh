#!/usr/bin/env bash
# The test command (README, .ci/run): builds the binaries the end-to-end tests run as processes,
# then runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins --locked
cargo test --workspace --locked
