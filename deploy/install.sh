#!/usr/bin/env bash
# Installs the binaries, the systemd units, the system users and an example config. Safe to run
# again for an upgrade: it never touches /etc/proxyd/proxy.toml once it exists, nor the drop-ins
# of `systemctl edit` (/etc/systemd/system/*.d/), where operators change the units.
#
# Usage (as root, from the repository):
#   deploy/install.sh [--binaries DIR] [PREFIX]
#     PREFIX          where the binaries go, in PREFIX/bin (default /usr/local)
#     --binaries DIR  install controld, proxyd and proxyctl from DIR instead of building them
#                     (cargo build --profile production)
set -euo pipefail
cd "$(dirname "$0")/.."

binaries=""
prefix=/usr/local
migrated=
while [[ $# -gt 0 ]]; do
    case $1 in
        --binaries) binaries=${2:?--binaries needs a directory}; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "install.sh: unknown option $1" >&2; exit 2 ;;
        *) prefix=$1; shift ;;
    esac
done

if [[ -z $binaries ]]; then
    # The production profile: release with whole-program optimisation (Cargo.toml).
    cargo build --profile production --locked --bins
    binaries=target/production
fi

# Vendor units, below the admin's /etc/systemd/system: `systemctl edit` drop-ins override them
# and survive every later install.
if [[ $prefix == /usr ]]; then units=/usr/lib/systemd/system; else units=/usr/local/lib/systemd/system; fi

install -d "$prefix/bin" "$units"
# `install` writes a new file: running daemons keep the old one until restarted or upgraded.
install -m 0755 "$binaries/controld" "$binaries/proxyd" "$binaries/proxyctl" "$prefix/bin/"
for unit in controld.service proxyd.service proxyd.socket; do
    install -m 0644 "deploy/$unit" "$units/$unit"
    if [[ $prefix != /usr/local ]]; then
        sed -i "s|/usr/local/bin/|$prefix/bin/|g" "$units/$unit"
    fi
    # An earlier install put full copies in /etc/systemd/system, which would hide these: keep
    # it beside (the operator's edits belong in a drop-in now), never delete it.
    if [[ -f /etc/systemd/system/$unit && ! -L /etc/systemd/system/$unit ]]; then
        mv "/etc/systemd/system/$unit" "/etc/systemd/system/$unit.old"
        echo "install.sh: moved /etc/systemd/system/$unit (from an earlier install) to $unit.old;" \
            "carry any edits of yours into 'systemctl edit $unit'" >&2
        migrated=yes
    fi
done
install -D -m 0644 deploy/sysusers.conf /usr/lib/sysusers.d/proxyd.conf
install -D -m 0644 deploy/tmpfiles.conf /usr/lib/tmpfiles.d/proxyd.conf
systemd-sysusers /usr/lib/sysusers.d/proxyd.conf
systemd-tmpfiles --create /usr/lib/tmpfiles.d/proxyd.conf
if [[ ! -e /etc/proxyd/proxy.toml ]]; then
    install -m 0640 -g controld deploy/proxy.toml /etc/proxyd/proxy.toml
elif [[ $(stat -c %G /etc/proxyd/proxy.toml) == proxyd ]]; then
    # Before controld had a user of its own, the config was readable by group proxyd.
    chgrp controld /etc/proxyd/proxy.toml
    echo "install.sh: /etc/proxyd/proxy.toml is group controld now (was proxyd)" >&2
fi
systemctl daemon-reload
if [[ -n $migrated ]] && systemctl is-active -q proxyd; then
    # The running proxyd predates `proxyd --master`: `systemctl reload proxyd` refuses to
    # upgrade it (its successor would escape systemd) until it runs under the new unit.
    echo "install.sh: restart proxyd once, not reload: systemctl restart controld proxyd" \
        "(with proxyd.socket enabled no connection is refused); from then on" \
        "'systemctl reload proxyd' upgrades without one" >&2
fi
echo "installed; now: systemctl enable --now controld proxyd (optional, to keep the sockets across restarts: proxyd.socket, see deploy/README.md)"
