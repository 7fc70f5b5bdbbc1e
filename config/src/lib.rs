//! The config as controld owns it, without the daemon: the TOML file's model, its validation
//! (every problem at once, located at file:line:col), and the diff between two configs. One
//! crate for controld and for proxyctl's offline `check`, so that diagnostics and diffs have one
//! formatter each and proxyctl does not link the control-plane daemon.

pub mod config;
pub mod diff;
pub mod fleet;
pub mod redact;
