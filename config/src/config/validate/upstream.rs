//! The upstream side of a site or a route: `upstream_protocol`, `upstream_tls` (its files read
//! beforehand, checked here) and the header rules `request_headers` / `response_headers`.

use proto::FRAMING_HEADERS;

use super::super::file::{HeaderRulesFile, UpstreamTlsFile};
use super::http_token;
use super::*;

/// The placeholders a header value may hold.
const PLACEHOLDERS: [&str; 4] = ["{client_ip}", "{request_id}", "{host}", "{scheme}"];

/// `upstream_protocol`; `None` when absent or invalid.
/// `upstream_protocol` and `upstream_tls` of the table at `at` (a site or a route).
pub(super) fn connection(
    protocol_key: Option<&str>,
    tls_key: Option<&UpstreamTlsFile>,
    at: &KeyPath,
    inputs: &Inputs<'_>,
    p: &mut Problems,
) -> UpstreamConnection {
    UpstreamConnection {
        protocol: protocol(protocol_key, &at.key("upstream_protocol"), p),
        tls: tls(tls_key, &at.key("upstream_tls"), inputs, p),
    }
}

pub(super) fn protocol(
    raw: Option<&str>,
    at: &KeyPath,
    p: &mut Problems,
) -> Option<UpstreamProtocol> {
    let raw = raw?;
    let found = UpstreamProtocol::ALL
        .into_iter()
        .find(|v| v.as_str() == raw);
    if found.is_none() {
        let all: Vec<String> = UpstreamProtocol::ALL
            .iter()
            .map(|v| format!("{:?}", v.as_str()))
            .collect();
        p.push(
            at.clone(),
            format!(
                "invalid upstream protocol {raw:?}: expected one of {}",
                all.join(", ")
            ),
        );
    }
    found
}

/// `upstream_tls`, its files as [`Inputs::files`] holds them; `None` when absent.
pub(super) fn tls(
    file: Option<&UpstreamTlsFile>,
    at: &KeyPath,
    inputs: &Inputs<'_>,
    p: &mut Problems,
) -> Option<UpstreamTls> {
    let file = file?;
    let read = |path: &std::path::Path| {
        inputs
            .files
            .get(path)
            .cloned()
            .unwrap_or_else(|| Err(format!("{}: not read before validation", path.display())))
    };
    let path_of = |value: &Option<String>, key: &str, p: &mut Problems| match value.as_deref() {
        Some("") => {
            p.push(at.key(key), format!("`{key}` must not be empty"));
            None
        }
        other => other.map(PathBuf::from),
    };
    let ca = path_of(&file.ca_file, "ca_file", p).and_then(|path| {
        let checked = read(&path).and_then(|pem| {
            let count = certs::check_ca(&path, &pem)?;
            Ok((pem, count))
        });
        match checked {
            Ok((pem, count)) => Some(CaCertificates {
                file: path,
                pem,
                count,
            }),
            Err(e) => {
                p.push(at.key("ca_file"), e);
                None
            }
        }
    });
    let server_name = file.server_name.as_deref().and_then(|name| {
        let valid = !name.is_empty()
            && rustls_pki_types::ServerName::try_from(name).is_ok()
            && !name.contains('*');
        if !valid {
            p.push(
                at.key("server_name"),
                format!("invalid server name {name:?}: expected a DNS name or an IP address"),
            );
        }
        valid.then(|| name.to_ascii_lowercase())
    });
    let cert_file = path_of(&file.client_cert_file, "client_cert_file", p);
    let key_file = path_of(&file.client_key_file, "client_key_file", p);
    let client_certificate = match (cert_file, key_file) {
        (Some(cert_file), Some(key_file)) => {
            match certs::check_client_files(
                (&cert_file, read(&cert_file)),
                (&key_file, read(&key_file)),
                inputs.now,
            ) {
                Ok(certificate) => Some(ClientCertificate {
                    cert_file,
                    key_file,
                    certificate,
                }),
                Err(problems) => {
                    for problem in problems {
                        let key = if problem.starts_with("client_key_file") {
                            "client_key_file"
                        } else {
                            "client_cert_file"
                        };
                        p.push(at.key(key), problem);
                    }
                    None
                }
            }
        }
        (None, None) => None,
        (cert, _) => {
            let (given, missing) = if cert.is_some() {
                ("client_cert_file", "client_key_file")
            } else {
                ("client_key_file", "client_cert_file")
            };
            // Only when the other key is absent, not merely empty (already reported).
            let absent = if cert.is_some() {
                file.client_key_file.is_none()
            } else {
                file.client_cert_file.is_none()
            };
            if absent {
                p.push(
                    at.key(given),
                    format!("`{given}` needs `{missing}`: give both or neither"),
                );
            }
            None
        }
    };
    Some(UpstreamTls {
        ca,
        server_name,
        client_certificate,
    })
}

/// Checks a protocol and a TLS setting against the upstreams they apply to, each named with
/// where it is listed (`routes[1]`, say): `h2` needs https://, `h2c` http://, and TLS settings
/// need at least one https:// upstream.
pub(super) fn check_applies(
    connection: &UpstreamConnection,
    at: &KeyPath,
    upstreams: &[(&Upstream, String)],
    p: &mut Problems,
) {
    if let Some(protocol) = connection.protocol {
        let (needed, what) = match protocol {
            UpstreamProtocol::H2 => ("https", "HTTP/2 over TLS"),
            UpstreamProtocol::H2c => ("http", "HTTP/2 over plain TCP"),
            UpstreamProtocol::Http1 | UpstreamProtocol::Auto => ("", ""),
        };
        if !needed.is_empty() {
            for (upstream, place) in upstreams {
                if upstream.url.scheme() != needed {
                    p.push(
                        at.key("upstream_protocol"),
                        format!(
                            "upstream_protocol = {:?} is {what} and needs {needed}:// upstreams, \
                             but {upstream} ({place}) is not",
                            protocol.as_str()
                        ),
                    );
                }
            }
        }
    }
    if connection.tls.is_some() && !upstreams.iter().any(|(u, _)| u.url.scheme() == "https") {
        p.push(
            at.key("upstream_tls"),
            "upstream_tls applies only to https:// upstreams, and none of the upstreams it \
             applies to is one",
        );
    }
}

/// `request_headers` (`request`) or `response_headers`.
pub(super) fn header_rules(
    file: Option<&HeaderRulesFile>,
    at: &KeyPath,
    request: bool,
    p: &mut Problems,
) -> HeaderRules {
    let Some(file) = file else {
        return HeaderRules::default();
    };
    let mut rules = HeaderRules::default();
    for (i, raw) in file.remove.iter().enumerate() {
        let rp = at.key("remove").index(i);
        let Some(name) = header_name(raw, &rp, false, p) else {
            continue;
        };
        if rules.remove.contains(&name) {
            p.push(rp, format!("header {name:?} is listed twice"));
        } else if file.set.keys().any(|s| s.eq_ignore_ascii_case(&name)) {
            p.push(
                rp,
                format!("header {name:?} is both set and removed: `set` already replaces it"),
            );
        } else {
            rules.remove.push(name);
        }
    }
    for (key, list, host_allowed) in [("set", &file.set, request), ("add", &file.add, false)] {
        let mut out: Vec<(String, String)> = Vec::new();
        for (raw, value) in list {
            let hp = at.key(key).key(raw);
            let Some(name) = header_name(raw, &hp, host_allowed, p) else {
                continue;
            };
            if !header_value(value, &name, &hp, p) {
                continue;
            }
            if key == "set" && out.iter().any(|(n, _)| *n == name) {
                p.push(
                    hp,
                    format!("header {name:?} is set twice (names are compared without case)"),
                );
                continue;
            }
            out.push((name, value.clone()));
        }
        out.sort();
        if key == "set" {
            rules.set = out;
        } else {
            rules.add = out;
        }
    }
    rules
}

/// A header name a rule may name: a token, not hop-by-hop or framing (`host` only where
/// `host_allowed`); lower case.
fn header_name(raw: &str, at: &KeyPath, host_allowed: bool, p: &mut Problems) -> Option<String> {
    if !http_token(raw) {
        p.push(at.clone(), invalid_name(raw));
        return None;
    }
    let name = raw.to_ascii_lowercase();
    if name == "host" && !host_allowed {
        p.push(
            at.clone(),
            "`host` may appear only in request_headers.set (it is replaced, never added or removed)",
        );
        return None;
    }
    if name != "host" && FRAMING_HEADERS.contains(&name.as_str()) {
        p.push(
            at.clone(),
            format!("header {raw:?} is hop-by-hop or framing: proxyd manages it itself"),
        );
        return None;
    }
    Some(name)
}

pub(super) fn invalid_name(raw: &str) -> String {
    format!("invalid header name {raw:?}: a name is a token (letters, digits, and !#$%&'*+-.^_`|~)")
}

/// A header value: no control characters but tab (so no CR, LF or NUL), and only the known
/// placeholders. Reports at `at`; whether it is valid.
fn header_value(value: &str, name: &str, at: &KeyPath, p: &mut Problems) -> bool {
    if !valid_header_value(value) {
        p.push(
            at.clone(),
            format!(
                "invalid value for header {name:?}: no CR, LF, NUL or other control characters"
            ),
        );
        return false;
    }
    let mut rest = value;
    let mut valid = true;
    while let Some(open) = rest.find('{') {
        let Some(len) = rest[open..].find('}') else {
            // As the data plane reads it: a `{` opens a placeholder. The value is not quoted:
            // it may be a credential.
            p.push(
                at.clone(),
                format!(
                    "unclosed placeholder in the value of header {name:?}: a '{{' starts one of {}",
                    PLACEHOLDERS.join(", ")
                ),
            );
            return false;
        };
        let placeholder = &rest[open..=open + len];
        if !PLACEHOLDERS.contains(&placeholder) {
            p.push(
                at.clone(),
                format!(
                    "unknown placeholder {placeholder} in header {name:?}: use {}",
                    PLACEHOLDERS.join(", ")
                ),
            );
            valid = false;
        }
        rest = &rest[open + len + 1..];
    }
    valid
}

/// What `http::HeaderValue` accepts: visible ASCII, spaces, tabs and bytes past ASCII.
pub(super) fn valid_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
}
