//! The few etcd calls a fleet makes, over etcd's own gRPC API (ADR 0007): read a key or a prefix,
//! write keys only while a guard key has not moved (one transaction), grant a lease and keep it
//! alive, and watch a prefix from a revision.
//!
//! One channel per endpoint, one of them current: a call that finds its member unreachable (or
//! in the middle of a leader election) goes to the next, and that one becomes current, as
//! etcd's own clients do. Every call has a deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proto::etcd::etcdserverpb as pb;
use proto::etcd::mvccpb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// Why an etcd call failed, in the operator's terms.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    /// No member answered (or not in time): etcd is unreachable from this host.
    #[error("etcd ({endpoints}) is unreachable: {reason}")]
    Unreachable { endpoints: String, reason: String },
    /// A member answered with an error.
    #[error("etcd ({endpoints}) refused: {reason}")]
    Refused { endpoints: String, reason: String },
    /// The endpoints cannot be used at all.
    #[error("etcd endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
}

/// A key as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The revision of its last change; the guard of [`Etcd::put_if`].
    pub mod_revision: i64,
    /// The lease it is attached to (0: none).
    pub lease: i64,
}

impl From<mvccpb::KeyValue> for KeyValue {
    fn from(kv: mvccpb::KeyValue) -> KeyValue {
        KeyValue {
            key: kv.key,
            value: kv.value,
            mod_revision: kv.mod_revision,
            lease: kv.lease,
        }
    }
}

/// A watched change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(KeyValue),
    Delete(KeyValue),
}

/// What a watch delivers: changes at a revision, or the news that the revisions it would resume
/// from were compacted away (the caller reads everything again).
#[derive(Debug)]
pub enum Watched {
    Changes { revision: i64, changes: Vec<Change> },
    Compacted { compact_revision: i64 },
}

/// A client of one etcd cluster.
#[derive(Clone)]
pub struct Etcd {
    endpoints: Arc<str>,
    /// One per endpoint, in the order given.
    channels: Arc<[Channel]>,
    /// The index of the channel calls go to first.
    current: Arc<AtomicUsize>,
    timeout: Duration,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// The end of the range of keys that start with `prefix` (etcd's convention: the prefix with
/// its last byte increased; `\0` for "to the end").
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Etcd {
    /// A client of the members at `endpoints` (`http://host:port`, or `https://host:port` with
    /// `tls`); connects lazily, so an etcd that is down now is not an error until a call is
    /// made. Each call waits at most `timeout`.
    pub fn connect(
        endpoints: &[String],
        timeout: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Etcd, EtcdError> {
        let mut list = Vec::new();
        for endpoint in endpoints {
            let e = Endpoint::from_shared(endpoint.clone())
                .map_err(|e| EtcdError::Endpoint {
                    endpoint: endpoint.clone(),
                    reason: e.to_string(),
                })?
                .connect_timeout(timeout)
                .timeout(timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5));
            let channel = match (endpoint.starts_with("https://"), &tls) {
                (false, _) => e.connect_lazy(),
                (true, Some(config)) => {
                    e.connect_with_connector_lazy(super::tls::connector(config.clone()))
                }
                (true, None) => {
                    return Err(EtcdError::Endpoint {
                        endpoint: endpoint.clone(),
                        reason: "an https:// endpoint needs [cluster] tls".to_owned(),
                    });
                }
            };
            list.push(channel);
        }
        if list.is_empty() {
            return Err(EtcdError::Endpoint {
                endpoint: String::new(),
                reason: "no endpoint".to_owned(),
            });
        }
        Ok(Etcd {
            endpoints: endpoints.join(",").into(),
            channels: list.into(),
            current: Arc::default(),
            timeout,
        })
    }

    fn kv(channel: Channel) -> pb::kv_client::KvClient<Channel> {
        pb::kv_client::KvClient::new(channel)
    }

    /// Runs `call` on the current member; when that one is unreachable, on the next, until
    /// every member was tried once. The member that answered becomes current.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, EtcdError>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let n = self.channels.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for attempt in 0..n {
            let i = (start + attempt) % n;
            match self.timed(call(self.channels[i].clone())).await {
                Err(e @ EtcdError::Unreachable { .. }) => {
                    last = Some(e);
                    self.current.store((i + 1) % n, Ordering::Relaxed);
                }
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| self.gone("no endpoint")))
    }

    /// Runs `call` once, on the current member; when that one is unreachable, the next becomes
    /// current for the next call. For writes that are not idempotent (a transaction): an
    /// answer lost on the way may hide a write that was applied, and only the caller can tell
    /// (by reading), so the write is not sent again to another member here.
    async fn call_once<T, F, Fut>(&self, call: F) -> Result<T, EtcdError>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let n = self.channels.len();
        let i = self.current.load(Ordering::Relaxed) % n;
        let result = self.timed(call(self.channels[i].clone())).await;
        if matches!(result, Err(EtcdError::Unreachable { .. })) {
            self.current.store((i + 1) % n, Ordering::Relaxed);
        }
        result
    }

    fn error(&self, status: tonic::Status) -> EtcdError {
        let endpoints = self.endpoints.to_string();
        let mut reason = match status.message() {
            "" => status.code().description().to_owned(),
            m => m.to_owned(),
        };
        // A transport error says why only in its sources (a refused TLS handshake, say).
        let mut source = std::error::Error::source(&status);
        let mut innermost = None;
        while let Some(e) = source {
            innermost = Some(e.to_string());
            source = e.source();
        }
        if let Some(why) = innermost.filter(|why| !reason.contains(why.as_str())) {
            reason = format!("{reason}: {why}");
        }
        match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown => EtcdError::Unreachable { endpoints, reason },
            _ => EtcdError::Refused { endpoints, reason },
        }
    }

    /// Runs `call` under the deadline (the channel's own covers a request, not a connection
    /// that is being set up).
    async fn timed<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, EtcdError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.error(status)),
            Err(_) => Err(EtcdError::Unreachable {
                endpoints: self.endpoints.to_string(),
                reason: format!(
                    "no answer within {}",
                    humantime::format_duration(self.timeout)
                ),
            }),
        }
    }

    /// `key`, and the store's revision when it was read.
    pub async fn get(&self, key: &[u8]) -> Result<(Option<KeyValue>, i64), EtcdError> {
        let request = pb::RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        };
        let reply = self
            .call(|c| {
                let request = request.clone();
                async move { Etcd::kv(c).range(request).await }
            })
            .await?;
        let revision = reply.header.map_or(0, |h| h.revision);
        Ok((reply.kvs.into_iter().next().map(KeyValue::from), revision))
    }

    /// Every key that starts with `prefix`, in key order, and the store's revision.
    pub async fn prefix(&self, prefix: &[u8]) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        let request = pb::RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            ..Default::default()
        };
        let reply = self
            .call(|c| {
                let request = request.clone();
                async move { Etcd::kv(c).range(request).await }
            })
            .await?;
        let revision = reply.header.map_or(0, |h| h.revision);
        Ok((
            reply.kvs.into_iter().map(KeyValue::from).collect(),
            revision,
        ))
    }

    /// Puts `key` (attached to `lease`, 0 for none); the revision it made.
    pub async fn put(&self, key: &[u8], value: Vec<u8>, lease: i64) -> Result<i64, EtcdError> {
        let request = pb::PutRequest {
            key: key.to_vec(),
            value,
            lease,
            ..Default::default()
        };
        let reply = self
            .call(|c| {
                let request = request.clone();
                async move { Etcd::kv(c).put(request).await }
            })
            .await?;
        Ok(reply.header.map_or(0, |h| h.revision))
    }

    /// Puts every key of `puts` and deletes every key of `deletes` in one transaction, only
    /// while `guard`'s last change is still `mod_revision` (0: the key does not exist).
    /// `Ok(None)` when it moved: nothing was written. `Ok(Some(revision))`: the revision the
    /// writes made.
    pub async fn put_if(
        &self,
        guard: &[u8],
        mod_revision: i64,
        puts: Vec<(Vec<u8>, Vec<u8>)>,
        deletes: Vec<Vec<u8>>,
    ) -> Result<Option<i64>, EtcdError> {
        let compare = pb::Compare {
            result: pb::compare::CompareResult::Equal.into(),
            target: pb::compare::CompareTarget::Mod.into(),
            key: guard.to_vec(),
            target_union: Some(pb::compare::TargetUnion::ModRevision(mod_revision)),
            range_end: Vec::new(),
        };
        let success = puts
            .into_iter()
            .map(|(key, value)| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key,
                    value,
                    ..Default::default()
                })),
            })
            .chain(deletes.into_iter().map(|key| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestDeleteRange(
                    pb::DeleteRangeRequest {
                        key,
                        ..Default::default()
                    },
                )),
            }))
            .collect();
        let request = pb::TxnRequest {
            compare: vec![compare],
            success,
            failure: Vec::new(),
        };
        let reply = self
            .call_once(|c| {
                let request = request.clone();
                async move { Etcd::kv(c).txn(request).await }
            })
            .await?;
        Ok(reply
            .succeeded
            .then(|| reply.header.map_or(0, |h| h.revision)))
    }

    /// Puts `key` attached to `lease` only if it does not exist; whether it did. A call whose
    /// answer was lost may have landed: the caller reads the key to know.
    pub async fn create(&self, key: &[u8], value: Vec<u8>, lease: i64) -> Result<bool, EtcdError> {
        let request = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: pb::compare::CompareResult::Equal.into(),
                target: pb::compare::CompareTarget::Create.into(),
                key: key.to_vec(),
                target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
                range_end: Vec::new(),
            }],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: key.to_vec(),
                    value,
                    lease,
                    ..Default::default()
                })),
            }],
            failure: Vec::new(),
        };
        let reply = self
            .call_once(|c| {
                let request = request.clone();
                async move { Etcd::kv(c).txn(request).await }
            })
            .await?;
        Ok(reply.succeeded)
    }

    /// Compacts the store's history up to `revision`: watches cannot start before it since.
    pub async fn compact(&self, revision: i64) -> Result<(), EtcdError> {
        let request = pb::CompactionRequest {
            revision,
            physical: true,
        };
        self.call(|c| async move { Etcd::kv(c).compact(request).await })
            .await?;
        Ok(())
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: &[u8]) -> Result<(), EtcdError> {
        let request = pb::DeleteRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        };
        self.call(|c| {
            let request = request.clone();
            async move { Etcd::kv(c).delete_range(request).await }
        })
        .await?;
        Ok(())
    }

    /// A new lease that lapses `ttl` after the last keep-alive; its id.
    pub async fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let request = pb::LeaseGrantRequest {
            ttl: i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX),
            id: 0,
        };
        let reply = self
            .call(|c| async move {
                pb::lease_client::LeaseClient::new(c)
                    .lease_grant(request)
                    .await
            })
            .await?;
        if !reply.error.is_empty() {
            return Err(EtcdError::Refused {
                endpoints: self.endpoints.to_string(),
                reason: reply.error,
            });
        }
        Ok(reply.id)
    }

    /// Keeps `lease` alive every `every` until the lease is gone (it lapsed, or etcd was away
    /// longer than its TTL: the caller grants a new one) or the stream breaks. Returns why it
    /// stopped.
    pub async fn keep_alive(&self, lease: i64, every: Duration) -> EtcdError {
        let (tx, rx) = mpsc::channel(1);
        // The first request goes out with the call: etcd sends its response headers, which
        // the call waits for, only with its first answer.
        let _ = tx.send(pb::LeaseKeepAliveRequest { id: lease }).await;
        let channel =
            self.channels[self.current.load(Ordering::Relaxed) % self.channels.len()].clone();
        let mut responses = match self
            .timed(
                pb::lease_client::LeaseClient::new(channel)
                    .lease_keep_alive(ReceiverStream::new(rx)),
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                self.current
                    .store(self.current.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                return e;
            }
        };
        let mut first = true;
        loop {
            if !first
                && tx
                    .send(pb::LeaseKeepAliveRequest { id: lease })
                    .await
                    .is_err()
            {
                return self.gone("the keep-alive stream closed");
            }
            first = false;
            match tokio::time::timeout(self.timeout, responses.message()).await {
                Ok(Ok(Some(reply))) if reply.ttl > 0 => {}
                Ok(Ok(Some(_))) => {
                    return EtcdError::Refused {
                        endpoints: self.endpoints.to_string(),
                        reason: format!("lease {lease:x} has lapsed"),
                    };
                }
                Ok(Ok(None)) => return self.gone("the keep-alive stream closed"),
                Ok(Err(status)) => return self.error(status),
                Err(_) => return self.gone("no keep-alive answer in time"),
            }
            tokio::time::sleep(every).await;
        }
    }

    fn gone(&self, reason: &str) -> EtcdError {
        EtcdError::Unreachable {
            endpoints: self.endpoints.to_string(),
            reason: reason.to_owned(),
        }
    }

    /// Watches the keys under `prefix` from `revision` on (inclusive). Changes arrive on the
    /// returned channel until the watch breaks; its last message is the error.
    pub async fn watch(
        &self,
        prefix: &[u8],
        revision: i64,
    ) -> Result<mpsc::Receiver<Result<Watched, EtcdError>>, EtcdError> {
        let (requests, rx) = mpsc::channel(1);
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: prefix.to_vec(),
                    range_end: prefix_end(prefix),
                    start_revision: revision,
                    ..Default::default()
                },
            )),
        };
        // The channel has room: the first request cannot block.
        let _ = requests.send(create).await;
        let index = self.current.load(Ordering::Relaxed) % self.channels.len();
        let channel = self.channels[index].clone();
        let mut responses = match self
            .timed(
                pb::watch_client::WatchClient::new(channel)
                    .watch(leader_required(ReceiverStream::new(rx))),
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                // The next attempt goes to the next member.
                self.current
                    .store((index + 1) % self.channels.len(), Ordering::Relaxed);
                return Err(e);
            }
        };
        let (tx, out) = mpsc::channel(16);
        let this = self.clone();
        tokio::spawn(async move {
            // Held for the life of the watch: dropping it ends the request stream.
            let _requests = requests;
            loop {
                let message = match responses.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => {
                        let _ = tx.send(Err(this.gone("the watch stream closed"))).await;
                        return;
                    }
                    Err(status) => {
                        let _ = tx.send(Err(this.error(status))).await;
                        return;
                    }
                };
                if message.compact_revision > 0 {
                    let _ = tx
                        .send(Ok(Watched::Compacted {
                            compact_revision: message.compact_revision,
                        }))
                        .await;
                    return;
                }
                if message.canceled {
                    let _ = tx
                        .send(Err(EtcdError::Refused {
                            endpoints: this.endpoints.to_string(),
                            reason: format!("watch canceled: {}", message.cancel_reason),
                        }))
                        .await;
                    return;
                }
                if message.events.is_empty() {
                    continue;
                }
                let revision = message.header.map_or(0, |h| h.revision);
                let changes = message
                    .events
                    .into_iter()
                    .filter_map(|e| {
                        let kv = KeyValue::from(e.kv?);
                        Some(match mvccpb::event::EventType::try_from(e.r#type) {
                            Ok(mvccpb::event::EventType::Delete) => Change::Delete(kv),
                            _ => Change::Put(kv),
                        })
                    })
                    .collect();
                if tx
                    .send(Ok(Watched::Changes { revision, changes }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(out)
    }
}

/// A watch request etcd answers only from a member that has a leader (etcd's `hasleader`
/// metadata): a member cut off from the majority ends the watch instead of keeping it open
/// with no events, and the follower goes to another member.
fn leader_required<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "hasleader",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    request
}
