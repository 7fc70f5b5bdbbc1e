//! Raw HTTP/2 for abuse tests: hand-made frames (HPACK literals without indexing, no Huffman),
//! and a client connection (TCP or Unix socket) that writes whatever bytes a test wants and hands
//! back, frame by frame, what the server answered.

use std::net::SocketAddr;
use std::path::Path;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::mpsc;

use crate::DEADLINE;

/// What a client sends first on an h2c connection with prior knowledge.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types (RFC 9113 §6).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
}

/// SETTINGS parameters.
pub mod setting {
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// Error codes of RST_STREAM and GOAWAY.
pub mod code {
    pub const NO_ERROR: u32 = 0x0;
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
}

/// One frame: the 9-byte header, decoded, and the payload.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Bytes,
}

/// A GOAWAY frame's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoAway {
    pub last_stream: u32,
    pub code: u32,
    pub debug: String,
}

impl Frame {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag == flag
    }

    pub fn go_away(&self) -> Option<GoAway> {
        if self.kind != kind::GOAWAY || self.payload.len() < 8 {
            return None;
        }
        Some(GoAway {
            last_stream: u32_at(&self.payload, 0) & 0x7fff_ffff,
            code: u32_at(&self.payload, 4),
            debug: String::from_utf8_lossy(&self.payload[8..]).into_owned(),
        })
    }

    /// The error code of a RST_STREAM.
    pub fn reset_code(&self) -> Option<u32> {
        (self.kind == kind::RST_STREAM && self.payload.len() == 4).then(|| u32_at(&self.payload, 0))
    }

    /// The parameters of a SETTINGS frame, in order.
    pub fn settings(&self) -> Vec<(u16, u32)> {
        self.payload
            .chunks_exact(6)
            .map(|p| (u16::from_be_bytes([p[0], p[1]]), u32_at(p, 2)))
            .collect()
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// A whole frame on the wire. Payloads over 16 MiB do not fit the 24-bit length; tests never
/// need them.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .unwrap_or(u32::MAX)
        .min(0xff_ffff);
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn settings(params: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(6 * params.len());
    for (id, value) in params {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(kind::SETTINGS, 0, 0, &payload)
}

pub fn settings_ack() -> Vec<u8> {
    frame(kind::SETTINGS, flag::ACK, 0, &[])
}

pub fn ping(opaque: u64) -> Vec<u8> {
    frame(kind::PING, 0, 0, &opaque.to_be_bytes())
}

pub fn headers(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    frame(kind::HEADERS, flags, stream, block)
}

pub fn continuation(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    frame(kind::CONTINUATION, flags, stream, block)
}

pub fn data(stream: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    frame(kind::DATA, flags, stream, payload)
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(kind::RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(kind::WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// An HPACK integer with an `prefix_bits`-bit prefix, `high` holding the bits above it
/// (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, prefix_bits: u32, high: u8, value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Appends one "literal header field without indexing, new name" with plain (non-Huffman)
/// strings (RFC 7541 §6.2.2): the server's HPACK table never changes.
pub fn literal(block: &mut Vec<u8>, name: &str, value: &[u8]) {
    block.push(0x00);
    hpack_int(block, 7, 0x00, name.len());
    block.extend_from_slice(name.as_bytes());
    hpack_int(block, 7, 0x00, value.len());
    block.extend_from_slice(value);
}

/// Starts a literal field like [`literal`] whose value of `value_len` bytes the caller appends,
/// maybe over several frames.
pub fn literal_head(block: &mut Vec<u8>, name: &str, value_len: usize) {
    block.push(0x00);
    hpack_int(block, 7, 0x00, name.len());
    block.extend_from_slice(name.as_bytes());
    hpack_int(block, 7, 0x00, value_len);
}

/// The header block of a request `method http://authority path`.
pub fn request(method: &str, authority: &str, path: &str) -> Vec<u8> {
    let mut block = Vec::new();
    literal(&mut block, ":method", method.as_bytes());
    literal(&mut block, ":scheme", b"http");
    literal(&mut block, ":authority", authority.as_bytes());
    literal(&mut block, ":path", path.as_bytes());
    block
}

/// What answered a PING: its ACK, or the end of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pong {
    Ack,
    GoAway(GoAway),
    Closed,
}

/// A client connection that writes raw bytes; a reader task splits what the server sends into
/// frames. Every frame taken from the queue is kept in [`RawConn::received`].
pub struct RawConn {
    writer: Box<dyn AsyncWrite + Send + Unpin>,
    frames: mpsc::UnboundedReceiver<Frame>,
    reader: tokio::task::JoinHandle<()>,
    /// Every frame received so far, in order.
    pub received: Vec<Frame>,
    /// Set once the server has closed the connection (or reset it).
    pub closed: bool,
    next_ping: u64,
}

impl Drop for RawConn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl RawConn {
    /// A TCP connection and nothing sent yet.
    pub async fn connect(addr: SocketAddr) -> RawConn {
        RawConn::over(TcpStream::connect(addr).await.expect("connect"))
    }

    /// A connection to the Unix socket at `path` (the daemons' gRPC sockets), nothing sent yet.
    pub async fn connect_unix(path: &Path) -> RawConn {
        RawConn::over(UnixStream::connect(path).await.expect("connect"))
    }

    /// Any byte stream: TCP, Unix, TLS.
    pub fn over<S>(stream: S) -> RawConn
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut read, writer) = tokio::io::split(stream);
        let (tx, frames) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            loop {
                while let Some(frame) = parse(&mut buf) {
                    if tx.send(frame).is_err() {
                        return;
                    }
                }
                match read.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
        RawConn {
            writer: Box::new(writer),
            frames,
            reader,
            received: Vec::new(),
            closed: false,
            next_ping: 1,
        }
    }

    /// Connects, sends the preface and a SETTINGS frame with `params`, waits for the server's
    /// SETTINGS and acknowledges them. Returns the server's parameters.
    pub async fn open(addr: SocketAddr, params: &[(u16, u32)]) -> (RawConn, Vec<(u16, u32)>) {
        RawConn::connect(addr).await.handshake(params).await
    }

    /// Like [`RawConn::open`], on the Unix socket at `path`.
    pub async fn open_unix(path: &Path, params: &[(u16, u32)]) -> (RawConn, Vec<(u16, u32)>) {
        RawConn::connect_unix(path).await.handshake(params).await
    }

    async fn handshake(self, params: &[(u16, u32)]) -> (RawConn, Vec<(u16, u32)>) {
        let mut conn = self;
        let mut hello = PREFACE.to_vec();
        hello.extend(settings(params));
        conn.send(&hello).await.expect("send the preface");
        let server = conn
            .wait_for("the server's SETTINGS", |f| {
                f.kind == kind::SETTINGS && !f.has(flag::ACK)
            })
            .await
            .settings();
        conn.send(&settings_ack()).await.expect("ACK the settings");
        (conn, server)
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes).await
    }

    /// The next frame, or `None` once the server closed the connection. Panics after
    /// [`DEADLINE`].
    pub async fn recv(&mut self) -> Option<Frame> {
        if self.closed {
            return None;
        }
        let next = tokio::time::timeout(DEADLINE, self.frames.recv())
            .await
            .expect("a frame or the end of the connection within the deadline");
        match next {
            Some(frame) => {
                self.received.push(frame.clone());
                Some(frame)
            }
            None => {
                self.closed = true;
                None
            }
        }
    }

    /// Moves every frame that arrived already into [`RawConn::received`], without waiting;
    /// true when a GOAWAY is among all frames received so far.
    pub fn drain(&mut self) -> bool {
        while let Ok(frame) = self.frames.try_recv() {
            self.received.push(frame);
        }
        self.go_away().is_some()
    }

    /// The first GOAWAY received so far.
    pub fn go_away(&self) -> Option<GoAway> {
        self.received.iter().find_map(Frame::go_away)
    }

    /// Reads until a frame matches `wanted` and returns it; panics when the connection ends
    /// first or after [`DEADLINE`].
    pub async fn wait_for(&mut self, what: &str, wanted: impl Fn(&Frame) -> bool) -> Frame {
        loop {
            match self.recv().await {
                Some(frame) if wanted(&frame) => return frame,
                Some(_) => {}
                None => panic!("connection closed before {what}; got {:?}", self.received),
            }
        }
    }

    /// Reads until the server's GOAWAY.
    pub async fn wait_for_go_away(&mut self) -> GoAway {
        if let Some(go_away) = self.go_away() {
            return go_away;
        }
        self.wait_for("a GOAWAY", |f| f.kind == kind::GOAWAY)
            .await
            .go_away()
            .expect("a well-formed GOAWAY")
    }

    /// Reads until the server closes the connection; panics after [`DEADLINE`].
    pub async fn wait_for_close(&mut self) {
        while self.recv().await.is_some() {}
    }

    /// Sends a PING and reads until its ACK, a GOAWAY or the end of the connection. Since the
    /// server handles frames in order, an ACK means it took every frame sent before the PING.
    pub async fn ping(&mut self) -> Pong {
        let opaque = self.next_ping;
        self.next_ping += 1;
        if self.send(&ping(opaque)).await.is_err() {
            // The server closed: what it sent before (a GOAWAY) may still wait to be read.
            while let Some(f) = self.recv().await {
                if f.kind == kind::GOAWAY {
                    return Pong::GoAway(f.go_away().expect("a well-formed GOAWAY"));
                }
            }
            return self.go_away().map_or(Pong::Closed, Pong::GoAway);
        }
        loop {
            match self.recv().await {
                Some(f) if f.kind == kind::PING && f.has(flag::ACK) => {
                    if f.payload.as_ref() == opaque.to_be_bytes() {
                        return Pong::Ack;
                    }
                }
                Some(f) if f.kind == kind::GOAWAY => {
                    return Pong::GoAway(f.go_away().expect("a well-formed GOAWAY"));
                }
                Some(_) => {}
                None => return self.go_away().map_or(Pong::Closed, Pong::GoAway),
            }
        }
    }

    /// Frames received so far of `kind` on `stream`.
    pub fn count(&self, kind: u8, stream: u32) -> usize {
        self.received
            .iter()
            .filter(|f| f.kind == kind && f.stream == stream)
            .count()
    }
}

/// Takes one whole frame off the front of `buf`, if it holds one.
fn parse(buf: &mut BytesMut) -> Option<Frame> {
    if buf.len() < 9 {
        return None;
    }
    let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
    if buf.len() < 9 + len {
        return None;
    }
    let (kind, flags) = (buf[3], buf[4]);
    let stream = u32_at(buf, 5) & 0x7fff_ffff;
    buf.advance(9);
    let payload = buf.split_to(len).freeze();
    Some(Frame {
        kind,
        flags,
        stream,
        payload,
    })
}
