#!/usr/bin/env bash
# HTTP/1.1 keep-alive throughput through proxyd: wrk -t1 -c64 against one demo origin, a few
# rounds. Prints requests/s per round and the median. For a before/after comparison run it with
# each build's binary directory, e.g. `bench/throughput.sh ../old/target/release`.
#
# Usage: bench/throughput.sh [BIN_DIR] [ROUNDS] [SECONDS]   (default target/release 3 8)
# Not the full harness of issue 11 (no peers, no placement); loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${1:-target/release}
rounds=${2:-3}
seconds=${3:-8}
command -v wrk >/dev/null || { echo "wrk is needed (Debian: wrk)" >&2; exit 2; }
if [ "$bin" = target/release ]; then cargo build --release --bins --locked -q; fi

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
origin=$(free_port)
listen=$(free_port)
cat >"$work/proxy.toml" <<TOML
[logging]
level = "warn"
format = "text"

[[sites]]
hostnames = ["bench.test"]
upstreams = ["http://127.0.0.1:$origin"]

[control]
socket = "$work/control.sock"
state_dir = "$work/state"

[[proxy.listeners]]
name = "http"
address = "127.0.0.1:$listen"
TOML
"$bin/demo-origin" "127.0.0.1:$origin" 2>/dev/null & pids+=($!)
"$bin/controld" --config "$work/proxy.toml" 2>"$work/controld.log" & pids+=($!)
"$bin/proxyd" --control-socket "$work/control.sock" --log-format text 2>"$work/proxyd.log" & pids+=($!)
for _ in $(seq 1 100); do
    if curl -sf -H 'Host: bench.test' "http://127.0.0.1:$listen/" >/dev/null; then break; fi
    sleep 0.1
done
results=()
for r in $(seq 1 "$rounds"); do
    rps=$(wrk -t1 -c64 -d"${seconds}s" -H 'Host: bench.test' "http://127.0.0.1:$listen/" \
        | awk '/Requests\/sec/ {print $2}')
    echo "round $r: $rps requests/s"
    results+=("$rps")
done
printf '%s\n' "${results[@]}" | sort -n | awk '{a[NR]=$1} END {print "median: " a[int((NR+1)/2)] " requests/s"}'
