//! The versions controld published, kept in `state_dir/history`: for each one the config text it
//! was built from and who published it, so that `History` can list them and `Rollback` can
//! publish an earlier one again. Bounded to the last [`HISTORY_LIMIT`] versions of each
//! [`Kind`]: ACME, which publishes two versions per attempt (challenge, then certificate), never
//! pushes config versions out.

use std::fs::{self, DirBuilder};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::diff::ConfigDiff;
use crate::error::Error;
use crate::state::write_atomically;

/// How many published versions of each kind are kept.
pub const HISTORY_LIMIT: usize = 50;

/// What a version changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The config: a reload, a rollback, the startup. (Entries written before kinds existed
    /// read as this.)
    #[default]
    Config,
    /// Only what ACME adds (a certificate, a challenge), on top of the same config.
    Certificate,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Config => "config",
            Kind::Certificate => "certificate",
        }
    }
}

/// One published version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub version: u64,
    pub hash: String,
    pub at_unix_ms: u64,
    /// "startup", "reload", "sighup" or "rollback to N".
    pub source: String,
    pub uid: Option<u32>,
    pub pid: Option<i32>,
    /// What changed against the version before it.
    pub summary: String,
    #[serde(default)]
    pub kind: Kind,
    /// The same, field by field. `None` in entries written before controld recorded it, and for
    /// versions published at startup or by ACME; absent from the file then, so that the format
    /// stays what older controld wrote and reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<ConfigDiff>,
}

#[derive(Debug, Clone)]
pub struct History {
    dir: PathBuf,
}

impl History {
    /// Opens `state_dir/history`, creating it with mode 0700.
    pub fn open(state_dir: &Path) -> Result<History, Error> {
        let dir = state_dir.join("history");
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| Error::StateDir {
                path: dir.clone(),
                source,
            })?;
        Ok(History { dir })
    }

    /// Where the config text of `version` is kept (also how diagnostics name it).
    pub fn config_path(&self, version: u64) -> PathBuf {
        self.dir.join(format!("{version}.toml"))
    }

    /// Records `entry` with the config text it was built from, then forgets the oldest versions
    /// beyond the limit.
    pub fn record(&self, entry: &Entry, config_text: &str) -> Result<(), Error> {
        let meta = serde_json::to_vec_pretty(entry).map_err(|e| Error::StateCorrupt {
            path: self.dir.clone(),
            reason: e.to_string(),
        })?;
        write_atomically(
            &self.dir,
            &format!("{}.toml", entry.version),
            config_text.as_bytes(),
        )?;
        write_atomically(&self.dir, &format!("{}.json", entry.version), &meta)?;
        // Nothing to forget while there are fewer entries than one kind may keep: no reason to
        // read them all on every reload.
        if self.versions().len() <= HISTORY_LIMIT {
            return Ok(());
        }
        let kept = self.list();
        for kind in [Kind::Config, Kind::Certificate] {
            let old = kept.iter().filter(|e| e.kind == kind).skip(HISTORY_LIMIT);
            for e in old {
                let _ = fs::remove_file(self.dir.join(format!("{}.json", e.version)));
                let _ = fs::remove_file(self.config_path(e.version));
            }
        }
        Ok(())
    }

    /// Every recorded version, newest first. An entry that cannot be read is skipped (and
    /// logged): history is for operators, never a reason to fail.
    pub fn list(&self) -> Vec<Entry> {
        self.versions()
            .into_iter()
            .filter_map(|v| {
                let path = self.dir.join(format!("{v}.json"));
                match fs::read(&path).map(|b| serde_json::from_slice::<Entry>(&b)) {
                    Ok(Ok(entry)) => Some(entry),
                    Ok(Err(e)) => {
                        tracing::warn!(path = %path.display(), error = %e, "skipping a corrupt history entry");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable history entry");
                        None
                    }
                }
            })
            .collect()
    }

    /// The config text `version` was built from, if it is still kept.
    pub fn config_text(&self, version: u64) -> Option<String> {
        fs::read_to_string(self.config_path(version)).ok()
    }

    /// Recorded version numbers, newest first.
    fn versions(&self) -> Vec<u64> {
        let mut versions: Vec<u64> = fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json")?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        versions.sort_unstable_by(|a, b| b.cmp(a));
        versions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: u64) -> Entry {
        Entry {
            version,
            hash: format!("h{version}"),
            at_unix_ms: version,
            source: "reload".into(),
            uid: Some(0),
            pid: None,
            summary: String::new(),
            kind: Kind::Config,
            diff: None,
        }
    }

    #[test]
    fn keeps_the_newest_versions_with_their_config() {
        let tmp = tempfile::tempdir().unwrap();
        let history = History::open(tmp.path()).unwrap();
        for v in 1..=(HISTORY_LIMIT as u64 + 3) {
            history
                .record(&entry(v), &format!("# version {v}\n"))
                .unwrap();
        }
        let list = history.list();
        assert_eq!(list.len(), HISTORY_LIMIT);
        assert_eq!(list[0], entry(HISTORY_LIMIT as u64 + 3), "newest first");
        assert_eq!(
            history.config_text(HISTORY_LIMIT as u64 + 3).unwrap(),
            format!("# version {}\n", HISTORY_LIMIT + 3)
        );
        assert_eq!(history.config_text(1), None, "the oldest were forgotten");
    }

    #[test]
    fn certificate_versions_do_not_push_config_versions_out() {
        let tmp = tempfile::tempdir().unwrap();
        let history = History::open(tmp.path()).unwrap();
        history.record(&entry(1), "# config\n").unwrap();
        for v in 2..=(2 * HISTORY_LIMIT as u64 + 1) {
            let e = Entry {
                kind: Kind::Certificate,
                ..entry(v)
            };
            history.record(&e, "# config\n").unwrap();
        }
        let list = history.list();
        assert_eq!(list.len(), HISTORY_LIMIT + 1);
        assert_eq!(list.last().unwrap().version, 1, "the config version stays");

        // An entry written before kinds existed is a config entry.
        let old = br#"{"version":1,"hash":"h","at_unix_ms":1,"source":"reload","uid":null,"pid":null,"summary":""}"#;
        let e: Entry = serde_json::from_slice(old).unwrap();
        assert_eq!(e.kind, Kind::Config);
    }

    #[test]
    fn entries_keep_their_diff_and_old_entries_without_one_still_load() {
        let tmp = tempfile::tempdir().unwrap();
        let history = History::open(tmp.path()).unwrap();
        // As controld wrote entries before it kept the detailed diff.
        std::fs::write(
            tmp.path().join("history/1.json"),
            r#"{"version": 1, "hash": "h1", "at_unix_ms": 1, "source": "startup",
                "uid": null, "pid": null, "summary": "published at startup"}"#,
        )
        .unwrap();
        let diff = ConfigDiff {
            sites_modified: vec!["a.example".into()],
            site_changes: vec![crate::diff::SiteChange {
                site: "a.example".into(),
                changes: vec![crate::diff::FieldChange {
                    field: "upstreams".into(),
                    old: "http://a:80".into(),
                    new: "http://b:80".into(),
                    added: vec!["http://b:80".into()],
                    removed: vec!["http://a:80".into()],
                }],
            }],
            ..ConfigDiff::default()
        };
        let second = Entry {
            diff: Some(diff),
            ..entry(2)
        };
        history.record(&second, "").unwrap();
        let list = history.list();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0], second);
        assert_eq!(list[1].summary, "published at startup");
        assert_eq!(list[1].diff, None);
        // An entry without a diff is written as before: no `diff` key at all.
        history.record(&entry(3), "").unwrap();
        let text = std::fs::read_to_string(tmp.path().join("history/3.json")).unwrap();
        assert!(!text.contains("diff"), "{text}");
    }
}
