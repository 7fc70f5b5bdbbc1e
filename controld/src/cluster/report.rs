//! The reports a fleet's reload gives when it goes nowhere: the empty one, and the one for an
//! etcd that cannot be reached.

use std::time::Duration;

use super::etcd;
use super::link::Link;
use super::store::PublishError;
use crate::reloader::{Outcome, ReloadReport, Reloader};

/// A report that published nothing, at `version`.
pub(super) fn report_of(version: u64) -> ReloadReport {
    ReloadReport {
        outcome: Outcome::Rejected,
        previous_version: version,
        version,
        diagnostics: Vec::new(),
        diff: Default::default(),
        warnings: Vec::new(),
        data_planes: Vec::new(),
        duration: Duration::ZERO,
        canary: None,
    }
}

/// A reload that could not reach etcd: rejected, with the reason, and nothing changed.
pub(super) fn unreachable_report(
    reloader: &Reloader,
    link: &Link,
    e: &PublishError,
) -> ReloadReport {
    // etcd with `--client-cert-auth` closes the connection of a client without a certificate
    // after the handshake, which reads as a broken pipe: say what is likely.
    let hint = Some(link)
        .filter(|link| {
            matches!(e, PublishError::Etcd(etcd::EtcdError::Unreachable { .. }))
                && link.config.etcd.iter().any(|u| u.starts_with("https://"))
                && link
                    .config
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.cert_file.is_none())
        })
        .map(|_| {
            " (this host presents no client certificate: if etcd runs with --client-cert-auth, \
             set cert_file and key_file in [cluster] tls)"
        })
        .unwrap_or_default();
    ReloadReport {
        diagnostics: vec![crate::config::Diagnostic {
            key_path: "cluster.etcd".to_owned(),
            file: reloader.config_path().to_owned(),
            line: 0,
            column: 0,
            message: format!("nothing was published: {e}{hint}"),
        }],
        ..report_of(reloader.current().version)
    }
}
