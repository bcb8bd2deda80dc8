//! The federator's side of the gateway config protocol (DESIGN.md "Config protocol"):
//! `Config/Watch` streams full [`proto::ConfigSnapshot`]s on change, `Config/Ack` records each
//! gateway's verdict, `Health/Report` takes what the gateways see of their peers, which the
//! publisher writes under `health/<this cluster>/<peer>`.
//!
//! mTLS: the server presents the federator identity; a client must present this cluster's gateway
//! SPIFFE ID (`spiffe://<trust-domain>/ns/causeway-system/sa/causeway-gateway`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use causeway_api::proto::config_server::{Config as ConfigRpc, ConfigServer};
use causeway_api::proto::health_server::{Health as HealthRpc, HealthServer};
use causeway_api::proto::{
    AckRequest, AckResponse, CertifyRequest, CertifyResponse, ConfigSnapshot, GatewayHello,
    PeerHealth, ReportResponse,
};
use causeway_api::spiffe::SpiffeId;
use causeway_api::{ClusterId, HealthRecord, MeshSnapshot, SCHEMA_VERSION};
use futures::Stream;
use prometheus::{IntCounterVec, IntGauge, Opts};
use tokio::sync::watch;
use tokio_stream::wrappers::{TcpListenerStream, WatchStream};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::gwconfig::{self, GatewayConfig};
use crate::issuer::FederatorTls;
use crate::metrics::Metrics;
use crate::source::LocalExports;
use crate::traffic::{Counts, StreamGuard, TrafficBook};

/// What gateways of this cluster report of peer clusters.
pub(crate) type PeerHealthMap = BTreeMap<ClusterId, HealthRecord>;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding the config listener {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

struct ServerMetrics {
    gateways: IntGauge,
    acks: IntCounterVec,
    issued: IntCounterVec,
    refused: IntCounterVec,
}

#[derive(Clone)]
struct Svc {
    cluster: ClusterId,
    /// This cluster's gateway ID, the only client accepted; `None` without TLS.
    expected_client: Option<SpiffeId>,
    /// The bundle gateways' chains verify against, and the issuer.
    tls: watch::Receiver<Arc<FederatorTls>>,
    configs: watch::Receiver<Arc<GatewayConfig>>,
    health: watch::Sender<PeerHealthMap>,
    traffic: Arc<TrafficBook>,
    metrics: Arc<ServerMetrics>,
}

impl Svc {
    /// The caller's gateway ID (`None` without TLS), or why it may not call.
    fn authorise<T>(&self, req: &Request<T>) -> Result<Option<SpiffeId>, Status> {
        let Some(expected) = &self.expected_client else {
            return Ok(None);
        };
        let certs = req
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        // The handshake verified the chain already; this binds the ID to it for the call.
        let trust = self.tls.borrow().trust.clone();
        let id = causeway_api::tls::verify_client_chain(&trust, &certs).map_err(|e| {
            tracing::warn!(error = %e, "gateway refused on the config stream");
            Status::unauthenticated(format!("client certificate: {e}"))
        })?;
        if &id != expected {
            return Err(Status::permission_denied(format!("{id} is not {expected}")));
        }
        Ok(Some(id))
    }
}

/// The configs a gateway is sent: each one the builder makes, never the empty placeholder the
/// channel holds before the first build (version 0). A gateway that connects while the first
/// build runs (a few hundred milliseconds at 510,000 exports) waits for it rather than being told
/// that the mesh is empty.
fn built_configs(
    configs: watch::Receiver<Arc<GatewayConfig>>,
) -> impl Stream<Item = Arc<GatewayConfig>> {
    WatchStream::new(configs).filter(|c| c.version > 0)
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<ConfigSnapshot, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ConfigRpc for Svc {
    type WatchStream = SnapshotStream;

    async fn watch(
        &self,
        req: Request<GatewayHello>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.authorise(&req)?;
        let hello = req.into_inner();
        if hello.cluster != self.cluster.as_str() {
            return Err(Status::invalid_argument(format!(
                "this federator serves cluster {}, not {:?}",
                self.cluster, hello.cluster
            )));
        }
        tracing::info!(node = %hello.node, last = hello.last_applied_version, "gateway connected");
        let gauge = self.metrics.gateways.clone();
        gauge.inc();
        let guard = GaugeGuard(gauge);
        let stream = built_configs(self.configs.clone()).map(move |c| {
            let _keep = &guard;
            Ok(c.to_proto())
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ack(&self, req: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        self.authorise(&req)?;
        let ack = req.into_inner();
        if ack.nack_reason.is_empty() {
            tracing::debug!(node = %ack.node, version = ack.version, "gateway ACK");
            self.metrics.acks.with_label_values(&["ack"]).inc();
        } else {
            tracing::warn!(node = %ack.node, version = ack.version, reason = %ack.nack_reason, "gateway NACK: it keeps its last good config");
            self.metrics.acks.with_label_values(&["nack"]).inc();
        }
        Ok(Response::new(AckResponse {}))
    }

    async fn certify(
        &self,
        req: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let count = |result: &str| self.metrics.issued.with_label_values(&[result]).inc();
        let id = self.authorise(&req)?.ok_or_else(|| {
            count("refused");
            Status::failed_precondition("certificates are issued over mTLS only")
        })?;
        let r = req.into_inner();
        if r.cluster != self.cluster.as_str() {
            count("refused");
            return Err(Status::invalid_argument(format!(
                "this federator serves cluster {}, not {:?}",
                self.cluster, r.cluster
            )));
        }
        let Some(issuer) = self.tls.borrow().issuer.clone() else {
            count("no_issuer");
            return Err(Status::unimplemented(
                "this federator holds no issuer; the gateway keeps its file certificate",
            ));
        };
        match issuer.sign_csr(&id, &r.csr_pem) {
            Ok(issued) => {
                count("ok");
                tracing::info!(node = %r.node, %id, not_after = issued.validity.not_after, "gateway certificate issued");
                Ok(Response::new(CertifyResponse {
                    certificate_chain_pem: issued.chain_pem,
                    not_before_unix: issued.validity.not_before,
                    not_after_unix: issued.validity.not_after,
                }))
            }
            Err(e) => {
                count("refused");
                tracing::warn!(node = %r.node, error = %e, "gateway certificate request refused");
                Err(Status::invalid_argument(e.to_string()))
            }
        }
    }
}

struct GaugeGuard(IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[tonic::async_trait]
impl HealthRpc for Svc {
    async fn report(
        &self,
        req: Request<Streaming<PeerHealth>>,
    ) -> Result<Response<ReportResponse>, Status> {
        self.authorise(&req)?;
        let mut stream = req.into_inner();
        let guard = StreamGuard {
            book: &self.traffic,
            stream: self.traffic.stream(),
        };
        while let Some(msg) = stream.next().await {
            let h = msg?;
            let Ok(peer) = ClusterId::new(h.cluster.as_str()) else {
                tracing::debug!(cluster = %h.cluster, "ignoring health of an invalid cluster ID");
                continue;
            };
            let rec = HealthRecord {
                schema: SCHEMA_VERSION,
                up: h.up,
                suspect: h.up && h.suspect,
                rtt_micros: h.rtt_micros,
                observed_unix_ms: h.observed_at_unix_ms,
            };
            let counts = Counts {
                egress_requests: h.egress_requests,
                egress_errors: h.egress_errors,
                ingress_requests: h.ingress_requests,
                ingress_errors: h.ingress_errors,
            };
            guard.book.record(
                guard.stream,
                peer.clone(),
                counts,
                std::time::Instant::now(),
            );
            self.health.send_if_modified(|m| {
                // State changes only (up, down, suspect): RTTs alone would write etcd all the
                // time.
                let changed = m
                    .get(&peer)
                    .is_none_or(|old| (old.up, old.suspect) != (rec.up, rec.suspect));
                m.insert(peer, rec);
                changed
            });
        }
        Ok(Response::new(ReportResponse {}))
    }
}

/// What the config builder adds to the mesh snapshot and the local exports.
#[derive(Debug, Clone, Default)]
pub(crate) struct BuilderOptions {
    /// Kubernetes mode: the range gateway ports of imports come from (first, count).
    pub gateway_port_range: Option<(u16, u16)>,
    /// This cluster's `import_policies`.
    pub overrides: crate::policy::ImportOverrides,
}

/// Keeps `tx` at the config computed from the latest mesh snapshot and local exports; the version
/// only moves when the content changes.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_builder(
    cluster: ClusterId,
    mut mesh: watch::Receiver<Arc<MeshSnapshot>>,
    mut local: watch::Receiver<LocalExports>,
    mut tls: watch::Receiver<Arc<FederatorTls>>,
    tx: watch::Sender<Arc<GatewayConfig>>,
    debounce: Duration,
    options: BuilderOptions,
    shutdown: CancellationToken,
) {
    let BuilderOptions {
        gateway_port_range,
        overrides,
    } = options;
    let mut builder = gwconfig::Builder::new(overrides);
    let mut version = 0u64;
    loop {
        let next = {
            let snap = mesh.borrow_and_update().clone();
            let exports = local.borrow_and_update().clone();
            // Off the runtime's workers: a build from scratch at 510,000 exports (the first, or
            // after a peer's health changed) takes a few hundred milliseconds, which the view
            // and the metrics should not wait behind.
            let cluster = cluster.clone();
            let built = tokio::task::spawn_blocking(move || {
                let ports = gateway_port_range
                    .map(|(first, count)| crate::ports::gateway_port_plan(&snap, first, count));
                let next = builder.build(&snap, &exports, &cluster, version + 1, ports);
                (builder, next)
            })
            .await;
            let mut next;
            (builder, next) = match built {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "the gateway config build failed; no more configs");
                    return;
                }
            };
            next.certificate_issuer = tls
                .borrow_and_update()
                .issuer
                .as_ref()
                .map(|i| i.fingerprint.clone())
                .unwrap_or_default();
            next
        };
        let unchanged = version > 0 && tx.borrow().same_content(&next);
        if !unchanged {
            version += 1;
            tx.send_replace(Arc::new(next));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = mesh.changed() => if r.is_err() { return },
            r = local.changed() => if r.is_err() { return },
            r = tls.changed() => if r.is_err() { return },
        }
        tokio::time::sleep(debounce).await;
    }
}

/// Where the config endpoint listens.
#[derive(Debug, Clone)]
pub(crate) struct ServeConfig {
    pub listen: SocketAddr,
    pub cluster: ClusterId,
    pub trust_domain: String,
}

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait in the accept queue.
const MAX_HANDSHAKES: usize = 256;

/// Binds and serves until `shutdown`. Returns the bound address. With a certificate and a
/// bundle in `tls` the endpoint is mTLS, each handshake with the TLS state of that moment (a
/// renewed certificate or a rotated bundle applies to the next connection); without, plaintext.
pub(crate) async fn serve(
    cfg: ServeConfig,
    tls: watch::Receiver<Arc<FederatorTls>>,
    configs: watch::Receiver<Arc<GatewayConfig>>,
    health: watch::Sender<PeerHealthMap>,
    traffic: Arc<TrafficBook>,
    metrics: &Metrics,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ServeError> {
    let ServeConfig {
        listen,
        cluster,
        trust_domain,
    } = cfg;
    let gateways = IntGauge::new(
        "causeway_federator_gateways_connected",
        "Gateways watching this federator's config.",
    )
    .expect("valid metric");
    let acks = IntCounterVec::new(
        Opts::new(
            "causeway_federator_gateway_acks_total",
            "Gateway verdicts on config versions.",
        ),
        &["result"],
    )
    .expect("valid metric");
    let issued = IntCounterVec::new(
        Opts::new(
            "causeway_federator_certificates_issued_total",
            "Config/Certify calls, by result (ok, refused, no_issuer).",
        ),
        &["result"],
    )
    .expect("valid metric");
    let refused = IntCounterVec::new(
        Opts::new(
            "causeway_federator_config_handshake_failures_total",
            "Connections to the config endpoint refused in the TLS handshake, by reason.",
        ),
        &["reason"],
    )
    .expect("valid metric");
    for m in [&acks, &issued, &refused] {
        let _ = metrics.registry.register(Box::new(m.clone()));
    }
    let _ = metrics.registry.register(Box::new(gateways.clone()));
    let with_tls = tls.borrow().server.is_some();
    let expected_client = if with_tls {
        SpiffeId::gateway(&trust_domain).ok()
    } else {
        tracing::warn!(
            "config server without TLS: any local process can read gateway configs (lab/dev only)"
        );
        None
    };
    let server_metrics = Arc::new(ServerMetrics {
        gateways,
        acks,
        issued,
        refused,
    });
    let svc = Svc {
        cluster,
        expected_client,
        tls: tls.clone(),
        configs,
        health,
        traffic,
        metrics: server_metrics.clone(),
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: listen,
        source,
    })?;
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .add_service(ConfigServer::new(svc.clone()).max_decoding_message_size(64 * 1024))
        .add_service(HealthServer::new(svc).max_decoding_message_size(64 * 1024));
    let handle = tokio::spawn(async move {
        let res = if with_tls {
            let incoming = tls_incoming(listener, tls, server_metrics, shutdown.clone());
            router
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
                .await
        } else {
            router
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(listener),
                    shutdown.cancelled(),
                )
                .await
        };
        if let Err(e) = res {
            tracing::error!(error = %e, "config server died");
        }
    });
    tracing::info!(%addr, tls = with_tls, "gateway config server listening");
    Ok((addr, handle))
}

type TlsConn = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// Accepts and handshakes each connection in a task of its own (a slow client holds up no
/// one), with the server config current at its accept; yields the finished ones.
fn tls_incoming(
    listener: tokio::net::TcpListener,
    tls: watch::Receiver<Arc<FederatorTls>>,
    metrics: Arc<ServerMetrics>,
    shutdown: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return,
                p = permits.clone().acquire_owned() => p.expect("never closed"),
            };
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "config endpoint accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Some(config) = tls.borrow().server.clone() else {
                continue;
            };
            let tx = tx.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let accept = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                    Ok(Ok(conn)) => {
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => {
                        let reason = handshake_reason(&e);
                        metrics.refused.with_label_values(&[reason]).inc();
                        tracing::warn!(%peer, reason, error = %e, "config endpoint handshake refused");
                    }
                    Err(_) => {
                        metrics.refused.with_label_values(&["timeout"]).inc();
                        tracing::debug!(%peer, "config endpoint handshake timed out");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The `reason` label of a failed handshake.
fn handshake_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    match e.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
        Some(Error::NoCertificatesPresented) => "no_certificate",
        Some(Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => "expired",
        Some(Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        )) => "unknown_ca",
        Some(Error::InvalidCertificate(_)) => "bad_certificate",
        Some(Error::NoApplicationProtocol) => "no_alpn",
        Some(_) => "tls_error",
        None => "io",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_gateway_is_never_sent_the_placeholder_before_the_first_build() {
        let (tx, rx) = watch::channel(Arc::new(GatewayConfig::default()));
        let mut stream = Box::pin(built_configs(rx));
        assert!(
            tokio::time::timeout(Duration::from_millis(100), stream.next())
                .await
                .is_err(),
            "nothing is sent before the first build"
        );
        tx.send_replace(Arc::new(GatewayConfig {
            version: 1,
            cluster: "west".into(),
            ..GatewayConfig::default()
        }));
        let first = stream.next().await.expect("the first build");
        assert_eq!((first.version, first.cluster.as_str()), (1, "west"));
    }
}
