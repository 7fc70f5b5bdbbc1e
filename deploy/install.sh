#!/usr/bin/env bash
# Installs the binaries, the systemd units, the system user and an example config.
# Usage (as root, from the repository): deploy/install.sh [PREFIX]   (default /usr/local)
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:-/usr/local}

# The production profile: release with whole-program optimisation (Cargo.toml).
cargo build --profile production --locked --bins
install -m 0755 target/production/controld target/production/proxyd target/production/proxyctl "$prefix/bin/"
install -m 0644 deploy/controld.service deploy/proxyd.service deploy/proxyd.socket /etc/systemd/system/
install -D -m 0644 deploy/proxyd.sysusers.conf /usr/lib/sysusers.d/proxyd.conf
install -D -m 0644 deploy/proxyd.tmpfiles.conf /usr/lib/tmpfiles.d/proxyd.conf
systemd-sysusers /usr/lib/sysusers.d/proxyd.conf
systemd-tmpfiles --create /usr/lib/tmpfiles.d/proxyd.conf
if [[ ! -e /etc/proxyd/proxy.toml ]]; then
    install -m 0640 -g proxyd deploy/proxy.toml /etc/proxyd/proxy.toml
fi
if [[ $prefix != /usr/local ]]; then
    sed -i "s|/usr/local/bin|$prefix/bin|g" /etc/systemd/system/controld.service /etc/systemd/system/proxyd.service
fi
systemctl daemon-reload
echo "installed; now: systemctl enable --now controld proxyd (optional, to keep the sockets across restarts: proxyd.socket, see deploy/README.md)"
