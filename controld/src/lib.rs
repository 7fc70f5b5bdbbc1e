//! controld, the control plane: owns the config file, validates it, versions snapshots and
//! streams them to data planes over gRPC on a Unix socket.

pub mod config;
pub mod dataplanes;
pub mod diff;
pub mod error;
pub mod reloader;
pub mod snapshot;
pub mod state;

pub use error::Error;
