//! controld, the control plane: owns the config file, validates it, versions snapshots and
//! streams them to data planes over gRPC on a Unix socket.

pub mod config;
