//! The Reloader's edges: reading and parsing off the async threads, and the size check that
//! keeps controld from publishing what its data planes cannot read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{self, Config, Diagnostic, LoadError};
use crate::snapshot::Content;

pub(super) fn replace_if_changed<T: PartialEq + Clone>(slot: &mut T, new: &T) -> bool {
    if slot == new {
        return false;
    }
    *slot = new.clone();
    true
}

/// Builds the snapshot of `config` with what ACME adds, and checks it with [`refusal`], off the
/// async threads (the data plane's conversion loads every certificate and key it carries),
/// holding `permit` to the end: a caller that hangs up does not free its place while this runs.
pub(super) async fn build_off_thread(
    config: Config,
    overlay: Arc<crate::snapshot::AcmeOverlay>,
    file: PathBuf,
    permit: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
) -> Result<(Config, Content, Option<Diagnostic>), Diagnostic> {
    let path = file.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let content = Content::build_with(&config, &overlay);
        let refused = refusal(&content, &path);
        (config, content, refused)
    })
    .await
    .map_err(|e| Diagnostic {
        key_path: String::new(),
        file,
        line: 0,
        column: 0,
        message: format!("checking the snapshot failed: {e}"),
    })
}

/// Why no data plane of this build would apply `content`: too large, or refused by the data
/// plane's own conversion (the last step of validation, so that a config controld accepts is
/// one every proxyd of the same build applies).
pub(super) fn refusal(content: &Content, file: &Path) -> Option<Diagnostic> {
    oversize(content, file).or_else(|| crate::snapshot::data_plane_refusal(content, file))
}

pub(super) fn oversize(content: &Content, file: &Path) -> Option<Diagnostic> {
    let bytes = prost::Message::encoded_len(&content.snapshot);
    (bytes > proto::MAX_SNAPSHOT_BYTES).then(|| Diagnostic {
        key_path: "sites".to_owned(),
        file: file.to_owned(),
        line: 0,
        column: 0,
        message: format!(
            "the snapshot would be {bytes} bytes, more than the {} bytes data planes accept \
             (the gRPC message limit of the control socket, less framing): serve fewer \
             certificates or shorter chains per controld",
            proto::MAX_SNAPSHOT_BYTES
        ),
    })
}

/// Why a reload is rejected when its `control.metrics_address` cannot be bound; `serving` is
/// the address `/metrics` stays on.
pub(super) fn bind_failed(
    error: &crate::Error,
    file: &Path,
    serving: Option<std::net::SocketAddr>,
) -> Diagnostic {
    let stays = match serving {
        Some(address) => format!("/metrics stays on {address}"),
        None => "still no metrics listener".to_owned(),
    };
    Diagnostic {
        key_path: "control.metrics_address".to_owned(),
        file: file.to_owned(),
        line: 0,
        column: 0,
        message: format!("{error}; nothing changed ({stays})"),
    }
}

/// Reads and checks the config file on a blocking thread: the file and the certificate files it
/// names may be slow (a network file system) or hostile (checked to be regular files).
/// `permit` (a check's place) is held until the work ends, even if the caller goes away.
pub(super) async fn load_off_thread(
    path: PathBuf,
    permit: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
) -> Result<(Config, String), LoadError> {
    let read = path.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        config::load_with_text(&read)
    })
    .await
    .unwrap_or_else(|e| {
        Err(LoadError::Read {
            path,
            source: std::io::Error::other(e.to_string()),
        })
    })
}

/// Parses config text on a blocking thread (it reads the certificate files it names).
pub(super) async fn parse_off_thread(
    text: String,
    file: PathBuf,
    permit: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
) -> Result<Config, LoadError> {
    let name = file.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        config::parse(&text, &name)
    })
    .await
    .unwrap_or_else(|e| {
        Err(LoadError::Read {
            path: file,
            source: std::io::Error::other(e.to_string()),
        })
    })
}
