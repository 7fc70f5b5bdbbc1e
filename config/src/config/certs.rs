//! Site certificates from `tls = { cert_file, key_file }`: read once per load and checked
//! (readable PEM, the key matches, the names cover the site, not expired) before they can go
//! into a snapshot. Every failure is a message that validation puts at `sites[N].tls`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::file::{FileConfig, TlsFile};
use super::model::{Certificate, Hostname};

/// A certificate that expires sooner than this is accepted with a warning in the reload reply.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// A PEM file larger than this is refused before it is parsed (a long chain is a few KiB).
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The certificate files a config names, as read: text, or why it could not be read.
pub type Files = HashMap<PathBuf, Result<String, String>>;

/// What one load may read and keep of the files a config names, counted once per place that
/// names a file (each place gets a copy into the model and the snapshot): far above any real
/// config (a few chains and CA bundles), and within what a snapshot may carry.
pub const MAX_NAMED_FILE_BYTES: u64 = 48 * 1024 * 1024;

/// Distinct files (after resolving `..` and links) one load may read.
pub const MAX_NAMED_FILES: usize = 1024;

/// Reads every file the config names for TLS, once each, off the validation (which then does
/// no I/O): the `cert_file` and `key_file` of each site, and the `ca_file`, `client_cert_file`
/// and `client_key_file` of each `upstream_tls` of a site or a route.
///
/// Bounded (any member of the control socket's group may ask for a validation): a file named
/// by several spellings (`../` variants, links) is read once, at most [`MAX_NAMED_FILES`]
/// distinct files are read, and when the files add up to more than [`MAX_NAMED_FILE_BYTES`],
/// counted once per place that names them, every file is refused, so the config is.
pub fn read_files(file: &FileConfig) -> Files {
    let mut files = Files::new();
    // Each distinct file (by canonical path) and the spelling it was first read under.
    let mut by_canonical: HashMap<PathBuf, PathBuf> = HashMap::new();
    let mut named_bytes: u64 = 0;
    // Past the budget nothing more is read or copied; every file is refused at the end.
    let mut over = false;
    let mut read = |path: &Option<String>, key: &str| {
        let Some(path) = path.as_deref().filter(|p| !p.is_empty()) else {
            return;
        };
        if over {
            return;
        }
        let written = PathBuf::from(path);
        if let Some(read) = files.get(&written) {
            over = !within_budget(&mut named_bytes, read);
            return;
        }
        let read = match std::fs::canonicalize(&written) {
            // Unresolvable: read_pem says why, with the path as written.
            Err(_) => read_pem(&written, key),
            Ok(canonical) => match by_canonical.get(&canonical) {
                Some(first) => files
                    .get(first)
                    .cloned()
                    .unwrap_or_else(|| read_pem(&written, key)),
                None if by_canonical.len() >= MAX_NAMED_FILES => Err(format!(
                    "{key} {path}: more than {MAX_NAMED_FILES} distinct files named by one config"
                )),
                None => {
                    // Within the budget before it is read, by its size on disk.
                    let size = std::fs::metadata(&canonical).map_or(0, |m| m.len());
                    if named_bytes.saturating_add(size.min(MAX_PEM_BYTES + 1))
                        > MAX_NAMED_FILE_BYTES
                    {
                        over = true;
                        return;
                    }
                    by_canonical.insert(canonical, written.clone());
                    read_pem(&written, key)
                }
            },
        };
        over = !within_budget(&mut named_bytes, &read);
        files.insert(written, read);
    };
    for site in &file.sites {
        if let Some(TlsFile::Files(f)) = &site.tls {
            read(&f.cert_file, "cert_file");
            read(&f.key_file, "key_file");
        }
        let routes = site.routes.iter().map(|r| &r.upstream_tls);
        for tls in std::iter::once(&site.upstream_tls).chain(routes).flatten() {
            read(&tls.ca_file, "ca_file");
            read(&tls.client_cert_file, "client_cert_file");
            read(&tls.client_key_file, "client_key_file");
        }
    }
    if over {
        for (path, read) in files.iter_mut() {
            *read = Err(format!(
                "{}: the files this config names add up to more than {} MiB (counted once per \
                 place that names them); name fewer, or smaller, files",
                path.display(),
                MAX_NAMED_FILE_BYTES / (1024 * 1024)
            ));
        }
    }
    files
}

/// Adds what `read` holds to `named`; whether that stays within [`MAX_NAMED_FILE_BYTES`].
fn within_budget(named: &mut u64, read: &Result<String, String>) -> bool {
    let len = read.as_ref().map_or(0, |t| t.len() as u64);
    *named = named.saturating_add(len);
    *named <= MAX_NAMED_FILE_BYTES
}

/// Checks the pair of files of a site serving `hostnames`, as read; on failure, every problem
/// found (none of them names key material).
pub fn check_files(
    cert: (&Path, Result<String, String>),
    key: (&Path, Result<String, String>),
    hostnames: &[Hostname],
    now: SystemTime,
) -> Result<Certificate, Vec<String>> {
    check_named_files(cert, key, ("cert_file", "key_file"), hostnames, now)
}

/// Checks an upstream client certificate and its key, as read, like a site's pair (readable
/// PEM, the key matches the leaf, not expired) but without names to cover.
pub fn check_client_files(
    cert: (&Path, Result<String, String>),
    key: (&Path, Result<String, String>),
    now: SystemTime,
) -> Result<Certificate, Vec<String>> {
    check_named_files(cert, key, ("client_cert_file", "client_key_file"), &[], now)
}

/// Checks `upstream_tls.ca_file`, as read: PEM with at least one certificate, each of which
/// parses. Returns how many it holds.
pub fn check_ca(path: &Path, pem: &str) -> Result<usize, String> {
    let certificates = chain(pem, path, "ca_file")?;
    for der in &certificates {
        x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("ca_file {}: invalid certificate: {e}", path.display()))?;
    }
    Ok(certificates.len())
}

/// [`check_files`], with the keys that name the two files in messages.
fn check_named_files(
    (cert_file, chain_pem): (&Path, Result<String, String>),
    (key_file, key_pem): (&Path, Result<String, String>),
    (cert_key, key_key): (&str, &str),
    hostnames: &[Hostname],
    now: SystemTime,
) -> Result<Certificate, Vec<String>> {
    let chain_pem = chain_pem.map_err(|e| vec![e])?;
    let key_pem = key_pem.map_err(|e| vec![e])?;
    let chain = chain(&chain_pem, cert_file, cert_key).map_err(|e| vec![e])?;
    let key = private_key(&key_pem, key_file, key_key).map_err(|e| vec![e])?;
    let leaf = Leaf::parse(&chain[0], cert_file, cert_key).map_err(|e| vec![e])?;
    let mut problems = Vec::new();
    if let Err(e) = check_pair(chain, key, cert_file, key_file, key_key) {
        problems.push(e);
    }
    let uncovered: Vec<&str> = hostnames
        .iter()
        .map(Hostname::as_str)
        .filter(|h| !leaf.names.iter().any(|n| covers(n, h)))
        .collect();
    if !uncovered.is_empty() {
        problems.push(format!(
            "the certificate in {} does not cover {} (its names: {})",
            cert_file.display(),
            uncovered.join(", "),
            if leaf.names.is_empty() {
                "none".to_owned()
            } else {
                leaf.names.join(", ")
            }
        ));
    }
    if leaf.not_after <= now {
        problems.push(format!(
            "the certificate in {} expired on {}",
            cert_file.display(),
            humantime::format_rfc3339_seconds(leaf.not_after)
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Certificate {
        names: leaf.names,
        chain_pem,
        key_pem,
        not_before: leaf.not_before,
        not_after: leaf.not_after,
        serial: leaf.serial,
    })
}

/// Checks a chain and its key held as PEM text (the ACME store keeps them so): readable PEM, a
/// key rustls can sign with that matches the leaf. `origin` names where they came from in the
/// messages, which never hold key material. Names and expiry are the caller's to judge.
pub fn check_pem(chain_pem: &str, key_pem: &str, origin: &Path) -> Result<Certificate, String> {
    let chain = chain(chain_pem, origin, "cert_file")?;
    let key = private_key(key_pem, origin, "key_file")?;
    let leaf = Leaf::parse(&chain[0], origin, "cert_file")?;
    check_pair(chain, key, origin, origin, "key_file")?;
    Ok(Certificate {
        names: leaf.names,
        chain_pem: chain_pem.to_owned(),
        key_pem: key_pem.to_owned(),
        not_before: leaf.not_before,
        not_after: leaf.not_after,
        serial: leaf.serial,
    })
}

/// Whether certificate name `name` covers site hostname `host`: the same name, or a one-label
/// wildcard (`*.example.com` covers `a.example.com`, not `example.com` or `a.b.example.com`).
/// A site wildcard needs the same wildcard in the certificate.
pub fn covers(name: &str, host: &str) -> bool {
    if name == host {
        return true;
    }
    if host.starts_with("*.") {
        return false;
    }
    match (name.strip_prefix("*."), host.split_once('.')) {
        (Some(suffix), Some((label, parent))) => !label.is_empty() && parent == suffix,
        _ => false,
    }
}

/// A warning when `certificate` expires within [`EXPIRY_WARNING`] of `now`.
pub fn expiry_warning(site: &str, certificate: &Certificate, now: SystemTime) -> Option<String> {
    expiry_warning_of(&format!("the certificate of site {site}"), certificate, now)
}

/// [`expiry_warning`] for any certificate, `what` naming it ("the certificate of site a.test").
pub fn expiry_warning_of(what: &str, certificate: &Certificate, now: SystemTime) -> Option<String> {
    let left = certificate.not_after.duration_since(now).ok()?;
    if left >= EXPIRY_WARNING {
        return None;
    }
    Some(format!(
        "{what} expires on {} (in {} days): renew it",
        humantime::format_rfc3339_seconds(certificate.not_after),
        left.as_secs() / 86_400
    ))
}

/// Reads a PEM file whole (size-capped) as text.
fn read_pem(path: &Path, key: &str) -> Result<String, String> {
    let fail = |e: std::io::Error| format!("{key} {}: cannot read it: {e}", path.display());
    let bytes = super::read_regular(path, MAX_PEM_BYTES).map_err(fail)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!(
            "{key} {}: larger than {MAX_PEM_BYTES} bytes",
            path.display()
        ));
    }
    String::from_utf8(bytes).map_err(|_| format!("{key} {}: not a PEM file", path.display()))
}

/// Every certificate of the chain file (`key` names it in messages), leaf first; at least one.
fn chain(pem: &str, path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key} {}: invalid PEM: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{key} {}: no \"BEGIN CERTIFICATE\" block",
            path.display()
        ));
    }
    Ok(chain)
}

/// The first private key of the key file (PKCS#8, PKCS#1 or SEC1).
fn private_key(pem: &str, path: &Path, key: &str) -> Result<PrivateKeyDer<'static>, String> {
    // The parser's error names a PEM section or I/O, never key bytes.
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("{key} {}: no usable PEM private key ({e})", path.display()))
}

/// The key must be one rustls can sign with (RSA, ECDSA P-256/P-384, Ed25519) and match the
/// leaf's public key.
fn check_pair(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_file: &Path,
    key_file: &Path,
    key_key: &str,
) -> Result<(), String> {
    let provider = rustls::crypto::ring::default_provider();
    let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
        format!(
            "{key_key} {}: unsupported private key: {e}",
            key_file.display()
        )
    })?;
    CertifiedKey::new(chain, signing_key)
        .keys_match()
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => format!(
                "the private key in {} does not match the certificate in {}",
                key_file.display(),
                cert_file.display()
            ),
            other => format!(
                "cannot check that the private key in {} matches the certificate in {}: {other}",
                key_file.display(),
                cert_file.display()
            ),
        })
}

/// What the checks need from the leaf certificate.
struct Leaf {
    names: Vec<String>,
    not_before: SystemTime,
    not_after: SystemTime,
    serial: String,
}

impl Leaf {
    fn parse(der: &CertificateDer<'_>, path: &Path, key: &str) -> Result<Leaf, String> {
        let invalid = |e: String| format!("{key} {}: invalid certificate: {e}", path.display());
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| invalid(e.to_string()))?;
        let names = match cert
            .subject_alternative_name()
            .map_err(|e| invalid(e.to_string()))?
        {
            Some(san) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(name) => {
                        Some(name.trim_end_matches('.').to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect(),
            None => Vec::new(),
        };
        let time = |t: x509_parser::time::ASN1Time| {
            u64::try_from(t.timestamp())
                .map_or(UNIX_EPOCH, |secs| UNIX_EPOCH + Duration::from_secs(secs))
        };
        let not_before = time(cert.validity().not_before);
        let not_after = time(cert.validity().not_after);
        let serial = cert
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Leaf {
            names,
            not_before,
            not_after,
            serial,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_hosts_exactly_or_by_one_label_wildcard() {
        assert!(covers("example.com", "example.com"));
        assert!(covers("*.example.com", "www.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", "a.b.example.com"));
        assert!(!covers("example.com", "www.example.com"));
        assert!(covers("*.example.com", "*.example.com"));
        assert!(
            !covers("www.example.com", "*.example.com"),
            "a site wildcard needs a wildcard name"
        );
        assert!(!covers("*.other.com", "*.example.com"));
    }
}
