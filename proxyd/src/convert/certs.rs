//! The snapshot's certificates and pending ACME challenges become what handshakes and the
//! request path use: the PEM is parsed, the key loaded with the ring provider and checked against
//! the leaf. A bad pair, or a challenge of a kind this build does not know, refuses the whole
//! snapshot.

use std::collections::HashMap;
use std::sync::Arc;

use proto::v1 as pb;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::SnapshotError;

/// A site's certificate chain and private key, ready for handshakes. Its `Debug` shows the
/// names only; it compares by the chain.
#[derive(Clone)]
pub struct SiteCertificate {
    pub key: Arc<CertifiedKey>,
    /// The names the certificate covers, as controld read them.
    pub names: Vec<String>,
    /// The leaf's notAfter, seconds since the Unix epoch.
    pub not_after_unix: u64,
}

impl PartialEq for SiteCertificate {
    fn eq(&self, other: &Self) -> bool {
        self.key.cert == other.key.cert && self.names == other.names
    }
}

impl Eq for SiteCertificate {}

impl std::fmt::Debug for SiteCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteCertificate")
            .field("names", &self.names)
            .field("not_after_unix", &self.not_after_unix)
            .finish_non_exhaustive()
    }
}

/// Every certificate of the snapshot by site name, each checked; at most one per site.
pub fn by_site(
    list: &[pb::Certificate],
) -> Result<HashMap<String, SiteCertificate>, SnapshotError> {
    let provider = rustls::crypto::ring::default_provider();
    let mut found = HashMap::new();
    for c in list {
        let fail = |reason: String| SnapshotError::Certificate {
            site: c.site.clone(),
            reason,
        };
        let checked = certificate(c, &provider).map_err(fail)?;
        if found.insert(c.site.clone(), checked).is_some() {
            return Err(fail("more than one certificate for the site".to_owned()));
        }
    }
    Ok(found)
}

/// The ACME challenges a data plane answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Challenges {
    /// HTTP-01: token → key authorization, answered on plain-HTTP listeners.
    pub http: HashMap<String, String>,
    /// TLS-ALPN-01: DNS name → the challenge certificate, for handshakes offering only
    /// `acme-tls/1`.
    pub tls_alpn: HashMap<String, SiteCertificate>,
}

/// Every pending challenge of the snapshot, checked: one that does not check refuses all.
pub fn challenges(list: &[pb::AcmeChallenge]) -> Result<Challenges, SnapshotError> {
    let provider = rustls::crypto::ring::default_provider();
    let mut found = Challenges::default();
    for c in list {
        found.add(c, &provider)?;
    }
    Ok(found)
}

impl Challenges {
    /// The challenges of an `AcmeChallenges` message: each one that checks is answered, and
    /// those that do not are named in the error (the others need not wait for them).
    pub fn delivered(list: &[pb::AcmeChallenge]) -> (Challenges, Vec<SnapshotError>) {
        let provider = rustls::crypto::ring::default_provider();
        let mut found = Challenges::default();
        let errors = list
            .iter()
            .filter_map(|c| found.add(c, &provider).err())
            .collect();
        (found, errors)
    }

    fn add(
        &mut self,
        c: &pb::AcmeChallenge,
        provider: &CryptoProvider,
    ) -> Result<(), SnapshotError> {
        let fail = |reason: String| SnapshotError::Challenge {
            name: c.name.clone(),
            reason,
        };
        match pb::AcmeChallengeType::try_from(c.r#type) {
            Ok(pb::AcmeChallengeType::Http01) => {
                let token_ok = !c.token.is_empty()
                    && c.token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !token_ok {
                    return Err(fail(format!("invalid HTTP-01 token {:?}", c.token)));
                }
                self.http
                    .insert(c.token.clone(), c.key_authorization.clone());
            }
            Ok(pb::AcmeChallengeType::TlsAlpn01) => {
                let checked = challenge_certificate(c, provider).map_err(fail)?;
                self.tls_alpn
                    .insert(c.name.trim_end_matches('.').to_ascii_lowercase(), checked);
            }
            Ok(pb::AcmeChallengeType::Unspecified) | Err(_) => {
                return Err(fail(format!("unknown challenge type {}", c.r#type)));
            }
        }
        Ok(())
    }
}

/// A TLS-ALPN-01 challenge certificate and its key. Not checked against each other with
/// `keys_match`: webpki refuses to parse a certificate with the critical acmeIdentifier
/// extension, which is exactly what this one must carry.
fn challenge_certificate(
    c: &pb::AcmeChallenge,
    provider: &CryptoProvider,
) -> Result<SiteCertificate, String> {
    let key = certified_key(&c.certificate_pem, &c.key_pem, provider)
        .map_err(|e| format!("challenge certificate: {e}"))?;
    Ok(SiteCertificate {
        key: Arc::new(key),
        names: vec![c.name.clone()],
        not_after_unix: 0,
    })
}

/// A PEM chain and key, loaded for rustls (not checked against each other); the error never
/// holds key material.
fn certified_key(
    chain_pem: &str,
    key_pem: &str,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate in the chain".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("no usable private key ({e})"))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    Ok(CertifiedKey::new(chain, signing_key))
}

/// Parses and checks one certificate of the snapshot; the error never holds key material.
pub fn certificate(
    c: &pb::Certificate,
    provider: &CryptoProvider,
) -> Result<SiteCertificate, String> {
    let key = certified_key(&c.chain_pem, &c.key_pem, provider)?;
    key.keys_match().map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            "the private key does not match the certificate".to_owned()
        }
        other => format!("cannot check the private key against the certificate: {other}"),
    })?;
    Ok(SiteCertificate {
        key: Arc::new(key),
        names: c.names.clone(),
        not_after_unix: c.not_after_unix,
    })
}

/// A self-signed certificate for `names` with its key, for tests here and in `runtime`.
#[cfg(test)]
pub fn test_pem(names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

/// [`test_pem`], checked and loaded.
#[cfg(test)]
pub fn test_certificate(names: &[&str]) -> SiteCertificate {
    let (chain_pem, key_pem) = test_pem(names);
    let c = pb::Certificate {
        chain_pem,
        key_pem,
        ..Default::default()
    };
    certificate(&c, &rustls::crypto::ring::default_provider()).unwrap()
}
