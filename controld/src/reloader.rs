//! The Reloader: the only writer of configuration. Every reload goes read → deserialize →
//! validate → diff → version → record → publish → wait for the data planes, under one mutex.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::config::{Config, Diagnostic, StaticConfig};
use crate::dataplanes::{DataPlanes, PlaneOutcome};
use crate::diff::ConfigDiff;
use crate::error::Error;
use crate::history::{Entry, History, Kind};
use crate::metrics::{MetricsListener, ReloadResult};
use crate::snapshot::{AcmeOverlay, Content};
use crate::state::{Published, StateDir};

/// The snapshot being served: what every new subscriber gets first.
#[derive(Debug)]
pub struct Current {
    pub version: u64,
    pub config: Config,
    pub content: Content,
    /// The config text `config` was parsed from (recorded with every version built on it).
    pub text: Arc<str>,
}

/// A new version, as [`Reloader::commit`] publishes it.
struct Change {
    config: Config,
    text: Arc<str>,
    content: Content,
    kind: Kind,
    summary: String,
    /// The config diff, for the history (none for ACME changes).
    diff: Option<ConfigDiff>,
    /// What ACME adds, from this version on: installed in the same step that publishes it, so
    /// that a caller dropped while the data planes answer (a timeout) never leaves the overlay
    /// behind the serving version.
    overlay: Option<Arc<AcmeOverlay>>,
    /// controld's own `[acme]`, from this version on (a reload's), applied with the commit: a
    /// reload rejected, or never published, leaves it as it was.
    acme: Option<Option<crate::config::AcmeConfig>>,
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
    /// Shared with `/metrics`, which reads it without going through the Reloader.
    metrics: Arc<crate::metrics::Metrics>,
    /// Where `/metrics` is served: moved by reloads that change `control.metrics_address`.
    metrics_listener: MetricsListener,
    log_level_hook: Option<LogLevelHook>,
    /// What ACME adds to every snapshot: changed only under `lock`, through
    /// [`Reloader::publish_acme`], read by every reload.
    acme: Mutex<Arc<AcmeOverlay>>,
    /// The static settings controld started with, which are the ones it runs with (but
    /// `[acme]`, which controld applies on every accepted reload: `acme_config`; and
    /// `control.metrics_address`, which is not static: `metrics_listener`).
    started_statics: StaticConfig,
    /// `[acme]` of the last accepted reload (applied or unchanged), for the ACME task.
    acme_config: watch::Sender<Option<crate::config::AcmeConfig>>,
    /// The ACME challenges being completed: delivered to the data planes apart from versions.
    challenges: crate::challenges::Challenges,
    /// History entries written since start: what `History` answered may be stale once it moves.
    history_written: std::sync::atomic::AtomicU64,
    /// The fleet this host belongs to (`[cluster]`): reloads publish to it.
    fleet: std::sync::OnceLock<Arc<dyn FleetHook>>,
    /// Bounds the Validate calls and dry runs checked at once (each may parse 4 MiB and read
    /// certificate files): more are refused at once rather than queued.
    checks: Arc<tokio::sync::Semaphore>,
}

/// Validate calls and dry runs checked at the same time.
const MAX_CONCURRENT_CHECKS: usize = 4;

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
        // A new version, or the recorded one whose history entry a crash lost (the entry is
        // written after the version is published): without it, `rollback` would count back
        // from the wrong version.
        let repaired = last.as_ref().is_some_and(|l| l.version == version)
            && history.config_text(version).is_none();
        if last.is_none_or(|l| l.version != version) || repaired {
            let entry = Entry {
                version,
                hash: content.hash.clone(),
                at_unix_ms: unix_ms(SystemTime::now()),
                source: "startup".to_owned(),
                uid: None,
                pid: None,
                summary: if repaired {
                    "history entry written again at startup (it was lost)".to_owned()
                } else {
                    "published at startup".to_owned()
                },
                kind: Kind::Config,
                diff: None,
            };
            if let Err(e) = history.record(&entry, config_text) {
                tracing::warn!(error = %e, version, "cannot record the version in the history");
            }
        }
        tracing::info!(version, hash = %content.hash, config = %config_path.display(), "serving config");
        let started_statics = config.statics.clone();
        let current = Arc::new(Current {
            version,
            config,
            content,
            text: Arc::from(config_text),
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
            metrics: Arc::default(),
            metrics_listener: MetricsListener::new(started_statics.control.metrics_address),
            log_level_hook,
            acme: Mutex::new(Arc::new(acme)),
            acme_config: watch::channel(started_statics.acme.clone()).0,
            started_statics,
            checks: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_CHECKS)),
            challenges: Default::default(),
            history_written: Default::default(),
            fleet: std::sync::OnceLock::new(),
        })
    }

    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// The metrics, for `/metrics` to read (it holds no reference to the Reloader).
    pub fn shared_metrics(&self) -> Arc<crate::metrics::Metrics> {
        self.metrics.clone()
    }

    /// Where `/metrics` is served.
    pub fn metrics_listener(&self) -> &MetricsListener {
        &self.metrics_listener
    }

    /// The data planes subscribed here.
    pub fn planes(&self) -> &DataPlanes {
        &self.planes
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
        // In a fleet, a reload publishes the file's fleet part to every host.
        if !options.dry_run
            && let Some(fleet) = self.fleet.get()
        {
            return fleet.reload(self, options).await;
        }
        if options.canary.is_some() {
            let current = self.current();
            return self.rejected(
                &current,
                vec![Diagnostic {
                    key_path: "cluster".to_owned(),
                    file: self.config_path.clone(),
                    line: 0,
                    column: 0,
                    message: "a staged rollout (--canary) is for fleets: this host has no \
                              [cluster] table; nothing was published"
                        .to_owned(),
                }],
            );
        }
        let started = Instant::now();
        if options.dry_run {
            // Against the snapshot serving now, without the lock: a dry run never waits for a
            // real reload's data planes, and a caller that gives up drops the work.
            let current = self.current();
            if options.if_version.is_some_and(|v| v != current.version) {
                return ReloadReport {
                    outcome: Outcome::Conflict,
                    ..Reloader::empty_report(&current)
                };
            }
            let loaded =
                load_off_thread(self.config_path.clone(), options.check_permit.clone()).await;
            if !expected_text(&options, &loaded) {
                return ReloadReport {
                    outcome: Outcome::FileChanged,
                    ..Reloader::empty_report(&current)
                };
            }
            let mut report = match loaded {
                Ok((config, text)) => self.publish(current, config, &text, &options).await,
                Err(e) => self.rejected(&current, e.diagnostics(&self.config_path)),
            };
            report.duration = started.elapsed();
            return report;
        }
        let _serialized = self.lock.lock().await;
        let current = self.current();
        if options.if_version.is_some_and(|v| v != current.version) {
            return ReloadReport {
                outcome: Outcome::Conflict,
                ..Reloader::empty_report(&current)
            };
        }
        // Read under the lock: the bytes checked against `if_text_hash` are the ones published.
        let loaded = load_off_thread(self.config_path.clone(), None).await;
        if !expected_text(&options, &loaded) {
            return ReloadReport {
                outcome: Outcome::FileChanged,
                ..Reloader::empty_report(&current)
            };
        }
        self.around(&options, started, async {
            let current = self.current();
            match loaded {
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
        // In a fleet, the fleet rolls back.
        if let Some(fleet) = self.fleet.get() {
            return fleet.rollback(self, version, origin).await;
        }
        let started = Instant::now();
        let _serialized = self.lock.lock().await;
        let current = self.current();
        let target = match version {
            Some(v) => v,
            // The config before the one serving: certificate versions (ACME) on top of the same
            // config are not a config to go back to.
            None => {
                let history = self.history.clone();
                let entries = tokio::task::spawn_blocking(move || history.list())
                    .await
                    .unwrap_or_default();
                let configs: Vec<u64> = entries
                    .into_iter()
                    .filter(|e| e.kind == Kind::Config && e.source != "acme")
                    .map(|e| e.version)
                    .collect();
                let serving = configs.iter().find(|v| **v <= current.version).copied();
                configs
                    .into_iter()
                    .find(|v| serving.is_some_and(|s| *v < s))
                    .ok_or(RollbackError::NothingEarlier)?
            }
        };
        // Off the async threads, as every read of the state directory.
        let history = self.history.clone();
        let text = tokio::task::spawn_blocking(move || history.config_text(target))
            .await
            .ok()
            .flatten()
            .ok_or(RollbackError::UnknownVersion(target))?;
        let options = ReloadOptions {
            dry_run: false,
            force: false,
            if_version: None,
            if_text_hash: None,
            check_permit: None,
            canary: None,
            origin: Origin {
                source: format!("rollback to {target}"),
                ..origin
            },
        };
        let path = self.history.config_path(target);
        let report = self
            .around(&options, started, async {
                match parse_off_thread(text.clone(), path.clone(), None).await {
                    Ok(config) => self.publish(current, config, &text, &options).await,
                    // Rules may have tightened since that version was published.
                    Err(e) => self.rejected(&current, e.diagnostics(&path)),
                }
            })
            .await;
        Ok(report)
    }

    /// The config text `version` was built from, if the history still has it.
    pub fn config_text(&self, version: u64) -> Option<String> {
        self.history.config_text(version)
    }

    /// How many history entries this controld has written (or tried to): changes when
    /// [`Reloader::history`] may.
    pub fn history_written(&self) -> u64 {
        self.history_written
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The recorded versions, newest first (reads the state directory: blocking).
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
            let result = match report.outcome {
                Outcome::Applied => Some(ReloadResult::Applied),
                Outcome::Unchanged => Some(ReloadResult::Unchanged),
                Outcome::Rejected => Some(ReloadResult::Rejected),
                Outcome::DryRun
                | Outcome::Conflict
                | Outcome::FileChanged
                | Outcome::CanaryStopped => None,
            };
            if let Some(result) = result {
                self.metrics.reloaded(result);
            }
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
            canary: None,
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
        // Never publish what data planes cannot read, or would refuse.
        let built = build_off_thread(
            config,
            self.acme_overlay(),
            self.config_path.clone(),
            options.check_permit.clone(),
        )
        .await;
        let (config, content) = match built {
            Ok((_, _, Some(refused))) | Err(refused) => {
                return self.rejected(&current, vec![refused]);
            }
            Ok((config, content, None)) => (config, content),
        };
        report.diff = ConfigDiff::between(&current.config, &config);
        report.warnings = self.warnings(&report.diff, &config);
        let unchanged = content.hash == current.content.hash
            && !options.force
            && !controld_changed(&current.config, &config);
        let version = current.version + 1;
        if options.dry_run {
            report.outcome = Outcome::DryRun;
            // The version a real reload would publish.
            report.version = if unchanged { current.version } else { version };
            return report;
        }
        // A new metrics address is bound before anything changes: when it cannot be, the
        // reload is rejected and the listener serving now goes on serving. It is switched to
        // once the version is committed.
        let rebind = match self
            .metrics_listener
            .prepare(config.statics.control.metrics_address)
        {
            Ok(rebind) => rebind,
            Err(e) => {
                let serving = self.metrics_listener.bound();
                return self.rejected(&current, vec![bind_failed(&e, &self.config_path, serving)]);
            }
        };
        if unchanged {
            // controld's own ACME settings apply with every accepted reload, whatever the
            // snapshot (a changed one is a new version, and applies with its commit).
            self.acme_config
                .send_if_modified(|acme| replace_if_changed(acme, &config.statics.acme));
            report.outcome = Outcome::Unchanged;
            // Unchanged is success only when every data plane serves it: send it again to any
            // that does not, and report their answers.
            report.data_planes = self.resync(&current).await;
            return report;
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
        let log_level = config.dynamic.log_level.clone();
        let acme = Some(config.statics.acme.clone());
        let change = Change {
            acme,
            config,
            text: Arc::from(text),
            content,
            kind: Kind::Config,
            summary: report.diff.summary(),
            diff: Some(report.diff.clone()),
            overlay: None,
        };
        match self.commit(&current, change, &options.origin).await {
            Ok((version, planes)) => {
                if let Some(rebind) = rebind {
                    self.metrics_listener.switch(rebind);
                }
                if let Some(hook) = &self.log_level_hook {
                    hook(&log_level);
                }
                report.outcome = Outcome::Applied;
                report.version = version;
                report.data_planes = planes;
            }
            Err(d) => report.diagnostics = vec![d],
        }
        report
    }
}

/// Whether a setting controld applies itself, and that is not in the snapshot, differs. Such a
/// change is a new version all the same (the data planes get the same content again), so that
/// the config in force, the history and the next diff say what runs.
fn controld_changed(old: &Config, new: &Config) -> bool {
    old.statics.control.metrics_address != new.statics.control.metrics_address
}

/// Milliseconds since the Unix epoch, for the wire.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

mod acme;
mod check;
mod commit;
mod fleet;
mod io;
mod report;

#[cfg(test)]
use io::oversize;
/// Whether the file read is the one the caller validated (`if_text_hash`); a file that does not
/// parse is judged by the reload itself (rejected, nothing published).
fn expected_text(
    options: &ReloadOptions,
    loaded: &Result<(Config, String), crate::config::LoadError>,
) -> bool {
    match (&options.if_text_hash, loaded) {
        (Some(expected), Ok((_, text))) => crate::snapshot::text_hash(text) == *expected,
        _ => true,
    }
}

pub use fleet::{BoxFuture, FleetHook};
use io::{bind_failed, build_off_thread, load_off_thread, parse_off_thread, replace_if_changed};
pub use report::*;

#[cfg(test)]
mod tests;
