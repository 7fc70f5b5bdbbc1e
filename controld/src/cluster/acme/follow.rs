//! Every node's side of the fleet's ACME: the fleet's certificates served here, and the
//! challenges handed to the data planes here, their answer recorded for the issuer.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{
    ChallengesRecord, Confirmed, FleetKey, Link, RESYNC_EVERY, RETRY_FIRST, RETRY_MAX,
    WireChallenge, fleet_key, json, read_certs,
};
use crate::acme::{Acme, acme_sites};
use crate::challenges::Challenge;
use crate::cluster::etcd::Watched;
use crate::dataplanes::PlaneResult;
use crate::reloader::{Reloader, unix_ms};

/// Follows the fleet's certificates and challenges until `shutdown`: each certificate of a
/// site this host serves with ACME is kept here and served; each challenge set is handed to the
/// data planes here, and their answer recorded for the issuer.
pub async fn follow_acme(
    reloader: Arc<Reloader>,
    link: Arc<Link>,
    acme: Arc<Acme>,
    key: Option<Arc<FleetKey>>,
    shutdown: CancellationToken,
) {
    let prefix = link.fleet.key("acme/");
    let mut changes = reloader.subscribe();
    let mut planes = reloader.planes().subscribe_changes();
    let mut delivery = Delivery::default();
    let mut wait = RETRY_FIRST;
    loop {
        let watch = tokio::select! {
            () = shutdown.cancelled() => return,
            w = link.fleet.etcd().watch(&prefix, 0) => w,
        };
        let mut watch = match watch {
            Ok(watch) => {
                wait = RETRY_FIRST;
                watch
            }
            Err(e) => {
                tracing::debug!(error = %e, retry_in = ?wait, "cannot watch the fleet's ACME keys");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(RETRY_MAX);
                continue;
            }
        };
        loop {
            sync(&reloader, &link, &acme, key.as_deref(), &mut delivery).await;
            tokio::select! {
                () = shutdown.cancelled() => return,
                watched = watch.recv() => match watched {
                    Some(Ok(Watched::Changes { .. })) => {}
                    _ => break,
                },
                changed = changes.changed() => if changed.is_err() { return },
                // A set this node could not answer (no data plane) is tried again when one
                // subscribes, not on every etcd event.
                _ = planes.changed(), if delivery.failed() => delivery.retry_now(),
                () = tokio::time::sleep(RESYNC_EVERY) => delivery.retry_now(),
            }
        }
    }
}

/// Where this node stands with the fleet's challenge sets.
#[derive(Default)]
struct Delivery {
    /// The last set handed to the data planes here, and whether they all answer it.
    set: Option<(String, bool)>,
    /// What this node last recorded in `acme/confirmed/<node>`.
    recorded: Option<Confirmed>,
}

impl Delivery {
    fn failed(&self) -> bool {
        matches!(self.set, Some((_, false)))
    }

    /// The set that failed is handed over again at the next look.
    fn retry_now(&mut self) {
        if self.failed() {
            self.set = None;
        }
    }
}

/// One look at the fleet's certificates and challenges.
async fn sync(
    reloader: &Reloader,
    link: &Link,
    acme: &Acme,
    key: Option<&FleetKey>,
    delivery: &mut Delivery,
) {
    if let Err(e) = sync_certificates(reloader, link, acme, key).await {
        tracing::warn!(error = %e, "cannot take the fleet's ACME certificates");
    }
    if let Err(e) = sync_challenges(reloader, link, key, delivery).await {
        tracing::warn!(error = %e, "cannot take the fleet's ACME challenges");
    }
}

async fn sync_certificates(
    reloader: &Reloader,
    link: &Link,
    acme: &Acme,
    key: Option<&FleetKey>,
) -> Result<(), String> {
    let current = reloader.current();
    let sites: Vec<String> = acme_sites(&current.config)
        .map(|s| s.name().to_owned())
        .collect();
    if sites.is_empty() {
        return Ok(());
    }
    for record in read_certs(link).await? {
        if !sites.contains(&record.site) {
            continue;
        }
        // One record that cannot be taken (sealed with another key, say) does not hold back
        // the others.
        if let Err(e) = take_certificate(reloader, acme, key, record).await {
            tracing::warn!(error = %e, "cannot take a fleet's ACME certificate");
        }
    }
    Ok(())
}

/// Keeps and serves the fleet's certificate `record` here unless this host serves it (or a
/// newer one) already.
async fn take_certificate(
    reloader: &Reloader,
    acme: &Acme,
    key: Option<&FleetKey>,
    record: super::CertRecord,
) -> Result<(), String> {
    let overlay = reloader.acme_overlay();
    let newer = overlay.certificates.get(&record.site).is_none_or(|c| {
        c.serial != record.serial && unix_ms(c.not_after) <= record.not_after_unix_ms
    });
    if !newer {
        return Ok(());
    }
    let place = format!("acme/certs/{}", record.site);
    let key_pem = fleet_key(key)?.open(&place, &record.key_sealed)?;
    let key_pem = String::from_utf8(key_pem).map_err(|_| format!("{place}: not a PEM key"))?;
    let certificate = acme
        .keep_certificate(&record.site, record.chain_pem.clone(), key_pem)
        .await?;
    let site = record.site.clone();
    let summary = format!(
        "acme: fleet certificate for {site} (issued on {})",
        record.node
    );
    let published = reloader
        .publish_acme(&summary, |o| {
            o.certificates.insert(site, certificate);
        })
        .await
        .map_err(|e| format!("serving the fleet's certificate for {}: {e}", record.site))?;
    tracing::info!(site = %record.site, serial = %record.serial, version = published.version,
        issued_on = %record.node, "serving the fleet's ACME certificate");
    Ok(())
}

async fn sync_challenges(
    reloader: &Reloader,
    link: &Link,
    key: Option<&FleetKey>,
    delivery: &mut Delivery,
) -> Result<(), String> {
    let (kv, _) = link
        .fleet
        .etcd()
        .get(&link.fleet.key("acme/challenges"))
        .await
        .map_err(|e| e.to_string())?;
    let Some(kv) = kv else { return Ok(()) };
    let record: ChallengesRecord =
        serde_json::from_slice(&kv.value).map_err(|e| format!("acme/challenges: {e}"))?;
    // Each set once; one that failed again only when a data plane subscribes or after a while
    // ([`Delivery::retry_now`]), never on every etcd event.
    if delivery
        .set
        .as_ref()
        .is_some_and(|(id, _)| *id == record.id)
    {
        return Ok(());
    }
    let mut challenges = Vec::new();
    let mut problems = Vec::new();
    for wire in record.challenges {
        match wire {
            WireChallenge::Http01 {
                name,
                token,
                key_authorization,
            } => challenges.push(Challenge::Http01 {
                name,
                token,
                key_authorization,
            }),
            WireChallenge::TlsAlpn01 {
                name,
                certificate_pem,
                key_sealed,
            } => {
                let place = format!("acme/challenges/{name}");
                match fleet_key(key)
                    .and_then(|k| k.open(&place, &key_sealed))
                    .and_then(|k| String::from_utf8(k).map_err(|_| format!("{place}: not PEM")))
                {
                    Ok(key_pem) => challenges.push(Challenge::TlsAlpn01 {
                        name,
                        certificate_pem,
                        key_pem,
                    }),
                    Err(e) => problems.push(e),
                }
            }
        }
    }
    let answering = !challenges.is_empty();
    let planes = reloader
        .publish_challenges(|pending| *pending = challenges)
        .await;
    // An empty set (challenges withdrawn) needs no data plane to answer it.
    if planes.is_empty() && answering {
        problems.push("no data plane is connected here".to_owned());
    }
    problems.extend(
        planes
            .iter()
            .filter(|p| p.result != PlaneResult::Acked)
            .map(crate::cluster::apply::plane_problem),
    );
    let error = problems.join("; ");
    delivery.set = Some((record.id.clone(), error.is_empty()));
    let lease = link.lease.load(std::sync::atomic::Ordering::Acquire);
    if lease == 0 {
        delivery.set = None;
        return Err("this node has no lease yet; the challenges are confirmed later".to_owned());
    }
    let confirmed = Confirmed {
        set: if error.is_empty() {
            record.id.clone()
        } else {
            delivery
                .recorded
                .as_ref()
                .map(|c| c.set.clone())
                .unwrap_or_default()
        },
        tried: record.id,
        error: error.clone(),
    };
    // Written only when it says something new: its own write comes back on the watch.
    if delivery.recorded.as_ref() != Some(&confirmed) {
        let key = link.fleet.key(&format!("acme/confirmed/{}", link.node()));
        if let Err(e) = link.fleet.etcd().put(&key, json(&confirmed), lease).await {
            delivery.set = None;
            return Err(e.to_string());
        }
        delivery.recorded = Some(confirmed);
    }
    if error.is_empty() { Ok(()) } else { Err(error) }
}
