//! Each kind of change inside a site, through the whole path: config text → validated model →
//! `ConfigDiff::between` → the rendered lines.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::config::Config;
use crate::diff::ConfigDiff;

/// A config with one plain and one TLS listener and the site `app.test`, whose table continues
/// with `site` (keys, then `[[sites.routes]]` or `[sites.*]` tables).
fn config(site: &str) -> Config {
    let text = format!(
        "[[proxy.listeners]]\nname = \"http\"\naddress = \"127.0.0.1:8080\"\n\
         [[proxy.listeners]]\nname = \"https\"\naddress = \"127.0.0.1:8443\"\ntls = true\n\
         [[sites]]\nhostnames = [\"app.test\"]\n{site}\n"
    );
    crate::config::parse(&text, Path::new("proxy.toml")).unwrap()
}

/// The described changes of `app.test` from `old` to `new`.
fn described(old: &str, new: &str) -> Vec<String> {
    let diff = ConfigDiff::between(&config(old), &config(new));
    assert_eq!(diff.sites_modified, ["app.test"]);
    assert_eq!(diff.site_changes.len(), 1);
    assert_eq!(diff.site_changes[0].site, "app.test");
    diff.site_changes[0]
        .changes
        .iter()
        .map(FieldChange::describe)
        .collect()
}

const UP: &str = "upstreams = [\"http://10.0.0.1\", \"http://10.0.0.2\"]\n";

#[test]
fn upstreams_added_and_removed_are_listed_as_items() {
    let diff = ConfigDiff::between(
        &config(UP),
        &config("upstreams = [\"http://10.0.0.2\", \"http://10.0.0.3\"]"),
    );
    let change = &diff.site_changes[0].changes[0];
    assert_eq!(
        *change,
        FieldChange {
            field: "upstreams".into(),
            old: "http://10.0.0.1:80, http://10.0.0.2:80".into(),
            new: "http://10.0.0.2:80, http://10.0.0.3:80".into(),
            added: vec!["http://10.0.0.3:80".into()],
            removed: vec!["http://10.0.0.1:80".into()],
        }
    );
    assert_eq!(
        change.describe(),
        "upstreams: + http://10.0.0.3:80  - http://10.0.0.1:80"
    );
    // Order alone: no item added or removed, both lists shown.
    assert_eq!(
        described(UP, "upstreams = [\"http://10.0.0.2\", \"http://10.0.0.1\"]"),
        [
            "upstreams: http://10.0.0.1:80, http://10.0.0.2:80 → http://10.0.0.2:80, http://10.0.0.1:80"
        ]
    );
}

#[test]
fn hostnames_and_weights() {
    let lb = "load_balancing = \"weighted_round_robin\"\n";
    let old = config(&format!("{UP}{lb}"));
    let mut new = config(&format!(
        "upstreams = [\"http://10.0.0.1\", {{ url = \"http://10.0.0.2\", weight = 3 }}]\n{lb}"
    ));
    new.dynamic.sites[0]
        .hostnames
        .push(crate::config::Hostname::parse("www.app.test").unwrap());
    let diff = ConfigDiff::between(&old, &new);
    let lines: Vec<String> = diff.site_changes[0]
        .changes
        .iter()
        .map(FieldChange::describe)
        .collect();
    assert_eq!(
        lines,
        [
            "hostnames: + www.app.test",
            "upstreams: + http://10.0.0.2:80 weight 3  - http://10.0.0.2:80",
        ]
    );
}

#[test]
fn routes_added_removed_and_changed() {
    let old = format!(
        "{UP}\
         [[sites.routes]]\npath_prefix = \"/api\"\nupstreams = [\"http://a\"]\n\
         [[sites.routes]]\npath_prefix = \"/old\"\nredirect = {{ location = \"https://new.test{{path}}\", status = 301 }}\n\
         [[sites.routes]]\npath_prefix = \"/v1\"\nupstreams = [\"http://a\"]\n"
    );
    let new = format!(
        "{UP}\
         [[sites.routes]]\npath_prefix = \"/api\"\nupstreams = [\"http://b\"]\n\
         [[sites.routes]]\npath_prefix = \"/ping\"\nrespond = {{ body = \"pong\\n\" }}\n\
         [[sites.routes]]\npath_prefix = \"/v1\"\nredirect = {{ location = \"/v2{{path}}\" }}\n"
    );
    assert_eq!(
        described(&old, &new),
        [
            "routes: + /ping (respond 200 \"pong\\n\")  - /old (redirect 301 https://new.test{path})",
            "routes[\"/api\"].upstreams: + http://b:80  - http://a:80",
            "routes[\"/v1\"]: upstreams http://a:80 → redirect 308 /v2{path}",
        ]
    );
}

#[test]
fn respond_routes_never_show_a_secret_header_or_a_long_body() {
    let route = |headers: &str, body: &str| {
        format!(
            "{UP}[[sites.routes]]\npath_prefix = \"/x\"\n\
             respond = {{ status = 401, body = \"{body}\", headers = {{ {headers} }} }}\n"
        )
    };
    let long = "x".repeat(100);
    let lines = described(
        &route(
            "WWW-Authenticate = \"Basic\", X-Api-Key = \"old-secret\"",
            "no",
        ),
        &route(
            "WWW-Authenticate = \"Basic\", X-Api-Key = \"new-secret\"",
            &long,
        ),
    );
    assert_eq!(
        lines,
        [
            "routes[\"/x\"]: respond 401 \"no\" [www-authenticate: <redacted>, x-api-key: <redacted>] → \
             respond 401 (100-byte body) [www-authenticate: <redacted>, x-api-key: <redacted>]"
        ]
    );
    // Only the secret changed: the change is still visible, the values are not.
    let lines = described(
        &route("X-Api-Key = \"old-secret\"", "no"),
        &route("X-Api-Key = \"new-secret\"", "no"),
    );
    assert_eq!(
        lines,
        [
            "routes[\"/x\"]: respond 401 \"no\" [x-api-key: <redacted>] → \
             respond 401 \"no\" [x-api-key: <redacted>] (content changed)"
        ]
    );
    assert!(!lines[0].contains("secret"));
}

#[test]
fn limits_and_timeouts_fall_back_to_global() {
    assert_eq!(
        described(
            &format!("{UP}rate_limit = {{ requests_per_second = 10, burst = 5 }}\n"),
            &format!(
                "{UP}rate_limit = {{ requests_per_second = 20, burst = 10 }}\n\
                 body_limit_bytes = \"1m\"\nupstream_response_timeout = \"5s\"\nhttps_redirect = false\n"
            ),
        ),
        [
            "https_redirect: true → false",
            "rate_limit: 10/s burst 5 → 20/s burst 10",
            "body_limit_bytes: global → 1048576",
            "upstream_response_timeout: global → 5s",
        ]
    );
    assert_eq!(
        described(
            &format!("{UP}rate_limit = {{ requests_per_second = 10, burst = 5 }}\n"),
            UP
        ),
        ["rate_limit: 10/s burst 5 → global"]
    );
}

#[test]
fn pool_settings_name_each_changed_key() {
    let old = format!(
        "{UP}[sites.health_check]\npath = \"/healthz\"\ninterval = \"5s\"\n\
         [sites.upstream_limits]\nmax_connections = 100\n"
    );
    let new = format!(
        "{UP}load_balancing = \"least_requests\"\nretries = 3\n\
         [sites.health_check]\npath = \"/healthz\"\ninterval = \"10s\"\n\
         [sites.passive_health]\nconsecutive_failures = 0\n\
         [sites.upstream_limits]\nmax_connections = 200\n"
    );
    assert_eq!(
        described(&old, &new),
        [
            "load_balancing: round_robin → least_requests",
            "retries: 1 → 3",
            "health_check.interval: 5s → 10s",
            "passive_health: eject after 5 failures for 10s → off",
            "upstream_limits.max_connections: 100 → 200",
            // Derived from max_connections when not set.
            "upstream_limits.max_idle_connections: 100 → 128",
        ]
    );
    let lines = described(
        &old,
        &format!("{UP}[sites.upstream_limits]\nmax_connections = 100\n"),
    );
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].starts_with("health_check: /healthz every 5s, timeout ")
            && lines[0].ends_with(" → off"),
        "{lines:?}"
    );
}

/// A self-signed certificate for app.test expiring at `not_after_unix`, written as
/// `<stem>.crt` / `<stem>.key`; returns the `tls = ...` line and the leaf's DER.
fn cert(dir: &Path, stem: &str, not_after_unix: u64) -> (String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["app.test".to_owned()]).unwrap();
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(not_after_unix);
    let cert = params.self_signed(&key).unwrap();
    let (cert_file, key_file) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let line = format!(
        "tls = {{ cert_file = \"{}\", key_file = \"{}\" }}\n",
        cert_file.display(),
        key_file.display()
    );
    (line, cert.der().to_vec())
}

#[test]
fn certificates_read_as_source_fingerprint_and_expiry_and_never_as_key() {
    let dir = tempfile::tempdir().unwrap();
    // 2035-01-01 and 2036-06-01, far enough for the "not expired" check.
    let (old_tls, old_der) = cert(dir.path(), "old", 2_051_222_400);
    let (new_tls, new_der) = cert(dir.path(), "new", 2_095_891_200);
    let short = |der: &[u8]| short_fingerprint(&crate::config::sha256_fingerprint(der));
    assert_eq!(short(&old_der).len(), "3F:A1:0C:77…9A:01".len());

    let lines = described(&format!("{UP}{old_tls}"), &format!("{UP}{new_tls}"));
    assert_eq!(
        lines,
        [
            format!(
                "tls.cert_file: {} → {}",
                dir.path().join("old.crt").display(),
                dir.path().join("new.crt").display()
            ),
            format!(
                "tls.key_file: {} → {}",
                dir.path().join("old.key").display(),
                dir.path().join("new.key").display()
            ),
            format!(
                "tls.certificate: files sha256 {} expires 2035-01-01 → files sha256 {} expires 2036-06-01",
                short(&old_der),
                short(&new_der)
            ),
        ]
    );
    assert_eq!(
        described(UP, &format!("{UP}{old_tls}")),
        [format!(
            "tls.certificate: none → files sha256 {} expires 2035-01-01",
            short(&old_der)
        )]
    );
    assert_eq!(
        described(
            &format!("{UP}{old_tls}"),
            &format!("{UP}tls = \"acme\"\n[acme]\ndirectory_url = \"https://ca.example/dir\"")
        ),
        [format!(
            "tls.certificate: files sha256 {} expires 2035-01-01 → acme",
            short(&old_der)
        )]
    );
    // Renewed in place: same files, new certificate.
    let old = config(&format!("{UP}{old_tls}"));
    let (_, renewed_der) = cert(dir.path(), "old", 2_095_891_200);
    let new = config(&format!("{UP}{old_tls}"));
    let diff = ConfigDiff::between(&old, &new);
    let change = &diff.site_changes[0].changes[0];
    assert_eq!(change.field, "tls.certificate");
    assert!(change.new.contains(&short(&renewed_der)), "{change:?}");
    let shown = format!("{diff:?}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
}

#[test]
fn fingerprints_and_dates_are_rendered_safely() {
    let full = crate::config::sha256_fingerprint(b"x");
    assert_eq!(full.len(), 32 * 3 - 1);
    assert_eq!(
        short_fingerprint(&full),
        format!("{}…{}", &full[..11], &full[full.len() - 5..])
    );
    assert_eq!(short_fingerprint("AB:CD"), "AB:CD");
    assert_eq!(date(UNIX_EPOCH), "1970-01-01");
    assert_eq!(date(UNIX_EPOCH - Duration::from_secs(1)), "before 1970");
    assert_eq!(
        date(UNIX_EPOCH + Duration::from_secs(253_402_300_800)),
        "after 9999"
    );
}

#[test]
fn an_unchanged_site_has_no_entry() {
    let diff = ConfigDiff::between(&config(UP), &config(UP));
    assert!(diff.is_empty());
}

#[test]
fn upstream_protocol_tls_and_header_rules_of_a_site() {
    let https = "upstreams = [\"https://10.0.0.1\"]\n";
    assert_eq!(
        described(
            &format!("{https}request_headers = {{ set = {{ x-env = \"prod\" }} }}\n"),
            &format!(
                "{https}upstream_protocol = \"h2\"\nupstream_tls = {{ server_name = \"api.internal\" }}\n\
                 request_headers = {{ set = {{ x-env = \"dev\", authorization = \"Bearer s3cr3t\" }}, \
                 remove = [\"x-debug\"] }}\n\
                 response_headers = {{ add = {{ x-served-by = \"edge\" }} }}\n"
            ),
        ),
        [
            "upstream_protocol: auto → h2",
            "upstream_tls: system roots → system roots, server_name api.internal",
            "request_headers: set x-env: prod → remove x-debug; set authorization: <redacted>, x-env: dev",
            "response_headers: none → add x-served-by: edge",
        ]
    );
    // Only a secret changed: visible as a change, never as a value.
    let lines = described(
        &format!("{https}request_headers = {{ set = {{ x-api-key = \"old-secret\" }} }}\n"),
        &format!("{https}request_headers = {{ set = {{ x-api-key = \"new-secret\" }} }}\n"),
    );
    assert_eq!(
        lines,
        [
            "request_headers: set x-api-key: <redacted> → set x-api-key: <redacted> (content changed)"
        ]
    );
}

#[test]
fn a_changed_ca_file_or_client_certificate_is_named_never_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _) = cert(dir.path(), "ca", 4_000_000_000);
    let (_, client_der) = cert(dir.path(), "client", 4_000_000_000);
    let site = |ca: &str, client: &str| {
        format!(
            "upstreams = [\"https://10.0.0.1\"]\nupstream_tls = {{ ca_file = \"{}\", \
             client_cert_file = \"{}\", client_key_file = \"{}\" }}\n",
            dir.path().join(format!("{ca}.crt")).display(),
            dir.path().join(format!("{client}.crt")).display(),
            dir.path().join(format!("{client}.key")).display(),
        )
    };
    let old = config(&site("ca", "client"));
    // The CA file gets new content under the same name.
    let (_, _) = cert(dir.path(), "ca", 4_100_000_000);
    let diff = ConfigDiff::between(&old, &config(&site("ca", "client")));
    let lines: Vec<String> = diff.site_changes[0]
        .changes
        .iter()
        .map(FieldChange::describe)
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("upstream_tls: ca ") && lines[0].ends_with("(content changed)"),
        "{lines:?}"
    );
    let fingerprint = crate::config::sha256_fingerprint(&client_der);
    assert!(
        lines[0].contains(&format!(
            "client certificate {}",
            dir.path().join("client.crt").display()
        )) && lines[0].contains(&fingerprint[..11]),
        "{lines:?}"
    );
    assert!(!lines[0].contains("PRIVATE"), "{lines:?}");
}

#[test]
fn route_settings_are_named_each_by_route_and_key() {
    let route = |extra: &str| {
        format!(
            "{UP}[[sites.routes]]\npath_prefix = \"/api\"\nupstreams = [\"http://a\"]\n{extra}\n\
             [[sites.routes]]\npath_prefix = \"/ping\"\nrespond = {{ body = \"pong\" }}\n"
        )
    };
    assert_eq!(
        described(
            &route("strip_prefix = true\nretries = 1\n"),
            &route(
                "rewrite = \"/v2/\"\nupstream_protocol = \"h2c\"\nupstream_response_timeout = \"5s\"\n\
                 body_limit_bytes = 1024\nrate_limit = { requests_per_second = 1, burst = 2 }\n\
                 request_headers = { remove = [\"x-debug\"] }\n"
            ),
        ),
        [
            "routes[\"/api\"].strip_prefix: true → false",
            "routes[\"/api\"].rewrite: none → /v2/",
            "routes[\"/api\"].upstream_protocol: site's → h2c",
            "routes[\"/api\"].request_headers: none → remove x-debug",
            "routes[\"/api\"].upstream_response_timeout: site's → 5s",
            "routes[\"/api\"].retries: 1 → site's",
            "routes[\"/api\"].rate_limit: site's → 1/s burst 2",
            "routes[\"/api\"].body_limit_bytes: site's → 1024",
        ]
    );
}

#[test]
fn routes_are_paired_by_prefix_methods_and_match_headers() {
    let routes = |a: &str, b: &str| {
        format!(
            "{UP}[[sites.routes]]\npath_prefix = \"/api\"\nupstreams = [\"http://a\"]\n{a}\n\
             [[sites.routes]]\npath_prefix = \"/api\"\nmatch_headers = {{ x-canary = \"1\" }}\n\
             upstreams = [\"http://b\"]\n{b}\n"
        )
    };
    // The one route with prefix /api and no header condition gains a method: the same route.
    assert_eq!(
        described(&routes("", ""), &routes("methods = [\"GET\"]", "")),
        ["routes[\"/api GET\"].methods: + GET"]
    );
    // Two routes on one prefix, told apart by their match headers.
    assert_eq!(
        described(&routes("", ""), &routes("", "strip_prefix = true")),
        ["routes[\"/api x-canary=1\"].strip_prefix: false → true"]
    );
    // A new route on a prefix that already has two: added, not paired.
    let three = format!(
        "{}[[sites.routes]]\npath_prefix = \"/api\"\nmethods = [\"POST\"]\n\
         respond = {{ status = 405 }}\n",
        routes("", "")
    );
    assert_eq!(
        described(&routes("", ""), &three),
        ["routes: + /api POST (respond 405)"]
    );
}
