//! `[[sites.routes]]`: path prefixes and their actions (upstreams, redirect, respond).

use proto::FRAMING_HEADERS;

use super::sites::upstream_list;
use super::*;

/// `has_default`: the site's own `upstreams` already route "/".
pub(super) fn routes(
    files: &[RouteFile],
    at: &KeyPath,
    has_default: bool,
    p: &mut Problems,
) -> Vec<Route> {
    let mut prefixes: HashMap<&str, usize> = HashMap::new();
    let mut routes = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let rp = at.index(i);
        let prefix = match file.path_prefix.as_deref() {
            None => {
                p.push(rp.clone(), "missing key `path_prefix`");
                continue;
            }
            Some(prefix) if !prefix.starts_with('/') || prefix.contains(char::is_whitespace) => {
                p.push(
                    rp.key("path_prefix"),
                    format!("invalid path prefix {prefix:?}: it starts with '/' and has no spaces"),
                );
                continue;
            }
            Some(prefix) => prefix,
        };
        if prefix == "/" && has_default {
            p.push(
                rp.key("path_prefix"),
                "path prefix \"/\" is already routed by the site's `upstreams`",
            );
        }
        if let Some(first) = prefixes.insert(prefix, i) {
            p.push(
                rp.key("path_prefix"),
                format!(
                    "path prefix {prefix:?} is already routed by {}",
                    at.index(first)
                ),
            );
        }
        if let Some(action) = route_action(file, &rp, p) {
            routes.push(Route {
                path_prefix: prefix.to_owned(),
                action,
            });
        }
    }
    routes
}

fn route_action(file: &RouteFile, at: &KeyPath, p: &mut Problems) -> Option<RouteAction> {
    let given = [
        file.upstreams.is_some(),
        file.redirect.is_some(),
        file.respond.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        p.push(
            at.clone(),
            "a route needs exactly one of `upstreams`, `redirect` or `respond`",
        );
        return None;
    }
    if let Some(raws) = &file.upstreams {
        if raws.is_empty() {
            p.push(at.key("upstreams"), "must not be empty");
        }
        return Some(RouteAction::Proxy(upstream_list(
            raws,
            &at.key("upstreams"),
            p,
        )));
    }
    if let Some(r) = &file.redirect {
        let location = r.location.clone().unwrap_or_default();
        if location.is_empty() {
            p.push(
                at.key("redirect"),
                "`location` is required, e.g. \"https://{host}{path}\"",
            );
        }
        let status = r.status.unwrap_or(308);
        if ![301, 302, 303, 307, 308].contains(&status) {
            p.push(
                at.key("redirect").key("status"),
                format!("invalid redirect status {status}: use 301, 302, 303, 307 or 308"),
            );
        }
        let status = u16::try_from(status).unwrap_or(308);
        return Some(RouteAction::Redirect { location, status });
    }
    let r = file.respond.as_ref()?;
    let status = r.status.unwrap_or(200);
    if !(200..=599).contains(&status) {
        p.push(
            at.key("respond").key("status"),
            format!("invalid status {status}: must be 200 to 599"),
        );
    }
    for (name, value) in &r.headers {
        if FRAMING_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            p.push(
                at.key("respond").key("headers").key(name),
                format!("header {name:?} is set by proxyd itself (it frames its own answers)"),
            );
            continue;
        }
        let valid = http_token(name)
            && value
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
        if !valid {
            p.push(
                at.key("respond").key("headers").key(name),
                format!("invalid header {name:?}: names are tokens, values printable ASCII"),
            );
        }
    }
    // In the order of their lower-case names, so that `X-B` and `x-b` make the same model
    // (and the same content hash).
    let mut headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    headers.sort();
    Some(RouteAction::Respond {
        status: u16::try_from(status).unwrap_or(200),
        body: r.body.clone().unwrap_or_default(),
        headers,
    })
}

/// An HTTP token (RFC 9110 §5.6.2), as header names are.
pub(super) fn http_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
