//! `[[sites.routes]]`: path prefixes and their actions (upstreams, redirect, respond).

use proto::FRAMING_HEADERS;

use super::sites::{retries, upstream_list};
use super::*;

/// Routes are told apart by prefix, methods and match headers.
type RouteKey = (String, Vec<String>, Vec<(String, String)>);

/// `has_default`: the site's own `upstreams` already route "/".
pub(super) fn routes(
    files: &[RouteFile],
    at: &KeyPath,
    has_default: bool,
    inputs: &Inputs<'_>,
    p: &mut Problems,
) -> Vec<Route> {
    let mut seen: HashMap<RouteKey, usize> = HashMap::new();
    let mut routes = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let rp = at.index(i);
        let prefix = match file.path_prefix.as_deref() {
            None => {
                p.push(rp.clone(), "missing key `path_prefix`");
                continue;
            }
            Some(prefix) if super::request_path_problem(prefix, false, true).is_some() => {
                let why = super::request_path_problem(prefix, false, true).unwrap_or_default();
                p.push(
                    rp.key("path_prefix"),
                    format!("invalid path prefix {prefix:?}: {why}"),
                );
                continue;
            }
            Some(prefix) => prefix,
        };
        let methods = methods(file.methods.as_deref(), &rp.key("methods"), p);
        let match_headers = match_headers(file.match_headers.as_ref(), &rp.key("match_headers"), p);
        let unconditional = methods.is_empty() && match_headers.is_empty();
        if prefix == "/" && has_default && unconditional {
            p.push(
                rp.key("path_prefix"),
                "path prefix \"/\" is already routed by the site's `upstreams`",
            );
        }
        let key = (prefix.to_owned(), methods.clone(), match_headers.clone());
        if let Some(first) = seen.insert(key, i) {
            let what = if unconditional {
                String::new()
            } else {
                " with the same methods and match_headers".to_owned()
            };
            p.push(
                rp.key("path_prefix"),
                format!(
                    "path prefix {prefix:?}{what} is already routed by {}",
                    at.index(first)
                ),
            );
        }
        let rate_limit = file
            .rate_limit
            .as_ref()
            .and_then(|rl| rate_limit(rl, &rp.key("rate_limit"), p));
        let body_limit_bytes = file
            .body_limit_bytes
            .as_ref()
            .map(|s| body_limit(s, &rp.key("body_limit_bytes"), p));
        if let Some(action) = route_action(file, &rp, inputs, p) {
            routes.push(Route {
                path_prefix: prefix.to_owned(),
                methods,
                match_headers,
                action,
                rate_limit,
                body_limit_bytes,
            });
        }
    }
    routes
}

/// `methods`: a non-empty list of distinct method tokens, upper case, sorted.
fn methods(raw: Option<&[String]>, at: &KeyPath, p: &mut Problems) -> Vec<String> {
    let Some(raw) = raw else {
        return Vec::new();
    };
    if raw.is_empty() {
        p.push(
            at.clone(),
            "must not be empty (leave `methods` out to match every method)",
        );
    }
    let mut methods: Vec<String> = Vec::new();
    for (i, method) in raw.iter().enumerate() {
        let upper = method.to_ascii_uppercase();
        if !http_token(method) {
            p.push(
                at.index(i),
                format!("invalid method {method:?}: a method is a token, like \"GET\""),
            );
        } else if methods.contains(&upper) {
            p.push(at.index(i), format!("method {upper} is listed twice"));
        } else {
            methods.push(upper);
        }
    }
    methods.sort();
    methods
}

/// `match_headers`: at least one name → exact value; names lower case, sorted.
fn match_headers(
    raw: Option<&std::collections::BTreeMap<String, String>>,
    at: &KeyPath,
    p: &mut Problems,
) -> Vec<(String, String)> {
    let Some(raw) = raw else {
        return Vec::new();
    };
    if raw.is_empty() {
        p.push(
            at.clone(),
            "must hold at least one header (leave `match_headers` out to match any)",
        );
    }
    let mut headers: Vec<(String, String)> = Vec::new();
    for (name, value) in raw {
        let hp = at.key(name);
        let lower = name.to_ascii_lowercase();
        if !http_token(name) {
            p.push(hp, upstream::invalid_name(name));
        } else if !upstream::valid_header_value(value) {
            p.push(
                hp,
                format!(
                    "invalid value for header {name:?}: no CR, LF, NUL or other control characters"
                ),
            );
        } else if headers.iter().any(|(n, _)| *n == lower) {
            p.push(
                hp,
                format!("header {lower:?} is listed twice (names are compared without case)"),
            );
        } else {
            headers.push((lower, value.clone()));
        }
    }
    headers.sort();
    headers
}

fn route_action(
    file: &RouteFile,
    at: &KeyPath,
    inputs: &Inputs<'_>,
    p: &mut Problems,
) -> Option<RouteAction> {
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
        let upstreams = upstream_list(raws, &at.key("upstreams"), p);
        return Some(RouteAction::Proxy(Box::new(proxy_route(
            file, upstreams, at, inputs, p,
        ))));
    }
    proxy_only_keys_absent(file, at, p);
    if let Some(r) = &file.redirect {
        let location = r.location.clone().unwrap_or_default();
        if location.is_empty() {
            p.push(
                at.key("redirect"),
                "`location` is required, e.g. \"https://{host}{path}\"",
            );
        } else if !super::upstream::valid_header_value(&location) {
            p.push(
                at.key("redirect").key("location"),
                "invalid location: no CR, LF, NUL or other control characters",
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

/// A proxying route's own settings.
fn proxy_route(
    file: &RouteFile,
    upstreams: Vec<Upstream>,
    at: &KeyPath,
    inputs: &Inputs<'_>,
    p: &mut Problems,
) -> ProxyRoute {
    let path = match (file.strip_prefix, &file.rewrite) {
        (Some(true), Some(_)) => {
            p.push(
                at.key("rewrite"),
                "`rewrite` and `strip_prefix = true` exclude each other: strip_prefix is \
                 rewrite = \"/\"",
            );
            PathRewrite::StripPrefix
        }
        (Some(true), None) => PathRewrite::StripPrefix,
        (_, Some(to)) => {
            if let Some(why) = super::request_path_problem(to, false, false) {
                p.push(at.key("rewrite"), format!("invalid rewrite {to:?}: {why}"));
            }
            PathRewrite::Replace(to.clone())
        }
        (_, None) => PathRewrite::Keep,
    };
    let upstream = upstream::connection(
        file.upstream_protocol.as_deref(),
        file.upstream_tls.as_ref(),
        at,
        inputs,
        p,
    );
    let listed: Vec<(&Upstream, String)> = upstreams
        .iter()
        .map(|u| (u, at.key("upstreams").to_string()))
        .collect();
    upstream::check_applies(&upstream, at, &listed, p);
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
    ProxyRoute {
        upstream,
        path,
        request_headers,
        response_headers,
        upstream_response_timeout: file
            .upstream_response_timeout
            .as_deref()
            .map(|t| positive_duration(t, at.key("upstream_response_timeout"), p)),
        retries: file.retries.and_then(|n| retries(n, &at.key("retries"), p)),
        upstreams,
    }
}

/// A redirect or respond route contacts no upstream: the keys about upstreams are mistakes.
fn proxy_only_keys_absent(file: &RouteFile, at: &KeyPath, p: &mut Problems) {
    let present = [
        ("strip_prefix", file.strip_prefix.is_some()),
        ("rewrite", file.rewrite.is_some()),
        ("upstream_protocol", file.upstream_protocol.is_some()),
        ("upstream_tls", file.upstream_tls.is_some()),
        ("request_headers", file.request_headers.is_some()),
        ("response_headers", file.response_headers.is_some()),
        (
            "upstream_response_timeout",
            file.upstream_response_timeout.is_some(),
        ),
        ("retries", file.retries.is_some()),
    ];
    for (key, _) in present.iter().filter(|(_, given)| *given) {
        p.push(
            at.key(key),
            format!("`{key}` applies only to routes with `upstreams` (this one answers itself)"),
        );
    }
}
