//! `[cluster]`: this host's place in a fleet (docs/fleets.md).

use std::path::PathBuf;
use std::time::Duration;

/// `[cluster]`: the fleet this host belongs to, and how it reaches etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd's client URLs (`http://host:port` or `https://host:port`), at least one.
    pub etcd: Vec<String>,
    /// The fleet: the prefix of every key it keeps in etcd.
    pub name: String,
    /// This host in the fleet.
    pub node: String,
    /// How long this node stays listed after its controld was last heard from.
    pub lease_ttl: Duration,
    /// Client TLS to etcd; required for `https://` endpoints.
    pub tls: Option<ClusterTls>,
    /// The fleet key (32 bytes, hex), the same file on every host: it encrypts the private
    /// keys the fleet keeps in etcd (ACME). Required when the fleet has ACME sites.
    pub key_file: Option<PathBuf>,
}

/// The fleet key's length in bytes.
pub const FLEET_KEY_BYTES: usize = 32;

/// Reads a fleet key file: 64 hex digits (32 bytes), surrounding white space allowed, as
/// `openssl rand -hex 32` writes it.
pub fn read_fleet_key(path: &std::path::Path) -> Result<[u8; FLEET_KEY_BYTES], String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    // Group-readable is allowed (`root:controld 0640`, a secret volume shared through its
    // group); readable or writable by every user is not.
    if mode & 0o007 != 0 {
        return Err(format!(
            "{}: the fleet key is open to every user (mode {mode:04o}): `chmod 600` it (or 640, \
             with controld's group)",
            path.display()
        ));
    }
    if meta.len() > 1024 {
        return Err(format!(
            "{}: not a fleet key (expected 64 hex digits, as `openssl rand -hex 32` writes)",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = text.trim();
    let mut key = [0u8; FLEET_KEY_BYTES];
    let valid = text.len() == FLEET_KEY_BYTES * 2
        && text.is_ascii()
        && key.iter_mut().enumerate().all(|(i, byte)| {
            text.get(2 * i..2 * i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .map(|b| *byte = b)
                .is_some()
        });
    if !valid {
        return Err(format!(
            "{}: not a fleet key (expected 64 hex digits, as `openssl rand -hex 32` writes)",
            path.display()
        ));
    }
    // A key of one repeated byte (all zeros, a placeholder) is no secret.
    if key.iter().all(|b| *b == key[0]) {
        return Err(format!(
            "{}: not a usable fleet key (one byte repeated): write a random one with `openssl \
             rand -hex 32`",
            path.display()
        ));
    }
    Ok(key)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTls {
    /// The CA etcd's server certificates chain to.
    pub ca_file: PathBuf,
    /// This host's client certificate and key, when etcd asks for one.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}
