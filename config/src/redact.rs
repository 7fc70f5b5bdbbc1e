//! What GetConfig may show: the config text with secret-looking values replaced, and the
//! snapshot without key material.

use proto::v1 as pb;

/// Keys whose values are never shown, whatever table they are in.
const SECRET_WORDS: [&str; 6] = [
    "secret",
    "password",
    "token",
    "private",
    "key_pem",
    "credential",
];

/// Words in a header name whose value is never shown: credentials travel in headers under
/// names like these besides [`SECRET_WORDS`].
const SECRET_HEADER_WORDS: [&str; 4] = ["auth", "cookie", "key", "session"];

/// Whether the value of header `name` (as a `respond` route sets it) must stay out of diffs
/// and logs.
pub fn header_looks_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_WORDS
        .iter()
        .chain(&SECRET_HEADER_WORDS)
        .any(|w| name.contains(w))
}

/// Replaces the value of every `key = value` line whose key looks secret with "<redacted>".
/// Only single-line values are ever secrets in this config, and keys like `key_file` (a path) are
/// not secrets.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let key = line
            .split('=')
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches('"')
            .to_ascii_lowercase();
        let is_secret = line.contains('=') && SECRET_WORDS.iter().any(|w| key.contains(w));
        if is_secret {
            let indent: String = line.chars().take_while(|c| c.is_whitespace()).collect();
            let name = line.split('=').next().unwrap_or("").trim();
            out.push_str(&format!("{indent}{name} = \"<redacted>\"\n"));
        } else {
            out.push_str(line);
        }
    }
    out
}

/// The snapshot as GetConfig shows it: every certificate's private key cleared, the upstream
/// client keys of sites and routes too (the chains, names and dates stay).
pub fn snapshot(mut snapshot: pb::Snapshot) -> pb::Snapshot {
    for certificate in &mut snapshot.certificates {
        certificate.key_pem.clear();
    }
    for challenge in &mut snapshot.acme_challenges {
        challenge.key_pem.clear();
    }
    for site in snapshot.dynamic.iter_mut().flat_map(|d| &mut d.sites) {
        let routes = site.routes.iter_mut().map(|r| &mut r.upstream);
        for connection in std::iter::once(&mut site.upstream).chain(routes) {
            if let Some(tls) = connection.as_mut().and_then(|c| c.tls.as_mut()) {
                tls.client_key_pem.clear();
            }
        }
    }
    snapshot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_looking_values_are_replaced_and_the_rest_kept() {
        let text = "a = 1\n  api_token = \"abc\"\nkey_file = \"/k.pem\"\n# password = x\nprivate_key_pem = \"-----BEGIN\"\n";
        let got = redact(text);
        assert_eq!(
            got,
            "a = 1\n  api_token = \"<redacted>\"\nkey_file = \"/k.pem\"\n# password = \"<redacted>\"\nprivate_key_pem = \"<redacted>\"\n"
        );
    }

    #[test]
    fn credential_headers_look_secret() {
        for name in [
            "Authorization",
            "cookie",
            "X-Api-Key",
            "x-session-id",
            "x-token",
        ] {
            assert!(header_looks_secret(name), "{name}");
        }
        for name in ["content-type", "cache-control", "x-env"] {
            assert!(!header_looks_secret(name), "{name}");
        }
    }

    #[test]
    fn certificate_keys_are_cleared_and_the_rest_kept() {
        let shown = snapshot(pb::Snapshot {
            certificates: vec![pb::Certificate {
                site: "a.example".into(),
                chain_pem: "-----BEGIN CERTIFICATE-----".into(),
                key_pem: "-----BEGIN PRIVATE KEY-----".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(shown.certificates[0].key_pem, "");
        assert_eq!(
            shown.certificates[0].chain_pem,
            "-----BEGIN CERTIFICATE-----"
        );
    }

    #[test]
    fn upstream_client_keys_are_cleared_on_sites_and_routes() {
        let tls = || pb::UpstreamConnection {
            tls: Some(pb::UpstreamTls {
                ca_pem: "CA".into(),
                server_name: "api.internal".into(),
                client_cert_pem: "-----BEGIN CERTIFICATE-----".into(),
                client_key_pem: "-----BEGIN PRIVATE KEY-----".into(),
            }),
            ..Default::default()
        };
        let shown = snapshot(pb::Snapshot {
            dynamic: Some(pb::DynamicConfig {
                sites: vec![pb::Site {
                    upstream: Some(tls()),
                    routes: vec![
                        pb::Route {
                            upstream: Some(tls()),
                            ..Default::default()
                        },
                        pb::Route::default(),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        });
        let site = &shown.dynamic.as_ref().unwrap().sites[0];
        for connection in [&site.upstream, &site.routes[0].upstream] {
            let tls = connection.as_ref().unwrap().tls.as_ref().unwrap();
            assert_eq!(tls.client_key_pem, "");
            assert_eq!(tls.client_cert_pem, "-----BEGIN CERTIFICATE-----");
            assert_eq!(
                (tls.ca_pem.as_str(), tls.server_name.as_str()),
                ("CA", "api.internal")
            );
        }
        assert_eq!(site.routes[1].upstream, None);
    }
}
