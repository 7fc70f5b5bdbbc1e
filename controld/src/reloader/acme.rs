//! What ACME adds to every snapshot (certificates) and the `[acme]` controld runs with: changed
//! only under the reload lock, published through the same commit path as a reload. And the
//! challenges it is completing, which are not config: delivered apart, without a version.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::*;
use crate::snapshot::AcmeOverlay;

impl Reloader {
    /// What ACME adds to the snapshots now.
    pub fn acme_overlay(&self) -> Arc<AcmeOverlay> {
        self.acme.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes what ACME adds to the snapshots (a new certificate) and, when that changes the snapshot, publishes it as a new version on top of
    /// the config serving now, then waits for the data planes like a reload. The single writer:
    /// this runs under the reload lock, so it never interleaves with a reload.
    pub async fn publish_acme(
        &self,
        summary: &str,
        change: impl FnOnce(&mut AcmeOverlay),
    ) -> Result<AcmePublished, Error> {
        let started = Instant::now();
        let _serialized = self.lock.lock().await;
        let current = self.current();
        let mut overlay = (*self.acme_overlay()).clone();
        change(&mut overlay);
        let overlay = Arc::new(overlay);
        let built = build_off_thread(
            current.config.clone(),
            overlay.clone(),
            self.config_path.clone(),
            None,
        )
        .await;
        let (config, content) = match built {
            Ok((_, _, Some(refused))) | Err(refused) => {
                return Err(Error::Publish(refused.message));
            }
            Ok((config, content, None)) => (config, content),
        };
        if content.hash == current.content.hash {
            *self.acme.lock().unwrap_or_else(|e| e.into_inner()) = overlay;
            return Ok(AcmePublished {
                version: current.version,
                published: false,
                data_planes: Vec::new(),
            });
        }
        let options = ReloadOptions {
            origin: Origin {
                source: "acme".to_owned(),
                uid: None,
                pid: None,
            },
            ..ReloadOptions::default()
        };
        let change = Change {
            config,
            text: current.text.clone(),
            content,
            kind: Kind::Certificate,
            summary: summary.to_owned(),
            diff: None,
            overlay: Some(overlay),
            acme: None,
        };
        let mut committed = Err(String::new());
        let report = self
            .around(&options, started, async {
                let mut report = Reloader::empty_report(&current);
                match self.commit(&current, change, &options.origin).await {
                    Ok((version, planes)) => {
                        report.outcome = Outcome::Applied;
                        report.version = version;
                        report.data_planes = planes;
                        committed = Ok(());
                    }
                    Err(d) => {
                        committed = Err(d.message.clone());
                        report.diagnostics = vec![d];
                    }
                }
                report
            })
            .await;
        committed.map_err(Error::Publish)?;
        for p in &report.data_planes {
            if p.result != crate::dataplanes::PlaneResult::Acked {
                tracing::warn!(node_id = %p.node_id, result = ?p.result, error = %p.error,
                    version = report.version, "a data plane did not apply the ACME change");
            }
        }
        Ok(AcmePublished {
            version: report.version,
            published: true,
            data_planes: report.data_planes,
        })
    }

    /// The ACME challenges being completed, which every Subscribe stream delivers.
    pub fn challenges(&self) -> &crate::challenges::Challenges {
        &self.challenges
    }

    /// Changes the challenges the data planes answer (a challenge to answer, one to forget)
    /// and waits until every connected data plane answers the new set, or the ACK timeout.
    /// No version, no reload lock: a data plane answers challenges whichever snapshot it
    /// serves, even while it refuses the latest one. Dropping the future leaves the change
    /// made; the data planes still get it.
    pub async fn publish_challenges(
        &self,
        change: impl FnOnce(&mut Vec<crate::challenges::Challenge>),
    ) -> Vec<crate::dataplanes::PlaneOutcome> {
        let generation = self.challenges.change(change);
        let waiting = self.planes.connected();
        let deadline = tokio::time::Instant::now() + self.ack_timeout;
        self.planes
            .wait_for_challenges(generation, &waiting, deadline)
            .await
    }

    /// The `[acme]` controld runs its ACME task with now.
    pub fn acme_config(&self) -> Option<crate::config::AcmeConfig> {
        self.acme_config.borrow().clone()
    }

    /// Follows [`Reloader::acme_config`].
    pub fn subscribe_acme_config(&self) -> watch::Receiver<Option<crate::config::AcmeConfig>> {
        self.acme_config.subscribe()
    }
}
