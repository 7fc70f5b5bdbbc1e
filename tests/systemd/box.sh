#!/usr/bin/env bash
# box.sh: a real systemd, as PID 1 of a systemd-nspawn container, for the unit tests of deploy/
# (tests/tests/systemd_units.rs). The machines we test on have no systemd as PID 1; this boots
# Debian's own (the host's release, so that host-built binaries run inside) and runs commands in
# it, so that deploy/*.service and *.socket meet the systemd operators run.
#
#   box.sh prepare            install systemd-container and debootstrap when missing and build
#                             the cached root filesystem (once per machine: about a minute)
#   box.sh up NAME [BIND...]  boot a container from the cached rootfs (an overlay: nothing it
#                             writes outlives `down`), BIND being SRC:DST read-only bind mounts;
#                             returns when systemd is running (about a second)
#   box.sh run NAME CMD...    run CMD in it as root, cwd /, with a clean environment; CMD's status
#   box.sh down NAME          halt it, kill what is left, unmount, forget
#
# The container shares the host's network namespace: 127.0.0.1 inside is the host's loopback,
# so the test reaches the units' listeners and the units reach the test's upstreams. It gets a
# pure cgroup2 hierarchy (as a Debian 12 host has) in a cgroup of its own, so that `down` can
# kill everything it ran. Needs root.
#
# Environment: PROXY_BOX_CACHE (default /var/cache/proxy-systemd-box): the cached rootfs and
# the running boxes' overlays; PROXY_BOX_MIRROR: the Debian mirror (default: the host's).
set -euo pipefail

CACHE=${PROXY_BOX_CACHE:-/var/cache/proxy-systemd-box}
SUITE=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
PACKAGES=systemd,systemd-sysv,dbus,procps,iproute2
# A new package list or release is a new rootfs.
BASE=$CACHE/rootfs-$SUITE-$(printf '%s' "$PACKAGES" | sha256sum | cut -c1-8)
IN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { printf 'box.sh: %s\n' "$*" >&2; }
die() { say "error: $1"; exit "${2:-1}"; }

[[ $(id -u) == 0 ]] || die "must run as root" 77

# The cgroup hierarchies a box is confined in: cgroup2 first (it has cgroup.kill), then the
# name=systemd one of a hybrid host.
cg_roots() {
    if [[ $(stat -fc %T /sys/fs/cgroup) == cgroup2fs ]]; then
        echo /sys/fs/cgroup
        return
    fi
    if [[ -d /sys/fs/cgroup/unified && $(stat -fc %T /sys/fs/cgroup/unified) == cgroup2fs ]]; then
        echo /sys/fs/cgroup/unified
    fi
    [[ -d /sys/fs/cgroup/systemd ]] && echo /sys/fs/cgroup/systemd
    return 0
}

pids_of() {
    local r
    for r in $(cg_roots); do
        [[ -d $r/proxy-box-$1 ]] && find "$r/proxy-box-$1" -name cgroup.procs -exec cat {} + 2>/dev/null
    done | sort -un
}

# The container's PID 1 seen from the host: the process of the box whose innermost PID is 1.
init_of() {
    local p
    for p in $(pids_of "$1"); do
        if awk '/^NSpid:/ { exit !(NF > 2 && $NF == 1) }' "/proc/$p/status" 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

enter() {
    local init=$1
    shift
    nsenter --target "$init" --all --root --wd -- /usr/bin/env -i PATH="$IN_PATH" HOME=/root \
        LANG=C.UTF-8 SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 "$@"
}

tools() {
    local need=()
    command -v systemd-nspawn >/dev/null || need+=(systemd-container)
    command -v debootstrap >/dev/null || need+=(debootstrap)
    command -v nsenter >/dev/null || need+=(util-linux)
    [[ ${#need[@]} == 0 ]] && return 0
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }
}

# apt's mirror for this release, from deb822 sources or one-line lists.
mirror() {
    if [[ -n ${PROXY_BOX_MIRROR:-} ]]; then echo "$PROXY_BOX_MIRROR"; return; fi
    local m
    m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk -v s="$SUITE" '
        BEGIN { RS = ""; FS = "\n" }
        { u = ""; ok = 0
          for (i = 1; i <= NF; i++) {
            if ($i ~ /^URIs:/) { u = $i; sub(/^URIs:[ \t]*/, "", u); sub(/[ \t].*/, "", u) }
            if ($i ~ /^Suites:/ && index($i " ", " " s " ")) ok = 1 }
          if (ok && u != "") { print u; exit } }')
    if [[ -z $m ]]; then
        m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk -v s="$SUITE" '$1 == "deb" { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == s) { print $i; exit } }')
    fi
    echo "${m:-http://deb.debian.org/debian}"
}

prepare() {
    tools
    [[ -d $BASE ]] && return 0
    mkdir -p "$CACHE"
    exec 8>"$CACHE/prepare.lock"
    flock 8
    [[ -d $BASE ]] && return 0
    local tmp=$BASE.tmp
    rm -rf "$tmp"
    mkdir -p "$CACHE/debs"
    say "building the rootfs ($SUITE, minbase + $PACKAGES): about a minute, once per machine"
    if ! debootstrap --variant=minbase --include="$PACKAGES" --cache-dir="$CACHE/debs" \
        "$SUITE" "$tmp" "$(mirror)" >"$CACHE/debootstrap.log" 2>&1; then
        tail -n 20 "$CACHE/debootstrap.log" >&2
        die "debootstrap failed (log: $CACHE/debootstrap.log)"
    fi
    # nspawn names the machine; no timers that reach the network or scrub disks.
    rm -f "$tmp/etc/hostname"
    local t
    for t in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
        e2scrub_reap.service systemd-networkd.service; do
        ln -sf /dev/null "$tmp/etc/systemd/system/$t"
    done
    rm -rf "$tmp/var/cache/apt/archives/"*.deb
    mv "$tmp" "$BASE"
}

cleanup() {
    local name=$1 run=$CACHE/box-$1 r
    for _ in $(seq 50); do
        [[ -z $(pids_of "$name") ]] && break
        r=$(cg_roots | head -n1)
        [[ -e $r/proxy-box-$name/cgroup.kill ]] && echo 1 >"$r/proxy-box-$name/cgroup.kill" 2>/dev/null
        # shellcheck disable=SC2046
        kill -KILL $(pids_of "$name") 2>/dev/null || true
        sleep 0.1
    done
    for r in $(cg_roots); do
        [[ -d $r/proxy-box-$name ]] && find "$r/proxy-box-$name" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    if mountpoint -q "$run/root"; then umount "$run/root" 2>/dev/null || umount -l "$run/root"; fi
    rm -rf "$run"
    return 0
}

up() {
    local name=$1
    shift
    [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9-]*$ ]] || die "bad box name $name"
    prepare
    local run=$CACHE/box-$name
    cleanup "$name"
    mkdir -p "$run/upper" "$run/work" "$run/root"
    mount -t overlay "proxy-box-$name" -o "lowerdir=$BASE,upperdir=$run/upper,workdir=$run/work" "$run/root"
    local args=(--directory="$run/root" --boot --machine="$name" --register=no --keep-unit
        --console=read-only --link-journal=no) b
    for b in "$@"; do args+=(--bind-ro="$b"); done
    local r
    for r in $(cg_roots); do mkdir -p "$r/proxy-box-$name"; done
    (
        # Without a host systemd there is no bus to ask for a scope (--keep-unit): nspawn makes
        # its cgroups below the one it runs in, this box's own.
        for r in $(cg_roots); do echo "$BASHPID" >"$r/proxy-box-$name/cgroup.procs"; done
        # The container's systemd cannot raise its own hard limit; LimitNOFILE= needs room.
        { ulimit -Hn "$(cat /proc/sys/fs/nr_open)" && ulimit -Sn "$(cat /proc/sys/fs/nr_open)"; } 2>/dev/null || true
        export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1
        exec setsid systemd-nspawn "${args[@]}" </dev/null >"$run/nspawn.log" 2>&1
    ) &
    # The subshell becomes nspawn (exec): while it lives, the box is starting or up. (Asking
    # for nspawn's processes by name raced with the exec: under load the first look found none
    # and gave the box up while it was booting.)
    local nspawn=$!
    local deadline=$((SECONDS + 120)) init="" state=""
    while :; do
        if init=$(init_of "$name"); then
            state=$(timeout 10 nsenter --target "$init" --all --root --wd -- /usr/bin/env -i PATH="$IN_PATH" \
                systemctl is-system-running --wait 2>/dev/null || true)
            case $state in running|degraded) break ;; esac
        fi
        # Gone, or exited and not yet reaped (a zombie still answers kill -0).
        if ! kill -0 "$nspawn" 2>/dev/null || [[ $(awk '{print $3}' "/proc/$nspawn/stat" 2>/dev/null) == Z ]]; then
            tail -n 30 "$run/nspawn.log" >&2
            cleanup "$name"
            die "systemd-nspawn exited"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 30 "$run/nspawn.log" >&2
            die "systemd did not boot in 120 s (state: ${state:-none})"
        fi
        sleep 0.1
    done
    [[ $state == running ]] || enter "$init" systemctl --failed --no-pager >&2 || true
}

down() {
    local name=$1 init
    if init=$(init_of "$name"); then
        # SIGRTMIN+3 halts systemd cleanly: every unit is stopped.
        kill -s RTMIN+3 "$init" 2>/dev/null || true
        for _ in $(seq 300); do kill -0 "$init" 2>/dev/null || break; sleep 0.1; done
    fi
    cleanup "$name"
}

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case $cmd in
    prepare) prepare ;;
    up) up "$@" ;;
    run)
        name=${1:?usage: box.sh run NAME CMD...}
        shift
        init=$(init_of "$name") || die "box $name is not up" 125
        # Confined with the box, so that `down` kills what it started too.
        for r in $(cg_roots); do
            { mkdir -p "$r/proxy-box-$name/exec" && echo "$BASHPID" >"$r/proxy-box-$name/exec/cgroup.procs"; } 2>/dev/null || true
        done
        enter "$init" "$@"
        ;;
    down) down "${1:?usage: box.sh down NAME}" ;;
    *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
