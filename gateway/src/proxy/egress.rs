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
//! directly to its endpoints, others over the pooled peer connection. This module accepts
//! connections and checks each request's head; then, by protocol: [`request`] (requests, with
//! retries), [`tunnel`] (CONNECT and opaque TCP), [`upgrade`] (WebSocket), [`vip`] (routing by
//! the address a connection arrived on). [`plan`] holds what they share.

mod plan;
mod request;
mod tunnel;
mod upgrade;
mod vip;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use causeway_api::authority::parse_authority;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::Proxy;
use super::Record;
use crate::body::Body;

/// The egress accept loop.
pub(crate) async fn serve(proxy: Arc<Proxy>, listener: TcpListener) {
    accept_loop(proxy, listener, false).await
}

async fn accept_loop(proxy: Arc<Proxy>, listener: TcpListener, vip: bool) {
    let what = if vip { "import" } else { "egress" };
    super::serve(proxy, listener, what, move |proxy, stream, remote| {
        handle_connection(proxy, stream, remote, vip)
    })
    .await
}

async fn handle_connection(proxy: Arc<Proxy>, stream: TcpStream, remote: SocketAddr, vip: bool) {
    let fixed = if vip {
        let Ok(local) = stream.local_addr() else {
            return;
        };
        let Some(tables) = proxy.tables.load_full() else {
            return;
        };
        let route = tables
            .vips
            .get(&local)
            .or_else(|| tables.port_routes.get(&local.port()))
            .cloned();
        let Some((svc, port)) = route else {
            proxy.metrics.refuse("import", "no_service_at_address");
            tracing::debug!(%local, %remote, "no service at this address; closing");
            return;
        };
        if !port.is_http() {
            vip::tcp_by_vip(proxy, tables, svc, port, stream).await;
            return;
        }
        // Each request looks the address up again, so it follows config changes.
        Some(local)
    } else {
        None
    };
    // A caller that opens with a TLS handshake gets mTLS; its identity travels in XFCC.
    // A client that connects and says nothing is closed after the header timeout.
    let header_timeout = Duration::from_millis(proxy.config.client_header_timeout_ms);
    let mut first = [0u8; 1];
    let peeked = match tokio::time::timeout(header_timeout, stream.peek(&mut first)).await {
        Ok(r) => r,
        Err(_) => {
            tracing::debug!(%remote, "client sent nothing in time; closing");
            return;
        }
    };
    if matches!(peeked, Ok(1) if first[0] == TLS_HANDSHAKE) {
        let Some((tls, caller)) = accept_caller(&proxy, stream, remote).await else {
            return;
        };
        serve_http(proxy, TokioIo::new(tls), remote, fixed, Some(caller)).await
    } else {
        serve_http(proxy, TokioIo::new(stream), remote, fixed, None).await
    }
}

/// The first byte of a TLS ClientHello record.
const TLS_HANDSHAKE: u8 = 0x16;

/// The mTLS handshake of a local caller: a certificate chaining to our bundle, with a SPIFFE
/// ID of our own trust domain. Refusals are counted and logged with the reason.
async fn accept_caller(
    proxy: &Proxy,
    stream: TcpStream,
    remote: SocketAddr,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, Arc<str>)> {
    let tls = proxy.tls.load_full();
    let refuse = |r: crate::tls::Refusal| {
        proxy
            .metrics
            .client_handshake_failures
            .with_label_values(&[r.reason])
            .inc();
        tracing::warn!(%remote, reason = r.reason, detail = %r.detail, "caller's TLS connection refused");
    };
    let accept = tokio_rustls::TlsAcceptor::from(tls.egress.clone()).accept(stream);
    let stream = match tokio::time::timeout(proxy.tls_handshake_timeout(), accept).await {
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
    proxy: Arc<Proxy>,
    io: TokioIo<I>,
    remote: SocketAddr,
    fixed: Option<SocketAddr>,
    caller: Option<Arc<str>>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let draining = proxy.shutdown.clone();
    let header_timeout = Duration::from_millis(proxy.config.client_header_timeout_ms);
    let service = service_fn(move |req| {
        let proxy = proxy.clone();
        let caller = caller.clone();
        async move {
            // A gRPC caller gets the gateway's own errors as gRPC statuses (UNAVAILABLE, ...),
            // after every retry decision was made on the HTTP status.
            let grpc = super::is_grpc(req.headers());
            let resp = handle_request(proxy, req, fixed, caller).await;
            Ok::<_, Infallible>(if grpc { super::grpc_reply(resp) } else { resp })
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

async fn handle_request(
    proxy: Arc<Proxy>,
    req: Request<Incoming>,
    fixed: Option<SocketAddr>,
    caller: Option<Arc<str>>,
) -> Response<Body> {
    let authority = super::request_authority(&req).unwrap_or_default();
    let method = req.method().clone();
    let (path, traceparent) = super::path_and_traceparent(&req);
    let own = proxy.config.cluster.clone();
    let mut record =
        Record::new(&proxy, "egress", &method, &authority, &path).traced(traceparent.as_deref());
    record.source_cluster = &own;

    // The caller's own fault, answered here and never forwarded (nor counted against any
    // cluster): a head over the limits would otherwise cross the peer connection all callers
    // share.
    if let Some(why) = super::oversized_head(
        req.headers(),
        proxy.config.max_request_headers_bytes,
        proxy.config.max_request_headers,
    ) {
        return record.refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request_headers_too_large",
            why,
        );
    }
    if let Some(why) = super::malformed_host(&req) {
        proxy.metrics.refuse("egress", "malformed_host");
        return record.refuse(StatusCode::BAD_REQUEST, "malformed_host", why.to_string());
    }
    let Some(tables) = proxy.tables.load_full() else {
        return record.refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_config",
            "the gateway has no config yet".into(),
        );
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
        return record.refuse(
            StatusCode::NOT_FOUND,
            "unknown_service",
            format!("no imported service at {authority:?}"),
        );
    };
    record.service = svc.name.to_string();

    if method == Method::CONNECT {
        return tunnel::connect_tunnel(&proxy, &tables, &svc, port, req, record).await;
    }
    if upgrade::is_upgrade(&req) {
        return upgrade::upgrade(&proxy, &tables, &svc, port, req, caller, record).await;
    }
    if !port.is_http() {
        // HTTP to an opaque TCP port would reach a backend that does not speak it, and its
        // garbled answer would count against that cluster.
        proxy.metrics.refuse("egress", "http_to_tcp_port");
        return record.refuse(
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
        proxy.metrics.rate_limited.inc();
        return record.refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "{}: over {rps} requests per second from this cluster",
                svc.name
            ),
        );
    }
    request::forward(&proxy, &tables, &svc, port, req, caller, record).await
}

// === service port listeners ===

/// Keeps one listener per distinct outbound port (with `--vip-range`) and per gateway port
/// (`Port.gateway_port`), all on `vip_listen_ip`. A connection is routed by its destination
/// address (a VIP) or, failing that, by the port it arrived on (a gateway port).
pub(crate) async fn manage_vip_listeners(proxy: Arc<Proxy>) {
    let mut version = proxy.versions.clone();
    version.mark_unchanged();
    let mut listeners: BTreeMap<u16, CancellationToken> = BTreeMap::new();
    let vips = proxy.config.vip_range.is_some();
    loop {
        let wanted: std::collections::BTreeSet<u16> = proxy
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
            let addr = SocketAddr::new(proxy.config.vip_listen_ip, port);
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    let token = proxy.shutdown.child_token();
                    let proxy = proxy.clone();
                    let stop = token.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = accept_loop(proxy, listener, true) => {}
                        }
                    });
                    tracing::info!(%addr, "service port listener started");
                    listeners.insert(port, token);
                }
                Err(e) => tracing::warn!(%addr, error = %e, "cannot open service port listener"),
            }
        }
        tokio::select! {
            _ = proxy.shutdown.cancelled() => return,
            changed = version.changed() => if changed.is_err() { return },
        }
    }
}
