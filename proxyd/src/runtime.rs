//! The compiled runtime: an immutable routing table built from a [`Spec`] off the request path
//! and swapped in whole. Requests only read it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::convert::{
    ActionSpec, Answer, Challenges, ConnectionLimits, HeaderRules, PassiveHealthSpec, PathRules,
    Policy, PoolSpec, ProxySpec, Rewrite, Spec,
};
use crate::limits::{LimiterStore, Scope, SiteLimiter};
use crate::upstreams::{self, Upstream, UpstreamStore};

#[derive(Debug)]
pub struct Runtime {
    pub version: u64,
    pub hash: String,
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Exact hostnames and `*.suffix` wildcards, each to its site.
    sites: HashMap<String, Arc<Site>>,
    /// Whose certificate a handshake gets when its SNI is missing or names no site with one.
    default_tls_site: Option<Arc<Site>>,
    /// ACME challenges that came inside the snapshot (from a controld older than
    /// `AcmeChallenges` messages).
    challenges: Challenges,
    /// The ACME challenges controld is completing, delivered apart from snapshots: shared by
    /// every runtime, replaced whole by each `AcmeChallenges` message.
    delivered: Arc<arc_swap::ArcSwap<Challenges>>,
    /// How request paths are normalized before routing.
    pub paths: PathRules,
    /// The body and tunnel deadlines of requests this runtime takes.
    pub limits: ConnectionLimits,
    /// Whether a TLS handshake may resume a session (`proxy.tls_session_resumption`).
    tls_session_resumption: bool,
}

#[derive(Debug)]
pub struct Site {
    pub name: String,
    /// Longest prefix first.
    routes: Vec<Route>,
    pub limiter: Option<SiteLimiter>,
    /// What TLS handshakes for the site present; `None`: they fail.
    pub certificate: Option<Arc<rustls::sign::CertifiedKey>>,
    /// Plain-HTTP requests get a 308 to https:// (when `certificate` is set and proxyd has a
    /// TLS listener).
    pub https_redirect: bool,
    /// The site's request series, resolved on first use.
    pub metrics: crate::metrics::SiteMetrics,
}

#[derive(Debug)]
pub struct Route {
    pub path_prefix: String,
    /// Only these methods match; empty = every method.
    methods: Vec<http::Method>,
    /// Only requests with each of these headers, with exactly this value, match.
    match_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The route's own rate limit, checked after the site's.
    pub limiter: Option<SiteLimiter>,
    /// The route's, else the site's.
    pub body_limit_bytes: u64,
    pub action: Action,
}

impl Route {
    fn matches(&self, method: &http::Method, path: &str, headers: &http::HeaderMap) -> bool {
        path.starts_with(&self.path_prefix)
            && (self.methods.is_empty() || self.methods.contains(method))
            && self
                .match_headers
                .iter()
                .all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
    }
}

#[derive(Debug)]
pub enum Action {
    Proxy(Pool),
    Answer(Answer),
}

/// A route's upstreams, how to choose among them, and what the route changes on the way.
#[derive(Debug)]
pub struct Pool {
    pub rewrite: Rewrite,
    /// Applied in order (the site's, then the route's).
    pub request_headers: Vec<HeaderRules>,
    pub response_headers: Vec<HeaderRules>,
    /// The route's, else the site's.
    pub upstream_response_timeout: std::time::Duration,
    /// Never empty (`convert` guarantees it).
    upstreams: Vec<Arc<Upstream>>,
    /// For weighted round robin: indexes into `upstreams`, interleaved by weight.
    schedule: Vec<usize>,
    policy: Policy,
    next: AtomicUsize,
    /// Further upstreams a failed request may be sent to, when that is safe.
    pub retries: u32,
    pub passive: Option<PassiveHealthSpec>,
}

impl Pool {
    fn new(
        proxy: &ProxySpec,
        spec: &PoolSpec,
        timeout: std::time::Duration,
        store: &UpstreamStore,
    ) -> Pool {
        let list = &proxy.upstreams;
        Pool {
            rewrite: proxy.rewrite.clone(),
            request_headers: proxy.request_headers.clone(),
            response_headers: proxy.response_headers.clone(),
            upstream_response_timeout: proxy.upstream_response_timeout.unwrap_or(timeout),
            upstreams: list.iter().map(|u| store.get(u, spec.limits)).collect(),
            schedule: smooth_weighted_schedule(&list.iter().map(|u| u.weight).collect::<Vec<_>>()),
            policy: spec.policy,
            next: AtomicUsize::new(0),
            retries: proxy.retries.unwrap_or(spec.retries),
            passive: spec.passive,
        }
    }

    /// The next upstream to try, skipping unavailable ones and those in `tried`; `None` when
    /// none is left.
    /// Whether its upstreams may speak HTTP/2 (they share one protocol setting).
    pub fn may_speak_h2(&self) -> bool {
        self.upstreams.first().is_some_and(|u| u.may_speak_h2())
    }

    pub fn pick(&self, tried: &[usize]) -> Option<(usize, &Arc<Upstream>)> {
        let usable = |i: &usize| !tried.contains(i) && self.upstreams[*i].available();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let index = match self.policy {
            Policy::RoundRobin => (0..self.upstreams.len())
                .map(|k| (start + k) % self.upstreams.len())
                .find(usable),
            Policy::WeightedRoundRobin => (0..self.schedule.len())
                .map(|k| self.schedule[(start + k) % self.schedule.len()])
                .find(usable),
            Policy::LeastRequests => {
                // Power of two choices: two random candidates, the less loaded wins.
                let candidates: Vec<usize> = (0..self.upstreams.len()).filter(usable).collect();
                match candidates.len() {
                    0 => None,
                    1 => Some(candidates[0]),
                    n => {
                        let a = candidates[fastrand::usize(..n)];
                        let mut b = candidates[fastrand::usize(..n - 1)];
                        if b == a {
                            b = candidates[n - 1];
                        }
                        let load = |i: usize| self.upstreams[i].outstanding();
                        Some(if load(b) < load(a) { b } else { a })
                    }
                }
            }
        }?;
        Some((index, &self.upstreams[index]))
    }
}

/// What names a route's rate limiter: its site and what it matches.
fn route_key(site: &str, route: &crate::convert::RouteSpec) -> String {
    let mut key = format!("{site} {}", route.path_prefix);
    for method in &route.methods {
        key.push(' ');
        key.push_str(method.as_str());
    }
    for (name, value) in &route.match_headers {
        key.push_str(&format!(
            " {name}={}",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    key
}

/// Nginx's smooth weighted round robin, unrolled: weights 5, 1, 1 give a, a, b, a, c, a, a rather
/// than five a's in a row.
fn smooth_weighted_schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::new();
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(weights) {
            *c += i64::from(*w);
        }
        let Some(best) = (0..current.len()).max_by_key(|i| (current[*i], std::cmp::Reverse(*i)))
        else {
            break;
        };
        current[best] -= total;
        schedule.push(best);
    }
    schedule
}

impl Site {
    /// The route for a request: among those whose method and header conditions it meets,
    /// header-matching routes first, then the longest prefix (the order `convert` sorted them
    /// in).
    pub fn route(
        &self,
        method: &http::Method,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.matches(method, path, headers))
    }
}

impl Runtime {
    /// The runtime before any snapshot: no sites, version 0.
    pub fn empty() -> Runtime {
        Runtime {
            version: 0,
            hash: String::new(),
            trusted_proxies: Vec::new(),
            sites: HashMap::new(),
            default_tls_site: None,
            challenges: Challenges::default(),
            delivered: Arc::default(),
            paths: PathRules::default(),
            limits: ConnectionLimits::default(),
            tls_session_resumption: true,
        }
    }

    /// The runtime, answering the challenges of `delivered` too.
    pub fn with_delivered(mut self, delivered: Arc<arc_swap::ArcSwap<Challenges>>) -> Runtime {
        self.delivered = delivered;
        self
    }

    /// Compiles `spec`, reusing the limiters of sites whose scope and quota did not change.
    pub fn compile(spec: &Spec, limiters: &LimiterStore, upstreams: &UpstreamStore) -> Runtime {
        let mut sites = HashMap::new();
        let mut in_use = HashSet::new();
        for s in &spec.sites {
            let limit = match s.rate_limit {
                Some(q) => Some((Scope::Site(s.name().to_owned()), q)),
                None => spec.rate_limit.map(|q| (Scope::Global, q)),
            };
            let limiter = limit.map(|(scope, quota)| {
                in_use.insert((scope.clone(), quota));
                limiters.get(scope, quota)
            });
            let body_limit_bytes = s.body_limit_bytes.unwrap_or(spec.body_limit_bytes);
            let timeout = s
                .upstream_response_timeout
                .unwrap_or(spec.upstream_response_timeout);
            let routes = s
                .routes
                .iter()
                .map(|r| Route {
                    path_prefix: r.path_prefix.clone(),
                    methods: r.methods.clone(),
                    match_headers: r.match_headers.clone(),
                    limiter: r.rate_limit.map(|quota| {
                        let scope = Scope::Route(route_key(s.name(), r));
                        in_use.insert((scope.clone(), quota));
                        limiters.get(scope, quota)
                    }),
                    body_limit_bytes: r.body_limit_bytes.unwrap_or(body_limit_bytes),
                    action: match &r.action {
                        ActionSpec::Proxy(proxy) => {
                            Action::Proxy(Pool::new(proxy, &s.pool, timeout, upstreams))
                        }
                        ActionSpec::Answer(answer) => Action::Answer(answer.clone()),
                    },
                })
                .collect();
            let site = Arc::new(Site {
                name: s.name().to_owned(),
                routes,
                limiter,
                certificate: s.certificate.as_ref().map(|c| c.key.clone()),
                https_redirect: s.https_redirect,
                metrics: crate::metrics::SiteMetrics::default(),
            });
            for h in &s.hostnames {
                sites.insert(h.clone(), site.clone());
            }
        }
        limiters.retain(&in_use);
        let in_use = spec
            .sites
            .iter()
            .flat_map(|s| s.upstreams().map(|u| upstreams::key(u, s.pool.limits)))
            .collect();
        let checks = spec
            .sites
            .iter()
            .filter_map(|s| s.pool.health_check.as_ref().map(|h| (s, h)))
            .flat_map(|(s, h)| {
                s.upstreams()
                    .map(move |u| (upstreams::key(u, s.pool.limits), h.clone()))
            })
            .collect();
        upstreams.retain(&in_use, &checks);
        let default_tls_site = spec
            .default_tls_site
            .as_ref()
            .and_then(|name| sites.values().find(|s| s.name == *name).cloned());
        Runtime {
            version: spec.version,
            hash: spec.hash.clone(),
            trusted_proxies: spec.trusted_proxies.clone(),
            sites,
            default_tls_site,
            challenges: spec.challenges.clone(),
            delivered: Arc::default(),
            paths: spec.paths,
            limits: spec.statics.limits,
            tls_session_resumption: spec.statics.tls_session_resumption,
        }
    }

    /// The body of the HTTP-01 answer for `token`, while that challenge is pending.
    pub fn http_challenge(&self, token: &str) -> Option<String> {
        if let Some(answer) = self.delivered.load().http.get(token) {
            return Some(answer.clone());
        }
        self.challenges.http.get(token).cloned()
    }

    /// The TLS-ALPN-01 challenge certificate for `server_name`, while that challenge is pending.
    pub fn alpn_challenge(
        &self,
        server_name: Option<&str>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let name = server_name?.trim_end_matches('.').to_ascii_lowercase();
        if let Some(c) = self.delivered.load().tls_alpn.get(&name) {
            return Some(c.key.clone());
        }
        self.challenges.tls_alpn.get(&name).map(|c| c.key.clone())
    }

    /// A peer whose forwarding headers are kept. An IPv4-mapped IPv6 address (a `[::]`
    /// listener taking IPv4) is its IPv4 address.
    pub fn is_trusted(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// Every site's name; a site with several hostnames appears once per hostname.
    pub fn site_names(&self) -> impl Iterator<Item = &str> {
        self.sites.values().map(|s| s.name.as_str())
    }

    /// The site serving `host` (lower-case, without port): an exact name first, then a wildcard
    /// for its parent domain (`*.example.com` serves `a.example.com`, not `a.b.example.com`).
    pub fn site(&self, host: &str) -> Option<&Arc<Site>> {
        if let Some(site) = self.sites.get(host) {
            return Some(site);
        }
        let (_, parent) = host.split_once('.')?;
        self.sites.get(&format!("*.{parent}"))
    }

    /// The site whose certificate a TLS handshake with `server_name` (SNI) gets: the site
    /// serving that name, as routing finds it, when it has a certificate; else the
    /// `default_tls_site` when it has one; else none (the handshake fails).
    pub fn tls_site(&self, server_name: Option<&str>) -> Option<&Arc<Site>> {
        let named = server_name
            .map(|name| name.trim_end_matches('.').to_ascii_lowercase())
            .and_then(|name| self.site(&name))
            .filter(|site| site.certificate.is_some());
        named.or_else(|| {
            self.default_tls_site
                .as_ref()
                .filter(|site| site.certificate.is_some())
        })
    }
}

/// The terminator's certificates: those of the runtime serving now, one lock-free load per
/// handshake.
impl crate::tls::Certificates for arc_swap::ArcSwap<Runtime> {
    fn site(&self, server_name: Option<&str>) -> Option<(String, Arc<rustls::sign::CertifiedKey>)> {
        let runtime = self.load();
        let site = runtime.tls_site(server_name)?;
        Some((site.name.clone(), site.certificate.clone()?))
    }

    fn alpn_challenge(&self, server_name: Option<&str>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.load().alpn_challenge(server_name)
    }

    fn session_resumption(&self) -> bool {
        self.load().tls_session_resumption
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::{RouteSpec, SiteSpec, StaticSpec};

    fn respond(prefix: &str) -> RouteSpec {
        RouteSpec {
            path_prefix: prefix.into(),
            methods: Vec::new(),
            match_headers: Vec::new(),
            rate_limit: None,
            body_limit_bytes: None,
            action: ActionSpec::Answer(Answer::Respond {
                status: http::StatusCode::OK,
                body: prefix.to_owned().into(),
                headers: http::HeaderMap::new(),
            }),
        }
    }

    fn runtime() -> Runtime {
        compile(spec())
    }

    fn compile(spec: Spec) -> Runtime {
        let store =
            UpstreamStore::new(Arc::new(crate::metrics::Metrics::new()), Default::default());
        Runtime::compile(&spec, &LimiterStore::default(), &store)
    }

    fn spec() -> Spec {
        Spec {
            version: 1,
            hash: "h".into(),
            statics: StaticSpec {
                listeners: vec![],
                shutdown_timeout: std::time::Duration::ZERO,
                max_request_headers: 100,
                max_request_header_bytes: 65536,
                admin_address: None,
                tls_session_resumption: true,
                request_header_timeout: std::time::Duration::from_secs(1),
                upstream_connect_timeout: std::time::Duration::from_secs(1),
                upstream_idle_timeout: std::time::Duration::from_secs(1),
                upstream_h2_ping: Default::default(),
                limits: Default::default(),
            },
            sites: vec![SiteSpec {
                hostnames: vec!["example.com".into(), "*.example.com".into()],
                routes: vec![respond("/api/v2"), respond("/api"), respond("/")],
                rate_limit: None,
                body_limit_bytes: None,
                upstream_response_timeout: None,
                pool: PoolSpec::default(),
                certificate: None,
                https_redirect: true,
            }],
            rate_limit: None,
            body_limit_bytes: 1,
            upstream_response_timeout: std::time::Duration::from_secs(1),
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            log_level: "info".into(),
            default_tls_site: None,
            challenges: Challenges::default(),
            paths: PathRules::default(),
        }
    }

    fn site(hostnames: &[&str], certificate: bool) -> SiteSpec {
        SiteSpec {
            hostnames: hostnames.iter().map(|h| (*h).to_owned()).collect(),
            routes: vec![respond("/")],
            rate_limit: None,
            body_limit_bytes: None,
            upstream_response_timeout: None,
            pool: PoolSpec::default(),
            certificate: certificate.then(|| crate::convert::test_certificate(hostnames)),
            https_redirect: true,
        }
    }

    #[test]
    fn tls_sites_by_server_name_then_the_default() {
        let mut spec = spec();
        spec.sites = vec![
            site(&["a.example", "*.a.example"], true),
            site(&["b.example"], true),
            site(&["acme.example"], false),
        ];
        let rt = compile(spec.clone());
        let name = |sni| rt.tls_site(sni).map(|s| s.name.as_str());
        assert_eq!(name(Some("a.example")), Some("a.example"));
        assert_eq!(name(Some("WWW.A.example.")), Some("a.example"));
        assert_eq!(name(Some("b.example")), Some("b.example"));
        assert_eq!(name(Some("x.y.a.example")), None);
        assert_eq!(name(Some("acme.example")), None, "no certificate yet");
        assert_eq!(name(None), None);

        spec.default_tls_site = Some("b.example".into());
        let rt = compile(spec.clone());
        let name = |sni| rt.tls_site(sni).map(|s| s.name.as_str());
        assert_eq!(name(None), Some("b.example"));
        assert_eq!(name(Some("unknown.example")), Some("b.example"));
        assert_eq!(name(Some("acme.example")), Some("b.example"));
        assert_eq!(name(Some("a.example")), Some("a.example"));

        spec.default_tls_site = Some("acme.example".into());
        assert!(
            compile(spec).tls_site(None).is_none(),
            "a default without a certificate is no default"
        );
    }

    #[test]
    fn only_configured_peers_are_trusted() {
        let rt = runtime();
        assert!(rt.is_trusted("10.1.2.3".parse().unwrap()));
        assert!(!rt.is_trusted("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves() {
        assert_eq!(smooth_weighted_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_weighted_schedule(&[1, 1]), [0, 1]);
        assert_eq!(smooth_weighted_schedule(&[2, 1]).len(), 3);
    }

    #[test]
    fn exact_names_then_one_label_wildcards() {
        let rt = runtime();
        assert!(rt.site("example.com").is_some());
        assert!(rt.site("www.example.com").is_some());
        assert!(rt.site("a.b.example.com").is_none());
        assert!(rt.site("example.org").is_none());
        assert!(rt.site("com").is_none());
    }

    #[test]
    fn the_longest_prefix_wins() {
        let rt = runtime();
        let site = rt.site("example.com").unwrap();
        let headers = http::HeaderMap::new();
        let prefix = |p| {
            site.route(&http::Method::GET, p, &headers)
                .map(|r| r.path_prefix.as_str())
        };
        assert_eq!(prefix("/api/v2/x"), Some("/api/v2"));
        assert_eq!(prefix("/api/v1"), Some("/api"));
        assert_eq!(prefix("/"), Some("/"));
        assert_eq!(prefix("/other"), Some("/"));
    }

    #[test]
    fn header_routes_come_first_and_methods_narrow_a_route() {
        let mut spec = spec();
        let mut canary = respond("/");
        canary.match_headers = vec![(
            http::HeaderName::from_static("x-canary"),
            http::HeaderValue::from_static("1"),
        )];
        let mut writes = respond("/api");
        writes.methods = vec![http::Method::POST];
        // In the order convert sorts them: header routes, longest prefix, narrowed methods.
        spec.sites[0].routes = vec![
            canary,
            respond("/api/v2"),
            writes,
            respond("/api"),
            respond("/"),
        ];
        let rt = compile(spec);
        let site = rt.site("example.com").unwrap();
        let mut headers = http::HeaderMap::new();
        let route = |m: &http::Method, p, h: &http::HeaderMap| {
            let r = site.route(m, p, h).unwrap();
            (
                r.path_prefix.clone(),
                r.match_headers.len(),
                r.methods.len(),
            )
        };
        assert_eq!(
            route(&http::Method::GET, "/api/x", &headers),
            ("/api".into(), 0, 0)
        );
        assert_eq!(
            route(&http::Method::POST, "/api/x", &headers),
            ("/api".into(), 0, 1)
        );
        headers.insert("x-canary", http::HeaderValue::from_static("2"));
        assert_eq!(
            route(&http::Method::GET, "/api/v2", &headers),
            ("/api/v2".into(), 0, 0)
        );
        headers.insert("x-canary", http::HeaderValue::from_static("1"));
        assert_eq!(
            route(&http::Method::GET, "/api/v2", &headers),
            ("/".into(), 1, 0)
        );
    }
}
