//! Every per-request failure becomes its HTTP response here, and only here.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use super::ResponseBody;

/// Why a request was answered by proxyd itself instead of an upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("no site serves this host")]
    UnknownHost,
    #[error("no route of the site matches this path")]
    NoRoute,
    #[error("CONNECT is not supported: proxyd is not a forward proxy")]
    ConnectRefused,
    #[error("rate limited")]
    RateLimited { retry_after: Duration },
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    /// The client stopped sending its request body.
    #[error("request body timeout: {0}")]
    RequestBodyTimeout(String),
    /// The client's request body was malformed or cut short.
    #[error("bad request body: {0}")]
    BadRequestBody(String),
    /// A circuit breaker of the upstream refused the request.
    #[error("upstream {upstream}: circuit breaker open ({limit})")]
    CircuitOpen {
        upstream: String,
        limit: &'static str,
    },
    #[error("upstream {upstream} unreachable: {reason}")]
    UpstreamUnreachable { upstream: String, reason: String },
    #[error("upstream {upstream} failed: {reason}")]
    UpstreamFailed { upstream: String, reason: String },
    #[error("no upstream of the route is healthy")]
    NoHealthyUpstream,
    #[error("upstream {upstream} did not answer within {timeout:?}")]
    UpstreamTimeout { upstream: String, timeout: Duration },
    /// The request's host belongs to another site than the certificate of its TLS connection.
    #[error("this connection's certificate is for site {connection_site}, not this host")]
    MisdirectedRequest { connection_site: String },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) | ProxyError::BadRequestBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::RequestBodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::CircuitOpen { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UnknownHost | ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::MisdirectedRequest { .. } => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::ConnectRefused => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NoHealthyUpstream => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UpstreamUnreachable { .. } | ProxyError::UpstreamFailed { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The failure's own counter, when it has one (the rest are counted by
    /// `proxy_requests_total` alone).
    pub fn counted(&self) -> Option<crate::metrics::Failure> {
        use crate::metrics::Failure;
        Some(match self {
            ProxyError::RateLimited { .. } => Failure::RateLimited,
            ProxyError::PayloadTooLarge { .. } => Failure::BodyTooLarge,
            ProxyError::UpstreamUnreachable { .. } => Failure::Upstream("unreachable"),
            ProxyError::UpstreamFailed { .. } => Failure::Upstream("failed"),
            ProxyError::UpstreamTimeout { .. } => Failure::Upstream("timeout"),
            _ => return None,
        })
    }

    /// The gRPC status code that says the same to a gRPC client.
    pub fn grpc_status(&self) -> u8 {
        const INTERNAL: u8 = 13;
        const UNIMPLEMENTED: u8 = 12;
        const RESOURCE_EXHAUSTED: u8 = 8;
        const DEADLINE_EXCEEDED: u8 = 4;
        const UNAVAILABLE: u8 = 14;
        match self {
            ProxyError::BadRequest(_) | ProxyError::BadRequestBody(_) => INTERNAL,
            ProxyError::UnknownHost | ProxyError::NoRoute | ProxyError::ConnectRefused => {
                UNIMPLEMENTED
            }
            ProxyError::RateLimited { .. } | ProxyError::PayloadTooLarge { .. } => {
                RESOURCE_EXHAUSTED
            }
            ProxyError::RequestBodyTimeout(_) | ProxyError::UpstreamTimeout { .. } => {
                DEADLINE_EXCEEDED
            }
            ProxyError::CircuitOpen { .. }
            | ProxyError::UpstreamUnreachable { .. }
            | ProxyError::UpstreamFailed { .. }
            | ProxyError::NoHealthyUpstream
            | ProxyError::MisdirectedRequest { .. } => UNAVAILABLE,
        }
    }

    /// For a gRPC request: a trailers-only answer (HTTP 200, `grpc-status`, `grpc-message`),
    /// which gRPC clients read as the call's status, instead of a page they cannot parse.
    pub fn into_grpc_response(self, request_id: &HeaderValue) -> Response<ResponseBody> {
        let message = format!(
            "proxyd: {} (request id {})",
            self.status()
                .canonical_reason()
                .unwrap_or("error")
                .to_ascii_lowercase(),
            request_id.to_str().unwrap_or("-")
        );
        let mut response = Response::new(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed(),
        );
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(
            "grpc-status",
            HeaderValue::from(u16::from(self.grpc_status())),
        );
        // Letters, digits, spaces and parentheses: nothing that needs percent-encoding.
        if let Ok(message) = HeaderValue::from_str(&message) {
            headers.insert("grpc-message", message);
        }
        if let ProxyError::RateLimited { retry_after } = self {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }

    /// The response: a short plain-text body naming the request id; upstream details stay in
    /// the log, not on the wire.
    pub fn into_response(self, request_id: &HeaderValue) -> Response<ResponseBody> {
        let status = self.status();
        let what = match &self {
            ProxyError::BadRequest(why) => format!("bad request: {why}"),
            ProxyError::PayloadTooLarge { limit } => {
                format!("request body larger than {limit} bytes")
            }
            _ => status
                .canonical_reason()
                .unwrap_or("error")
                .to_ascii_lowercase(),
        };
        let text = format!(
            "{what} (request id {})\n",
            request_id.to_str().unwrap_or("-")
        );
        let mut response = Response::new(
            Full::new(Bytes::from(text))
                .map_err(|never| match never {})
                .boxed(),
        );
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let ProxyError::RateLimited { retry_after } = self {
            // Round up: a client that waits the advertised seconds is then within its budget.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if matches!(
            status,
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
        ) {
            // The rest of the request may still be on the wire; do not try to read past it.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_rounded_up_to_whole_seconds() {
        let r = ProxyError::RateLimited {
            retry_after: Duration::from_millis(1200),
        }
        .into_response(&HeaderValue::from_static("test-id"));
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        let r = ProxyError::RateLimited {
            retry_after: Duration::from_millis(10),
        }
        .into_response(&HeaderValue::from_static("test-id"));
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn statuses() {
        assert_eq!(
            ProxyError::UnknownHost
                .into_response(&HeaderValue::from_static("test-id"))
                .status(),
            StatusCode::NOT_FOUND
        );
        let e = ProxyError::UpstreamUnreachable {
            upstream: "u".into(),
            reason: "r".into(),
        };
        assert_eq!(
            e.into_response(&HeaderValue::from_static("test-id"))
                .status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            ProxyError::MisdirectedRequest {
                connection_site: "a.example".into()
            }
            .into_response(&HeaderValue::from_static("test-id"))
            .status(),
            StatusCode::MISDIRECTED_REQUEST
        );
        assert_eq!(
            ProxyError::PayloadTooLarge { limit: 1 }
                .into_response(&HeaderValue::from_static("test-id"))
                .status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn grpc_callers_get_the_matching_grpc_status_with_http_200() {
        let id = HeaderValue::from_static("test-id");
        let cases = [
            (ProxyError::NoRoute, "12"),
            (
                ProxyError::RateLimited {
                    retry_after: Duration::from_millis(1),
                },
                "8",
            ),
            (ProxyError::PayloadTooLarge { limit: 1 }, "8"),
            (
                ProxyError::UpstreamTimeout {
                    upstream: "u".into(),
                    timeout: Duration::from_secs(1),
                },
                "4",
            ),
            (ProxyError::NoHealthyUpstream, "14"),
            (
                ProxyError::UpstreamUnreachable {
                    upstream: "u".into(),
                    reason: "refused".into(),
                },
                "14",
            ),
            (ProxyError::BadRequest("x"), "13"),
        ];
        for (error, code) in cases {
            let response = error.into_grpc_response(&id);
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()["content-type"], "application/grpc");
            assert_eq!(response.headers()["grpc-status"], code);
            let message = response.headers()["grpc-message"].to_str().unwrap();
            assert!(message.contains("test-id"), "{message}");
        }
    }
}
