//! The DNS check a snapshot passes before it applies (ADR 0004).

use super::{ApplyError, RESOLVE_TIMEOUT};
use crate::convert::Spec;

/// Like nginx's "host not found in upstream": a snapshot naming an upstream host that does not
/// resolve here is refused, rather than turning into 502s. Connections still resolve at
/// connect time, so DNS changes are followed. Names resolve concurrently under one deadline.
pub(crate) async fn check_upstreams_resolve(
    spec: &Spec,
    known: &std::collections::HashSet<String>,
) -> Result<(), ApplyError> {
    let mut checked = std::collections::HashSet::new();
    let mut lookups = tokio::task::JoinSet::new();
    for upstream in spec.sites.iter().flat_map(|s| s.upstreams()) {
        let upstream = &upstream.spec;
        if known.contains(&upstream.to_string()) {
            continue;
        }
        let host = upstream
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.parse::<std::net::IpAddr>().is_ok() || !checked.insert(host.clone()) {
            continue;
        }
        let (upstream, port) = (upstream.to_string(), upstream.port());
        lookups.spawn(async move {
            let found = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map(Iterator::count);
            let reason = match found {
                Ok(0) => "no addresses".to_owned(),
                Ok(_) => return Ok(()),
                Err(e) => e.to_string(),
            };
            Err(ApplyError::Unresolvable {
                upstream,
                host,
                reason,
            })
        });
    }
    let all = async {
        while let Some(result) = lookups.join_next().await {
            if let Ok(Err(e)) = result {
                return Err(e);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(RESOLVE_TIMEOUT, all).await {
        Ok(result) => result,
        Err(_) => Err(ApplyError::ResolveTimeout {
            timeout: RESOLVE_TIMEOUT,
        }),
    }
}
