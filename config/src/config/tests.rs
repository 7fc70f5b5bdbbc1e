//! Config parsing and validation, checked against the diagnostics an operator would read.

use super::*;

const MINIMAL: &str = r#"
[[proxy.listeners]]
name = "http"
address = "127.0.0.1:8080"

[[sites]]
hostnames = ["example.com"]
upstreams = ["http://127.0.0.1:9000"]
"#;

fn diagnostics(text: &str) -> Vec<Diagnostic> {
    match parse(text, Path::new("proxy.toml")) {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(LoadError::Invalid(d)) => d,
        Err(e) => panic!("unexpected {e}"),
    }
}

fn rendered(text: &str) -> Vec<String> {
    diagnostics(text).iter().map(ToString::to_string).collect()
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let c = parse(MINIMAL, Path::new("proxy.toml")).unwrap();
    assert_eq!(c.dynamic.body_limit_bytes, 10 * 1024 * 1024);
    assert_eq!(c.dynamic.rate_limit, None);
    assert_eq!(c.dynamic.log_level, "info");
    assert_eq!(c.statics.log_format, LogFormat::Json);
    assert_eq!(
        c.statics.control.socket,
        PathBuf::from("/run/controld/control.sock")
    );
    assert_eq!(
        c.statics.control.state_dir,
        PathBuf::from("/var/lib/controld")
    );
    assert_eq!(
        c.statics.proxy.shutdown_timeout,
        std::time::Duration::from_secs(30)
    );
    assert_eq!(
        c.dynamic.sites[0].upstreams[0].as_str(),
        "http://127.0.0.1:9000"
    );
}

#[test]
fn the_design_example_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = super::tls_tests::cert_pair(
        dir.path(),
        "s",
        &["static.example.com"],
        std::time::SystemTime::now() + std::time::Duration::from_secs(90 * 86_400),
    );
    let text = r#"
body_limit_bytes = "10m"
[rate_limit]
requests_per_second = 100
burst = 200
[logging]
level = "info"
format = "json"
[[sites]]
hostnames = ["example.com", "www.example.com"]
upstreams = ["http://127.0.0.1:8080", "http://127.0.0.1:8081"]
tls = "acme"
[[sites]]
hostnames = ["static.example.com"]
upstreams = ["http://127.0.0.1:8082"]
tls = { cert_file = "CERT", key_file = "KEY" }
rate_limit = { requests_per_second = 5, burst = 10 }
body_limit_bytes = 1024
[control]
socket = "/run/controld/control.sock"
state_dir = "/var/lib/controld"
[proxy]
shutdown_timeout = "30s"
admin_address = "127.0.0.1:9901"
[[proxy.listeners]]
name = "http"
address = "0.0.0.0:80"
[[proxy.listeners]]
name = "https"
address = "0.0.0.0:443"
tls = true
[acme]
directory_url = "https://acme-v02.api.letsencrypt.org/directory"
contact = ["mailto:ops@example.com"]
challenge = "http-01"
"#
    .replace("CERT", &cert.display().to_string())
    .replace("KEY", &key.display().to_string());
    let c = parse(&text, Path::new("proxy.toml")).unwrap();
    assert_eq!(c.dynamic.sites.len(), 2);
    assert_eq!(c.dynamic.sites[1].body_limit_bytes, Some(1024));
    assert_eq!(c.dynamic.sites[0].tls, SiteTls::Acme);
}

#[test]
fn every_problem_is_reported_at_once_with_its_place() {
    let text = r#"
[rate_limit]
requests_per_second = 0
burst = -1

[[proxy.listeners]]
name = "http"
address = "127.0.0.1:8080"

[[proxy.listeners]]
name = "http"
address = "127.0.0.1:8080"

[[sites]]
hostnames = ["a.example"]
upstreams = ["ftp://127.0.0.1"]

[[sites]]
hostnames = ["A.example"]
upstreams = ["http://127.0.0.1:9000"]
"#;
    let got = rendered(text);
    let expected = [
        "proxy.toml:3:23: rate_limit.requests_per_second: must be greater than 0",
        "proxy.toml:4:9: rate_limit.burst: must be greater than 0",
        "proxy.toml:11:8: proxy.listeners[1].name: listener name \"http\" is already used by proxy.listeners[0]",
        "proxy.toml:12:11: proxy.listeners[1].address: address 127.0.0.1:8080 is already used",
        "proxy.toml:16:14: sites[0].upstreams[0]: invalid upstream URL \"ftp://127.0.0.1\"",
        "proxy.toml:19:14: sites[1].hostnames[0]: hostname \"a.example\" is already used by sites[0].hostnames[0]",
    ];
    assert_eq!(got.len(), expected.len(), "{got:#?}");
    for (g, e) in got.iter().zip(expected) {
        assert!(g.starts_with(e), "{g:?} should start with {e:?}");
    }
}

#[test]
fn unknown_keys_are_errors_with_a_close_spelling() {
    let text = format!(
        "{MINIMAL}\n[rate_limit]\nreqests_per_second = 1\nburst = 1\nrequests_per_second = 1\n"
    );
    let got = rendered(&text);
    assert_eq!(
        got,
        [
            "proxy.toml:11:1: rate_limit.reqests_per_second: unknown key `reqests_per_second`; did you mean `requests_per_second`?"
        ]
    );

    let text = MINIMAL.replace("upstreams =", "upstream =") + "\n[logging]\nformt = \"text\"\n";
    let got = rendered(&text);
    assert!(
        got.iter()
            .any(|d| d
                .contains("sites[0].upstream: unknown key `upstream`; did you mean `upstreams`?")),
        "{got:#?}"
    );
    assert!(
        got.iter()
            .any(|d| d.contains("logging.formt: unknown key `formt`; did you mean `format`?")),
        "{got:#?}"
    );
    assert!(
        got.iter().any(|d| d.contains(
            "sites[0]: a site needs `upstreams`, at least one [[sites.routes]], or both"
        )),
        "{got:#?}"
    );
}

#[test]
fn syntax_and_type_errors_are_located() {
    let got = rendered("[proxy\nname = 1\n");
    assert!(got[0].starts_with("proxy.toml:1:"), "{got:#?}");

    let got = rendered(&format!(
        "{MINIMAL}\n[rate_limit]\nrequests_per_second = \"fast\"\nburst = 1\n"
    ));
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(
        got[0].starts_with("proxy.toml:11:23: rate_limit.requests_per_second: invalid type"),
        "{got:#?}"
    );
}

#[test]
fn the_admin_listener_name_is_reserved_and_its_address_not_shared() {
    let got = rendered(&MINIMAL.replace("name = \"http\"", "name = \"admin\""));
    assert_eq!(
        got,
        [
            "proxy.toml:3:8: proxy.listeners[0].name: listener name \"admin\" is reserved: \
             proxyd reports its admin listener (proxy.admin_address) under it"
        ],
    );

    let got = rendered(&format!(
        "[proxy]\nadmin_address = \"127.0.0.1:8080\"\n{MINIMAL}"
    ));
    assert_eq!(
        got,
        [
            "proxy.toml:2:17: proxy.admin_address: address 127.0.0.1:8080 is already used by proxy.listeners[0]"
        ],
    );
}

#[test]
fn durations_sizes_and_addresses_are_checked() {
    let text = MINIMAL.replace("address = \"127.0.0.1:8080\"", "address = \"localhost:80\"")
        + "body_limit_bytes = \"10q\"\n"; // lands in the last table: a site key
    let got = rendered(&text);
    assert!(
        got.iter()
            .any(|d| d.contains("proxy.listeners[0].address: invalid address \"localhost:80\"")),
        "{got:#?}"
    );
    assert!(
        got.iter()
            .any(|d| d.contains("sites[0].body_limit_bytes: invalid size \"10q\"")),
        "{got:#?}"
    );

    let text = format!("[proxy]\nshutdown_timeout = \"30\"\n{MINIMAL}");
    let got = rendered(&text);
    assert!(
        got.iter()
            .any(|d| d
                .starts_with("proxy.toml:2:20: proxy.shutdown_timeout: invalid duration \"30\"")),
        "{got:#?}"
    );
}

#[test]
fn acme_sites_cannot_have_wildcards() {
    let text = MINIMAL
        .replace("[\"example.com\"]", "[\"example.com\", \"*.example.com\"]")
        .replace("upstreams = [", "tls = \"acme\"\nupstreams = [")
        + "[acme]\ndirectory_url = \"https://ca.example/dir\"\n";
    let got = rendered(&text);
    assert!(
        got.iter()
            .any(|d| d
                .contains("sites[0].tls: tls = \"acme\" cannot cover the wildcard *.example.com")),
        "{got:#?}"
    );
}

#[test]
fn site_tls_must_be_consistent() {
    let text = MINIMAL.replace("upstreams = [", "tls = \"acme\"\nupstreams = [");
    let got = rendered(&text);
    assert!(
        got.iter()
            .any(|d| d.contains("sites[0].tls: tls = \"acme\" needs an [acme] section")),
        "{got:#?}"
    );
    assert!(
        got.iter().any(|d| d.contains(
            "sites[0].tls: this site wants TLS, but no [[proxy.listeners]] has tls = true"
        )),
        "{got:#?}"
    );

    let text = MINIMAL.replace(
        "upstreams = [",
        "tls = { cert_file = \"c.pem\" }\nupstreams = [",
    );
    let got = rendered(&text);
    assert!(
        got.iter()
            .any(|d| d.contains("sites[0].tls.key_file: `key_file` is required")),
        "{got:#?}"
    );

    let text = MINIMAL.replace("upstreams = [", "tls = \"files\"\nupstreams = [");
    let got = rendered(&text);
    assert!(
        got.iter()
            .any(|d| d.contains("sites[0].tls: invalid tls \"files\"")),
        "{got:#?}"
    );
}

#[test]
fn a_config_without_listeners_or_hostnames_is_refused() {
    let got = rendered("[[sites]]\nhostnames = []\nupstreams = [\"http://127.0.0.1:1\"]\n");
    assert!(
        got.iter()
            .any(|d| d.contains("proxy.listeners: at least one [[proxy.listeners]] is required")),
        "{got:#?}"
    );
    assert!(
        got.iter()
            .any(|d| d.contains("sites[0]: a site needs at least one entry in `hostnames`")),
        "{got:#?}"
    );
}

#[test]
fn an_oversized_file_is_refused_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.toml");
    std::fs::write(&path, vec![b'#'; (MAX_CONFIG_BYTES + 1) as usize]).unwrap();
    assert!(matches!(load(&path), Err(LoadError::TooLarge { .. })));
    assert!(matches!(
        load(&dir.path().join("missing.toml")),
        Err(LoadError::Read { .. })
    ));
}

#[test]
fn routes_and_wildcards_parse() {
    let text = r#"
[[proxy.listeners]]
name = "http"
address = "127.0.0.1:8080"

[[sites]]
hostnames = ["example.com", "*.example.com"]
upstreams = ["http://127.0.0.1:9000"]

[[sites.routes]]
path_prefix = "/api/"
upstreams = ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]

[[sites.routes]]
path_prefix = "/old"
redirect = { location = "https://{host}/new{path}", status = 301 }

[[sites.routes]]
path_prefix = "/ping"
respond = { body = "pong\n", headers = { Content-Type = "text/plain" } }
"#;
    let c = parse(text, Path::new("proxy.toml")).unwrap();
    let site = &c.dynamic.sites[0];
    assert_eq!(site.hostnames[1].as_str(), "*.example.com");
    assert_eq!(site.routes.len(), 3);
    assert!(matches!(&site.routes[0].action, RouteAction::Proxy(p) if p.upstreams.len() == 2));
    assert_eq!(
        site.routes[1].action,
        RouteAction::Redirect {
            location: "https://{host}/new{path}".into(),
            status: 301
        }
    );
    assert_eq!(
        site.routes[2].action,
        RouteAction::Respond {
            status: 200,
            body: "pong\n".into(),
            headers: vec![("content-type".into(), "text/plain".into())]
        }
    );
}

#[test]
fn bad_routes_are_reported_each_with_its_place() {
    let text = r#"
[[proxy.listeners]]
name = "http"
address = "127.0.0.1:8080"

[[sites]]
hostnames = ["example.com"]

[[sites.routes]]
path_prefix = "api"
upstreams = []

[[sites.routes]]
path_prefix = "/x"

[[sites.routes]]
path_prefix = "/x"
respond = { status = 99 }
redirect = { location = "/y" }

[[sites.routes]]
path_prefix = "/r"
redirect = { location = "/y", status = 200 }

[[sites.routes]]
path_prefx = "/z"
respond = { headers = { "bad header" = "v" } }
"#;
    let got = rendered(text);
    let expect = [
        "sites[0].routes[0].path_prefix: invalid path prefix \"api\"",
        "sites[0].routes[1]: a route needs exactly one of `upstreams`, `redirect` or `respond`",
        "sites[0].routes[2].path_prefix: path prefix \"/x\" is already routed by sites[0].routes[1]",
        "sites[0].routes[2]: a route needs exactly one of",
        "sites[0].routes[3].redirect.status: invalid redirect status 200",
        "sites[0].routes[4].path_prefx: unknown key `path_prefx`; did you mean `path_prefix`?",
        "sites[0].routes[4]: missing key `path_prefix`",
    ];
    for e in expect {
        assert!(
            got.iter().any(|g| g.contains(e)),
            "missing {e:?} in {got:#?}"
        );
    }
}

#[test]
fn trusted_proxies_and_request_head_limits() {
    let text = format!(
        "trusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\"]\n\
         [proxy]\nmax_request_headers = 50\nmax_request_header_bytes = \"16k\"\n{MINIMAL}"
    );
    let c = parse(&text, Path::new("proxy.toml")).unwrap();
    let nets: Vec<_> = c
        .dynamic
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
    assert_eq!(
        (
            c.statics.proxy.max_request_headers,
            c.statics.proxy.max_request_header_bytes
        ),
        (50, 16384)
    );

    let defaults = parse(MINIMAL, Path::new("proxy.toml")).unwrap();
    assert_eq!(defaults.statics.proxy.max_request_headers, 100);
    assert_eq!(defaults.statics.proxy.max_request_header_bytes, 64 * 1024);

    let text = format!(
        "trusted_proxies = [\"10.0.0.0/33\", \"proxy.example\"]\n\
         [proxy]\nmax_request_headers = 0\nmax_request_header_bytes = 1024\n{MINIMAL}"
    );
    let got = rendered(&text);
    assert!(
        got.iter()
            .any(|d| d.contains("trusted_proxies[0]: invalid CIDR \"10.0.0.0/33\"")),
        "{got:#?}"
    );
    assert!(
        got.iter()
            .any(|d| d.contains("trusted_proxies[1]: invalid CIDR \"proxy.example\"")),
        "{got:#?}"
    );
    assert!(
        got.iter()
            .any(|d| d.contains("proxy.max_request_headers: must be 1 to 10000")),
        "{got:#?}"
    );
    assert!(
        got.iter()
            .any(|d| d.contains("proxy.max_request_header_bytes: must be 8k to 16m")),
        "{got:#?}"
    );
}

#[test]
fn timeouts_have_defaults_and_must_be_positive() {
    let c = parse(MINIMAL, Path::new("proxy.toml")).unwrap();
    let secs = std::time::Duration::from_secs;
    assert_eq!(c.dynamic.upstream_response_timeout, secs(60));
    let p = &c.statics.proxy;
    assert_eq!(
        (
            p.request_header_timeout,
            p.upstream_connect_timeout,
            p.upstream_idle_timeout
        ),
        (secs(30), secs(5), secs(4))
    );

    let text = format!(
        "upstream_response_timeout = \"2s\"\n[proxy]\nrequest_header_timeout = \"10s\"\n\
         upstream_connect_timeout = \"1s\"\nupstream_idle_timeout = \"50s\"\n{}",
        MINIMAL.replace(
            "upstreams = [",
            "upstream_response_timeout = \"500ms\"\nupstreams = ["
        )
    );
    let c = parse(&text, Path::new("proxy.toml")).unwrap();
    assert_eq!(c.dynamic.upstream_response_timeout, secs(2));
    assert_eq!(
        c.dynamic.sites[0].upstream_response_timeout,
        Some(std::time::Duration::from_millis(500))
    );
    assert_eq!(c.statics.proxy.upstream_idle_timeout, secs(50));

    let text = format!(
        "upstream_response_timeout = \"0s\"\n[proxy]\nupstream_connect_timeout = \"soon\"\n{MINIMAL}"
    );
    let got = rendered(&text);
    assert!(
        got.iter()
            .any(|d| d.contains("upstream_response_timeout: must be greater than 0")),
        "{got:#?}"
    );
    assert!(
        got.iter()
            .any(|d| d.contains("proxy.upstream_connect_timeout: invalid duration \"soon\"")),
        "{got:#?}"
    );
}

#[test]
fn pools_weights_and_health_checks() {
    let text = MINIMAL.replace(
        "upstreams = [\"http://127.0.0.1:9000\"]",
        "upstreams = [\"http://127.0.0.1:9000\", { url = \"http://127.0.0.1:9001\", weight = 3 }]\n\
         load_balancing = \"weighted_round_robin\"\nretries = 2\n\
         [sites.health_check]\npath = \"/healthz\"\ninterval = \"2s\"\n\
         [sites.passive_health]\nconsecutive_failures = 0",
    );
    let c = parse(&text, Path::new("proxy.toml")).unwrap();
    let site = &c.dynamic.sites[0];
    assert_eq!(
        site.upstreams.iter().map(|u| u.weight).collect::<Vec<_>>(),
        [1, 3]
    );
    assert_eq!(
        (site.pool.load_balancing, site.pool.retries),
        (LoadBalancing::WeightedRoundRobin, 2)
    );
    let hc = site.pool.health_check.as_ref().unwrap();
    assert_eq!(
        (
            hc.path.as_str(),
            hc.interval,
            hc.healthy_threshold,
            hc.unhealthy_threshold
        ),
        ("/healthz", std::time::Duration::from_secs(2), 2, 3)
    );
    assert_eq!(
        site.pool.passive_health, None,
        "0 failures turns ejection off"
    );

    let defaults = parse(MINIMAL, Path::new("proxy.toml")).unwrap();
    let pool = &defaults.dynamic.sites[0].pool;
    assert_eq!(
        (
            pool.load_balancing,
            pool.retries,
            pool.health_check.is_none()
        ),
        (LoadBalancing::RoundRobin, 1, true)
    );
    assert_eq!(pool.passive_health.unwrap().consecutive_failures, 5);

    let text = MINIMAL.replace(
        "upstreams = [\"http://127.0.0.1:9000\"]",
        "upstreams = [{ url = \"http://127.0.0.1:9000\", weight = 0 }, { weight = 2 }, { url = \"http://x:1\", wieght = 2 }]\n\
         load_balancing = \"fastest\"\nretries = 9\n\
         [sites.health_check]\npath = \"healthz\"\ninterval = \"1s\"\ntimeout = \"2s\"",
    );
    let got = rendered(&text);
    for e in [
        "sites[0].upstreams[0].weight: must be 1 to 1000 (got 0)",
        "sites[0].upstreams[1]: missing key `url`",
        "sites[0].upstreams[2].wieght: unknown key `wieght`; did you mean `weight`?",
        "sites[0].load_balancing: invalid policy \"fastest\"",
        "sites[0].retries: must be 0 to 5 (got 9)",
        "sites[0].health_check.path: invalid path \"healthz\"",
        "sites[0].health_check.timeout: must not be longer than `interval`",
    ] {
        assert!(
            got.iter().any(|g| g.contains(e)),
            "missing {e:?} in {got:#?}"
        );
    }

    let text = MINIMAL.replace(
        "upstreams = [\"http://127.0.0.1:9000\"]",
        "upstreams = [{ url = \"http://127.0.0.1:9000\", weight = 2 }]",
    );
    let got = rendered(&text);
    assert!(
        got.iter()
            .any(|g| g.contains("upstream weights need load_balancing = \"weighted_round_robin\"")),
        "{got:#?}"
    );
}

#[test]
fn control_allow_lists() {
    let text = format!("[control]\nallowed_uids = [1000, 1001]\nallowed_gids = [-1]\n{MINIMAL}");
    let got = rendered(&text);
    assert!(
        got.iter()
            .any(|g| g.contains("control.allowed_gids[0]: invalid id -1")),
        "{got:#?}"
    );
    let text = format!("[control]\nallowed_uids = [1000]\nallowed_gids = [50]\n{MINIMAL}");
    let c = parse(&text, Path::new("proxy.toml")).unwrap();
    assert_eq!(
        (
            c.statics.control.allowed_uids.clone(),
            c.statics.control.allowed_gids.clone()
        ),
        (vec![1000], vec![50])
    );
}

#[test]
fn a_metrics_address_is_an_ip_and_port() {
    let c = parse(
        &format!("[control]\nmetrics_address = \"127.0.0.1:9902\"\n{MINIMAL}"),
        Path::new("p.toml"),
    )
    .unwrap();
    assert_eq!(
        c.statics.control.metrics_address,
        Some("127.0.0.1:9902".parse().unwrap())
    );
    let got = rendered(&format!(
        "[control]\nmetrics_address = \"localhost\"\n{MINIMAL}"
    ));
    assert!(
        got.iter()
            .any(|g| g.contains("control.metrics_address: invalid address")),
        "{got:#?}"
    );
}

#[test]
fn a_cluster_table_joins_a_fleet_and_its_mistakes_are_each_located() {
    let c = parse(MINIMAL, Path::new("proxy.toml")).unwrap();
    assert_eq!(c.statics.cluster, None, "no [cluster]: a single host");

    let text = format!(
        "{MINIMAL}\n[cluster]\netcd = [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\"]\n\
         name = \"prod\"\nnode = \"web-1\"\n"
    );
    let cluster = parse(&text, Path::new("proxy.toml"))
        .unwrap()
        .statics
        .cluster
        .unwrap();
    assert_eq!(cluster.etcd.len(), 2);
    assert_eq!(
        (cluster.name.as_str(), cluster.node.as_str()),
        ("prod", "web-1")
    );
    assert_eq!(cluster.lease_ttl, std::time::Duration::from_secs(10));

    let text = format!(
        "{MINIMAL}\n[cluster]\netcd = [\"10.0.0.1:2379\", \"http://10.0.0.2\"]\n\
         name = \"prod/x\"\nnode = \"\"\nlease_ttl = \"1s\"\n"
    );
    let got = rendered(&text);
    for expected in [
        "cluster.etcd[0]: invalid etcd endpoint \"10.0.0.1:2379\"",
        "cluster.etcd[1]: invalid etcd endpoint \"http://10.0.0.2\"",
        "cluster.name: invalid name \"prod/x\"",
        "cluster.node: invalid name \"\"",
        "cluster.lease_ttl: must be from 2s to 5m",
    ] {
        assert!(
            got.iter().any(|d| d.contains(expected)),
            "{expected}: {got:#?}"
        );
    }
    // ACME in a fleet keeps private keys in etcd: it needs the fleet key, a well-formed one.
    let acme = MINIMAL.replace("upstreams = [", "tls = \"acme\"\nupstreams = [")
        + "[acme]\ndirectory_url = \"https://ca.example/dir\"\n"
        + "[cluster]\netcd = [\"http://10.0.0.1:2379\"]\nnode = \"a\"\n";
    let got = rendered(&acme);
    assert!(
        got.iter()
            .any(|d| d.contains("sites[0].tls: tls = \"acme\" in a fleet needs [cluster] key_file")),
        "{got:#?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("fleet.key");
    std::fs::write(
        &key,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let with_key = format!("{acme}key_file = \"{}\"\n", key.display());
    assert!(
        !rendered(&with_key).iter().any(|d| d.contains("key_file")),
        "{:#?}",
        rendered(&with_key)
    );
    assert_eq!(read_fleet_key(&key).unwrap()[..3], [0x00, 0x11, 0x22]);
    std::fs::write(&key, "not hex").unwrap();
    let got = rendered(&with_key);
    assert!(
        got.iter()
            .any(|d| d.contains("cluster.key_file: ") && d.contains("not a fleet key")),
        "{got:#?}"
    );
    // https:// endpoints need a CA; tls goes with https:// only.
    let got = rendered(&format!(
        "{MINIMAL}\n[cluster]\netcd = [\"https://10.0.0.1:2379\"]\nnode = \"a\"\n"
    ));
    assert!(
        got.iter()
            .any(|d| d.contains("cluster.tls: https:// endpoints need `tls = { ca_file")),
        "{got:#?}"
    );
    let got = rendered(&format!(
        "{MINIMAL}\n[cluster]\netcd = [\"http://10.0.0.1:2379\"]\nnode = \"a\"\n\
         tls = {{ cert_file = \"/c.pem\" }}\n"
    ));
    for expected in [
        "cluster.tls: tls applies to https:// endpoints",
        "cluster.tls.ca_file: required",
        "cluster.tls: cert_file and key_file go together",
    ] {
        assert!(
            got.iter().any(|d| d.contains(expected)),
            "{expected}: {got:#?}"
        );
    }
    let ok = format!(
        "{MINIMAL}\n[cluster]\netcd = [\"https://10.0.0.1:2379\"]\nnode = \"a\"\n\
         tls = {{ ca_file = \"/ca.pem\", cert_file = \"/c.pem\", key_file = \"/k.pem\" }}\n"
    );
    let tls = parse(&ok, Path::new("proxy.toml"))
        .unwrap()
        .statics
        .cluster
        .unwrap()
        .tls
        .unwrap();
    assert_eq!(tls.ca_file, PathBuf::from("/ca.pem"));
    let got = rendered(&format!("{MINIMAL}\n[cluster]\n"));
    assert!(
        got.iter()
            .any(|d| d.contains("cluster.etcd: list at least one etcd endpoint")),
        "{got:#?}"
    );
}
