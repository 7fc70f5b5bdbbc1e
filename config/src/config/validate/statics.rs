//! The static sections: `[control]`, `[proxy]` with its listeners, `[acme]` and `[cluster]`.

use super::*;

pub(super) fn control(file: &FileConfig, p: &mut Problems) -> ControlConfig {
    let at = KeyPath::root().key("control");
    let socket = non_empty_path(
        file.control.socket.as_deref(),
        DEFAULT_SOCKET,
        at.key("socket"),
        p,
    );
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        p.push(
            at.key("socket"),
            format!("a Unix socket path may have at most {MAX_SOCKET_PATH} bytes"),
        );
    }
    let state_dir = non_empty_path(
        file.control.state_dir.as_deref(),
        DEFAULT_STATE_DIR,
        at.key("state_dir"),
        p,
    );
    let ids = |values: &[i64], key: &str, p: &mut Problems| -> Vec<u32> {
        let mut ids = Vec::new();
        for (i, v) in values.iter().enumerate() {
            match u32::try_from(*v) {
                Ok(id) => ids.push(id),
                Err(_) => p.push(
                    at.key(key).index(i),
                    format!("invalid id {v}: must be 0 to {}", u32::MAX),
                ),
            }
        }
        ids
    };
    let allowed_uids = ids(&file.control.allowed_uids, "allowed_uids", p);
    let allowed_gids = ids(&file.control.allowed_gids, "allowed_gids", p);
    let mut data_plane_users = Vec::new();
    // The user deploy/proxyd.service runs proxyd as, by default.
    let default = [DEFAULT_DATA_PLANE_USER.to_owned()];
    let users = file.control.data_plane_users.as_deref().unwrap_or(&default);
    for (i, user) in users.iter().enumerate() {
        if user.is_empty() || user.contains([':', '\n', ' ']) || user == "root" || user == "0" {
            p.push(
                at.key("data_plane_users").index(i),
                format!("invalid user {user:?}: a user name or uid other than root"),
            );
        } else {
            data_plane_users.push(user.clone());
        }
    }
    let metrics_address = file
        .control
        .metrics_address
        .as_deref()
        .and_then(|text| socket_addr(text, at.key("metrics_address"), p));
    ControlConfig {
        socket,
        state_dir,
        allowed_uids,
        allowed_gids,
        data_plane_users,
        metrics_address,
    }
}

pub(super) fn proxy(file: &FileConfig, p: &mut Problems) -> ProxyConfig {
    let at = KeyPath::root().key("proxy");
    let shutdown_timeout = match &file.proxy.shutdown_timeout {
        Some(text) => duration(text, at.key("shutdown_timeout"), p),
        None => DEFAULT_SHUTDOWN_TIMEOUT,
    };
    let admin_address = file
        .proxy
        .admin_address
        .as_deref()
        .and_then(|text| socket_addr(text, at.key("admin_address"), p));
    if file.proxy.listeners.is_empty() {
        p.push(
            at.key("listeners"),
            "at least one [[proxy.listeners]] is required",
        );
    }
    let mut names = HashMap::new();
    let mut addresses = HashMap::new();
    let mut listeners = Vec::new();
    for (i, l) in file.proxy.listeners.iter().enumerate() {
        let lp = at.key("listeners").index(i);
        if let Some(listener) = listener(l, &lp, p) {
            if let Some(first) = names.insert(listener.name.clone(), i) {
                p.push(
                    lp.key("name"),
                    format!(
                        "listener name {:?} is already used by proxy.listeners[{first}]",
                        listener.name
                    ),
                );
            }
            // Port 0 asks the kernel for a free port: two such listeners do not collide.
            if listener.address.port() != 0
                && let Some(first) = addresses.insert(listener.address, i)
            {
                p.push(
                    lp.key("address"),
                    format!(
                        "address {} is already used by proxy.listeners[{first}]",
                        listener.address
                    ),
                );
            }
            listeners.push(listener);
        }
    }
    let max_request_headers = match file.proxy.max_request_headers {
        None => DEFAULT_MAX_REQUEST_HEADERS,
        Some(n) => match u32::try_from(n) {
            Ok(n @ 1..=10_000) => n,
            _ => {
                p.push(
                    at.key("max_request_headers"),
                    format!("must be 1 to 10000 (got {n})"),
                );
                DEFAULT_MAX_REQUEST_HEADERS
            }
        },
    };
    let max_request_header_bytes = match &file.proxy.max_request_header_bytes {
        None => DEFAULT_MAX_REQUEST_HEADER_BYTES,
        Some(size) => match parse_size(size) {
            // hyper's read buffer cannot be smaller than 8 KiB.
            Ok(n @ 8192..=16_777_216) => n,
            Ok(n) => {
                p.push(
                    at.key("max_request_header_bytes"),
                    format!("must be 8k to 16m (got {n} bytes)"),
                );
                DEFAULT_MAX_REQUEST_HEADER_BYTES
            }
            Err(e) => {
                p.push(at.key("max_request_header_bytes"), e);
                DEFAULT_MAX_REQUEST_HEADER_BYTES
            }
        },
    };
    if let Some(admin) = admin_address
        && admin.port() != 0
        && let Some(first) = addresses.get(&admin)
    {
        p.push(
            at.key("admin_address"),
            format!("address {admin} is already used by proxy.listeners[{first}]"),
        );
    }
    ProxyConfig {
        shutdown_timeout,
        max_request_headers,
        request_header_timeout: timeout_or(
            &file.proxy.request_header_timeout,
            DEFAULT_REQUEST_HEADER_TIMEOUT,
            at.key("request_header_timeout"),
            p,
        ),
        upstream_connect_timeout: timeout_or(
            &file.proxy.upstream_connect_timeout,
            DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
            at.key("upstream_connect_timeout"),
            p,
        ),
        upstream_idle_timeout: timeout_or(
            &file.proxy.upstream_idle_timeout,
            DEFAULT_UPSTREAM_IDLE_TIMEOUT,
            at.key("upstream_idle_timeout"),
            p,
        ),
        upstream_h2_ping_interval: timeout_or(
            &file.proxy.upstream_h2_ping_interval,
            DEFAULT_UPSTREAM_H2_PING_INTERVAL,
            at.key("upstream_h2_ping_interval"),
            p,
        ),
        upstream_h2_ping_timeout: timeout_or(
            &file.proxy.upstream_h2_ping_timeout,
            DEFAULT_UPSTREAM_H2_PING_TIMEOUT,
            at.key("upstream_h2_ping_timeout"),
            p,
        ),
        max_request_header_bytes,
        admin_address,
        tls_session_resumption: file.proxy.tls_session_resumption.unwrap_or(true),
        listeners,
        limits: hardening::connection_limits(&file.proxy, &at, p),
    }
}

pub(super) fn listener(l: &ListenerFile, at: &KeyPath, p: &mut Problems) -> Option<ListenerConfig> {
    let name = match l.name.as_deref() {
        None => {
            p.push(at.clone(), "missing key `name`");
            None
        }
        Some(n)
            if n.is_empty()
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            p.push(
                at.key("name"),
                format!("invalid listener name {n:?}: use letters, digits, '-' or '_'"),
            );
            None
        }
        Some(n) if n == proto::ADMIN_LISTENER_NAME => {
            p.push(
                at.key("name"),
                format!(
                    "listener name {n:?} is reserved: proxyd reports its admin listener (proxy.admin_address) under it"
                ),
            );
            None
        }
        Some(n) => Some(n.to_owned()),
    };
    let address = match l.address.as_deref() {
        None => {
            p.push(at.clone(), "missing key `address`");
            None
        }
        Some(text) => socket_addr(text, at.key("address"), p),
    };
    Some(ListenerConfig {
        name: name?,
        address: address?,
        tls: l.tls,
    })
}

pub(super) fn acme(file: &FileConfig, p: &mut Problems) -> Option<AcmeConfig> {
    let acme = file.acme.as_ref()?;
    let at = KeyPath::root().key("acme");
    let directory_url = match acme.directory_url.as_deref() {
        None => {
            p.push(at.clone(), "missing key `directory_url`");
            String::new()
        }
        Some(text) => {
            match url::Url::parse(text) {
                Ok(u) if matches!(u.scheme(), "https" | "http") => {}
                _ => p.push(
                    at.key("directory_url"),
                    format!("invalid URL {text:?}: expected an https:// (or http://) URL"),
                ),
            }
            text.to_owned()
        }
    };
    for (i, c) in acme.contact.iter().enumerate() {
        if !c.starts_with("mailto:") || c.len() <= "mailto:".len() {
            p.push(
                at.key("contact").index(i),
                format!("invalid contact {c:?}: expected \"mailto:ops@example.com\""),
            );
        }
    }
    let challenge = match acme.challenge.as_deref() {
        None | Some("http-01") => AcmeChallenge::Http01,
        Some("tls-alpn-01") => AcmeChallenge::TlsAlpn01,
        Some(other) => {
            p.push(
                at.key("challenge"),
                format!("invalid challenge {other:?}: expected \"http-01\" or \"tls-alpn-01\""),
            );
            AcmeChallenge::Http01
        }
    };
    let ca_roots = acme
        .ca_roots
        .as_deref()
        .map(|r| non_empty_path(Some(r), "", at.key("ca_roots"), p));
    Some(AcmeConfig {
        directory_url,
        contact: acme.contact.clone(),
        challenge,
        ca_roots,
    })
}

/// A name in etcd keys (`[cluster] name` and `node`): letters, digits, `.`, `_`, `-`.
fn key_name(text: &str, at: KeyPath, p: &mut Problems) {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        p.push(
            at,
            format!(
                "invalid name {text:?}: 1 to 64 letters, digits, '.', '_' or '-' (it is part of \
                 etcd keys)"
            ),
        );
    }
}

/// This host's name: the node of `[cluster]` when it names none.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// The most etcd endpoints `[cluster] etcd` may list.
const MAX_ETCD_ENDPOINTS: usize = 16;

pub(super) fn cluster(file: &FileConfig, p: &mut Problems) -> Option<ClusterConfig> {
    let cluster = file.cluster.as_ref()?;
    let at = KeyPath::root().key("cluster");
    if cluster.etcd.is_empty() {
        p.push(
            at.key("etcd"),
            "list at least one etcd endpoint, e.g. [\"http://10.0.0.1:2379\"]",
        );
    }
    if cluster.etcd.len() > MAX_ETCD_ENDPOINTS {
        p.push(
            at.key("etcd"),
            format!("at most {MAX_ETCD_ENDPOINTS} endpoints"),
        );
    }
    let mut https = false;
    for (i, endpoint) in cluster.etcd.iter().enumerate() {
        match url::Url::parse(endpoint) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some_and(|h| !h.is_empty())
                    && u.port().is_some()
                    && u.path() == "/"
                    && u.query().is_none()
                    && u.username().is_empty()
                    && !endpoint.ends_with('/') =>
            {
                https |= u.scheme() == "https";
            }
            _ => p.push(
                at.key("etcd").index(i),
                format!(
                    "invalid etcd endpoint {endpoint:?}: expected http://host:port or \
                     https://host:port"
                ),
            ),
        }
    }
    let name = cluster.name.clone().unwrap_or_else(|| "default".to_owned());
    key_name(&name, at.key("name"), p);
    let node = match &cluster.node {
        Some(node) => {
            key_name(node, at.key("node"), p);
            node.clone()
        }
        None => {
            let host = host_name();
            key_name(&host, at.key("node"), p);
            host
        }
    };
    let lease_ttl = match &cluster.lease_ttl {
        None => Duration::from_secs(10),
        Some(text) => {
            let d = duration(text, at.key("lease_ttl"), p);
            if !(Duration::from_secs(2)..=Duration::from_secs(300)).contains(&d) {
                p.push(at.key("lease_ttl"), "must be from 2s to 5m");
            }
            d
        }
    };
    let tls = cluster.tls.as_ref().map(|t| {
        let tls_at = at.key("tls");
        if t.ca_file.is_none() {
            p.push(
                tls_at.key("ca_file"),
                "required: the CA etcd's certificates chain to",
            );
        }
        let ca_file = non_empty_path(t.ca_file.as_deref(), "-", tls_at.key("ca_file"), p);
        let cert_file = t
            .cert_file
            .as_deref()
            .map(|f| non_empty_path(Some(f), "", tls_at.key("cert_file"), p));
        let key_file = t
            .key_file
            .as_deref()
            .map(|f| non_empty_path(Some(f), "", tls_at.key("key_file"), p));
        if cert_file.is_some() != key_file.is_some() {
            p.push(tls_at.clone(), "cert_file and key_file go together");
        }
        ClusterTls {
            ca_file,
            cert_file,
            key_file,
        }
    });
    let plain = cluster.etcd.iter().any(|e| e.starts_with("http://"));
    if https && plain {
        // A typo would send the fleet's config to that member in clear text.
        p.push(
            at.key("etcd"),
            "mixes https:// and http:// endpoints: every member is reached the same way",
        );
    }
    if https && tls.is_none() {
        p.push(
            at.key("tls"),
            "https:// endpoints need `tls = { ca_file = \"...\" }` (the CA etcd's certificates \
             chain to)",
        );
    }
    if !https && tls.is_some() && !cluster.etcd.is_empty() {
        p.push(
            at.key("tls"),
            "tls applies to https:// endpoints; these are http://",
        );
    }
    let key_file = cluster.key_file.as_deref().map(|f| {
        let path = non_empty_path(Some(f), "", at.key("key_file"), p);
        if !f.is_empty()
            && let Err(e) = read_fleet_key(&path)
        {
            p.push(at.key("key_file"), e);
        }
        path
    });
    Some(ClusterConfig {
        etcd: cluster.etcd.clone(),
        name,
        node,
        lease_ttl,
        tls,
        key_file,
    })
}
