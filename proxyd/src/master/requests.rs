//! The master's request socket, `master.sock`: one line in (`upgrade [TIMEOUT_MS [BINARY]]`),
//! one line out (`ok OLD NEW` or `error REASON`), peer credentials checked first.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The longest request line on `master.sock`.
const MAX_REQUEST: usize = 4096;

/// How long a client on `master.sock` may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// An upgrade request from root or proxyd's own user.
pub(super) struct Request {
    pub stream: UnixStream,
    pub timeout: Option<Duration>,
    pub binary: Option<PathBuf>,
}

/// Reads one request line, `upgrade [TIMEOUT_MS [BINARY]]` (peer credentials first: anyone
/// else gets an answer and nothing more), and hands it to the event loop.
pub(super) async fn read_request(stream: UnixStream, to: tokio::sync::mpsc::Sender<Request>) {
    let uid = stream.peer_cred().ok().map(|c| c.uid());
    let own = std::fs::metadata("/proc/self").ok().map(|m| m.uid());
    if !uid.is_some_and(|uid| uid == 0 || Some(uid) == own) {
        tracing::info!(target: "audit", call = "Upgrade", uid, outcome = "denied");
        refuse(stream, "only root and proxyd's own user may upgrade").await;
        return;
    }
    let mut reader = BufReader::new(stream).take(MAX_REQUEST as u64);
    let mut line = String::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await;
    let stream = reader.into_inner().into_inner();
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        refuse(stream, "no request line").await;
        return;
    }
    match parse_request(&line) {
        Ok((timeout, binary)) => {
            tracing::info!(target: "audit", call = "Upgrade", uid, outcome = "upgrading");
            let _ = to
                .send(Request {
                    stream,
                    timeout,
                    binary,
                })
                .await;
        }
        Err(why) => refuse(stream, why).await,
    }
}

/// Answers a request that is refused, and waits until the answer is out.
async fn refuse(stream: UnixStream, why: &str) {
    if let Some(reply) = answer(Some(stream), format!("error {why}")) {
        let _ = reply.await;
    }
}

/// `upgrade [TIMEOUT_MS [BINARY]]`, the binary an absolute path.
fn parse_request(line: &str) -> Result<(Option<Duration>, Option<PathBuf>), &'static str> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let rest = match line.strip_prefix("upgrade") {
        Some("") => return Ok((None, None)),
        Some(rest) if rest.starts_with(' ') => &rest[1..],
        _ => return Err("unknown request"),
    };
    let (timeout, binary) = rest.split_once(' ').unwrap_or((rest, ""));
    let timeout = timeout
        .parse::<u64>()
        .map_err(|_| "the timeout must be milliseconds")?;
    let binary = match binary {
        "" => None,
        b if b.starts_with('/') => Some(PathBuf::from(b)),
        _ => return Err("the binary must be an absolute path"),
    };
    Ok((Some(Duration::from_millis(timeout)), binary))
}

pub(super) async fn accept(
    listener: Option<&tokio::net::UnixListener>,
) -> std::io::Result<UnixStream> {
    match listener {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

/// Writes the one-line answer to an upgrade request, in the background.
pub(super) fn answer(
    reply: Option<UnixStream>,
    line: String,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut stream = reply?;
    Some(tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            stream.write_all(format!("{line}\n").as_bytes()).await?;
            stream.shutdown().await
        })
        .await;
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_requests_parse_strictly() {
        assert_eq!(parse_request("upgrade\n"), Ok((None, None)));
        assert_eq!(
            parse_request("upgrade 5000\n"),
            Ok((Some(Duration::from_secs(5)), None))
        );
        assert_eq!(
            parse_request("upgrade 5000 /opt/new proxyd\n"),
            Ok((
                Some(Duration::from_secs(5)),
                Some(PathBuf::from("/opt/new proxyd"))
            ))
        );
        assert!(parse_request("upgrade soon\n").is_err());
        assert!(parse_request("upgrade 5000 relative/proxyd\n").is_err());
        assert!(parse_request("upgrades\n").is_err());
        assert!(parse_request("ping\n").is_err());
    }
}
