//! The fleet version this host applied last, kept in its state directory, and where a
//! restarting controld starts from.

use crate::config::Config;

/// The fleet version this host applied last, kept in the state directory so that a controld
/// that restarts serves it (with this host's tables as the file has them now), not the fleet
/// part of its config file, which may be older.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Applied {
    pub(super) version: u64,
    pub(super) hash: String,
    pub(super) text: String,
}

const APPLIED_FILE: &str = "fleet-applied.json";

fn load_applied(state_dir: &std::path::Path) -> Option<Applied> {
    let bytes = std::fs::read(state_dir.join(APPLIED_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub(super) fn save_applied(
    state_dir: &std::path::Path,
    applied: &Applied,
) -> Result<(), crate::Error> {
    let bytes = serde_json::to_vec(applied).unwrap_or_default();
    crate::state::write_atomically(state_dir, APPLIED_FILE, &bytes)
}

/// What controld starts with, and the fleet version (number and hash) it starts from: in a
/// fleet, the version it applied last joined to this file's host tables, when it kept one and
/// that still checks; else the file as it is (and no fleet version).
pub fn resume(
    config: Config,
    text: &str,
    path: &std::path::Path,
) -> (Config, String, Option<(u64, String)>) {
    let Some(cluster) = config.statics.cluster.as_ref() else {
        return (config, text.to_owned(), None);
    };
    let Some(applied) = load_applied(&config.statics.control.state_dir) else {
        return (config, text.to_owned(), None);
    };
    let host = match proxy_config::fleet::split(text) {
        Ok(split) => split.host,
        Err(e) => {
            tracing::warn!(error = %e, "cannot split the config file; starting from it as it is");
            return (config, text.to_owned(), None);
        }
    };
    let joined = proxy_config::fleet::join(&applied.text, &host);
    let name = path.with_file_name(format!("fleet-version-{}.toml", applied.version));
    let checked = crate::config::parse(&joined, &name)
        .map_err(|e| e.to_string())
        .and_then(|c| {
            match crate::snapshot::data_plane_refusal(&crate::snapshot::Content::build(&c), &name) {
                Some(refused) => Err(refused.to_string()),
                None => Ok(c),
            }
        });
    match checked {
        Ok(resumed) if resumed.statics.cluster.as_ref() == Some(cluster) => {
            tracing::info!(
                version = applied.version,
                "starting from the fleet version applied last"
            );
            (resumed, joined, Some((applied.version, applied.hash)))
        }
        Ok(_) => (config, text.to_owned(), None),
        Err(e) => {
            tracing::warn!(version = applied.version, error = %e,
                "the fleet version applied last no longer checks with this host's tables; starting from the config file");
            (config, text.to_owned(), None)
        }
    }
}

/// When the config file does not check at startup: in a fleet, the fleet version this host
/// applied last joined to the file's host tables, if the host tables check and that version
/// does too. A stale fleet part in the file (a certificate file the fleet has since replaced)
/// then does not keep a host of the fleet from starting; the fleet brings it up to date.
/// Returns the config, its text and the fleet version it holds.
pub fn start_from_kept(path: &std::path::Path) -> Option<(Config, String, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let host = proxy_config::fleet::split(&text).ok()?.host;
    // The host tables alone say where the state directory is, and that this is a fleet.
    let alone = crate::config::parse(&proxy_config::fleet::join("", &host), path).ok()?;
    alone.statics.cluster.as_ref()?;
    let applied = load_applied(&alone.statics.control.state_dir)?;
    let joined = proxy_config::fleet::join(&applied.text, &host);
    let name = path.with_file_name(format!("fleet-version-{}.toml", applied.version));
    let config = crate::config::parse(&joined, &name).ok()?;
    if crate::snapshot::data_plane_refusal(&crate::snapshot::Content::build(&config), &name)
        .is_some()
    {
        return None;
    }
    Some((config, joined, applied.version))
}
