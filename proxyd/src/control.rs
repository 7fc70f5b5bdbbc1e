//! The control client: subscribes to controld, applies each snapshot and answers ACK or NACK.
//! It reconnects for ever with jittered exponential backoff; traffic never waits for it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::convert::Spec;
use crate::dataplane::DataPlane;
use crate::saved::SavedSnapshot;

const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the data plane's traffic is reported to controld, while it changes.
const TRAFFIC_EVERY: Duration = Duration::from_secs(1);

/// Who this data plane is, for controld.
#[derive(Debug, Clone)]
pub struct Identity {
    pub node_id: String,
    pub pid: u32,
}

/// Subscribes to controld at `socket` until `shutdown`.
pub async fn run(
    socket: PathBuf,
    identity: Identity,
    plane: Arc<DataPlane>,
    saved: Option<SavedSnapshot>,
    shutdown: CancellationToken,
) {
    let mut failures: u32 = 0;
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            r = subscribe(&socket, &identity, &plane, saved.as_ref()) => r,
        };
        match result {
            Ok(Session { received_any }) => {
                tracing::warn!(socket = %socket.display(), "controld closed the stream; serving version {} meanwhile", plane.version());
                if received_any {
                    failures = 0;
                }
            }
            Err(e) => {
                if plane.version() == 0 {
                    tracing::warn!(socket = %socket.display(), error = %e,
                        "cannot reach controld, and no snapshot was saved: nothing to serve until it answers");
                    if failures == 0 {
                        crate::notify::waiting(&e.to_string());
                    }
                } else {
                    tracing::warn!(socket = %socket.display(), error = %e, version = plane.version(),
                        "cannot reach controld; still serving the last good snapshot");
                }
            }
        }
        let delay = backoff(failures);
        failures = failures.saturating_add(1);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// The delay before reconnect attempt `failures + 1`: exponential, capped, with jitter so a
/// fleet of data planes does not reconnect in step.
pub fn backoff(failures: u32) -> Duration {
    let ceiling = BACKOFF_INITIAL
        .saturating_mul(2u32.saturating_pow(failures.min(16)))
        .min(BACKOFF_MAX);
    // Equal jitter: half fixed, half random.
    let half = ceiling / 2;
    half + half.mul_f64(fastrand::f64())
}

struct Session {
    received_any: bool,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("connecting: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("subscribing: {0}")]
    Rpc(#[from] tonic::Status),
}

async fn subscribe(
    socket: &std::path::Path,
    identity: &Identity,
    plane: &DataPlane,
    saved: Option<&SavedSnapshot>,
) -> Result<Session, SessionError> {
    let channel = proto::uds::connect(socket, CONNECT_TIMEOUT).await?;
    // Snapshots carry every certificate: tonic's 4 MiB default is far too small.
    let mut client = pb::control_client::ControlClient::new(channel)
        .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(proto::MAX_REQUEST_BYTES);
    let (tx, rx) = mpsc::channel(4);
    let hello = pb::Hello {
        node_id: identity.node_id.clone(),
        pid: identity.pid,
        build_version: proto::BUILD_VERSION.to_owned(),
        current_version: plane.version(),
        current_content_hash: plane.report().hash,
        answers_challenges: true,
    };
    let send = |msg| pb::DataPlaneMessage { msg: Some(msg) };
    // The channel has room: the Hello cannot block.
    let _ = tx
        .send(send(pb::data_plane_message::Msg::Hello(hello)))
        .await;
    let mut inbound = client
        .subscribe(ReceiverStream::new(rx))
        .await?
        .into_inner();
    tracing::info!(socket = %socket.display(), "subscribed to controld");
    plane.set_control_connected(true);
    // Whichever way this session ends, controld is gone until the next one.
    struct Disconnected<'a>(&'a DataPlane);
    impl Drop for Disconnected<'_> {
        fn drop(&mut self) {
            self.0.set_control_connected(false);
        }
    }
    let _disconnected = Disconnected(plane);
    let mut session = Session {
        received_any: false,
    };
    // Its traffic, about once a second while it changes: controld reads a canary's 5xx
    // ratio from it.
    let mut traffic = tokio::time::interval(TRAFFIC_EVERY);
    traffic.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first report goes at once, zeros included: controld then knows this proxyd counts.
    let mut sent_totals = None;
    loop {
        let message = tokio::select! {
            message = inbound.message() => message?,
            _ = traffic.tick() => {
                if let Some(report) = traffic_report(plane, &mut sent_totals)
                    && tx.send(send(report)).await.is_err()
                {
                    break;
                }
                continue;
            }
        };
        let Some(message) = message else { break };
        session.received_any = true;
        let snapshot = match message.msg {
            Some(pb::control_message::Msg::Snapshot(snapshot)) => snapshot,
            Some(pb::control_message::Msg::AcmeChallenges(set)) => {
                let answer = answer_challenges(plane, &set);
                if tx.send(send(answer)).await.is_err() {
                    break;
                }
                continue;
            }
            None => {
                tracing::warn!("ignoring a control message of a kind this proxyd does not know");
                continue;
            }
        };
        let answer = apply(plane, snapshot, saved).await;
        if matches!(answer, pb::data_plane_message::Msg::Ack(_)) {
            // Whatever serves now, controld has confirmed it.
            plane.set_from_saved(false);
        }
        // The traffic as the new version starts serving, just before the answer: where a
        // canary's window starts.
        if let Some(report) = traffic_report(plane, &mut sent_totals)
            && tx.send(send(report)).await.is_err()
        {
            break;
        }
        if tx.send(send(answer)).await.is_err() {
            break;
        }
    }
    Ok(session)
}

/// This data plane's traffic as a report for controld, unless it is what was sent last.
fn traffic_report(
    plane: &DataPlane,
    sent: &mut Option<(u64, u64)>,
) -> Option<pb::data_plane_message::Msg> {
    let totals = plane.metrics().response_totals();
    if *sent == Some(totals) {
        return None;
    }
    *sent = Some(totals);
    Some(pb::data_plane_message::Msg::Traffic(pb::Traffic {
        responses: totals.0,
        responses_5xx: totals.1,
    }))
}

/// Answers the challenges of `set` from now on (not the ones before), whatever snapshot serves.
fn answer_challenges(plane: &DataPlane, set: &pb::AcmeChallenges) -> pb::data_plane_message::Msg {
    let (challenges, errors) = crate::convert::Challenges::delivered(&set.challenges);
    tracing::info!(
        generation = set.generation,
        http_01 = challenges.http.len(),
        tls_alpn_01 = challenges.tls_alpn.len(),
        "answering the ACME challenges controld sent"
    );
    plane.set_challenges(challenges);
    let error = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if !error.is_empty() {
        tracing::warn!(generation = set.generation, %error, "cannot answer some ACME challenges");
    }
    pb::data_plane_message::Msg::ChallengesApplied(pb::ChallengesApplied {
        generation: set.generation,
        error,
    })
}

/// Applies `snapshot` and says ACK or NACK; a newly applied one is saved for the next boot.
async fn apply(
    plane: &DataPlane,
    snapshot: pb::Snapshot,
    saved: Option<&SavedSnapshot>,
) -> pb::data_plane_message::Msg {
    use pb::data_plane_message::Msg;
    let version = snapshot.version;
    let hash = snapshot.content_hash.clone();
    let before = plane.report();
    // New content, whatever its number: a saved version 7 may meet a controld whose version 7
    // is something else (its state directory was lost).
    let new = version != before.version || hash != before.hash;
    let copy = saved.map(|_| snapshot.clone());
    // Kept as received, for a successor ([`crate::takeover`]).
    let for_handover = new.then(|| snapshot.clone());
    let result = match Spec::try_from(snapshot) {
        Ok(spec) => plane.apply(spec).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let (Ok(_), Some(snapshot)) = (&result, for_handover) {
        plane.remember(snapshot);
    }
    if let (Ok(_), Some(saved), Some(copy)) = (&result, saved, copy)
        && new
    {
        // Off the async threads (a write and two fsyncs), in order (awaited).
        let writer = saved.clone();
        let written = tokio::task::spawn_blocking(move || writer.save(&copy))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        if let Err(e) = written {
            // Serving it is what matters; a failed save only costs the next cold boot.
            tracing::warn!(path = %saved.path().display(), error = %e, version, "cannot save the applied snapshot");
        }
    }
    match result {
        Ok(bound) => Msg::Ack(pb::Ack {
            version,
            content_hash: hash,
            listeners: bound
                .into_iter()
                .map(|b| pb::BoundListener {
                    name: b.name,
                    address: b.address.to_string(),
                })
                .collect(),
        }),
        Err(error) => {
            plane.metrics().snapshot_refused();
            let serving = plane.report();
            crate::notify::refused(version, serving.version);
            tracing::error!(version, serving = serving.version, %error, "refusing snapshot; the previous one keeps serving");
            Msg::Nack(pb::Nack {
                version,
                error,
                serving_version: serving.version,
                content_hash: hash,
                serving_content_hash: serving.hash,
            })
        }
    }
}

/// Boots from the snapshot saved by an earlier run, before controld is reached. Returns the
/// version now serving, if any.
pub async fn apply_saved(plane: &DataPlane, saved: &SavedSnapshot) -> Option<u64> {
    let snapshot = match saved.load() {
        Ok(Some(s)) => s,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring the saved snapshot; waiting for controld");
            return None;
        }
    };
    let version = snapshot.version;
    match apply(plane, snapshot, None).await {
        pb::data_plane_message::Msg::Ack(_) => {
            tracing::info!(version, path = %saved.path().display(), "serving the saved snapshot until controld answers");
            plane.set_from_saved(true);
            Some(version)
        }
        _ => None,
    }
}

/// Serves the snapshot a predecessor handed over, before controld is reached; `true` when it
/// serves.
pub async fn apply_handed(plane: &DataPlane, snapshot: pb::Snapshot) -> bool {
    let version = snapshot.version;
    match apply(plane, snapshot, None).await {
        pb::data_plane_message::Msg::Ack(_) => {
            tracing::info!(
                version,
                "serving the snapshot handed over until controld answers"
            );
            plane.set_from_saved(true);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        for failures in 0..40 {
            let d = backoff(failures);
            let ceiling = BACKOFF_INITIAL
                .saturating_mul(2u32.saturating_pow(failures.min(16)))
                .min(BACKOFF_MAX);
            assert!(d >= ceiling / 2 && d <= ceiling, "{failures}: {d:?}");
        }
        assert!(backoff(30) >= BACKOFF_MAX / 2);
        let samples: std::collections::HashSet<_> = (0..20).map(|_| backoff(5)).collect();
        assert!(samples.len() > 1, "jitter");
    }
}
