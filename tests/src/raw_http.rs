//! Exact bytes in, the first response out: a tiny HTTP/1 client for hostile-input tests, which
//! reads one response by its framing (Content-Length, chunked, or close) under a deadline
//! instead of waiting for a keep-alive connection to end.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What came back on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// One whole response (informational 1xx ones skipped).
    Response {
        status: u16,
        /// The head as received, status line included.
        head: String,
        body: Vec<u8>,
    },
    /// The connection ended (FIN or reset) before a single byte came back.
    Closed,
    /// Nothing whole before the deadline, or bytes that are no HTTP/1 response: what arrived.
    Incomplete(String),
}

impl Reply {
    /// The status of the response, if there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Reply::Response { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Response { head, body, .. } => {
                let first = head.lines().next().unwrap_or_default();
                write!(f, "{first:?} with a {}-byte body", body.len())
            }
            Reply::Closed => write!(f, "connection closed with no response"),
            Reply::Incomplete(bytes) => {
                let shown: String = bytes.chars().take(200).collect();
                write!(f, "no whole response, got {shown:?}")
            }
        }
    }
}

/// Opens a fresh connection to `addr`, writes `raw` (then shuts the write side down when
/// `half_close`), and reads the first response until `deadline` passes.
///
/// The write runs beside the read: a proxy may answer (431, 400) and close before it has read
/// everything, and that answer is what the test wants to see.
pub async fn exchange(addr: SocketAddr, raw: &[u8], half_close: bool, deadline: Duration) -> Reply {
    let stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return Reply::Incomplete(format!("connect failed: {e}")),
    };
    let (mut reader, mut writer) = stream.into_split();
    let raw = raw.to_vec();
    let write = tokio::spawn(async move {
        // A write error means the proxy closed first; what it answered is read below.
        if writer.write_all(&raw).await.is_ok() && half_close {
            let _ = writer.shutdown().await;
        }
        // Keep the write half (and so the connection) open until the read is done.
        writer
    });
    let reply = read_response(&mut reader, deadline).await;
    write.abort();
    reply
}

/// Reads one response from `stream`, a connection with one request outstanding (bytes after
/// the response, which there should be none of, are dropped), until `deadline` passes.
pub async fn read_response<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    deadline: Duration,
) -> Reply {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(deadline, async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(reply) = parse_response(&buf, false) {
                return reply;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    return match parse_response(&buf, true) {
                        Some(reply) => reply,
                        None if buf.is_empty() => Reply::Closed,
                        None => Reply::Incomplete(String::from_utf8_lossy(&buf).into_owned()),
                    };
                }
                Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            }
        }
    })
    .await;
    read.unwrap_or_else(|_| Reply::Incomplete(String::from_utf8_lossy(&buf).into_owned()))
}

/// The first final response in `buf`, if it is whole. `eof`: nothing more will come, so a
/// response framed by the close ends here.
fn parse_response(buf: &[u8], eof: bool) -> Option<Reply> {
    let mut rest = buf;
    loop {
        let head_end = find(rest, b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(rest.get(..head_end)?).into_owned();
        let status: u16 = head.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()?;
        let body = rest.get(head_end..)?;
        if (100..200).contains(&status) && status != 101 {
            rest = body;
            continue;
        }
        let header = |name: &str| {
            head.lines().skip(1).find_map(|line| {
                let (n, v) = line.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_ascii_lowercase())
            })
        };
        let body = if status == 204 || status == 304 {
            Vec::new()
        } else if header("transfer-encoding").is_some_and(|te| te.ends_with("chunked")) {
            dechunk(body)?
        } else if let Some(len) = header("content-length") {
            body.get(..len.parse::<usize>().ok()?)?.to_vec()
        } else if eof {
            body.to_vec()
        } else {
            return None;
        };
        return Some(Reply::Response { status, head, body });
    }
}

/// The payload of a whole chunked body at the start of `buf`; `None` until the last chunk and
/// the trailers have arrived.
fn dechunk(mut buf: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(buf, b"\r\n")?;
        let line = std::str::from_utf8(buf.get(..line_end)?).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        buf = buf.get(line_end + 2..)?;
        if size == 0 {
            // Trailers, then an empty line.
            return (buf.starts_with(b"\r\n") || find(buf, b"\r\n\r\n").is_some()).then_some(out);
        }
        out.extend_from_slice(buf.get(..size)?);
        buf = buf.get(size + 2..)?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_framed_by_length_chunks_or_close() {
        let cl = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA";
        assert_eq!(
            parse_response(cl, false).and_then(|r| r.status()),
            Some(200)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nok", false),
            None
        );

        let chunked = b"HTTP/1.1 403 Forbidden\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\n\r\n";
        match parse_response(chunked, false) {
            Some(Reply::Response {
                status: 403, body, ..
            }) => assert_eq!(body, b"abc"),
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_response(&chunked[..chunked.len() - 2], false), None);

        let close = b"HTTP/1.0 400 Bad Request\r\n\r\nbad";
        assert_eq!(parse_response(close, false), None);
        assert_eq!(
            parse_response(close, true).and_then(|r| r.status()),
            Some(400)
        );

        let continued = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(
            parse_response(continued, false).and_then(|r| r.status()),
            Some(204)
        );
    }
}
