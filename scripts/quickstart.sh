#!/usr/bin/env bash
# Builds the workspace, then runs a demo origin, controld and proxyd with examples/quickstart.toml
# until Ctrl-C. Then: curl http://localhost:8080/
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins
mkdir -p .quickstart
bin=target/debug
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$bin/demo-origin" 127.0.0.1:8081 & pids+=($!)
"$bin/controld" --config examples/quickstart.toml & pids+=($!)
"$bin/proxyd" --control-socket .quickstart/control.sock --admin-socket .quickstart/proxyd.sock \
    --state-dir .quickstart/proxyd --node-id quickstart --log-format text & pids+=($!)

export PROXYCTL_SOCKET=.quickstart/control.sock
export PROXYCTL_DATA_PLANE_SOCKET=.quickstart/proxyd.sock
for _ in $(seq 1 100); do
    if "$bin/proxyctl" status >/dev/null 2>&1; then break; fi
    sleep 0.1
done
"$bin/proxyctl" status || { echo "quickstart: the daemons did not come up; see the log above" >&2; exit 1; }
cat <<MSG

Ready. In another terminal:
    curl http://localhost:8080/
    export PROXYCTL_SOCKET=$PWD/.quickstart/control.sock PROXYCTL_DATA_PLANE_SOCKET=$PWD/.quickstart/proxyd.sock
    $bin/proxyctl status
Edit examples/quickstart.toml, then: $bin/proxyctl reload
Ctrl-C stops everything.
MSG
wait
