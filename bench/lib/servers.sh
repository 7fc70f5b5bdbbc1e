# shellcheck shell=bash
# Start / stop / reload the origin and the four proxies. Sourced by bench/run.sh after common.sh.
# Needs: $WORK, $BIN (proxyd's binaries: target/production), $CERT and $KEY (ECDSA P-256, CN/SAN bench.test),
# $CERT_PEM (cert + key in one file, for HAProxy).
#
# Each start_X CPUS THREADS sets, for target X:
#   H1_PORT[X]   plain HTTP/1.1 listener      TLS_PORT[X]  TLS listener (ALPN h2 + http/1.1)
#   H2C_PORT[X]  HTTP/2 cleartext (prior knowledge) listener
#   PID[X]       the process whose tree (children included) is measured
#   LOGF[X]      its log file
# and can be reloaded with reload_prepare X N (untimed: writes the config that adds route /rN)
# and reload_cmd X N (the timed command, printed as a shell command line).

declare -A H1_PORT TLS_PORT H2C_PORT PID LOGF DIR
# TLS session resumption on every proxy ("on": each one's defaults; "off": none of them issues
# tickets or keeps a session cache, so every handshake is a full one). Read when a proxy starts.
TLS_RESUMPTION=on
# proxyd's admin listener (its /metrics: full and resumed TLS handshakes, figure 5).
PROXYD_ADMIN_PORT=0

ORIGIN_PORT=""

# The origin: nginx, one worker, static bodies /12, /4k, /64k, stub_status at /status.
start_origin() {
    local cpus=$1 d="$WORK/origin"
    mkdir -p "$d/www" "$d/tmp"
    chmod 755 "$WORK" "$d" "$d/www" # nginx's worker runs as nobody
    printf 'hello world\n' >"$d/www/12" # 12 bytes
    head -c 4096 /dev/zero | tr '\0' 'a' >"$d/www/4k"
    head -c 65536 /dev/zero | tr '\0' 'b' >"$d/www/64k"
    ORIGIN_PORT=$(free_port)
    cat >"$d/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile $FD_LIMIT;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections $((FD_LIMIT - 100)); }
http {
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    server {
        listen 127.0.0.1:$ORIGIN_PORT backlog=4096;
        root $d/www;
        location = /status { stub_status; }
    }
}
EOF
    spawn "$cpus" nginx -p "$d" -c "$d/nginx.conf" -g 'daemon off;' 2>"$d/stderr.log" &
    PID[direct]=$!
    track "${PID[direct]}"
    LOGF[direct]="$d/error.log"
    DIR[direct]=$d
    H1_PORT[direct]=$ORIGIN_PORT
    wait_http origin "$d/stderr.log" "http://127.0.0.1:$ORIGIN_PORT/12"
}

# ---- proxyd (controld + proxyd) ----
proxyd_config() { # $1: route number (0: none)
    local d=${DIR[proxyd]}
    cat <<EOF
default_tls_site = "bench.test"

[logging]
level = "warn"
format = "text"

[[sites]]
hostnames = ["bench.test"]
upstreams = ["http://127.0.0.1:$ORIGIN_PORT"]
tls = { cert_file = "$CERT", key_file = "$KEY" }
https_redirect = false
EOF
    if [ "$1" -gt 0 ]; then
        cat <<EOF

[[sites.routes]]
path_prefix = "/r$1"
respond = { status = 200, body = "r$1" }
EOF
    fi
    cat <<EOF

[control]
socket = "$d/control.sock"
state_dir = "$d/state"

[proxy]
shutdown_timeout = "1s"
admin_address = "127.0.0.1:$PROXYD_ADMIN_PORT"
tls_session_resumption = $([ "$TLS_RESUMPTION" = on ] && echo true || echo false)
max_connections = 50000
max_connections_per_ip = 0
request_header_timeout = "300s"

[[proxy.listeners]]
name = "http"
address = "127.0.0.1:${H1_PORT[proxyd]}"

[[proxy.listeners]]
name = "https"
address = "127.0.0.1:${TLS_PORT[proxyd]}"
tls = true
EOF
}

start_proxyd() {
    local cpus=$1 threads=$2 d="$WORK/proxyd"
    mkdir -p "$d"
    DIR[proxyd]=$d
    H1_PORT[proxyd]=$(free_port)
    TLS_PORT[proxyd]=$(free_port)
    PROXYD_ADMIN_PORT=$(free_port)
    H2C_PORT[proxyd]=${H1_PORT[proxyd]}
    proxyd_config 0 >"$d/proxy.toml"
    spawn "$cpus" "$BIN/controld" --config "$d/proxy.toml" 2>"$d/controld.log" &
    CONTROLD_PID=$!
    track "$CONTROLD_PID"
    spawn "$cpus" "$BIN/proxyd" --control-socket "$d/control.sock" --node-id bench \
        --admin-socket '' --log-format text --worker-threads "$threads" 2>"$d/proxyd.log" &
    PID[proxyd]=$!
    track "${PID[proxyd]}"
    LOGF[proxyd]="$d/proxyd.log"
    wait_http proxyd "$d/proxyd.log" "http://127.0.0.1:${H1_PORT[proxyd]}/12"
}

# ---- nginx as a proxy ----
nginx_proxy_config() { # $1: route number, $2: workers
    local d=${DIR[nginx]} route="" sessions=""
    if [ "$1" -gt 0 ]; then route="location = /r$1 { return 200 \"r$1\"; }"; fi
    if [ "$TLS_RESUMPTION" = off ]; then sessions="ssl_session_tickets off; ssl_session_cache off;"; fi
    cat <<EOF
worker_processes $2;
worker_rlimit_nofile $FD_LIMIT;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections $((FD_LIMIT - 100)); }
http {
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:${H1_PORT[nginx]} backlog=4096;
        listen 127.0.0.1:${TLS_PORT[nginx]} ssl http2 backlog=4096;
        listen 127.0.0.1:${H2C_PORT[nginx]} http2 backlog=4096;
        server_name bench.test;
        ssl_certificate $CERT;
        ssl_certificate_key $KEY;
        ssl_protocols TLSv1.2 TLSv1.3;
        $sessions
        $route
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

start_nginx() {
    local cpus=$1 workers=$2 d="$WORK/nginx"
    mkdir -p "$d/tmp"
    DIR[nginx]=$d
    NGINX_WORKERS=$workers
    H1_PORT[nginx]=$(free_port)
    TLS_PORT[nginx]=$(free_port)
    H2C_PORT[nginx]=$(free_port)
    nginx_proxy_config 0 "$workers" >"$d/nginx.conf"
    spawn "$cpus" nginx -p "$d" -c "$d/nginx.conf" -g 'daemon off;' 2>"$d/stderr.log" &
    PID[nginx]=$!
    track "${PID[nginx]}"
    LOGF[nginx]="$d/error.log"
    wait_http nginx "$d/stderr.log" "http://127.0.0.1:${H1_PORT[nginx]}/12"
}

# ---- HAProxy ----
start_haproxy() {
    local cpus=$1 threads=$2 d="$WORK/haproxy" cache="" tickets=""
    if [ "$TLS_RESUMPTION" = off ]; then cache="tune.ssl.cachesize 0"; tickets="no-tls-tickets"; fi
    # HAProxy wants two descriptors per connection (client + server side) under ulimit-n.
    HAPROXY_MAXCONN=$(( (FD_LIMIT - 200) / 2 ))
    mkdir -p "$d"
    DIR[haproxy]=$d
    H1_PORT[haproxy]=$(free_port)
    TLS_PORT[haproxy]=$(free_port)
    H2C_PORT[haproxy]=$(free_port)
    cat >"$d/haproxy.cfg" <<EOF
global
    nbthread $threads
    maxconn $HAPROXY_MAXCONN
    ulimit-n $FD_LIMIT
    ssl-default-bind-options ssl-min-ver TLSv1.2
    $cache

defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    option http-keep-alive
    http-reuse always

frontend fe
    bind 127.0.0.1:${H1_PORT[haproxy]}
    bind 127.0.0.1:${TLS_PORT[haproxy]} ssl crt $CERT_PEM alpn h2,http/1.1 $tickets
    bind 127.0.0.1:${H2C_PORT[haproxy]} proto h2
    default_backend origin

backend origin
    server o1 127.0.0.1:$ORIGIN_PORT
EOF
    spawn "$cpus" haproxy -f "$d/haproxy.cfg" -db >"$d/haproxy.log" 2>&1 &
    PID[haproxy]=$!
    track "${PID[haproxy]}"
    LOGF[haproxy]="$d/haproxy.log"
    wait_http haproxy "$d/haproxy.log" "http://127.0.0.1:${H1_PORT[haproxy]}/12"
}

# ---- Caddy ----
caddy_config() { # $1: route number
    local route=""
    if [ "$1" -gt 0 ]; then route="respond /r$1 \"r$1\" 200"; fi
    cat <<EOF
{
    admin 127.0.0.1:$CADDY_ADMIN
    auto_https disable_redirects
    default_sni bench.test
    log {
        level ERROR
    }
    servers {
        protocols h1 h2 h2c
    }
}

http://bench.test:${H1_PORT[caddy]} {
    bind 127.0.0.1
    $route
    reverse_proxy 127.0.0.1:$ORIGIN_PORT
}

https://bench.test:${TLS_PORT[caddy]}, https://127.0.0.1:${TLS_PORT[caddy]} {
    bind 127.0.0.1
    tls $CERT $KEY
    $route
    reverse_proxy 127.0.0.1:$ORIGIN_PORT
}
EOF
}

start_caddy() {
    local cpus=$1 procs=$2 d="$WORK/caddy"
    mkdir -p "$d/home"
    DIR[caddy]=$d
    H1_PORT[caddy]=$(free_port)
    TLS_PORT[caddy]=$(free_port)
    H2C_PORT[caddy]=${H1_PORT[caddy]}
    CADDY_ADMIN=$(free_port)
    caddy_config 0 >"$d/Caddyfile"
    local config=(--config "$d/Caddyfile" --adapter caddyfile)
    if [ "$TLS_RESUMPTION" = off ]; then
        # The Caddyfile has no session-ticket option: adapt it to JSON and turn tickets off there
        # (Go's TLS server resumes by tickets only).
        HOME="$d/home" caddy adapt "${config[@]}" >"$d/caddy.json" 2>"$d/adapt.log" \
            || { cat "$d/adapt.log" >&2; die "caddy adapt failed"; }
        python3 -c 'import json, sys
c = json.load(open(sys.argv[1]))
c.setdefault("apps", {}).setdefault("tls", {})["session_tickets"] = {"disabled": True}
json.dump(c, open(sys.argv[1], "w"))' "$d/caddy.json"
        config=(--config "$d/caddy.json")
    fi
    # HOME / XDG dirs: Caddy's storage and autosave stay in the temp dir.
    HOME="$d/home" XDG_CONFIG_HOME="$d/home" XDG_DATA_HOME="$d/home" GOMAXPROCS=$procs \
        spawn "$cpus" caddy run "${config[@]}" >"$d/caddy.log" 2>&1 &
    PID[caddy]=$!
    track "${PID[caddy]}"
    LOGF[caddy]="$d/caddy.log"
    wait_http caddy "$d/caddy.log" "http://127.0.0.1:${H1_PORT[caddy]}/12"
}

# stop_target X: SIGTERM (SIGQUIT for nginx, a graceful stop) and wait.
stop_target() {
    local t=$1
    [ -n "${PID[$t]:-}" ] || return 0
    stop_pids "${PID[$t]}"
    if [ "$t" = proxyd ]; then stop_pids "$CONTROLD_PID"; fi
    PID[$t]=""
}

# ---- reloads: route /rN appears ----
# reload_setup X COUNT: write every config up front (untimed).
reload_setup() {
    local t=$1 count=$2 n d=${DIR[$1]}
    mkdir -p "$d/reload"
    case $t in
        proxyd)
            for n in $(seq 1 "$count"); do proxyd_config "$n" >"$d/reload/$n"; done ;;
        nginx)
            for n in $(seq 1 "$count"); do nginx_proxy_config "$n" "$NGINX_WORKERS" >"$d/reload/$n"; done ;;
        caddy)
            # Adapt once, with a marker, to JSON; POST /load of the JSON is Caddy's reload.
            caddy_config 999999 >"$d/reload/Caddyfile"
            HOME="$d/home" caddy adapt --config "$d/reload/Caddyfile" --adapter caddyfile \
                >"$d/reload/template.json" 2>"$d/reload/adapt.log" \
                || { cat "$d/reload/adapt.log" >&2; die "caddy adapt failed"; }
            for n in $(seq 1 "$count"); do
                sed "s/r999999/r$n/g" "$d/reload/template.json" >"$d/reload/$n"
            done ;;
        *) die "no reload for $t" ;;
    esac
}
# Prints the untimed prepare command and the timed reload command; {n} is the reload's number.
reload_prepare_cmd() {
    local d=${DIR[$1]}
    case $1 in
        proxyd) echo "cp $d/reload/{n} $d/proxy.toml" ;;
        nginx) echo "cp $d/reload/{n} $d/nginx.conf" ;;
        caddy) echo "true" ;;
    esac
}
reload_cmd() {
    local d=${DIR[$1]}
    case $1 in
        proxyd) echo "$BIN/proxyctl --socket $d/control.sock reload" ;;
        nginx) echo "nginx -p $d -c $d/nginx.conf -s reload" ;;
        caddy) echo "curl -sf -X POST -H 'Content-Type: application/json' --data-binary @$d/reload/{n} http://127.0.0.1:$CADDY_ADMIN/load" ;;
    esac
}

# proxyd's TLS handshakes so far, "FULL RESUMED" (proxy_tls_handshakes_total); "0 0" when its
# metrics cannot be read.
proxyd_handshakes() {
    python3 - "$PROXYD_ADMIN_PORT" <<'PY'
import sys, urllib.request
full = resumed = 0
try:
    text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=2).read().decode()
    for line in text.splitlines():
        if line.startswith('proxy_tls_handshakes_total{kind="full"}'):
            full = int(float(line.split()[-1]))
        elif line.startswith('proxy_tls_handshakes_total{kind="resumed"}'):
            resumed = int(float(line.split()[-1]))
except Exception:
    pass
print(full, resumed)
PY
}
