//! A routed request on its way to the route's pool and back, in four parts that each can be
//! tested alone:
//!
//! 1. [`prepare`]: the upstream request's head from the client's (path rewrite, forwarding and
//!    hop-by-hop headers, header rules, an Upgrade passed on).
//! 2. [`Deadline`]: how long the upstream has: a response head within the route's timeout of
//!    the end of the upload, or for a gRPC call its `grpc-timeout` capped by the route's.
//! 3. [`Proxy::attempts`]: the request sent within the circuit breakers and the deadline, and
//!    sent again to another upstream when that is safe; each failure read once ([`Failure`]).
//! 4. [`Proxy::client_response`]: the upstream's response made the client's (hop-by-hop headers,
//!    header rules, a switched protocol tunnelled, the body watched).

use std::time::Duration;

use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, Uri, Version, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::body::{ClientBodyError, Side, Upload, Watched};
use super::{ClientConn, Outcome, Peer, Proxy, ProxyError, RequestGuards, ResponseBody};
use super::{headers, rules, tunnel};
use crate::convert::Rewrite;
use crate::runtime::{Pool, Route, Runtime, Site};
use crate::upstreams::{CircuitOpen, Outstanding, PoolError, PooledBody, Upstream, empty_body};

/// The upstream request's head, kept for every attempt.
#[derive(Debug)]
pub(super) struct Prepared {
    pub method: Method,
    pub target: PathAndQuery,
    pub headers: HeaderMap,
    /// The client asked for trailers (`te: trailers`): HTTP/2 upstreams get it (gRPC).
    pub te_trailers: bool,
    /// The client's HTTP version, which the response goes back in.
    pub client_version: Version,
}

/// The upstream request's head from the client's `parts`, for `route`'s `pool`.
pub(super) fn prepare(
    mut parts: Parts,
    route: &Route,
    pool: &Pool,
    host: &str,
    peer: &Peer<'_>,
    upgrade: Option<http::HeaderValue>,
) -> Result<Prepared, ProxyError> {
    let mut headers = std::mem::take(&mut parts.headers);
    // HTTP/2 carries the host in :authority; an HTTP/1.1 upstream needs it as Host.
    if !headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(value) = http::HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, value);
    }
    let target = match parts.uri.path_and_query() {
        // The prefix matched the routing view; when the path as it came does not start with
        // it too (`/api;x` or `//api` for `/api/`), cutting it off would cut in the wrong
        // place.
        Some(original)
            if !matches!(pool.rewrite, Rewrite::Keep)
                && !original.path().starts_with(route.path_prefix.as_str()) =>
        {
            return Err(ProxyError::BadRequest(
                "a path with ';' parameters or '//' on a route that rewrites it",
            ));
        }
        Some(original) => rules::rewrite(&pool.rewrite, &route.path_prefix, original).ok_or(
            ProxyError::BadRequest("the rewritten path would leave its target"),
        )?,
        None => PathAndQuery::from_static("/"),
    };
    // gRPC needs `te: trailers` to reach an HTTP/2 upstream (it is hop-by-hop otherwise).
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
    headers::prepare_upstream_request(&mut headers, host, peer);
    rules::apply(
        &mut headers,
        &pool.request_headers,
        &rules::Fill { peer, host },
    );
    if let Some(protocol) = upgrade {
        headers::restore_upgrade(&mut headers, protocol);
    }
    Ok(Prepared {
        method: parts.method,
        target,
        headers,
        te_trailers,
        client_version: parts.version,
    })
}

/// How long the upstream has to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Deadline {
    /// A response head within this of the end of the request body.
    Head(Duration),
    /// A gRPC call: over at this instant (its `grpc-timeout`, capped by the route's timeout;
    /// `None`: the client set none, and a quiet stream may last). No head timeout applies.
    Call(Option<Instant>),
}

impl Deadline {
    /// The deadline of a request with `headers`, on a route whose timeout is `route_timeout`.
    /// Only a gRPC call that can be one (HTTP/2 from the client, to upstreams that may speak
    /// it) is let off the head timeout: a content type alone must not lift a plain route's
    /// timeouts.
    pub(super) fn of(headers: &HeaderMap, grpc: bool, route_timeout: Duration) -> Deadline {
        if !grpc {
            return Deadline::Head(route_timeout);
        }
        let Some(value) = headers.get("grpc-timeout") else {
            return Deadline::Call(None);
        };
        // A malformed value: the route's timeout, as for a client that asked more than it.
        let asked = grpc_timeout(value.as_bytes()).unwrap_or(route_timeout);
        Deadline::Call(Some(Instant::now() + asked.min(route_timeout)))
    }

    /// When the response head must have come.
    async fn head(self, upload: Option<&Upload>) {
        match self {
            Deadline::Head(timeout) => match upload {
                Some(upload) => upload.upstream_deadline(timeout).await,
                None => tokio::time::sleep(timeout).await,
            },
            Deadline::Call(Some(at)) => tokio::time::sleep_until(at).await,
            Deadline::Call(None) => std::future::pending().await,
        }
    }

    /// The timeout a 504 names.
    fn timeout(self) -> Duration {
        match self {
            Deadline::Head(timeout) => timeout,
            Deadline::Call(at) => at.map_or(Duration::ZERO, |at| {
                at.saturating_duration_since(Instant::now())
            }),
        }
    }
}

/// A `grpc-timeout` value (gRPC over HTTP/2: 1 to 8 digits and a unit, H M S m u n).
pub(super) fn grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Why an attempt failed, read once from the pool's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// The request body passed the route's limit: the client's doing.
    BodyLimit,
    /// The client's request body stalled, fell behind its minimum rate, or broke.
    ClientBody(ClientFault),
    /// A circuit breaker refused the connection.
    CircuitOpen(&'static str),
    /// No connection could be made: nothing reached the upstream.
    Connect,
    /// The exchange failed after the request (or part of it) went out.
    Exchange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClientFault {
    Timeout,
    Broken,
}

impl Failure {
    /// Walks `e`'s causes once.
    pub(super) fn of(e: &PoolError) -> Failure {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = source {
            if err.is::<LengthLimitError>() {
                return Failure::BodyLimit;
            }
            if let Some(fault) = err.downcast_ref::<ClientBodyError>() {
                return Failure::ClientBody(match fault {
                    ClientBodyError::Timeout(_) | ClientBodyError::TooSlow(_) => {
                        ClientFault::Timeout
                    }
                    ClientBodyError::Read(_) => ClientFault::Broken,
                });
            }
            if let Some(open) = err.downcast_ref::<CircuitOpen>() {
                return Failure::CircuitOpen(open.limit);
            }
            source = err.source();
        }
        if e.is_connect() {
            Failure::Connect
        } else {
            Failure::Exchange
        }
    }
}

/// The answer an attempt got, and what it holds until the response body ends.
pub(super) struct Answered<'r> {
    pub response: Response<PooledBody>,
    pub upstream: &'r Upstream,
    pub outstanding: Outstanding,
}

impl Proxy {
    /// Sends the prepared request to the pool's upstreams: one, and on a failure that is safe
    /// to retry the next, up to the pool's `retries`.
    #[allow(clippy::too_many_arguments, reason = "the parts of one request")]
    pub(super) async fn attempts<'r>(
        &self,
        site: &Site,
        pool: &'r Pool,
        route: &Route,
        prepared: &mut Prepared,
        body: Incoming,
        activity: &std::sync::Arc<super::Activity>,
        deadline: Deadline,
        runtime: &Runtime,
        out: &mut Outcome<'r>,
    ) -> Result<Answered<'r>, ProxyError> {
        // Only a request whose body is known to be empty can be sent again: nothing of it is
        // lost with the first attempt.
        let bodiless = hyper::body::Body::is_end_stream(&body);
        let idempotent = matches!(
            prepared.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        let limit = usize::try_from(route.body_limit_bytes).unwrap_or(usize::MAX);
        // Only a request with a body has an upload to follow, and a body to watch and limit
        // (nothing allocated for the rest).
        let upload = (!bodiless).then(Upload::new);
        let mut body = upload.as_ref().map(|upload| {
            let watched = Watched::new(
                body,
                runtime.limits.request_body_timeout,
                Side::Client,
                self.metrics.clone(),
            )
            // A gRPC call's request body is a stream, not an upload: its deadline bounds it.
            .min_rate(match deadline {
                Deadline::Head(_) => runtime.limits.request_body_min_rate,
                Deadline::Call(_) => None,
            })
            .report_to(upload.clone(), activity.body_open());
            Limited::new(watched, limit).boxed()
        });
        let mut tried = Vec::new();
        let mut last_error = None;
        loop {
            let Some((index, upstream)) = pool.pick(&tried) else {
                return Err(last_error.unwrap_or(ProxyError::NoHealthyUpstream));
            };
            if !tried.is_empty() {
                self.metrics.retried(&site.name);
            }
            tried.push(index);
            let name = upstream.name.as_str();
            out.upstream = Some(name);
            let mut request = Request::new(body.take().unwrap_or_else(empty_body));
            *request.method_mut() = prepared.method.clone();
            *request.uri_mut() = Uri::from(prepared.target.clone());
            *request.version_mut() = Version::HTTP_11;
            // Keep the headers only while another attempt could still need them (the common
            // request, with a body or without retries, moves them instead of copying).
            let may_retry = bodiless && tried.len() <= pool.retries as usize;
            *request.headers_mut() = if may_retry {
                prepared.headers.clone()
            } else {
                std::mem::take(&mut prepared.headers)
            };
            if prepared.te_trailers && upstream.may_speak_h2() {
                // The pool takes it out again should the connection be HTTP/1.1.
                request
                    .headers_mut()
                    .insert(header::TE, http::HeaderValue::from_static("trailers"));
            }
            let outstanding = upstream.start().map_err(|open| ProxyError::CircuitOpen {
                upstream: name.to_owned(),
                limit: open.limit,
            })?;
            let reached = std::sync::atomic::AtomicBool::new(false);
            let sent = tokio::select! {
                sent = upstream.pool.send(request, &reached) => sent,
                () = deadline.head(upload.as_deref()) => {
                    // Still waiting for a connection (the breaker's max_connections, a dial
                    // others wait on): an overflow, not the upstream's failure.
                    if !reached.load(std::sync::atomic::Ordering::Relaxed) {
                        return Err(ProxyError::CircuitOpen {
                            upstream: name.to_owned(),
                            limit: "max_connections",
                        });
                    }
                    // The request may be in progress there: never sent twice. A gRPC call's
                    // own deadline is the client's choice, not the upstream's failure.
                    if matches!(deadline, Deadline::Head(_)) {
                        upstream.failed(pool.passive);
                    }
                    self.metrics.timed_out("upstream_response");
                    return Err(ProxyError::UpstreamTimeout {
                        upstream: name.to_owned(),
                        timeout: deadline.timeout(),
                    });
                }
            };
            let e = match sent {
                Ok(response) => {
                    upstream.succeeded();
                    // Outstanding until the response body ends (issue 19 #13: streaming
                    // responses were invisible to least-requests and max_requests).
                    return Ok(Answered {
                        response,
                        upstream,
                        outstanding,
                    });
                }
                Err(e) => e,
            };
            let error = match Failure::of(&e) {
                // Not the upstream's fault, and not worth another upstream.
                Failure::BodyLimit => {
                    return Err(ProxyError::PayloadTooLarge {
                        limit: route.body_limit_bytes,
                    });
                }
                Failure::ClientBody(ClientFault::Timeout) => {
                    return Err(ProxyError::RequestBodyTimeout(super::error_chain(&e)));
                }
                Failure::ClientBody(ClientFault::Broken) => {
                    return Err(ProxyError::BadRequestBody(super::error_chain(&e)));
                }
                Failure::CircuitOpen(limit) => {
                    return Err(ProxyError::CircuitOpen {
                        upstream: name.to_owned(),
                        limit,
                    });
                }
                failure @ (Failure::Connect | Failure::Exchange) => {
                    upstream.failed(pool.passive);
                    if let Some((reason, text)) = e.tls_failure() {
                        upstream.tls_failed(reason, text);
                    }
                    let connect = failure == Failure::Connect;
                    let error = if connect {
                        ProxyError::UpstreamUnreachable {
                            upstream: name.to_owned(),
                            reason: super::error_chain(&e),
                        }
                    } else {
                        ProxyError::UpstreamFailed {
                            upstream: name.to_owned(),
                            reason: super::error_chain(&e),
                        }
                    };
                    if !(bodiless && (connect || idempotent)) {
                        return Err(error);
                    }
                    error
                }
            };
            tracing::debug!(error = %error, "upstream attempt failed");
            if tried.len() > pool.retries as usize {
                return Err(error);
            }
            last_error = Some(error);
        }
    }

    /// The upstream's response, made the client's; its body holds `guards` and the upstream's
    /// outstanding count until it ends.
    #[allow(clippy::too_many_arguments, reason = "the parts of one response")]
    pub(super) fn client_response(
        &self,
        answered: Answered<'_>,
        client_side: Option<hyper::upgrade::OnUpgrade>,
        prepared: &Prepared,
        pool: &Pool,
        fill: &rules::Fill<'_>,
        deadline: Deadline,
        runtime: &Runtime,
        conn: &ClientConn,
        guards: Option<RequestGuards>,
    ) -> Response<ResponseBody> {
        let Answered {
            mut response,
            upstream,
            outstanding,
        } = answered;
        let switched = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        let switched_to = switched
            .then(|| headers::upgrade_protocol(&response))
            .flatten();
        if let (Some(client_side), Some(_)) = (client_side, &switched_to) {
            let upstream_side = hyper::upgrade::on(&mut response);
            self.tunnels.spawn(tunnel::run(
                client_side,
                upstream_side,
                upstream.name.clone(),
                conn.permit.clone(),
                runtime.limits.tunnel_idle_timeout,
                self.metrics.clone(),
            ));
        }
        let (mut parts, body) = response.into_parts();
        // hyper decoded a body that came with both framings by Transfer-Encoding (RFC 9112
        // §6.3): its Content-Length is wrong, and passing it on would truncate the body.
        if parts.headers.contains_key(header::TRANSFER_ENCODING) {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        headers::strip_hop_by_hop(&mut parts.headers);
        if let Some(protocol) = switched_to {
            headers::restore_upgrade(&mut parts.headers, protocol);
        }
        rules::apply(&mut parts.headers, &pool.response_headers, fill);
        parts.version = prepared.client_version;
        let mut body = Watched::new(
            body,
            runtime.limits.upstream_body_timeout,
            Side::Upstream,
            self.metrics.clone(),
        );
        if let Deadline::Call(at) = deadline {
            body = body.grpc_call(at);
        }
        let body = body.holding(guards).counting(outstanding);
        Response::from_parts(parts, body.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_bad_ones_are_refused() {
        assert_eq!(grpc_timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(grpc_timeout(b"3M"), Some(Duration::from_secs(180)));
        assert_eq!(grpc_timeout(b"10S"), Some(Duration::from_secs(10)));
        assert_eq!(grpc_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            grpc_timeout(b"99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(grpc_timeout(b"5n"), Some(Duration::from_nanos(5)));
        for bad in [
            &b""[..],
            b"S",
            b"123456789S",
            b"10s",
            b"-1S",
            b"1.5S",
            b"10",
        ] {
            assert_eq!(
                grpc_timeout(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_grpc_call_s_deadline_is_its_timeout_capped_by_the_route_s_and_plain_requests_keep_the_head_timeout()
     {
        let route = Duration::from_secs(60);
        let mut headers = HeaderMap::new();
        assert_eq!(Deadline::of(&headers, false, route), Deadline::Head(route));
        assert_eq!(Deadline::of(&headers, true, route), Deadline::Call(None));
        headers.insert("grpc-timeout", http::HeaderValue::from_static("100m"));
        let Deadline::Call(Some(at)) = Deadline::of(&headers, true, route) else {
            panic!("a deadline");
        };
        assert!(at <= Instant::now() + Duration::from_millis(100));
        headers.insert("grpc-timeout", http::HeaderValue::from_static("2H"));
        let Deadline::Call(Some(at)) = Deadline::of(&headers, true, route) else {
            panic!("a deadline");
        };
        assert!(at <= Instant::now() + route, "capped by the route's");
        assert!(at > Instant::now() + Duration::from_secs(59));
    }
}
