//! What reloads, rollbacks, checks and ACME changes report, and how they are asked for.

use std::time::{Duration, SystemTime};

use super::MAX_CONCURRENT_CHECKS;
use crate::config::{Config, Diagnostic};
use crate::dataplanes::PlaneOutcome;
use crate::diff::{ConfigDiff, restarts, static_changes};

#[derive(Debug, Clone, Default)]
pub struct ReloadOptions {
    /// Report what would happen; publish nothing.
    pub dry_run: bool,
    /// Publish a new version even when the content did not change.
    pub force: bool,
    /// Who asked, for the history.
    pub origin: Origin,
    /// Optimistic concurrency: reload only if this version is still serving.
    pub if_version: Option<u64>,
    /// Reload only if the file's text has this hash ([`crate::snapshot::text_hash`], what
    /// Validate returned for the candidate): the content published is the content checked.
    pub if_text_hash: Option<String>,
    /// A dry run's place among the checks run at once, held by the work until it ends.
    pub check_permit: Option<std::sync::Arc<tokio::sync::OwnedSemaphorePermit>>,
    /// Fleets only: a staged rollout.
    pub canary: Option<CanaryPlan>,
}

/// A staged rollout: which nodes first, how long to watch them, how much worse they may get.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryPlan {
    /// The canaries by name; empty: the first `count` live nodes by name.
    pub nodes: Vec<String>,
    pub count: u32,
    /// The window after the canaries applied the version.
    pub wait: Duration,
    /// How far a canary's 5xx ratio may rise in the window, in percentage points.
    pub max_5xx_rise: f64,
}

/// The window when the caller names none.
pub const CANARY_WAIT: Duration = Duration::from_secs(30);
/// The longest window a caller may ask for.
pub const CANARY_WAIT_MAX: Duration = Duration::from_secs(3600);
/// The rise of the 5xx ratio allowed when the caller names none, in percentage points.
pub const CANARY_MAX_5XX_RISE: f64 = 1.0;

/// What a staged rollout's canaries did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CanaryReport {
    pub nodes: Vec<String>,
    pub wait: Duration,
    pub max_5xx_rise: f64,
    pub figures: Vec<CanaryFigures>,
    /// Why the rollout stopped, naming the node; empty when it went on to every node.
    pub stopped: String,
    /// The version that put the previous content back; 0 when none was published.
    pub reverted_version: u64,
}

/// One canary's responses before the window (since its data planes started) and in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CanaryFigures {
    pub node: String,
    pub before: (u64, u64),
    pub during: (u64, u64),
    /// Its data planes reported no figures (an older proxyd).
    pub no_figures: bool,
}

/// Where a published version came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// "startup", "reload", "sighup" or "rollback to N".
    pub source: String,
    pub uid: Option<u32>,
    pub pid: Option<i32>,
}

impl Default for Origin {
    fn default() -> Origin {
        Origin {
            source: "reload".to_owned(),
            uid: None,
            pid: None,
        }
    }
}

/// Why a rollback could not even be attempted.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("version {0} is not in the history (only the last {limit} are kept)", limit = crate::history::HISTORY_LIMIT)]
    UnknownVersion(u64),
    #[error("there is no earlier version to roll back to")]
    NothingEarlier,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Unchanged,
    Rejected,
    DryRun,
    /// `if_version` did not match: another writer published first; nothing was read.
    Conflict,
    /// `if_text_hash` did not match: the file is not the config that was validated; nothing was
    /// published.
    FileChanged,
    /// A staged rollout stopped at its canaries (see [`ReloadReport::canary`]).
    CanaryStopped,
}

/// Everything a reload has to say; Admin.Reload sends it as is.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    pub outcome: Outcome,
    pub previous_version: u64,
    /// The version serving after the reload; for a dry run, the version a reload would publish.
    pub version: u64,
    pub diagnostics: Vec<Diagnostic>,
    pub diff: ConfigDiff,
    pub warnings: Vec<String>,
    pub data_planes: Vec<PlaneOutcome>,
    pub duration: Duration,
    /// A staged rollout's canaries.
    pub canary: Option<CanaryReport>,
}

impl ReloadReport {
    /// One line for status and logs.
    pub fn summary(&self) -> String {
        match self.outcome {
            Outcome::Rejected => self
                .diagnostics
                .first()
                .map(ToString::to_string)
                .unwrap_or_default(),
            _ => self.diff.summary(),
        }
    }
}

/// What `Reloader::validate` found.
#[derive(Debug, Clone)]
pub struct ValidateReport {
    pub diagnostics: Vec<Diagnostic>,
    pub diff: ConfigDiff,
    pub warnings: Vec<String>,
    pub current_version: u64,
    /// The version a reload of the text would publish.
    pub next_version: u64,
    /// The text's hash, for a reload's `if_text_hash`.
    pub text_hash: String,
}

/// The last reload requested since start.
#[derive(Debug, Clone)]
pub struct LastReload {
    pub at: SystemTime,
    pub outcome: Outcome,
    pub summary: String,
    pub version: u64,
}

/// Why a Validate call was not checked.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{MAX_CONCURRENT_CHECKS} checks are already in progress; try again shortly")]
    Busy,
}

/// What [`Reloader::publish_acme`] did.
#[derive(Debug, Clone)]
pub struct AcmePublished {
    /// The version serving now: a new one, or the same when the change changed nothing.
    pub version: u64,
    /// Whether a new version was published.
    pub published: bool,
    /// What each data plane connected at publish time did with it (empty when nothing was
    /// published).
    pub data_planes: Vec<PlaneOutcome>,
}

impl super::Reloader {
    /// What a reload of `config` warns about: each changed static field and the daemon that
    /// must restart for it; each static field of controld's that differs from what it started
    /// with (a change it did not apply, even if an earlier reload already reported it); each
    /// certificate that expires soon.
    pub(super) fn warnings(&self, diff: &ConfigDiff, config: &Config) -> Vec<String> {
        let mut warnings = diff.static_warnings();
        for change in static_changes(&self.started_statics, &config.statics) {
            let reported = diff.static_changed.iter().any(|c| c.field == change.field);
            if restarts(&change.field) == Some("controld") && !reported {
                warnings.push(format!(
                    "{} is {} in the file but controld still runs with {}: needs a restart of controld",
                    change.field, change.new, change.old
                ));
            }
        }
        warnings.extend(config.certificate_warnings(SystemTime::now()));
        warnings
    }

    pub(super) fn log_changes(&self, diff: &ConfigDiff, old: u64, new: u64) {
        tracing::info!(old_version = old, new_version = new, changes = %diff.summary(), "publishing new config version");
        for site in &diff.sites_added {
            tracing::info!(site = %site, "site added");
        }
        for site in &diff.sites_removed {
            tracing::info!(site = %site, "site removed");
        }
        for site in &diff.sites_modified {
            match diff.site_changes.iter().find(|c| &c.site == site) {
                Some(c) => tracing::info!(site = %site, changes = %c.describe(), "site modified"),
                None => tracing::info!(site = %site, "site modified"),
            }
        }
        for c in &diff.limits_changed {
            tracing::info!(field = %c.field, old = %c.old, new = %c.new, "setting changed");
        }
        for w in diff.static_warnings() {
            tracing::warn!("{w}");
        }
    }
}
