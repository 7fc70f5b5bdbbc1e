//! A hand-written HTTP/1.1 client side, just enough for GET over keep-alive:
//! writes a prepared request, reads the status line and headers, then the body
//! framed by Content-Length, chunked transfer coding, or the end of the
//! connection. Bodies are read and discarded (only their length is kept).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAX_HEAD: usize = 64 * 1024;
const MAX_LINE: usize = 8 * 1024;

/// `GET {path} HTTP/1.1` with a Host header and nothing else.
pub fn get_request(path: &str, host: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

#[derive(Debug, Clone, Copy)]
pub struct Response {
    pub status: u16,
    /// The connection cannot carry another request (Connection: close,
    /// HTTP/1.0 without keep-alive, or a close-delimited body).
    pub close: bool,
    pub body_bytes: u64,
}

enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// A stream plus its read buffer (which may hold bytes read past a response).
pub struct HttpConn<S> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> HttpConn<S> {
    pub fn new(stream: S) -> Self {
        HttpConn {
            stream,
            buf: Vec::with_capacity(4096),
        }
    }

    /// The stream, dropping the read buffer.
    pub fn into_inner(self) -> S {
        self.stream
    }

    /// Sends `req` (a complete request) and reads the whole response.
    pub async fn request(&mut self, req: &[u8]) -> io::Result<Response> {
        self.stream.write_all(req).await?;
        self.stream.flush().await?;
        self.read_response().await
    }

    /// Reads more bytes into the buffer; EOF is an error.
    async fn fill(&mut self) -> io::Result<()> {
        if self.buf.capacity() - self.buf.len() < 2048 {
            self.buf.reserve(16 * 1024);
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by peer before the response was complete",
            ));
        }
        Ok(())
    }

    fn consume(&mut self, n: usize) {
        if n >= self.buf.len() {
            self.buf.clear();
        } else {
            self.buf.drain(..n);
        }
    }

    /// Discards `n` bytes of body.
    async fn skip(&mut self, mut n: u64) -> io::Result<()> {
        loop {
            let take = n.min(self.buf.len() as u64);
            self.consume(take as usize);
            n -= take;
            if n == 0 {
                return Ok(());
            }
            self.fill().await?;
        }
    }

    /// Makes sure a CRLF-terminated line is at the front; returns its length
    /// without the CRLF.
    async fn line(&mut self) -> io::Result<usize> {
        let mut from = 0;
        loop {
            if let Some(p) = self.buf[from..].windows(2).position(|w| w == b"\r\n") {
                return Ok(from + p);
            }
            if self.buf.len() > MAX_LINE {
                return Err(bad("line in chunked body too long"));
            }
            from = self.buf.len().saturating_sub(1);
            self.fill().await?;
        }
    }

    pub async fn read_response(&mut self) -> io::Result<Response> {
        loop {
            // Head.
            let mut from = 0;
            let end = loop {
                if let Some(p) = self.buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
                    break from + p + 4;
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(bad("response head larger than 64 KiB"));
                }
                from = self.buf.len().saturating_sub(3);
                self.fill().await?;
            };
            let (status, framing, close) = parse_head(&self.buf[..end])?;
            self.consume(end);
            if (100..200).contains(&status) && status != 101 {
                continue; // interim response (100 Continue, 103 Early Hints)
            }
            let mut resp = Response {
                status,
                close,
                body_bytes: 0,
            };
            match framing {
                Framing::None => {}
                Framing::Length(n) => {
                    self.skip(n).await?;
                    resp.body_bytes = n;
                }
                Framing::Chunked => loop {
                    let len = self.line().await?;
                    let line = &self.buf[..len];
                    let hex = line
                        .split(|b| *b == b';')
                        .next()
                        .unwrap_or(b"")
                        .trim_ascii();
                    let size = std::str::from_utf8(hex)
                        .ok()
                        .and_then(|s| u64::from_str_radix(s, 16).ok())
                        .ok_or_else(|| bad("bad chunk size line"))?;
                    self.consume(len + 2);
                    if size == 0 {
                        // Trailer section up to the empty line.
                        loop {
                            let len = self.line().await?;
                            self.consume(len + 2);
                            if len == 0 {
                                break;
                            }
                        }
                        break;
                    }
                    self.skip(size).await?;
                    resp.body_bytes += size;
                    if self.line().await? != 0 {
                        return Err(bad("chunk data not followed by CRLF"));
                    }
                    self.consume(2);
                },
                Framing::UntilClose => {
                    resp.close = true;
                    loop {
                        resp.body_bytes += self.buf.len() as u64;
                        self.buf.clear();
                        if self.buf.capacity() < 16 * 1024 {
                            self.buf.reserve(16 * 1024);
                        }
                        if self.stream.read_buf(&mut self.buf).await? == 0 {
                            break;
                        }
                    }
                }
            }
            return Ok(resp);
        }
    }
}

/// Parses the status line and headers (`head` ends with the empty line).
fn parse_head(head: &[u8]) -> io::Result<(u16, Framing, bool)> {
    let mut lines = head
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next().unwrap_or(b"");
    let (http10, status) = match status_line {
        [
            b'H',
            b'T',
            b'T',
            b'P',
            b'/',
            b'1',
            b'.',
            minor,
            b' ',
            d0,
            d1,
            d2,
            rest @ ..,
        ] if (rest.is_empty() || rest[0] == b' ')
            && d0.is_ascii_digit()
            && d1.is_ascii_digit()
            && d2.is_ascii_digit() =>
        {
            let s = (d0 - b'0') as u16 * 100 + (d1 - b'0') as u16 * 10 + (d2 - b'0') as u16;
            (*minor == b'0', s)
        }
        _ => {
            let shown =
                String::from_utf8_lossy(&status_line[..status_line.len().min(60)]).into_owned();
            return Err(bad(format!("bad status line {shown:?}")));
        }
    };
    let mut length = None;
    let mut chunked = false;
    let mut close = http10;
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return Err(bad("header line without a colon"));
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| bad("bad Content-Length"))?;
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = value
                .split(|b| *b == b',')
                .next_back()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            if has_token(value, "close") {
                close = true;
            } else if has_token(value, "keep-alive") {
                close = false;
            }
        }
    }
    let framing = if status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok((status, framing, close))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn read_all(responses: &[u8]) -> Vec<io::Result<Response>> {
        let (client, mut server) = tokio::io::duplex(64);
        let data = responses.to_vec();
        let w = tokio::spawn(async move {
            for piece in data.chunks(7) {
                let _ = server.write_all(piece).await;
            }
        });
        let mut c = HttpConn::new(client);
        let mut out = Vec::new();
        loop {
            let r = c.read_response().await;
            let stop = r.is_err() || r.as_ref().is_ok_and(|r| r.close);
            out.push(r);
            if stop {
                break;
            }
        }
        let _ = w.await;
        out
    }

    #[tokio::test]
    async fn length_chunked_interim_and_close() {
        let r = read_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhello world\n\
              HTTP/1.1 100 Continue\r\n\r\n\
              HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nT: v\r\n\r\n\
              HTTP/1.1 204 No Content\r\n\r\n\
              HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 3\r\n\r\nabc",
        )
        .await;
        let r: Vec<Response> = r.into_iter().map(|r| r.expect("ok")).collect();
        assert_eq!(r.len(), 4);
        assert_eq!((r[0].status, r[0].body_bytes, r[0].close), (200, 12, false));
        assert_eq!((r[1].status, r[1].body_bytes, r[1].close), (404, 11, false));
        assert_eq!((r[2].status, r[2].body_bytes), (204, 0));
        assert_eq!((r[3].status, r[3].body_bytes, r[3].close), (200, 3, true));
    }

    #[tokio::test]
    async fn until_close_and_truncated() {
        let r = read_all(b"HTTP/1.0 200 OK\r\n\r\nabcdef").await;
        let first = r[0].as_ref().expect("ok");
        assert_eq!(
            (first.status, first.body_bytes, first.close),
            (200, 6, true)
        );
        let r = read_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").await;
        assert!(r[0].is_err());
        let r = read_all(b"garbage\r\n\r\n").await;
        assert!(r[0].is_err());
    }
}
