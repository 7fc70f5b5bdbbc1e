//! What ACME keeps in `state_dir/acme` (directory 0700, files 0600, every write temp file → fsync
//! → rename → fsync of the directory): the account key per CA, each site's certificate with the
//! previous generation beside it, and the back-off state of failed attempts.
//!
//! A certificate file holds the chain and then the key, so the pair changes in one rename. Before
//! a new one replaces it, the current file becomes `<site>.prev.pem` (a hard link, so a current
//! file exists at every instant). At startup a missing, torn or invalid current file falls back
//! to the previous generation, and says so.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Certificate, check_pem};
use crate::error::Error;
use crate::state::write_atomically;

/// The back-off state of one site's failed attempts; persisted so that a restart does not retry
/// at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    /// Failed attempts in a row.
    pub failures: u32,
    /// No attempt before this, Unix milliseconds.
    pub next_attempt_unix_ms: u64,
    /// The last failure, in the operator's terms.
    pub last_error: String,
    pub last_error_unix_ms: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct BackoffFile {
    sites: BTreeMap<String, Backoff>,
}

const BACKOFF_FILE: &str = "backoff.json";

/// `state_dir/acme`.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    certs: PathBuf,
}

impl Store {
    /// Opens `state_dir/acme` and its `certs/`, creating them with mode 0700.
    pub fn open(state_dir: &Path) -> Result<Store, Error> {
        let dir = state_dir.join("acme");
        let certs = dir.join("certs");
        for d in [&dir, &certs] {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(|source| Error::StateDir {
                    path: d.clone(),
                    source,
                })?;
        }
        Ok(Store { dir, certs })
    }

    /// Where `site`'s current certificate is kept.
    pub fn certificate_path(&self, site: &str) -> PathBuf {
        self.certs.join(format!("{}.pem", file_stem(site)))
    }

    fn previous_path(&self, site: &str) -> PathBuf {
        self.certs.join(format!("{}.prev.pem", file_stem(site)))
    }

    /// The account file of the CA at `directory_url`: one account per CA.
    fn account_name(directory_url: &str) -> String {
        let digest = Sha256::digest(directory_url.as_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("account-{hex}.json")
    }

    /// The stored account of the CA at `directory_url`, if one was created.
    pub fn load_account(
        &self,
        directory_url: &str,
    ) -> Result<Option<instant_acme::AccountCredentials>, String> {
        let path = self.dir.join(Store::account_name(directory_url));
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("ACME account file {} is unreadable: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("reading ACME account file {}: {e}", path.display())),
        }
    }

    pub fn save_account(
        &self,
        directory_url: &str,
        credentials: &instant_acme::AccountCredentials,
    ) -> Result<(), String> {
        // The JSON holds the account's private key: it goes nowhere but this 0600 file.
        let bytes = serde_json::to_vec(credentials).map_err(|e| e.to_string())?;
        write_atomically(&self.dir, &Store::account_name(directory_url), &bytes)
            .map_err(|e| format!("storing the ACME account: {e}"))
    }

    /// Forgets the stored account of a CA that no longer knows it (a test CA restarted).
    pub fn forget_account(&self, directory_url: &str) {
        let _ = fs::remove_file(self.dir.join(Store::account_name(directory_url)));
    }

    /// `site`'s stored certificate: the current generation, or the previous one when the
    /// current file is missing, torn or invalid (logged).
    pub fn load_certificate(&self, site: &str) -> Option<Certificate> {
        let current = self.certificate_path(site);
        let previous = self.previous_path(site);
        let failure = match read_certificate(&current) {
            Ok(c) => return Some(c),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !previous.exists() => {
                return None;
            }
            Err(e) => e,
        };
        match read_certificate(&previous) {
            Ok(c) => {
                tracing::warn!(site, file = %current.display(), error = %failure,
                    fallback = %previous.display(),
                    "the stored ACME certificate is unusable; falling back to the previous generation");
                Some(c)
            }
            Err(e) => {
                tracing::warn!(site, file = %current.display(), error = %failure,
                    previous_error = %e, "no usable stored ACME certificate; a new one will be issued");
                None
            }
        }
    }

    /// Stores a new certificate for `site` and reads it back; the one it replaces stays as the
    /// previous generation. On failure (disk full, read-only, ...) the stored files are as they
    /// were.
    pub fn save_certificate(
        &self,
        site: &str,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<Certificate, String> {
        let current = self.certificate_path(site);
        let name = format!("{}.pem", file_stem(site));
        let new = format!("{}{}{}", chain_pem.trim_end(), "\n", key_pem);
        let tmp_name = format!("{name}.new");
        // Written aside first: a failure leaves the current and previous files untouched.
        write_atomically(&self.certs, &tmp_name, new.as_bytes())
            .map_err(|e| format!("storing the certificate of {site}: {e}"))?;
        let staged = self.certs.join(&tmp_name);
        let result = (|| {
            if current.exists() {
                let previous = self.previous_path(site);
                match fs::remove_file(&previous) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                fs::hard_link(&current, &previous)?;
            }
            fs::rename(&staged, &current)?;
            fs::File::open(&self.certs).and_then(|d| d.sync_all())
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&staged);
            return Err(format!(
                "storing the certificate of {site} in {}: {e}",
                self.certs.display()
            ));
        }
        read_certificate(&current).map_err(|e| {
            format!(
                "the certificate of {site} just stored in {} does not read back: {e}",
                current.display()
            )
        })
    }

    /// The persisted back-off state; empty (and logged) when the file is unreadable.
    pub fn load_backoff(&self) -> BTreeMap<String, Backoff> {
        let path = self.dir.join(BACKOFF_FILE);
        match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<BackoffFile>(&bytes) {
                Ok(file) => file.sites,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable ACME back-off file");
                    BTreeMap::new()
                }
            },
            Err(_) => BTreeMap::new(),
        }
    }

    pub fn save_backoff(&self, sites: &BTreeMap<String, Backoff>) -> Result<(), String> {
        let file = BackoffFile {
            sites: sites.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| e.to_string())?;
        write_atomically(&self.dir, BACKOFF_FILE, &bytes)
            .map_err(|e| format!("storing the ACME back-off state: {e}"))
    }
}

/// A site name as a file name: hostnames are safe but for a wildcard's `*`.
fn file_stem(site: &str) -> String {
    site.replace('*', "_wildcard_")
}

/// Reads a stored certificate file (chain, then key) and checks the pair.
fn read_certificate(path: &Path) -> Result<Certificate, std::io::Error> {
    let text = fs::read_to_string(path)?;
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let key_start = text
        .find("-----BEGIN PRIVATE KEY-----")
        .or_else(|| text.find("-----BEGIN EC PRIVATE KEY-----"))
        .ok_or_else(|| invalid("no private key in the file".to_owned()))?;
    let (chain, key) = text.split_at(key_start);
    check_pem(chain, key, path).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn stores_a_certificate_keeps_the_previous_one_and_falls_back_to_it() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        assert!(store.load_certificate("a.test").is_none());
        let (chain1, key1) = pair("a.test");
        let first = store.save_certificate("a.test", &chain1, &key1).unwrap();
        assert_eq!(first.names, vec!["a.test".to_owned()]);
        let (chain2, key2) = pair("a.test");
        let second = store.save_certificate("a.test", &chain2, &key2).unwrap();
        assert_ne!(first.serial, second.serial);
        let path = store.certificate_path("a.test");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = fs::metadata(tmp.path().join("acme"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(
            store.load_certificate("a.test").unwrap().serial,
            second.serial
        );

        // A torn current file: the previous generation serves.
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, &text[..text.len() / 2]).unwrap();
        assert_eq!(
            store.load_certificate("a.test").unwrap().serial,
            first.serial
        );
        // A missing one too.
        fs::remove_file(&path).unwrap();
        assert_eq!(
            store.load_certificate("a.test").unwrap().serial,
            first.serial
        );
    }

    #[test]
    fn a_failed_store_leaves_the_files_as_they_were() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let (chain, key) = pair("a.test");
        let first = store.save_certificate("a.test", &chain, &key).unwrap();
        let before = fs::read(store.certificate_path("a.test")).unwrap();
        // The staging name is taken by a directory: the write fails.
        fs::create_dir(tmp.path().join("acme/certs/.a.test.pem.new.tmp")).unwrap();
        let (chain2, key2) = pair("a.test");
        let err = store
            .save_certificate("a.test", &chain2, &key2)
            .unwrap_err();
        assert!(err.contains("storing the certificate of a.test"), "{err}");
        assert_eq!(fs::read(store.certificate_path("a.test")).unwrap(), before);
        assert_eq!(
            store.load_certificate("a.test").unwrap().serial,
            first.serial
        );
    }

    #[test]
    fn backoff_state_round_trips_and_a_torn_file_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let mut sites = BTreeMap::new();
        sites.insert(
            "a.test".to_owned(),
            Backoff {
                failures: 3,
                next_attempt_unix_ms: 42,
                last_error: "boom".into(),
                last_error_unix_ms: 7,
            },
        );
        store.save_backoff(&sites).unwrap();
        assert_eq!(store.load_backoff(), sites);
        fs::write(tmp.path().join("acme").join(BACKOFF_FILE), "{\"sit").unwrap();
        assert!(store.load_backoff().is_empty());
    }
}
