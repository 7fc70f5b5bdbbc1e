//! The HTTPS client controld talks to the ACME CA with: rustls with the ring provider, trusting
//! `acme.ca_roots` when set (a test CA such as Pebble) and the system's roots otherwise; and it
//! notes the Retry-After of every error answer, which instant-acme does not surface.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::transport::{Roots, Unanswered};
use crate::config::AcmeConfig;

/// The latest Retry-After a CA answered an error with, shared with the issuer.
pub type RetryAfter = Arc<Mutex<Option<SystemTime>>>;

/// No single exchange with the CA may take longer than this (connect, TLS, answer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct CaClient {
    inner: Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    retry_after: RetryAfter,
    roots: Roots,
}

impl CaClient {
    /// A client for the CA of `acme`. Fails when `ca_roots` cannot be read or holds no
    /// certificate, or when the system has no roots.
    pub fn new(acme: &AcmeConfig, retry_after: RetryAfter) -> Result<CaClient, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match &acme.ca_roots {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("acme.ca_roots {}: {e}", path.display()))?;
                let mut roots = rustls::RootCertStore::empty();
                for der in CertificateDer::pem_slice_iter(&pem) {
                    let der = der.map_err(|e| format!("acme.ca_roots {}: {e}", path.display()))?;
                    roots
                        .add(der)
                        .map_err(|e| format!("acme.ca_roots {}: {e}", path.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!(
                        "acme.ca_roots {}: no certificate in it",
                        path.display()
                    ));
                }
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                builder.with_tls_config(config)
            }
            None => builder
                .with_provider_and_native_roots(provider)
                .map_err(|e| format!("loading the system's root certificates: {e}"))?,
        };
        let connector = builder
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        Ok(CaClient {
            inner: Client::builder(TokioExecutor::new()).build(connector),
            retry_after,
            roots: match acme.ca_roots {
                Some(_) => Roots::Configured,
                None => Roots::System,
            },
        })
    }
}

impl HttpClient for CaClient {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let url = req.uri().to_string();
        let host = req.uri().host().unwrap_or_default().to_owned();
        let roots = self.roots;
        let response = self.inner.request(req);
        let slot = self.retry_after.clone();
        Box::pin(async move {
            // hyper-util says only "client error (Connect)": the cause is named from its
            // source chain (refused, DNS, which certificate TLS refused and why).
            let response = match tokio::time::timeout(REQUEST_TIMEOUT, response).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    let why = Unanswered::new(&url, &host, roots, e.is_connect(), &e);
                    return Err(instant_acme::Error::Other(Box::new(why)));
                }
                Err(_) => {
                    let why = Unanswered::timed_out(&url, REQUEST_TIMEOUT);
                    return Err(instant_acme::Error::Other(Box::new(why)));
                }
            };
            let status = response.status();
            if (status.is_client_error() || status.is_server_error())
                && let Some(at) = retry_after(response.headers(), SystemTime::now())
            {
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
            }
            Ok(BytesResponse::from(response))
        })
    }
}

/// A Retry-After header (seconds or an HTTP date) as a point in time.
fn retry_after(headers: &http::HeaderMap, now: SystemTime) -> Option<SystemTime> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    match value.parse::<u64>() {
        Ok(secs) => Some(now + Duration::from_secs(secs)),
        Err(_) => humantime::parse_rfc3339(value)
            .ok()
            .or_else(|| httpdate(value)),
    }
}

/// An IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"), the form servers send.
fn httpdate(value: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? + 1;
    let rfc3339 = format!("{year}-{month:02}-{day:0>2}T{time}Z");
    humantime::parse_rfc3339(&rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut h = http::HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert(http::header::RETRY_AFTER, "120".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(now + Duration::from_secs(120)));
        h.insert(
            http::header::RETRY_AFTER,
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(
            retry_after(&h, now),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        h.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
    }
}
