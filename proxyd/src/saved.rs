//! The last applied snapshot, kept on disk so that a proxyd that starts while controld is
//! unreachable serves it instead of nothing. Written as temp file → fsync → rename → fsync of the
//! directory, mode 0600 (it carries private keys).
//!
//! The file is a header line naming the format version, a line with the SHA-256 of the payload,
//! then the encoded `Snapshot`. A file whose format this proxyd does not know, or whose payload
//! does not match its hash (a torn write, a disk error, an edit), is reported and never served.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use prost::Message;
use proto::v1 as pb;
use sha2::{Digest, Sha256};

const FILE: &str = "snapshot.pb";

/// The first line of a saved snapshot: its format and version.
const MAGIC: &str = "proxyd-snapshot 1";

/// Where the last applied snapshot is kept.
#[derive(Debug, Clone)]
pub struct SavedSnapshot {
    dir: PathBuf,
}

impl SavedSnapshot {
    /// Opens `dir`, creating it with mode 0700 when missing.
    pub fn open(dir: &Path) -> std::io::Result<SavedSnapshot> {
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        Ok(SavedSnapshot {
            dir: dir.to_owned(),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Replaces the saved snapshot with `snapshot`.
    pub fn save(&self, snapshot: &pb::Snapshot) -> std::io::Result<()> {
        let tmp = self.dir.join(format!(".{FILE}.tmp"));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&encode(snapshot))?;
        file.sync_all()?;
        drop(file);
        if let Err(e) = fs::rename(&tmp, self.path()) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        File::open(&self.dir)?.sync_all()
    }

    /// The saved snapshot, if there is one. A file that cannot be read or decoded is an error,
    /// not "nothing saved": the caller says so and starts empty.
    pub fn load(&self) -> Result<Option<pb::Snapshot>, String> {
        let bytes = match fs::read(self.path()) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading {}: {e}", self.path().display())),
        };
        decode(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", self.path().display()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn encode(snapshot: &pb::Snapshot) -> Vec<u8> {
    let payload = snapshot.encode_to_vec();
    let mut out = format!("{MAGIC}\nsha256 {}\n", hex(&Sha256::digest(&payload))).into_bytes();
    out.extend_from_slice(&payload);
    out
}

fn decode(bytes: &[u8]) -> Result<pb::Snapshot, String> {
    let mut lines = bytes.splitn(3, |b| *b == b'\n');
    let (Some(magic), Some(hash), Some(payload)) = (lines.next(), lines.next(), lines.next())
    else {
        return Err("not a saved snapshot (no header)".to_owned());
    };
    if magic != MAGIC.as_bytes() {
        return Err(format!(
            "unknown format {:?} (this proxyd reads {MAGIC:?})",
            String::from_utf8_lossy(magic)
        ));
    }
    let actual = format!("sha256 {}", hex(&Sha256::digest(payload)));
    if hash != actual.as_bytes() {
        return Err(format!(
            "content hash mismatch: the header says {:?}, the content is {actual:?}",
            String::from_utf8_lossy(hash)
        ));
    }
    pb::Snapshot::decode(payload).map_err(|e| format!("decoding: {e}"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn saves_and_loads_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let saved = SavedSnapshot::open(&tmp.path().join("state")).unwrap();
        assert_eq!(saved.load().unwrap(), None);
        let snapshot = pb::Snapshot {
            version: 7,
            content_hash: "h".into(),
            ..Default::default()
        };
        saved.save(&snapshot).unwrap();
        assert_eq!(saved.load().unwrap(), Some(snapshot));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&saved.path()), 0o600);
        assert_eq!(mode(&tmp.path().join("state")), 0o700);

        fs::write(saved.path(), b"\xff\xff\xff").unwrap();
        assert!(
            saved.load().is_err(),
            "a corrupt file is reported, not ignored"
        );
    }

    #[test]
    fn a_changed_payload_an_unknown_format_or_no_header_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let saved = SavedSnapshot::open(tmp.path()).unwrap();
        let snapshot = pb::Snapshot {
            version: 9,
            content_hash: "h".into(),
            ..Default::default()
        };
        saved.save(&snapshot).unwrap();
        let good = fs::read(saved.path()).unwrap();
        assert!(good.starts_with(b"proxyd-snapshot 1\nsha256 "));

        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        fs::write(saved.path(), &flipped).unwrap();
        let e = saved.load().unwrap_err();
        assert!(e.contains("content hash mismatch"), "{e}");

        let newer = [b"proxyd-snapshot 2".as_slice(), &good[17..]].concat();
        fs::write(saved.path(), newer).unwrap();
        let e = saved.load().unwrap_err();
        assert!(e.contains("unknown format"), "{e}");

        // What proxyd wrote before the format had a header.
        fs::write(saved.path(), snapshot.encode_to_vec()).unwrap();
        assert!(saved.load().is_err());
    }
}
