//! The request path: normalize the path, route by host, HTTPS rules (421, redirect to
//! https://), rate limit, body limit, forward to the site's upstream within its circuit breakers,
//! and tell the client's faults from the upstream's.

mod activity;
mod body;
mod error;
mod forward;
mod headers;
mod path;
mod respond;
mod rules;
mod tunnel;

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, Uri, header};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;

pub use activity::{ActiveRequest, Activity, BodyOpen, Due};
pub use error::ProxyError;

use crate::convert::Answer;
use crate::gate::Permit;
use crate::metrics::Metrics;
use crate::runtime::{Action, Route, Runtime, Site};
use crate::tls::Session;
use forward::Deadline;

pub use crate::upstreams::BoxError;
pub type ResponseBody = BoxBody<Bytes, BoxError>;

/// What the request path decided, for the access log and metrics, whether it ended in a
/// response or an error. Borrowed from the runtime the request holds: nothing is copied.
#[derive(Debug, Default)]
struct Outcome<'r> {
    site: Option<&'r Site>,
    /// The matched route's path prefix.
    route: Option<&'r str>,
    /// The last upstream tried.
    upstream: Option<&'r str>,
}

/// What a request holds until its response body ends: its place in `proxy_requests_in_flight`
/// and on its connection (whose idle timeout waits for it).
pub type RequestGuards = (crate::metrics::InFlight, ActiveRequest);

/// Paths that ACME HTTP-01 validation requests use: answered from the runtime's pending
/// challenges, never redirected to https://.
const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The client connection a request came on.
pub struct ClientConn {
    pub peer: SocketAddr,
    /// On a TLS listener: what the handshake settled. `None` on plain listeners.
    pub tls: Option<Session>,
    /// Requests in progress on the connection (its idle timeout reads it).
    pub activity: Arc<Activity>,
    /// Its place under the connection caps; an Upgrade tunnel keeps it.
    pub permit: Arc<Permit>,
}

/// Who sent a request, as the request path needs it.
pub struct Peer<'a> {
    /// The TCP peer.
    pub addr: SocketAddr,
    /// The client: the peer, or behind a trusted proxy the address it forwarded for.
    pub client: std::net::IpAddr,
    /// The peer is a configured trusted proxy: its forwarding headers are kept.
    pub trusted: bool,
    pub request_id: &'a http::HeaderValue,
    /// The request came over TLS (`X-Forwarded-Proto: https`).
    pub https: bool,
}

/// The HTTP handler every listener shares.
pub struct Proxy {
    runtime: Arc<ArcSwap<Runtime>>,
    metrics: Arc<Metrics>,
    /// proxyd has a TLS listener: plain-HTTP requests for sites with a certificate are
    /// redirected to it. Follows the listeners of each snapshot.
    https_listener: std::sync::atomic::AtomicBool,
    /// Open tunnels: a drain waits for them up to its deadline (the connections that carried
    /// them are gone from the listeners' count once upgraded).
    tunnels: tokio_util::task::TaskTracker,
}

impl Proxy {
    pub fn new(
        runtime: Arc<ArcSwap<Runtime>>,
        metrics: Arc<Metrics>,
        https_listener: bool,
        tunnels: tokio_util::task::TaskTracker,
    ) -> Proxy {
        Proxy {
            runtime,
            metrics,
            https_listener: std::sync::atomic::AtomicBool::new(https_listener),
            tunnels,
        }
    }

    /// Whether a TLS listener serves now (after a snapshot changed the listeners).
    pub fn set_https_listener(&self, present: bool) {
        self.https_listener
            .store(present, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether `ip` is a trusted proxy in the runtime serving now (not capped per address).
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        self.runtime.load().is_trusted(ip)
    }

    /// Answers one request; never fails: errors become responses in `ProxyError::into_response`.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        conn: &ClientConn,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let mut guards = Some((self.metrics.in_flight(), conn.activity.request_started()));
        // One load per request. `load_full` (an Arc) rather than a guard because the request
        // awaits the upstream while holding it.
        let runtime = self.runtime.load_full();
        let method = req.method().clone();
        // Copied only when the access log will print it.
        let path = tracing::enabled!(target: "access", tracing::Level::INFO)
            .then(|| req.uri().path().to_owned());
        let trusted = runtime.is_trusted(conn.peer.ip());
        // Behind a trusted load balancer, the client its X-Forwarded-For names.
        let client = match trusted {
            false => conn.peer.ip().to_canonical(),
            true => {
                headers::client_address(req.headers(), conn.peer.ip(), |ip| runtime.is_trusted(ip))
            }
        };
        let request_id = headers::request_id(req.headers(), trusted);
        // A gRPC client gets proxyd's own failures as gRPC statuses.
        let grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let peer = Peer {
            addr: conn.peer,
            client,
            trusted,
            request_id: &request_id,
            https: conn.tls.is_some(),
        };
        let mut out = Outcome::default();
        let forwarded = self
            .forward(&runtime, req, &peer, conn, grpc, &mut out, &mut guards)
            .await;
        let site_name = out.site.map(|s| s.name.as_str());
        // A gRPC client gets proxyd's failures as HTTP 200 with a grpc-status: counted as the
        // 5xx they are in the totals a canary is judged on.
        let mut grpc_failure = false;
        let mut response = match forwarded {
            Ok(r) => r,
            Err(e) => {
                grpc_failure = grpc && e.status().is_server_error();
                if let Some(failure) = e.counted() {
                    self.metrics.request_failed(site_name, failure);
                }
                match &e {
                    ProxyError::UpstreamUnreachable { .. }
                    | ProxyError::UpstreamFailed { .. }
                    | ProxyError::UpstreamTimeout { .. } => {
                        tracing::warn!(error = %e, "upstream request failed");
                    }
                    ProxyError::CircuitOpen { upstream, limit } => {
                        self.metrics.upstream_overflow(upstream, limit);
                        tracing::warn!(error = %e, "upstream circuit breaker open");
                    }
                    _ => {}
                }
                // A 421 stays one for gRPC too: browsers retry grpc-web on a 421 only.
                if grpc && !matches!(e, ProxyError::MisdirectedRequest { .. }) {
                    e.into_grpc_response(&request_id)
                } else {
                    e.into_response(&request_id)
                }
            }
        };
        let Outcome {
            site,
            route,
            upstream,
        } = out;
        let elapsed = started.elapsed();
        match site {
            Some(site) => {
                self.metrics.count_response(if grpc_failure {
                    http::StatusCode::BAD_GATEWAY
                } else {
                    response.status()
                });
                site.metrics
                    .request_finished(&self.metrics, &site.name, response.status(), elapsed)
            }
            None => self
                .metrics
                .request_finished(None, response.status(), elapsed),
        }
        response
            .headers_mut()
            .insert(headers::X_REQUEST_ID, request_id);
        tracing::info!(
            target: "access",
            request_id = response.headers().get(headers::X_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-"),
            %client,
            %method,
            path = path.as_deref().unwrap_or("-"),
            site = site_name.unwrap_or("-"),
            route = route.unwrap_or("-"),
            upstream = upstream.unwrap_or("-"),
            status = response.status().as_u16(),
            // Known when the upstream sent Content-Length, and for proxyd's own answers.
            bytes = hyper::body::Body::size_hint(response.body()).exact(),
            duration_ms = elapsed.as_millis() as u64,
            config_version = runtime.version,
        );
        match guards {
            // Proxied: the response body holds them already.
            None => response,
            Some(guards) => crate::metrics::until_body_ends(guards, response),
        }
    }

    /// Routes `req` and answers it: proxyd's own answer, or the upstream's (whose body takes
    /// `guards`).
    #[allow(clippy::too_many_arguments, reason = "the parts of one request")]
    async fn forward<'r>(
        &self,
        runtime: &'r Runtime,
        mut req: Request<Incoming>,
        peer: &Peer<'_>,
        conn: &ClientConn,
        grpc: bool,
        out: &mut Outcome<'r>,
        guards: &mut Option<RequestGuards>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        if req.method() == http::Method::CONNECT {
            // Not a forward proxy: nothing outside the config is ever dialed.
            return Err(ProxyError::ConnectRefused);
        }
        normalize_path(&mut req, runtime)?;
        // ACME HTTP-01 validation, on plain-HTTP listeners only, for whatever Host: the token
        // is the secret, and the CA's validator may ask before the site exists in routing.
        if conn.tls.is_none()
            && matches!(*req.method(), http::Method::GET | http::Method::HEAD)
            && let Some(token) = req.uri().path().strip_prefix(ACME_CHALLENGE_PREFIX)
            && let Some(answer) = runtime.http_challenge(token)
        {
            return Ok(respond::challenge(&answer));
        }
        let host = headers::request_host(&req)?;
        let site = runtime.site(&host).ok_or(ProxyError::UnknownHost)?;
        out.site = Some(site);
        if let Some(redirect) = self.https_rules(runtime, site, &host, &req, conn)? {
            return Ok(redirect);
        }
        let route = route(site, &req, peer)?;
        out.route = Some(&route.path_prefix);
        check_content_length(&req, route.body_limit_bytes)?;
        let pool = match &route.action {
            Action::Proxy(pool) => pool,
            Action::Answer(Answer::Redirect { location, status }) => {
                return Ok(respond::redirect(location, *status, &req, peer.https));
            }
            Action::Answer(Answer::Respond {
                status,
                body,
                headers,
            }) => {
                return Ok(respond::fixed(*status, body, headers));
            }
        };
        // An HTTP/1.1 Upgrade (WebSocket, ...) is passed on, and tunnelled once the upstream
        // switches protocols.
        let upgrade = headers::upgrade_protocol(&req);
        let client_side = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let grpc_call = grpc && parts.version == http::Version::HTTP_2 && pool.may_speak_h2();
        let deadline = Deadline::of(&parts.headers, grpc_call, pool.upstream_response_timeout);
        let mut prepared = forward::prepare(parts, route, pool, &host, peer, upgrade)?;
        let answered = self
            .attempts(
                site,
                pool,
                route,
                &mut prepared,
                body,
                &conn.activity,
                deadline,
                runtime,
                out,
            )
            .await?;
        let fill = rules::Fill { peer, host: &host };
        Ok(self.client_response(
            answered,
            client_side,
            &prepared,
            pool,
            &fill,
            deadline,
            runtime,
            conn,
            guards.take(),
        ))
    }
}

/// The route `req` takes, within its rate limit: a route's own limit replaces the site's (a
/// request no route takes counts against the site's).
fn route<'r, B>(
    site: &'r Site,
    req: &Request<B>,
    peer: &Peer<'_>,
) -> Result<&'r Route, ProxyError> {
    // Routed as a servlet container or a path-merging server would resolve it: without `;`
    // segment parameters and with `//` merged, so that `/private;x/secret` or `//admin` cannot
    // pass a route that blocks `/private/` or `/admin`. Forwarded as it came.
    let view = path::routing_view(req.uri().path());
    let route = site.route(
        req.method(),
        view.as_deref().unwrap_or(req.uri().path()),
        req.headers(),
    );
    if let Some(limiter) = route
        .and_then(|r| r.limiter.as_ref())
        .or(site.limiter.as_ref())
    {
        limiter
            .check(peer.client)
            .map_err(|retry_after| ProxyError::RateLimited { retry_after })?;
    }
    route.ok_or(ProxyError::NoRoute)
}

/// Routes and forwards on the normalized path ([`path`]): the request's URI is rewritten to it,
/// query unchanged; a path that cannot be normalized safely is a 400.
fn normalize_path<B>(req: &mut Request<B>, runtime: &Runtime) -> Result<(), ProxyError> {
    let normalized = match path::normalize(req.uri().path(), runtime.paths) {
        Ok(std::borrow::Cow::Borrowed(_)) => return Ok(()),
        Ok(std::borrow::Cow::Owned(p)) => p,
        Err(e) => return Err(ProxyError::BadRequest(e.reason())),
    };
    let target = match req.uri().query() {
        Some(query) => format!("{normalized}?{query}"),
        None => normalized,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(
        target
            .parse()
            .map_err(|_| ProxyError::BadRequest("invalid request target"))?,
    );
    *req.uri_mut() =
        Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("invalid request target"))?;
    Ok(())
}

impl Proxy {
    /// Before anything else of the site: a request on a TLS connection must be for the site
    /// whose certificate the connection got (else 421, so that a client that reused the
    /// connection for another name opens a new one), and a plain-HTTP request for a site with
    /// a certificate is redirected to https:// (308) when proxyd has a TLS listener, the site
    /// did not opt out, and it is not an ACME challenge.
    fn https_rules<B>(
        &self,
        runtime: &Runtime,
        site: &Site,
        host: &str,
        req: &Request<B>,
        conn: &ClientConn,
    ) -> Result<Option<Response<ResponseBody>>, ProxyError> {
        if let Some(session) = &conn.tls {
            if session.site != site.name {
                return Err(ProxyError::MisdirectedRequest {
                    connection_site: session.site.clone(),
                });
            }
            return Ok(None);
        }
        // Only a challenge pending now may skip the redirect: anything else under the ACME
        // prefix is an ordinary request for the site.
        let pending_challenge = req
            .uri()
            .path()
            .strip_prefix(ACME_CHALLENGE_PREFIX)
            .is_some_and(|token| runtime.http_challenge(token).is_some());
        let redirect = self
            .https_listener
            .load(std::sync::atomic::Ordering::Relaxed)
            && site.https_redirect
            && site.certificate.is_some()
            && !pending_challenge;
        Ok(redirect.then(|| respond::to_https(host, req)))
    }
}

/// 413 before any upstream contact when the declared length is already too large.
fn check_content_length(req: &Request<Incoming>, limit: u64) -> Result<(), ProxyError> {
    let Some(value) = req.headers().get(header::CONTENT_LENGTH) else {
        return Ok(());
    };
    // hyper has already rejected malformed or conflicting Content-Length headers.
    let length = value
        .to_str()
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or(ProxyError::BadRequest("invalid Content-Length"))?;
    if length > limit {
        return Err(ProxyError::PayloadTooLarge { limit });
    }
    Ok(())
}

fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = err.source();
    }
    text
}
