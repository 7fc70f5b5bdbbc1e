//! ACME once per fleet, on etcd ([`crate::acme::FleetAcme`]): the issuer's election, the
//! fleet's account, certificates and back-off, and the challenges every node answers.
//!
//! Under `/proxy/fleets/<name>/acme/`:
//!
//! - `issuer`: the node issuing now, `{"node", "instance"}`, under that node's lease: when its
//!   controld goes, the key goes with the lease and another node takes it.
//! - `accounts/<id>`: the fleet's account at one CA, its credentials sealed with the fleet key.
//! - `certs/<site>`: each site's certificate chain, its key sealed with the fleet key.
//! - `backoff`: the failed attempts, as a single host keeps them in its state directory.
//! - `challenges`: the challenges being completed, one set with a generation (a TLS-ALPN-01
//!   challenge's key sealed too).
//! - `confirmed/<node>`: the generation each node's data planes answer, under its lease.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::link::{Link, RETRY_FIRST, RETRY_MAX};
use super::secret::FleetKey;
use crate::acme::{Backoff, FleetAcme, FleetCertificate};
use crate::challenges::Challenge;
use crate::config::Certificate;
use crate::reloader::{BoxFuture, unix_ms};

/// How often every node reads the fleet's certificates and challenges again, whatever its
/// watch said.
const RESYNC_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
struct Issuer {
    node: String,
    instance: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct AccountRecord {
    directory_url: String,
    sealed: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct CertRecord {
    site: String,
    chain_pem: String,
    key_sealed: String,
    serial: String,
    not_after_unix_ms: u64,
    node: String,
    at_unix_ms: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ChallengesRecord {
    generation: u64,
    /// Random, one per set: what nodes confirm (a number could start again from 1 if the key
    /// were lost, and old confirmations would pass for new ones).
    #[serde(default)]
    id: String,
    challenges: Vec<WireChallenge>,
}

/// A challenge as etcd keeps it: a TLS-ALPN-01 challenge's key sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
enum WireChallenge {
    #[serde(rename = "http-01")]
    Http01 {
        name: String,
        token: String,
        key_authorization: String,
    },
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01 {
        name: String,
        certificate_pem: String,
        key_sealed: String,
    },
}

impl WireChallenge {
    fn name(&self) -> &str {
        match self {
            WireChallenge::Http01 { name, .. } | WireChallenge::TlsAlpn01 { name, .. } => name,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize, Clone, PartialEq, Eq)]
struct Confirmed {
    /// The last set (its id) this node's data planes all answer.
    set: String,
    /// The last set it tried, and why its data planes do not answer it (empty: they do).
    tried: String,
    error: String,
}

/// The fleet's side of ACME for one node.
pub struct FleetAcmeLink {
    link: Arc<Link>,
    key: Option<Arc<FleetKey>>,
    ack_timeout: Duration,
    /// The revision of the issuer key when this node last found it holds it; 0 when it does
    /// not. The issuer's writes are guarded by it.
    issuer_revision: std::sync::atomic::AtomicI64,
}

impl FleetAcmeLink {
    pub fn new(link: Arc<Link>, key: Option<Arc<FleetKey>>, ack_timeout: Duration) -> Self {
        FleetAcmeLink {
            link,
            key,
            ack_timeout,
            issuer_revision: std::sync::atomic::AtomicI64::new(0),
        }
    }
}

/// The fleet key, or why there is none.
fn fleet_key(key: Option<&FleetKey>) -> Result<&FleetKey, String> {
    key.ok_or_else(|| {
        "this host has no fleet key ([cluster] key_file): it cannot read or write the fleet's \
         ACME secrets"
            .to_owned()
    })
}

fn account_place(directory_url: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(directory_url.as_bytes());
    let id: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("acme/accounts/{id}")
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn time_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl FleetAcmeLink {
    /// Puts `value` at `place` under the fleet's prefix (or deletes it: `None`), only while this
    /// node still holds the issuer key as it last saw it: an issuer whose lease lapsed in the
    /// middle of an attempt never overwrites what the next one wrote.
    async fn put(&self, place: &str, value: Option<Vec<u8>>) -> Result<(), String> {
        let revision = self
            .issuer_revision
            .load(std::sync::atomic::Ordering::Acquire);
        if revision == 0 {
            return Err("this node is not the fleet's ACME issuer (any more)".to_owned());
        }
        let key = self.link.fleet.key(place);
        let (puts, deletes) = match value {
            Some(value) => (vec![(key, value)], Vec::new()),
            None => (Vec::new(), vec![key]),
        };
        let written = self
            .link
            .fleet
            .etcd()
            .put_if(&self.link.fleet.key("acme/issuer"), revision, puts, deletes)
            .await
            .map_err(|e| e.to_string())?;
        match written {
            Some(_) => Ok(()),
            None => Err(
                "this node is no longer the fleet's ACME issuer (its lease lapsed): nothing written"
                    .to_owned(),
            ),
        }
    }

    async fn issuer(&self) -> Result<bool, String> {
        let lease = self.link.lease.load(std::sync::atomic::Ordering::Acquire);
        if lease == 0 {
            return Ok(false);
        }
        let instance = self
            .link
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .instance
            .clone();
        let key = self.link.fleet.key("acme/issuer");
        let etcd = self.link.fleet.etcd();
        let mine = |kv: &super::etcd::KeyValue| {
            kv.lease == lease
                && serde_json::from_slice::<Issuer>(&kv.value)
                    .is_ok_and(|i| i.node == self.link.node() && i.instance == instance)
        };
        let (kv, _) = etcd.get(&key).await.map_err(|e| e.to_string())?;
        let held = |kv: &super::etcd::KeyValue| {
            let ours = mine(kv);
            // What this node writes as the issuer is guarded by the key as it holds it.
            self.issuer_revision.store(
                if ours { kv.mod_revision } else { 0 },
                std::sync::atomic::Ordering::Release,
            );
            ours
        };
        if let Some(kv) = kv {
            return Ok(held(&kv));
        }
        let me = Issuer {
            node: self.link.node().to_owned(),
            instance: instance.clone(),
        };
        // A create whose answer was lost may have landed: the key says.
        let _ = etcd.create(&key, json(&me), lease).await;
        let (kv, _) = etcd.get(&key).await.map_err(|e| e.to_string())?;
        Ok(kv.is_some_and(|kv| held(&kv)))
    }

    async fn put_challenges(
        &self,
        names: &[String],
        answers: Vec<Challenge>,
    ) -> Result<String, String> {
        let key = self.link.fleet.key("acme/challenges");
        let etcd = self.link.fleet.etcd();
        let mut wire = Vec::new();
        for answer in answers {
            wire.push(match answer {
                Challenge::Http01 {
                    name,
                    token,
                    key_authorization,
                } => WireChallenge::Http01 {
                    name,
                    token,
                    key_authorization,
                },
                Challenge::TlsAlpn01 {
                    name,
                    certificate_pem,
                    key_pem,
                } => {
                    let place = format!("acme/challenges/{name}");
                    WireChallenge::TlsAlpn01 {
                        key_sealed: fleet_key(self.key.as_deref())?
                            .seal(&place, key_pem.as_bytes())?,
                        name,
                        certificate_pem,
                    }
                }
            });
        }
        for _ in 0..16 {
            let (kv, _) = etcd.get(&key).await.map_err(|e| e.to_string())?;
            let revision = kv.as_ref().map_or(0, |kv| kv.mod_revision);
            let mut record: ChallengesRecord = kv
                .and_then(|kv| serde_json::from_slice(&kv.value).ok())
                .unwrap_or_default();
            record
                .challenges
                .retain(|c| !names.iter().any(|n| n == c.name()));
            record.challenges.extend(wire.iter().cloned());
            record.generation = record.generation.wrapping_add(1);
            record.id = format!("{:016x}", fastrand::u64(..));
            let written = etcd
                .put_if(
                    &key,
                    revision,
                    vec![(key.clone(), json(&record))],
                    Vec::new(),
                )
                .await
                .map_err(|e| e.to_string())?;
            if written.is_some() {
                return Ok(record.id);
            }
        }
        Err("the fleet's ACME challenges kept changing under this issuer".to_owned())
    }

    /// Waits until every live node's data planes answer the challenge set `set`.
    async fn wait_confirmed(&self, set: &str) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + self.ack_timeout + Duration::from_secs(2);
        let prefix = self.link.fleet.key("acme/confirmed/");
        loop {
            let nodes = self.link.fleet.nodes().await.map_err(|e| e.to_string())?;
            let (kvs, _) = self
                .link
                .fleet
                .etcd()
                .prefix(&prefix)
                .await
                .map_err(|e| e.to_string())?;
            let confirmed: BTreeMap<String, Confirmed> = kvs
                .iter()
                .filter_map(|kv| {
                    let node = String::from_utf8_lossy(kv.key.get(prefix.len()..)?).into_owned();
                    Some((node, serde_json::from_slice(&kv.value).ok()?))
                })
                .collect();
            let mut waiting = Vec::new();
            for node in &nodes {
                match confirmed.get(&node.node) {
                    Some(c) if c.set == set => {}
                    Some(c) if c.tried == set && !c.error.is_empty() => {
                        return Err(format!(
                            "node {} cannot answer the ACME challenges: {}",
                            node.node, c.error
                        ));
                    }
                    _ => waiting.push(node.node.clone()),
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "node(s) {} did not answer the ACME challenges in time; the CA may reach \
                     any host, so it was not asked to validate",
                    waiting.join(", ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl FleetAcme for FleetAcmeLink {
    fn is_issuer(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            match self.issuer().await {
                Ok(issuer) => issuer,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot tell the fleet's ACME issuer");
                    false
                }
            }
        })
    }

    fn load_account(
        &self,
        directory_url: String,
    ) -> BoxFuture<'_, Result<Option<Vec<u8>>, String>> {
        Box::pin(async move {
            let place = account_place(&directory_url);
            let key = self.link.fleet.key(&place);
            let (kv, _) = self
                .link
                .fleet
                .etcd()
                .get(&key)
                .await
                .map_err(|e| e.to_string())?;
            let Some(kv) = kv else { return Ok(None) };
            let record: AccountRecord = serde_json::from_slice(&kv.value)
                .map_err(|e| format!("{place}: unreadable: {e}"))?;
            fleet_key(self.key.as_deref())?
                .open(&place, &record.sealed)
                .map(Some)
        })
    }

    fn save_account(
        &self,
        directory_url: String,
        json_bytes: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let place = account_place(&directory_url);
            let record = AccountRecord {
                sealed: fleet_key(self.key.as_deref())?.seal(&place, &json_bytes)?,
                directory_url,
            };
            self.put(&place, Some(json(&record))).await
        })
    }

    fn forget_account(&self, directory_url: String) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.put(&account_place(&directory_url), None).await })
    }

    fn certificates(&self) -> BoxFuture<'_, Result<BTreeMap<String, FleetCertificate>, String>> {
        Box::pin(async move {
            let records = read_certs(&self.link).await?;
            Ok(records
                .into_iter()
                .map(|r| {
                    (
                        r.site,
                        FleetCertificate {
                            serial: r.serial,
                            not_after: time_ms(r.not_after_unix_ms),
                        },
                    )
                })
                .collect())
        })
    }

    fn save_certificate(
        &self,
        site: String,
        certificate: Certificate,
    ) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let place = format!("acme/certs/{site}");
            let record = CertRecord {
                key_sealed: fleet_key(self.key.as_deref())?
                    .seal(&place, certificate.key_pem.as_bytes())?,
                site,
                chain_pem: certificate.chain_pem,
                serial: certificate.serial,
                not_after_unix_ms: unix_ms(certificate.not_after),
                node: self.link.node().to_owned(),
                at_unix_ms: unix_ms(SystemTime::now()),
            };
            self.put(&place, Some(json(&record))).await
        })
    }

    fn load_backoff(&self) -> BoxFuture<'_, Result<BTreeMap<String, Backoff>, String>> {
        Box::pin(async move {
            let key = self.link.fleet.key("acme/backoff");
            let (kv, _) = self
                .link
                .fleet
                .etcd()
                .get(&key)
                .await
                .map_err(|e| e.to_string())?;
            Ok(kv
                .and_then(|kv| serde_json::from_slice(&kv.value).ok())
                .unwrap_or_default())
        })
    }

    fn save_backoff(&self, state: BTreeMap<String, Backoff>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.put("acme/backoff", Some(json(&state))).await })
    }

    fn deliver_challenges(
        &self,
        names: Vec<String>,
        answers: Vec<Challenge>,
    ) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let withdraw = answers.is_empty();
            let set = self.put_challenges(&names, answers).await?;
            if withdraw {
                return Ok(());
            }
            self.wait_confirmed(&set).await
        })
    }
}

async fn read_certs(link: &Link) -> Result<Vec<CertRecord>, String> {
    let (kvs, _) = link
        .fleet
        .etcd()
        .prefix(&link.fleet.key("acme/certs/"))
        .await
        .map_err(|e| e.to_string())?;
    Ok(kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

mod follow;

pub use follow::follow_acme;
