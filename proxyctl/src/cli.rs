//! The command line (DESIGN §9): the global flags, the commands and their help text, as clap
//! parses them. `main` dispatches on [`Command`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Reload, roll back and inspect the reverse proxy through controld's control socket and the
/// local proxyd's own socket.
///
/// Exit codes: 0 ok; 1 operation failed (reload or rollback rejected or not applied by every data
/// plane, refused by controld or proxyd: not allowed, unknown version, nothing to roll back to,
/// reload --if-version: another version serves now; check: the file is invalid or unreadable;
/// status degraded or controld down; health: not ready or draining; shutdown --wait: proxyd
/// still running at --timeout); 2 usage; 3 not running (status: neither controld nor proxyd
/// answers; health, shutdown: proxyd); 69 controld (health, shutdown: proxyd) unreachable or no
/// answer.
#[derive(Debug, Parser)]
#[command(
    name = "proxyctl",
    version = proto::BUILD_VERSION,
    after_help = "Examples:
  proxyctl status                          controld, every data plane and this host's proxyd
  proxyctl check new.toml                  validate a file here, with controld's own checks
  proxyctl check --remote new.toml         ask the running controld what it would change
  proxyctl reload --dry-run                what the file on disk would change
  proxyctl reload                          publish it; returns once every data plane applied it
  proxyctl --json reload | jq .version     the same, for scripts
  proxyctl reload --if-version 12          only if version 12 still serves (else exit 1)
  proxyctl config show                     the config text the serving version was built from
  proxyctl certs                           every certificate: expiry, next renewal, last error
  proxyctl history                         the versions published recently
  proxyctl rollback 12                     publish version 12's config again, as a new version
  proxyctl health                          is this host's proxyd serving? (asks proxyd only)
  proxyctl shutdown --wait --timeout 2m    drain this host's proxyd and wait until it exited
  proxyctl upgrade --binary /usr/local/bin/proxyd.new
                                           replace this host's proxyd, refusing no connection
  proxyctl completions bash > /etc/bash_completion.d/proxyctl

Exit codes:
  0   ok
  1   operation failed: rejected, refused by a data plane, by controld or by proxyd;
      reload --if-version: another version serves now; check: the file is invalid (or
      unreadable); status degraded (also: controld down while proxyd answers); health: not
      ready or draining; shutdown --wait: proxyd still running after --timeout
  2   usage error
  3   not running: status: neither controld nor proxyd answers; health, shutdown: proxyd
  69  controld unreachable (proxyd for health, shutdown), or no answer within --timeout

--json: every command prints one JSON object on stdout; its fields are only ever added, never
renamed or removed.

The sockets: --socket PATH, or PROXYCTL_SOCKET (controld, default /run/controld/control.sock);
--data-plane-socket PATH, or PROXYCTL_DATA_PLANE_SOCKET (this host's proxyd, default
/run/proxyd/admin.sock; status, health and shutdown use it, and work while controld is down)."
)]
pub struct Cli {
    /// controld's Admin socket.
    #[arg(
        long,
        global = true,
        env = "PROXYCTL_SOCKET",
        default_value = "/run/controld/control.sock",
        value_name = "PATH"
    )]
    pub socket: PathBuf,

    /// The local proxyd's own socket (`proxyd --admin-socket`), for status, health and shutdown.
    #[arg(
        long,
        global = true,
        env = "PROXYCTL_DATA_PLANE_SOCKET",
        default_value = "/run/proxyd/admin.sock",
        value_name = "PATH"
    )]
    pub data_plane_socket: PathBuf,

    /// Print the answer as one JSON object on stdout (errors stay text on stderr).
    #[arg(long, global = true)]
    pub json: bool,

    /// Deadline for the whole call, e.g. "30s", "2m"; connecting waits at most 5s of it.
    /// `shutdown --wait` waits this long again for proxyd to exit.
    #[arg(long, global = true, default_value = "30s", value_name = "D", value_parser = parse_timeout)]
    pub timeout: Duration,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Re-read the config file and publish it; waits until every data plane applied or refused it.
    Reload {
        /// Validate and show what would change, without publishing anything.
        #[arg(long)]
        dry_run: bool,
        /// Publish a new version even when the file did not change.
        #[arg(long)]
        force: bool,
        /// Reload only if VERSION still serves (see `status`); if another writer published
        /// first, publish nothing and exit 4 ("version is now N").
        #[arg(long, value_name = "VERSION")]
        if_version: Option<u64>,
        /// Reload only if the config file still holds exactly the text that `check --remote`
        /// validated (its `text_hash`); if another writer changed it, publish nothing and exit 4.
        #[arg(long, value_name = "HASH")]
        if_hash: Option<String>,
        /// Fleets: a staged rollout. The nodes that get the new version first, by name
        /// (`web-1,web-2`), or how many (`2`: the first live nodes by name); the others once
        /// the canaries applied it and served it for --canary-wait within the 5xx bound. A
        /// canary that refuses or degrades stops the rollout and gets the previous content
        /// back; exit 1.
        #[arg(long, value_name = "NODES|N", value_parser = parse_canary)]
        canary: Option<Canary>,
        /// How long the canaries serve the new version before the rest get it (default 30s).
        /// The call's deadline grows by as much.
        #[arg(long, value_name = "D", value_parser = parse_timeout, requires = "canary")]
        canary_wait: Option<Duration>,
        /// How many percentage points a canary's 5xx ratio may rise in the window over its
        /// ratio before (default 1).
        #[arg(long, value_name = "POINTS", requires = "canary")]
        canary_max_5xx: Option<f64>,
    },
    /// Check a config file without applying it: here, with controld's own validation (no daemon
    /// needed), or with --remote by the running controld, which also says what a reload of it
    /// would change. Exits 0 when valid, 1 when not (every problem is printed).
    Check {
        /// The config file to check.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Send the file to the running controld (Admin.Validate) and show what a reload of it
        /// would change against the serving version; nothing is applied.
        #[arg(long)]
        remote: bool,
    },
    /// The running config, as controld has it.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Show controld, every connected data plane and this host's proxyd; exits 1 when degraded
    /// (no data plane, one lags, the local one is not ready or cut off, controld is down).
    Status,
    /// Ask this host's proxyd (only) whether it serves: exits 0 ready, 1 not ready or draining,
    /// 3 not running. For scripts and load-balancer checks.
    Health,
    /// Drain this host's proxyd (like SIGTERM): it stops accepting, lets in-flight requests
    /// finish, then exits.
    Shutdown {
        /// Then wait until proxyd has exited (its socket no longer accepts connections), at most
        /// --timeout; exits 1 if it is still running then.
        #[arg(long)]
        wait: bool,
    },
    /// Replace this host's proxyd with a new process without refusing a connection: the new
    /// one (this binary, or --binary) takes over the listening sockets and the config from the
    /// running one, which drains once the new one serves. Exits 1, with the old process serving
    /// on, when the new one fails or is not ready within --timeout.
    Upgrade {
        /// The proxyd binary to start (default: the running one's, as now on disk).
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
    },
    /// Every site's certificate: names, source (files or acme), not-after, days left, next
    /// renewal and the last renewal error.
    Certs,
    /// List the versions published recently, newest first; `*` marks the serving one.
    History,
    /// Publish an earlier version's config again, as a new version; the file on disk is untouched.
    Rollback {
        /// The version to restore (see `history`); default: the one before the serving version.
        #[arg(value_name = "VERSION", value_parser = clap::value_parser!(u64).range(1..))]
        version: Option<u64>,
    },
    /// Print proxyctl's version.
    Version,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the config text the serving version was built from (secret-looking values
    /// redacted), under a `# version N (sha256 ...) from PATH` comment.
    Show,
}

/// `--canary`: nodes by name, or a count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Canary {
    Nodes(Vec<String>),
    Count(u32),
}

fn parse_canary(text: &str) -> Result<Canary, String> {
    if let Ok(count) = text.parse::<u32>() {
        if count == 0 {
            return Err("a count of canaries is at least 1".to_owned());
        }
        return Ok(Canary::Count(count));
    }
    let nodes: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    if nodes.is_empty() {
        return Err("name the canary nodes (web-1,web-2) or count them (2)".to_owned());
    }
    Ok(Canary::Nodes(nodes))
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if timeout.is_zero() {
        return Err("must be longer than 0s".to_owned());
    }
    Ok(timeout)
}

#[cfg(test)]
mod tests;
