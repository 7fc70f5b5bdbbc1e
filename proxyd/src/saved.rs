//! The last applied snapshot, kept on disk so that a proxyd that starts while controld is
//! unreachable serves it instead of nothing. Written as temp file → fsync → rename → fsync of the
//! directory, mode 0600 (it will carry private keys once sites have certificates).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use prost::Message;
use proto::v1 as pb;

const FILE: &str = "snapshot.pb";

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
        file.write_all(&snapshot.encode_to_vec())?;
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
        pb::Snapshot::decode(bytes.as_slice())
            .map(Some)
            .map_err(|e| format!("decoding {}: {e}", self.path().display()))
    }
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
}
