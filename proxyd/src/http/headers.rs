//! Request and response headers at the proxy boundary: Host, hop-by-hop headers, X-Forwarded-*.

use http::Request;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::io::Write as _;

use super::{Peer, ProxyError};

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1), plus the
/// non-standard ones clients still send.
// `Trailer` is not among them (RFC 9110 §6.6.2: it is end to end): hyper sends an HTTP/1.1
// peer the trailer fields a message's `Trailer` header declares, and only those.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes every header named in `names`. One pass over the (usually few) headers first: most
/// messages carry none of them, and a comparison is cheaper than a removal's hash lookup.
fn remove_all(headers: &mut HeaderMap, names: &[HeaderName]) {
    if !headers.keys().any(|k| names.contains(k)) {
        return;
    }
    for name in names {
        headers.remove(name);
    }
}

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

/// The protocol an HTTP/1.1 message asks to switch to: its `Upgrade` header, when a
/// `Connection` header names `upgrade`.
pub fn upgrade_protocol(message: &impl HasHeaders) -> Option<HeaderValue> {
    let headers = message.headers();
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if !asks || message.version() != http::Version::HTTP_11 {
        return None;
    }
    let protocol = headers.get(header::UPGRADE)?;
    // h2c (RFC 7540 §3.2, dropped by RFC 9113): a backend that switched would give the client
    // a raw HTTP/2 connection past routes, rules and limits. Ignored, as a server may: the
    // request goes on as plain HTTP/1.1, its Upgrade header stripped as hop-by-hop.
    // Any `h2…` token: Jetty also switches on `h2c-14` to `h2c-17`.
    let h2c = protocol.to_str().map_or(true, |p| {
        p.split(',').any(|t| {
            t.trim()
                .get(..2)
                .is_some_and(|head| head.eq_ignore_ascii_case("h2"))
        })
    });
    (!h2c).then(|| protocol.clone())
}

/// Requests and responses alike.
pub trait HasHeaders {
    fn headers(&self) -> &HeaderMap;
    fn version(&self) -> http::Version;
}

impl<B> HasHeaders for Request<B> {
    fn headers(&self) -> &HeaderMap {
        Request::headers(self)
    }
    fn version(&self) -> http::Version {
        Request::version(self)
    }
}

impl<B> HasHeaders for http::Response<B> {
    fn headers(&self) -> &HeaderMap {
        http::Response::headers(self)
    }
    fn version(&self) -> http::Version {
        http::Response::version(self)
    }
}

/// Puts back the two hop-by-hop headers an upgrade needs on the next hop.
pub fn restore_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Headers a `Connection` header may not remove: the ones that route and frame the message, and
/// the ones proxyd itself reads or extends (removing a trusted proxy's `X-Forwarded-For` would
/// hand its client's requests the proxy's address).
const PROTECTED: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "forwarded",
    "x-request-id",
];

/// Request headers some applications (IIS, Symfony, Laravel) read as the URL to serve instead
/// of the request line: a client could reach a path routing never saw.
const URL_OVERRIDES: [HeaderName; 2] = [
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
];

/// Removes hop-by-hop headers, including every header the Connection headers name (but never a
/// [`PROTECTED`] one).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.contains_key(header::CONNECTION) {
        remove_all(headers, &HOP_BY_HOP);
        return;
    }
    let nominated: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        // "close", "keep-alive" and the like: no header to build, the list below removes them.
        .filter(|token| {
            !token.eq_ignore_ascii_case("close")
                && !HOP_BY_HOP
                    .iter()
                    .any(|h| token.eq_ignore_ascii_case(h.as_str()))
        })
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .filter(|name| !PROTECTED.contains(&name.as_str()))
        .collect();
    for name in nominated {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The request id header, kept from trusted proxies and generated otherwise.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What proxies say about the hops before them: kept from trusted proxies only.
const FORWARDING: [HeaderName; 4] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    header::FORWARDED,
];

/// The request's id: a trusted proxy's `X-Request-Id` when it is sane (1 to 128 visible ASCII
/// characters), else 32 fresh hex digits.
pub fn request_id(headers: &HeaderMap, trusted: bool) -> HeaderValue {
    if trusted
        && let Some(id) = headers.get(&X_REQUEST_ID)
        && (1..=128).contains(&id.len())
        && id.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return id.clone();
    }
    // 32 hex digits written straight into the value's bytes: one allocation.
    let mut id = Vec::with_capacity(32);
    let _ = write!(id, "{:032x}", fastrand::u128(..));
    HeaderValue::from_maybe_shared(bytes::Bytes::from(id)).unwrap_or(HeaderValue::from_static("-"))
}

/// Prepares a client's headers for the upstream: hop-by-hop headers out; X-Forwarded-For /
/// -Proto / -Host, Forwarded and X-Request-Id set. What a trusted proxy sent is kept (and the
/// peer appended to the chains); anyone else's is replaced.
pub fn prepare_upstream_request(headers: &mut HeaderMap, host: &str, peer: &Peer<'_>) {
    strip_hop_by_hop(headers);
    // A request's `Trailer` goes: hyper would send an HTTP/1.1 upstream the trailer fields it
    // names, and nothing here cleans trailers (a client's `X-Forwarded-For` or `X-Original-URL`
    // would arrive as one). Responses keep theirs.
    headers.remove(header::TRAILER);
    join_cookies(headers);
    remove_all(headers, &URL_OVERRIDES);
    let ip = peer.addr.ip();
    let original_host = headers.get(header::HOST).cloned();
    if !peer.trusted {
        remove_all(headers, &FORWARDING);
    }
    append_to_chain(headers, X_FORWARDED_FOR, |out| push_ip(out, ip));
    let proto = if peer.https { "https" } else { "http" };
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !headers.contains_key(&X_FORWARDED_HOST)
        && let Some(h) = original_host.or_else(|| HeaderValue::from_str(host).ok())
    {
        headers.insert(X_FORWARDED_HOST, h);
    }
    // RFC 7239: IPv6 addresses are quoted and bracketed; the host is quoted.
    append_to_chain(headers, header::FORWARDED, |out| {
        out.extend_from_slice(b"for=");
        if ip.is_ipv6() {
            out.extend_from_slice(b"\"[");
            push_ip(out, ip);
            out.extend_from_slice(b"]\"");
        } else {
            push_ip(out, ip);
        }
        out.extend_from_slice(b";host=\"");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\";proto=");
        out.extend_from_slice(proto.as_bytes());
    });
    headers.insert(X_REQUEST_ID, peer.request_id.clone());
}

/// HTTP/2 clients may split `Cookie` into one field per cookie (RFC 9113 §8.2.3); an HTTP/1.1
/// server expects one line, and many read only the first or the last. Joined with "; " as
/// the RFC says, whatever the upstream speaks.
fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (cookies.next(), cookies.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for value in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// The client a request is from, for rate limits and the access log: the TCP peer, unless the
/// peer is a trusted proxy; then the rightmost `X-Forwarded-For` hop that is not itself trusted
/// (the leftmost when all are), as nginx's `real_ip_recursive` finds it. An untrusted peer's
/// headers are never read. An unparsable hop ends the walk at the hop after it.
pub fn client_address(
    headers: &HeaderMap,
    peer: std::net::IpAddr,
    trusted: impl Fn(std::net::IpAddr) -> bool,
) -> std::net::IpAddr {
    let peer = peer.to_canonical();
    if !trusted(peer) {
        return peer;
    }
    let mut client = peer;
    let hops = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>();
    for hop in hops.iter().rev().flat_map(|v| v.rsplit(',')) {
        let Ok(ip) = hop.trim().parse::<std::net::IpAddr>() else {
            break;
        };
        client = ip.to_canonical();
        if !trusted(client) {
            break;
        }
    }
    client
}

/// Appends `item` to a comma-separated header, folding several fields of it into one.
/// Appends `item` to the comma-separated chain in `name` (joining the lines it came in), in one
/// buffer that becomes the header value without a copy.
fn append_to_chain(headers: &mut HeaderMap, name: HeaderName, item: impl FnOnce(&mut Vec<u8>)) {
    let mut chain = Vec::with_capacity(64);
    for line in headers.get_all(&name).iter().filter(|v| v.to_str().is_ok()) {
        chain.extend_from_slice(line.as_bytes());
        chain.extend_from_slice(b", ");
    }
    item(&mut chain);
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(chain)) {
        headers.insert(name, value);
    }
}

/// Writes `ip` in its usual text form; IPv4 (every request's X-Forwarded-For and Forwarded)
/// without the formatting machinery.
fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.99.100.255",
            "9.10.199.200",
            "::1",
            "2001:db8::17",
            "::ffff:192.0.2.1",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
    }

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
    fn connection_cannot_remove_what_routes_frames_or_forwards() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("host, content-length, x-forwarded-for, x-drop"),
        );
        h.insert(header::HOST, HeaderValue::from_static("a.example"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
        h.insert("x-drop", HeaderValue::from_static("1"));
        h.insert("x-original-url", HeaderValue::from_static("/admin"));
        h.insert("x-rewrite-url", HeaderValue::from_static("/admin"));
        let id = HeaderValue::from_static("id-1");
        let peer = Peer {
            addr: "10.0.0.1:5555".parse().unwrap(),
            client: "198.51.100.7".parse().unwrap(),
            trusted: true,
            request_id: &id,
            https: false,
        };
        prepare_upstream_request(&mut h, "a.example", &peer);
        assert_eq!(h[header::HOST], "a.example");
        assert_eq!(h[header::CONTENT_LENGTH], "5");
        assert_eq!(h["x-forwarded-for"], "198.51.100.7, 10.0.0.1");
        assert!(!h.contains_key("x-drop"));
        assert!(!h.contains_key("x-original-url") && !h.contains_key("x-rewrite-url"));
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop_and_only_behind_a_trusted_peer() {
        let trusted =
            |ip: std::net::IpAddr| "10.0.0.0/8".parse::<ipnet::IpNet>().unwrap().contains(&ip);
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 198.51.100.7"),
        );
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.9"));
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(
            client_address(&h, ip("10.0.0.1"), trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_address(&h, ip("::ffff:10.0.0.1"), trusted),
            ip("198.51.100.7"),
            "an IPv4-mapped peer matches IPv4 trusted_proxies"
        );
        assert_eq!(
            client_address(&h, ip("192.0.2.1"), trusted),
            ip("192.0.2.1"),
            "an untrusted peer's header is never read"
        );
        let mut all_trusted = HeaderMap::new();
        all_trusted.insert(
            "x-forwarded-for",
            HeaderValue::from_static("10.1.1.1, 10.2.2.2"),
        );
        assert_eq!(
            client_address(&all_trusted, ip("10.0.0.1"), trusted),
            ip("10.1.1.1")
        );
        assert_eq!(
            client_address(&HeaderMap::new(), ip("10.0.0.1"), trusted),
            ip("10.0.0.1")
        );
        let mut garbage = HeaderMap::new();
        garbage.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.2.3.4, junk, 10.3.3.3"),
        );
        assert_eq!(
            client_address(&garbage, ip("10.0.0.1"), trusted),
            ip("10.3.3.3")
        );
    }

    #[test]
    fn split_cookies_are_joined_into_one_field() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3"]);
        let mut one = HeaderMap::new();
        one.insert(header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut one);
        assert_eq!(one[header::COOKIE], "a=1");
    }

    #[test]
    fn an_h2c_upgrade_is_not_an_upgrade() {
        let request = |upgrade: &'static str| {
            Request::get("/")
                .header(header::CONNECTION, "Upgrade, HTTP2-Settings")
                .header(header::UPGRADE, upgrade)
                .header("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA")
                .body(())
                .unwrap()
        };
        assert_eq!(upgrade_protocol(&request("h2c")), None);
        assert_eq!(upgrade_protocol(&request("H2C")), None);
        assert_eq!(upgrade_protocol(&request("websocket, h2c")), None);
        assert_eq!(upgrade_protocol(&request("h2c-17")), None);
        assert_eq!(upgrade_protocol(&request("H2c/1.0")), None);
        assert_eq!(
            upgrade_protocol(&request("websocket")),
            Some(HeaderValue::from_static("websocket"))
        );
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
        let id = HeaderValue::from_static("id-1");
        let peer = Peer {
            addr: "192.0.2.7:5555".parse().unwrap(),
            client: "192.0.2.7".parse().unwrap(),
            trusted: false,
            request_id: &id,
            https: false,
        };
        prepare_upstream_request(&mut h, "a.example", &peer);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert!(
            !names.contains(&"x-secret")
                && !names.contains(&"x-other")
                && !names.contains(&"connection")
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-host"], "a.example");
        assert_eq!(h["x-kept"], "1");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.7;host=\"a.example\";proto=http"
        );
        assert_eq!(h["x-request-id"], "id-1");
    }

    #[test]
    fn a_trusted_proxy_s_chain_is_extended_and_its_request_id_kept() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert(
            header::FORWARDED,
            HeaderValue::from_static("for=198.51.100.1"),
        );
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        let id = request_id(&h, true);
        assert_eq!(id, "abc-123");
        let peer = Peer {
            addr: "[2001:db8::1]:443".parse().unwrap(),
            client: "198.51.100.1".parse().unwrap(),
            trusted: true,
            request_id: &id,
            https: true,
        };
        prepare_upstream_request(&mut h, "a.example", &peer);
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 2001:db8::1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(
            h["forwarded"],
            "for=198.51.100.1, for=\"[2001:db8::1]\";host=\"a.example\";proto=https"
        );

        assert_ne!(
            request_id(&h, false),
            "abc-123",
            "an untrusted client's id is replaced"
        );
        let mut bad = HeaderMap::new();
        bad.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_eq!(request_id(&bad, true).len(), 32);
    }
}
