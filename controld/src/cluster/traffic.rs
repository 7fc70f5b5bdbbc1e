//! A canary's traffic: its data planes' response counters, recorded in its node state about
//! once a second while the fleet's head names it a canary of a staged rollout.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::link::Link;
use super::store::Traffic;
use crate::reloader::Reloader;

/// How often a canary records its traffic, and the rollout reads it.
pub(super) const TRAFFIC_EVERY: Duration = Duration::from_secs(1);

/// This host's data planes' traffic now, if any reported it.
pub(super) fn traffic_now(reloader: &Reloader) -> Option<Traffic> {
    reloader
        .planes()
        .traffic_total()
        .map(|(responses, responses_5xx)| Traffic {
            responses,
            responses_5xx,
        })
}

/// While this node is a canary, records its traffic about once a second (when it changed);
/// when it no longer is, records once without it.
pub(super) async fn report_traffic(
    reloader: std::sync::Arc<Reloader>,
    link: std::sync::Arc<Link>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(TRAFFIC_EVERY) => {}
        }
        let member = link.canary_member.load(Ordering::Acquire);
        let recorded = link.state.lock().unwrap_or_else(|e| e.into_inner()).traffic;
        let now = member.then(|| traffic_now(&reloader)).flatten();
        // Read again as it is recorded (under the record's turn): a reading taken before an
        // apply's record never lands after it.
        let reader = reloader.clone();
        if now != recorded
            && let Err(e) = link
                .record(move |state| {
                    state.traffic = member.then(|| traffic_now(&reader)).flatten();
                })
                .await
        {
            tracing::debug!(error = %e, "cannot record this canary's traffic");
        }
    }
}
