//! `control.metrics_address` follows reloads: the listener moves, and a reload whose address
//! cannot be bound is rejected with the listener left where it was.

use std::sync::Arc;

use super::*;

/// A `/metrics` source with nothing to show but the counters.
#[derive(Default)]
struct Counters(crate::metrics::Metrics);

impl crate::metrics::Source for Counters {
    fn metrics(&self) -> &crate::metrics::Metrics {
        &self.0
    }

    fn view(&self) -> crate::metrics::View {
        crate::metrics::View::default()
    }
}

#[tokio::test]
async fn reloads_move_the_metrics_listener_and_one_that_cannot_bind_is_rejected() {
    let f = Fixture::new();
    let r = f.reloader(Arc::default());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let started = r
        .metrics_listener()
        .start(Arc::new(Counters::default()), &shutdown)
        .unwrap();
    assert_eq!(started, None);
    let base = std::fs::read_to_string(&f.path).unwrap();
    let write = |address: &str| {
        let text = base.replace(
            "[control]\n",
            &format!("[control]\nmetrics_address = \"{address}\"\n"),
        );
        std::fs::write(&f.path, text).unwrap();
    };

    // A dry run binds nothing, and says that a reload would publish a version.
    write("127.0.0.1:0");
    let dry = ReloadOptions {
        dry_run: true,
        ..Default::default()
    };
    let report = r.reload(dry).await;
    assert_eq!((report.outcome, report.version), (Outcome::DryRun, 2));
    assert_eq!(r.metrics_listener().bound(), None);

    // Added: a new version (the snapshot is the same), a live change and no warning.
    let report = r.reload(ReloadOptions::default()).await;
    assert_eq!(
        (report.outcome, report.version),
        (Outcome::Applied, 2),
        "{report:?}"
    );
    assert_eq!(
        live_change(&report, "control.metrics_address"),
        Some("127.0.0.1:0"),
        "{:?}",
        report.diff
    );
    assert!(report.diff.static_changed.is_empty(), "{:?}", report.diff);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let first = r.metrics_listener().bound().expect("bound by the reload");
    assert_ne!(first.port(), 0, "the port the OS chose");
    tokio::net::TcpStream::connect(first).await.unwrap();

    // The same address again: nothing is bound anew.
    let report = r.reload(ReloadOptions::default()).await;
    assert_eq!((report.outcome, report.version), (Outcome::Unchanged, 2));
    assert_eq!(r.metrics_listener().bound(), Some(first));

    // A busy address: rejected, and nothing changes.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().map(|a| (busy, a)).unwrap();
    write(&busy.1.to_string());
    let report = r.reload(ReloadOptions::default()).await;
    assert_eq!((report.outcome, report.version), (Outcome::Rejected, 2));
    assert_eq!(report.diagnostics.len(), 1, "{report:?}");
    let d = &report.diagnostics[0];
    assert_eq!(d.key_path, "control.metrics_address");
    assert!(
        d.message.contains(&busy.1.to_string()) && d.message.contains(&first.to_string()),
        "{d}"
    );
    assert_eq!(r.current().version, 2);
    assert_eq!(r.metrics_listener().bound(), Some(first));
    tokio::net::TcpStream::connect(first).await.unwrap();

    // Removed: the listener closes; a later reload of the same file changes nothing.
    std::fs::write(&f.path, &base).unwrap();
    let report = r.reload(ReloadOptions::default()).await;
    assert_eq!(
        (report.outcome, report.version),
        (Outcome::Applied, 3),
        "{report:?}"
    );
    assert_eq!(r.metrics_listener().bound(), None);
    let report = r.reload(ReloadOptions::default()).await;
    assert_eq!(report.outcome, Outcome::Unchanged);
    shutdown.cancel();
}
