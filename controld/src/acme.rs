//! ACME for sites with `tls = "acme"`: a background task that issues and renews their
//! certificates and publishes them through the Reloader, the single writer (the challenges on
//! the way go to the data planes apart from versions). Nothing here blocks a reload or startup: the certificates stored by earlier
//! runs are read at startup, and everything that talks to the CA runs in the task.
//!
//! A certificate is renewed when a third of its lifetime remains, or at a random point of the
//! CA's ARI window when the CA offers one. A failed attempt backs off (exponential, jittered,
//! never before the CA's Retry-After), and the back-off survives restarts. A certificate that is
//! still valid keeps serving whatever happens: only a newer one replaces it.

mod account;
mod client;
mod fleet;
mod issue;
mod schedule;
mod store;
mod transport;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::Account;
use tokio_util::sync::CancellationToken;

use crate::config::{AcmeConfig, Certificate, Config, Site, SiteTls};
use crate::dataplanes::PlaneResult;
use crate::error::Error;
use crate::reloader::{Reloader, unix_ms};
use crate::snapshot::AcmeOverlay;

pub use fleet::{FleetAcme, FleetCertificate};
pub use store::{Backoff, Store};

/// Where time comes from; tests move it to make a certificate due.
pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// How the ACME task runs; the defaults suit production, tests shorten them.
#[derive(Clone)]
pub struct AcmeOptions {
    pub clock: Arc<dyn Clock>,
    /// The longest the task sleeps before it looks at every certificate again (so a clock that
    /// jumps is noticed within this).
    pub recheck: Duration,
    /// The back-off after the first failure; it doubles with each further one.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// The longest one attempt (order, validation, issuance) may take.
    pub attempt_timeout: Duration,
}

impl Default for AcmeOptions {
    fn default() -> AcmeOptions {
        AcmeOptions {
            clock: Arc::new(SystemClock),
            recheck: Duration::from_secs(10 * 60),
            backoff_initial: Duration::from_secs(60),
            backoff_max: Duration::from_secs(12 * 60 * 60),
            attempt_timeout: Duration::from_secs(5 * 60),
        }
    }
}

impl std::fmt::Debug for AcmeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeOptions")
            .field("recheck", &self.recheck)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("attempt_timeout", &self.attempt_timeout)
            .finish_non_exhaustive()
    }
}

/// What `Admin.Certificates` reports about an ACME site.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteStatus {
    /// When the next attempt is due; `None` while one runs.
    pub next_attempt: Option<SystemTime>,
    pub backoff: Backoff,
    pub issuing: bool,
}

/// A renewal time the CA suggested (ARI) for the certificate with `serial`.
#[derive(Debug, Clone)]
struct AriChoice {
    serial: String,
    renew_at: SystemTime,
    /// When to ask the CA again.
    refresh_at: SystemTime,
}

/// The ACME side of controld.
pub struct Acme {
    store: Store,
    options: AcmeOptions,
    /// Failures per site, as persisted.
    backoff: Mutex<BTreeMap<String, Backoff>>,
    /// The site an attempt runs for now.
    issuing: Mutex<Option<String>>,
    /// Renewal times from the CA's ARI, by site.
    ari: Mutex<BTreeMap<String, AriChoice>>,
    /// The account, for the CA (directory URL, CA roots) it was made with.
    account: tokio::sync::Mutex<Option<(AcmeConfig, Account)>>,
    retry_after: client::RetryAfter,
    /// Set when the CA answered that it has no ARI: not asked again.
    no_ari: std::sync::atomic::AtomicBool,
    /// The fleet this host belongs to, if any: then only its issuer issues.
    fleet: std::sync::OnceLock<Arc<dyn FleetAcme>>,
    /// This node was the fleet's issuer at its last round.
    was_issuer: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Acme {
    /// Opens `state_dir/acme` and reads what earlier runs stored: the certificates of the
    /// config's ACME sites (for the first snapshot) and the back-off state. No network.
    pub fn open(config: &Config, options: AcmeOptions) -> Result<(Acme, AcmeOverlay), Error> {
        let store = Store::open(&config.statics.control.state_dir)?;
        let mut overlay = AcmeOverlay::default();
        for site in acme_sites(config) {
            if let Some(c) = store.load_certificate(site.name()) {
                tracing::info!(site = site.name(), serial = %c.serial,
                    not_after = %humantime::format_rfc3339_seconds(c.not_after),
                    "loaded the stored ACME certificate");
                overlay.certificates.insert(site.name().to_owned(), c);
            }
        }
        let backoff = store.load_backoff();
        Ok((
            Acme {
                store,
                options,
                backoff: Mutex::new(backoff),
                issuing: Mutex::new(None),
                ari: Mutex::new(BTreeMap::new()),
                account: tokio::sync::Mutex::new(None),
                retry_after: client::RetryAfter::default(),
                no_ari: std::sync::atomic::AtomicBool::new(false),
                fleet: std::sync::OnceLock::new(),
                was_issuer: std::sync::atomic::AtomicBool::new(false),
            },
            overlay,
        ))
    }

    pub fn now(&self) -> SystemTime {
        self.options.clock.now()
    }

    /// The status of `site` for `Admin.Certificates`.
    pub fn status(&self, site: &Site, certificate: Option<&Certificate>) -> SiteStatus {
        let issuing = lock(&self.issuing).as_deref() == Some(site.name());
        let backoff = lock(&self.backoff)
            .get(site.name())
            .cloned()
            .unwrap_or_default();
        SiteStatus {
            next_attempt: (!issuing).then(|| self.due_at(site, certificate, &backoff)),
            backoff,
            issuing,
        }
    }

    /// When `site` is next due for an attempt: now when it has no usable certificate, else at
    /// its renewal time; never before the back-off ends.
    fn due_at(
        &self,
        site: &Site,
        certificate: Option<&Certificate>,
        backoff: &Backoff,
    ) -> SystemTime {
        let now = self.now();
        let renew_at = match certificate {
            Some(c) if covers_site(c, site) => lock(&self.ari)
                .get(site.name())
                .filter(|a| a.serial == c.serial)
                .map_or_else(
                    || schedule::renewal_time(c.not_before, c.not_after),
                    |a| a.renew_at,
                ),
            _ => now,
        };
        let not_before = UNIX_EPOCH + Duration::from_millis(backoff.next_attempt_unix_ms);
        renew_at.max(not_before)
    }

    /// Issues and renews until `shutdown`: looks at every ACME site, runs the attempts that are
    /// due (one at a time), then sleeps until the next one is due, the config changes, or
    /// [`AcmeOptions::recheck`] passes.
    pub async fn run(self: Arc<Self>, reloader: Arc<Reloader>, shutdown: CancellationToken) {
        let mut changes = reloader.subscribe();
        let mut settings = reloader.subscribe_acme_config();
        loop {
            changes.borrow_and_update();
            settings.borrow_and_update();
            let next = self.round(&reloader, &shutdown).await;
            if shutdown.is_cancelled() {
                return;
            }
            let now = self.now();
            let sleep = next
                .map_or(self.options.recheck, |t| {
                    t.duration_since(now).unwrap_or_default()
                })
                .min(self.options.recheck)
                // Never spin: a due site that was just tried waits for its back-off anyway.
                .max(Duration::from_millis(10));
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = changes.changed() => {}
                _ = settings.changed() => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// One look at every ACME site; returns when the next one is due.
    async fn round(
        &self,
        reloader: &Arc<Reloader>,
        shutdown: &CancellationToken,
    ) -> Option<SystemTime> {
        let current = reloader.current();
        // The [acme] of the last accepted reload, even one that left the snapshot unchanged:
        // never whichever config last happened to change the snapshot.
        let acme = reloader.acme_config()?;
        // In a fleet, only its issuer talks to the CA; the others look again shortly.
        if acme_sites(&current.config).next().is_some()
            && !self.lead(reloader, &current.config).await
        {
            return Some(self.now() + fleet::ISSUER_RECHECK);
        }
        self.forget_removed_sites(&current.config).await;
        let mut next: Option<SystemTime> = None;
        for site in acme_sites(&current.config) {
            let mut overlay = reloader.acme_overlay();
            if !overlay.certificates.contains_key(site.name())
                && let Some(stored) = {
                    let name = site.name().to_owned();
                    self.on_store(move |s| s.load_certificate(&name))
                        .await
                        .ok()
                        .flatten()
                }
            {
                // A site added by a reload may have a certificate from an earlier run.
                let name = site.name().to_owned();
                let summary = format!("acme: stored certificate for {name}");
                if let Err(e) = reloader
                    .publish_acme(&summary, |o| {
                        o.certificates.insert(name, stored);
                    })
                    .await
                {
                    tracing::warn!(site = site.name(), error = %e, "cannot publish the stored certificate");
                }
                overlay = reloader.acme_overlay();
            }
            let certificate = overlay.certificates.get(site.name());
            self.refresh_ari(&acme, site, certificate).await;
            let backoff = lock(&self.backoff)
                .get(site.name())
                .cloned()
                .unwrap_or_default();
            let due = self.due_at(site, certificate, &backoff);
            if due > self.now() {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            *lock(&self.issuing) = Some(site.name().to_owned());
            // The deadline covers the talk with the CA, not the publishing of what it issued:
            // a commit is never dropped half-way by it.
            let deadline = tokio::time::Instant::now() + self.options.attempt_timeout;
            let outcome = tokio::select! {
                () = shutdown.cancelled() => None,
                result = self.attempt_retrying_bad_nonces(reloader, &acme, site, deadline) => {
                    Some(result)
                }
            };
            *lock(&self.issuing) = None;
            // Shutting down: the attempt was dropped mid-way.
            let result = outcome?;
            self.finish(reloader, site, result).await;
            // Due again (after a back-off, or at the new certificate's renewal time): the next
            // round decides.
            next = Some(self.now());
        }
        next
    }

    /// [`Acme::attempt`], started over at once when the CA refused a nonce even after
    /// instant-acme's own retries: `badNonce` is retryable by definition (RFC 8555 §6.5), and
    /// no reason to back off.
    async fn attempt_retrying_bad_nonces(
        &self,
        reloader: &Reloader,
        acme: &AcmeConfig,
        site: &Site,
        deadline: tokio::time::Instant,
    ) -> Result<(), String> {
        const TRIES: u32 = 8;
        let mut tries = 1;
        loop {
            match self.attempt(reloader, acme, site, deadline).await {
                Err(e) if e.contains(BAD_NONCE) && tries < TRIES => {
                    tracing::info!(site = site.name(), error = %e, "the CA refused a nonce; starting over");
                    tries += 1;
                }
                result => return result,
            }
        }
    }

    /// One attempt for `site`: account, order, challenges, certificate (all before `deadline`),
    /// then stored and published.
    async fn attempt(
        &self,
        reloader: &Reloader,
        acme: &AcmeConfig,
        site: &Site,
        deadline: tokio::time::Instant,
    ) -> Result<(), String> {
        *lock(&self.retry_after) = None;
        let names: Vec<String> = site.hostnames.iter().map(|h| h.to_string()).collect();
        tracing::info!(site = site.name(), names = %names.join(","), ca = %acme.directory_url,
            "requesting a certificate through ACME");
        let talk = async {
            let account = self.account(acme).await?;
            let fleet = self.fleet();
            match issue::issue(
                &account,
                reloader,
                fleet,
                site.name(),
                &names,
                acme.challenge,
            )
            .await
            {
                Ok(issued) => Ok(issued),
                Err(e) => {
                    if e.unknown_account() {
                        tracing::warn!(ca = %acme.directory_url, "the CA does not know the stored ACME account; a new one will be created");
                        let url = acme.directory_url.clone();
                        let _ = self.on_store(move |s| s.forget_account(&url)).await;
                        if let Some(fleet) = self.fleet()
                            && let Err(e) = fleet.forget_account(acme.directory_url.clone()).await
                        {
                            tracing::warn!(error = %e, "cannot forget the fleet's ACME account");
                        }
                        *self.account.lock().await = None;
                    }
                    Err(e.to_string())
                }
            }
        };
        let issued = tokio::time::timeout_at(deadline, talk)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the attempt did not finish within {}",
                    humantime::format_duration(self.options.attempt_timeout)
                ))
            })?;
        let certificate = {
            let name = site.name().to_owned();
            self.on_store(move |s| s.save_certificate(&name, &issued.chain_pem, &issued.key_pem))
                .await??
        };
        // The talk with the CA is over: whoever sees the new certificate served sees an
        // attempt that is no longer running.
        *lock(&self.issuing) = None;
        let summary = format!("acme: certificate for {}", site.name());
        let name = site.name().to_owned();
        let serial = certificate.serial.clone();
        let not_after = certificate.not_after;
        let published = reloader
            .publish_acme(&summary, |overlay| {
                overlay.certificates.insert(name, certificate);
            })
            .await
            .map_err(|e| format!("publishing the new certificate: {e}"))?;
        tracing::info!(site = site.name(), %serial, version = published.version,
            not_after = %humantime::format_rfc3339_seconds(not_after),
            "ACME certificate issued and published");
        // For every node of the fleet; one that cannot be stored now is stored by the next
        // round ([`Acme::lead`]).
        if let Some(fleet) = self.fleet() {
            let serving = reloader
                .acme_overlay()
                .certificates
                .get(site.name())
                .cloned();
            if let Some(serving) = serving
                && let Err(e) = fleet
                    .save_certificate(site.name().to_owned(), serving)
                    .await
            {
                tracing::warn!(site = site.name(), error = %e,
                    "the certificate serves here but is not in the fleet yet; trying again next round");
            }
        }
        Ok(())
    }

    /// Records the outcome of an attempt: the back-off (persisted), metrics; and withdraws the
    /// attempt's challenges from the data planes.
    async fn finish(&self, reloader: &Reloader, site: &Site, result: Result<(), String>) {
        let now = self.now();
        let mut state = lock(&self.backoff).clone();
        match &result {
            Ok(()) => {
                reloader.metrics().renewed(true);
                state.remove(site.name());
            }
            Err(error) => {
                reloader.metrics().renewed(false);
                let entry = state.entry(site.name().to_owned()).or_default();
                entry.failures = entry.failures.saturating_add(1);
                let delay = schedule::backoff(
                    entry.failures,
                    self.options.backoff_initial,
                    self.options.backoff_max,
                    fastrand::f64(),
                );
                let retry_after = *lock(&self.retry_after);
                let next = schedule::next_attempt(now, delay, retry_after);
                entry.next_attempt_unix_ms = unix_ms(next);
                entry.last_error = error.clone();
                entry.last_error_unix_ms = unix_ms(now);
                tracing::warn!(site = site.name(), %error, failures = entry.failures,
                    next_attempt = %humantime::format_rfc3339_seconds(next),
                    "ACME attempt failed; the certificate serving (if any) stays");
            }
        }
        *lock(&self.backoff) = state.clone();
        if let Some(fleet) = self.fleet()
            && let Err(e) = fleet.save_backoff(state.clone()).await
        {
            tracing::warn!(error = %e, "cannot keep the ACME back-off in the fleet");
        }
        self.save_backoff(state).await;
        // The CA has decided (or the attempt was given up): the challenges are over.
        let names: BTreeSet<String> = site.hostnames.iter().map(|h| h.to_string()).collect();
        if let Some(fleet) = self.fleet() {
            if let Err(e) = fleet
                .deliver_challenges(names.into_iter().collect(), Vec::new())
                .await
            {
                tracing::warn!(site = site.name(), error = %e, "cannot withdraw the fleet's ACME challenges");
            }
            return;
        }
        let withdrawn = reloader
            .publish_challenges(|pending| pending.retain(|c| !names.contains(c.name())))
            .await;
        for p in withdrawn.iter().filter(|p| p.result != PlaneResult::Acked) {
            tracing::warn!(node_id = %p.node_id, result = ?p.result, error = %p.error,
                site = site.name(), "a data plane did not take back the ACME challenges");
        }
    }

    /// Runs `work` on the ACME store off the async threads (its reads, writes and fsyncs).
    pub(super) async fn on_store<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> Result<T, String> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|e| format!("the ACME store task failed: {e}"))
    }

    /// Drops the back-off of sites that no longer use ACME.
    async fn forget_removed_sites(&self, config: &Config) {
        let names: BTreeSet<&str> = acme_sites(config).map(Site::name).collect();
        let kept = {
            let mut backoff = lock(&self.backoff);
            if backoff.keys().all(|k| names.contains(k.as_str())) {
                return;
            }
            backoff.retain(|k, _| names.contains(k.as_str()));
            backoff.clone()
        };
        self.save_backoff(kept).await;
    }

    /// Persists the back-off state off the async threads (a write and fsyncs), never under the
    /// lock; the ACME task saves one state at a time, in order.
    async fn save_backoff(&self, state: BTreeMap<String, Backoff>) {
        let store = self.store.clone();
        let saved = tokio::task::spawn_blocking(move || store.save_backoff(&state))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = saved {
            tracing::warn!(error = %e, "cannot persist the ACME back-off state");
        }
    }
}

/// The problem type of a refused nonce, as instant-acme's errors name it.
const BAD_NONCE: &str = "urn:ietf:params:acme:error:badNonce";

/// The config's sites with `tls = "acme"`.
pub fn acme_sites(config: &Config) -> impl Iterator<Item = &Site> {
    config
        .dynamic
        .sites
        .iter()
        .filter(|s| s.tls == SiteTls::Acme)
}

/// The certificate's names cover every hostname of the site.
fn covers_site(c: &Certificate, site: &Site) -> bool {
    site.hostnames
        .iter()
        .all(|h| c.names.iter().any(|n| crate::config::covers(n, h.as_str())))
}
