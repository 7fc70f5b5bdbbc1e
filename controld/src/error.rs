//! controld's error type: each variant names the step that failed.

use std::path::PathBuf;

use crate::config::LoadError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The config file could not be read or is invalid.
    #[error("{0}")]
    Config(#[from] LoadError),
    #[error("state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt: {reason}")]
    StateCorrupt { path: PathBuf, reason: String },
    #[error("control socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path} is in use by a running process; refusing to take it over")]
    SocketInUse { path: PathBuf },
    #[error("binding the metrics listener on {address}: {source}")]
    Metrics {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("building the gRPC reflection service: {0}")]
    Reflection(String),
    #[error("serving gRPC on the control socket: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// A version that could not be published (its snapshot is too large for data planes).
    #[error("publishing: {0}")]
    Publish(String),
    /// The fleet of `[cluster]` cannot be followed.
    #[error("[cluster]: {0}")]
    Fleet(String),
}

impl Error {
    /// True when the daemon refuses to start because of its configuration (exit code 78).
    pub fn is_config(&self) -> bool {
        matches!(self, Error::Config(_))
    }
}
