//! Test-only: proptest strategies for config files. [`valid_config`] builds plausible files that
//! follow every rule (random sites, hostnames, upstreams, routes, limits, in the different forms
//! the file allows, most keys sometimes left out).

use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use toml::{Table, Value};

/// Hostname labels in mixed case (the model lower-cases them).
const LABEL: &str = "[a-zA-Z][a-zA-Z0-9-]{0,10}[a-zA-Z0-9]";

pub fn table(entries: impl IntoIterator<Item = (&'static str, Value)>) -> Value {
    Value::Table(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
}

pub fn text(s: impl Into<String>) -> Value {
    Value::String(s.into())
}

/// Inserts the entries that are `Some`.
fn insert_some(t: &mut Table, entries: impl IntoIterator<Item = (&'static str, Option<Value>)>) {
    for (k, v) in entries {
        if let Some(v) = v {
            t.insert(k.to_owned(), v);
        }
    }
}

/// A positive duration, written the ways humantime reads.
fn duration() -> impl Strategy<Value = Value> {
    prop_oneof![
        (1u64..=3600).prop_map(|n| text(format!("{n}s"))),
        (1u64..=5000).prop_map(|n| text(format!("{n}ms"))),
        (1u64..=59, 1u64..=59).prop_map(|(m, s)| text(format!("{m}m {s}s"))),
        (1u64..=48).prop_map(|h| text(format!("{h}h"))),
    ]
}

/// A size of at least one byte: an integer, or digits and a unit.
fn size() -> impl Strategy<Value = Value> {
    let units = prop::sample::select(vec!["", "b", "k", "KB", "kib", "m", "MiB", " m", "g"]);
    prop_oneof![
        (1i64..=1 << 40).prop_map(Value::Integer),
        (1u64..=1024, units).prop_map(|(n, unit)| text(format!("{n}{unit}"))),
    ]
}

fn rate_limit() -> impl Strategy<Value = Value> {
    (1i64..=i64::from(u32::MAX), 1i64..=1_000_000).prop_map(|(rps, burst)| {
        table([
            ("requests_per_second", Value::Integer(rps)),
            ("burst", Value::Integer(burst)),
        ])
    })
}

/// `[upstream_limits]` keys, some left out; `max_idle_connections` never above the
/// `max_connections` in force (`inherited_max` when the table leaves it out).
fn upstream_limits(inherited_max: i64) -> impl Strategy<Value = (Value, i64)> {
    let n = || of(1i64..=1_000_000);
    (n(), n(), n(), n()).prop_map(move |(max, pending, requests, idle)| {
        let in_force = max.unwrap_or(inherited_max);
        let idle = idle.map(|i| 1 + (i - 1) % in_force);
        let mut t = Table::new();
        insert_some(
            &mut t,
            [
                ("max_connections", max.map(Value::Integer)),
                ("max_pending_requests", pending.map(Value::Integer)),
                ("max_requests", requests.map(Value::Integer)),
                ("max_idle_connections", idle.map(Value::Integer)),
            ],
        );
        (Value::Table(t), in_force)
    })
}

/// A list of upstream URLs, distinct by port; some with the scheme's default port left out, a
/// trailing slash, an upper-case host or an IPv6 address; tables with weights when `weighted`.
fn upstream_list(len: std::ops::RangeInclusive<usize>, weighted: bool) -> BoxedStrategy<Value> {
    let host = prop::sample::select(vec![
        "127.0.0.1",
        "10.1.2.3",
        "[::1]",
        "Backend.Internal",
        "api.example.net",
    ]);
    let one = (
        host,
        any::<bool>(),
        any::<bool>(),
        1i64..=1000,
        any::<bool>(),
    );
    vec(one, len)
        .prop_map(move |items| {
            let urls =
                items
                    .into_iter()
                    .enumerate()
                    .map(|(j, (host, https, slash, weight, as_table))| {
                        let scheme = if https { "https" } else { "http" };
                        let slash = if slash { "/" } else { "" };
                        // The first may use the default port; the others' ports differ from it.
                        let url = if j == 0 && weight % 3 == 0 {
                            format!("{scheme}://{host}{slash}")
                        } else {
                            format!("{scheme}://{host}:{}{slash}", 9000 + j)
                        };
                        match (weighted, as_table) {
                            (true, _) => {
                                table([("url", text(url)), ("weight", Value::Integer(weight))])
                            }
                            (false, true) => table([("url", text(url))]),
                            (false, false) => text(url),
                        }
                    });
            Value::Array(urls.collect())
        })
        .boxed()
}

/// A route with a path prefix of its own (`/r<k>...`) and one action.
fn route(k: usize, weighted: bool) -> impl Strategy<Value = Value> {
    // Normalized, as proxyd routes: no empty segment.
    let prefix = "[a-z0-9_-]{0,3}(/[a-z0-9_-]{1,3}){0,2}/?"
        .prop_map(move |rest| text(format!("/r{k}{rest}")));
    let redirect = (
        prop::sample::select(vec![
            "https://{host}{path}",
            "/elsewhere",
            "http://x.example/",
        ]),
        of(prop::sample::select(vec![301i64, 302, 303, 307, 308])),
    )
        .prop_map(|(location, status)| {
            let mut t = Table::new();
            t.insert("location".into(), text(location));
            insert_some(&mut t, [("status", status.map(Value::Integer))]);
            ("redirect", Value::Table(t))
        });
    // Header names differ in lower case (the model lower-cases them), values are printable
    // and without braces (a '{' opens a placeholder).
    let headers = vec(
        ("[a-z][a-z0-9-]{0,8}", "[ -z|~]{0,20}", any::<bool>()),
        0..=3,
    )
    .prop_map(|items| {
        let t: Table = items
            .into_iter()
            .enumerate()
            .map(|(i, (name, value, upper))| {
                let name = format!("x-{name}-{i}");
                let name = if upper {
                    name.to_ascii_uppercase()
                } else {
                    name
                };
                (name, text(value))
            })
            .collect();
        Value::Table(t)
    });
    let respond = (of(200i64..=599), of(".{0,40}"), headers).prop_map(|(status, body, headers)| {
        let mut t = Table::new();
        insert_some(
            &mut t,
            [
                ("status", status.map(Value::Integer)),
                ("body", body.map(text)),
            ],
        );
        t.insert("headers".into(), headers);
        ("respond", Value::Table(t))
    });
    let proxy = upstream_list(1..=2, weighted).prop_map(|list| ("upstreams", list));
    (prefix, prop_oneof![proxy, redirect, respond]).prop_map(|(prefix, (key, action))| {
        let mut t = Table::new();
        t.insert("path_prefix".into(), prefix);
        t.insert(key.into(), action);
        Value::Table(t)
    })
}

fn health_check() -> impl Strategy<Value = Value> {
    (
        "/[a-z0-9/_-]{0,10}",
        1u64..=10,
        0u64..=20,
        1i64..=100,
        1i64..=100,
    )
        .prop_map(|(path, timeout, extra, healthy, unhealthy)| {
            table([
                ("path", text(path)),
                ("timeout", text(format!("{timeout}s"))),
                ("interval", text(format!("{}s", timeout + extra))),
                ("healthy_threshold", Value::Integer(healthy)),
                ("unhealthy_threshold", Value::Integer(unhealthy)),
            ])
        })
}

/// What a site needs from the rest of the file.
#[derive(Debug, Clone)]
struct SiteNeeds {
    /// It has `tls = "acme"`: an `[acme]` section and a TLS listener are needed.
    acme: bool,
}

/// Site `i`: hostnames unique across sites (each ends in `.s<i>-<j>.example`).
fn site(i: usize, global_max: i64) -> impl Strategy<Value = (Value, SiteNeeds)> {
    let policy = prop::sample::select(vec![
        None,
        Some("round_robin"),
        Some("weighted_round_robin"),
        Some("least_requests"),
    ]);
    let pool = (
        policy,
        of(0i64..=5),
        of(health_check()),
        of((0i64..=100, of(1u64..=600))),
        of(upstream_limits(global_max)),
    );
    let extras = (
        any::<bool>(),
        any::<bool>(),
        of(any::<bool>()),
        of(rate_limit()),
        of(size()),
        of(duration()),
    );
    (vec(LABEL, 1..=3), pool, extras, 0usize..=3, 0usize..=3)
        .prop_flat_map(move |(labels, pool, extras, n_upstreams, n_routes)| {
            let weighted = pool.0 == Some("weighted_round_robin");
            // A site needs upstreams, routes or both.
            let n_routes = if n_upstreams == 0 {
                n_routes.max(1)
            } else {
                n_routes
            };
            let routes: Vec<_> = (0..n_routes).map(|k| route(k, weighted)).collect();
            (
                Just((labels, pool, extras)),
                upstream_list(n_upstreams..=n_upstreams, weighted),
                routes,
            )
        })
        .prop_map(move |((labels, pool, extras), upstreams, routes)| {
            let (policy, retries, health, passive, limits) = pool;
            let (acme, wildcard, https_redirect, rate_limit, body_limit, timeout) = extras;
            let mut hostnames: Vec<Value> = labels
                .iter()
                .enumerate()
                .map(|(j, l)| text(format!("{l}.s{i}-{j}.example")))
                .collect();
            // ACME cannot cover a wildcard; certificate files could, but need files.
            if wildcard && !acme {
                hostnames.push(text(format!("*.S{i}w.example")));
            }
            let passive = passive.map(|(failures, cooldown)| {
                let mut t = Table::new();
                t.insert("consecutive_failures".into(), Value::Integer(failures));
                insert_some(
                    &mut t,
                    [("cooldown", cooldown.map(|c| text(format!("{c}s"))))],
                );
                Value::Table(t)
            });
            let mut t = Table::new();
            t.insert("hostnames".into(), Value::Array(hostnames));
            // Sometimes `upstreams = []` stands written, sometimes it is left out.
            if !upstreams.as_array().is_some_and(Vec::is_empty) || i.is_multiple_of(2) {
                t.insert("upstreams".into(), upstreams);
            }
            insert_some(
                &mut t,
                [
                    ("load_balancing", policy.map(text)),
                    ("retries", retries.map(Value::Integer)),
                    ("health_check", health),
                    ("passive_health", passive),
                    ("upstream_limits", limits.map(|(l, _)| l)),
                    ("tls", acme.then(|| text("acme"))),
                    ("https_redirect", https_redirect.map(Value::Boolean)),
                    ("rate_limit", rate_limit),
                    ("body_limit_bytes", body_limit),
                    ("upstream_response_timeout", timeout),
                ],
            );
            if !routes.is_empty() {
                t.insert("routes".into(), Value::Array(routes));
            }
            (Value::Table(t), SiteNeeds { acme })
        })
}

fn listeners() -> impl Strategy<Value = Vec<Value>> {
    let one = (
        "[a-z][a-z0-9_-]{0,8}",
        any::<bool>(),
        0u16..1000,
        any::<bool>(),
    );
    vec(one, 1..=3).prop_map(|items| {
        items
            .into_iter()
            .enumerate()
            .map(|(i, (name, tls, port, v6))| {
                // Distinct names (a digit suffix also keeps clear of the reserved "admin") and
                // distinct ports, or port 0, which may repeat.
                let port = if port % 4 == 0 {
                    0
                } else {
                    20_000 + i * 1000 + usize::from(port)
                };
                let address = if v6 {
                    format!("[::1]:{port}")
                } else {
                    format!("127.0.0.1:{port}")
                };
                table([
                    ("name", text(format!("{name}{i}"))),
                    ("address", text(address)),
                    ("tls", Value::Boolean(tls)),
                ])
            })
            .collect()
    })
}

/// `[proxy]`: listeners, deadlines and connection caps, each key sometimes left out.
fn proxy() -> impl Strategy<Value = Table> {
    let timeouts = (
        of(prop_oneof![Just(text("0s")), duration()]),
        of(duration()),
        of(duration()),
        of(duration()),
        of(duration()),
        of(duration()),
        of((1u64..=600).prop_map(|s| text(format!("{s}s")))),
    );
    let caps = (
        of(1i64..=10_000),
        of(prop_oneof![
            (8192i64..=16_777_216).prop_map(Value::Integer),
            (8u64..=16384).prop_map(|k| text(format!("{k}k"))),
        ]),
        of(1i64..=10_000_000),
        of(0i64..=1_000_000),
        of(1i64..=10_000),
        of(prop_oneof![Just(0u16), 40_000u16..=41_000]),
    );
    (listeners(), timeouts, caps).prop_map(|(listeners, timeouts, caps)| {
        let (shutdown, header, connect, idle, h2_idle, body, keepalive) = timeouts;
        let (headers, header_bytes, max_conns, per_ip, streams, admin_port) = caps;
        // A per-client cap never above the total in force (0 turns it off).
        let in_force = max_conns.unwrap_or(10_000).min(1_000_000);
        let per_ip = per_ip.map(|n| if n == 0 { 0 } else { 1 + (n - 1) % in_force });
        let mut t = Table::new();
        t.insert("listeners".into(), Value::Array(listeners));
        insert_some(
            &mut t,
            [
                ("shutdown_timeout", shutdown),
                ("request_header_timeout", header),
                ("upstream_connect_timeout", connect),
                ("upstream_idle_timeout", idle),
                ("http2_idle_timeout", h2_idle),
                ("request_body_timeout", body),
                ("tcp_keepalive", keepalive),
                ("max_request_headers", headers.map(Value::Integer)),
                ("max_request_header_bytes", header_bytes),
                ("max_connections", max_conns.map(Value::Integer)),
                ("max_connections_per_ip", per_ip.map(Value::Integer)),
                ("http2_max_concurrent_streams", streams.map(Value::Integer)),
                (
                    "admin_address",
                    admin_port.map(|p| text(format!("127.0.0.1:{p}"))),
                ),
            ],
        );
        t
    })
}

/// The rest of the top level: limits, logging, `[control]`, paths, trusted proxies.
fn top_level() -> impl Strategy<Value = Table> {
    let level = prop::sample::select(vec!["info", "debug", "warn", "proxyd=debug,warn", "error"]);
    let cidr = prop::sample::select(vec!["10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "::1"]);
    let top = (
        of(size()),
        of(rate_limit()),
        of(duration()),
        vec(cidr, 0..=3),
        of(level),
        of(prop::sample::select(vec!["json", "text"])),
        of(any::<bool>()),
        of(prop::sample::select(vec!["reject", "keep"])),
    );
    let control = (
        of("/run/[a-z]{1,12}\\.sock"),
        of("/var/lib/[a-z]{1,12}"),
        vec(0i64..=i64::from(u32::MAX), 0..=2),
        of(1024u16..=65535),
    );
    (top, control).prop_map(|(top, control)| {
        let (body, rl, timeout, cidrs, level, format, merge, escaped) = top;
        let (socket, state_dir, uids, metrics_port) = control;
        let mut t = Table::new();
        insert_some(
            &mut t,
            [
                ("body_limit_bytes", body),
                ("rate_limit", rl),
                ("upstream_response_timeout", timeout),
                ("merge_slashes", merge.map(Value::Boolean)),
                ("escaped_slashes", escaped.map(text)),
            ],
        );
        if !cidrs.is_empty() {
            t.insert(
                "trusted_proxies".into(),
                Value::Array(cidrs.into_iter().map(text).collect()),
            );
        }
        let mut logging = Table::new();
        insert_some(
            &mut logging,
            [("level", level.map(text)), ("format", format.map(text))],
        );
        t.insert("logging".into(), Value::Table(logging));
        let mut c = Table::new();
        insert_some(
            &mut c,
            [
                ("socket", socket.map(text)),
                ("state_dir", state_dir.map(text)),
                (
                    "metrics_address",
                    metrics_port.map(|p| text(format!("127.0.0.1:{p}"))),
                ),
            ],
        );
        if !uids.is_empty() {
            c.insert(
                "allowed_uids".into(),
                Value::Array(uids.into_iter().map(Value::Integer).collect()),
            );
        }
        t.insert("control".into(), Value::Table(c));
        t
    })
}

/// A whole file that follows every rule.
pub fn valid_config() -> impl Strategy<Value = Table> {
    (
        top_level(),
        proxy(),
        of(upstream_limits(1024)),
        0usize..=3,
        any::<bool>(),
        any::<prop::sample::Index>(),
    )
        .prop_flat_map(|(top, proxy, limits, n_sites, default_tls, pick)| {
            let global_max = limits.as_ref().map_or(1024, |(_, max)| *max);
            let sites: Vec<_> = (0..n_sites).map(|i| site(i, global_max)).collect();
            (Just((top, proxy, limits, default_tls, pick)), sites)
        })
        .prop_map(|((mut top, mut proxy, limits, default_tls, pick), sites)| {
            let acme_sites: Vec<&Value> = sites
                .iter()
                .filter(|(_, needs)| needs.acme)
                .map(|(site, _)| site)
                .collect();
            if !acme_sites.is_empty() {
                top.insert(
                    "acme".into(),
                    table([
                        ("directory_url", text("https://acme.example/directory")),
                        (
                            "contact",
                            Value::Array(vec![text("mailto:ops@example.com")]),
                        ),
                    ]),
                );
                // TLS needs a listener that speaks it.
                if let Some(Value::Table(first)) = proxy
                    .get_mut("listeners")
                    .and_then(Value::as_array_mut)
                    .and_then(|l| l.first_mut())
                {
                    first.insert("tls".into(), Value::Boolean(true));
                }
                if default_tls {
                    // Any hostname of a site with TLS, in the case written.
                    let site = pick.get(&acme_sites);
                    if let Some(name) = site
                        .get("hostnames")
                        .and_then(Value::as_array)
                        .and_then(|h| h.last())
                    {
                        top.insert("default_tls_site".into(), name.clone());
                    }
                }
            }
            if let Some((limits, _)) = limits {
                top.insert("upstream_limits".into(), limits);
            }
            top.insert(
                "sites".into(),
                Value::Array(sites.into_iter().map(|(s, _)| s).collect()),
            );
            top.insert("proxy".into(), Value::Table(proxy));
            top
        })
}
