//! The hardening keys: defaults, overrides and located errors.

use std::time::Duration;

use super::*;

const LISTENER: &str = "[[proxy.listeners]]\nname = \"http\"\naddress = \"127.0.0.1:8080\"\n";

fn site(extra: &str) -> String {
    format!(
        "[[sites]]\nhostnames = [\"example.com\"]\nupstreams = [\"http://127.0.0.1:9000\"]\n{extra}\n"
    )
}

fn rendered(text: &str) -> Vec<String> {
    match parse(text, Path::new("proxy.toml")) {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(LoadError::Invalid(d)) => d.iter().map(ToString::to_string).collect(),
        Err(e) => panic!("unexpected {e}"),
    }
}

#[test]
fn defaults_follow_the_edge_proxies() {
    let c = parse(&format!("{LISTENER}{}", site("")), Path::new("proxy.toml")).unwrap();
    let l = c.statics.proxy.limits;
    assert_eq!(l.max_connections, 10_000);
    assert_eq!(l.max_connections_per_ip, Some(256));
    assert_eq!(l.http2_max_concurrent_streams, 100);
    assert_eq!(l.http2_idle_timeout, Duration::from_secs(180));
    assert_eq!(l.tls_handshake_timeout, Duration::from_secs(10));
    assert_eq!(l.response_send_timeout, Duration::from_secs(60));
    assert!(c.dynamic.merge_slashes);
    assert_eq!(c.dynamic.escaped_slashes, EscapedSlashes::Reject);
    assert_eq!(c.dynamic.sites[0].pool.limits.max_connections, 1024);
    assert_eq!(c.dynamic.sites[0].pool.limits.max_idle_connections, 128);
}

#[test]
fn keys_are_read_and_a_site_overrides_the_global_upstream_limits_key_by_key() {
    let text = format!(
        "merge_slashes = false\nescaped_slashes = \"keep\"\n\
         [upstream_limits]\nmax_requests = 50\nmax_connections = 20\n\
         [proxy]\nmax_connections = 500\nmax_connections_per_ip = 0\n\
         http2_max_concurrent_streams = 10\ntunnel_idle_timeout = \"1h\"\n{LISTENER}{}{}",
        site("upstream_limits = { max_connections = 4 }"),
        site("").replace("example.com", "b.example.com")
    );
    let c = parse(&text, Path::new("proxy.toml")).unwrap();
    let l = c.statics.proxy.limits;
    assert_eq!(l.max_connections, 500);
    assert_eq!(l.max_connections_per_ip, None, "0 turns the cap off");
    assert_eq!(l.http2_max_concurrent_streams, 10);
    assert_eq!(l.tunnel_idle_timeout, Duration::from_secs(3600));
    assert!(!c.dynamic.merge_slashes);
    assert_eq!(c.dynamic.escaped_slashes, EscapedSlashes::Keep);
    let own = c.dynamic.sites[0].pool.limits;
    assert_eq!(
        (
            own.max_connections,
            own.max_requests,
            own.max_idle_connections
        ),
        (4, 50, 4),
        "its own max_connections, the global max_requests, idle capped at its connections"
    );
    let global = c.dynamic.sites[1].pool.limits;
    assert_eq!((global.max_connections, global.max_requests), (20, 50));
}

#[test]
fn bad_values_are_located() {
    let text = format!(
        "escaped_slashes = \"decode\"\n[upstream_limits]\nmax_pending_requests = 0\n\
         [proxy]\nmax_connections = 0\nhttp2_max_concurrent_streams = 100000\n\
         max_connections_per_ip = 20000\nrequest_body_timeout = \"0s\"\n{LISTENER}{}",
        site(
            "upstream_limits = { max_idle_connections = 9, max_connections = 2, bogus = 1 }\n\
             [[sites.routes]]\npath_prefix = \"/x\"\n\
             respond = { status = 200, headers = { Content-Length = \"5\" } }"
        )
    );
    let got = rendered(&text);
    let has = |needle: &str| got.iter().any(|l| l.contains(needle));
    assert!(
        has("proxy.toml:1:19: escaped_slashes: invalid value \"decode\""),
        "{got:#?}"
    );
    assert!(
        has("upstream_limits.max_pending_requests: must be 1 to 1000000 (got 0)"),
        "{got:#?}"
    );
    assert!(
        has("proxy.max_connections: must be 1 to 10000000 (got 0)"),
        "{got:#?}"
    );
    assert!(
        has("proxy.http2_max_concurrent_streams: must be 1 to 10000"),
        "{got:#?}"
    );
    assert!(
        has("proxy.max_connections_per_ip: 20000 is more than max_connections"),
        "{got:#?}"
    );
    assert!(
        has("proxy.request_body_timeout: must be greater than 0"),
        "{got:#?}"
    );
    assert!(
        has("sites[0].upstream_limits.max_idle_connections: 9 is more than max_connections (2)"),
        "{got:#?}"
    );
    assert!(
        has("sites.upstream_limits.bogus") || has("bogus"),
        "{got:#?}"
    );
    assert!(
        has("\"Content-Length\" is set by proxyd itself"),
        "{got:#?}"
    );
}

#[test]
fn weights_are_bounded_in_total() {
    let upstreams: Vec<String> = (0..101)
        .map(|i| format!("{{ url = \"http://127.0.0.{i}:80\", weight = 1000 }}"))
        .collect();
    let text = format!(
        "{LISTENER}[[sites]]\nhostnames = [\"example.com\"]\nload_balancing = \"weighted_round_robin\"\n\
         upstreams = [{}]\n",
        upstreams.join(", ")
    );
    let got = rendered(&text);
    assert!(
        got.iter()
            .any(|l| l.contains("the weights add up to 101000; at most 100000")),
        "{got:#?}"
    );
}
