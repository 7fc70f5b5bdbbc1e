//! gRPC by hand over HTTP/2 on a Unix socket, for the socket-garbage tests: message frames whose
//! length prefix may lie, an `h2` client connection whose request bodies are whatever bytes a test
//! hands over (and whose flow-control window a test may choose), and the answer's grpc-status.

use std::path::Path;

use bytes::Bytes;
use prost::Message;
use tokio::net::UnixStream;

use proto::v1 as pb;

use crate::{DEADLINE, TestEnv, eventually};

/// A gRPC message frame: the compressed flag, a big-endian u32 length, the bytes.
pub fn grpc_frame(flag: u8, claimed_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(flag);
    out.extend_from_slice(&claimed_len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// `message` encoded as one uncompressed gRPC message frame.
pub fn message_frame(message: &impl Message) -> Vec<u8> {
    let bytes = message.encode_to_vec();
    grpc_frame(0, u32::try_from(bytes.len()).unwrap(), &bytes)
}

/// What a gRPC call answered: its grpc-status (from the headers of a trailers-only answer or
/// from the trailers) and the message bytes of the body.
#[derive(Debug)]
pub struct Answer {
    pub grpc_status: Option<i32>,
    pub grpc_message: String,
    pub body: Vec<u8>,
}

impl Answer {
    /// The first message of the body, decoded.
    pub fn message<M: Message + Default>(&self) -> M {
        assert!(self.body.len() >= 5, "no message in {self:?}");
        M::decode(&self.body[5..]).unwrap()
    }
}

/// The grpc-status and grpc-message of a header or trailer block.
pub fn grpc_fields(headers: &http::HeaderMap) -> (Option<i32>, String) {
    let status = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let message = headers
        .get("grpc-message")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    (status, message)
}

/// An HTTP/2 client connection (the `h2` crate) on a Unix socket; the request bodies are
/// whatever bytes a test hands over.
pub struct H2 {
    client: h2::client::SendRequest<Bytes>,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for H2 {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl H2 {
    pub async fn connect(socket: &Path) -> H2 {
        H2::connect_with_window(socket, 65_535).await
    }

    /// With `window` bytes of flow-control window per stream, never replenished unless a test
    /// releases capacity.
    pub async fn connect_with_window(socket: &Path, window: u32) -> H2 {
        let stream = UnixStream::connect(socket).await.unwrap();
        let (client, connection) = h2::client::Builder::new()
            .initial_window_size(window)
            .handshake(stream)
            .await
            .unwrap();
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        H2 { client, connection }
    }

    /// Opens a gRPC call to `method` and sends `body`, ending the request when `end`.
    pub async fn start(
        &mut self,
        method: &str,
        body: Vec<u8>,
        end: bool,
    ) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
        let request = http::Request::post(format!("http://localhost{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let client = self.client.clone().ready().await.unwrap();
        self.client = client;
        let (response, mut send) = self.client.send_request(request, false).unwrap();
        send.send_data(Bytes::from(body), end).unwrap();
        (response, send)
    }

    /// A whole call: sends `body` (ending the request when `end`), reads the answer.
    pub async fn call(&mut self, method: &str, body: Vec<u8>, end: bool) -> Answer {
        let (response, _send) = self.start(method, body, end).await;
        let response = tokio::time::timeout(DEADLINE, response)
            .await
            .unwrap_or_else(|_| panic!("{method}: no answer within the deadline"))
            .unwrap();
        let (parts, mut body) = response.into_parts();
        let (status, message) = grpc_fields(&parts.headers);
        let mut answer = Answer {
            grpc_status: status,
            grpc_message: message,
            body: Vec::new(),
        };
        let rest = async {
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
                answer.body.extend_from_slice(&chunk);
            }
            if let Ok(Some(trailers)) = body.trailers().await {
                let (status, message) = grpc_fields(&trailers);
                answer.grpc_status = answer.grpc_status.or(status);
                answer.grpc_message.push_str(&message);
            }
        };
        tokio::time::timeout(DEADLINE, rest)
            .await
            .unwrap_or_else(|_| panic!("{method}: the answer did not end within the deadline"));
        answer
    }
}

/// A hand-made data plane on controld's Subscribe stream.
pub struct Subscriber {
    send: h2::SendStream<Bytes>,
    _snapshots: h2::RecvStream,
    _connection: H2,
}

impl Subscriber {
    /// Says hello as `node_id` and waits for the first snapshot.
    pub async fn hello(env: &TestEnv, node_id: &str) -> Subscriber {
        Subscriber::hello_with_window(env, node_id, 65_535).await
    }

    /// Says hello as `node_id` and waits for the first bytes of the first snapshot, with a
    /// stream window of `window` bytes that it never replenishes.
    pub async fn hello_with_window(env: &TestEnv, node_id: &str, window: u32) -> Subscriber {
        let hello = pb::DataPlaneMessage {
            msg: Some(pb::data_plane_message::Msg::Hello(pb::Hello {
                node_id: node_id.to_owned(),
                pid: 1,
                build_version: "garbage".into(),
                current_version: 0,
                current_content_hash: String::new(),
                answers_challenges: false,
            })),
        };
        let mut connection = H2::connect_with_window(&env.socket, window).await;
        let (response, send) = connection
            .start("/proxy.v1.Control/Subscribe", message_frame(&hello), false)
            .await;
        let response = tokio::time::timeout(DEADLINE, response)
            .await
            .unwrap()
            .unwrap();
        let (parts, mut snapshots) = response.into_parts();
        assert_eq!(
            grpc_fields(&parts.headers).0,
            None,
            "a stream, not an error: {parts:?}"
        );
        let first = tokio::time::timeout(DEADLINE, snapshots.data())
            .await
            .unwrap();
        assert!(
            first.is_some_and(|c| c.is_ok_and(|c| !c.is_empty())),
            "a snapshot"
        );
        Subscriber {
            send,
            _snapshots: snapshots,
            _connection: connection,
        }
    }

    /// Sends an encoded `DataPlaneMessage`.
    pub fn send_raw(&mut self, message: Vec<u8>) {
        assert!(message.len() <= proto::MAX_REQUEST_BYTES);
        let frame = grpc_frame(0, u32::try_from(message.len()).unwrap(), &message);
        self.send.send_data(Bytes::from(frame), false).unwrap();
    }

    /// Closes the connection and waits until controld lists only the real proxyd.
    pub async fn gone(self, env: &TestEnv) {
        drop(self);
        eventually("the hand-made data plane unsubscribed", || async {
            (env.status().await.data_planes.len() == 1).then_some(())
        })
        .await;
    }
}
