//! The upstream keys of sites and routes (issue 12) through the whole load: protocol, TLS to
//! upstreams with its files, header rules, route matching on methods and headers, rewrites and
//! per-route overrides. Each mistake is a diagnostic at its key, with its place in the file.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::tls_tests::cert_pair;
use super::*;

const DAY: Duration = Duration::from_secs(86_400);

const LISTENER: &str = "[[proxy.listeners]]\nname = \"http\"\naddress = \"127.0.0.1:8080\"\n";

fn parsed(text: &str) -> Config {
    match parse(text, Path::new("proxy.toml")) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}\n--- text:\n{text}"),
    }
}

fn rendered(text: &str) -> Vec<String> {
    match parse(text, Path::new("proxy.toml")) {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(e) => e
            .diagnostics(Path::new("proxy.toml"))
            .iter()
            .map(ToString::to_string)
            .collect(),
    }
}

/// Every needle is in some diagnostic, and there are exactly as many diagnostics as needles.
fn assert_exactly(got: &[String], needles: &[&str]) {
    for needle in needles {
        assert!(
            got.iter().any(|g| g.contains(needle)),
            "missing {needle:?} in {got:#?}"
        );
    }
    assert_eq!(got.len(), needles.len(), "{got:#?}");
}

#[test]
fn the_issue_example_parses_into_the_model() {
    let text = format!(
        r#"{LISTENER}
[[sites]]
hostnames = ["api.example"]
upstreams = ["https://10.0.0.5:8443"]
upstream_protocol = "auto"
upstream_tls = {{ server_name = "API.internal" }}
request_headers = {{ set = {{ "X-Env" = "prod", "x-real-ip" = "{{client_ip}}", "Host" = "{{host}}" }}, add = {{ "x-via" = "edge" }}, remove = ["X-Debug"] }}
response_headers = {{ set = {{}}, add = {{}}, remove = ["server"] }}

[[sites.routes]]
path_prefix = "/api/"
upstreams = ["http://127.0.0.1:9000"]
strip_prefix = true
methods = ["get", "HEAD"]
match_headers = {{ "X-Canary" = "1" }}
upstream_response_timeout = "5s"
retries = 1
body_limit_bytes = "1m"
rate_limit = {{ requests_per_second = 10, burst = 20 }}
upstream_protocol = "h2c"
request_headers = {{ set = {{ "x-route" = "api" }} }}

[[sites.routes]]
path_prefix = "/api/"
upstreams = ["http://127.0.0.1:9001"]
rewrite = "/v2/"

[[sites.routes]]
path_prefix = "/api/"
methods = ["POST"]
respond = {{ status = 405 }}
rate_limit = {{ requests_per_second = 1, burst = 1 }}
"#
    );
    let c = parsed(&text);
    let site = &c.dynamic.sites[0];
    assert_eq!(site.upstream.protocol, Some(UpstreamProtocol::Auto));
    let tls = site.upstream.tls.as_ref().unwrap();
    assert_eq!(tls.server_name.as_deref(), Some("api.internal"));
    assert_eq!((&tls.ca, &tls.client_certificate), (&None, &None));
    assert_eq!(
        site.request_headers,
        HeaderRules {
            remove: vec!["x-debug".into()],
            set: vec![
                ("host".into(), "{host}".into()),
                ("x-env".into(), "prod".into()),
                ("x-real-ip".into(), "{client_ip}".into()),
            ],
            add: vec![("x-via".into(), "edge".into())],
        }
    );
    assert_eq!(site.response_headers.remove, ["server"]);

    let route = &site.routes[0];
    assert_eq!(route.methods, ["GET", "HEAD"]);
    assert_eq!(route.match_headers, [("x-canary".into(), "1".into())]);
    assert_eq!(route.body_limit_bytes, Some(1 << 20));
    assert_eq!(route.rate_limit.unwrap().burst.get(), 20);
    let RouteAction::Proxy(proxy) = &route.action else {
        panic!("{route:?}")
    };
    assert_eq!(proxy.path, PathRewrite::StripPrefix);
    assert_eq!(proxy.upstream.protocol, Some(UpstreamProtocol::H2c));
    assert_eq!(proxy.upstream.tls, None);
    assert_eq!(
        proxy.upstream_response_timeout,
        Some(Duration::from_secs(5))
    );
    assert_eq!(proxy.retries, Some(1));
    assert_eq!(
        proxy.request_headers.set,
        [("x-route".into(), "api".into())]
    );
    assert_eq!(route.label(), "/api/ GET,HEAD x-canary=1");

    let RouteAction::Proxy(proxy) = &site.routes[1].action else {
        panic!()
    };
    assert_eq!(proxy.path, PathRewrite::Replace("/v2/".into()));
    assert_eq!(proxy.upstream, UpstreamConnection::default());
    assert_eq!(site.routes[2].methods, ["POST"]);
}

#[test]
fn absent_keys_leave_the_model_as_before() {
    let c = parsed(&format!(
        "{LISTENER}[[sites]]\nhostnames = [\"a.test\"]\nupstreams = [\"http://127.0.0.1:1\"]\n\
         [[sites.routes]]\npath_prefix = \"/x\"\nupstreams = [\"http://127.0.0.1:2\"]\n"
    ));
    let site = &c.dynamic.sites[0];
    assert!(site.upstream.is_empty());
    assert!(site.request_headers.is_empty() && site.response_headers.is_empty());
    let route = &site.routes[0];
    assert!(route.methods.is_empty() && route.match_headers.is_empty());
    assert_eq!((route.rate_limit, route.body_limit_bytes), (None, None));
    let RouteAction::Proxy(proxy) = &route.action else {
        panic!()
    };
    assert_eq!(proxy.path, PathRewrite::Keep);
    assert_eq!(
        (proxy.retries, proxy.upstream_response_timeout),
        (None, None)
    );
}

#[test]
fn protocols_must_fit_the_schemes_of_the_upstreams_they_apply_to() {
    let text = format!(
        r#"{LISTENER}
[[sites]]
hostnames = ["a.test"]
upstreams = ["http://10.0.0.1:80"]
upstream_protocol = "h2"

[[sites.routes]]
path_prefix = "/own"
upstreams = ["https://10.0.0.2:443"]
upstream_protocol = "h2c"

[[sites.routes]]
path_prefix = "/inherits"
upstreams = ["https://10.0.0.3:443"]

[[sites.routes]]
path_prefix = "/bad"
upstreams = ["http://10.0.0.4:80"]
upstream_protocol = "http2"
"#
    );
    let got = rendered(&text);
    assert_exactly(
        &got,
        &[
            "proxy.toml:8:21: sites[0].upstream_protocol: upstream_protocol = \"h2\" is HTTP/2 over \
             TLS and needs https:// upstreams, but http://10.0.0.1:80 (sites[0].upstreams) is not",
            "sites[0].upstream_protocol: upstream_protocol = \"h2\" is HTTP/2 over TLS and needs \
             https:// upstreams, but http://10.0.0.4:80 (route /bad) is not",
            "proxy.toml:13:21: sites[0].routes[0].upstream_protocol: upstream_protocol = \"h2c\" is \
             HTTP/2 over plain TCP and needs http:// upstreams, but https://10.0.0.2:443 \
             (sites[0].routes[0].upstreams) is not",
            "proxy.toml:22:21: sites[0].routes[2].upstream_protocol: invalid upstream protocol \
             \"http2\": expected one of \"http1\", \"h2\", \"h2c\", \"auto\"",
        ],
    );
}

#[test]
fn header_rules_are_checked_name_by_name() {
    let text = format!(
        r#"{LISTENER}
[[sites]]
hostnames = ["a.test"]
upstreams = ["http://10.0.0.1:80"]
request_headers = {{ set = {{ "x-a" = "{{client_ip}} {{user}}", "X-B" = "1", "x-b" = "2", "bad name" = "v", "Connection" = "close" }}, add = {{ "host" = "h" }}, remove = ["x-a", "te", "x-c", "x-c"] }}
response_headers = {{ set = {{ "host" = "h", "x-cr" = "a\rb" }}, remove = ["Transfer-Encoding"], bogus = [] }}
"#
    );
    let got = rendered(&text);
    assert_exactly(
        &got,
        &[
            "sites[0].request_headers.set.x-a: unknown placeholder {user} in header \"x-a\": use \
             {client_ip}, {request_id}, {host}, {scheme}",
            "sites[0].request_headers.set.x-b: header \"x-b\" is set twice",
            "sites[0].request_headers.set.bad name: invalid header name \"bad name\"",
            "sites[0].request_headers.set.Connection: header \"Connection\" is hop-by-hop or framing",
            "sites[0].request_headers.add.host: `host` may appear only in request_headers.set",
            "sites[0].request_headers.remove[0]: header \"x-a\" is both set and removed",
            "sites[0].request_headers.remove[1]: header \"te\" is hop-by-hop or framing",
            "sites[0].request_headers.remove[3]: header \"x-c\" is listed twice",
            "sites[0].response_headers.set.host: `host` may appear only in request_headers.set",
            "sites[0].response_headers.set.x-cr: invalid value for header \"x-cr\": no CR, LF, NUL",
            "sites[0].response_headers.remove[0]: header \"Transfer-Encoding\" is hop-by-hop",
            "sites[0].response_headers.bogus: unknown key `bogus`",
        ],
    );
    // Located at the entry itself.
    assert!(
        got.iter()
            .any(|g| g.starts_with("proxy.toml:8:37: sites[0].request_headers.set.x-a")),
        "{got:#?}"
    );
}

#[test]
fn routes_are_told_apart_by_prefix_methods_and_match_headers() {
    let text = format!(
        r#"{LISTENER}
[[sites]]
hostnames = ["a.test"]
upstreams = ["http://10.0.0.1:80"]

[[sites.routes]]
path_prefix = "/"
methods = ["GET"]
upstreams = ["http://10.0.0.2:80"]

[[sites.routes]]
path_prefix = "/"
match_headers = {{ "x-canary" = "1" }}
upstreams = ["http://10.0.0.3:80"]

[[sites.routes]]
path_prefix = "/"
methods = ["get"]
respond = {{ status = 204 }}

[[sites.routes]]
path_prefix = "/m"
methods = ["GET", "get", "bad method", "HEAD"]
match_headers = {{ "X-A" = "1", "x-a" = "2" }}
respond = {{ status = 204 }}

[[sites.routes]]
path_prefix = "/e"
methods = []
match_headers = {{}}
respond = {{ status = 204 }}

[[sites.routes]]
path_prefix = "/"
upstreams = ["http://10.0.0.4:80"]
"#
    );
    let got = rendered(&text);
    assert_exactly(
        &got,
        &[
            "sites[0].routes[2].path_prefix: path prefix \"/\" with the same methods and \
             match_headers is already routed by sites[0].routes[0]",
            "sites[0].routes[3].methods[1]: method GET is listed twice",
            "sites[0].routes[3].methods[2]: invalid method \"bad method\"",
            "sites[0].routes[3].match_headers.x-a: header \"x-a\" is listed twice",
            "sites[0].routes[4].methods: must not be empty",
            "sites[0].routes[4].match_headers: must hold at least one header",
            "sites[0].routes[5].path_prefix: path prefix \"/\" is already routed by the site's \
             `upstreams`",
        ],
    );
}

#[test]
fn rewrites_and_upstream_settings_only_on_proxying_routes() {
    let text = format!(
        r#"{LISTENER}
[[sites]]
hostnames = ["a.test"]

[[sites.routes]]
path_prefix = "/a"
upstreams = ["http://10.0.0.1:80"]
strip_prefix = true
rewrite = "/v2/"

[[sites.routes]]
path_prefix = "/b"
upstreams = ["http://10.0.0.1:80"]
rewrite = "v2?x"

[[sites.routes]]
path_prefix = "/c"
redirect = {{ location = "/d" }}
strip_prefix = false
retries = 1
upstream_protocol = "h2c"
request_headers = {{ remove = ["x"] }}
upstream_response_timeout = "1s"
methods = ["GET"]
body_limit_bytes = 10
rate_limit = {{ requests_per_second = 1, burst = 1 }}
"#
    );
    let got = rendered(&text);
    assert_exactly(
        &got,
        &[
            "proxy.toml:12:11: sites[0].routes[0].rewrite: `rewrite` and `strip_prefix = true` \
             exclude each other",
            "sites[0].routes[1].rewrite: invalid rewrite \"v2?x\": it starts with '/'",
            "sites[0].routes[2].strip_prefix: `strip_prefix` applies only to routes with `upstreams`",
            "sites[0].routes[2].retries: `retries` applies only to routes with `upstreams`",
            "sites[0].routes[2].upstream_protocol: `upstream_protocol` applies only",
            "sites[0].routes[2].request_headers: `request_headers` applies only",
            "sites[0].routes[2].upstream_response_timeout: `upstream_response_timeout` applies only",
        ],
    );
}

#[test]
fn per_route_limits_have_the_bounds_of_the_site_keys() {
    let text = format!(
        r#"{LISTENER}
[[sites]]
hostnames = ["a.test"]

[[sites.routes]]
path_prefix = "/a"
upstreams = ["http://10.0.0.1:80"]
retries = 9
upstream_response_timeout = "0s"
body_limit_bytes = 0
rate_limit = {{ requests_per_second = 0, burst = 1, brust = 2 }}

[[sites.routes]]
path_prefix = "/b"
respond = {{ status = 200 }}
body_limit_bytes = "10x"
"#
    );
    let got = rendered(&text);
    assert_exactly(
        &got,
        &[
            "sites[0].routes[0].retries: must be 0 to 5 (got 9)",
            "sites[0].routes[0].upstream_response_timeout: must be greater than 0",
            "sites[0].routes[0].body_limit_bytes: must be greater than 0",
            "sites[0].routes[0].rate_limit.requests_per_second: must be greater than 0",
            "sites[0].routes[0].rate_limit.brust: unknown key `brust`; did you mean `burst`?",
            "sites[0].routes[1].body_limit_bytes: invalid size \"10x\"",
        ],
    );
}

/// A site on `upstream`, its `upstream_tls` being `tls`, with a route `/r` to `route_upstream`
/// whose own settings are `route`.
fn tls_site(upstream: &str, tls: &str, route_upstream: &str, route: &str) -> String {
    format!(
        "{LISTENER}[[sites]]\nhostnames = [\"a.test\"]\nupstreams = [\"{upstream}\"]\n\
         upstream_tls = {tls}\n\
         [[sites.routes]]\npath_prefix = \"/r\"\nupstreams = [\"{route_upstream}\"]\n{route}\n"
    )
}

#[test]
fn upstream_tls_files_are_read_and_checked_at_every_load() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = cert_pair(
        dir.path(),
        "ca",
        &["ca.test"],
        SystemTime::now() + 365 * DAY,
    );
    let (client, client_key) = cert_pair(
        dir.path(),
        "client",
        &["client.test"],
        SystemTime::now() + 10 * DAY,
    );
    let (_, other_key) = cert_pair(
        dir.path(),
        "other",
        &["other.test"],
        SystemTime::now() + 365 * DAY,
    );
    let tls = format!(
        "{{ ca_file = \"{}\", client_cert_file = \"{}\", client_key_file = \"{}\" }}",
        ca.display(),
        client.display(),
        client_key.display()
    );
    let text = tls_site("https://10.0.0.1", &tls, "https://10.0.0.2", "");
    let c = parsed(&text);
    let tls = c.dynamic.sites[0].upstream.tls.as_ref().unwrap();
    let ca_text = std::fs::read_to_string(&ca).unwrap();
    assert_eq!(tls.ca.as_ref().unwrap().pem, ca_text);
    assert_eq!(tls.ca.as_ref().unwrap().count, 1);
    let client_certificate = tls.client_certificate.as_ref().unwrap();
    assert_eq!(client_certificate.cert_file, client);
    assert!(!format!("{client_certificate:?}").contains("PRIVATE KEY"));
    // The client certificate expires in 10 days: accepted, with a warning.
    let warnings = c.certificate_warnings(SystemTime::now());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("the upstream client certificate of site a.test expires on"),
        "{warnings:?}"
    );

    // A changed CA file is read again by the next load.
    let (ca2, _) = cert_pair(
        dir.path(),
        "ca2",
        &["ca2.test"],
        SystemTime::now() + 365 * DAY,
    );
    std::fs::copy(&ca2, &ca).unwrap();
    let again = parsed(&text);
    let pem = &again.dynamic.sites[0].upstream.tls.as_ref().unwrap().ca;
    assert_ne!(pem.as_ref().unwrap().pem, ca_text);

    // Missing, not PEM, a key that does not match, one file of the pair.
    std::fs::write(dir.path().join("garbage.pem"), "not a certificate").unwrap();
    let bad = format!(
        "{{ ca_file = \"{}\", client_cert_file = \"{}\", client_key_file = \"{}\", \
         server_name = \"bad name!\", bogus = 1 }}",
        dir.path().join("missing.pem").display(),
        client.display(),
        other_key.display(),
    );
    let route = format!(
        "upstream_tls = {{ ca_file = \"{}\", client_key_file = \"{}\" }}",
        dir.path().join("garbage.pem").display(),
        client_key.display()
    );
    let got = rendered(&tls_site(
        "https://10.0.0.1",
        &bad,
        "https://10.0.0.2",
        &route,
    ));
    assert_exactly(
        &got,
        &[
            &format!(
                "proxy.toml:7:28: sites[0].upstream_tls.ca_file: ca_file {}: cannot read it: No \
                 such file or directory",
                dir.path().join("missing.pem").display()
            ),
            "sites[0].upstream_tls.server_name: invalid server name \"bad name!\"",
            &format!(
                "sites[0].upstream_tls.client_cert_file: the private key in {} does not match the \
                 certificate in {}",
                other_key.display(),
                client.display()
            ),
            "sites[0].upstream_tls.bogus: unknown key `bogus`",
            "sites[0].routes[0].upstream_tls.ca_file: ca_file",
            "sites[0].routes[0].upstream_tls.client_key_file: `client_key_file` needs \
             `client_cert_file`: give both or neither",
        ],
    );
    assert!(
        got.iter()
            .any(|g| g.contains("no \"BEGIN CERTIFICATE\" block")),
        "{got:#?}"
    );
}

#[test]
fn upstream_tls_needs_an_https_upstream_to_apply_to() {
    let tls = "{ server_name = \"api.internal\" }";
    // The site's applies to its own upstreams and to the route without its own.
    let got = rendered(&tls_site("http://10.0.0.1", tls, "http://10.0.0.2", ""));
    assert_exactly(
        &got,
        &[
            "proxy.toml:7:16: sites[0].upstream_tls: upstream_tls applies only to https:// upstreams",
        ],
    );
    parsed(&tls_site("http://10.0.0.1", tls, "https://10.0.0.2", ""));
    // A route with its own: the site's applies to the site's http:// upstream only.
    let got = rendered(&tls_site(
        "http://10.0.0.1",
        tls,
        "https://10.0.0.2",
        &format!("upstream_tls = {tls}"),
    ));
    assert_exactly(&got, &["sites[0].upstream_tls: upstream_tls applies only"]);
    let got = rendered(&tls_site(
        "https://10.0.0.1",
        tls,
        "http://10.0.0.2",
        &format!("upstream_tls = {tls}"),
    ));
    assert_exactly(
        &got,
        &["sites[0].routes[0].upstream_tls: upstream_tls applies only to https:// upstreams"],
    );
}
