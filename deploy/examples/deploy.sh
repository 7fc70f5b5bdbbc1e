#!/usr/bin/env bash
# A reference deploy: validate a candidate config against the running controld, install it,
# reload only if nobody else published meanwhile, check that every data plane runs the new
# version, and roll back (file and running version) when any step fails. Uses only proxyctl.
#
# Usage: deploy.sh CANDIDATE [TARGET]     (TARGET default /etc/proxyd/proxy.toml)
# Environment: PROXYCTL (default proxyctl), PROXYCTL_SOCKET (controld's socket).
# Exit codes: 0 deployed; 1 refused or rolled back (the reason is printed); 2 usage.
set -euo pipefail

candidate=${1:-}
target=${2:-/etc/proxyd/proxy.toml}
proxyctl=${PROXYCTL:-proxyctl}
if [[ -z $candidate || ! -r $candidate ]]; then
    echo "usage: deploy.sh CANDIDATE [TARGET]" >&2
    exit 2
fi

say() { echo "deploy: $*" >&2; }
# The number after "key": in proxyctl's --json output (one key per line, pretty-printed).
field() { sed -n "s/^ *\"$1\": *\([0-9][0-9]*\).*/\1/p" | head -n 1; }

# 1. Validate against the running daemon: same checks as a reload, plus the diff.
if ! report=$("$proxyctl" --json check --remote "$candidate"); then
    say "the candidate is invalid; nothing was changed"
    "$proxyctl" check --remote "$candidate" >&2 || true
    exit 1
fi
current=$(field current_version <<<"$report")
next=$(field next_version <<<"$report")
if [[ $current == "$next" ]]; then
    say "version $current already runs this config; nothing to do"
    exit 0
fi

# 2. Install it atomically, keeping the previous file.
backup="$target.before-deploy"
cp -p "$target" "$backup"
cp "$candidate" "$target.deploy-tmp"
mv "$target.deploy-tmp" "$target"

restore_file() {
    mv "$backup" "$target"
    say "restored $target"
}

# 3. Reload, unless someone else published since we validated.
if ! "$proxyctl" reload --if-version "$current" >&2; then
    restore_file
    # status exits 1 while a data plane lags: its JSON is still what we need.
    now=$("$proxyctl" --json status | field version || true)
    if [[ -n $now && $now != "$current" ]]; then
        # A new version was published but not applied everywhere: put version $current back.
        "$proxyctl" rollback "$current" >&2 || true
        say "rolled back to the config of version $current"
    fi
    exit 1
fi

# 4. Verify: every data plane runs the new version.
if ! "$proxyctl" status >&2; then
    restore_file
    "$proxyctl" rollback "$current" >&2 || true
    say "not every data plane runs the new version; rolled back to the config of version $current"
    exit 1
fi
rm -f "$backup"
say "deployed: version $current → $next"
