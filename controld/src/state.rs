//! controld's state directory: the version counter that must keep increasing across restarts.
//!
//! Files are written as temp file → fsync → rename → fsync of the directory, so a crash leaves
//! either the old file or the new one, never a torn one.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::Error;

const VERSION_FILE: &str = "version";

/// The last version controld published and the hash of its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub version: u64,
    pub hash: String,
}

#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens `dir`, creating it with mode 0700 when missing.
    pub fn open(dir: &Path) -> Result<StateDir, Error> {
        let err = |source| Error::StateDir {
            path: dir.to_owned(),
            source,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
        let mode = fs::metadata(dir).map_err(err)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(dir = %dir.display(), mode = format!("{:o}", mode & 0o777), "state directory is readable by others; it should be 0700");
        }
        Ok(StateDir {
            dir: dir.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The last published version, if any was recorded.
    pub fn last_published(&self) -> Result<Option<Published>, Error> {
        let path = self.dir.join(VERSION_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::StateDir { path, source }),
        };
        let corrupt = |reason: &str| Error::StateCorrupt {
            path: path.clone(),
            reason: reason.to_owned(),
        };
        let mut version = None;
        let mut hash = None;
        for line in text.lines() {
            match line.split_once('=') {
                Some(("version", v)) => {
                    version = Some(
                        v.trim()
                            .parse::<u64>()
                            .map_err(|_| corrupt("version is not a number"))?,
                    )
                }
                Some(("hash", h)) => hash = Some(h.trim().to_owned()),
                _ => {}
            }
        }
        match (version, hash) {
            (Some(version), Some(hash)) => Ok(Some(Published { version, hash })),
            _ => Err(corrupt("expected version= and hash= lines")),
        }
    }

    /// Records `published` durably before it is sent to anyone.
    pub fn record(&self, published: &Published) -> Result<(), Error> {
        let text = format!("version={}\nhash={}\n", published.version, published.hash);
        write_atomically(&self.dir, VERSION_FILE, text.as_bytes())
    }
}

/// Writes `dir/name` with mode 0600 so that readers see the old or the new content, never a mix.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), Error> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::StateDir { path, source }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err(&tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(err(&tmp))?;
    drop(file);
    if let Err(e) = fs::rename(&tmp, &target) {
        let _ = fs::remove_file(&tmp);
        return Err(err(&target)(e));
    }
    File::open(dir).and_then(|d| d.sync_all()).map_err(err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_reads_back_the_version() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let state = StateDir::open(&dir).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(state.last_published().unwrap(), None);
        let p = Published {
            version: 7,
            hash: "abc".into(),
        };
        state.record(&p).unwrap();
        assert_eq!(state.last_published().unwrap(), Some(p));
        let mode = fs::metadata(dir.join(VERSION_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_a_reset() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        fs::write(tmp.path().join(VERSION_FILE), "version=x\n").unwrap();
        assert!(matches!(
            state.last_published(),
            Err(Error::StateCorrupt { .. })
        ));
    }
}
