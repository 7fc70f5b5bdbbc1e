//! What reloads, rollbacks, checks and ACME changes report, and how they are asked for.

use std::time::{Duration, SystemTime};

use super::MAX_CONCURRENT_CHECKS;
use crate::config::Diagnostic;
use crate::dataplanes::PlaneOutcome;
use crate::diff::ConfigDiff;

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
