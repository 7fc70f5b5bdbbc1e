//! The fleet key: what encrypts the private keys a fleet keeps in etcd (the ACME account's, each
//! certificate's, a TLS-ALPN-01 challenge's), so that an etcd backup or an etcd reader without
//! the key file holds no usable key. ChaCha20-Poly1305 (ring), a random nonce per sealing, and
//! the etcd key the secret lives under as associated data: a sealed value moved to another key
//! does not open.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// The prefix of a sealed value: the format's version.
const SEALED_V1: &str = "v1:";

/// The fleet key, read from `[cluster] key_file`. Its `Debug` shows nothing of it.
pub struct FleetKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetKey(..)")
    }
}

impl FleetKey {
    pub fn new(bytes: &[u8; proxy_config::config::FLEET_KEY_BYTES]) -> Result<FleetKey, String> {
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes)
            .map_err(|_| "the fleet key is not a ChaCha20-Poly1305 key".to_owned())?;
        Ok(FleetKey {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        })
    }

    /// Reads the key file `path` names.
    pub fn read(path: &std::path::Path) -> Result<FleetKey, String> {
        FleetKey::new(&proxy_config::config::read_fleet_key(path)?)
    }

    /// `secret` sealed for the etcd key `place`: `v1:<nonce hex>:<ciphertext and tag hex>`.
    pub fn seal(&self, place: &str, secret: &[u8]) -> Result<String, String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| "no randomness for a nonce".to_owned())?;
        let mut sealed = secret.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(place.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| "sealing failed".to_owned())?;
        Ok(format!("{SEALED_V1}{}:{}", hex(&nonce), hex(&sealed)))
    }

    /// Opens what [`FleetKey::seal`] sealed for `place`.
    pub fn open(&self, place: &str, sealed: &str) -> Result<Vec<u8>, String> {
        let refused = || {
            format!(
                "{place}: cannot decrypt it with this host's fleet key ([cluster] key_file): \
                 every host of the fleet needs the same key file"
            )
        };
        let rest = sealed
            .strip_prefix(SEALED_V1)
            .ok_or_else(|| format!("{place}: not a sealed value this controld reads"))?;
        let (nonce, body) = rest.split_once(':').ok_or_else(refused)?;
        let nonce: [u8; NONCE_LEN] = unhex(nonce)
            .and_then(|n| n.try_into().ok())
            .ok_or_else(refused)?;
        let mut body = unhex(body).ok_or_else(refused)?;
        let opened = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(place.as_bytes()),
                &mut body,
            )
            .map_err(|_| refused())?;
        Ok(opened.to_vec())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_with_the_same_key_at_the_same_place() {
        let key = FleetKey::new(&[7; 32]).unwrap();
        let sealed = key
            .seal("acme/certs/a", b"-----BEGIN PRIVATE KEY-----")
            .unwrap();
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains("PRIVATE"));
        assert_eq!(
            key.open("acme/certs/a", &sealed).unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        // A fresh nonce each time.
        assert_ne!(
            sealed,
            key.seal("acme/certs/a", b"-----BEGIN PRIVATE KEY-----")
                .unwrap()
        );
        // Moved to another key, or opened with another fleet key: refused, and said why.
        let moved = key.open("acme/certs/b", &sealed).unwrap_err();
        assert!(
            moved.contains("every host of the fleet needs the same key file"),
            "{moved}"
        );
        let other = FleetKey::new(&[8; 32]).unwrap();
        assert!(other.open("acme/certs/a", &sealed).is_err());
        // Garbage never panics.
        for bad in ["", "v1:", "v1:zz:zz", "v1:00:00", "v2:00:00", "v1:0011:"] {
            assert!(key.open("p", bad).is_err(), "{bad}");
        }
        assert_eq!(format!("{key:?}"), "FleetKey(..)");
    }
}
