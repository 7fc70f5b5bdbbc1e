//! One issuance: order → challenges delivered to the data planes and answered by each → the CA
//! told to validate → a new ECDSA P-256 key and its CSR → the certificate chain.

use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};

use crate::challenges::Challenge;
use crate::config::AcmeChallenge;
use crate::dataplanes::PlaneResult;
use crate::reloader::Reloader;

/// How long the CA may take to validate the challenges, and then to issue.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(90);

/// A new certificate chain (PEM, leaf first) and its private key (PEM, PKCS#8).
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// Why an attempt failed, in the operator's terms; never holds key material.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("{0}")]
    Acme(#[from] instant_acme::Error),
    #[error("{0}")]
    Other(String),
}

impl IssueError {
    /// The CA no longer knows the account (a test CA restarted, say): a new one is needed.
    pub fn unknown_account(&self) -> bool {
        matches!(self, IssueError::Acme(instant_acme::Error::Api(p))
            if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist"))
    }
}

fn other(text: impl Into<String>) -> IssueError {
    IssueError::Other(text.into())
}

/// Orders a certificate for `names` (the hostnames of `site`) and proves control of each name
/// with `challenge`. The challenges it delivers stay with the data planes: the caller withdraws
/// them once the attempt is over, whatever its outcome.
pub async fn issue(
    account: &Account,
    reloader: &Reloader,
    fleet: Option<&dyn super::FleetAcme>,
    site: &str,
    names: &[String],
    challenge: AcmeChallenge,
) -> Result<Issued, IssueError> {
    let identifiers: Vec<Identifier> = names.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let wanted = match challenge {
        AcmeChallenge::Http01 => ChallengeType::Http01,
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };

    // First pass: what each pending authorization needs answered. Valid ones (reused by the CA)
    // need nothing.
    let mut answers = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        let name = authorization.identifier().to_string();
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            status => {
                return Err(other(format!(
                    "the CA's authorization for {name} is {status:?}"
                )));
            }
        }
        let handle = authorization.challenge(wanted.clone()).ok_or_else(|| {
            other(format!(
                "the CA offers no {} challenge for {name}",
                challenge.as_str()
            ))
        })?;
        let key_authorization = handle.key_authorization();
        answers.push(match challenge {
            AcmeChallenge::Http01 => Challenge::Http01 {
                name,
                token: handle.token.clone(),
                key_authorization: key_authorization.as_str().to_owned(),
            },
            AcmeChallenge::TlsAlpn01 => {
                let (certificate_pem, key_pem) =
                    alpn_certificate(&name, key_authorization.digest().as_ref())?;
                Challenge::TlsAlpn01 {
                    name,
                    certificate_pem,
                    key_pem,
                }
            }
        });
    }

    if !answers.is_empty() {
        // In a fleet, every live node answers them: the CA may reach any host.
        if let Some(fleet) = fleet {
            fleet
                .deliver_challenges(names.to_vec(), answers)
                .await
                .map_err(other)?;
        } else {
            deliver_here(reloader, site, names, answers).await?;
        }
        // Second pass: no network, the states are cached; tell the CA to validate.
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization?;
            if authorization.status != AuthorizationStatus::Pending {
                continue;
            }
            if let Some(mut handle) = authorization.challenge(wanted.clone()) {
                handle.set_ready().await?;
            }
        }
    }
    finish_order(order, names).await
}

/// Delivers `answers` to this host's data planes and returns once each answers them.
async fn deliver_here(
    reloader: &Reloader,
    site: &str,
    names: &[String],
    answers: Vec<Challenge>,
) -> Result<(), IssueError> {
    {
        // The CA may look only once every data plane answers them. Challenges are not config:
        // a data plane that refuses the serving config answers them all the same.
        let planes = reloader
            .publish_challenges(|pending| {
                pending.retain(|c| !names.iter().any(|n| n == c.name()));
                pending.extend(answers);
            })
            .await;
        if planes.is_empty() {
            return Err(other(
                "no data plane is connected to answer the ACME challenge",
            ));
        }
        if let Some(p) = planes.iter().find(|p| p.result != PlaneResult::Acked) {
            return Err(other(format!(
                "data plane {} cannot answer the ACME challenge for {site} ({:?}{})",
                p.node_id,
                p.result,
                if p.error.is_empty() {
                    String::new()
                } else {
                    format!(": {}", p.error)
                }
            )));
        }
    }
    Ok(())
}

/// Waits for the CA to validate, then finalizes with a new key and fetches the chain.
async fn finish_order(
    mut order: instant_acme::Order,
    names: &[String],
) -> Result<Issued, IssueError> {
    let policy = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(VALIDATION_TIMEOUT);
    match order.poll_ready(&policy).await? {
        OrderStatus::Ready => {}
        status => {
            let reason = invalid_reason(&mut order).await;
            return Err(other(format!(
                "the CA did not validate the challenges (order {status:?}){reason}"
            )));
        }
    }

    // A new key per certificate, ECDSA P-256.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| other(format!("generating a key: {e}")))?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| other(format!("building the CSR: {e}")))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| other(format!("building the CSR: {e}")))?;
    order.finalize_csr(csr.der()).await?;
    let chain_pem = order.poll_certificate(&policy).await?;
    Ok(Issued {
        chain_pem,
        key_pem: key.serialize_pem(),
    })
}

/// What the CA said about the failed challenges, as ": name: detail; ...".
async fn invalid_reason(order: &mut instant_acme::Order) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authorization)) = authorizations.next().await {
        let name = authorization.identifier().to_string();
        let Ok(state) = authorization.refresh().await else {
            continue;
        };
        for c in &state.challenges {
            if let Some(problem) = &c.error {
                reasons.push(format!("{name}: {problem}"));
            }
        }
    }
    if reasons.is_empty() {
        String::new()
    } else {
        format!(": {}", reasons.join("; "))
    }
}

/// The TLS-ALPN-01 challenge certificate for `name` (RFC 8737): self-signed, a fresh P-256 key,
/// the critical acmeIdentifier extension holding the SHA-256 of the key authorization.
pub fn alpn_certificate(name: &str, digest: &[u8]) -> Result<(String, String), IssueError> {
    let fail = |e: rcgen::Error| other(format!("building the TLS-ALPN-01 certificate: {e}"));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail)?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(fail)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(fail)?;
    Ok((cert.pem(), key.serialize_pem()))
}
