//! The compiled runtime: an immutable routing table built from a [`Spec`] off the request path
//! and swapped in whole. Requests only read it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::convert::{Spec, UpstreamSpec};
use crate::limits::{LimiterStore, Scope, SiteLimiter};

#[derive(Debug)]
pub struct Runtime {
    pub version: u64,
    pub hash: String,
    sites: HashMap<String, Arc<Site>>,
}

#[derive(Debug)]
pub struct Site {
    pub name: String,
    upstreams: Vec<UpstreamSpec>,
    next: AtomicUsize,
    pub body_limit_bytes: u64,
    pub limiter: Option<SiteLimiter>,
}

impl Site {
    /// The next upstream, round robin.
    pub fn upstream(&self) -> &UpstreamSpec {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.upstreams[i % self.upstreams.len()]
    }
}

impl Runtime {
    /// The runtime before any snapshot: no sites, version 0.
    pub fn empty() -> Runtime {
        Runtime {
            version: 0,
            hash: String::new(),
            sites: HashMap::new(),
        }
    }

    /// Compiles `spec`, reusing the limiters of sites whose scope and quota did not change.
    pub fn compile(spec: &Spec, limiters: &LimiterStore) -> Runtime {
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
            let site = Arc::new(Site {
                name: s.name().to_owned(),
                upstreams: s.upstreams.clone(),
                next: AtomicUsize::new(0),
                body_limit_bytes: s.body_limit_bytes.unwrap_or(spec.body_limit_bytes),
                limiter,
            });
            for h in &s.hostnames {
                sites.insert(h.clone(), site.clone());
            }
        }
        limiters.retain(&in_use);
        Runtime {
            version: spec.version,
            hash: spec.hash.clone(),
            sites,
        }
    }

    /// Every site's name; a site with several hostnames appears once per hostname.
    pub fn site_names(&self) -> impl Iterator<Item = &str> {
        self.sites.values().map(|s| s.name.as_str())
    }

    /// The site serving `host` (lower-case, without port).
    pub fn site(&self, host: &str) -> Option<&Arc<Site>> {
        self.sites.get(host)
    }
}
