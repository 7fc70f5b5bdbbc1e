//! A site's `tls`: what it asks for, the certificate files it names (read and checked), and
//! `default_tls_site`.

use super::*;

/// What a site's `tls` asks for, before its certificate files are read.
pub(super) enum TlsWanted {
    None,
    Files {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
    Acme,
}

pub(super) fn site_tls(
    tls: Option<&TlsFile>,
    at: &KeyPath,
    statics: &StaticConfig,
    p: &mut Problems,
) -> TlsWanted {
    let tls = match tls {
        None => return TlsWanted::None,
        Some(TlsFile::Mode(mode)) if mode == "acme" => {
            if statics.acme.is_none() {
                p.push(at.clone(), "tls = \"acme\" needs an [acme] section");
            }
            if statics
                .cluster
                .as_ref()
                .is_some_and(|c| c.key_file.is_none())
            {
                // The fleet's issuer keeps the certificates' private keys in etcd, encrypted
                // with the fleet key (docs/fleets.md).
                p.push(
                    at.clone(),
                    "tls = \"acme\" in a fleet needs [cluster] key_file: the fleet key that \
                     encrypts the certificates' private keys in etcd, the same file on every \
                     host (`openssl rand -hex 32 > fleet.key`)",
                );
            }
            TlsWanted::Acme
        }
        Some(TlsFile::Mode(other)) => {
            p.push(at.clone(), format!("invalid tls {other:?}: expected \"acme\" or {{ cert_file = \"...\", key_file = \"...\" }}"));
            return TlsWanted::None;
        }
        Some(TlsFile::Files(files)) => {
            let mut file = |value: &Option<String>, key: &str| match value.as_deref() {
                Some(v) if !v.is_empty() => PathBuf::from(v),
                _ => {
                    p.push(
                        at.key(key),
                        format!("`{key}` is required and must not be empty"),
                    );
                    PathBuf::new()
                }
            };
            let cert_file = file(&files.cert_file, "cert_file");
            let key_file = file(&files.key_file, "key_file");
            TlsWanted::Files {
                cert_file,
                key_file,
            }
        }
    };
    if !statics.proxy.listeners.iter().any(|l| l.tls) {
        p.push(
            at.clone(),
            "this site wants TLS, but no [[proxy.listeners]] has tls = true",
        );
    }
    tls
}

/// Checks the certificate files of a site that names them (not when a path is already wrong),
/// as [`Inputs::files`] holds them; each problem is reported at the site's `tls`.
pub(super) fn with_certificate(
    tls: TlsWanted,
    hostnames: &[Hostname],
    at: &KeyPath,
    inputs: &Inputs<'_>,
    p: &mut Problems,
) -> SiteTls {
    match tls {
        TlsWanted::None => SiteTls::None,
        TlsWanted::Acme => {
            // http-01 and tls-alpn-01 prove control of one name; a wildcard needs dns-01.
            if let Some(h) = hostnames.iter().find(|h| h.as_str().starts_with("*.")) {
                p.push(
                    at.clone(),
                    format!(
                        "tls = \"acme\" cannot cover the wildcard {h}: http-01 and tls-alpn-01 \
                         validate single names; give this site certificate files"
                    ),
                );
            }
            SiteTls::Acme
        }
        TlsWanted::Files {
            cert_file,
            key_file,
        } => {
            if cert_file.as_os_str().is_empty() || key_file.as_os_str().is_empty() {
                return SiteTls::None;
            }
            let read = |path: &std::path::Path| {
                inputs.files.get(path).cloned().unwrap_or_else(|| {
                    Err(format!("{}: not read before validation", path.display()))
                })
            };
            let (chain_pem, key_pem) = (read(&cert_file), read(&key_file));
            match certs::check_files(
                (&cert_file, chain_pem),
                (&key_file, key_pem),
                hostnames,
                inputs.now,
            ) {
                Ok(certificate) => SiteTls::Files {
                    cert_file,
                    key_file,
                    certificate,
                },
                Err(problems) => {
                    for problem in problems {
                        p.push(at.clone(), problem);
                    }
                    SiteTls::None
                }
            }
        }
    }
}

/// `default_tls_site` names a site with `tls` by one of its hostnames; the snapshot carries the
/// site's name (its first hostname).
pub(super) fn default_tls_site(name: &str, files: &[SiteFile], p: &mut Problems) -> Option<String> {
    let at = KeyPath::root().key("default_tls_site");
    let Some(site) = files
        .iter()
        .find(|s| s.hostnames.iter().any(|h| h.eq_ignore_ascii_case(name)))
    else {
        p.push(at, format!("no site has the hostname {name:?}"));
        return None;
    };
    let site_name = site.hostnames.first()?.to_ascii_lowercase();
    if site.tls.is_none() {
        p.push(
            at,
            format!("site {site_name} has no `tls`, so it has no certificate to offer"),
        );
        return None;
    }
    Some(site_name)
}
