//! A client's TLS stream on rustls's unbuffered connection API, where the caller owns the
//! buffers: TLS bytes read and not processed yet, TLS bytes to send, plaintext not read yet.
//! Each is taken when bytes come and given back once it is empty, so an idle connection keeps
//! rustls's state and no buffer (rustls's buffered connection keeps a 4 KiB receive buffer for
//! the connection's life; nginx, too, gives its buffers back while a connection waits).
//!
//! Reads take from the socket only when the reader wants more than is decrypted; writes are
//! encrypted straight into the send buffer, sent before the next write is taken (so one write's
//! worth waits at most), and the flush sends the rest.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Room made in the receive buffer before a read from the socket (as rustls's own reads).
const READ_SIZE: usize = 8 * 1024;

/// A TLS record's overhead at most (header, content type, tag, TLS 1.2's explicit nonce), for
/// sizing the send buffer before encrypting; rustls says so when it needs more.
const RECORD_OVERHEAD: usize = 64;

/// rustls's largest record payload.
const MAX_FRAGMENT: usize = 16 * 1024;

/// The plaintext of one write encrypted at once, at most.
const WRITE_CHUNK: usize = 4 * MAX_FRAGMENT;

/// The server side of a client's TLS connection, from its ClientHello on.
pub struct TlsStream {
    conn: UnbufferedServerConnection,
    tcp: TcpStream,
    /// TLS bytes read, of which `consumed` are processed: the rest is a partial record, or
    /// records not asked for yet. Processed bytes are cut off the front before the next read
    /// (not after each record: many small records would move the rest each time).
    incoming: Vec<u8>,
    consumed: usize,
    /// TLS bytes to send, of which `sent` are.
    outgoing: Vec<u8>,
    sent: usize,
    /// Plaintext decrypted and not read yet, of which `taken` is.
    plaintext: Vec<u8>,
    taken: usize,
    /// The client's close_notify came: reads end.
    read_closed: bool,
    /// The socket's end of stream came.
    eof: bool,
    /// close_notify is queued: no more writes.
    write_closed: bool,
    /// rustls failed (a bad record, a protocol error): it is not called again, but once for
    /// the alert it queued ([`TlsStream::queue_alert`]); a second call would process the same
    /// bad bytes and send a second fatal alert.
    failed: bool,
    /// The alert of the failure is still to be taken from rustls.
    alert_due: bool,
}

/// What one step of rustls's state machine came to.
enum Step {
    /// Something was done (a record encoded, plaintext decrypted): step again.
    Again,
    /// rustls needs more TLS bytes (during the handshake, or to read).
    NeedInput,
    /// The connection is established and idle: nothing to do but read or write. With bytes to
    /// write, that many were encrypted.
    Writable(usize),
    /// Both sides sent close_notify.
    Closed,
}

/// What a step encrypts when it may.
#[derive(Clone, Copy)]
enum Out<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

impl TlsStream {
    /// `incoming`: the bytes read so far (the ClientHello), processed first.
    pub fn new(conn: UnbufferedServerConnection, tcp: TcpStream, incoming: Vec<u8>) -> TlsStream {
        TlsStream {
            conn,
            tcp,
            incoming,
            consumed: 0,
            outgoing: Vec::new(),
            sent: 0,
            plaintext: Vec::new(),
            taken: 0,
            read_closed: false,
            eof: false,
            write_closed: false,
            failed: false,
            alert_due: false,
        }
    }

    /// rustls's state: ALPN, the handshake's kind.
    pub fn connection(&self) -> &UnbufferedServerConnection {
        &self.conn
    }

    /// The TCP socket, whose readiness says the client sent something.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Bytes the client sent are here already (decrypted or not), or its end: no need to wait
    /// for the socket.
    pub fn buffered(&self) -> bool {
        self.taken < self.plaintext.len() || self.consumed < self.incoming.len() || self.read_closed
    }

    /// Runs the handshake to its end (what rustls sends last is sent, or on its way).
    pub fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.step(Out::Nothing) {
                Ok(Step::Again) => {}
                // Established, and what rustls had to send encoded (TLS 1.2: its Finished,
                // queued as the handshake ends; TLS 1.3: tickets).
                Ok(Step::Writable(_)) if !self.conn.is_handshaking() => return self.poll_send(cx),
                Ok(Step::NeedInput | Step::Writable(_)) => {
                    // The client waits for what rustls has to say before it says more.
                    ready!(self.poll_send(cx))?;
                    ready!(self.poll_input(
                        cx,
                        "the client closed the connection during the TLS handshake"
                    ))?;
                }
                Ok(Step::Closed) => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                Err(e) => {
                    self.queue_alert();
                    let _ = self.poll_send(cx);
                    return Poll::Ready(Err(e));
                }
            }
        }
    }

    /// One call of rustls's state machine over the bytes received, and what its state asks
    /// for: records decrypted into `plaintext`, records encoded into `outgoing`, `out`
    /// encrypted into `outgoing` when the connection may send.
    fn step(&mut self, out: Out<'_>) -> io::Result<Step> {
        if self.failed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the TLS connection failed",
            ));
        }
        let status = self
            .conn
            .process_tls_records(&mut self.incoming[self.consumed..]);
        let discard = status.discard;
        let step = match status.state {
            Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                let mut result = Ok(Step::Again);
                while let Some(record) = traffic.next_record() {
                    match record {
                        Ok(record) => self.plaintext.extend_from_slice(record.payload),
                        Err(e) => {
                            result = Err(tls_error(e));
                            break;
                        }
                    }
                }
                result
            }
            Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                let start = self.outgoing.len();
                let mut need = MAX_FRAGMENT + RECORD_OVERHEAD;
                loop {
                    self.outgoing.resize(start + need, 0);
                    match encode.encode(&mut self.outgoing[start..]) {
                        Ok(n) => {
                            self.outgoing.truncate(start + n);
                            break Ok(Step::Again);
                        }
                        Err(EncodeError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) if required_size > need => need = required_size,
                        Err(e) => {
                            self.outgoing.truncate(start);
                            break Err(io::Error::other(e));
                        }
                    }
                }
            }
            // Encoded bytes go out in order, from `outgoing`, when it is sent.
            Ok(ConnectionState::TransmitTlsData(transmit)) => {
                transmit.done();
                Ok(Step::Again)
            }
            Ok(ConnectionState::BlockedHandshake) => Ok(Step::NeedInput),
            Ok(ConnectionState::WriteTraffic(mut traffic)) => match out {
                Out::Nothing => Ok(Step::Writable(0)),
                Out::Data(data) => {
                    let data = &data[..data.len().min(WRITE_CHUNK)];
                    let records = data.len().div_ceil(MAX_FRAGMENT).max(1);
                    let start = self.outgoing.len();
                    let mut need = data.len() + records * RECORD_OVERHEAD;
                    loop {
                        self.outgoing.resize(start + need, 0);
                        match traffic.encrypt(data, &mut self.outgoing[start..]) {
                            Ok(n) => {
                                self.outgoing.truncate(start + n);
                                break Ok(Step::Writable(data.len()));
                            }
                            Err(EncryptError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            })) if required_size > need => need = required_size,
                            Err(e) => {
                                self.outgoing.truncate(start);
                                break Err(io::Error::other(e));
                            }
                        }
                    }
                }
                Out::CloseNotify => {
                    let start = self.outgoing.len();
                    self.outgoing.resize(start + RECORD_OVERHEAD, 0);
                    match traffic.queue_close_notify(&mut self.outgoing[start..]) {
                        Ok(n) => {
                            self.outgoing.truncate(start + n);
                            Ok(Step::Writable(1))
                        }
                        Err(e) => {
                            self.outgoing.truncate(start);
                            Err(io::Error::other(e))
                        }
                    }
                }
            },
            Ok(ConnectionState::PeerClosed) => {
                self.read_closed = true;
                Ok(Step::Again)
            }
            Ok(ConnectionState::Closed) => {
                self.read_closed = true;
                Ok(Step::Closed)
            }
            // The server accepts no early data (rustls's default), so none is offered here.
            Ok(ConnectionState::ReadEarlyData(_)) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS early data, which is not accepted",
            )),
            Ok(other) => Err(io::Error::other(format!(
                "unexpected TLS connection state {other:?}"
            ))),
            Err(e) => Err(tls_error(e)),
        };
        self.consumed = (self.consumed + discard).min(self.incoming.len());
        if self.consumed == self.incoming.len() {
            self.incoming.clear();
            self.consumed = 0;
        }
        if step.is_err() {
            self.failed = true;
            self.alert_due = true;
        }
        step
    }

    /// After an error: the alert rustls queued for the client, into `outgoing`. One call of
    /// rustls: the alert (or what was queued before it) is the first thing it gives.
    fn queue_alert(&mut self) {
        if !std::mem::take(&mut self.alert_due) {
            return;
        }
        let status = self
            .conn
            .process_tls_records(&mut self.incoming[self.consumed..]);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = status.state {
            let start = self.outgoing.len();
            self.outgoing
                .resize(start + MAX_FRAGMENT + RECORD_OVERHEAD, 0);
            let written = encode.encode(&mut self.outgoing[start..]).unwrap_or(0);
            self.outgoing.truncate(start + written);
        }
    }

    /// More TLS bytes from the socket for rustls; an end of stream is noted, and an error
    /// (`eof_error`) once rustls has asked for more again after it.
    fn poll_input(&mut self, cx: &mut Context<'_>, eof_error: &str) -> Poll<io::Result<()>> {
        if self.eof {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, eof_error)));
        }
        if ready!(self.poll_receive(cx))? == 0 {
            self.eof = true;
        }
        Poll::Ready(Ok(()))
    }

    /// Sends what `outgoing` holds, and gives the buffer back once it is all sent.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads TLS bytes from the socket into `incoming` (0: end of stream). The buffer is
    /// taken only once the socket is readable, and given back when the read finds it empty.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            if self.consumed > 0 {
                self.incoming.drain(..self.consumed);
                self.consumed = 0;
            }
            if self.incoming.capacity() - self.incoming.len() < READ_SIZE {
                self.incoming.reserve(READ_SIZE);
            }
            match self.tcp.try_read_buf(&mut self.incoming) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.incoming.is_empty() {
                        self.incoming = Vec::new();
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Gives decrypted plaintext to `buf`; the buffer back once it is all read.
    fn take_plaintext(&mut self, buf: &mut ReadBuf<'_>) {
        let n = (self.plaintext.len() - self.taken).min(buf.remaining());
        buf.put_slice(&self.plaintext[self.taken..self.taken + n]);
        self.taken += n;
        if self.taken == self.plaintext.len() {
            self.plaintext = Vec::new();
            self.taken = 0;
        }
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            if me.taken < me.plaintext.len() {
                me.take_plaintext(buf);
                // More records already here fill the rest of `buf` (many small records are
                // one read, not one each); the socket is not read for them.
                while buf.remaining() > 0 && me.consumed < me.incoming.len() {
                    match me.step(Out::Nothing) {
                        Ok(Step::Again) if me.taken < me.plaintext.len() => me.take_plaintext(buf),
                        Ok(Step::Again) => {}
                        // An error is the next read's.
                        _ => break,
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if me.read_closed {
                return Poll::Ready(Ok(()));
            }
            // What rustls has to say on its own (a ticket, a key update) goes out on the way;
            // a client that reads nothing does not stop its own reads here.
            if me.sent < me.outgoing.len()
                && let Poll::Ready(Err(e)) = me.poll_send(cx)
            {
                return Poll::Ready(Err(e));
            }
            let step = match me.step(Out::Nothing) {
                Ok(step) => step,
                Err(e) => {
                    // The client is told why (a bad record, a protocol error), if it listens.
                    me.queue_alert();
                    let _ = me.poll_send(cx);
                    return Poll::Ready(Err(e));
                }
            };
            match step {
                Step::Again => {}
                Step::Closed => me.read_closed = true,
                Step::NeedInput | Step::Writable(_) => {
                    ready!(me.poll_input(
                        cx,
                        "the client closed the connection without a TLS close_notify"
                    ))?;
                }
            }
        }
    }
}

impl TlsStream {
    /// Encrypts `bufs` in order (up to [`WRITE_CHUNK`] in all) into `outgoing` and sends what the
    /// socket takes: one system call for all of them. Small slices share a record (hyper's
    /// chunk-size line, data and CRLF; HTTP/2's frame header and payload), copied together up to
    /// a record's [`MAX_FRAGMENT`]: a record each would cost a seal and 22 bytes apiece. The last
    /// write is sent before this one is taken, so one write's worth waits at most.
    fn poll_write_slices(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        ready!(self.poll_send(cx))?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut slices = bufs.iter().filter(|b| !b.is_empty()).peekable();
        let mut taken = 0;
        let mut staged: Vec<u8> = Vec::new();
        let mut failed = None;
        while let Some(buf) = slices.next() {
            let room = WRITE_CHUNK - taken - staged.len();
            if room == 0 {
                break;
            }
            let data = &buf[..buf.len().min(room)];
            if !staged.is_empty() && staged.len() + data.len() > MAX_FRAGMENT {
                let encrypted = self.encrypt(&staged);
                staged.clear();
                match encrypted {
                    Ok(n) => taken += n,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            // A slice a record's size or more, or alone, goes as it is; the others are staged.
            if data.len() >= MAX_FRAGMENT || (staged.is_empty() && slices.peek().is_none()) {
                match self.encrypt(data) {
                    Ok(n) => taken += n,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            } else {
                if staged.capacity() == 0 {
                    staged.reserve(MAX_FRAGMENT.min(room).min(total - taken));
                }
                staged.extend_from_slice(data);
            }
            if data.len() < buf.len() {
                break;
            }
        }
        if failed.is_none() && !staged.is_empty() {
            match self.encrypt(&staged) {
                Ok(n) => taken += n,
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            // What was taken is sent; the error is the next write's.
            Some(_) if taken > 0 => {}
            Some(e) => {
                self.queue_alert();
                let _ = self.poll_send(cx);
                return Poll::Ready(Err(e));
            }
            None => {}
        }
        // On its way now; what the socket does not take waits for the next call.
        if let Poll::Ready(Err(e)) = self.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }

    /// Encrypts all of `data` (at most [`WRITE_CHUNK`]) into `outgoing`.
    fn encrypt(&mut self, data: &[u8]) -> io::Result<usize> {
        loop {
            match self.step(Out::Data(data)) {
                Ok(Step::Writable(n)) => return Ok(n),
                Ok(Step::Again) => {}
                Ok(Step::NeedInput) => {
                    return Err(io::Error::other("a write before the TLS handshake ended"));
                }
                Ok(Step::Closed) => return Err(io::ErrorKind::BrokenPipe.into()),
                Err(e) => return Err(e),
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_slices(cx, &[io::IoSlice::new(data)])
    }

    /// Small slices in one record, and all of them in one system call (HTTP/2's frame header
    /// and its payload, hyper's response head and body) rather than a record and a call each.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_slices(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_send(cx))?;
        Pin::new(&mut me.tcp).poll_flush(cx)
    }

    /// close_notify, then the socket's write side closed.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        while !me.write_closed {
            match me.step(Out::CloseNotify) {
                Ok(Step::Writable(_)) | Ok(Step::Closed) | Ok(Step::NeedInput) | Err(_) => {
                    me.write_closed = true;
                }
                Ok(Step::Again) => {}
            }
        }
        ready!(me.poll_send(cx))?;
        match ready!(Pin::new(&mut me.tcp).poll_shutdown(cx)) {
            // Not connected any more: shut down already.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            other => Poll::Ready(other),
        }
    }
}

/// A TLS error as an I/O error, as rustls's buffered connection gives it.
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests;
