//! The upstream's HTTP/2 connection preface, read as its bytes pass.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

/// What the upstream's connection preface said: its first SETTINGS frame, which proxyd reads
/// itself as the bytes pass (hyper runs the HTTP/2 connection in a task of its own and tells
/// nothing of it). A later SETTINGS frame that lowers the limit is not seen here; the
/// connection itself still obeys it, queueing the streams past it.
pub(crate) struct Settings {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`; until the preface is read, 1.
    pub(crate) max_streams: AtomicUsize,
    pub(crate) heard: AtomicBool,
    /// Wakes who waits for `heard`.
    heard_changed: tokio::sync::Notify,
}

impl Settings {
    fn new() -> Settings {
        Settings {
            max_streams: AtomicUsize::new(1),
            heard: AtomicBool::new(false),
            heard_changed: tokio::sync::Notify::new(),
        }
    }

    fn hear(&self, max_streams: usize) {
        self.max_streams.store(max_streams, Ordering::Relaxed);
        self.heard.store(true, Ordering::SeqCst);
        self.heard_changed.notify_waiters();
    }

    /// Until the upstream's SETTINGS have been read, or `bound` passed (a silent upstream).
    pub(crate) async fn heard(&self, bound: std::time::Duration) {
        let wait = async {
            let changed = self.heard_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !self.heard.load(Ordering::SeqCst) {
                changed.await;
            }
        };
        let _ = tokio::time::timeout(bound, wait).await;
    }
}

/// The longest first SETTINGS frame read (RFC 9113's default SETTINGS_MAX_FRAME_SIZE); a longer
/// one is not parsed, and the connection's own reader refuses it anyway.
const MAX_PREFACE: usize = 9 + 16_384;
const FRAME_SETTINGS: u8 = 0x4;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// An upstream connection's IO, reading the upstream's first SETTINGS frame as it passes.
pub(crate) struct FirstRead<T> {
    io: T,
    /// The preface read so far; `None` once it has been parsed.
    preface: Option<Vec<u8>>,
    settings: Arc<Settings>,
}

impl<T> FirstRead<T> {
    pub(crate) fn new(io: T) -> (FirstRead<T>, Arc<Settings>) {
        let settings = Arc::new(Settings::new());
        let io = FirstRead {
            io,
            preface: Some(Vec::new()),
            settings: settings.clone(),
        };
        (io, settings)
    }

    /// Takes `bytes` of the preface; parses it once it is whole.
    fn preface(&mut self, bytes: &[u8], eof: bool) {
        let Some(preface) = &mut self.preface else {
            return;
        };
        preface.extend_from_slice(bytes);
        let parsed = parse_settings(preface);
        if parsed.is_some() || eof || preface.len() >= MAX_PREFACE {
            self.preface = None;
            // No limit stated, or no SETTINGS frame: unlimited, as RFC 9113 starts.
            let max = parsed.flatten().unwrap_or(usize::MAX);
            self.settings.hear(max);
        }
    }
}

/// `None`: incomplete. `Some(limit)`: a whole first frame, with the stream limit it states
/// (`Some(None)` when it is no SETTINGS frame, or states none).
fn parse_settings(bytes: &[u8]) -> Option<Option<usize>> {
    let header = bytes.get(..9)?;
    let length =
        usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    if header[3] != FRAME_SETTINGS {
        return Some(None);
    }
    let payload = bytes.get(9..9 + length)?;
    let mut limit = None;
    for entry in payload.chunks_exact(6) {
        if u16::from_be_bytes([entry[0], entry[1]]) == SETTINGS_MAX_CONCURRENT_STREAMS {
            let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
            limit = Some(usize::try_from(value).unwrap_or(usize::MAX));
        }
    }
    Some(limit)
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for FirstRead<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.preface.is_none() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        // Through a buffer of our own while the preface passes, to see its bytes.
        let mut local = [0u8; 4096];
        let room = buf.remaining().min(local.len());
        let mut read = hyper::rt::ReadBuf::new(&mut local[..room]);
        let polled = Pin::new(&mut self.io).poll_read(cx, read.unfilled());
        if let Poll::Ready(Ok(())) = polled {
            let filled = read.filled();
            buf.put_slice(filled);
            let eof = filled.is_empty();
            self.as_mut().get_mut().preface(filled, eof);
        }
        polled
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for FirstRead<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut frame = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            0,
            0,
            0,
            0,
            0,
        ];
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn the_preface_s_stream_limit_is_read_once_the_frame_is_whole() {
        // SETTINGS_INITIAL_WINDOW_SIZE, then SETTINGS_MAX_CONCURRENT_STREAMS = 2.
        let settings = frame(4, &[0, 4, 0, 1, 0, 0, 0, 3, 0, 0, 0, 2]);
        assert_eq!(parse_settings(&settings[..8]), None);
        assert_eq!(parse_settings(&settings[..15]), None);
        assert_eq!(parse_settings(&settings), Some(Some(2)));
        assert_eq!(
            parse_settings(&frame(4, &[])),
            Some(None),
            "no limit stated"
        );
        assert_eq!(
            parse_settings(&frame(6, &[0; 8])),
            Some(None),
            "no SETTINGS"
        );
    }
}
