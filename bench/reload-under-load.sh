#!/usr/bin/env bash
# Reloads under load: N reloads that move a route between two origins while wrk (HTTP/1.1
# keep-alive clients) and h2load (HTTP/2 clients) send traffic through proxyd. Reports the errors
# both load generators saw, the reload round trip (`proxyctl reload`, p50 / p99), and whether
# every change was visible when `proxyctl reload` returned (a `respond` route carries the
# reload's number).
#
# Usage: bench/reload-under-load.sh [RELOADS] [H1_CLIENTS] [H2_CLIENTS]   (default 100 200 50)
# Installs wrk and h2load (Debian: wrk, nghttp2-client) when missing; builds in release mode.
# Loopback only; everything it starts stops with it.
set -euo pipefail
cd "$(dirname "$0")/.."

reloads=${1:-100}
h1_clients=${2:-200}
h2_clients=${3:-50}

need() {
    command -v "$1" >/dev/null 2>&1 && return
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y -qq "$2" >/dev/null 2>&1 || {
        $sudo apt-get update -qq >/dev/null
        $sudo apt-get install -y -qq "$2" >/dev/null
    }
}
need wrk wrk
need h2load nghttp2-client
need curl curl

cargo build --release --bins --locked -q
bin=target/release
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
origin_a=$(free_port)
origin_b=$(free_port)
listen=$(free_port)

config() { # $1: the reload's number, which picks the origin of /api/ and the body of /v
    local api=$origin_a
    if (( $1 % 2 == 1 )); then api=$origin_b; fi
    cat >"$work/proxy.toml" <<TOML
[logging]
level = "warn"
format = "text"

[[sites]]
hostnames = ["bench.test"]
upstreams = ["http://127.0.0.1:$origin_a"]

[[sites.routes]]
path_prefix = "/api/"
upstreams = ["http://127.0.0.1:$api"]

[[sites.routes]]
path_prefix = "/v"
respond = { status = 200, body = "$1" }

[control]
socket = "$work/control.sock"
state_dir = "$work/state"

[proxy]
shutdown_timeout = "2s"
max_connections_per_ip = 0

[[proxy.listeners]]
name = "http"
address = "127.0.0.1:$listen"
TOML
}

config 0
"$bin/demo-origin" "127.0.0.1:$origin_a" 2>/dev/null & pids+=($!)
"$bin/demo-origin" "127.0.0.1:$origin_b" 2>/dev/null & pids+=($!)
"$bin/controld" --config "$work/proxy.toml" 2>"$work/controld.log" & pids+=($!)
"$bin/proxyd" --control-socket "$work/control.sock" --node-id bench --log-format text \
    2>"$work/proxyd.log" & pids+=($!)
export PROXYCTL_SOCKET="$work/control.sock"
for _ in $(seq 1 100); do
    if curl -sf -H 'Host: bench.test' "http://127.0.0.1:$listen/v" >/dev/null; then break; fi
    sleep 0.1
done

# Long enough for every reload; both generators stop by themselves.
duration=$(( reloads / 5 + 20 ))
wrk -t1 -c"$h1_clients" -d"${duration}s" -H 'Host: bench.test' \
    "http://127.0.0.1:$listen/api/x" >"$work/wrk.txt" 2>&1 & load1=$!
h2load -c"$h2_clients" -m1 -D"$duration" -H ':authority: bench.test' \
    "http://127.0.0.1:$listen/api/y" >"$work/h2load.txt" 2>&1 & load2=$!
sleep 2

: >"$work/times.txt"
invisible=0
failed=0
for n in $(seq 1 "$reloads"); do
    config "$n"
    start=$(date +%s%N)
    if ! "$bin/proxyctl" reload >/dev/null 2>"$work/reload.err"; then
        failed=$((failed + 1))
    fi
    end=$(date +%s%N)
    echo $(( (end - start) / 1000 )) >>"$work/times.txt"
    seen=$(curl -s -H 'Host: bench.test' "http://127.0.0.1:$listen/v")
    if [ "$seen" != "$n" ]; then invisible=$((invisible + 1)); fi
done
wait "$load1" "$load2" || true

percentile() { sort -n "$work/times.txt" | awk -v p="$1" '{a[NR]=$1} END {i=int((NR-1)*p)+1; printf "%.1f", a[i]/1000}'; }
wrk_errors=$(grep -E 'Socket errors|Non-2xx' "$work/wrk.txt" || true)
h2_line=$(grep -E '^requests:' "$work/h2load.txt" || true)
echo "reloads: $reloads ($failed failed), changes not visible when reload returned: $invisible"
echo "reload round trip: p50 $(percentile 0.5) ms, p99 $(percentile 0.99) ms"
echo "wrk ($h1_clients HTTP/1.1 clients): $(grep -E 'requests in' "$work/wrk.txt" | xargs)"
echo "  errors: ${wrk_errors:-none}"
echo "h2load ($h2_clients HTTP/2 clients): $h2_line"
