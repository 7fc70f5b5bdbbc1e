#!/usr/bin/env bash
# The benchmark harness of issue 11: proxyd against nginx, HAProxy and Caddy in front of the same
# nginx origin. Installs what is missing (Debian), builds proxyd (production profile) and the load
# tools, runs every figure, and writes docs/benchmarks.md and docs/bench/*.svg.
#
# Usage: bench/run.sh [--quick]        (BIN_DIR=DIR bench/run.sh: proxyd from DIR, not built)
#   default  ~35-40 min on 2 cores: 5 rounds, 6 s runs, 100 reloads, 10,000 idle connections
#   --quick  ~9 min: 2 rounds, 3 s runs, 20 reloads, 2,000 idle connections (for development)
# Raw results: bench/results/<date>/results.jsonl (git-ignored). Loopback only, free ports;
# every process it starts stops with it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=0
case "${1:-}" in
    --quick) QUICK=1 ;;
    "") ;;
    *) echo "usage: bench/run.sh [--quick]" >&2; exit 2 ;;
esac
if [ "$QUICK" = 1 ]; then
    ROUNDS=2 SECS=3 RELOADS=20 IDLE_CONNS=2000 NEWCONN_N=3000 LAT_SECS=4
else
    ROUNDS=5 SECS=6 RELOADS=100 IDLE_CONNS=10000 NEWCONN_N=8000 LAT_SECS=8
fi
SIZES=(12 4k 64k)
PROXIES=(proxyd nginx haproxy caddy)
LOADGEN_CPU=0 # load generators
SERVER_CPU=1  # origin and the proxy under test

# shellcheck source=bench/lib/common.sh
source bench/lib/common.sh
# shellcheck source=bench/lib/servers.sh
source bench/lib/servers.sh

[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (load generator on CPU 0, servers on CPU 1)"
need nginx nginx
need haproxy haproxy
need caddy caddy
need wrk wrk
need h2load nghttp2-client
need curl curl
need openssl openssl
need taskset util-linux
need cargo cargo

# The production profile (release + fat LTO) is what deploy/install.sh builds. BIN_DIR=DIR
# measures binaries built elsewhere instead (a before/after comparison).
if [ -n "${BIN_DIR:-}" ]; then
    BIN=$(cd "$BIN_DIR" && pwd)
    log "using proxyd from $BIN; building the load tools"
else
    log "building proxyd (--profile production) and the load tools"
    cargo build --profile production --bins --locked -q
    BIN=$ROOT/target/production
fi
cargo build --release --manifest-path bench/tools/Cargo.toml -q
OPENLOOP=$ROOT/bench/tools/target/release/openloop
HOLDCONNS=$ROOT/bench/tools/target/release/holdconns

# 10,000 idle connections: as many descriptors as we may have.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
FD_LIMIT=$(ulimit -n)

RESULTS=$ROOT/bench/results/$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$RESULTS"
WORK=$(mktemp -d)
cleanup() {
    kill_all
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
STARTED=$(date +%s)

# ---- the machine, written next to the numbers ----
python3 - "$RESULTS/meta.json" "$QUICK" "$ROUNDS" "$SECS" "$RELOADS" "$IDLE_CONNS" "$NEWCONN_N" \
    "$LAT_SECS" "$FD_LIMIT" <<'PY'
import json, os, platform, subprocess, sys
def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip() \
            or subprocess.run(cmd, shell=True, capture_output=True, text=True).stderr.strip()
    except OSError:
        return "?"
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
out, quick, rounds, secs, reloads, idle, newconn, lat, fds = sys.argv[1:]
meta = {
    "date": sh("date -u '+%Y-%m-%d %H:%M UTC'"), "quick": quick == "1",
    "nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
    "mem": sh("free -m | awk '/^Mem:/ {print $2 \" MiB\"}'"),
    "loadavg_start": open("/proc/loadavg").read().split()[:3],
    "nginx": sh("nginx -v 2>&1").replace("nginx version: ", ""),
    "haproxy": sh("haproxy -v | head -1").split(" - ")[0],
    "caddy": sh("caddy version").split()[0] if sh("caddy version") else "?",
    "wrk": sh("wrk --version 2>&1 | head -1").split(" Copyright")[0],
    "h2load": sh("h2load --version"),
    "openssl": sh("openssl version"),
    # The product's commit: the last one outside bench/ and docs/ (the harness's own commits aside).
    "commit": sh("git log -1 --format=%h -- . ':!bench' ':!docs' ':!.gitignore'") + (" (dirty)" if sh("git status --porcelain --untracked-files=no -- . ':!bench' ':!docs' ':!.gitignore'") else ""),
    "commit_subject": sh("git log -1 --format=%s -- . ':!bench' ':!docs' ':!.gitignore'")[:100],
    "rounds": int(rounds), "seconds": int(secs), "reloads": int(reloads),
    "idle_conns": int(idle), "newconn_requests": int(newconn), "latency_seconds": int(lat),
    "fd_limit": int(fds),
}
json.dump(meta, open(out, "w"), indent=1)
PY

# ---- one ECDSA P-256 certificate for every TLS server ----
CERT=$WORK/cert.pem KEY=$WORK/key.pem CERT_PEM=$WORK/combined.pem
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$KEY" -out "$CERT" \
    -days 30 -subj /CN=bench.test -addext subjectAltName=DNS:bench.test,IP:127.0.0.1 2>/dev/null
cat "$CERT" "$KEY" >"$CERT_PEM"
chmod 644 "$KEY" "$CERT_PEM" # nginx reads as root, but keep it simple: a throwaway key

# rotate N ITEMS...: the items, starting at index N mod count (interleaving across rounds).
rotate() {
    local n=$1
    shift
    local items=("$@") i c=$#
    for ((i = 0; i < c; i++)); do echo "${items[$(((i + n) % c))]}"; done
}

# run_wrk OUT ARGS...: wrk on the load generator CPU; prints "rps requests errors".
run_wrk() {
    local out=$1
    shift
    on "$LOADGEN_CPU" wrk "$@" >"$out" 2>&1 || true
    awk '/requests in/ {req = $1} /Requests\/sec/ {rps = $2}
         /Socket errors/ {gsub(",", ""); err += $4 + $6 + $8 + $10} /Non-2xx/ {err += $NF}
         END {printf "%s %d %d\n", rps + 0, req + 0, err + 0}' "$out"
}
# h2load_parse FILE: "rps done errors"
h2load_parse() {
    awk '/^finished in/ {rps = $4} /^requests:/ {done = $8; err = $10 + $12 + $14} # $8: succeeded
         END {printf "%s %d %d\n", rps + 0, done + 0, err + 0}' "$1"
}

url_h1() { echo "http://127.0.0.1:${H1_PORT[$1]}/$2"; }

start_all() { # CPUS THREADS
    start_origin "$1"
    start_proxyd "$1" "$2"
    start_nginx "$1" "$2"
    start_haproxy "$1" "$2"
    start_caddy "$1" "$2"
    local t
    for t in direct "${PROXIES[@]}"; do # warm-up: pools, caches, first TLS handshakes
        on "$LOADGEN_CPU" wrk -t1 -c64 -d1s -H 'Host: bench.test' "$(url_h1 "$t" 12)" >/dev/null 2>&1 || true
    done
}
stop_all() {
    local t
    for t in "${PROXIES[@]}" direct; do stop_target "$t"; done
    kill_all
}

# ================= pinned: the load generator on CPU 0, origin + proxy on CPU 1 =================
log "placement: load generators on CPU $LOADGEN_CPU; origin and proxy on CPU $SERVER_CPU; one worker each"
start_all "$SERVER_CPU" 1

# ---- figures 1, 2, 9: HTTP/1.1 keep-alive throughput, CPU per request, upstream connections ----
for r in $(seq 1 "$ROUNDS"); do
    for size in "${SIZES[@]}"; do
        for t in $(rotate "$r" direct "${PROXIES[@]}"); do
            ticks0=$(cpu_ticks "${PID[$t]}")
            acc0=$(origin_accepts)
            read -r rps reqs errs < <(run_wrk "$WORK/wrk.txt" -t1 -c64 -d"${SECS}s" \
                -H 'Host: bench.test' "$(url_h1 "$t" "$size")")
            acc1=$(origin_accepts)
            ticks1=$(cpu_ticks "${PID[$t]}")
            emit fig=h1 mode=pinned round="$r" size="$size" target="$t" rps="$rps" requests="$reqs" \
                errors="$errs" cpu_ticks=$((ticks1 - ticks0)) hz="$(getconf CLK_TCK)" \
                upstream_conns=$((acc1 - acc0))
            log "h1 round $r size $size $t: $rps req/s, $errs errors, upstream conns $((acc1 - acc0))"
        done
    done
done

# ---- figure 3: added latency at a fixed rate (open loop) ----
# The rate: 40 % of the slowest peer's 12 B median from figure 1, at most 5000/s (a round 500).
RATE=$(python3 - "$RESULTS/results.jsonl" <<'PY'
import json, statistics, sys
by = {}
for l in open(sys.argv[1]):
    d = json.loads(l)
    if d.get("fig") == "h1" and d["size"] == "12" and d["target"] != "direct":
        by.setdefault(d["target"], []).append(d["rps"])
low = min(statistics.median(v) for v in by.values())
print(max(500, min(5000, int(low * 0.4) // 500 * 500)))
PY
)
log "open-loop rate: $RATE req/s"
# Each round runs every target in LAT_SECS / LAT_SEGMENT segments, the targets' segments
# interleaved, and the report merges a target's segments (their histograms): the direct run and
# the proxies' then share the same stretch of time, and what else the machine does in it.
LAT_SEGMENT=2
for r in $(seq 1 "$ROUNDS"); do
    for s in $(seq 1 $(((LAT_SECS + LAT_SEGMENT - 1) / LAT_SEGMENT))); do
        for t in $(rotate "$((r + s))" direct "${PROXIES[@]}"); do
            line=$(on "$LOADGEN_CPU" "$OPENLOOP" --url "$(url_h1 "$t" 12)" --host bench.test --rate "$RATE" \
                --warmup 0.5 --duration "$LAT_SEGMENT" --connections 16 2>"$WORK/openloop.err") \
                || { cat "$WORK/openloop.err" >&2; die "openloop failed against $t"; }
            python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(fig="latency", mode="pinned", round=int(sys.argv[2]), segment=int(sys.argv[3]), target=sys.argv[4], rate=int(sys.argv[5])); print(json.dumps(d))' \
                "$line" "$r" "$s" "$t" "$RATE" >>"$RESULTS/results.jsonl"
            log "latency round $r segment $s $t: $(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print({k: d[k] for k in ("p50_us", "p99_us", "errors")})' "$line")"
        done
    done
done

# ---- figure 4: HTTP/2 throughput, h2c and TLS (h2load -c16 -m16) ----
for r in $(seq 1 "$ROUNDS"); do
    for proto in h2c tls; do
        for t in $(rotate "$r" "${PROXIES[@]}"); do
            if [ "$proto" = tls ]; then u="https://127.0.0.1:${TLS_PORT[$t]}/12"; else u="http://127.0.0.1:${H2C_PORT[$t]}/12"; fi
            ticks0=$(cpu_ticks "${PID[$t]}")
            on "$LOADGEN_CPU" h2load -c16 -m16 -D "$SECS" --warm-up-time 1 -H ':authority: bench.test' "$u" \
                >"$WORK/h2.txt" 2>&1 || true
            ticks1=$(cpu_ticks "${PID[$t]}")
            read -r rps done_ errs < <(h2load_parse "$WORK/h2.txt")
            emit fig=h2 mode=pinned round="$r" proto="$proto" target="$t" rps="$rps" requests="$done_" \
                errors="$errs" cpu_ticks=$((ticks1 - ticks0)) hz="$(getconf CLK_TCK)"
            log "h2 round $r $proto $t: $rps req/s, $errs errors"
        done
    done
done

# ---- figure 5: TLS, new connections per second and keep-alive HTTPS ----
# New connections: h2load --h1 -c16 -n N with `Connection: close` on every request: the server
# closes after each response and h2load opens a new connection (TCP + TLS 1.3 handshake) for the
# next request. h2load resumes TLS sessions when the server offers tickets, as browsers do.

# tls_newconn FIG ROUND TARGET: the new-connection run, emitted as FIG; proxyd also says how many
# of the handshakes were full and how many resumed a session.
tls_newconn() {
    local fig=$1 r=$2 t=$3 full0 resumed0 full1 resumed1 ticks0 ticks1 rps done_ errs proto
    read -r full0 resumed0 < <(if [ "$t" = proxyd ]; then proxyd_handshakes; else echo 0 0; fi)
    ticks0=$(cpu_ticks "${PID[$t]}")
    on "$LOADGEN_CPU" h2load --h1 -c16 -n "$NEWCONN_N" -H ':authority: bench.test' -H 'Connection: close' \
        "https://127.0.0.1:${TLS_PORT[$t]}/12" >"$WORK/newconn.txt" 2>&1 || true
    ticks1=$(cpu_ticks "${PID[$t]}")
    read -r full1 resumed1 < <(if [ "$t" = proxyd ]; then proxyd_handshakes; else echo 0 0; fi)
    read -r rps done_ errs < <(h2load_parse "$WORK/newconn.txt")
    proto=$(awk -F': ' '/^TLS Protocol/ {print $2}' "$WORK/newconn.txt")
    emit fig="$fig" mode=pinned round="$r" target="$t" rps="$rps" requests="$done_" errors="$errs" \
        cpu_ticks=$((ticks1 - ticks0)) hz="$(getconf CLK_TCK)" tls="${proto:-?}" \
        full_handshakes=$((full1 - full0)) resumed_handshakes=$((resumed1 - resumed0))
    log "$fig round $r $t: $rps conn/s, $errs errors ($proto)"
}
for r in $(seq 1 "$ROUNDS"); do
    for t in $(rotate "$r" "${PROXIES[@]}"); do
        tls_newconn tls_new "$r" "$t"
        read -r rps reqs errs < <(run_wrk "$WORK/wrk.txt" -t1 -c64 -d"${SECS}s" -H 'Host: bench.test' \
            "https://127.0.0.1:${TLS_PORT[$t]}/12")
        emit fig=tls_ka mode=pinned round="$r" target="$t" rps="$rps" requests="$reqs" errors="$errs"
        log "https keep-alive round $r $t: $rps req/s"
    done
done

# Full handshakes: every proxy restarted with session resumption off (proxyd
# tls_session_resumption = false; nginx ssl_session_tickets off and ssl_session_cache off; HAProxy
# no-tls-tickets and tune.ssl.cachesize 0; Caddy session_tickets disabled), the same h2load run.
TLS_RESUMPTION=off
for t in "${PROXIES[@]}"; do
    stop_target "$t"
    "start_$t" "$SERVER_CPU" 1
    # Warm-up, as start_all does: the upstream pool and the first handshakes.
    on "$LOADGEN_CPU" wrk -t1 -c64 -d1s -H 'Host: bench.test' "https://127.0.0.1:${TLS_PORT[$t]}/12" \
        >/dev/null 2>&1 || true
done
for r in $(seq 1 "$ROUNDS"); do
    for t in $(rotate "$r" "${PROXIES[@]}"); do tls_newconn tls_full "$r" "$t"; done
done
TLS_RESUMPTION=on

# ---- figure 6: RSS per idle keep-alive client connection ----
SETTLE=6 # > proxyd's upstream_idle_timeout (4 s): idle upstream connections beyond the pool closed
for t in "${PROXIES[@]}"; do
    for tls in plain tls h2c; do
        # A fresh process for each measurement: memory an allocator kept from an earlier one would
        # otherwise be reused and hide part of the cost. Warm up (pools, first handshake) first.
        stop_target "$t"
        "start_$t" "$SERVER_CPU" 1
        on "$LOADGEN_CPU" wrk -t1 -c64 -d1s -H 'Host: bench.test' "$(url_h1 "$t" 12)" >/dev/null 2>&1 || true
        on "$LOADGEN_CPU" wrk -t1 -c64 -d1s -H 'Host: bench.test' "https://127.0.0.1:${TLS_PORT[$t]}/12" \
            >/dev/null 2>&1 || true
        n=$IDLE_CONNS
        if [ "$t" = haproxy ] && [ "$n" -gt $((HAPROXY_MAXCONN - 100)) ]; then n=$((HAPROXY_MAXCONN - 100)); fi
        args=(--addr "127.0.0.1:${H1_PORT[$t]}" --count "$n" --host bench.test --path /12 --ignore-stdin)
        if [ "$tls" = tls ]; then args=(--addr "127.0.0.1:${TLS_PORT[$t]}" --count "$n" --host bench.test
            --path /12 --tls --sni bench.test --ignore-stdin); fi
        # HTTP/2 with prior knowledge, one GET per connection; holdconns answers the PINGs.
        if [ "$tls" = h2c ]; then args=(--addr "127.0.0.1:${H2C_PORT[$t]}" --count "$n" --host bench.test
            --path /12 --h2 --ignore-stdin); fi
        sleep "$SETTLE"
        before=$(rss_kib "${PID[$t]}")
        : >"$WORK/hold.out" # before the spawn: the wait loop below may read it first
        spawn "$LOADGEN_CPU" "$HOLDCONNS" "${args[@]}" >"$WORK/hold.out" 2>"$WORK/hold.err" &
        hold=$!
        track "$hold"
        ready=""
        for _ in $(seq 1 1200); do
            ready=$(awk '/^ready/ {print $2}' "$WORK/hold.out")
            if [ -n "$ready" ] || ! kill -0 "$hold" 2>/dev/null; then break; fi
            sleep 0.1
        done
        sleep "$SETTLE"
        after=$(rss_kib "${PID[$t]}")
        stop_pids "$hold"
        if [ -z "$ready" ]; then
            tail -n 5 "$WORK/hold.err" >&2
            log "holdconns did not get ready against $t ($tls)"
            ready=0
        fi
        emit fig=rss mode=pinned target="$t" tls="$tls" conns="$ready" wanted="$n" rss_before_kib="$before" \
            rss_after_kib="$after"
        log "rss $t $tls: $ready conns, $before -> $after KiB"
    done
done

# ---- figures 7 and 8: reload -> visible, idle and under load; errors under load ----
# The probe (and the reload command it starts) runs on the load generator CPU at nice -10 so
# that wrk and h2load, which saturate that CPU, do not delay it.
PACE=0.15
for t in proxyd nginx caddy; do
    reload_setup "$t" "$RELOADS"
    for load in idle load; do
        if [ "$load" = load ]; then
            # Both generators run in 5 s pieces until the probe is done, so that the load covers
            # every reload however long the reloads take.
            rm -f "$WORK/stop" "$WORK"/rl-wrk.* "$WORK"/rl-h2.*
            (i=0; while [ ! -e "$WORK/stop" ]; do i=$((i + 1))
                on "$LOADGEN_CPU" wrk -t1 -c32 -d5s -H 'Host: bench.test' "$(url_h1 "$t" 12)" \
                    >"$WORK/rl-wrk.$i" 2>&1 || true; done) &
            w=$!
            (i=0; while [ ! -e "$WORK/stop" ]; do i=$((i + 1))
                on "$LOADGEN_CPU" h2load -c8 -m8 -D 5 -H ':authority: bench.test' \
                    "http://127.0.0.1:${H2C_PORT[$t]}/12" >"$WORK/rl-h2.$i" 2>&1 || true; done) &
            h=$!
            track "$w"
            track "$h"
            sleep 1
        fi
        t0=$(date +%s)
        on "$LOADGEN_CPU" nice -n -10 python3 bench/lib/reloadprobe.py --port "${H1_PORT[$t]}" --count "$RELOADS" \
            --prepare "$(reload_prepare_cmd "$t")" --reload "$(reload_cmd "$t")" --pace "$PACE" \
            >"$WORK/probe.jsonl" 2>"$WORK/probe.err" \
            || { cat "$WORK/probe.err" >&2; die "reload probe failed on $t"; }
        probe_secs=$(($(date +%s) - t0))
        while read -r line; do
            python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(fig="reload", mode="pinned", target=sys.argv[2], load=sys.argv[3]); print(json.dumps(d))' \
                "$line" "$t" "$load" >>"$RESULTS/results.jsonl"
        done <"$WORK/probe.jsonl"
        if [ "$load" = load ]; then
            touch "$WORK/stop"
            wait "$w" || true
            wait "$h" || true
            duration=$(($(date +%s) - t0 + 1))
            read -r reqs1 errs1 < <(cat "$WORK"/rl-wrk.* | awk '/requests in/ {req += $1}
                /Socket errors/ {gsub(",", ""); err += $4 + $6 + $8 + $10} /Non-2xx/ {err += $NF}
                END {printf "%d %d\n", req, err}')
            read -r reqs2 errs2 < <(cat "$WORK"/rl-h2.* | awk '/^requests:/ {req += $8; err += $10 + $12 + $14}
                END {printf "%d %d\n", req, err}')
            emit fig=reload_errors mode=pinned target="$t" reloads="$RELOADS" probe_seconds="$probe_secs" \
                load_seconds="$duration" h1_requests="$reqs1" h1_errors="$errs1" h2_requests="$reqs2" \
                h2_errors="$errs2"
            log "reloads under load $t: h1 $errs1 errors / $reqs1, h2 $errs2 errors / $reqs2 (probe ${probe_secs}s of ${duration}s load)"
        fi
    done
done
stop_all

# ================= whole machine: no pinning, two workers each, load generator alongside =================
log "whole machine: no pinning, 2 workers / threads each"
start_all "" 2
for r in $(seq 1 "$ROUNDS"); do
    for t in $(rotate "$r" direct "${PROXIES[@]}"); do
        ticks0=$(cpu_ticks "${PID[$t]}")
        read -r rps reqs errs < <(LOADGEN_CPU="" run_wrk "$WORK/wrk.txt" -t2 -c64 -d"${SECS}s" \
            -H 'Host: bench.test' "$(url_h1 "$t" 12)")
        ticks1=$(cpu_ticks "${PID[$t]}")
        emit fig=h1 mode=whole round="$r" size=12 target="$t" rps="$rps" requests="$reqs" errors="$errs" \
            cpu_ticks=$((ticks1 - ticks0)) hz="$(getconf CLK_TCK)"
        log "whole machine round $r $t: $rps req/s"
    done
done
stop_all

python3 - "$RESULTS/meta.json" "$STARTED" <<'PY'
import json, sys, time
m = json.load(open(sys.argv[1]))
m["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
m["run_seconds"] = int(time.time()) - int(sys.argv[2])
json.dump(m, open(sys.argv[1], "w"), indent=1)
PY
python3 bench/lib/report.py "$RESULTS" docs/benchmarks.md docs/bench
log "done in $(($(date +%s) - STARTED)) s: docs/benchmarks.md, docs/bench/*.svg (raw: $RESULTS)"
