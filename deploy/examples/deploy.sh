#!/usr/bin/env bash
# A reference deploy: validate a candidate config against the running controld, install it,
# reload exactly that content only if nobody else published meanwhile, check that every data
# plane runs the new version, and undo only what this deploy did when a step fails. Uses only
# proxyctl (and flock, mktemp, cmp from coreutils/util-linux).
#
# Safe to run twice at once: deploys to one TARGET take turns after validating (flock on
# TARGET.deploy-lock); one that finds the running version moved since it validated, or the file
# changed under it, stops with exit 4 and touches nothing (the other writer's work stands). The reload names the
# content it validated (`--if-hash`), so the version published is the candidate, never a file
# someone else wrote in between.
#
# Usage: deploy.sh CANDIDATE [TARGET]     (TARGET default /etc/proxyd/proxy.toml)
# Environment: PROXYCTL (default proxyctl), PROXYCTL_SOCKET (controld's socket),
#              DEPLOY_LOCK_TIMEOUT (seconds to wait for another deploy, default 120).
# Exit codes: 0 deployed (or nothing to do); 1 refused, or failed and undone (the reason is
# printed); 2 usage; 4 conflict: another writer published or changed the file first, nothing
# was changed by this deploy.
set -euo pipefail

candidate=${1:-}
target=${2:-/etc/proxyd/proxy.toml}
proxyctl=${PROXYCTL:-proxyctl}
if [[ -z $candidate || ! -r $candidate ]]; then
    echo "usage: deploy.sh CANDIDATE [TARGET]" >&2
    exit 2
fi

say() { echo "deploy: $*" >&2; }
# The value after "key": in proxyctl's --json output (one key per line, pretty-printed).
field() { sed -n "s/^ *\"$1\": *\"\{0,1\}\([0-9a-f][0-9a-f]*\)\"\{0,1\}.*/\1/p" | head -n 1; }

# 1. Validate against the running daemon: same checks as a reload, plus the diff and the hash
#    that names exactly this content.
if ! report=$("$proxyctl" --json check --remote "$candidate"); then
    say "the candidate is invalid; nothing was changed"
    "$proxyctl" check --remote "$candidate" >&2 || true
    exit 1
fi
current=$(field current_version <<<"$report")
next=$(field next_version <<<"$report")
hash=$(field text_hash <<<"$report")
if [[ -z $current || -z $hash ]]; then
    say "cannot read proxyctl's answer; nothing was changed"
    exit 1
fi
if [[ $current == "$next" ]]; then
    say "version $current already runs this config; nothing to do"
    exit 0
fi
say "validated against version $current"

# 2. One deploy at a time per target, from here on; one that validated against a version that
#    no longer serves (another deploy got there first) stops before it touches anything.
exec 9>>"$target.deploy-lock"
if ! flock -w "${DEPLOY_LOCK_TIMEOUT:-120}" 9; then
    say "another deploy to $target still runs; nothing was changed"
    exit 4
fi
now=$("$proxyctl" --json status | field version || true)
if [[ $now != "$current" ]]; then
    say "version ${now:-?} serves now, not $current as validated: another writer published first; nothing was changed"
    exit 4
fi

# 3. Install it atomically, keeping the previous file under a name of this deploy's own.
dir=$(dirname "$target")
backup=$(mktemp "$dir/.$(basename "$target").before-deploy.XXXXXX")
staged=$(mktemp "$dir/.$(basename "$target").deploy.XXXXXX")
trap 'rm -f "$staged"' EXIT
cp -p "$target" "$backup"
cp "$candidate" "$staged"
chmod --reference="$target" "$staged" 2>/dev/null || true
mv "$staged" "$target"

# Whether the config serving now is the candidate (by content: a reload by someone else may
# have published it).
candidate_serves() {
    local r
    r=$("$proxyctl" --json check --remote "$candidate" 2>/dev/null) || return 1
    [[ -n $r && $(field current_version <<<"$r") == "$(field next_version <<<"$r")" ]]
}

# Puts the previous file back, but only over our own candidate: a file someone else wrote
# since is theirs.
restore_file() {
    if cmp -s "$candidate" "$target"; then
        mv "$backup" "$target"
        say "restored $target"
    else
        rm -f "$backup"
        say "$target was changed by someone else; left as it is"
    fi
}

# 4. Reload exactly the validated content, unless someone else published since.
set +e
"$proxyctl" reload --if-version "$current" --if-hash "$hash" >&2
reloaded=$?
set -e
if [[ $reloaded == 4 ]]; then
    if candidate_serves; then
        # Another reload (systemctl reload controld, say) published the file we installed:
        # the candidate serves. Keep the file: restoring it would let the next reload undo it.
        rm -f "$backup"
        say "another reload published this candidate first; it serves, and $target holds it"
        exit 0
    fi
    restore_file
    say "another writer published (or changed $target) first; nothing was published by this deploy"
    exit 4
fi
if [[ $reloaded != 0 ]]; then
    # Rolled back only if what serves is this deploy's candidate, by content: a version number
    # says nothing about whose it is.
    if candidate_serves; then
        restore_file
        "$proxyctl" rollback "$current" >&2 || true
        say "rolled back to the config of version $current"
    else
        restore_file
    fi
    exit 1
fi

# 5. Verify: every data plane runs the new version.
if ! "$proxyctl" status >&2; then
    if candidate_serves; then
        restore_file
        "$proxyctl" rollback "$current" >&2 || true
        say "not every data plane runs the new version; rolled back to the config of version $current"
    else
        restore_file
        say "not every data plane runs the new version, and another config serves now: left as it is"
    fi
    exit 1
fi
rm -f "$backup"
say "deployed: version $current → $next"
