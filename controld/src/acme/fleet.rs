//! ACME once per fleet: what the ACME task needs of the fleet (`crate::cluster` implements it),
//! and what it does with it. One node at a time is the fleet's issuer, elected through an etcd
//! lease; it alone talks to the CA. The account, each certificate (its key sealed with the fleet
//! key) and the back-off live in etcd, so that whichever node issues next goes on from there.
//! Every node serves the fleet's certificates, keeps a copy in its own state directory (a
//! restart with etcd away serves them), and answers every challenge: each is confirmed by every
//! live node before the CA is asked to validate, as the CA may reach any host.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use super::{Acme, Backoff, acme_sites, lock};
use crate::challenges::Challenge;
use crate::config::{Certificate, Config};
use crate::reloader::{BoxFuture, Reloader};

/// How often a node that is not the issuer looks whether the fleet has one.
pub const ISSUER_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// A certificate as the fleet keeps it, without its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetCertificate {
    pub serial: String,
    pub not_after: SystemTime,
}

/// What the ACME task needs of the fleet.
pub trait FleetAcme: Send + Sync {
    /// Whether this node is the fleet's issuer now; becomes it when the fleet has none.
    fn is_issuer(&self) -> BoxFuture<'_, bool>;
    /// The fleet's account at the CA `directory_url` (its credentials' JSON), if it has one.
    fn load_account(&self, directory_url: String)
    -> BoxFuture<'_, Result<Option<Vec<u8>>, String>>;
    fn save_account(
        &self,
        directory_url: String,
        json: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), String>>;
    /// Forgets the fleet's account at a CA that no longer knows it.
    fn forget_account(&self, directory_url: String) -> BoxFuture<'_, Result<(), String>>;
    /// The certificates the fleet keeps, by site.
    fn certificates(&self) -> BoxFuture<'_, Result<BTreeMap<String, FleetCertificate>, String>>;
    fn save_certificate(
        &self,
        site: String,
        certificate: Certificate,
    ) -> BoxFuture<'_, Result<(), String>>;
    fn load_backoff(&self) -> BoxFuture<'_, Result<BTreeMap<String, Backoff>, String>>;
    fn save_backoff(&self, state: BTreeMap<String, Backoff>) -> BoxFuture<'_, Result<(), String>>;
    /// Replaces the challenges for `names` with `answers` on every node; returns when every
    /// live node's data planes answer them (or why not). With no answers: withdraws them.
    fn deliver_challenges(
        &self,
        names: Vec<String>,
        answers: Vec<Challenge>,
    ) -> BoxFuture<'_, Result<(), String>>;
}

impl Acme {
    /// Joins the fleet: from now on this task issues only while this node is the fleet's
    /// issuer, and keeps what it issues in etcd.
    pub fn join_fleet(&self, fleet: Arc<dyn FleetAcme>) {
        let _ = self.fleet.set(fleet);
    }

    pub(super) fn fleet(&self) -> Option<&dyn FleetAcme> {
        self.fleet.get().map(|f| f.as_ref())
    }

    /// In a fleet: whether this round may issue (this node is the issuer). A node that just
    /// became the issuer takes the fleet's back-off, and every issuer round first puts into
    /// etcd what this node serves and the fleet lacks (a store that failed after an issuance).
    pub(super) async fn lead(&self, reloader: &Reloader, config: &Config) -> bool {
        use std::sync::atomic::Ordering;
        let Some(fleet) = self.fleet() else {
            return true;
        };
        if !fleet.is_issuer().await {
            self.was_issuer.store(false, Ordering::Release);
            return false;
        }
        if !self.was_issuer.swap(true, Ordering::AcqRel) {
            tracing::info!("this node is the fleet's ACME issuer now");
            match fleet.load_backoff().await {
                Ok(state) => *lock(&self.backoff) = state,
                Err(e) => tracing::warn!(error = %e, "cannot read the fleet's ACME back-off"),
            }
        }
        let Ok(kept) = fleet.certificates().await else {
            return true;
        };
        let overlay = reloader.acme_overlay();
        for site in acme_sites(config) {
            let Some(serving) = overlay.certificates.get(site.name()) else {
                continue;
            };
            let newer = kept
                .get(site.name())
                .is_none_or(|k| k.serial != serving.serial && k.not_after < serving.not_after);
            if newer {
                match fleet
                    .save_certificate(site.name().to_owned(), serving.clone())
                    .await
                {
                    Ok(()) => tracing::info!(site = site.name(), serial = %serving.serial,
                        "stored this node's certificate in the fleet"),
                    Err(e) => tracing::warn!(site = site.name(), error = %e,
                        "cannot store the certificate in the fleet; trying again next round"),
                }
            }
        }
        true
    }

    /// Keeps a certificate the fleet issued in this node's state directory (what a restart
    /// with etcd away serves) and reads it back.
    pub async fn keep_certificate(
        &self,
        site: &str,
        chain_pem: String,
        key_pem: String,
    ) -> Result<Certificate, String> {
        let name = site.to_owned();
        self.on_store(move |s| s.save_certificate(&name, &chain_pem, &key_pem))
            .await?
    }
}
