# shellcheck shell=bash
# Helpers shared by bench/run.sh: tools, ports, process bookkeeping, /proc readings.
# Sourced, never run. Expects `set -euo pipefail` and $WORK (a temp dir) from the caller.

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# need COMMAND DEBIAN_PACKAGE: install the package when the command is missing (sudo unless root).
need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    log "installing $2 (for $1)"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y -qq "$2" >/dev/null 2>&1 || {
        $sudo apt-get update -qq >/dev/null
        $sudo apt-get install -y -qq "$2" >/dev/null
    }
    command -v "$1" >/dev/null 2>&1 || die "$1 still missing after installing $2"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Every process we start goes in PIDS (killed on exit, newest first).
PIDS=()
track() { PIDS+=("$1"); }
kill_all() {
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill "${PIDS[$i]}" 2>/dev/null || true
    done
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        wait "${PIDS[$i]}" 2>/dev/null || true
    done
    PIDS=()
}
# stop PID...: SIGTERM, wait up to 5 s, then SIGKILL.
stop_pids() {
    local pid n
    for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for n in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        : "$n"
        untrack "$pid"
    done
}
# untrack PID: forget a stopped process, so that kill_all never signals a reused pid.
untrack() {
    local i
    for i in "${!PIDS[@]}"; do
        if [ "${PIDS[$i]}" = "$1" ]; then unset 'PIDS[i]'; fi
    done
    PIDS=("${PIDS[@]}")
}

# on CPUS CMD...: run CMD under taskset when CPUS is non-empty ("" = whole machine).
on() {
    local cpus=$1
    shift
    if [ -n "$cpus" ]; then taskset -c "$cpus" "$@"; else "$@"; fi
}
# spawn CPUS CMD... &: as `on`, but replaces the (background) subshell, so that $! is the
# server's own pid. Only ever call it with `&`.
spawn() {
    local cpus=$1
    shift
    if [ -n "$cpus" ]; then exec taskset -c "$cpus" "$@"; else exec "$@"; fi
}

# wait_http NAME LOGFILE URL [HOST]: until URL answers anything (any status); else print the log.
wait_http() {
    local name=$1 logf=$2 url=$3 host=${4:-bench.test} n
    for n in $(seq 1 150); do
        if curl -s -k -o /dev/null --max-time 1 -H "Host: $host" "$url"; then return 0; fi
        sleep 0.1
    done
    log "$name did not answer on $url within 15 s; its log ($logf):"
    tail -n 40 "$logf" >&2 || true
    : "$n"
    exit 1
}

# The process and its children (nginx master + workers).
proc_tree() {
    local pid=$1
    echo "$pid"
    pgrep -P "$pid" || true
}
# CPU ticks (utime + stime, /proc/PID/stat fields 14 and 15) of a process tree.
cpu_ticks() {
    local total=0 p t
    for p in $(proc_tree "$1"); do
        t=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}') || t=0
        total=$((total + ${t:-0}))
    done
    echo "$total"
}
# Resident set size in KiB (VmRSS) of a process tree.
rss_kib() {
    local total=0 p r
    for p in $(proc_tree "$1"); do
        r=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null) || r=0
        total=$((total + ${r:-0}))
    done
    echo "$total"
}

# Origin's accepted-connection counter (nginx stub_status "accepts"), minus the connection
# this read itself opened.
origin_accepts() {
    local a
    a=$(curl -s --max-time 2 "http://127.0.0.1:$ORIGIN_PORT/status" | awk 'NR == 3 {print $1}')
    echo $((a - 1))
}

# emit KEY=VALUE...: append one JSON object to the results file (values: numbers stay numbers).
emit() {
    python3 - "$@" >>"$RESULTS/results.jsonl" <<'PY'
import json, sys
d = {}
for kv in sys.argv[1:]:
    k, _, v = kv.partition("=")
    if k in ("size", "target", "proto", "tls", "mode", "load"):
        d[k] = v
        continue
    try:
        d[k] = int(v)
    except ValueError:
        try:
            d[k] = float(v)
        except ValueError:
            d[k] = v
print(json.dumps(d))
PY
}
