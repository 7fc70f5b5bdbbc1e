//! Request and response headers at the proxy boundary: Host, hop-by-hop headers, X-Forwarded-*.

use std::net::SocketAddr;

use http::Request;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::ProxyError;

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1), plus the
/// non-standard ones clients still send.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The host a request is for: lower case, without port. The absolute-form authority and the
/// Host header must agree when both are present; several Host headers are refused.
pub fn request_host<B>(req: &Request<B>) -> Result<String, ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("several Host headers"));
    }
    let header = match header {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<http::uri::Authority>().ok())
                .ok_or(ProxyError::BadRequest("invalid Host header"))?,
        ),
        None => None,
    };
    let authority = match (req.uri().authority(), header) {
        (Some(uri), Some(h)) if !uri.as_str().eq_ignore_ascii_case(h.as_str()) => {
            return Err(ProxyError::BadRequest(
                "the request target and the Host header disagree",
            ));
        }
        (Some(uri), _) => uri.clone(),
        (None, Some(h)) => h,
        (None, None) => return Err(ProxyError::BadRequest("missing Host header")),
    };
    let host = authority.host().trim_end_matches('.').to_ascii_lowercase();
    Ok(host)
}

/// Removes hop-by-hop headers, including every header the Connection headers name.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let nominated: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in nominated {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Prepares a client's headers for the upstream. Client-supplied X-Forwarded-* values are
/// replaced: proxyd does not trust any proxy in front of it yet.
pub fn prepare_upstream_request(headers: &mut HeaderMap, host: &str, client: SocketAddr) {
    strip_hop_by_hop(headers);
    let original_host = headers.get(header::HOST).cloned();
    headers.remove("forwarded");
    headers.remove("x-forwarded-for");
    headers.remove("x-forwarded-host");
    if let Ok(ip) = HeaderValue::from_str(&client.ip().to_string()) {
        headers.insert("x-forwarded-for", ip);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(h) = original_host.or_else(|| HeaderValue::from_str(host).ok()) {
        headers.insert("x-forwarded-host", h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn host_comes_from_the_authority_or_the_host_header() {
        assert_eq!(
            request_host(&req("/", &["A.Example:8080"])).unwrap(),
            "a.example"
        );
        assert_eq!(
            request_host(&req("http://a.example/x", &[])).unwrap(),
            "a.example"
        );
        assert_eq!(
            request_host(&req("http://a.example/x", &["a.example"])).unwrap(),
            "a.example"
        );
        assert!(request_host(&req("http://a.example/x", &["b.example"])).is_err());
        assert!(request_host(&req("/", &["a.example", "b.example"])).is_err());
        assert!(request_host(&req("/", &[])).is_err());
        assert!(request_host(&req("/", &["bad host"])).is_err());
    }

    #[test]
    fn hop_by_hop_and_nominated_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("x-secret, keep-alive"),
        );
        h.append(header::CONNECTION, HeaderValue::from_static("x-other"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert(header::HOST, HeaderValue::from_static("a.example"));
        prepare_upstream_request(&mut h, "a.example", "192.0.2.7:5555".parse().unwrap());
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert!(
            !names.contains(&"x-secret")
                && !names.contains(&"x-other")
                && !names.contains(&"connection")
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-host"], "a.example");
        assert_eq!(h["x-kept"], "1");
    }
}
