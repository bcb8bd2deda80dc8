//! Egress: local clients to imported services.
//!
//! - `--egress-listen`: HTTP/1.1 and h2c (prior knowledge), the service chosen by
//!   Host/:authority `<svc>.<ns>.svc.clusterset.local[:port]`; `CONNECT <that>:<port>` opens a
//!   TCP tunnel.
//! - one listener per distinct outbound port (with `--vip-range`): the connection's destination
//!   address (a ClusterSetIP delivered by AnyIP) chooses the service; HTTP ports are proxied per
//!   request, other ports as opaque TCP.
//!
//! Each request tries the planned clusters in order ([`route::plan`]): the local cluster
//! directly to its endpoints, others over the pooled peer connection.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use causeway_api::authority::parse_authority;
use causeway_api::ServiceKey;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::body::{self, Body, Guard, Guarded, ReplayBody};
use crate::error::ProxyError;
use crate::proxy::{self, Io, Record};
use crate::resilience::Outlier;
use crate::route::{self, Availability};
use crate::shared::Shared;
use crate::table::{Candidate, Outbound, PortSpec, Tables};
use crate::xfcc;

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// The egress accept loop.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    accept_loop(shared, listener, false).await
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, vip: bool) {
    let what = if vip { "import" } else { "egress" };
    proxy::serve(shared, listener, what, move |shared, stream, remote| {
        handle_connection(shared, stream, remote, vip)
    })
    .await
}

async fn handle_connection(shared: Arc<Shared>, stream: TcpStream, remote: SocketAddr, vip: bool) {
    let fixed = if vip {
        let Ok(local) = stream.local_addr() else {
            return;
        };
        let Some(tables) = shared.tables.load_full() else {
            return;
        };
        let route = tables
            .vips
            .get(&local)
            .or_else(|| tables.port_routes.get(&local.port()))
            .cloned();
        let Some((svc, port)) = route else {
            shared.metrics.refuse("import", "no_service_at_address");
            tracing::debug!(%local, %remote, "no service at this address; closing");
            return;
        };
        if !port.is_http() {
            tcp_by_vip(shared, tables, svc, port, stream).await;
            return;
        }
        // Each request looks the address up again, so it follows config changes.
        Some(local)
    } else {
        None
    };
    // A caller that opens with a TLS handshake gets mTLS; its identity travels in XFCC.
    // A client that connects and says nothing is closed after the header timeout.
    let header_timeout = Duration::from_millis(shared.config.client_header_timeout_ms);
    let mut first = [0u8; 1];
    let peeked = match tokio::time::timeout(header_timeout, stream.peek(&mut first)).await {
        Ok(r) => r,
        Err(_) => {
            tracing::debug!(%remote, "client sent nothing in time; closing");
            return;
        }
    };
    if matches!(peeked, Ok(1) if first[0] == TLS_HANDSHAKE) {
        let Some((tls, caller)) = accept_caller(&shared, stream, remote).await else {
            return;
        };
        serve_http(shared, TokioIo::new(tls), remote, fixed, Some(caller)).await
    } else {
        serve_http(shared, TokioIo::new(stream), remote, fixed, None).await
    }
}

/// The first byte of a TLS ClientHello record.
const TLS_HANDSHAKE: u8 = 0x16;

/// The mTLS handshake of a local caller: a certificate chaining to our bundle, with a SPIFFE
/// ID of our own trust domain. Refusals are counted and logged with the reason.
async fn accept_caller(
    shared: &Shared,
    stream: TcpStream,
    remote: SocketAddr,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, Arc<str>)> {
    let tls = shared.tls.load_full();
    let refuse = |r: crate::tls::Refusal| {
        shared
            .metrics
            .client_handshake_failures
            .with_label_values(&[r.reason])
            .inc();
        tracing::warn!(%remote, reason = r.reason, detail = %r.detail, "caller's TLS connection refused");
    };
    let accept = tokio_rustls::TlsAcceptor::from(tls.egress.clone()).accept(stream);
    let stream = match tokio::time::timeout(shared.tls_handshake_timeout(), accept).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            refuse(crate::tls::classify_handshake_error(&e));
            return None;
        }
        Err(_) => {
            let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out");
            refuse(crate::tls::classify_handshake_error(&e));
            return None;
        }
    };
    let certs = stream.get_ref().1.peer_certificates().unwrap_or_default();
    let id = match causeway_api::tls::peer_spiffe_id(certs) {
        Ok(id) => id,
        Err(e) => {
            refuse(crate::tls::Refusal {
                reason: "no_spiffe_id",
                detail: e.to_string(),
            });
            return None;
        }
    };
    if id.trust_domain() != tls.own_id.trust_domain() {
        refuse(crate::tls::Refusal {
            reason: "foreign_identity",
            detail: format!("{id} is not of trust domain {}", tls.own_id.trust_domain()),
        });
        return None;
    }
    Some((stream, Arc::from(id.to_string())))
}

async fn serve_http<I>(
    shared: Arc<Shared>,
    io: TokioIo<I>,
    remote: SocketAddr,
    fixed: Option<SocketAddr>,
    caller: Option<Arc<str>>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let draining = shared.shutdown.clone();
    let header_timeout = Duration::from_millis(shared.config.client_header_timeout_ms);
    let service = service_fn(move |req| {
        let shared = shared.clone();
        let caller = caller.clone();
        async move {
            // A gRPC caller gets the gateway's own errors as gRPC statuses (UNAVAILABLE, ...),
            // after every retry decision was made on the HTTP status.
            let grpc = is_grpc(req.headers());
            let resp = handle_request(shared, req, fixed, caller).await;
            Ok::<_, Infallible>(if grpc { proxy::grpc_reply(resp) } else { resp })
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        // Accept large heads at the HTTP/2 layer, so that the request check answers 431 (not
        // REFUSED_STREAM, which clients retry).
        .max_header_list_size(crate::config::H2_MAX_HEADER_LIST_SIZE)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20);
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = draining.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%remote, error = %e, "egress connection ended");
    }
}

/// Planner inputs from the live state.
struct World<'a> {
    shared: &'a Shared,
    tables: &'a Tables,
    svc: &'a ServiceKey,
}

impl Availability for World<'_> {
    fn peer_up(&self, cluster: &str) -> bool {
        self.shared.peers.get(cluster).is_some_and(|p| p.is_up())
    }

    fn peer_suspect(&self, cluster: &str) -> bool {
        self.shared
            .peers
            .get(cluster)
            .is_some_and(|p| p.is_suspect())
    }

    fn local_ready(&self) -> bool {
        self.tables
            .inbound
            .get(self.svc)
            .is_some_and(|i| !i.endpoints.is_empty() && !i.drained)
    }
}

fn request_authority(req: &Request<Incoming>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
}

async fn handle_request(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    fixed: Option<SocketAddr>,
    caller: Option<Arc<str>>,
) -> Response<Body> {
    let start = Instant::now();
    let authority = request_authority(&req).unwrap_or_default();
    let method = req.method().clone();
    let (path, traceparent) = proxy::path_and_traceparent(&req);
    let own = shared.config.cluster.clone();
    let mut record = Record {
        direction: "egress",
        method: &method,
        authority: &authority,
        path: &path,
        service: "",
        source_cluster: &own,
        destination_cluster: "",
        attempts: 0,
        traceparent: traceparent.as_deref(),
        start,
        span: shared.tracer.start(traceparent.as_deref()),
    };

    // The caller's own fault, answered here and never forwarded (nor counted against any
    // cluster): a head over the limits would otherwise cross the peer connection all callers
    // share.
    if let Some(why) = proxy::oversized_head(
        req.headers(),
        shared.config.max_request_headers_bytes,
        shared.config.max_request_headers,
    ) {
        let resp = proxy::reply(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request_headers_too_large",
            why,
        );
        record.finish(&shared, "431", 431, Some("request_headers_too_large"));
        return resp;
    }
    if let Some(why) = proxy::malformed_host(&req) {
        shared.metrics.refuse("egress", "malformed_host");
        record.finish(&shared, "400", 400, Some("malformed_host"));
        return proxy::reply(StatusCode::BAD_REQUEST, "malformed_host", why.to_string());
    }
    let Some(tables) = shared.tables.load_full() else {
        let resp = proxy::reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_config",
            "the gateway has no config yet".into(),
        );
        record.finish(&shared, "503", 503, Some("no_config"));
        return resp;
    };
    let resolved = match &fixed {
        // Arrived on a ClusterSetIP, a pinned endpoint's address or a gateway port.
        Some(local) => tables
            .vips
            .get(local)
            .or_else(|| tables.port_routes.get(&local.port()))
            .cloned(),
        None => parse_authority(&authority).and_then(|(name, port)| {
            let svc = tables.outbound.get(&name)?;
            let port = svc.port(port)?;
            Some((svc.clone(), port))
        }),
    };
    let Some((svc, port)) = resolved else {
        let resp = proxy::reply(
            StatusCode::NOT_FOUND,
            "unknown_service",
            format!("no imported service at {authority:?}"),
        );
        record.finish(&shared, "404", 404, Some("unknown_service"));
        return resp;
    };
    let service = svc.name.to_string();
    record.service = &service;

    if method == Method::CONNECT {
        return connect_tunnel(&shared, &tables, &svc, port, req, record).await;
    }
    if is_upgrade(&req) {
        return upgrade(&shared, &tables, &svc, port, req, caller, record).await;
    }
    if !port.is_http() {
        // HTTP to an opaque TCP port would reach a backend that does not speak it, and its
        // garbled answer would count against that cluster.
        shared.metrics.refuse("egress", "http_to_tcp_port");
        record.finish(&shared, "400", 400, Some("http_to_tcp_port"));
        return proxy::reply(
            StatusCode::BAD_REQUEST,
            "http_to_tcp_port",
            format!(
                "port {} of {} is opaque TCP: connect to its ClusterSetIP, or use CONNECT",
                port.port, svc.name
            ),
        );
    }

    let (rps, burst) = svc.policy.rate_limit;
    if !svc.limiter.allow(&own, rps, burst) {
        shared.metrics.rate_limited.inc();
        record.finish(&shared, "429", 429, Some("rate_limited"));
        return proxy::reply(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "{}: over {rps} requests per second from this cluster",
                svc.name
            ),
        );
    }

    let (mut parts, incoming) = req.into_parts();
    // Hop-by-hop first: a `Connection` header naming ours must not take them away.
    xfcc::strip_hop_by_hop(&mut parts.headers);
    vouch_for_caller(&shared, &mut parts.headers, caller.as_deref());
    parts.headers.remove(header::HOST);
    if let Some(span) = &record.span {
        parts.headers.insert(TRACEPARENT, span.traceparent());
    }

    let world = World {
        shared: &shared,
        tables: &tables,
        svc: &svc.name,
    };
    let plan = route::plan(&svc, &parts.headers, &world);
    if plan.is_empty() {
        let resp = proxy::reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_route",
            format!("no cluster can serve {}", svc.name),
        );
        record.finish(&shared, "503", 503, Some("no_route"));
        return resp;
    }
    let idempotent = proxy::is_idempotent(&parts.method);
    let (client_body, fault) = body::from_client(incoming);
    let mut body = match ReplayBody::new(client_body, idempotent).await {
        Ok(b) => b,
        Err(e) => {
            record.finish(&shared, "400", 400, Some("request_body"));
            return proxy::reply(
                StatusCode::BAD_REQUEST,
                "request_body",
                format!("cannot read the request body: {e}"),
            );
        }
    };

    let policy = &svc.policy;
    let deadline = policy
        .timeout
        .map(|t| tokio::time::Instant::from_std(start + t));
    let active = svc.budget.start_request();
    let max_attempts = 1 + policy.retry_attempts;
    let mut retry_guard = None;
    // A retry the budget already allowed (taken when an attempt was given up).
    let mut allowed_retry = None;
    let mut last: Option<(Response<Body>, Arc<str>)> = None;
    let mut last_err: Option<(ProxyError, Arc<str>)> = None;
    for n in 0..max_attempts {
        let cand = &plan[n as usize % plan.len()];
        if n > 0 {
            let allowed = allowed_retry.take().or_else(|| {
                svc.budget.try_retry(
                    policy.retry_budget_percent,
                    shared.config.min_retry_concurrency,
                )
            });
            match allowed {
                Some(g) => retry_guard = Some(g),
                None => break,
            }
            shared.metrics.retries.inc();
            tracing::debug!(service = %svc.name, cluster = %cand.cluster, attempt = n + 1, "retrying");
        }
        record.attempts = n + 1;
        // An idempotent request to a peer, with another cluster to go to next, is retried
        // there when the path to the peer turns out dead while it waits.
        let watched_peer = (idempotent
            && body.is_buffered()
            && n + 1 < max_attempts
            && plan[(n as usize + 1) % plan.len()].cluster != cand.cluster)
            .then(|| shared.peers.get(&cand.cluster))
            .flatten()
            .filter(|_| !cand.local);
        let attempt = async {
            let Some(permit) = cand
                .stats
                .acquire(policy.max_concurrent, policy.max_pending)
                .await
            else {
                return Attempt::Overloaded;
            };
            let send = send(&shared, &tables, &svc, port, cand, &parts, &mut body);
            let result = match &watched_peer {
                Some(peer) => tokio::select! {
                    biased;
                    r = send => r,
                    g = path_lost(&shared, &svc, peer) => return Attempt::PathLost(g),
                },
                None => send.await,
            };
            Attempt::Done(result, permit)
        };
        let outcome = match deadline {
            Some(d) => match tokio::time::timeout_at(d, attempt).await {
                Ok(o) => o,
                Err(_) => Attempt::TimedOut,
            },
            None => attempt.await,
        };
        match outcome {
            Attempt::Overloaded => {
                shared.metrics.circuit_open.inc();
                let mut resp = proxy::reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    format!(
                        "{} in {} is at its concurrency limit",
                        svc.name, cand.cluster
                    ),
                );
                resp.headers_mut()
                    .insert(xfcc::OVERLOADED, HeaderValue::from_static("true"));
                record.destination_cluster = &cand.cluster;
                record.finish(&shared, "503", 503, Some("overloaded"));
                return resp;
            }
            Attempt::TimedOut => {
                outlier_failure(&shared, &svc, cand);
                record.destination_cluster = &cand.cluster;
                record.finish(&shared, "504", 504, Some("timeout"));
                return proxy::reply(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    format!("{} did not answer in time", svc.name),
                );
            }
            Attempt::PathLost(guard) => {
                // The budget allowed the retry before the attempt was given up.
                allowed_retry = Some(guard);
                shared.metrics.path_lost.inc();
                tracing::debug!(service = %svc.name, cluster = %cand.cluster, "path to the peer lost; retrying elsewhere");
                last_err = Some((
                    ProxyError::Request {
                        target: format!("{} via cluster {}", svc.name, cand.cluster),
                        source: "the peer stopped answering probes".into(),
                    },
                    cand.cluster.clone(),
                ));
                continue;
            }
            Attempt::Done(Ok(resp), permit) => {
                let status = resp.status();
                if status.is_server_error() && !fault.failed() {
                    outlier_failure(&shared, &svc, cand);
                    if idempotent && body.is_buffered() && n + 1 < max_attempts {
                        // Keep the failed response: it is the answer if no retry does better.
                        last = Some((resp.map(body::incoming), cand.cluster.clone()));
                        continue;
                    }
                } else if !fault.failed() {
                    // (A response to a broken body says nothing about the cluster either way.)
                    cand.stats.record_success();
                }
                let (mut head, incoming) = resp.into_parts();
                xfcc::strip_hop_by_hop(&mut head.headers);
                let mut guards: Vec<Guard> = vec![Box::new(permit), Box::new(active)];
                if let Some(g) = retry_guard.take() {
                    guards.push(Box::new(g));
                }
                let body = Guarded::wrap(body::incoming(incoming), guards);
                record.destination_cluster = &cand.cluster;
                record.finish(&shared, status.as_str(), status.as_u16(), None);
                return Response::from_parts(head, body);
            }
            Attempt::Done(Err(e), _permit) if fault.failed() || e.caused_by_client() => {
                // The caller's body broke the attempt: its error, not the cluster's.
                tracing::debug!(service = %svc.name, cluster = %cand.cluster, error = %e, "the caller's request body failed");
                shared.metrics.refuse("egress", "request_body");
                record.destination_cluster = &cand.cluster;
                record.finish(&shared, "400", 400, Some("request_body"));
                return proxy::reply(
                    StatusCode::BAD_REQUEST,
                    "request_body",
                    "the request body is malformed or ended early".to_string(),
                );
            }
            Attempt::Done(Err(e), _permit) => {
                outlier_failure(&shared, &svc, cand);
                tracing::debug!(service = %svc.name, cluster = %cand.cluster, error = %e, "attempt failed");
                let retry = if e.is_connect() {
                    body.replayable()
                } else {
                    idempotent && body.is_buffered()
                };
                last_err = Some((e, cand.cluster.clone()));
                if !retry {
                    break;
                }
            }
        }
    }
    if let Some((resp, cluster)) = last {
        let status = resp.status();
        record.destination_cluster = &cluster;
        record.finish(&shared, status.as_str(), status.as_u16(), None);
        return resp;
    }
    let (status, message, cluster) = match &last_err {
        Some((e, c)) => {
            // The detail (addresses included) is logged; the caller is told the kind.
            tracing::info!(service = %svc.name, cluster = %c, error = %e, "request failed");
            (
                e.status(),
                format!("{}: {} (cluster {c})", svc.name, e.summary()),
                c.clone(),
            )
        }
        None => (
            StatusCode::BAD_GATEWAY,
            "no attempt could be made".to_string(),
            Arc::from(""),
        ),
    };
    record.destination_cluster = &cluster;
    record.finish(&shared, status.as_str(), status.as_u16(), Some("upstream"));
    proxy::reply(status, "upstream", message)
}

enum Attempt {
    Overloaded,
    TimedOut,
    /// The peer missed a probe while the attempt waited; a retry was allowed.
    PathLost(crate::resilience::ActiveGuard),
    Done(
        Result<Response<Incoming>, ProxyError>,
        crate::resilience::BreakerPermit,
    ),
}

/// What the egress says of the caller, replacing whatever the caller said of itself: the
/// source cluster, and for an mTLS caller the first XFCC element.
fn vouch_for_caller(shared: &Shared, headers: &mut http::HeaderMap, caller: Option<&str>) {
    xfcc::strip_gateway_headers(headers);
    if let Ok(v) = HeaderValue::from_str(&shared.config.cluster) {
        headers.insert(xfcc::SOURCE_CLUSTER, v);
    }
    if let Some(caller) = caller {
        let by = shared.tls.load().own_id.to_string();
        xfcc::append(headers, &xfcc::element(&by, caller));
    }
}

/// Completes (with a retry allowed by the budget) when the path to `peer` is found dead
/// while a request waits on it: after `path_check_after_ms` without an answer, a probe is sent
/// at once; when it misses (or any probe has), the peer is suspect. Never completes when
/// the check is off or the budget allows no retry, so the attempt goes on waiting.
async fn path_lost(
    shared: &Shared,
    svc: &Outbound,
    peer: &Arc<crate::peer::PeerConn>,
) -> crate::resilience::ActiveGuard {
    let config = &shared.config;
    if config.path_check_after_ms == 0 {
        return std::future::pending().await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(config.path_check_after_ms)).await;
    peer.check_path(
        shared.tls.clone(),
        &shared.metrics,
        shared.connect_timeout(),
        std::time::Duration::from_millis(config.path_check_timeout_ms),
    );
    peer.suspected().await;
    match svc.budget.try_retry(
        svc.policy.retry_budget_percent,
        config.min_retry_concurrency,
    ) {
        Some(g) => g,
        None => std::future::pending().await,
    }
}

fn outlier_failure(shared: &Shared, svc: &Outbound, cand: &Candidate) {
    let p = &svc.policy;
    if let Outlier::Ejected(length) = cand.stats.record_failure(p.outlier_errors, p.outlier_base) {
        shared.metrics.ejections.inc();
        tracing::warn!(service = %svc.name, cluster = %cand.cluster, ?length, "ejected by outlier detection");
    }
}

fn clone_head(parts: &http::request::Parts) -> http::request::Builder {
    let mut b = Request::builder().method(parts.method.clone());
    if let Some(h) = b.headers_mut() {
        *h = parts.headers.clone();
    }
    b
}

/// One attempt at one cluster. The body goes back into `body` when nothing was sent.
async fn send(
    shared: &Shared,
    tables: &Tables,
    svc: &Outbound,
    port: PortSpec,
    cand: &Candidate,
    parts: &http::request::Parts,
    body: &mut ReplayBody,
) -> Result<Response<Incoming>, ProxyError> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = svc.peer_authority(port.port);
    if cand.local {
        let inbound = tables
            .inbound
            .get(&svc.name)
            .ok_or_else(|| ProxyError::NoEndpoint(svc.name.to_string()))?;
        let in_port = inbound.port(Some(port.port)).unwrap_or(port);
        let h2 = in_port.is_h2() || is_grpc(&parts.headers);
        return shared
            .backends
            .send_to_first(
                inbound,
                inbound.endpoints_from_next(),
                in_port,
                h2,
                body,
                |b| {
                    let mut req = clone_head(parts)
                        .uri(path)
                        .body(b)
                        .map_err(|e| request_error(&authority, e))?;
                    if let Ok(v) = HeaderValue::from_str(&authority) {
                        req.headers_mut().insert(header::HOST, v);
                    }
                    Ok(req)
                },
            )
            .await;
    }

    let peer = shared
        .peers
        .get(&cand.cluster)
        .ok_or_else(|| ProxyError::Connect {
            target: format!("cluster {}", cand.cluster),
            source: "not a configured peer".into(),
        })?;
    let mut sender = peer.sender(&shared.tls, shared.connect_timeout()).await?;
    let b = body
        .take()
        .ok_or_else(|| ProxyError::NoEndpoint("request body already sent".into()))?;
    let uri: Uri = format!("http://{authority}{path}")
        .parse()
        .map_err(|e: http::uri::InvalidUri| request_error(&authority, e))?;
    let req = clone_head(parts)
        .uri(uri)
        .version(Version::HTTP_2)
        .body(b)
        .map_err(|e| request_error(&authority, e))?;
    match sender.try_send_request(req).await {
        Ok(resp) => Ok(resp),
        Err(mut e) => {
            let target = format!("{authority} via cluster {}", cand.cluster);
            match e.take_message() {
                Some(req) => {
                    body.put_back(req.into_body());
                    Err(ProxyError::Connect {
                        target,
                        source: e.into_error().into(),
                    })
                }
                None => Err(ProxyError::Request {
                    target,
                    source: e.into_error().into(),
                }),
            }
        }
    }
}

fn request_error(target: &str, e: impl Into<crate::body::BoxError>) -> ProxyError {
    ProxyError::Request {
        target: target.to_string(),
        source: e.into(),
    }
}

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

// === TCP ===

/// Opens a byte stream to the service in one cluster: a direct connection to a local
/// endpoint, or an HTTP/2 CONNECT stream over the peer connection.
async fn open_tunnel(
    shared: &Shared,
    tables: &Tables,
    svc: &Outbound,
    port: PortSpec,
    cand: &Candidate,
) -> Result<Box<dyn Io>, ProxyError> {
    if cand.local {
        let inbound = tables
            .inbound
            .get(&svc.name)
            .ok_or_else(|| ProxyError::NoEndpoint(svc.name.to_string()))?;
        let in_port = inbound.port(Some(port.port)).unwrap_or(port);
        let mut last = ProxyError::NoEndpoint(svc.name.to_string());
        for endpoint in inbound.endpoints_from_next() {
            match shared.backends.connect(inbound, endpoint, in_port).await {
                Ok(s) => return Ok(Box::new(s)),
                Err(e) => last = e,
            }
        }
        return Err(last);
    }
    let peer = shared
        .peers
        .get(&cand.cluster)
        .ok_or_else(|| ProxyError::Connect {
            target: format!("cluster {}", cand.cluster),
            source: "not a configured peer".into(),
        })?;
    let mut sender = peer.sender(&shared.tls, shared.connect_timeout()).await?;
    let authority = svc.peer_authority(port.port);
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(authority.as_str())
        .version(Version::HTTP_2)
        .body(body::empty())
        .map_err(|e| request_error(&authority, e))?;
    if let Ok(v) = HeaderValue::from_str(&shared.config.cluster) {
        req.headers_mut().insert(xfcc::SOURCE_CLUSTER, v);
    }
    let target = format!("{authority} via cluster {}", cand.cluster);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| ProxyError::Connect {
            target: target.clone(),
            source: e.into(),
        })?;
    if resp.status() != StatusCode::OK {
        return Err(ProxyError::TunnelRefused {
            target,
            status: resp.status().as_u16(),
        });
    }
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(|e| ProxyError::Connect {
            target,
            source: e.into(),
        })?;
    Ok(Box::new(TokioIo::new(upgraded)))
}

/// Tries the planned clusters until one accepts the tunnel.
async fn open_planned_tunnel(
    shared: &Shared,
    tables: &Tables,
    svc: &Outbound,
    port: PortSpec,
    headers: &http::HeaderMap,
) -> Result<(Box<dyn Io>, Arc<str>), (ProxyError, Arc<str>)> {
    let world = World {
        shared,
        tables,
        svc: &svc.name,
    };
    let plan = route::plan(svc, headers, &world);
    let mut last = (
        ProxyError::NoEndpoint(format!("no cluster can serve {}", svc.name)),
        Arc::from(""),
    );
    for cand in plan.iter().take(1 + svc.policy.retry_attempts as usize) {
        match open_tunnel(shared, tables, svc, port, cand).await {
            Ok(io) => {
                cand.stats.record_success();
                return Ok((io, cand.cluster.clone()));
            }
            Err(e) => {
                outlier_failure(shared, svc, cand);
                tracing::debug!(service = %svc.name, cluster = %cand.cluster, error = %e, "tunnel attempt failed");
                last = (e, cand.cluster.clone());
            }
        }
    }
    Err(last)
}

async fn tcp_by_vip(
    shared: Arc<Shared>,
    tables: Arc<Tables>,
    svc: Arc<Outbound>,
    port: PortSpec,
    client: TcpStream,
) {
    let start = Instant::now();
    let service = svc.name.to_string();
    let authority = svc.peer_authority(port.port);
    let mut record = Record {
        direction: "egress",
        method: &Method::CONNECT,
        authority: &authority,
        path: "",
        service: &service,
        source_cluster: &shared.config.cluster,
        destination_cluster: "",
        attempts: 1,
        traceparent: None,
        start,
        span: None,
    };
    match open_planned_tunnel(&shared, &tables, &svc, port, &http::HeaderMap::new()).await {
        Ok((upstream, cluster)) => {
            record.destination_cluster = &cluster;
            record.finish(&shared, "tcp", 200, None);
            proxy::pump(client, upstream).await;
        }
        Err((e, cluster)) => {
            record.destination_cluster = &cluster;
            record.finish(&shared, "tcp_error", 502, Some("upstream"));
            tracing::debug!(service = %svc.name, error = %e, "TCP connection refused");
        }
    }
}

/// `CONNECT svc.ns.svc.clusterset.local:port` on the egress listener.
async fn connect_tunnel(
    shared: &Arc<Shared>,
    tables: &Tables,
    svc: &Outbound,
    port: PortSpec,
    mut req: Request<Incoming>,
    mut record: Record<'_>,
) -> Response<Body> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    match open_planned_tunnel(shared, tables, svc, port, req.headers()).await {
        Ok((upstream, cluster)) => {
            record.destination_cluster = &cluster;
            record.finish(shared, "tcp", 200, None);
            tokio::spawn(async move {
                match on_upgrade.await {
                    Ok(client) => proxy::pump(TokioIo::new(client), upstream).await,
                    Err(e) => tracing::debug!(error = %e, "client CONNECT upgrade failed"),
                }
            });
            Response::new(body::empty())
        }
        Err((e, cluster)) => {
            record.destination_cluster = &cluster;
            record.finish(shared, "tcp_error", e.status().as_u16(), Some("upstream"));
            tracing::info!(service = %svc.name, %cluster, error = %e, "tunnel failed");
            let message = format!("{}: {} (cluster {cluster})", svc.name, e.summary());
            proxy::reply(e.status(), "upstream", message)
        }
    }
}

// === HTTP/1.1 upgrades (WebSocket) ===

/// An HTTP/1.1 request that asks to switch protocols (`Connection: upgrade` + `Upgrade`).
fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Carries an upgrade (a WebSocket) as a TCP tunnel to the service port, the way `CONNECT`
/// does: the request head is sent to the backend over the tunnel, and after its `101` both
/// sides are joined byte for byte. The backend sees the request as the client sent it, without
/// the headers a client may not set, with `x-causeway-source-cluster` and, for an mTLS caller,
/// its XFCC element.
async fn upgrade(
    shared: &Arc<Shared>,
    tables: &Tables,
    svc: &Outbound,
    port: PortSpec,
    mut req: Request<Incoming>,
    caller: Option<Arc<str>>,
    mut record: Record<'_>,
) -> Response<Body> {
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (upstream, cluster) =
        match open_planned_tunnel(shared, tables, svc, port, req.headers()).await {
            Ok(pair) => pair,
            Err((e, cluster)) => {
                record.destination_cluster = &cluster;
                record.finish(shared, "502", e.status().as_u16(), Some("upstream"));
                tracing::info!(service = %svc.name, %cluster, error = %e, "upgrade tunnel failed");
                let message = format!("{}: {} (cluster {cluster})", svc.name, e.summary());
                return proxy::reply(e.status(), "upstream", message);
            }
        };
    record.destination_cluster = &cluster;
    let failed = |record: &Record<'_>, e: &dyn std::fmt::Display| {
        record.finish(shared, "502", 502, Some("upstream"));
        proxy::reply(
            StatusCode::BAD_GATEWAY,
            "upstream",
            format!("{} in {cluster}: upgrade failed: {e}", svc.name),
        )
    };
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await {
            Ok(pair) => pair,
            Err(e) => return failed(&record, &e),
        };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upgraded backend connection ended");
        }
    });
    let (mut parts, _) = req.into_parts();
    vouch_for_caller(shared, &mut parts.headers, caller.as_deref());
    if let Ok(v) = HeaderValue::from_str(&svc.peer_authority(port.port)) {
        parts.headers.insert(header::HOST, v);
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut builder = Request::builder().method(parts.method.clone()).uri(path);
    if let Some(h) = builder.headers_mut() {
        *h = parts.headers;
    }
    let backend_req = match builder.body(body::empty()) {
        Ok(r) => r,
        Err(e) => return failed(&record, &e),
    };
    let mut resp = match sender.send_request(backend_req).await {
        Ok(r) => r,
        Err(e) => return failed(&record, &e),
    };
    let status = resp.status();
    record.finish(shared, status.as_str(), status.as_u16(), None);
    if status != StatusCode::SWITCHING_PROTOCOLS {
        return resp.map(body::incoming);
    }
    let backend_upgrade = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        match tokio::try_join!(client_upgrade, backend_upgrade) {
            Ok((client, backend)) => proxy::pump(TokioIo::new(client), TokioIo::new(backend)).await,
            Err(e) => tracing::debug!(error = %e, "upgrade not completed"),
        }
    });
    let (head, _) = resp.into_parts();
    Response::from_parts(head, body::empty())
}

// === VIP and gateway-port listeners ===

/// Keeps one listener per distinct outbound port (with `--vip-range`) and per gateway port
/// (`Port.gateway_port`), all on `vip_listen_ip`. A connection is routed by its destination
/// address (a VIP) or, failing that, by the port it arrived on (a gateway port).
pub(crate) async fn manage_vip_listeners(shared: Arc<Shared>) {
    let mut version = shared.version_tx.subscribe();
    let mut listeners: BTreeMap<u16, CancellationToken> = BTreeMap::new();
    let vips = shared.config.vip_range.is_some();
    loop {
        let wanted: std::collections::BTreeSet<u16> = shared
            .tables
            .load()
            .as_ref()
            .map(|t| {
                let vip_ports = t.vip_ports.iter().filter(|_| vips);
                vip_ports.chain(t.port_routes.keys()).copied().collect()
            })
            .unwrap_or_default();
        listeners.retain(|port, token| {
            let keep = wanted.contains(port);
            if !keep {
                token.cancel();
            }
            keep
        });
        for port in wanted {
            if listeners.contains_key(&port) {
                continue;
            }
            let addr = SocketAddr::new(shared.config.vip_listen_ip, port);
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    let token = shared.shutdown.child_token();
                    let shared = shared.clone();
                    let stop = token.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = accept_loop(shared, listener, true) => {}
                        }
                    });
                    tracing::info!(%addr, "service port listener started");
                    listeners.insert(port, token);
                }
                Err(e) => tracing::warn!(%addr, error = %e, "cannot open service port listener"),
            }
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            changed = version.changed() => if changed.is_err() { return },
        }
    }
}
