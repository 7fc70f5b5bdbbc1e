//! What changed in a site's routes: matching, actions, and the upstream settings of proxying routes.

use super::*;

/// `routes`, when routes were added or removed (each named by its label and what it does); then,
/// for each route both sides have, each changed field: `routes["/api"].upstreams`,
/// `routes["/api GET"].strip_prefix`, or `routes["/api"]` when its action changed.
///
/// Routes are paired by label (prefix, methods, match headers); a route left unpaired on both
/// sides with the same prefix, once each, is the same route whose methods or match headers
/// changed.
pub(super) fn route_changes(old: &[Route], new: &[Route], out: &mut Vec<FieldChange>) {
    // Keyed by what tells routes apart (not by label, which hides secret header values), so
    // that pairing costs O(routes).
    type Key<'a> = (&'a str, &'a [String], &'a [(String, String)]);
    fn key(r: &Route) -> Key<'_> {
        (&r.path_prefix, &r.methods, &r.match_headers)
    }
    let old_keys: HashMap<Key<'_>, &Route> = old.iter().map(|r| (key(r), r)).collect();
    let new_keys: HashSet<Key<'_>> = new.iter().map(key).collect();
    let unpaired_old: Vec<&Route> = old.iter().filter(|r| !new_keys.contains(&key(r))).collect();
    let unpaired_new: Vec<&Route> = new
        .iter()
        .filter(|r| !old_keys.contains_key(&key(r)))
        .collect();
    // Unpaired routes by prefix: (old, new).
    let mut by_prefix: HashMap<&str, (Vec<&Route>, Vec<&Route>)> = HashMap::new();
    for r in &unpaired_old {
        by_prefix.entry(&r.path_prefix).or_default().0.push(r);
    }
    for r in &unpaired_new {
        by_prefix.entry(&r.path_prefix).or_default().1.push(r);
    }
    let changed_condition = |r: &Route| matches!(by_prefix.get(r.path_prefix.as_str()), Some((o, n)) if o.len() == 1 && n.len() == 1);
    let mut pairs: Vec<(&Route, &Route)> = Vec::new();
    for route in new {
        if let Some(before) = old_keys.get(&key(route)) {
            pairs.push((before, route));
        } else if changed_condition(route) {
            pairs.push((by_prefix[route.path_prefix.as_str()].0[0], route));
        }
    }
    let added: Vec<&Route> = unpaired_new
        .into_iter()
        .filter(|r| !changed_condition(r))
        .collect();
    let removed: Vec<&Route> = unpaired_old
        .into_iter()
        .filter(|r| !changed_condition(r))
        .collect();
    let prefixes = |routes: &[Route]| -> Vec<String> {
        routes.iter().map(|r| r.path_prefix.clone()).collect()
    };
    if !added.is_empty() || !removed.is_empty() || prefixes(old) != prefixes(new) {
        let labels =
            |routes: &[Route]| -> Vec<String> { routes.iter().map(Route::label).collect() };
        let described = |routes: &[&Route]| -> Vec<String> {
            routes
                .iter()
                .map(|r| format!("{} ({})", r.label(), action(&r.action)))
                .collect()
        };
        out.push(FieldChange {
            field: "routes".to_owned(),
            added: described(&added),
            removed: described(&removed),
            old: joined(&labels(old)),
            new: joined(&labels(new)),
        });
    }
    for (before, route) in pairs {
        if before != route {
            one_route_changes(before, route, out);
        }
    }
}

/// The changed fields of a route both sides have.
fn one_route_changes(old: &Route, new: &Route, out: &mut Vec<FieldChange>) {
    // Without `..` for the same reason as `Site` in `changes`.
    let Route {
        path_prefix: _,
        methods,
        match_headers,
        action: new_action,
        rate_limit,
        body_limit_bytes,
    } = new;
    let field = format!("routes[{:?}]", new.label());
    let headers = |h: &[(String, String)]| -> Vec<String> {
        h.iter()
            .map(|(name, value)| header_item(name, value))
            .collect()
    };
    out.extend(list(
        format!("{field}.methods"),
        old.methods.clone(),
        methods.clone(),
    ));
    out.extend(list(
        format!("{field}.match_headers"),
        headers(&old.match_headers),
        headers(match_headers),
    ));
    match (&old.action, new_action) {
        (RouteAction::Proxy(was), RouteAction::Proxy(now)) => {
            proxy_route_changes(&field, was, now, out)
        }
        (was, now) if was != now => out.push(distinct(field.clone(), action(was), action(now))),
        _ => {}
    }
    out.extend(scalar(
        format!("{field}.rate_limit"),
        or_site(old.rate_limit.as_ref(), rate),
        or_site(rate_limit.as_ref(), rate),
    ));
    out.extend(scalar(
        format!("{field}.body_limit_bytes"),
        or_site(old.body_limit_bytes.as_ref(), u64::to_string),
        or_site(body_limit_bytes.as_ref(), u64::to_string),
    ));
}

fn proxy_route_changes(
    field: &str,
    old: &ProxyRoute,
    new: &ProxyRoute,
    out: &mut Vec<FieldChange>,
) {
    let ProxyRoute {
        upstreams,
        path,
        upstream,
        request_headers,
        response_headers,
        upstream_response_timeout,
        retries,
    } = new;
    out.extend(list(
        format!("{field}.upstreams"),
        upstream_items(&old.upstreams),
        upstream_items(upstreams),
    ));
    let strip = |p: &PathRewrite| (*p == PathRewrite::StripPrefix).to_string();
    let rewrite = |p: &PathRewrite| match p {
        PathRewrite::Replace(to) => to.clone(),
        _ => "none".to_owned(),
    };
    out.extend(scalar(
        format!("{field}.strip_prefix"),
        strip(&old.path),
        strip(path),
    ));
    out.extend(scalar(
        format!("{field}.rewrite"),
        rewrite(&old.path),
        rewrite(path),
    ));
    connection_changes(&format!("{field}."), &old.upstream, upstream, SITE, out);
    out.extend(header_changes(
        &format!("{field}.request_headers"),
        &old.request_headers,
        request_headers,
    ));
    out.extend(header_changes(
        &format!("{field}.response_headers"),
        &old.response_headers,
        response_headers,
    ));
    out.extend(scalar(
        format!("{field}.upstream_response_timeout"),
        or_site(old.upstream_response_timeout.as_ref(), duration),
        or_site(upstream_response_timeout.as_ref(), duration),
    ));
    out.extend(scalar(
        format!("{field}.retries"),
        or_site(old.retries.as_ref(), u32::to_string),
        or_site(retries.as_ref(), u32::to_string),
    ));
}

/// `upstream_protocol` and `upstream_tls` (after `prefix`); `unset` reads for a value not set.
pub(super) fn connection_changes(
    prefix: &str,
    old: &UpstreamConnection,
    new: &UpstreamConnection,
    unset: &str,
    out: &mut Vec<FieldChange>,
) {
    let protocol = |c: &UpstreamConnection| {
        c.protocol
            .map_or_else(|| unset.to_owned(), |p| p.as_str().to_owned())
    };
    out.extend(scalar(
        format!("{prefix}upstream_protocol"),
        protocol(old),
        protocol(new),
    ));
    if old.tls != new.tls {
        let tls = |t: &Option<UpstreamTls>| match t {
            Some(t) => upstream_tls(t),
            None if unset == SITE => SITE.to_owned(),
            None => "system roots".to_owned(),
        };
        out.push(distinct(
            format!("{prefix}upstream_tls"),
            tls(&old.tls),
            tls(&new.tls),
        ));
    }
}

/// `ca /etc/ca.pem (2 certificates), server_name api.internal, client certificate sha256
/// 3F:A1:0C:77…9A:01 expires 2027-01-01`: never the key.
fn upstream_tls(tls: &UpstreamTls) -> String {
    let mut parts = Vec::new();
    match &tls.ca {
        Some(ca) => parts.push(format!(
            "ca {} ({} certificate{})",
            ca.file.display(),
            ca.count,
            if ca.count == 1 { "" } else { "s" }
        )),
        None => parts.push("system roots".to_owned()),
    }
    if let Some(name) = &tls.server_name {
        parts.push(format!("server_name {name}"));
    }
    if let Some(client) = &tls.client_certificate {
        parts.push(format!(
            "client certificate {} {}",
            client.cert_file.display(),
            describe_certificate(&client.certificate)
        ));
    }
    parts.join(", ")
}

/// `remove x-debug; set x-env: prod; add x-via: edge`, or `none`; a secret-looking value reads
/// `<redacted>`.
pub(super) fn header_changes(
    field: &str,
    old: &HeaderRules,
    new: &HeaderRules,
) -> Option<FieldChange> {
    (old != new).then(|| distinct(field.to_owned(), header_rules(old), header_rules(new)))
}

fn header_rules(rules: &HeaderRules) -> String {
    let mut parts = Vec::new();
    if !rules.remove.is_empty() {
        parts.push(format!("remove {}", rules.remove.join(", ")));
    }
    for (verb, headers) in [("set", &rules.set), ("add", &rules.add)] {
        if !headers.is_empty() {
            let items: Vec<String> = headers.iter().map(|(n, v)| header_item(n, v)).collect();
            parts.push(format!("{verb} {}", items.join(", ")));
        }
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join("; ")
    }
}

/// `name: value`, the value `<redacted>` when the name looks secret.
fn header_item(name: &str, value: &str) -> String {
    let value = if header_looks_secret(name) {
        "<redacted>"
    } else {
        value
    };
    format!("{name}: {value}")
}

/// A change whose renderings may hide the difference (a redacted header value, a long body,
/// a certificate file's other content): the new value then says that it changed.
pub(super) fn distinct(field: String, old: String, new: String) -> FieldChange {
    let new = if old == new {
        format!("{new} (content changed)")
    } else {
        new
    };
    FieldChange {
        field,
        old,
        new,
        ..FieldChange::default()
    }
}

/// `upstreams http://a:80, http://b:80`, `redirect 308 https://{host}{path}`, or
/// `respond 503 "down for maintenance" [retry-after: 60]`.
fn action(action: &RouteAction) -> String {
    match action {
        RouteAction::Proxy(proxy) => {
            format!("upstreams {}", upstream_items(&proxy.upstreams).join(", "))
        }
        RouteAction::Redirect { location, status } => format!("redirect {status} {location}"),
        RouteAction::Respond {
            status,
            body,
            headers,
        } => {
            let mut text = format!("respond {status}");
            // Debug-quoted, so a newline in it cannot break a line of output.
            if body.chars().count() > MAX_SHOWN_BODY {
                text.push_str(&format!(" ({}-byte body)", body.len()));
            } else if !body.is_empty() {
                text.push_str(&format!(" {body:?}"));
            }
            if !headers.is_empty() {
                let headers: Vec<String> = headers.iter().map(|(n, v)| header_item(n, v)).collect();
                text.push_str(&format!(" [{}]", headers.join(", ")));
            }
            text
        }
    }
}
