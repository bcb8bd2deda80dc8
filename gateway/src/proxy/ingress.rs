//! Ingress: peer gateways to this cluster's exported services.
//!
//! Terminates mTLS (a client certificate is required), accepts only the gateway identity of a
//! known peer cluster, then serves HTTP/2: requests by `:authority`, CONNECT streams as TCP
//! tunnels. Each request is authorised against the export (allowed source clusters and
//! identities), refused when the export is drained (503) or over its rate limit (429), and
//! re-originated to a ready local endpoint.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use causeway_api::authority::{parse_authority, parse_pinned_authority};
use causeway_api::spiffe::SpiffeId;
use causeway_api::ServiceKey;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::Proxy;
use super::Record;
use crate::body::{self, Body, ReplayBody};
use crate::error::ProxyError;
use crate::peer::PROBE_AUTHORITY;
use crate::table::{Inbound, PortSpec, Tables};
use crate::tls::{authenticate_peer, classify_handshake_error, Refusal};
use crate::xfcc;

/// The authenticated peer of one connection.
struct PeerIdentity {
    cluster: String,
    id: SpiffeId,
}

pub(crate) async fn serve(proxy: Arc<Proxy>, listener: TcpListener) {
    super::serve(proxy, listener, "peer", handle_connection).await
}

fn refuse(proxy: &Proxy, remote: SocketAddr, r: &Refusal) {
    proxy
        .metrics
        .handshake_failures
        .with_label_values(&[r.reason])
        .inc();
    tracing::warn!(%remote, reason = r.reason, detail = %r.detail, "peer connection refused");
}

async fn handle_connection(proxy: Arc<Proxy>, stream: TcpStream, remote: SocketAddr) {
    let acceptor = TlsAcceptor::from(proxy.tls.load().server.clone());
    let tls = match tokio::time::timeout(proxy.tls_handshake_timeout(), acceptor.accept(stream))
        .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return refuse(&proxy, remote, &classify_handshake_error(&e)),
        Err(_) => {
            let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out");
            return refuse(&proxy, remote, &classify_handshake_error(&e));
        }
    };
    // Peers speak HTTP/2 and say so (ALPN `h2`); rustls lets a client that offers no ALPN at
    // all through, so the absence is refused here.
    if tls.get_ref().1.alpn_protocol() != Some(crate::tls::ALPN_H2) {
        let r = Refusal {
            reason: "no_alpn",
            detail: "the peer did not negotiate ALPN h2".into(),
        };
        return refuse(&proxy, remote, &r);
    }
    let (peer, expires_in) = {
        let certs = tls.get_ref().1.peer_certificates().unwrap_or_default();
        // The connection lasts no longer than the certificate it was authenticated with.
        let expires_in = certs
            .first()
            .and_then(|c| causeway_api::tls::Validity::of(c).ok())
            .map(|v| Duration::from_secs(v.left(crate::tls::unix_now()).max(0) as u64));
        let Some(tables) = proxy.tables.load_full() else {
            let r = Refusal {
                reason: "unknown_cluster",
                detail: "no config loaded: no peer is known yet".into(),
            };
            return refuse(&proxy, remote, &r);
        };
        match authenticate_peer(certs, &tables, &proxy.tls.load()) {
            Ok((cluster, id)) => (Arc::new(PeerIdentity { cluster, id }), expires_in),
            Err(r) => return refuse(&proxy, remote, &r),
        }
    };
    let expired = async move {
        match expires_in {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tracing::debug!(%remote, peer = %peer.id, "peer gateway connected");
    let draining = proxy.shutdown.clone();
    let service = service_fn(move |req| {
        let proxy = proxy.clone();
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(handle_request(proxy, peer, req).await) }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(8 << 20)
        .max_frame_size(64 << 10)
        .max_concurrent_streams(4096)
        // A peer's heads are within the egress's limits (plus what it adds); with hyper's
        // default (16 KiB) a larger one was a connection error that failed every stream of the
        // proxy connection.
        .max_header_list_size(crate::config::H2_MAX_HEADER_LIST_SIZE)
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    // On shutdown: GOAWAY, then the streams in flight finish.
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = draining.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        _ = expired => {
            // GOAWAY: streams in flight finish; the peer dials again with its renewed
            // certificate (or is refused, `expired`, if it has none).
            tracing::info!(%remote, "peer certificate expired; closing its connection");
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%remote, error = %e, "peer connection ended");
    }
}

async fn handle_request(
    proxy: Arc<Proxy>,
    peer: Arc<PeerIdentity>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let authority = super::request_authority(&req).unwrap_or_default();
    if authority == PROBE_AUTHORITY {
        return Response::new(body::full("ok"));
    }
    let method = req.method().clone();
    let (path, traceparent) = super::path_and_traceparent(&req);
    let own = proxy.config.cluster.clone();
    let mut record =
        Record::new(&proxy, "ingress", &method, &authority, &path).traced(traceparent.as_deref());
    record.source_cluster = &peer.cluster;
    record.destination_cluster = Arc::from(own.as_str());
    record.attempts = 1;

    if let Some(why) = super::malformed_host(&req) {
        proxy.metrics.refuse("ingress", "malformed_host");
        return record.refuse(StatusCode::BAD_REQUEST, "malformed_host", why.into());
    }
    let Some(tables) = proxy.tables.load_full() else {
        return record.refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_config",
            "no config loaded".into(),
        );
    };
    // `<svc>.<ns>...`, or one endpoint of ours, `<name>.<own cluster>.<svc>.<ns>...` (a
    // headless import's per-endpoint address in the caller's cluster).
    let parsed = parse_authority(&authority)
        .map(|(n, p)| (n, p, None))
        .or_else(|| {
            parse_pinned_authority(&authority)
                .filter(|p| p.cluster == own)
                .map(|p| (p.service, p.port, Some(p.endpoint)))
        });
    let Some((name, port, pinned)) = parsed else {
        return record.refuse(
            StatusCode::NOT_FOUND,
            "unknown_service",
            format!("{authority:?} is not a clusterset service name"),
        );
    };
    let (inbound, port) = match tables.inbound.get(&name) {
        Some(svc) => match svc.port(port) {
            Some(p) => (svc.clone(), p),
            None => {
                return record.refuse(
                    StatusCode::NOT_FOUND,
                    "unknown_port",
                    format!("{name} has no port {port:?} in cluster {own}"),
                )
            }
        },
        None => {
            return record.refuse(
                StatusCode::NOT_FOUND,
                "unknown_service",
                format!("{name} is not exported by cluster {own}"),
            )
        }
    };
    record.service = name.to_string();

    // A peer vouches for callers of its own trust domain only.
    let stripped = xfcc::keep_trust_domain(req.headers_mut(), peer.id.trust_domain());
    if stripped != xfcc::Stripped::default() {
        for (n, reason) in [
            (stripped.foreign, "xfcc_foreign_trust_domain"),
            (stripped.malformed, "xfcc_malformed"),
        ] {
            if n > 0 {
                proxy
                    .metrics
                    .refused
                    .with_label_values(&["ingress", reason])
                    .inc_by(n as u64);
            }
        }
        tracing::warn!(
            peer = %peer.cluster,
            service = %name,
            foreign = stripped.foreign,
            malformed = stripped.malformed,
            "XFCC elements a peer may not vouch for stripped (identities outside its trust domain or malformed)"
        );
    }
    let caller = xfcc::first_uri(req.headers()).unwrap_or_else(|| peer.id.to_string());
    if let Err(denied) = authorise(&tables, &inbound, &peer.cluster, &caller) {
        return record.refuse(StatusCode::FORBIDDEN, denied.reason, denied.message);
    }
    if inbound.drained {
        return record.refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "drained",
            format!("{name} is drained in cluster {own}"),
        );
    }
    let (rps, burst) = inbound.rate_limit;
    if !inbound.limiter.allow(&peer.cluster, rps, burst) {
        proxy.metrics.rate_limited.inc();
        return record.refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "{name}: over {rps} requests per second from cluster {}",
                peer.cluster
            ),
        );
    }
    if inbound.endpoints.is_empty() {
        return record.refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_endpoint",
            format!("{name} has no ready endpoint in cluster {own}"),
        );
    }

    let endpoints = inbound.endpoints_to_try(pinned.as_deref());
    if endpoints.is_empty() {
        return record.refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_endpoint",
            format!(
                "{name} has no ready endpoint {} in cluster {own}",
                pinned.as_deref().unwrap_or("")
            ),
        );
    }
    if method == Method::CONNECT {
        let who = TunnelCaller {
            peer_cluster: peer.cluster.clone(),
            caller,
        };
        return tunnel(&proxy, &inbound, &endpoints, port, who, req, record).await;
    }
    if !port.is_http() {
        proxy.metrics.refuse("ingress", "http_to_tcp_port");
        return record.refuse(
            StatusCode::BAD_REQUEST,
            "http_to_tcp_port",
            format!("port {} of {name} is opaque TCP: use CONNECT", port.port),
        );
    }

    let (mut parts, incoming) = req.into_parts();
    xfcc::strip_hop_by_hop(&mut parts.headers);
    // The source cluster is what TLS proved, whatever the header said.
    if let Ok(v) = HeaderValue::from_str(&peer.cluster) {
        parts.headers.insert(xfcc::SOURCE_CLUSTER, v);
    }
    xfcc::append(
        &mut parts.headers,
        &xfcc::element(&proxy.tls.load().own_id.to_string(), &peer.id.to_string()),
    );
    if let Some(span) = &record.span {
        parts.headers.insert(
            http::HeaderName::from_static("traceparent"),
            span.traceparent(),
        );
    }
    let h2 = port.is_h2() || super::is_grpc(&parts.headers);
    if !h2 {
        if let Ok(v) = HeaderValue::from_str(&authority) {
            parts.headers.insert(header::HOST, v);
        }
    }
    let idempotent = super::is_idempotent(&parts.method);
    let (client_body, fault) = body::from_client(incoming);
    let mut body = match ReplayBody::new(client_body, idempotent).await {
        Ok(b) => b,
        Err(e) => {
            return record.refuse(
                StatusCode::BAD_REQUEST,
                "request_body",
                format!("cannot read the request body: {e}"),
            )
        }
    };
    let sent = proxy
        .backends
        .send_to_first(
            &inbound,
            endpoints.iter().copied(),
            port,
            h2,
            &mut body,
            |b| {
                let mut builder = Request::builder()
                    .method(parts.method.clone())
                    .uri(path.as_str());
                if let Some(h) = builder.headers_mut() {
                    *h = parts.headers.clone();
                }
                builder.body(b).map_err(|e| ProxyError::Request {
                    target: name.to_string(),
                    source: e.into(),
                })
            },
        )
        .await;
    let last_error = match sent {
        Ok(resp) => {
            let status = resp.status();
            record.finish(status.as_str(), status.as_u16(), None);
            let (mut head, incoming) = resp.into_parts();
            xfcc::strip_hop_by_hop(&mut head.headers);
            return Response::from_parts(head, body::incoming(incoming));
        }
        Err(e) if fault.failed() || e.caused_by_client() => {
            tracing::debug!(service = %name, peer = %record.source_cluster, error = %e, "the caller's request body failed");
            proxy.metrics.refuse("ingress", "request_body");
            return record.refuse(
                StatusCode::BAD_REQUEST,
                "request_body",
                "the request body is malformed or ended early".to_string(),
            );
        }
        Err(ProxyError::NoEndpoint(_)) => None,
        Err(e) => Some(e.summary()),
    };
    record.refuse(
        StatusCode::BAD_GATEWAY,
        "upstream",
        // The endpoints' addresses stay in the log.
        match last_error {
            Some(kind) => format!("{name} in cluster {own}: {kind}"),
            None => format!("no endpoint of {name} reachable in cluster {own}"),
        },
    )
}

/// Why a peer's caller may not use an inbound service.
struct Denied {
    reason: &'static str,
    message: String,
}

/// The authorisation rule of the ingress, for requests and for open tunnels alike: the peer is
/// still a peer (it may have been removed since it connected), its cluster may call the
/// service, and so may the caller (the first XFCC identity it vouched for, or its own).
fn authorise(
    tables: &Tables,
    inbound: &Inbound,
    peer_cluster: &str,
    caller: &str,
) -> Result<(), Denied> {
    let name = &inbound.name;
    if !tables.peers.contains_key(peer_cluster) {
        return Err(Denied {
            reason: "unknown_peer",
            message: format!("cluster {peer_cluster} is no longer a peer"),
        });
    }
    if !inbound.allowed_clusters.is_empty() && !inbound.allowed_clusters.contains(peer_cluster) {
        return Err(Denied {
            reason: "forbidden_cluster",
            message: format!("cluster {peer_cluster} may not call {name}"),
        });
    }
    if !inbound.allowed_identities.is_empty() && !inbound.allowed_identities.contains(caller) {
        return Err(Denied {
            reason: "forbidden_identity",
            message: format!("{caller} may not call {name}"),
        });
    }
    Ok(())
}

/// Who opened a tunnel, kept to check it again when the config changes.
struct TunnelCaller {
    peer_cluster: String,
    caller: String,
}

impl TunnelCaller {
    /// Whether the tables still let this caller use `name`'s port `port`; the reason if not.
    fn still_allowed(&self, tables: &Tables, name: &ServiceKey, port: u16) -> Result<(), Denied> {
        let Some(inbound) = tables.inbound.get(name) else {
            return Err(Denied {
                reason: "unknown_service",
                message: format!("{name} is no longer exported here"),
            });
        };
        if inbound.port(Some(port)).is_none() {
            return Err(Denied {
                reason: "unknown_port",
                message: format!("{name} no longer has port {port}"),
            });
        }
        authorise(tables, inbound, &self.peer_cluster, &self.caller)
    }
}

/// Carries a tunnel until either side ends it, checking it again on every applied config (as
/// ztunnel's connection manager does): one the new config no longer allows is closed, both
/// ways, and counted in `causeway_gateway_tunnels_closed_total{reason}`.
async fn carry_tunnel(
    proxy: Arc<Proxy>,
    name: ServiceKey,
    port: u16,
    who: TunnelCaller,
    peer: impl super::Io,
    upstream: impl super::Io,
) {
    let mut versions = proxy.versions.clone();
    versions.mark_unchanged();
    let pump = super::pump(peer, upstream);
    tokio::pin!(pump);
    loop {
        tokio::select! {
            () = &mut pump => return,
            changed = versions.changed() => {
                if changed.is_err() {
                    // The gateway is going away: the drain ends the tunnel.
                    return pump.await;
                }
                let Some(tables) = proxy.tables.load_full() else { continue };
                if let Err(denied) = who.still_allowed(&tables, &name, port) {
                    proxy
                        .metrics
                        .tunnels_closed
                        .with_label_values(&[denied.reason])
                        .inc();
                    tracing::info!(
                        service = %name,
                        peer = %who.peer_cluster,
                        caller = %who.caller,
                        reason = denied.reason,
                        "open tunnel closed: {}",
                        denied.message
                    );
                    return;
                }
            }
        }
    }
}

async fn tunnel(
    proxy: &Arc<Proxy>,
    inbound: &Arc<Inbound>,
    endpoints: &[crate::table::EndpointAddr],
    port: PortSpec,
    who: TunnelCaller,
    mut req: Request<Incoming>,
    record: Record<'_>,
) -> Response<Body> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    let mut last = None;
    for &endpoint in endpoints {
        match proxy.backends.connect(inbound, endpoint, port).await {
            Ok(upstream) => {
                record.finish("tcp", 200, None);
                let (proxy, name) = (proxy.clone(), inbound.name.clone());
                tokio::spawn(async move {
                    match on_upgrade.await {
                        Ok(peer) => {
                            carry_tunnel(proxy, name, port.port, who, TokioIo::new(peer), upstream)
                                .await
                        }
                        Err(e) => tracing::debug!(error = %e, "peer CONNECT upgrade failed"),
                    }
                });
                return Response::new(body::empty());
            }
            Err(e) => {
                tracing::info!(service = %inbound.name, error = %e, "endpoint refused the tunnel");
                last = Some(e.summary());
            }
        }
    }
    record.finish("tcp_error", 502, Some("upstream"));
    super::reply(
        StatusCode::BAD_GATEWAY,
        "upstream",
        format!(
            "{}: {}",
            inbound.name,
            last.unwrap_or_else(|| "no endpoint".into())
        ),
    )
}
