//! The snapshot built from the upstream keys (issue 12): every field filled from the model, and
//! nothing encoded for a key the file leaves out, so existing configs keep their content hash.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::*;
use crate::config::{CaCertificates, ClientCertificate, UpstreamTls};

const LISTENER: &str = "[[proxy.listeners]]\nname = \"http\"\naddress = \"127.0.0.1:8080\"\n";

fn config(site: &str) -> Config {
    let text = format!("{LISTENER}[[sites]]\nhostnames = [\"a.test\"]\n{site}\n");
    crate::config::parse(&text, Path::new("proxy.toml")).unwrap()
}

fn first_site(content: &Content) -> &pb::Site {
    &content.snapshot.dynamic.as_ref().unwrap().sites[0]
}

#[test]
fn configs_without_the_new_keys_encode_none_of_them() {
    let c = config(
        "upstreams = [\"http://127.0.0.1:1\"]\n\
         [[sites.routes]]\npath_prefix = \"/x\"\nupstreams = [\"http://127.0.0.1:2\"]\n\
         [[sites.routes]]\npath_prefix = \"/y\"\nrespond = { status = 204 }\n",
    );
    let content = Content::build(&c);
    let site = first_site(&content);
    assert_eq!(site.upstream, None);
    assert_eq!(
        (&site.request_headers, &site.response_headers),
        (&None, &None)
    );
    for route in &site.routes {
        let bare = pb::Route {
            path_prefix: route.path_prefix.clone(),
            action: route.action.clone(),
            ..Default::default()
        };
        assert_eq!(
            *route, bare,
            "a route without the new keys encodes only its action"
        );
    }
    // Nothing else is encoded than before issue 12, so the content hash of such a config is the
    // one it had before: a reload after the upgrade is a no-op.
}

#[test]
fn every_new_field_is_filled_from_the_model() {
    let c = config(
        r#"upstreams = ["http://127.0.0.1:1"]
upstream_protocol = "http1"
request_headers = { set = { "x-env" = "prod" }, add = { "x-via" = "edge" }, remove = ["x-debug"] }
response_headers = { remove = ["server"] }
[[sites.routes]]
path_prefix = "/api/"
upstreams = ["http://127.0.0.1:2"]
strip_prefix = true
methods = ["head", "GET"]
match_headers = { "X-Canary" = "1" }
upstream_response_timeout = "5s"
retries = 2
body_limit_bytes = "1k"
rate_limit = { requests_per_second = 10, burst = 20 }
upstream_protocol = "h2c"
response_headers = { set = { "x-route" = "api" } }
[[sites.routes]]
path_prefix = "/old/"
upstreams = ["http://127.0.0.1:3"]
rewrite = "/v2/"
"#,
    );
    let content = Content::build(&c);
    let site = first_site(&content);
    assert_eq!(
        site.upstream,
        Some(pb::UpstreamConnection {
            protocol: pb::UpstreamProtocol::Http1.into(),
            tls: None,
        })
    );
    let header = |name: &str, value: &str| pb::Header {
        name: name.into(),
        value: value.into(),
    };
    assert_eq!(
        site.request_headers,
        Some(pb::HeaderRules {
            remove: vec!["x-debug".into()],
            set: vec![header("x-env", "prod")],
            add: vec![header("x-via", "edge")],
        })
    );
    assert_eq!(site.response_headers.as_ref().unwrap().remove, ["server"]);
    let route = &site.routes[0];
    assert_eq!(route.methods, ["GET", "HEAD"]);
    assert_eq!(route.match_headers, [header("x-canary", "1")]);
    assert!(route.strip_prefix);
    assert_eq!(route.rewrite, None);
    assert_eq!(route.upstream_response_timeout_ms, Some(5000));
    assert_eq!(route.retries, Some(2));
    assert_eq!(route.body_limit_bytes, Some(1024));
    assert_eq!(
        route.rate_limit,
        Some(pb::RateLimit {
            requests_per_second: 10,
            burst: 20
        })
    );
    assert_eq!(
        route.upstream.as_ref().unwrap().protocol,
        i32::from(pb::UpstreamProtocol::H2c)
    );
    assert_eq!(route.request_headers, None);
    assert_eq!(
        route.response_headers.as_ref().unwrap().set,
        [header("x-route", "api")]
    );
    let rewritten = &site.routes[1];
    assert_eq!(rewritten.rewrite.as_deref(), Some("/v2/"));
    assert!(!rewritten.strip_prefix);
    assert_eq!(rewritten.upstream, None);
}

#[test]
fn upstream_tls_carries_the_files_text() {
    let mut c = config("upstreams = [\"https://127.0.0.1:1\"]\n");
    let certificate = Certificate {
        names: vec!["client.test".into()],
        chain_pem: "CLIENT CHAIN".into(),
        key_pem: "CLIENT KEY".into(),
        not_before: UNIX_EPOCH,
        not_after: UNIX_EPOCH,
        serial: "01".into(),
    };
    c.dynamic.sites[0].upstream.tls = Some(UpstreamTls {
        ca: Some(CaCertificates {
            file: PathBuf::from("/ca.pem"),
            pem: "CA TEXT".into(),
            count: 1,
        }),
        server_name: Some("api.internal".into()),
        client_certificate: Some(ClientCertificate {
            cert_file: PathBuf::from("/c.pem"),
            key_file: PathBuf::from("/k.pem"),
            certificate,
        }),
    });
    let content = Content::build(&c);
    let connection = first_site(&content).upstream.as_ref().unwrap();
    assert_eq!(
        connection.protocol,
        i32::from(pb::UpstreamProtocol::Unspecified)
    );
    assert_eq!(
        connection.tls,
        Some(pb::UpstreamTls {
            ca_pem: "CA TEXT".into(),
            server_name: "api.internal".into(),
            client_cert_pem: "CLIENT CHAIN".into(),
            client_key_pem: "CLIENT KEY".into(),
        })
    );
    // GetConfig never shows the key.
    let shown = crate::redact::snapshot(content.snapshot.clone());
    let tls = shown.dynamic.unwrap().sites[0]
        .upstream
        .clone()
        .unwrap()
        .tls
        .unwrap();
    assert_eq!(tls.client_key_pem, "");
    assert_eq!(tls.client_cert_pem, "CLIENT CHAIN");
}
