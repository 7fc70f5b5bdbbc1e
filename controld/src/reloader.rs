//! The Reloader: the only writer of configuration. Every reload goes read → deserialize →
//! validate → diff → version → record → publish → wait for the data planes, under one mutex.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::config::{self, Config, Diagnostic};
use crate::dataplanes::{DataPlanes, PlaneOutcome};
use crate::diff::ConfigDiff;
use crate::error::Error;
use crate::history::{Entry, History};
use crate::snapshot::{AcmeOverlay, Content};
use crate::state::{Published, StateDir};

/// The snapshot being served: what every new subscriber gets first.
#[derive(Debug)]
pub struct Current {
    pub version: u64,
    pub config: Config,
    pub content: Content,
}

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

/// Called with the new `logging.level` after every applied reload.
pub type LogLevelHook = Arc<dyn Fn(&str) + Send + Sync>;

pub struct Reloader {
    config_path: PathBuf,
    /// Serializes reloads: a second request waits here, then re-reads the file.
    lock: tokio::sync::Mutex<()>,
    current: watch::Sender<Arc<Current>>,
    state: StateDir,
    history: History,
    planes: Arc<DataPlanes>,
    ack_timeout: Duration,
    last: Mutex<Option<LastReload>>,
    metrics: crate::metrics::Metrics,
    log_level_hook: Option<LogLevelHook>,
    /// What ACME adds to every snapshot: changed only under `lock`, through
    /// [`Reloader::publish_acme`], read by every reload.
    acme: Mutex<Arc<AcmeOverlay>>,
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

impl Reloader {
    /// Takes the config loaded at startup and gives it a version: the recorded one when the
    /// content is unchanged since the last run, the next one otherwise.
    ///
    /// `acme` holds the certificates ACME issued earlier (read from the state directory), so that
    /// the first version already serves them: startup never waits for the CA.
    pub fn start(
        config_path: &Path,
        config: Config,
        config_text: &str,
        planes: Arc<DataPlanes>,
        ack_timeout: Duration,
        log_level_hook: Option<LogLevelHook>,
        acme: AcmeOverlay,
    ) -> Result<Reloader, Error> {
        let state = StateDir::open(&config.statics.control.state_dir)?;
        let history = History::open(&config.statics.control.state_dir)?;
        let content = Content::build_with(&config, &acme);
        let last = state.last_published()?;
        let version = match &last {
            Some(last) if last.hash == content.hash => last.version,
            Some(last) => last.version + 1,
            None => 1,
        };
        state.record(&Published {
            version,
            hash: content.hash.clone(),
        })?;
        if last.is_none_or(|l| l.version != version) {
            let entry = Entry {
                version,
                hash: content.hash.clone(),
                at_unix_ms: unix_ms(SystemTime::now()),
                source: "startup".to_owned(),
                uid: None,
                pid: None,
                summary: "published at startup".to_owned(),
                diff: None,
            };
            if let Err(e) = history.record(&entry, config_text) {
                tracing::warn!(error = %e, version, "cannot record the version in the history");
            }
        }
        tracing::info!(version, hash = %content.hash, config = %config_path.display(), "serving config");
        let current = Arc::new(Current {
            version,
            config,
            content,
        });
        Ok(Reloader {
            config_path: config_path.to_owned(),
            lock: tokio::sync::Mutex::new(()),
            current: watch::channel(current).0,
            state,
            history,
            planes,
            ack_timeout,
            last: Mutex::new(None),
            metrics: crate::metrics::Metrics::default(),
            log_level_hook,
            acme: Mutex::new(Arc::new(acme)),
        })
    }

    /// What ACME adds to the snapshots now.
    pub fn acme_overlay(&self) -> Arc<AcmeOverlay> {
        self.acme.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes what ACME adds to the snapshots (a new certificate, a challenge to answer, one
    /// to forget) and, when that changes the snapshot, publishes it as a new version on top of
    /// the config serving now, then waits for the data planes like a reload. The single writer:
    /// this runs under the reload lock, so it never interleaves with a reload.
    pub async fn publish_acme(
        &self,
        summary: &str,
        change: impl FnOnce(&mut AcmeOverlay),
    ) -> Result<AcmePublished, Error> {
        let _serialized = self.lock.lock().await;
        let current = self.current();
        let mut overlay = (*self.acme_overlay()).clone();
        change(&mut overlay);
        let content = Content::build_with(&current.config, &overlay);
        if content.hash == current.content.hash {
            *self.acme.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(overlay);
            return Ok(AcmePublished {
                version: current.version,
                published: false,
                data_planes: Vec::new(),
            });
        }
        let version = current.version + 1;
        self.state.record(&Published {
            version,
            hash: content.hash.clone(),
        })?;
        *self.acme.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(overlay);
        let entry = Entry {
            version,
            hash: content.hash.clone(),
            at_unix_ms: unix_ms(SystemTime::now()),
            source: "acme".to_owned(),
            uid: None,
            pid: None,
            summary: summary.to_owned(),
            diff: None,
        };
        let text = self
            .history
            .config_text(current.version)
            .unwrap_or_default();
        if let Err(e) = self.history.record(&entry, &text) {
            tracing::warn!(error = %e, version, "cannot record the version in the history");
        }
        tracing::info!(old_version = current.version, new_version = version, changes = %summary, "publishing new config version");
        let waiting = self.planes.connected();
        self.current.send_replace(Arc::new(Current {
            version,
            config: current.config.clone(),
            content,
        }));
        let deadline = tokio::time::Instant::now() + self.ack_timeout;
        let data_planes = self.planes.wait_for(version, &waiting, deadline).await;
        Ok(AcmePublished {
            version,
            published: true,
            data_planes,
        })
    }

    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The snapshot being served now.
    pub fn current(&self) -> Arc<Current> {
        self.current.borrow().clone()
    }

    /// Follows every published snapshot (the Subscribe streams use it).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Current>> {
        self.current.subscribe()
    }

    pub fn last_reload(&self) -> Option<LastReload> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads the config file and publishes it if it is valid and changed. Reloads run one at
    /// a time; one that waited reads the file after the previous one finished, so it applies
    /// the latest content.
    pub async fn reload(&self, options: ReloadOptions) -> ReloadReport {
        let started = Instant::now();
        let _serialized = self.lock.lock().await;
        let current = self.current();
        if options.if_version.is_some_and(|v| v != current.version) {
            return ReloadReport {
                outcome: Outcome::Conflict,
                ..Reloader::empty_report(&current)
            };
        }
        self.around(&options, started, async {
            let current = self.current();
            match config::load_with_text(&self.config_path) {
                Ok((config, text)) => self.publish(current, config, &text, &options).await,
                Err(e) => self.rejected(&current, e.diagnostics(&self.config_path)),
            }
        })
        .await
    }

    /// Publishes the config `version` was built from again, as a new version; `None`: the
    /// version before the one serving. The config file is not touched.
    pub async fn rollback(
        &self,
        version: Option<u64>,
        origin: Origin,
    ) -> Result<ReloadReport, RollbackError> {
        let started = Instant::now();
        let _serialized = self.lock.lock().await;
        let current = self.current();
        let target = match version {
            Some(v) => v,
            None => self
                .history
                .list()
                .into_iter()
                .map(|e| e.version)
                .find(|v| *v < current.version)
                .ok_or(RollbackError::NothingEarlier)?,
        };
        let text = self
            .history
            .config_text(target)
            .ok_or(RollbackError::UnknownVersion(target))?;
        let options = ReloadOptions {
            dry_run: false,
            force: false,
            if_version: None,
            origin: Origin {
                source: format!("rollback to {target}"),
                ..origin
            },
        };
        let path = self.history.config_path(target);
        let report = self
            .around(&options, started, async {
                match config::parse(&text, &path) {
                    Ok(config) => self.publish(current, config, &text, &options).await,
                    // Rules may have tightened since that version was published.
                    Err(e) => self.rejected(&current, e.diagnostics(&path)),
                }
            })
            .await;
        Ok(report)
    }

    /// Checks `text` exactly as a reload of it would be checked, and diffs it against the
    /// running snapshot; publishes nothing.
    pub fn validate(&self, text: &str, file: &Path) -> ValidateReport {
        let current = self.current();
        let mut report = ValidateReport {
            diagnostics: Vec::new(),
            diff: ConfigDiff::default(),
            warnings: Vec::new(),
            current_version: current.version,
            next_version: current.version,
        };
        match config::parse(text, file) {
            Ok(config) => {
                report.diff = ConfigDiff::between(&current.config, &config);
                report.warnings = warnings(&report.diff, &config);
                if Content::build_with(&config, &self.acme_overlay()).hash != current.content.hash {
                    report.next_version = current.version + 1;
                }
            }
            Err(e) => report.diagnostics = e.diagnostics(file),
        }
        report
    }

    /// The config text `version` was built from, if the history still has it.
    pub fn config_text(&self, version: u64) -> Option<String> {
        self.history.config_text(version)
    }

    /// The recorded versions, newest first.
    pub fn history(&self) -> Vec<Entry> {
        self.history.list()
    }

    /// What every reload and rollback does around its work: systemd notifications, timing and
    /// the "last reload" status.
    async fn around(
        &self,
        options: &ReloadOptions,
        started: Instant,
        work: impl std::future::Future<Output = ReloadReport>,
    ) -> ReloadReport {
        if !options.dry_run {
            crate::notify::reloading();
        }
        let mut report = work.await;
        report.duration = started.elapsed();
        if !options.dry_run {
            crate::notify::reloaded(&match report.outcome {
                Outcome::Rejected => {
                    format!("reload rejected; serving config version {}", report.version)
                }
                _ => format!("serving config version {}", report.version),
            });
            self.metrics.reloaded(report.outcome);
            *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(LastReload {
                at: SystemTime::now(),
                outcome: report.outcome,
                summary: report.summary(),
                version: report.version,
            });
        }
        report
    }

    fn empty_report(current: &Current) -> ReloadReport {
        ReloadReport {
            outcome: Outcome::Rejected,
            previous_version: current.version,
            version: current.version,
            diagnostics: Vec::new(),
            diff: ConfigDiff::default(),
            warnings: Vec::new(),
            data_planes: Vec::new(),
            duration: Duration::ZERO,
        }
    }

    fn rejected(&self, current: &Current, diagnostics: Vec<Diagnostic>) -> ReloadReport {
        tracing::warn!(
            version = current.version,
            problems = diagnostics.len(),
            "reload rejected; the current version keeps serving"
        );
        for d in &diagnostics {
            tracing::warn!("{d}");
        }
        ReloadReport {
            diagnostics,
            ..Reloader::empty_report(current)
        }
    }

    /// Diffs `config` against the serving snapshot and, unless it is a dry run or changes
    /// nothing, versions, records and publishes it, then waits for the data planes.
    async fn publish(
        &self,
        current: Arc<Current>,
        config: Config,
        text: &str,
        options: &ReloadOptions,
    ) -> ReloadReport {
        let mut report = Reloader::empty_report(&current);
        report.diff = ConfigDiff::between(&current.config, &config);
        report.warnings = warnings(&report.diff, &config);
        let content = Content::build_with(&config, &self.acme_overlay());
        let unchanged = content.hash == current.content.hash && !options.force;
        let version = current.version + 1;
        if options.dry_run {
            report.outcome = Outcome::DryRun;
            // The version a real reload would publish.
            report.version = if unchanged { current.version } else { version };
            return report;
        }
        if unchanged {
            report.outcome = Outcome::Unchanged;
            return report;
        }
        if let Err(e) = self.state.record(&Published {
            version,
            hash: content.hash.clone(),
        }) {
            report.diagnostics = vec![Diagnostic {
                key_path: "control.state_dir".to_owned(),
                file: self.state.path().to_owned(),
                line: 0,
                column: 0,
                message: format!("cannot record version {version}, so nothing was published: {e}"),
            }];
            tracing::error!(error = %e, version, "reload failed: cannot record the new version");
            return report;
        }
        let entry = Entry {
            version,
            hash: content.hash.clone(),
            at_unix_ms: unix_ms(SystemTime::now()),
            source: options.origin.source.clone(),
            uid: options.origin.uid,
            pid: options.origin.pid,
            summary: report.diff.summary(),
            diff: Some(report.diff.clone()),
        };
        if let Err(e) = self.history.record(&entry, text) {
            // The version is published either way; only its history entry is missing.
            tracing::warn!(error = %e, version, "cannot record the version in the history");
        }
        if options.origin.source.starts_with("rollback") {
            report.warnings.push(format!(
                "{} on disk differs from what now runs ({}); the next reload publishes the file again",
                self.config_path.display(),
                options.origin.source
            ));
        }
        self.log_changes(&report.diff, current.version, version);
        for w in config.certificate_warnings(SystemTime::now()) {
            tracing::warn!("{w}");
        }
        if let Some(hook) = &self.log_level_hook {
            hook(&config.dynamic.log_level);
        }
        let waiting = self.planes.connected();
        self.current.send_replace(Arc::new(Current {
            version,
            config,
            content,
        }));
        report.outcome = Outcome::Applied;
        report.version = version;
        let deadline = tokio::time::Instant::now() + self.ack_timeout;
        report.data_planes = self.planes.wait_for(version, &waiting, deadline).await;
        report
    }

    fn log_changes(&self, diff: &ConfigDiff, old: u64, new: u64) {
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

/// What a reload of `config` warns about: each changed static field, each certificate that
/// expires soon.
fn warnings(diff: &ConfigDiff, config: &Config) -> Vec<String> {
    let mut warnings = diff.static_warnings();
    warnings.extend(config.certificate_warnings(SystemTime::now()));
    warnings
}

/// Milliseconds since the Unix epoch, for the wire.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
