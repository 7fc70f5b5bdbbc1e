//! The wire contract shared by controld, proxyd and proxyctl: generated gRPC types and services,
//! and the one way to reach controld's Unix socket.
//!
//! Generated types stop at each crate's edge: controld converts its validated model into these
//! types, proxyd converts them into its own validated runtime with `TryFrom`.

pub mod uds;

#[cfg(feature = "etcd")]
pub mod etcd;

/// `proxy.v1`: the Subscribe stream between controld and proxyd, and the Admin service.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("proxy.v1");
}

/// Written by hand (the generated one is skipped in build.rs) so that a private key never reaches
/// a log line through `{:?}`: the key shows only as whether it is present.
impl std::fmt::Debug for v1::Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("site", &self.site)
            .field("names", &self.names)
            .field("chain_pem_bytes", &self.chain_pem.len())
            .field("key_pem", &presence(&self.key_pem))
            .field("not_after_unix", &self.not_after_unix)
            .field("source", &self.source)
            .finish()
    }
}

/// Written by hand for the same reason as `Certificate`'s: the client key of mutual TLS to
/// upstreams shows only as whether it is present.
impl std::fmt::Debug for v1::UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("server_name", &self.server_name)
            .field("client_cert_pem_bytes", &self.client_cert_pem.len())
            .field("client_key_pem", &presence(&self.client_key_pem))
            .finish()
    }
}

fn presence(secret: &str) -> &'static str {
    if secret.is_empty() {
        "<none>"
    } else {
        "<redacted>"
    }
}

/// The encoded `FileDescriptorSet` of `proxy.v1`, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/proxy_descriptor.bin"));

/// The build version every binary reports (Hello, Status, `--version`).
pub const BUILD_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The name under which a data plane's ACK (and so `Status`) reports its admin listener
/// (`/healthz`, `/readyz`, `/metrics`). Reserved: no `[[proxy.listeners]]` may take it.
pub const ADMIN_LISTENER_NAME: &str = "admin";

/// The largest gRPC message either end of the control socket reads or writes, and so the
/// largest snapshot controld publishes (it refuses a bigger one with a diagnostic that names
/// this limit): 64 MiB holds a config file at its 4 MiB cap plus thousands of certificate chains.
/// tonic's default, 4 MiB, would make every data plane fail to decode a snapshot with a few
/// hundred certificates, reconnect forever and NACK nothing.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Room kept under [`MAX_MESSAGE_BYTES`] for the gRPC and message framing around a snapshot.
pub const MAX_SNAPSHOT_BYTES: usize = MAX_MESSAGE_BYTES - 64 * 1024;

/// The largest request a caller may send to Admin (a Validate carries a whole config file, at
/// most 4 MiB) or a data plane on its Subscribe stream (ACKs and NACKs are small).
pub const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

/// Bounds the wire contract sets on a snapshot, which controld checks in the file and proxyd
/// checks again at its edge (a snapshot from disk or a faulty control plane): the weight of one
/// upstream, and of one list of upstreams together (proxyd's schedule holds an entry per unit).
pub const MAX_UPSTREAM_WEIGHT: u32 = 1000;
pub const MAX_TOTAL_WEIGHT: u64 = 100_000;

/// Headers a `respond` route may not set: the data plane frames its own answers, and these
/// would change the framing or the connection.
pub const FRAMING_HEADERS: [&str; 9] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "host",
];

#[cfg(test)]
mod tests {
    use super::v1;

    #[test]
    fn debug_never_shows_a_private_key() {
        let tls = v1::UpstreamTls {
            ca_pem: "CA PEM".into(),
            server_name: "api.internal".into(),
            client_cert_pem: "CERT PEM".into(),
            client_key_pem: "-----BEGIN PRIVATE KEY----- secret".into(),
        };
        let shown = format!(
            "{:?}",
            v1::Site {
                upstream: Some(v1::UpstreamConnection {
                    tls: Some(tls),
                    ..Default::default()
                }),
                ..Default::default()
            }
        );
        assert!(shown.contains("api.internal"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(
            !shown.contains("secret") && !shown.contains("PRIVATE"),
            "{shown}"
        );
        let certificate = v1::Certificate {
            key_pem: "-----BEGIN PRIVATE KEY----- secret".into(),
            ..Default::default()
        };
        assert!(!format!("{certificate:?}").contains("secret"));
        assert!(format!("{:?}", v1::UpstreamTls::default()).contains("<none>"));
    }
}
