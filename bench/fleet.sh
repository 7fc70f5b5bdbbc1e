#!/usr/bin/env bash
# Fleet reloads (issue 21): reload → applied on every node. `proxyctl reload` on one host of a
# fleet returns when every live node has applied the new version, so its round trip is the
# figure: p50 / p99 over RELOADS reloads, first with 3 real hosts (controld + proxyd each, one
# fleet on a three-member etcd), then with 50 simulated nodes more (bench/tools fleetsim: each
# its own etcd connection, lease, watch and record, as a controld). Also: every change visible on
# every real host when the reload returned, the bytes one version costs in etcd, and what one
# more node costs.
#
# Usage: bench/fleet.sh [RELOADS] [SIMULATED]   (default 100 50)
# ETCD_DIR=/dev/shm/x puts etcd's data there (a tmpfs: no fsync cost) to tell etcd's disk from
# the rest; by default it is in a temp directory on the machine's disk, as in production.
# Installs etcd (Debian: etcd-server) and curl when missing; builds in release mode.
# Loopback only; everything it starts stops with it.
set -euo pipefail
cd "$(dirname "$0")/.."

reloads=${1:-100}
simulated=${2:-50}

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
need etcd etcd-server
need curl curl

cargo build --release --bins --locked -q
cargo build --release --manifest-path bench/tools/Cargo.toml -q
bin=target/release
sim=bench/tools/target/release/fleetsim
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
if [ -n "${ETCD_DIR:-}" ]; then mkdir -p "$ETCD_DIR"; fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A three-member etcd.
declare -a cport pport
for i in 0 1 2; do cport[$i]=$(free_port); pport[$i]=$(free_port); done
initial="m0=http://127.0.0.1:${pport[0]},m1=http://127.0.0.1:${pport[1]},m2=http://127.0.0.1:${pport[2]}"
for i in 0 1 2; do
    etcd --name "m$i" --data-dir "${ETCD_DIR:-$work}/etcd$i" \
        --listen-client-urls "http://127.0.0.1:${cport[$i]}" --advertise-client-urls "http://127.0.0.1:${cport[$i]}" \
        --listen-peer-urls "http://127.0.0.1:${pport[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${pport[$i]}" \
        --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token bench \
        --logger zap --log-level error >/dev/null 2>&1 & pids+=($!)
done
endpoints="http://127.0.0.1:${cport[0]},http://127.0.0.1:${cport[1]},http://127.0.0.1:${cport[2]}"
toml_endpoints="[\"http://127.0.0.1:${cport[0]}\", \"http://127.0.0.1:${cport[1]}\", \"http://127.0.0.1:${cport[2]}\"]"
for _ in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:${cport[0]}/health" | grep -q true; then break; fi
    sleep 0.1
done

origin=$(free_port)
"$bin/demo-origin" "127.0.0.1:$origin" 2>/dev/null & pids+=($!)

declare -a listen
config() { # $1: host 1..3, $2: the body of /v
    local h=$1
    mkdir -p "$work/host$h"
    cat >"$work/host$h/proxy.toml" <<TOML
[logging]
level = "warn"
format = "text"

[[sites]]
hostnames = ["bench.test"]
upstreams = ["http://127.0.0.1:$origin"]

[[sites.routes]]
path_prefix = "/v"
respond = { status = 200, body = "$2" }

[control]
socket = "$work/host$h/control.sock"
state_dir = "$work/host$h/state"

[proxy]
shutdown_timeout = "2s"

[[proxy.listeners]]
name = "http"
address = "127.0.0.1:${listen[$h]}"

[cluster]
etcd = $toml_endpoints
name = "bench"
node = "web-$h"
TOML
}

for h in 1 2 3; do
    listen[$h]=$(free_port)
    config "$h" start
    "$bin/controld" --config "$work/host$h/proxy.toml" 2>"$work/host$h/controld.log" & pids+=($!)
    "$bin/proxyd" --control-socket "$work/host$h/control.sock" --node-id "proxyd-$h" --log-format text \
        2>"$work/host$h/proxyd.log" & pids+=($!)
done
for h in 1 2 3; do
    for _ in $(seq 1 100); do
        if curl -sf -H 'Host: bench.test' "http://127.0.0.1:${listen[$h]}/v" >/dev/null; then break; fi
        sleep 0.1
    done
done
# Every real node live in etcd before the first reload.
for _ in $(seq 1 100); do
    count=$("$sim" sizes --etcd "$endpoints" --fleet bench | awk '{print $8}')
    if [ "${count:-0}" -ge 3 ]; then break; fi
    sleep 0.1
done

run() { # $1: label; reloads on web-1, each waited for on every live node
    : >"$work/times.txt"
    failed=0 invisible=0
    for n in $(seq 1 "$reloads"); do
        config 1 "$1-$n"
        start=$(date +%s%N)
        if ! PROXYCTL_SOCKET="$work/host1/control.sock" "$bin/proxyctl" reload >/dev/null 2>"$work/reload.err"; then
            failed=$((failed + 1))
        fi
        end=$(date +%s%N)
        echo $(( (end - start) / 1000 )) >>"$work/times.txt"
        for h in 1 2 3; do
            seen=$(curl -s -H 'Host: bench.test' "http://127.0.0.1:${listen[$h]}/v")
            if [ "$seen" != "$1-$n" ]; then invisible=$((invisible + 1)); fi
        done
    done
}
percentile() { sort -n "$work/times.txt" | awk -v p="$1" '{a[NR]=$1} END {i=int((NR-1)*p)+1; printf "%.1f", a[i]/1000}'; }

run three
p50_3=$(percentile 0.5); p99_3=$(percentile 0.99)
echo "3 nodes: reload → applied on every node: p50 $p50_3 ms, p99 $p99_3 ms; $reloads reloads ($failed failed), not visible on a host when the reload returned: $invisible"

"$sim" --etcd "$endpoints" --fleet bench --nodes "$simulated" --ignore-stdin >"$work/sim.out" 2>"$work/sim.err" & sim_pid=$!
pids+=($sim_pid)
for _ in $(seq 1 300); do
    if grep -q '^ready' "$work/sim.out"; then break; fi
    sleep 0.1
done
if ! grep -q "^ready $simulated" "$work/sim.out"; then
    cat "$work/sim.err" >&2
    echo "fleetsim did not get $simulated nodes ready" >&2
    exit 1
fi
run more
p50_n=$(percentile 0.5); p99_n=$(percentile 0.99)
nodes=$((3 + simulated))
echo "$nodes nodes ($simulated simulated): reload → applied on every node: p50 $p50_n ms, p99 $p99_n ms; $reloads reloads ($failed failed), not visible on a host when the reload returned: $invisible"

read -r _ head _ version _ node_bytes _ node_count _ kept < <("$sim" sizes --etcd "$endpoints" --fleet bench)
per_node=$(( node_bytes / (node_count > 0 ? node_count : 1) ))
echo "bytes per version in etcd: head $head + version record $version + one node record per node ($per_node each, $node_count nodes: $node_bytes); $kept versions kept"
python3 - "$p50_3" "$p50_n" "$simulated" <<'PY'
import sys
a, b, n = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
print(f"one more node: {max(0.0, (b - a) / n) * 1000:.0f} µs of reload round trip (p50), one lease, one watch and one record per version")
PY
