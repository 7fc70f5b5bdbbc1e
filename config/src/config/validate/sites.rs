//! `[[sites]]`: hostnames, upstreams with their weights, and the pool (balancing, retries,
//! health checks).

use super::tls::{site_tls, with_certificate};
use super::*;

pub(super) fn sites(
    files: &[SiteFile],
    statics: &StaticConfig,
    upstream_limits: UpstreamLimits,
    inputs: &Inputs<'_>,
    p: &mut Problems,
) -> Vec<Site> {
    let mut seen: HashMap<Hostname, KeyPath> = HashMap::new();
    let mut sites = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let at = KeyPath::root().key("sites").index(i);
        let limits = hardening::upstream_limits(
            file.upstream_limits.as_ref(),
            upstream_limits,
            &at.key("upstream_limits"),
            p,
        );
        if let Some(site) = site(file, &at, statics, inputs, &mut seen, p) {
            let mut site = site;
            site.pool.limits = limits;
            sites.push(site);
        }
    }
    sites
}

fn site(
    file: &SiteFile,
    at: &KeyPath,
    statics: &StaticConfig,
    inputs: &Inputs<'_>,
    seen: &mut HashMap<Hostname, KeyPath>,
    p: &mut Problems,
) -> Option<Site> {
    if file.hostnames.is_empty() {
        p.push(at.clone(), "a site needs at least one entry in `hostnames`");
    }
    let mut hostnames = Vec::new();
    for (j, raw) in file.hostnames.iter().enumerate() {
        let hp = at.key("hostnames").index(j);
        match Hostname::parse(raw) {
            Ok(h) => match seen.get(&h) {
                Some(first) => p.push(
                    hp,
                    format!("hostname {:?} is already used by {first}", h.as_str()),
                ),
                None => {
                    seen.insert(h.clone(), hp);
                    hostnames.push(h);
                }
            },
            Err(e) => p.push(hp, e),
        }
    }
    if file.upstreams.is_empty() && file.routes.is_empty() {
        p.push(
            at.clone(),
            "a site needs `upstreams`, at least one [[sites.routes]], or both",
        );
    }
    let upstreams = upstream_list(&file.upstreams, &at.key("upstreams"), p);
    let routes = routes(
        &file.routes,
        &at.key("routes"),
        !upstreams.is_empty(),
        inputs,
        p,
    );
    let upstream = upstream::connection(
        file.upstream_protocol.as_deref(),
        file.upstream_tls.as_ref(),
        at,
        inputs,
        p,
    );
    check_site_connection(&upstream, &upstreams, &routes, at, p);
    let request_headers = upstream::header_rules(
        file.request_headers.as_ref(),
        &at.key("request_headers"),
        true,
        p,
    );
    let response_headers = upstream::header_rules(
        file.response_headers.as_ref(),
        &at.key("response_headers"),
        false,
        p,
    );
    let pool = pool(file, at, p);
    let weighted = upstreams
        .iter()
        .chain(routes.iter().flat_map(|r| match &r.action {
            RouteAction::Proxy(proxy) => proxy.upstreams.as_slice(),
            _ => &[],
        }));
    if pool.load_balancing != LoadBalancing::WeightedRoundRobin
        && weighted.clone().any(|u| u.weight != 1)
    {
        p.push(
            at.key("load_balancing"),
            "upstream weights need load_balancing = \"weighted_round_robin\"",
        );
    }
    let tls = site_tls(file.tls.as_ref(), &at.key("tls"), statics, p);
    let tls = with_certificate(tls, &hostnames, &at.key("tls"), inputs, p);
    let rate_limit = file
        .rate_limit
        .as_ref()
        .and_then(|rl| rate_limit(rl, &at.key("rate_limit"), p));
    let body_limit_bytes = file
        .body_limit_bytes
        .as_ref()
        .map(|s| body_limit(s, &at.key("body_limit_bytes"), p));
    let upstream_response_timeout = file
        .upstream_response_timeout
        .as_deref()
        .map(|t| positive_duration(t, at.key("upstream_response_timeout"), p));
    Some(Site {
        hostnames,
        upstreams,
        pool,
        routes,
        tls,
        https_redirect: file.https_redirect.unwrap_or(true),
        rate_limit,
        body_limit_bytes,
        upstream_response_timeout,
        upstream,
        request_headers,
        response_headers,
    })
}

/// The site's `upstream_protocol` and `upstream_tls` apply to its own upstreams and to those of
/// each route that does not set its own.
fn check_site_connection(
    connection: &UpstreamConnection,
    upstreams: &[Upstream],
    routes: &[Route],
    at: &KeyPath,
    p: &mut Problems,
) {
    let own = upstreams
        .iter()
        .map(|u| (u, at.key("upstreams").to_string()));
    let of_routes = |inherits: fn(&UpstreamConnection) -> bool| {
        routes.iter().flat_map(move |r| match &r.action {
            RouteAction::Proxy(proxy) if inherits(&proxy.upstream) => proxy
                .upstreams
                .iter()
                .map(|u| (u, format!("route {}", r.label())))
                .collect(),
            _ => Vec::new(),
        })
    };
    let protocol = UpstreamConnection {
        protocol: connection.protocol,
        tls: None,
    };
    let listed: Vec<_> = own
        .clone()
        .chain(of_routes(|c| c.protocol.is_none()))
        .collect();
    upstream::check_applies(&protocol, at, &listed, p);
    let tls = UpstreamConnection {
        protocol: None,
        tls: connection.tls.clone(),
    };
    let listed: Vec<_> = own.chain(of_routes(|c| c.tls.is_none())).collect();
    upstream::check_applies(&tls, at, &listed, p);
}

pub(super) fn upstream_list(
    entries: &[UpstreamEntry],
    at: &KeyPath,
    p: &mut Problems,
) -> Vec<Upstream> {
    let mut upstreams = Vec::new();
    let mut distinct = HashSet::new();
    let total: i64 = entries
        .iter()
        .map(|e| match e {
            UpstreamEntry::Table(t) => t.weight.unwrap_or(1).clamp(0, 1000),
            UpstreamEntry::Url(_) => 1,
        })
        .sum();
    if u64::try_from(total).unwrap_or(0) > proto::MAX_TOTAL_WEIGHT {
        // proxyd allocates a schedule entry per unit of weight.
        p.push(
            at.clone(),
            format!(
                "the weights add up to {total}; at most {}",
                proto::MAX_TOTAL_WEIGHT
            ),
        );
    }
    for (j, entry) in entries.iter().enumerate() {
        let (raw, weight, url_at) = match entry {
            UpstreamEntry::Url(raw) => (Some(raw), None, at.index(j)),
            UpstreamEntry::Table(t) => (t.url.as_ref(), t.weight, at.index(j).key("url")),
        };
        let Some(raw) = raw else {
            p.push(at.index(j), "missing key `url`");
            continue;
        };
        let weight = match weight {
            None => 1,
            Some(w) if (1..=i64::from(proto::MAX_UPSTREAM_WEIGHT)).contains(&w) => w as u32,
            Some(w) => {
                p.push(
                    at.index(j).key("weight"),
                    format!("must be 1 to 1000 (got {w})"),
                );
                1
            }
        };
        match UpstreamUrl::parse(raw) {
            Ok(u) if !distinct.insert(u.clone()) => {
                p.push(url_at, format!("upstream {u} is listed twice"))
            }
            Ok(url) => upstreams.push(Upstream { url, weight }),
            Err(e) => p.push(url_at, e),
        }
    }
    upstreams
}

/// Load balancing, retries and health checking of a site.
fn pool(file: &SiteFile, at: &KeyPath, p: &mut Problems) -> PoolConfig {
    let load_balancing = match file.load_balancing.as_deref() {
        None | Some("round_robin") => LoadBalancing::RoundRobin,
        Some("weighted_round_robin") => LoadBalancing::WeightedRoundRobin,
        Some("least_requests") => LoadBalancing::LeastRequests,
        Some(other) => {
            p.push(
                at.key("load_balancing"),
                format!(
                    "invalid policy {other:?}: expected \"round_robin\", \"weighted_round_robin\" \
                     or \"least_requests\""
                ),
            );
            LoadBalancing::RoundRobin
        }
    };
    let retries = file
        .retries
        .map_or(Some(DEFAULT_RETRIES), |n| retries(n, &at.key("retries"), p))
        .unwrap_or(DEFAULT_RETRIES);
    let health_check = file
        .health_check
        .as_ref()
        .map(|h| health_check(h, &at.key("health_check"), p));
    let passive_health = match &file.passive_health {
        None => Some(DEFAULT_PASSIVE_HEALTH),
        Some(f) => {
            let pat = at.key("passive_health");
            let failures = count(
                f.consecutive_failures,
                5,
                0,
                &pat.key("consecutive_failures"),
                p,
            );
            let cooldown = timeout_or(
                &f.cooldown,
                DEFAULT_PASSIVE_HEALTH.cooldown,
                pat.key("cooldown"),
                p,
            );
            (failures > 0).then_some(PassiveHealth {
                consecutive_failures: failures,
                cooldown,
            })
        }
    };
    PoolConfig {
        load_balancing,
        retries,
        health_check,
        passive_health,
        // Set by `sites`, which knows the global table.
        limits: DEFAULT_UPSTREAM_LIMITS,
    }
}

fn health_check(file: &HealthCheckFile, at: &KeyPath, p: &mut Problems) -> HealthCheck {
    let path = file.path.clone().unwrap_or_else(|| "/".to_owned());
    if let Some(why) = super::request_path_problem(&path, true, false) {
        p.push(at.key("path"), format!("invalid path {path:?}: {why}"));
    }
    let interval = timeout_or(
        &file.interval,
        Duration::from_secs(5),
        at.key("interval"),
        p,
    );
    let timeout = timeout_or(&file.timeout, Duration::from_secs(2), at.key("timeout"), p);
    if timeout > interval {
        p.push(at.key("timeout"), "must not be longer than `interval`");
    }
    HealthCheck {
        path,
        interval,
        timeout,
        healthy_threshold: count(
            file.healthy_threshold,
            2,
            1,
            &at.key("healthy_threshold"),
            p,
        ),
        unhealthy_threshold: count(
            file.unhealthy_threshold,
            3,
            1,
            &at.key("unhealthy_threshold"),
            p,
        ),
    }
}

/// `retries` of a site or a route: 0 to 5.
pub(super) fn retries(n: i64, at: &KeyPath, p: &mut Problems) -> Option<u32> {
    match n {
        0..=5 => Some(n as u32),
        _ => {
            p.push(at.clone(), format!("must be 0 to 5 (got {n})"));
            None
        }
    }
}

/// A small count: `default` when absent, `min` to 100 otherwise.
pub(super) fn count(
    value: Option<i64>,
    default: u32,
    min: u32,
    at: &KeyPath,
    p: &mut Problems,
) -> u32 {
    match value {
        None => default,
        Some(n) if (i64::from(min)..=100).contains(&n) => n as u32,
        Some(n) => {
            p.push(at.clone(), format!("must be {min} to 100 (got {n})"));
            default
        }
    }
}
