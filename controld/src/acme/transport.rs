//! Why a request to the ACME CA got no answer, in the operator's terms: a refused connection, a
//! failed DNS lookup, a certificate TLS refused and why. The HTTPS client (`client.rs`) hands its
//! error here; this module only reads the error chain, so it is tested on constructed chains.
//!
//! hyper-util's own message for all of these is "client error (Connect)"; the cause is further
//! down its source chain: hyper-util's connector error ("dns error", "tcp connect error"), then
//! an `io::Error`, which may wrap a `rustls::Error`.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::time::Duration;

use rustls::CertificateError;

/// Where the client's trusted roots come from; the advice for an untrusted certificate differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Roots {
    /// `acme.ca_roots` is set: only that file's certificates are trusted.
    Configured,
    /// The system's roots.
    System,
}

/// A request to the CA at `url` that got no answer, and why.
#[derive(Debug)]
pub struct Unanswered {
    url: String,
    cause: Cause,
}

impl Unanswered {
    /// The request to `url` failed with `error` (hyper-util's client error, or anything with a
    /// source chain). `connecting` is true when it failed before a connection was up
    /// (hyper-util's `is_connect`).
    pub fn new(
        url: &str,
        host: &str,
        roots: Roots,
        connecting: bool,
        error: &(dyn StdError + 'static),
    ) -> Unanswered {
        Unanswered {
            url: url.to_owned(),
            cause: classify(host, roots, connecting, error),
        }
    }

    /// No answer came within `limit`.
    pub fn timed_out(url: &str, limit: Duration) -> Unanswered {
        Unanswered {
            url: url.to_owned(),
            cause: Cause::NoAnswerWithin(limit),
        }
    }

    #[cfg(test)]
    fn cause(&self) -> &Cause {
        &self.cause
    }
}

impl fmt::Display for Unanswered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = &self.url;
        match &self.cause {
            Cause::NoAnswerWithin(limit) => write!(
                f,
                "no answer from {url} within {}",
                humantime::format_duration(*limit)
            ),
            Cause::Failed(text) => write!(f, "request to {url} failed: {text}"),
            cause => write!(f, "cannot connect to {url}: {cause}"),
        }
    }
}

impl StdError for Unanswered {}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cause {
    /// Nothing listens on that port.
    Refused,
    /// The host name did not resolve: `detail` is the resolver's message.
    Dns { host: String, detail: String },
    /// The TLS handshake failed: the reason, and what to check.
    Tls(String),
    /// Another I/O failure while connecting (timed out, unreachable, reset).
    Connect(String),
    /// The request failed after the connection was up (the chain's messages).
    Failed(String),
    /// The server did not answer in time.
    NoAnswerWithin(Duration),
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Refused => f.write_str("connection refused"),
            Cause::Dns { host, detail } => write!(f, "DNS lookup of {host} failed: {detail}"),
            Cause::Tls(reason) => write!(f, "TLS: {reason}"),
            Cause::Connect(text) | Cause::Failed(text) => f.write_str(text),
            Cause::NoAnswerWithin(limit) => {
                write!(f, "no answer within {}", humantime::format_duration(*limit))
            }
        }
    }
}

/// Reads `error`'s chain: TLS first (its `io::Error` says little), then DNS, then the
/// innermost `io::Error`, else every message in the chain.
fn classify(host: &str, roots: Roots, connecting: bool, error: &(dyn StdError + 'static)) -> Cause {
    let links = chain(error);
    if let Some(tls) = links.iter().find_map(|e| e.downcast_ref::<rustls::Error>()) {
        return Cause::Tls(tls_reason(tls, host, roots));
    }
    // hyper-util's connector error type is private; its message is the only handle on it.
    if let Some(at) = links.iter().position(|e| e.to_string() == "dns error") {
        // std's resolver error repeats what the sentence already says.
        let detail = links.get(at + 1).map_or_else(
            || "no address".to_owned(),
            |e| {
                let text = e.to_string();
                text.strip_prefix("failed to lookup address information: ")
                    .map_or_else(|| text.clone(), str::to_owned)
            },
        );
        return Cause::Dns {
            host: host.to_owned(),
            detail,
        };
    }
    if let Some(io) = links
        .iter()
        .rev()
        .find_map(|e| e.downcast_ref::<io::Error>())
    {
        if io.kind() == io::ErrorKind::ConnectionRefused {
            return Cause::Refused;
        }
        if connecting {
            return Cause::Connect(io_reason(io));
        }
    }
    let text = messages(&links);
    if connecting {
        Cause::Connect(text)
    } else {
        Cause::Failed(text)
    }
}

/// The error and its sources, outermost first. `io::Error::source` skips the error it wraps,
/// so the walk steps into it with `get_ref`.
fn chain<'a>(error: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut links = Vec::new();
    let mut next = Some(error);
    // Bounded: a chain is short, and a cycle must not hang the issuer.
    while let Some(e) = next.filter(|_| links.len() < 16) {
        links.push(e);
        next = match e.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    links
}

/// Every message of the chain, each once: an outer error often repeats its source's text, and
/// hyper-util's "client error (Connect)" says nothing the rest does not.
fn messages(links: &[&(dyn StdError + 'static)]) -> String {
    let mut parts: Vec<String> = Vec::new();
    for link in links {
        let text = link.to_string();
        if text.starts_with("client error (") && links.len() > 1 {
            continue;
        }
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// An `io::Error` in words: the usual kinds by name, the rest as the OS says it.
fn io_reason(io: &io::Error) -> String {
    use io::ErrorKind::*;
    match io.kind() {
        TimedOut => "connection timed out".to_owned(),
        ConnectionReset => "connection reset by the server".to_owned(),
        UnexpectedEof => "the server closed the connection".to_owned(),
        _ => io.to_string(),
    }
}

/// A failed TLS handshake in the operator's terms, with what to check.
fn tls_reason(error: &rustls::Error, host: &str, roots: Roots) -> String {
    match error {
        rustls::Error::InvalidCertificate(e) => certificate_reason(e, host, roots),
        rustls::Error::InvalidMessage(_)
        | rustls::Error::PeerSentOversizedRecord
        | rustls::Error::InappropriateMessage { .. } => format!(
            "the server did not answer in TLS ({error}); does it serve plain HTTP on that port?"
        ),
        rustls::Error::AlertReceived(alert) => {
            format!("the server refused the handshake (alert: {alert:?})")
        }
        rustls::Error::NoCertificatesPresented => "the server presented no certificate".to_owned(),
        other => format!("the handshake failed: {other}"),
    }
}

fn certificate_reason(error: &CertificateError, host: &str, roots: Roots) -> String {
    let unix = |t: &rustls_pki_types::UnixTime| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(t.as_secs()))
    };
    match error {
        CertificateError::UnknownIssuer => match roots {
            Roots::Configured => "the server's certificate is not trusted (unknown issuer); \
                                  is acme.ca_roots the CA that signed it?"
                .to_owned(),
            Roots::System => "the server's certificate is not trusted (unknown issuer): none of \
                              the system's root certificates signed it; for a private or test \
                              CA, set acme.ca_roots to its certificate"
                .to_owned(),
        },
        CertificateError::BadEncoding => {
            "the server's certificate cannot be parsed (bad encoding)".to_owned()
        }
        CertificateError::NotValidForName => {
            format!("the server's certificate is not valid for {host}")
        }
        CertificateError::NotValidForNameContext { presented, .. } => format!(
            "the server's certificate is not valid for {host} (it names {})",
            if presented.is_empty() {
                "nothing".to_owned()
            } else {
                presented.join(", ")
            }
        ),
        CertificateError::Expired => "the server's certificate has expired".to_owned(),
        CertificateError::ExpiredContext { not_after, .. } => {
            format!("the server's certificate expired at {}", unix(not_after))
        }
        CertificateError::NotValidYet => "the server's certificate is not valid yet".to_owned(),
        CertificateError::NotValidYetContext { not_before, .. } => format!(
            "the server's certificate is not valid before {}; is this machine's clock right?",
            unix(not_before)
        ),
        CertificateError::Revoked => "the server's certificate has been revoked".to_owned(),
        CertificateError::BadSignature => "the server's certificate has a bad signature".to_owned(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "the server's certificate is not one for a TLS server (extended key usage)".to_owned()
        }
        CertificateError::Other(other) => match other.0.downcast_ref::<webpki::Error>() {
            Some(webpki::Error::CaUsedAsEndEntity) => {
                "the server presents a CA certificate as its own (CaUsedAsEndEntity); it must \
                 serve a certificate that CA issued, not the CA's certificate itself"
                    .to_owned()
            }
            _ => format!("the server's certificate is refused: {other}"),
        },
        other => format!("the server's certificate is refused: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A connector error as hyper-util builds them (its type is private): a message, and the
    /// cause as its source.
    #[derive(Debug)]
    struct Connector {
        msg: &'static str,
        cause: Box<dyn StdError + Send + Sync>,
    }

    impl fmt::Display for Connector {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.msg)
        }
    }

    impl StdError for Connector {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&*self.cause)
        }
    }

    /// hyper-util's client error: "client error (Connect)", the connector's error as source.
    #[derive(Debug)]
    struct ClientError(Box<dyn StdError + Send + Sync>);

    impl fmt::Display for ClientError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("client error (Connect)")
        }
    }

    impl StdError for ClientError {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&*self.0)
        }
    }

    const URL: &str = "https://ca.example:14000/dir";

    fn message(error: impl StdError + 'static, roots: Roots) -> String {
        Unanswered::new(URL, "ca.example", roots, true, &error).to_string()
    }

    /// What hyper-rustls hands on after a failed handshake: tokio-rustls's `io::Error`
    /// (InvalidData, the rustls error inside) wrapped in `io::Error::other`.
    fn tls(error: rustls::Error) -> ClientError {
        let inner = io::Error::new(io::ErrorKind::InvalidData, error);
        ClientError(Box::new(io::Error::other(inner)))
    }

    #[test]
    fn a_refused_connection_says_so() {
        let error = ClientError(Box::new(Connector {
            msg: "tcp connect error",
            cause: Box::new(io::Error::from(io::ErrorKind::ConnectionRefused)),
        }));
        let got = Unanswered::new(URL, "ca.example", Roots::System, true, &error);
        assert_eq!(got.cause(), &Cause::Refused);
        assert_eq!(
            got.to_string(),
            "cannot connect to https://ca.example:14000/dir: connection refused"
        );
    }

    #[test]
    fn a_failed_lookup_names_the_host_and_the_resolvers_answer() {
        let error = ClientError(Box::new(Connector {
            msg: "dns error",
            cause: Box::new(io::Error::other(
                "failed to lookup address information: Name or service not known",
            )),
        }));
        assert_eq!(
            message(error, Roots::System),
            "cannot connect to https://ca.example:14000/dir: DNS lookup of ca.example failed: \
             Name or service not known"
        );
    }

    #[test]
    fn an_untrusted_certificate_points_at_the_roots_in_use() {
        let unknown = || rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert_eq!(
            message(tls(unknown()), Roots::Configured),
            "cannot connect to https://ca.example:14000/dir: TLS: the server's certificate is \
             not trusted (unknown issuer); is acme.ca_roots the CA that signed it?"
        );
        let system = message(tls(unknown()), Roots::System);
        assert!(system.contains("set acme.ca_roots"), "{system}");
    }

    #[test]
    fn the_ca_certificate_served_as_the_servers_own_is_named() {
        let error = rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
            Arc::new(webpki::Error::CaUsedAsEndEntity),
        )));
        let got = message(tls(error), Roots::Configured);
        assert!(
            got.contains("TLS: the server presents a CA certificate as its own"),
            "{got}"
        );
    }

    #[test]
    fn other_certificate_faults_say_what_is_wrong() {
        let cases = [
            (
                CertificateError::BadEncoding,
                "cannot be parsed (bad encoding)",
            ),
            (
                CertificateError::NotValidForNameContext {
                    expected: rustls_pki_types::ServerName::try_from("ca.example").unwrap(),
                    presented: vec!["pebble".into(), "localhost".into()],
                },
                "not valid for ca.example (it names pebble, localhost)",
            ),
            (
                CertificateError::ExpiredContext {
                    time: rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(10)),
                    not_after: rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(0)),
                },
                "expired at 1970-01-01T00:00:00Z",
            ),
        ];
        for (error, expected) in cases {
            let got = message(tls(rustls::Error::InvalidCertificate(error)), Roots::System);
            assert!(got.contains(expected), "{got}");
        }
    }

    #[test]
    fn plain_http_on_a_tls_port_is_recognised() {
        let error = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        let got = message(tls(error), Roots::System);
        assert!(got.contains("does it serve plain HTTP"), "{got}");
    }

    #[test]
    fn anything_else_keeps_every_message_once() {
        let error = ClientError(Box::new(Connector {
            msg: "tcp connect error",
            cause: Box::new(io::Error::from(io::ErrorKind::NetworkUnreachable)),
        }));
        let got = message(error, Roots::System);
        assert_eq!(
            got,
            "cannot connect to https://ca.example:14000/dir: network unreachable"
        );
        #[derive(Debug)]
        struct Closed;
        impl fmt::Display for Closed {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("connection closed before message completed")
            }
        }
        impl StdError for Closed {}
        let got = Unanswered::new(URL, "ca.example", Roots::System, false, &Closed).to_string();
        assert_eq!(
            got,
            "request to https://ca.example:14000/dir failed: connection closed before message \
             completed"
        );
        assert_eq!(
            Unanswered::timed_out(URL, Duration::from_secs(30)).to_string(),
            "no answer from https://ca.example:14000/dir within 30s"
        );
    }
}
