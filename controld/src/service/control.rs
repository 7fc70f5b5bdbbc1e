//! The `Control` service: data planes subscribe, get every published snapshot, and answer each
//! once, in order; a refused serving version is sent again with back-off. The ACME challenges
//! travel on the same stream, apart from snapshots: each new set, answered by its generation.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::access::Access;
use crate::dataplanes::{DataPlanes, Plane};
use crate::reloader::{Current, Reloader, unix_ms};

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Bounds on what a data plane tells about itself, which controld keeps for the life of the
/// stream and repeats in every Status: a node id longer than this is refused; listeners past
/// the count, and names, addresses and errors past their lengths, are cut.
const MAX_NODE_ID_BYTES: usize = 256;
const MAX_LABEL_BYTES: usize = 256;
const MAX_ACK_LISTENERS: usize = 64;
const MAX_NACK_ERROR_BYTES: usize = 4096;

/// `text`, cut to at most `max` bytes on a character boundary.
fn bounded(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

pub struct ControlService {
    pub reloader: Arc<Reloader>,
    pub planes: Arc<DataPlanes>,
    pub access: Access,
    pub shutdown: CancellationToken,
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::ControlMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::control_server::Control for ControlService {
    type SubscribeStream = SnapshotStream;

    async fn subscribe(
        &self,
        request: Request<Streaming<pb::DataPlaneMessage>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        // Snapshots will carry private keys: only trusted users may subscribe.
        self.access.authorize_subscribe(&request)?;
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(pb::DataPlaneMessage {
                msg: Some(pb::data_plane_message::Msg::Hello(h)),
            }))) => h,
            Ok(Err(status)) => return Err(status),
            Err(_) => return Err(Status::deadline_exceeded("no Hello within 10s")),
            Ok(_) => {
                return Err(Status::invalid_argument(
                    "the first message of Subscribe must be Hello",
                ));
            }
        };
        // What a data plane says of itself is kept and shown: bounded.
        if hello.node_id.len() > MAX_NODE_ID_BYTES {
            return Err(Status::invalid_argument(format!(
                "the node id is {} bytes; at most {MAX_NODE_ID_BYTES}",
                hello.node_id.len()
            )));
        }
        let registration = self.planes.register(Plane {
            node_id: hello.node_id,
            pid: hello.pid,
            build_version: bounded(hello.build_version, MAX_LABEL_BYTES),
            applied_version: hello.current_version,
            applied_hash: bounded(hello.current_content_hash, MAX_LABEL_BYTES),
            acked_version: 0,
            acked_hash: String::new(),
            sent_version: 0,
            last_nack: None,
            listeners: Vec::new(),
            connected_at_unix_ms: unix_ms(SystemTime::now()),
            answers_challenges: hello.answers_challenges,
            challenges_applied: 0,
            challenges_error: String::new(),
            traffic: None,
        });
        let answers_challenges = hello.answers_challenges;
        // Latest wins for a data plane that reads slowly: one message waits here at most, and
        // the stream takes the newest snapshot from the watch each time it can send again,
        // skipping the versions in between (each is whole).
        let (tx, rx) = mpsc::channel(1);
        let planes = self.planes.clone();
        let mut snapshots = self.reloader.subscribe();
        let mut challenges = self.reloader.challenges().subscribe();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let id = registration.id;
            let resend = registration.resend.clone();
            let mut next = Some(snapshots.borrow_and_update().clone());
            // The challenge set, whole (latest wins), to a data plane that answers it: the
            // first one too, so that a reconnected proxyd forgets challenges that are over.
            let mut next_challenges =
                answers_challenges.then(|| challenges.borrow_and_update().clone());
            // What was sent and not answered yet, oldest first: proxyd answers each snapshot
            // once, in order, so each answer is tied to the send it answers.
            let mut unanswered: std::collections::VecDeque<(u64, String)> = Default::default();
            // A refusal of the serving version is retried, with back-off, until the data plane
            // takes it (a transient DNS failure heals itself): no reload needed.
            let mut retry = Retry::default();
            loop {
                if let Some(set) = next_challenges.take() {
                    let sent = tokio::select! {
                        sent = tx.send(Ok(set.message())) => sent.is_ok(),
                        () = shutdown.cancelled() => false,
                    };
                    if !sent {
                        break;
                    }
                }
                if let Some(current) = next.take() {
                    // A data plane that stops reading must not hold up shutdown.
                    let sent = tokio::select! {
                        sent = tx.send(Ok(snapshot_message(&current))) => sent.is_ok(),
                        () = shutdown.cancelled() => false,
                    };
                    if !sent {
                        break;
                    }
                    planes.sent(id, current.version);
                    unanswered.push_back((current.version, current.content.hash.clone()));
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    changed = snapshots.changed() => match changed {
                        Ok(()) => {
                            next = Some(snapshots.borrow_and_update().clone());
                            retry = Retry::default();
                        }
                        Err(_) => break,
                    },
                    changed = challenges.changed(), if answers_challenges => match changed {
                        Ok(()) => next_challenges = Some(challenges.borrow_and_update().clone()),
                        Err(_) => break,
                    },
                    // A reload found this data plane out of sync: the same snapshot again.
                    () = resend.notified() => next = Some(snapshots.borrow().clone()),
                    () = retry.due() => {
                        retry.at = None;
                        next = Some(snapshots.borrow().clone());
                    }
                    message = inbound.message() => match message {
                        Ok(Some(m)) => {
                            let is_answer = matches!(
                                m.msg,
                                Some(pb::data_plane_message::Msg::Ack(_) | pb::data_plane_message::Msg::Nack(_))
                            );
                            let answers = if is_answer { unanswered.pop_front() } else { None };
                            let refused = handle_answer(&planes, id, m, answers.as_ref());
                            let current = snapshots.borrow().clone();
                            let serving = (current.version, current.content.hash.clone());
                            match (refused, answers) {
                                // The serving version, refused: again after a while.
                                (true, Some(sent)) if sent == serving && unanswered.is_empty() => {
                                    let wait = retry.schedule();
                                    tracing::info!(version = current.version, retry_in = ?wait,
                                        "data plane refused the serving version; sending it again later");
                                }
                                (false, Some(sent)) if sent == serving => retry = Retry::default(),
                                _ => {}
                            }
                        }
                        Ok(None) | Err(_) => break,
                    },
                }
            }
            drop(registration);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn snapshot_message(current: &Current) -> pb::ControlMessage {
    pb::ControlMessage {
        msg: Some(pb::control_message::Msg::Snapshot(
            current.content.versioned(current.version),
        )),
    }
}

/// Re-sending a refused serving version: after 1 s, doubling to a minute.
#[derive(Debug, Default)]
struct Retry {
    at: Option<tokio::time::Instant>,
    /// The wait before the next retry; 0 until the first.
    wait: Duration,
}

const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

impl Retry {
    /// Schedules the next retry; the wait it took.
    fn schedule(&mut self) -> Duration {
        self.wait = if self.wait.is_zero() {
            RETRY_FIRST
        } else {
            (self.wait * 2).min(RETRY_MAX)
        };
        self.at = Some(tokio::time::Instant::now() + self.wait);
        self.wait
    }

    /// Resolves when the retry is due; never when none is scheduled.
    async fn due(&self) {
        match self.at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }
}

/// Records an answer; `sent`: the (version, content hash) sent that it answers, when known.
/// Whether it was a refusal.
fn handle_answer(
    planes: &DataPlanes,
    id: u64,
    message: pb::DataPlaneMessage,
    sent: Option<&(u64, String)>,
) -> bool {
    use pb::data_plane_message::Msg;
    // An answer names its version; one that does not match the send it answers is logged, and
    // recorded as it says. An older proxyd says no hash: the send's stands in.
    let hash_of = |version: u64, said: String| match sent {
        Some((v, hash)) if said.is_empty() && *v == version => hash.clone(),
        _ => said,
    };
    if let (
        Some((v, _)),
        Some(Msg::Ack(pb::Ack { version, .. }) | Msg::Nack(pb::Nack { version, .. })),
    ) = (sent, &message.msg)
        && v != version
    {
        tracing::warn!(
            sent = v,
            answered = version,
            "a data plane's answer names another version than the one sent"
        );
    }
    match message.msg {
        Some(Msg::Ack(ack)) => {
            // A data plane has a handful of listeners: an Ack listing more is kept short.
            let listeners = ack
                .listeners
                .into_iter()
                .take(MAX_ACK_LISTENERS)
                .map(|l| {
                    (
                        bounded(l.name, MAX_LABEL_BYTES),
                        bounded(l.address, MAX_LABEL_BYTES),
                    )
                })
                .collect();
            let hash = hash_of(ack.version, bounded(ack.content_hash, MAX_LABEL_BYTES));
            planes.acked_content(id, ack.version, hash, listeners);
            false
        }
        Some(Msg::Nack(nack)) => {
            planes.nacked_content(
                id,
                nack.version,
                bounded(nack.error, MAX_NACK_ERROR_BYTES),
                nack.serving_version,
                bounded(nack.serving_content_hash, MAX_LABEL_BYTES),
            );
            true
        }
        Some(Msg::ChallengesApplied(applied)) => {
            planes.challenges_applied(
                id,
                applied.generation,
                bounded(applied.error, MAX_NACK_ERROR_BYTES),
            );
            false
        }
        Some(Msg::Traffic(t)) => {
            planes.traffic(id, t.responses, t.responses_5xx);
            false
        }
        Some(Msg::Hello(_)) => {
            tracing::warn!("ignoring a second Hello on a Subscribe stream");
            false
        }
        None => {
            tracing::warn!("ignoring a data plane message of a kind this controld does not know");
            false
        }
    }
}
