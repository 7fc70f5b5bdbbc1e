//! What GetConfig may show: the config text with secret-looking values replaced, and the
//! snapshot without key material or credential header values.
//!
//! The text is redacted by its structure, not line by line: TOML writes one value many ways
//! (inline tables, `"quoted" = keys`, multi-line strings), and a header's credential sits under
//! the header's name (`set = { Authorization = "Bearer ..." }`), which no line-based rule sees.

use std::ops::Range;

use proto::v1 as pb;
use toml::de::{DeTable, DeValue};

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

/// Tables whose keys are header names (header rules, `respond` headers, `match_headers`): the
/// value of a header whose name looks secret ([`header_looks_secret`]) is never shown.
const HEADER_TABLES: [&str; 4] = ["set", "add", "headers", "match_headers"];

/// What replaces a secret value.
const REDACTED: &str = "\"<redacted>\"";

/// The config text with every secret-looking value replaced by `"<redacted>"`: the value of a
/// key whose name looks secret ([`SECRET_WORDS`], whatever it holds: a string, a table, an
/// array), and the value of a header whose name looks secret in a table of headers. Keys like
/// `key_file` (a path) are not secrets. Comments are left out (they may quote anything). Text
/// that does not parse (never a config controld accepted) is not shown at all.
pub fn redact(text: &str) -> String {
    let Ok(doc) = DeTable::parse(text) else {
        return "# <redacted: the text does not parse>\n".to_owned();
    };
    let mut spans = Vec::new();
    secret_spans(doc.get_ref(), false, &mut spans);
    spans.sort_by_key(|(s, _)| s.start);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (span, replacement) in spans {
        // Nested spans (a secret inside a secret table) are covered by the outer one.
        if span.start < at {
            continue;
        }
        out.push_str(text.get(at..span.start).unwrap_or(""));
        out.push_str(&replacement);
        at = span.end;
    }
    out.push_str(text.get(at..).unwrap_or(""));
    without_comments(&out)
}

/// A value's span and what replaces it.
type Replacement = (Range<usize>, String);

/// The spans of the values to hide under `table`; `headers`: its keys are header names.
fn secret_spans(table: &DeTable<'_>, headers: bool, spans: &mut Vec<Replacement>) {
    for (key, value) in table {
        let name = key.get_ref().to_ascii_lowercase();
        let secret = SECRET_WORDS.iter().any(|w| name.contains(w))
            || (headers && header_looks_secret(&name));
        if secret {
            spans.push((value.span(), REDACTED.to_owned()));
            continue;
        }
        let header_table = HEADER_TABLES.contains(&name.as_str());
        walk(value, header_table, spans);
    }
}

fn walk(value: &toml::Spanned<DeValue<'_>>, headers: bool, spans: &mut Vec<Replacement>) {
    match value.get_ref() {
        DeValue::Table(t) => secret_spans(t, headers, spans),
        DeValue::Array(items) => {
            for item in items {
                walk(item, headers, spans);
            }
        }
        // A URL or path with a password or a credential in its query (a health-check path, a
        // redirect location, an upstream): that part is hidden, the rest shown.
        DeValue::String(text) => {
            if let Some(hidden) = url_credentials_hidden(text) {
                let literal = toml::Value::String(hidden).to_string();
                spans.push((value.span(), literal));
            }
        }
        _ => {}
    }
}

/// Words in a query parameter's name whose value is never shown, besides [`SECRET_WORDS`].
const SECRET_QUERY_WORDS: [&str; 5] = ["key", "auth", "sig", "session", "pass"];

/// `text` with the password of a `scheme://user:password@` and the value of every query
/// parameter whose name looks secret replaced by `<redacted>`; `None` when it has neither.
pub fn url_credentials_hidden(text: &str) -> Option<String> {
    let mut out = text.to_owned();
    let mut changed = false;
    // scheme://user:password@host
    if let Some(scheme_end) = out.find("://") {
        let authority_start = scheme_end + 3;
        let authority_end = out[authority_start..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| authority_start + i);
        if let Some(at) = out[authority_start..authority_end].rfind('@') {
            let userinfo = authority_start..authority_start + at;
            if let Some(colon) = out[userinfo.clone()].find(':') {
                out.replace_range(userinfo.start + colon + 1..userinfo.end, "<redacted>");
                changed = true;
            }
        }
    }
    // ?name=value&...
    if let Some(query_start) = out.find('?') {
        let query_end = out[query_start..]
            .find('#')
            .map_or(out.len(), |i| query_start + i);
        let query = &out[query_start + 1..query_end];
        let mut parts = Vec::new();
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some((name, _)) if query_name_looks_secret(name) => {
                    parts.push(format!("{name}=<redacted>"));
                    changed = true;
                }
                _ => parts.push(pair.to_owned()),
            }
        }
        out.replace_range(query_start + 1..query_end, &parts.join("&"));
    }
    changed.then_some(out)
}

fn query_name_looks_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_WORDS
        .iter()
        .chain(&SECRET_QUERY_WORDS)
        .any(|w| name.contains(w))
}

/// `text` without its comments: a `#` outside strings starts one, which runs to the end of its
/// line. Strings are followed across lines as TOML writes them: basic (`"`, with `\` escapes),
/// literal (`'`), and their multi-line forms (`"""`, `'''`).
fn without_comments(text: &str) -> String {
    #[derive(Clone, Copy, PartialEq)]
    enum In {
        Code,
        Comment,
        Basic,
        Literal,
        MultiBasic,
        MultiLiteral,
    }
    let mut out = String::with_capacity(text.len());
    let mut state = In::Code;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let rest = &text[i..];
        match state {
            In::Comment => {
                if c == '\n' {
                    state = In::Code;
                    // Trailing blanks before the comment go too.
                    let kept = out.trim_end_matches([' ', '\t']).len();
                    out.truncate(kept);
                    out.push('\n');
                }
                continue;
            }
            In::Code => {
                if c == '#' {
                    state = In::Comment;
                    continue;
                }
                if rest.starts_with("\"\"\"") {
                    state = In::MultiBasic;
                    out.push_str("\"\"\"");
                    chars.next();
                    chars.next();
                    continue;
                }
                if rest.starts_with("'''") {
                    state = In::MultiLiteral;
                    out.push_str("'''");
                    chars.next();
                    chars.next();
                    continue;
                }
                if c == '"' {
                    state = In::Basic;
                } else if c == '\'' {
                    state = In::Literal;
                }
            }
            In::Basic | In::MultiBasic if c == '\\' => {
                // An escape: the next character is the string's, whatever it is.
                out.push(c);
                if let Some((_, next)) = chars.next() {
                    out.push(next);
                }
                continue;
            }
            In::Basic if c == '"' || c == '\n' => state = In::Code,
            In::Literal if c == '\'' || c == '\n' => state = In::Code,
            In::MultiBasic if rest.starts_with("\"\"\"") => {
                state = In::Code;
                out.push_str("\"\"\"");
                chars.next();
                chars.next();
                continue;
            }
            In::MultiLiteral if rest.starts_with("'''") => {
                state = In::Code;
                out.push_str("'''");
                chars.next();
                chars.next();
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    if state == In::Comment {
        let kept = out.trim_end_matches([' ', '\t']).len();
        out.truncate(kept);
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
        let rules = [&mut site.request_headers, &mut site.response_headers];
        for rules in rules.into_iter().flatten() {
            redact_headers(rules.set.iter_mut().chain(rules.add.iter_mut()));
        }
        if let Some(check) = site.pool.as_mut().and_then(|p| p.health_check.as_mut()) {
            hide_url_credentials(&mut check.path);
        }
        for route in &mut site.routes {
            if let Some(pb::route::Action::Redirect(redirect)) = route.action.as_mut() {
                hide_url_credentials(&mut redirect.location);
            }
            let rules = [&mut route.request_headers, &mut route.response_headers];
            for rules in rules.into_iter().flatten() {
                redact_headers(rules.set.iter_mut().chain(rules.add.iter_mut()));
            }
            redact_headers(route.match_headers.iter_mut());
            if let Some(pb::route::Action::Respond(respond)) = route.action.as_mut() {
                redact_headers(respond.headers.iter_mut());
            }
        }
    }
    snapshot
}

fn hide_url_credentials(text: &mut String) {
    if let Some(hidden) = url_credentials_hidden(text) {
        *text = hidden;
    }
}

/// Replaces the value of every header whose name looks secret.
fn redact_headers<'a>(headers: impl Iterator<Item = &'a mut pb::Header>) {
    for header in headers {
        if header_looks_secret(&header.name) {
            header.value = "<redacted>".to_owned();
        }
    }
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
            "a = 1\n  api_token = \"<redacted>\"\nkey_file = \"/k.pem\"\n\nprivate_key_pem = \"<redacted>\"\n"
        );
    }

    #[test]
    fn secrets_in_every_toml_form_and_credential_headers_are_redacted() {
        let text = r#"
[[sites]]
hostnames = ["a.example"]   # the shop
request_headers = { set = { Authorization = "Bearer eyJhbGci", "X-Env" = "prod" }, add = { "X-Api-Key" = 'k-123' } }
"api_token" = """
multi
line"""
match = { token = { inner = "t0k" } }

[[sites.routes]]
path_prefix = "/admin"
match_headers = { cookie = "session=s3cr3t" }
respond = { status = 200, body = "ok", headers = { "X-Session" = "abc#def", "Cache-Control" = "no-store" } }
"#;
        let got = redact(text);
        for secret in [
            "eyJhbGci", "k-123", "multi", "t0k", "s3cr3t", "abc#def", "the shop",
        ] {
            assert!(!got.contains(secret), "{secret} shown in:\n{got}");
        }
        for kept in ["prod", "no-store", "/admin", "a.example"] {
            assert!(got.contains(kept), "{kept} missing from:\n{got}");
        }
        // Still a config: it parses.
        assert!(DeTable::parse(&got).is_ok(), "{got}");
        assert_eq!(
            redact("a = [unclosed"),
            "# <redacted: the text does not parse>\n"
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

    #[test]
    fn credential_header_values_in_the_snapshot_are_redacted() {
        let header = |name: &str, value: &str| pb::Header {
            name: name.into(),
            value: value.into(),
        };
        let rules = || pb::HeaderRules {
            set: vec![
                header("authorization", "Bearer eyJ"),
                header("x-env", "prod"),
            ],
            add: vec![header("x-api-key", "k-1")],
            ..Default::default()
        };
        let shown = snapshot(pb::Snapshot {
            dynamic: Some(pb::DynamicConfig {
                sites: vec![pb::Site {
                    request_headers: Some(rules()),
                    routes: vec![pb::Route {
                        response_headers: Some(rules()),
                        match_headers: vec![header("cookie", "session=1")],
                        action: Some(pb::route::Action::Respond(pb::FixedResponse {
                            headers: vec![header("x-session", "s")],
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        });
        let text = format!("{shown:?}");
        for secret in ["eyJ", "k-1", "session=1", "value: \"s\""] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("prod"));
    }

    #[test]
    fn comments_after_multi_line_strings_go_and_strings_with_hashes_stay_whole() {
        let text = "a = { body = \"\"\"\nWe are #1 \"\"\" } # old admin password: hunter2\nb = 'x#y' # c\n";
        let got = redact(text);
        assert!(!got.contains("hunter2"), "{got}");
        assert!(got.contains("We are #1"), "{got}");
        assert!(got.contains("'x#y'"), "{got}");
        assert!(DeTable::parse(&got).is_ok(), "{got}");
    }

    #[test]
    fn credentials_in_urls_and_queries_are_hidden_and_the_rest_kept() {
        let text = r#"
[[sites]]
hostnames = ["a.example"]
upstreams = ["http://127.0.0.1:9"]
health_check = { path = "/health?probe=1&api_key=s3cr3t" }

[[sites.routes]]
path_prefix = "/old"
redirect = { location = "https://deploy:hunter2@new.example/{path}?sig=abc#top" }
"#;
        let got = redact(text);
        assert!(!got.contains("s3cr3t") && !got.contains("hunter2") && !got.contains("abc#"));
        assert!(got.contains("/health?probe=1&api_key=<redacted>"), "{got}");
        assert!(
            got.contains("https://deploy:<redacted>@new.example/{path}?sig=<redacted>#top"),
            "{got}"
        );
        assert!(DeTable::parse(&got).is_ok(), "{got}");
        assert_eq!(url_credentials_hidden("/plain/path?page=2"), None);
        assert_eq!(url_credentials_hidden("http://127.0.0.1:9"), None);

        let sent = pb::Snapshot {
            dynamic: Some(pb::DynamicConfig {
                sites: vec![pb::Site {
                    pool: Some(pb::UpstreamPool {
                        health_check: Some(pb::HealthCheck {
                            path: "/h?token=t".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    routes: vec![pb::Route {
                        action: Some(pb::route::Action::Redirect(pb::Redirect {
                            location: "https://u:p@x/".into(),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let shown = snapshot(sent);
        let site = &shown.dynamic.unwrap().sites[0];
        let path = &site
            .pool
            .as_ref()
            .unwrap()
            .health_check
            .as_ref()
            .unwrap()
            .path;
        assert_eq!(path, "/h?token=<redacted>");
        let Some(pb::route::Action::Redirect(redirect)) = &site.routes[0].action else {
            panic!("a redirect")
        };
        assert_eq!(redirect.location, "https://u:<redacted>@x/");
    }
}
