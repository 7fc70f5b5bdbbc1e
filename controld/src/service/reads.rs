//! `Admin.GetConfig` and `Admin.History` answered from one encoded reply per version, shared by
//! every caller. Each reply is built once (off the async threads: redaction parses the config,
//! the history is read from disk) and kept as the bytes of its gRPC message; every call sends a
//! reference to those bytes. A caller that never opens its HTTP/2 window holds a reference, not
//! a copy of the whole snapshot: a thousand of them cost what one does.
//!
//! Everything else goes to the generated Admin service untouched.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Limited};
use hyper::body::Frame;
use proto::v1 as pb;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::UdsConnectInfo;

use crate::access::Access;
use crate::reloader::Reloader;

const GET_CONFIG: &str = "/proxy.v1.Admin/GetConfig";
const HISTORY: &str = "/proxy.v1.Admin/History";

/// The most a GetConfig or History request may hold (both are empty messages).
const MAX_READ_REQUEST_BYTES: usize = 1024;
/// How long a caller may take to send its (empty) request.
const READ_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The Admin service, with GetConfig and History answered from shared replies.
#[derive(Clone)]
pub struct SharedReads<S> {
    inner: S,
    replies: Arc<Replies>,
}

/// The replies built so far: the latest of each, with what it was built from.
pub struct Replies {
    reloader: Arc<Reloader>,
    access: Access,
    config: Slot,
    history: Slot,
}

/// The latest reply of one call, behind the lock its builder holds.
type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// One encoded reply (the whole gRPC message: flag, length, bytes), or why there is none (too
/// large), and what it stands for.
struct Cached {
    key: (u64, u64),
    frame: Result<Bytes, Status>,
}

#[derive(Debug, Clone, Copy)]
enum Read {
    Config,
    History,
}

impl<S> SharedReads<S> {
    pub fn new(inner: S, reloader: Arc<Reloader>, access: Access) -> SharedReads<S> {
        SharedReads {
            inner,
            replies: Arc::new(Replies {
                reloader,
                access,
                config: Slot::default(),
                history: Slot::default(),
            }),
        }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for SharedReads<S> {
    const NAME: &'static str = S::NAME;
}

type Answer = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<S> tower::Service<http::Request<Body>> for SharedReads<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Answer {
        let read = match request.uri().path() {
            GET_CONFIG => Read::Config,
            // In a fleet, the history is the fleet's, read from etcd by the service itself.
            HISTORY if !self.replies.reloader.in_fleet() => Read::History,
            _ => return Box::pin(self.inner.call(request)),
        };
        let replies = self.replies.clone();
        Box::pin(async move {
            Ok(match replies.answer(request, read).await {
                Ok(frame) => grpc_response(frame),
                Err(status) => status.into_http(),
            })
        })
    }
}

impl Replies {
    async fn answer(&self, request: http::Request<Body>, read: Read) -> Result<Bytes, Status> {
        let (parts, body) = request.into_parts();
        // The caller's credentials, as the generated service would see them.
        let mut probe = tonic::Request::new(());
        if let Some(info) = parts.extensions.get::<UdsConnectInfo>() {
            probe.extensions_mut().insert(info.clone());
        }
        let call = match read {
            Read::Config => "GetConfig",
            Read::History => "History",
        };
        self.access.authorize_read(&probe, call)?;
        // The request is an empty message: read it (bounded, under a deadline) so that the
        // stream ends cleanly, and ignore it.
        let request = Limited::new(body, MAX_READ_REQUEST_BYTES).collect();
        match tokio::time::timeout(READ_REQUEST_TIMEOUT, request).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(Status::invalid_argument("the request is too large")),
            Err(_) => return Err(Status::deadline_exceeded("no request within 5s")),
        }
        match read {
            Read::Config => self.config().await,
            Read::History => self.history().await,
        }
    }

    /// The GetConfig reply of the serving version.
    async fn config(&self) -> Result<Bytes, Status> {
        let current = self.reloader.current();
        let key = (current.version, 0);
        let path = self.reloader.config_path().display().to_string();
        latest(&self.config, key, move || get_config_reply(&current, path)).await
    }

    /// The History reply as of the serving version and the last history entry written.
    async fn history(&self) -> Result<Bytes, Status> {
        let version = self.reloader.current().version;
        let key = (version, self.reloader.history_written());
        let reloader = self.reloader.clone();
        latest(&self.history, key, move || {
            history_reply(&reloader, version)
        })
        .await
    }
}

/// The reply cached in `slot` when it was built for `key`; else one built now by `build` and
/// cached. The build belongs to a task of its own, which holds the slot until the reply is in
/// it: a caller that hangs up does not drop it half-way, so callers that come and go while it
/// runs cannot start one build each; they wait for this one and take its bytes.
async fn latest<M: prost::Message + 'static>(
    slot: &Slot,
    key: (u64, u64),
    build: impl FnOnce() -> M + Send + 'static,
) -> Result<Bytes, Status> {
    let slot = slot.clone();
    let builder = tokio::spawn(async move {
        let mut cached = slot.lock_owned().await;
        if let Some(c) = cached.as_ref().filter(|c| c.key == key) {
            return c.frame.clone();
        }
        let frame = tokio::task::spawn_blocking(move || frame(&build()))
            .await
            .map_err(|e| Status::internal(format!("building the reply: {e}")))?;
        *cached = Some(Cached {
            key,
            frame: frame.clone(),
        });
        frame
    });
    builder
        .await
        .map_err(|e| Status::internal(format!("building the reply: {e}")))?
}

/// `message` as a gRPC length-prefixed message (uncompressed).
fn frame(message: &impl prost::Message) -> Result<Bytes, Status> {
    let len = message.encoded_len();
    if len > proto::MAX_MESSAGE_BYTES {
        return Err(Status::resource_exhausted(format!(
            "the reply would be {len} bytes, more than the {} a caller accepts",
            proto::MAX_MESSAGE_BYTES
        )));
    }
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).map_err(|_| Status::resource_exhausted("reply too large"))?);
    message
        .encode(&mut buf)
        .map_err(|e| Status::internal(format!("encoding the reply: {e}")))?;
    Ok(buf.freeze())
}

/// A gRPC response carrying `frame` and an OK status.
fn grpc_response(frame: Bytes) -> http::Response<Body> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = [
        Ok::<_, Infallible>(Frame::data(frame)),
        Ok(Frame::trailers(trailers)),
    ];
    let body = http_body_util::StreamBody::new(tokio_stream::iter(frames));
    let mut response = http::Response::new(Body::new(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// What GetConfig answers for `current`: its config text and snapshot, redacted.
pub(crate) fn get_config_reply(
    current: &crate::reloader::Current,
    path: String,
) -> pb::GetConfigReply {
    pb::GetConfigReply {
        version: current.version,
        content_hash: current.content.hash.clone(),
        config_text: crate::redact::redact(&current.text),
        snapshot: Some(crate::redact::snapshot(
            current.content.versioned(current.version),
        )),
        config_path: path,
    }
}

/// What History answers now, with `current_version` serving.
pub(crate) fn history_reply(reloader: &Reloader, current_version: u64) -> pb::HistoryReply {
    let entries = reloader
        .history()
        .into_iter()
        .map(|e| pb::HistoryEntry {
            version: e.version,
            content_hash: e.hash,
            at_unix_ms: e.at_unix_ms,
            source: e.source,
            uid: e.uid,
            pid: e.pid,
            summary: e.summary,
            kind: e.kind.as_str().to_owned(),
            diff: e.diff.as_ref().map(crate::diff::ConfigDiff::to_proto),
            node: String::new(),
        })
        .collect();
    pb::HistoryReply {
        entries,
        current_version,
    }
}
