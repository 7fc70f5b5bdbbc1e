//! What a route changes on the way: the path sent upstream (`strip_prefix`, `rewrite`) and the
//! header rules of the site and the route (`request_headers`, `response_headers`).

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue};

use super::Peer;
use crate::convert::{HeaderRules, Piece, Rewrite, Template};

/// The path and query to send upstream for a request that matched `prefix`; the query is
/// kept. A path left empty by stripping becomes "/". `None` when the result would leave the
/// target: a prefix matches as a string (`/api` matches `/api../admin`), and the rest glued to
/// the target could make a dot segment (`/v2/` + `../admin`) that the upstream resolves away.
pub fn rewrite(rewrite: &Rewrite, prefix: &str, original: &PathAndQuery) -> Option<PathAndQuery> {
    let to = match rewrite {
        Rewrite::Keep => return Some(original.clone()),
        Rewrite::Strip => "/",
        Rewrite::Replace(to) => to.as_str(),
    };
    let rest = original.path().get(prefix.len()..).unwrap_or("");
    let mut target = String::with_capacity(to.len() + rest.len() + 1);
    match rewrite {
        // "/api" stripped from "/api/users" leaves "/users"; from "/api" alone, "/".
        Rewrite::Strip if rest.starts_with('/') => {}
        Rewrite::Strip => target.push('/'),
        // "/v2/" for prefix "/api/": "/api/users" → "/v2/users".
        _ => target.push_str(to),
    }
    if matches!(rewrite, Rewrite::Replace(_)) && to.ends_with('/') && rest.starts_with('/') {
        target.push_str(&rest[1..]);
    } else {
        target.push_str(rest);
    }
    if super::path::has_dot_segment(&target) {
        return None;
    }
    if let Some(query) = original.query() {
        target.push('?');
        target.push_str(query);
    }
    // Built from a valid path, a checked replacement and a valid query: it parses. Should it
    // not, the original is sent rather than a guess.
    Some(PathAndQuery::try_from(target).unwrap_or_else(|_| original.clone()))
}

/// The values placeholders stand for in one message.
pub struct Fill<'a> {
    pub peer: &'a Peer<'a>,
    pub host: &'a str,
}

impl Fill<'_> {
    fn value(&self, template: &Template) -> Option<HeaderValue> {
        let pieces = match template {
            Template::Fixed(value) => return Some(value.clone()),
            Template::Filled(pieces) => pieces,
        };
        let mut out = Vec::with_capacity(64);
        for piece in pieces {
            match piece {
                Piece::Text(text) => out.extend_from_slice(text.as_bytes()),
                Piece::ClientIp => out.extend_from_slice(self.peer.client.to_string().as_bytes()),
                Piece::RequestId => out.extend_from_slice(self.peer.request_id.as_bytes()),
                Piece::Host => out.extend_from_slice(self.host.as_bytes()),
                Piece::Scheme => {
                    out.extend_from_slice(if self.peer.https { b"https" } else { b"http" })
                }
            }
        }
        HeaderValue::from_bytes(&out).ok()
    }
}

/// Applies each rule set in order: remove, then set (replacing), then add (appending).
pub fn apply(headers: &mut HeaderMap, rules: &[HeaderRules], fill: &Fill<'_>) {
    for rules in rules {
        for name in &rules.remove {
            headers.remove(name);
        }
        for (name, template) in &rules.set {
            if let Some(value) = fill.value(template) {
                headers.insert(name.clone(), value);
            }
        }
        for (name, template) in &rules.add {
            if let Some(value) = fill.value(template) {
                headers.append(name.clone(), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pq(s: &str) -> PathAndQuery {
        s.parse().unwrap()
    }

    #[test]
    fn strip_prefix_and_rewrite_keep_the_query() {
        let rw = |r: &Rewrite, prefix: &str, p: &PathAndQuery| rewrite(r, prefix, p).unwrap();
        let strip = Rewrite::Strip;
        assert_eq!(rw(&strip, "/api", &pq("/api/users?a=1")), "/users?a=1");
        assert_eq!(rw(&strip, "/api/", &pq("/api/users")), "/users");
        assert_eq!(rw(&strip, "/api", &pq("/api")), "/");
        assert_eq!(rw(&strip, "/api", &pq("/api?x")), "/?x");
        let v2 = Rewrite::Replace("/v2/".into());
        assert_eq!(rw(&v2, "/api/", &pq("/api/users?a=1")), "/v2/users?a=1");
        assert_eq!(rw(&v2, "/api", &pq("/api/users")), "/v2/users");
        assert_eq!(rw(&v2, "/api", &pq("/api")), "/v2/");
        let plain = Rewrite::Replace("/new".into());
        assert_eq!(rw(&plain, "/old", &pq("/old/x")), "/new/x");
        assert_eq!(rw(&Rewrite::Keep, "/api", &pq("/api/x?q")), "/api/x?q");
    }

    /// Issue 19 #1: a prefix matches as a string, so `/api../admin` matched `/api`, and the
    /// upstream got `/v2/../admin`, which it resolves to `/admin`.
    #[test]
    fn a_rewrite_never_leaves_its_target() {
        let v2 = Rewrite::Replace("/v2/".into());
        assert_eq!(rewrite(&v2, "/api", &pq("/api../admin")), None);
        assert_eq!(rewrite(&Rewrite::Strip, "/api", &pq("/api../admin")), None);
        assert_eq!(
            rewrite(&Rewrite::Replace("/v2".into()), "/api", &pq("/api/..")),
            None
        );
        assert_eq!(
            rewrite(&v2, "/api", &pq("/api..x/y")).unwrap(),
            "/v2/..x/y",
            "a segment that only starts with dots is no dot segment"
        );
    }

    #[test]
    fn rules_remove_then_set_then_add_with_placeholders() {
        let rules = crate::convert::header_rules(
            Some(&proto::v1::HeaderRules {
                remove: vec!["x-debug".into()],
                set: vec![proto::v1::Header {
                    name: "x-real-ip".into(),
                    value: "{client_ip} via {scheme}://{host} ({request_id})".into(),
                }],
                add: vec![proto::v1::Header {
                    name: "x-tag".into(),
                    value: "b".into(),
                }],
            }),
            true,
        )
        .unwrap();
        let id = HeaderValue::from_static("abc123");
        let peer = Peer {
            addr: "10.0.0.1:5000".parse().unwrap(),
            client: "192.0.2.7".parse().unwrap(),
            trusted: false,
            request_id: &id,
            https: true,
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-debug", HeaderValue::from_static("1"));
        headers.insert("x-real-ip", HeaderValue::from_static("spoofed"));
        headers.insert("x-tag", HeaderValue::from_static("a"));
        apply(
            &mut headers,
            &[rules],
            &Fill {
                peer: &peer,
                host: "app.example",
            },
        );
        assert!(!headers.contains_key("x-debug"));
        assert_eq!(
            headers["x-real-ip"],
            "192.0.2.7 via https://app.example (abc123)"
        );
        let tags: Vec<_> = headers.get_all("x-tag").iter().collect();
        assert_eq!(tags, ["a", "b"]);
    }
}
