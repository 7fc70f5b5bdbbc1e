//! Shared pieces of the benchmark load tools `openloop` and `holdconns`:
//! a tiny command-line parser, a log-linear latency histogram, a hand-written
//! HTTP/1.1 response reader and the (plain or TLS) client stream.
#![forbid(unsafe_code)]

pub mod args;
pub mod hist;
pub mod http1;
pub mod net;
